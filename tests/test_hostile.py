"""Bad input over the CLI and the API: one line naming the problem, no traceback, nothing lost."""

from __future__ import annotations

import json
import sqlite3
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vital
import vital.cli
from conftest import tiny_cnn_model, write_images
from vital.errors import VitalError
from vital.targets import Channel, Direction


@pytest.fixture(autouse=True)
def _in_a_temporary_folder(tmp_path, monkeypatch):
    """Runs here without --out write their default vital-out into a temporary folder."""
    monkeypatch.chdir(tmp_path)


def run(monkeypatch, capsys, *arguments, model=None):
    """``vital ARGUMENTS`` in this process; returns (exit status, stdout, stderr)."""
    if model is not None:
        monkeypatch.setattr(vital.cli.session, "load", lambda *args: model)
    with pytest.raises(SystemExit) as exit_info:
        vital.cli.main([str(a) for a in arguments])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_error(code, err, *phrases):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A PNG whose header claims ``side`` × ``side`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


# --- 1. tracebacks for user mistakes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "phrases"),
    [
        (["--lr", "nan"], ["learning rate", "nan"]),
        (["--lr", "-1"], ["learning rate"]),
        (["--seed", str(2**70)], ["seed", "whole number"]),
        (["--steps", "0"], ["steps"]),
        (["--jitter", "-3"], ["jitter"]),
        (["--resolution", "4"], ["resolution"]),
        (["--batch", "0"], ["--batch N is a whole number of at least 1, not 0"]),
        (["--setting", "9"], ["setting 9 does not exist"]),
        (["--tap", "features.0=nan"], ["weight must be a finite number", "nan"]),
        (["--tap", "features.0=-2"], ["weight must be a finite number", "-2"]),
        (["--tap", "=2"], ["a tap names a layer"]),
    ],
)
def test_bad_numbers_are_one_line(monkeypatch, capsys, refs, tmp_path, extra, phrases):
    arguments = ["class", "-c", "1", "--refs", refs, "--steps", "2", "--out", tmp_path / "o"]
    code, _, err = run(monkeypatch, capsys, *arguments, *extra, model=tiny_cnn_model())
    assert_one_line_error(code, err, *phrases)


def test_a_patch_side_of_a_few_pixels_is_refused_before_any_work(
    monkeypatch, capsys, refs, tmp_path
):
    # a side of 3 px would cut 225 patches per image, each resized to the input and scored
    arguments = ["neuron", "--layer", "stage2", "-k", "0", "--refs", refs, "--steps", "2"]
    arguments += ["--patch", "3", "--out", tmp_path / "o"]
    code, _, err = run(monkeypatch, capsys, *arguments, model=tiny_cnn_model())
    assert_one_line_error(code, err, "patch side must be between", "not 3")
    assert not list(tmp_path.glob("o/**/*.png"))


def test_a_reference_count_far_beyond_any_use_is_refused_before_any_work(
    monkeypatch, capsys, refs, tmp_path
):
    # 100,000 random views of four photos: hours of forward passes before the first step
    arguments = ["class", "-c", "1", "--refs", refs, "--steps", "2", "--ref-count", "100000"]
    code, _, err = run(
        monkeypatch, capsys, *arguments, "--out", tmp_path / "o", model=tiny_cnn_model()
    )
    assert_one_line_error(code, err, "100,000 reference views is more than 10,000")


def test_a_store_that_does_not_exist_is_named(monkeypatch, capsys, refs, tmp_path):
    image = next(refs.rglob("*.png"))
    arguments = ["explain", image, "--layer", "stage2", "--top", "1", "--data", refs]
    arguments += ["--store", tmp_path / "typo", "--out", tmp_path / "o"]
    code, _, err = run(monkeypatch, capsys, *arguments, model=tiny_cnn_model())
    assert_one_line_error(code, err, "--store", "typo is not a folder")


def test_unsupported_devices(monkeypatch, capsys, tmp_path):
    for device in ("meta", "tpu", "cuda:7"):
        code, _, err = run(
            monkeypatch, capsys, "class", "-c", "1", "--device", device, "--out", tmp_path
        )
        assert_one_line_error(code, err, "device" if device != "cuda:7" else "GPU")


def test_a_decompression_bomb_is_skipped_with_a_warning(monkeypatch, capsys, tmp_path):
    folder = tmp_path / "bombs"
    folder.mkdir()
    bomb_png(folder / "huge.png")
    arguments = ["class", "-c", "1", "--refs", folder, "--steps", "1", "--out", tmp_path / "o"]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _, err = run(monkeypatch, capsys, *arguments, model=tiny_cnn_model())
    warning, error = [line for line in err.splitlines() if line.strip()]
    assert warning.startswith(f"warning: skipping {folder / 'huge.png'}: ")
    assert "MAX_IMAGE_PIXELS" in warning
    assert_one_line_error(code, error, "could be read")
    # beside a readable image the bomb is skipped and the run finishes
    write_images(folder, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, err = run(monkeypatch, capsys, *arguments, model=tiny_cnn_model())
    assert code == 0, err


def test_refs_and_out_that_are_files(monkeypatch, capsys, tmp_path, refs):
    text = tmp_path / "notes.txt"
    text.write_text("not images")
    model = tiny_cnn_model()
    code, _, err = run(monkeypatch, capsys, "class", "-c", "1", "--refs", text, model=model)
    assert_one_line_error(code, err, "is a file")
    neuron = ["neuron", "--layer", "stage3", "--channel", "1", "--refs", text, "--steps", "1"]
    code, _, err = run(monkeypatch, capsys, *neuron, "--out", tmp_path / "n", model=model)
    assert_one_line_error(code, err, "is a file")
    code, _, err = run(monkeypatch, capsys, "class", "-c", "1", "--out", text, model=model)
    assert_one_line_error(code, err, "is a file", "--out")
    assert text.read_text() == "not images"  # untouched
    code, _, err = run(
        monkeypatch, capsys, "class", "-c", "1", "--out", text / "below", model=model
    )
    assert_one_line_error(code, err, "cannot create")


def test_a_refused_command_leaves_no_empty_output_folder(monkeypatch, capsys, tmp_path, refs):
    model = tiny_cnn_model()
    for arguments, phrase in (
        (["class", "-c", "no such class"], "not found"),
        (["neuron", "--layer", "no.such.layer", "--channel", "1"], "not found"),
        (["neuron", "--layer", "stage3", "--channel", "1", "--refs", tmp_path / "mined"], ""),
    ):
        out = tmp_path / "new" / "out"
        code, _, err = run(monkeypatch, capsys, *arguments, "--out", out, model=model)
        assert_one_line_error(code, err, phrase)
        assert not (tmp_path / "new").exists(), arguments
    arguments = ["class", "-c", "1", "--refs", refs, "--steps", "1", "--out", tmp_path / "new"]
    code, _, err = run(monkeypatch, capsys, *arguments, model=model)
    assert code == 0, err
    assert (tmp_path / "new" / "index.sqlite").is_file()  # made when there is something to write


def test_a_damaged_result_index_names_the_file(monkeypatch, capsys, tmp_path, refs):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.sqlite").write_bytes(b"this is not a database" * 100)
    arguments = ["class", "-c", "1", "--refs", refs, "--steps", "1", "--out", out]
    code, _, err = run(monkeypatch, capsys, *arguments, model=tiny_cnn_model())
    assert_one_line_error(code, err, "index.sqlite", "Move it away")


def test_an_index_of_another_version_is_refused_before_the_picture(
    monkeypatch, capsys, tmp_path, refs
):
    out = tmp_path / "out"
    out.mkdir()
    with sqlite3.connect(out / "index.sqlite") as connection:  # an older vital's six columns
        connection.execute(
            "CREATE TABLE results (unit TEXT, method TEXT, model TEXT, seed INTEGER, "
            "image TEXT, record TEXT, PRIMARY KEY (unit, method, model, seed))"
        )
    connection.close()
    arguments = ["class", "-c", "1", "--refs", refs, "--steps", "1", "--out", out]
    code, _, err = run(monkeypatch, capsys, *arguments, model=tiny_cnn_model())
    assert_one_line_error(code, err, "another version of vital", "move index.sqlite away")
    assert list(out.glob("*.png")) == []  # refused before the work, not after it


def test_a_damaged_cache_file_is_rebuilt(tmp_path, refs, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("VITAL_CACHE", str(cache))
    model = tiny_cnn_model()
    arguments = {"settings": {"steps": 1}, "progress": False, "reference_count": 2}
    first = vital.visualize(model, [1], refs, **arguments)[0]
    files = list(cache.rglob("*.pt"))
    assert files
    for path in files:
        path.write_bytes(path.read_bytes()[:20])  # truncated
    with pytest.warns(UserWarning, match="damaged"):
        again = vital.visualize(model, [1], refs, **arguments)[0]
    assert torch.equal(first.pixels, again.pixels)


def test_api_misuse_is_refused_before_any_work(refs):
    model = tiny_cnn_model()
    for targets, phrase in (
        ([967.0], "not float"),
        (None, "targets are classes"),
        ([None], "not NoneType"),
        ([True], "not bool"),
    ):
        with pytest.raises(VitalError, match=phrase):
            vital.visualize(model, targets, refs, progress=False)
    with pytest.raises(VitalError, match="not int"):
        vital.visualize(model, [1], 5, progress=False)
    with pytest.raises(VitalError, match="whole number"):
        Channel("stage3", "3")
    with pytest.raises(VitalError, match="one vector of numbers"):
        Direction("stage3", ("a", "b"))
    with pytest.raises(VitalError, match="settings are a mapping"):
        vital.visualize(model, [1], refs, settings=300, progress=False)
    with pytest.raises(VitalError, match="no option bogus"):
        vital.visualize(model, [1], refs, bogus=1, progress=False)
    with pytest.raises(VitalError, match="seed"):
        vital.visualize(model, [1], refs, seeds=[-1], progress=False)


def test_a_channel_from_numpy_or_torch_is_recorded_as_a_python_int(refs, tmp_path):
    # The PNG used to be written, then json failed on np.int64 (the record was lost).
    model = tiny_cnn_model()
    for index in (np.int64(3), np.uint8(3), torch.tensor(3)):
        assert Channel("stage3", index) == Channel("stage3", 3)
        assert type(Channel("stage3", index).index) is int
    (result,) = vital.visualize(
        model, Channel("stage3", np.int64(1)), refs, settings={"steps": 1},
        reference_count=np.int64(2), out=tmp_path / "out", progress=False,
    )  # fmt: skip
    assert json.loads(result.paths["json"].read_text())["target"]["index"] == 1
    for index in (torch.tensor(3.0), np.float64(3.0), torch.tensor([3])):
        with pytest.raises(VitalError, match="a channel index is a whole number"):
            Channel("stage3", index)


def test_a_record_never_fails_on_numbers_from_numpy_or_torch(refs):
    from vital.record import json_default

    (result,) = vital.visualize(tiny_cnn_model(), [1], refs, settings={"steps": 1},
                                reference_count=2, progress=False)  # fmt: skip
    record = result.record
    record.target = {**record.target, "index": np.int64(1)}
    record.evaluation = {**record.evaluation, "score": np.float32(0.5), "n": torch.tensor(2)}
    written = json.loads(record.to_json())
    assert written["target"]["index"] == 1 and written["evaluation"]["score"] == 0.5
    assert written["evaluation"]["n"] == 2
    assert json.dumps(np.float32("nan"), default=json_default) == "null"
    with pytest.raises(TypeError, match="not JSON serializable"):
        json.dumps(object(), default=json_default)


def test_zero_dimensional_arrays_and_tensors_are_the_class_they_hold(refs):
    from vital.targets import resolve_targets

    model = tiny_cnn_model()
    for targets, indices in (
        (np.array(1), [1]),
        (torch.tensor(1), [1]),
        (torch.tensor([1, 2]), [1, 2]),  # as numpy's integer arrays are taken
        (np.array([1, 2]), [1, 2]),
        ([torch.tensor(2), np.array(1)], [2, 1]),
    ):
        assert [t.index for t in resolve_targets(model, targets)] == indices
    (result,) = vital.visualize(model, torch.tensor(1), refs, settings={"steps": 1},
                                reference_count=2, progress=False)  # fmt: skip
    assert result.record.target["index"] == 1
    for targets, phrase in (
        (torch.tensor(1.0), "a class index is a whole number, not float"),
        (torch.tensor([1.5, 2.0]), "a class index is a whole number, not float"),
        (np.array(1.0), "a class index is a whole number, not float"),
        (torch.tensor(True), "not bool"),
        (torch.tensor([[1, 2]]), "not list"),
    ):
        with pytest.raises(VitalError, match=phrase):
            vital.visualize(model, targets, refs, progress=False)


class FeatureMapModel(nn.Module):
    """Returns a feature map, not class scores."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_a_model_without_class_scores_fails_before_the_optimisation(refs, monkeypatch):
    model = vital.Model(FeatureMapModel(), labels=None)
    steps = []
    monkeypatch.setattr("vital.driver.optimize", lambda *a, **k: steps.append(1))
    with pytest.raises(VitalError, match="classifier output|not one score per class"):
        vital.visualize(model, [vital.ClassTarget(1)], refs, progress=False)
    assert not steps


# --- 2. nothing silently ignored ---------------------------------------------------------------


def test_options_a_command_does_not_use_are_refused(monkeypatch, capsys, tmp_path, refs):
    model = tiny_cnn_model()
    direction = tmp_path / "d.npy"
    np.save(direction, np.ones(16, dtype=np.float32))
    mine = ["mine", "--layer", "stage3", "--data", refs, "--channel", "3", "--direction", direction]
    code, _, err = run(monkeypatch, capsys, *mine, "--out", tmp_path / "m", model=model)
    assert_one_line_error(code, err, "--channel and --direction")
    atlas = ["atlas", "build", "--out", tmp_path / "a", "--channel", "3"]
    code, _, err = run(monkeypatch, capsys, *atlas, model=model)
    assert_one_line_error(code, err, "--layer")
    base = ["class", "-c", "1", "--method", "fourier", "--out", tmp_path / "f"]
    for extra, phrase in ((["--refs", refs], "no reference"), (["--tap", "stem"], "no option")):
        code, _, err = run(monkeypatch, capsys, *base, *extra, model=model)
        assert_one_line_error(code, err, phrase)


def test_nan_weights_stop_the_run_with_a_message(refs):
    model = tiny_cnn_model()
    with torch.no_grad():
        model.module.stage1[0].weight.fill_(float("nan"))
    with pytest.raises(VitalError, match="not finite \\(NaN or inf\\).*weights"):
        vital.visualize(model, [1], refs, settings={"steps": 20}, progress=False)


def test_a_layer_without_positions_is_named(refs):
    with pytest.raises(VitalError, match="'head'"):
        vital.visualize(tiny_cnn_model(), [1], refs, taps=["head"], progress=False)


# --- 5. interrupts -----------------------------------------------------------------------------


def test_ctrl_c_says_what_was_saved(monkeypatch, capsys, tmp_path, refs):
    import vital.api

    real = vital.api.visualize

    def interrupted(*args, on_result=None, **kwargs):
        def first_then_stop(result):
            on_result(result)
            raise KeyboardInterrupt

        return real(*args, on_result=first_then_stop, **kwargs)

    monkeypatch.setattr(vital.api, "visualize", interrupted)
    out = tmp_path / "out"
    arguments = ["class", "-c", "1", "-c", "2", "--batch", "1", "--refs", refs]
    code, _, err = run(
        monkeypatch, capsys, *arguments, "--steps", "1", "--out", out, model=tiny_cnn_model()
    )
    assert code == 130
    assert f"everything finished is saved in {out}; run the same command again to resume" in err
    assert len(list(out.glob("*.png"))) == 1 and len(list(out.glob("*.json"))) == 1
    # The promise holds: the same command takes the finished picture and makes the other.
    monkeypatch.setattr(vital.api, "visualize", real)
    code, printed, err = run(
        monkeypatch, capsys, *arguments, "--steps", "1", "--out", out, model=tiny_cnn_model()
    )
    assert code == 0, err
    lines = [line for line in printed.splitlines() if "->" in line]
    assert len(lines) == 2 and lines[0].endswith("(stored)") and "(stored)" not in lines[1]
    assert len(list(out.glob("*.json"))) == 2


def test_ctrl_c_with_force_promises_no_resume(monkeypatch, capsys, tmp_path, refs):
    import vital.api

    def interrupted(*args, on_result=None, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vital.api, "visualize", interrupted)
    out = tmp_path / "out"
    arguments = ["class", "-c", "1", "--refs", refs, "--steps", "1", "--out", out, "--force"]
    code, _, err = run(monkeypatch, capsys, *arguments, model=tiny_cnn_model())
    assert code == 130 and "interrupted: 0 finished result(s) saved" in err, err


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["neuron", "--channel", "0"], "--layer"),
        (["class", "--class"], "--class"),
        (["explain"], "IMAGE"),
        (["mine"], "--layer"),
        (["atlas", "build", "--out"], "--out"),
        (["class", "--no-such-option"], "--no-such-option"),
    ],
)
def test_a_missing_or_malformed_option_is_a_usage_message(monkeypatch, capsys, arguments, named):
    code, _, err = run(monkeypatch, capsys, *arguments)
    assert code == 2, err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("Error: ") and named in last, err


def test_warnings_are_one_line_each(monkeypatch, capsys, tmp_path):
    unreadable = tmp_path / "refs"
    unreadable.mkdir()
    (unreadable / "a.jpg").write_text("not an image")
    code, _, err = run(monkeypatch, capsys, "class", "-c", "1", "--refs", unreadable)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0] == (
        f"warning: skipping unreadable image {unreadable / 'a.jpg'}: "
        f"cannot identify image file '{unreadable / 'a.jpg'}'"
    ), err
    assert lines[1].startswith("error: none of the 1 reference images could be read"), err
    assert len(lines) == 2


@pytest.mark.parametrize("target", [3, Channel("0", 1)])
def test_a_model_that_does_not_take_rgb_images_is_named(target):
    grey_only = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    )
    with pytest.raises(VitalError, match=r"failed on a \(1, 3, 224, 224\) RGB image: .*channels"):
        vital.visualize(grey_only, [target], "samples", settings={"steps": 1}, progress=False)


def test_an_atlas_with_a_wrong_setting_is_refused_before_mining(monkeypatch, capsys, tmp_path):
    data = tmp_path / "data"
    write_images(data, 2)
    arguments = ["atlas", "build", "--out", tmp_path / "atlas", "--layer", "stage2"]
    arguments += ["--channel", "1", "--data", data, "--setting", "nope"]
    code, _, err = run(monkeypatch, capsys, *arguments, model=tiny_cnn_model())
    assert_one_line_error(code, err, "setting nope does not exist")
    assert not (tmp_path / "atlas" / "mining.sqlite").exists()


def test_a_direction_file_of_strings_is_refused(monkeypatch, capsys, tmp_path, refs):
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    arguments = ["neuron", "--layer", "stage2", "--direction", tmp_path / "words.npy"]
    arguments += ["--refs", refs, "--steps", "1", "--out", tmp_path / "o"]
    code, _, err = run(monkeypatch, capsys, *arguments, model=tiny_cnn_model())
    assert_one_line_error(code, err, "not real numbers")


def test_library_functions_name_a_wrong_argument(tmp_path):
    write_images(tmp_path / "data", 2)
    with pytest.raises(VitalError, match="channels are a list of whole numbers"):
        vital.mine(tiny_cnn_model(), "stage2", tmp_path / "data", tmp_path / "m", channels=["x"])
    with pytest.raises(VitalError, match="weights are a state-dict path"):
        vital.load_model("mobilenet_v2", weights=123)
    with pytest.raises(VitalError, match="takes the network"):
        vital.list_layers("mobilenet_v2")
    with pytest.raises(VitalError, match=r"\(B, 3, H, W\) tensor, not \(3, 10\)"):
        vital.classify(tiny_cnn_model(), torch.zeros(3, 10))
    with pytest.raises(VitalError, match=r"\(B, C, H, W\) tensor"):
        vital.transparency(torch.zeros(2))
    with pytest.raises(VitalError, match="at least one embedded photo"):
        vital.from_samples([])


def test_one_embedded_photo_may_be_named_as_a_string():
    assert vital.from_samples("coffee", 2) == vital.from_samples(["coffee"], 2)
