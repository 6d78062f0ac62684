"""A ninth hostile round: the API as a notebook uses it, concepts' counts, odd environments.

Each test failed before its fix: a traceback from deep inside scikit-learn or vital, a message
naming an option the command has not, or a record naming the wrong class.
"""

import copy

import numpy as np
import pytest
import torch
from tests.conftest import tiny_cnn_model, write_images
from torch import nn

import vital
from vital import ClassTarget, Model
from vital.concepts import concepts
from vital.errors import VitalError
from vital.labels import imagenet_labels
from vital.targets import resolve_targets


def small_classifier(classes: int = 5) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes),
    )  # fmt: skip


# --- targets --------------------------------------------------------------------------------


def test_bytes_as_targets_are_refused_not_read_as_byte_values():
    # b"class 1" iterated as the classes 99, 108, ...: "class index 99 is out of range"
    with pytest.raises(VitalError, match="not bytes.*give the name as text \\('class 1'\\)"):
        resolve_targets(tiny_cnn_model(), b"class 1")


def test_a_mapping_as_targets_is_refused_not_read_as_its_keys():
    # {class: folder} in the targets' place ran class 0 and dropped the folder unseen
    with pytest.raises(VitalError, match="not a mapping.*goes to references="):
        resolve_targets(tiny_cnn_model(), {0: "folder"})


def test_a_class_target_named_as_another_class_is_refused():
    model = Model(small_classifier(1000), name="m", labels=imagenet_labels())
    # the record would have said "espresso" for class 0 (tench)
    with pytest.raises(VitalError, match="names class 967 \\('espresso'\\).*'tench'"):
        resolve_targets(model, ClassTarget(0, "espresso"))
    # the class's own name, any other word (the user's own), or a shared name still pass
    assert resolve_targets(model, ClassTarget(967, "espresso"))[0].name == "espresso"
    assert resolve_targets(model, ClassTarget(0, "my fish"))[0].name == "my fish"
    assert resolve_targets(model, ClassTarget(134, "crane"))[0].index == 134  # a synonym of 134


# --- users' own models ----------------------------------------------------------------------


def test_model_labels_given_as_a_list_of_names_are_taken():
    # an AttributeError ('list' object has no attribute 'resolve') when a class was asked
    model = Model(small_classifier(), labels=["cat", "dog", "cow", "hen", "fox"])
    assert resolve_targets(model, ["Dog", 4]) == [ClassTarget(1, "dog"), ClassTarget(4, "fox")]


@pytest.mark.parametrize(
    ("keyword", "value", "said"),
    [
        ("name", 5, "Model's name is text"),
        ("preprocessing", {"input_size": 32}, "Model's preprocessing is a vital.Preprocessing"),
        ("labels", "cat", "Model's labels are a sequence of class names"),
        ("labels", ["cat", 3], "non-empty names"),
    ],
)
def test_model_fields_of_the_wrong_type_are_one_line(keyword, value, said):
    # AttributeErrors from the fingerprint, the first resize or the class lookup before
    with pytest.raises(VitalError, match=said):
        Model(small_classifier(), **{keyword: value})


def test_a_model_whose_scores_are_nan_is_refused_before_any_picture(tmp_path):
    class NaNScores(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = copy.deepcopy(small_classifier())

        def forward(self, x):
            return self.net(x) * float("nan")

    write_images(tmp_path / "refs", 2, size=32)
    # it ran, and recorded rank 1 with a probability of NaN for every picture
    with pytest.raises(VitalError, match="not finite \\(NaN or inf\\)"):
        vital.visualize(
            NaNScores(), 0, tmp_path / "refs", settings={"steps": 1, "resolution": 32},
            progress=False, out=tmp_path / "out",
        )  # fmt: skip
    assert not list((tmp_path / "out").glob("*.png"))


def test_a_model_failing_on_its_probe_is_not_told_to_set_the_resolution():
    class FlattensSixteenPixels(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, 2, 1)
            self.head = nn.Linear(8 * 8 * 8, 3)

        def forward(self, x):
            return self.head(self.conv(x).flatten(1))

    # resolution=32 was given and the message said "set the size (resolution=R, ...)": the
    # model sees its input size whatever the picture's side
    with pytest.raises(VitalError, match="resolution=R does not change it") as caught:
        vital.visualize(
            FlattensSixteenPixels(), 0, settings={"steps": 1, "resolution": 32}, progress=False
        )
    assert "input_size=S" in str(caught.value)


# --- concepts' counts -----------------------------------------------------------------------


def test_more_concepts_than_the_layer_has_channels_is_one_line(tmp_path):
    write_images(tmp_path / "data", 2)
    # scikit-learn's "init = 'nndsvda' can only be used when n_components <= ..."
    with pytest.raises(VitalError, match="17 concepts cannot be found at 'stage2'.*at most"):
        concepts(
            tiny_cnn_model(), 0, tmp_path / "data", layer="stage2", count=17, crops=32,
            examples=1, pictures=False, out=tmp_path / "out", progress=False,
        )  # fmt: skip


@pytest.mark.parametrize("count", [0, -3, 2.0])
def test_a_wrong_concept_count_is_refused_before_the_model_loads(tmp_path, count, monkeypatch):
    # refused only after the crops' features pass (11 s of MobileNetV2 on this CPU)
    monkeypatch.setattr("vital.concepts.pipeline.as_model", lambda *a, **k: 1 / 0)
    with pytest.raises(VitalError, match="number of concepts \\(count=K\\) is at least 1"):
        concepts("mobilenet_v2", 0, layer="x", count=count, out=tmp_path / "o", progress=False)


def test_a_crop_count_beyond_the_cap_names_crops_not_ref_count(tmp_path, monkeypatch):
    monkeypatch.setattr("vital.concepts.pipeline.as_model", lambda *a, **k: 1 / 0)
    # "100,000 reference views is more than 10,000 … ask for fewer (--ref-count N)"
    with pytest.raises(VitalError, match="number of crops \\(crops=N\\) is at most 10,000"):
        concepts("mobilenet_v2", 0, layer="x", crops=100_000, count=2, out=tmp_path / "o")


def test_library_messages_are_worded_for_the_command_line():
    from vital.cli.vocabulary import cli_wording

    assert cli_wording("ask for fewer (count=K) or more crops (crops=N).") == (
        "ask for fewer (--count K) or more crops (--crops N)."
    )
    assert cli_wording("examples per concept (examples=N)") == "examples per concept (--examples N)"


def test_the_patch_side_is_named_in_the_apis_words(tmp_path):
    write_images(tmp_path / "data", 2)
    # "the patch side (--patch) must be …" from vital.explain, which takes patch_side=
    with pytest.raises(VitalError, match="patch side \\(patch_side=N\\)"):
        vital.explain(
            tiny_cnn_model(), tmp_path / "data" / "img000.png", layer="stage2", target=0,
            data=tmp_path / "data", settings={"steps": 1}, out=tmp_path / "out", progress=False,
        )  # fmt: skip


# --- atlas and mining: refused before the mining pass ---------------------------------------


def test_mining_a_layer_without_positions_is_refused_before_any_shard(tmp_path):
    write_images(tmp_path / "data", 2)
    # each shard failed ("stage 1 shard(s) 0 failed … run the same command again")
    with pytest.raises(VitalError, match="layer 'head' has no positions.*no patches to mine"):
        vital.mine(tiny_cnn_model(), "head", tmp_path / "data", tmp_path / "m.sqlite")
    assert not (tmp_path / "m.sqlite").exists()


def test_atlas_build_naming_a_channel_twice_is_refused_before_mining(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vital.cli import app

    write_images(tmp_path / "data", 2)
    # it mined every image (42 s on this CPU), then "the atlas plan names a target twice"
    monkeypatch.setattr("vital.mining.mine", lambda *a, **k: pytest.fail("mined first"))
    arguments = ["atlas", "build", "-l", "features.18", "-k", "0,3,0", "--data"]
    arguments += [str(tmp_path / "data"), "--out", str(tmp_path / "atlas"), "--steps", "1"]
    result = CliRunner().invoke(app, arguments)
    assert isinstance(result.exception, VitalError), result.output
    assert "names a target twice (features.18/0)" in str(result.exception)


# --- the environment ------------------------------------------------------------------------


def test_a_closed_standard_output_is_one_line_not_a_traceback(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    source = Path(vital.__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": str(source)}
    # `vital --version >&-`: AttributeError: 'NoneType' object has no attribute 'write'
    done = subprocess.run(
        [sys.executable, "-m", "vital", "--version"], preexec_fn=lambda: os.close(1),
        stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=environment, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == "error: could not write the output: the standard output is closed"


# --- the methods' own options ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"reference_seed": -1}, "reference_seed=S is a whole number"),  # numpy's ValueError
        ({"cache_dir": 5}, "cache_dir is a folder"),  # pathlib's TypeError
    ],
)
def test_vitals_shared_options_are_checked_before_any_work(tmp_path, options, said):
    write_images(tmp_path / "refs", 2)
    with pytest.raises(VitalError, match=said):
        vital.visualize(
            tiny_cnn_model(), 0, tmp_path / "refs", settings={"steps": 1}, progress=False,
            **options,
        )  # fmt: skip


def test_rank_given_as_text_is_refused_not_taken_as_true(tmp_path):
    from vital.methods import get_method
    from vital.targets import Channel

    # rank="no" ranked the references (a non-empty string is true)
    with pytest.raises(VitalError, match="rank is True or False, not 'no'"):
        get_method("vital", [Channel("stage2", 0)], rank="no")


def test_taps_given_as_a_mapping_keep_their_weights():
    from vital.presets import Tap
    from vital.taps import user_taps

    # {"stage2": 0.5} iterated as its keys: stage2 at weight 1, the 0.5 dropped unseen
    assert user_taps({"stage2": 0.5, "stage3": np.float32(2)}) == (
        Tap("stage2", 0.5),
        Tap("stage3", 2.0),
    )
    with pytest.raises(VitalError, match="\\{layer name: weight\\}"):
        user_taps({"stage2": "heavy"})


def test_explain_refuses_a_seed_no_picture_could_take(tmp_path):
    write_images(tmp_path / "data", 1)
    # taken without a word when no pictures were asked for
    with pytest.raises(VitalError, match="the seed must be a whole number"):
        vital.explain(
            tiny_cnn_model(), tmp_path / "data" / "img000.png", layer="stage2", target=0,
            seed=-1, pictures=False, out=tmp_path / "out", progress=False,
        )  # fmt: skip


def test_importing_a_damaged_concepts_report_says_what_to_do(tmp_path):
    from vital.concepts import import_concepts

    run = tmp_path / "run"
    run.mkdir()
    (run / "concepts.json").write_text('{"model": {"name": "mobile')  # cut short
    # "cannot read …/concepts.json: Unterminated string …" and nothing more
    with pytest.raises(VitalError, match="it is damaged; copy the whole folder.*run `vital con"):
        import_concepts(run, tmp_path / "atlas")
