"""A tenth hostile round: SIGTERM, two runs into one folder, paths past the system's limits.

Also models handed over wrapped (TorchScript, ``DataParallel``) and numbers from numpy where a
setting or a tap weight goes. Each test failed before its fix: the process ended without a
word, a run silently replaced another's pictures, or a traceback from deep inside torch or
pathlib.
"""

import os
import signal
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import TinyCNN, tiny_cnn_model, write_images
from torch import nn

import vital
import vital.cli
import vital.cli.session
import vital.driver
from test_hostile import run
from vital import Channel, Tap
from vital.errors import VitalError
from vital.files import exclusive
from vital.optimize import setting_key
from vital.taps import list_layers

FAST = {"steps": 1, "resolution": 32}


# --- SIGTERM --------------------------------------------------------------------------------


class _UnhandledError(Exception):
    pass


def _unhandled(signum, frame):
    raise _UnhandledError("SIGTERM reached the default handler")


def test_sigterm_ends_a_run_as_ctrl_c_does_and_the_rerun_resumes(monkeypatch, capsys, refs):
    # `kill`, `timeout` and batch schedulers send SIGTERM: the process ended at once, without
    # the message saying what was saved, and without its clean-up (exit status -15).
    import vital.api

    real = vital.api.visualize

    def terminated(*args, on_result=None, **kwargs):
        def first_then_sigterm(result):
            on_result(result)
            os.kill(os.getpid(), signal.SIGTERM)

        return real(*args, on_result=first_then_sigterm, **kwargs)

    out = refs.parent / "out"
    arguments = ["class", "-c", "1,2", "--batch", "1", "--refs", refs, "--steps", "1"]
    # Python's default would end pytest itself; a handler that raises stands for it here.
    previous = signal.signal(signal.SIGTERM, _unhandled)
    try:
        monkeypatch.setattr(vital.api, "visualize", terminated)
        code, _, err = run(monkeypatch, capsys, *arguments, "--out", out, model=tiny_cnn_model())
        assert signal.getsignal(signal.SIGTERM) is _unhandled  # the caller's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 143, err  # 128 + 15, as a shell reports a terminated process
    assert f"everything finished is saved in {out}; run the same command again" in err
    assert "Traceback" not in err
    assert len(list(out.glob("*.json"))) == 1
    assert not list(out.glob(".*.tmp"))
    monkeypatch.setattr(vital.api, "visualize", real)
    code, printed, err = run(monkeypatch, capsys, *arguments, "--out", out, model=tiny_cnn_model())
    assert code == 0, err
    lines = [line for line in printed.splitlines() if "->" in line]
    assert len(lines) == 2 and lines[0].endswith("(stored)")


def test_decoding_workers_leave_sigterm_to_its_default():
    # A forked decoder inherits the command's SIGTERM handler; the loader's shutdown sends its
    # workers SIGTERM, which must end them, not raise an interrupt in each.
    from vital.mining.datasets import _leave_interrupts_to_the_main_process

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _unhandled)
    try:
        _leave_interrupts_to_the_main_process(0)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


# --- two runs into one folder ---------------------------------------------------------------


def test_a_run_does_not_write_over_a_picture_another_run_made_meanwhile(monkeypatch, refs):
    # Two runs started together into one folder (other steps) both passed the look before the
    # first step; the later one then replaced the other's pictures without a word.
    model, out = tiny_cnn_model(), refs.parent / "out"
    first = vital.visualize(model, [1], refs, settings=FAST, out=out, progress=False)
    monkeypatch.setattr(vital.driver, "_refuse_other_pictures", lambda *args: None)
    with pytest.raises(VitalError, match="while this run worked, another wrote the picture"):
        vital.visualize(model, [1], refs, settings={**FAST, "steps": 2}, out=out, progress=False)
    stored = vital.ResultStore(out).records()
    assert [r.settings["steps"] for r in stored] == [1]  # the first run's picture stays
    assert first[0].record.settings["steps"] == 1
    # the same inputs are the same picture, and force replaces as asked
    vital.visualize(model, [1], refs, settings=FAST, out=out, progress=False)
    vital.visualize(
        model, [1], refs, settings={**FAST, "steps": 2}, out=out, progress=False, force=True
    )
    assert [r.settings["steps"] for r in vital.ResultStore(out).records()] == [2]


def test_two_concepts_runs_into_one_folder_take_turns(tmp_path):
    # Two runs at once (other counts) each removed the other's examples, and the report of the
    # one that finished first described files the other had replaced.
    images = tmp_path / "images"
    write_images(images, 2, size=40)
    out = tmp_path / "out"
    out.mkdir()
    result: dict = {}

    def second() -> None:
        result["report"] = vital.concepts(
            tiny_cnn_model(), 1, layer="stage2", data=images, count=2, crops=4, examples=1,
            pictures=False, out=out, progress=False,
        )  # fmt: skip

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with exclusive(out / ".vital-concepts.lock", "test"):  # another run holds the folder
            worker = threading.Thread(target=second)
            worker.start()
            worker.join(timeout=2.0)
            assert worker.is_alive(), "the second run did not wait for the folder's lock"
            assert not (out / "concepts.json").exists()
        worker.join(timeout=120)
    assert not worker.is_alive() and result["report"].layer == "stage2"
    assert any("waiting for another vital concepts run" in str(w.message) for w in caught)


# --- paths past the system's limits ---------------------------------------------------------


def test_a_path_past_the_name_limit_is_one_line_wherever_it_is_given(monkeypatch, capsys, refs):
    # OSError: [Errno 36] File name too long, from pathlib's stat, as a traceback
    long = "x" * 300
    for arguments in (
        ["class", "-c", "1", "--refs", long, "--out", refs.parent / "o"],
        ["class", "-c", "1", "--refs", refs, "--out", refs.parent / long],
        ["neuron", "-l", "stage2", "--direction", long, "--out", refs.parent / "o"],
    ):
        code, _, err = run(monkeypatch, capsys, *arguments, model=tiny_cnn_model())
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert "characters)" in lines[0] and "shorter" in lines[0], lines[0]
        assert not (refs.parent / "o").exists()


def test_an_output_folder_past_the_limits_is_refused_in_the_apis_words(tmp_path):
    deep = tmp_path.joinpath(*["y" * 200] * 25)  # each name fits, the whole path does not
    for out in (tmp_path / ("x" * 300), deep):
        with pytest.raises(VitalError, match="cannot be a folder here.*shorter path \\(out=DIR"):
            vital.visualize(tiny_cnn_model(), [1], settings=FAST, out=out, progress=False)


def test_a_reference_cache_past_the_limits_is_not_kept_with_one_warning(tmp_path):
    from vital.references import cached

    with pytest.warns(UserWarning, match="the reference cache is not kept"):
        value = cached("kind", ["key"], lambda: {"a": torch.ones(1)}, tmp_path / ("x" * 300))
    assert value["a"].item() == 1


def test_an_output_folder_with_a_newline_or_tab_is_refused(tmp_path):
    # a pasted name made the folder "a\nb", printed over two lines afterwards
    for name, said in (("a\nb", "a newline"), ("a\tb", "a tab")):
        with pytest.raises(VitalError, match=f"control character in it \\({said}\\)"):
            vital.visualize(tiny_cnn_model(), [1], settings=FAST, out=tmp_path / name)
        assert not (tmp_path / name).exists()


# --- models handed over wrapped -------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_a_torchscript_model_is_refused_in_one_line():
    # RuntimeError: requires_grad_ / register_forward_pre_hook is not supported on ScriptModules
    module = TinyCNN().eval()
    for scripted in (torch.jit.script(module), torch.jit.trace(module, torch.zeros(1, 3, 32, 32))):
        with pytest.raises(VitalError, match="TorchScript module.*give the nn.Module"):
            vital.visualize(scripted, [1], settings=FAST, progress=False)
        with pytest.raises(VitalError, match="TorchScript module"):
            list_layers(scripted, 32)


def test_a_data_parallel_model_is_the_module_it_wraps(refs):
    # the channel's lrp check failed on DataParallel's own forward ("TraceError"), and
    # list_layers named the layers "module.…", which the run then could not use
    torch.manual_seed(0)
    inner = TinyCNN()
    wrapped = nn.DataParallel(inner)
    names = [layer.name for layer in list_layers(wrapped, 32)]
    assert "stage2" in names and not any(n.startswith("module.") for n in names)
    model = vital.Model(wrapped, preprocessing=vital.Preprocessing(input_size=32))
    assert model.module is inner
    results = vital.visualize(
        model, [Channel("stage2", 0)], refs, settings=FAST, progress=False, reference_count=2
    )
    assert results[0].record.target["layer"] == "stage2"


# --- numbers from numpy ---------------------------------------------------------------------


def test_a_setting_and_a_tap_weight_from_numpy_are_the_numbers_they_hold():
    # setting=np.int64(1): "setting 1 does not exist"; Tap(L, np.float32(1)): "its weight is a
    # number, not np.float32(1.0)"
    assert setting_key(np.int64(1)) == 1
    assert vital.Settings.setting(np.int64(1)).steps == vital.Settings.setting(1).steps
    tap = Tap("stage2", np.float32(0.5))
    assert tap.weight == 0.5 and type(tap.weight) is float


def test_a_concepts_run_refused_among_a_users_photos_leaves_no_lock_there(tmp_path):
    photos = tmp_path / "photos"
    write_images(photos, 2, size=40)
    with pytest.raises(VitalError, match="holds images that vital did not write"):
        vital.concepts(
            tiny_cnn_model(), 1, layer="stage2", data=photos, count=2, crops=4,
            pictures=False, out=photos, progress=False,
        )  # fmt: skip
    assert sorted(p.name for p in photos.iterdir()) == ["img000.png", "img001.png"]


# --- results handed back as targets ---------------------------------------------------------


def test_a_result_or_record_given_as_a_target_points_at_its_target(refs):
    # the refusal printed the whole Result, its pixels included: 3,800 characters for 64 px
    model = tiny_cnn_model()
    results = vital.visualize(model, [1], refs, settings=FAST, progress=False)
    for given, said in (
        (results, "a Result (a finished picture): give its target (result.target)"),
        (results[0], "a Result (a finished picture): give its target (result.target)"),
        ([results[0].record], "a Record: give the target it holds"),
    ):
        with pytest.raises(VitalError) as refused:
            vital.visualize(model, given, refs, settings=FAST, progress=False)
        assert said in str(refused.value) and len(str(refused.value)) < 300
    # what it points at runs
    again = vital.visualize(model, [results[0].target], refs, settings=FAST, progress=False)
    assert again[0].target == results[0].target

    class Verbose:
        def __repr__(self) -> str:
            return "x" * 999

    with pytest.raises(VitalError, match="not Verbose \\(x+…\\)") as refused:
        vital.visualize(model, [Verbose()], refs, settings=FAST, progress=False)
    assert len(str(refused.value)) < 200


# --- files that exist and are no files ------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_a_device_given_as_a_file_or_folder_is_not_called_missing():
    # "weights file /dev/null does not exist" sent people looking for a typo
    from vital.files import load_vectors
    from vital.references import reference_folder
    from vital.zoo import load_state_dict

    with pytest.raises(VitalError, match="weights file /dev/null is not a regular file"):
        load_state_dict("/dev/null")
    with pytest.raises(VitalError, match="reference folder /dev/null is not a folder"):
        reference_folder("/dev/null", "images")
    with pytest.raises(VitalError, match="/dev/null is not a regular file; give a .npy"):
        load_vectors("/dev/null")
