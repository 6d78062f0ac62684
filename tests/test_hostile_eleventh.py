"""An eleventh hostile round: an atlas as a run's folder, numbers, images, other weights.

Each test failed before its fix: a run wrote its pictures loose into an atlas reached through
a symlink or `.`, a user's number ended in a traceback from deep inside torch or itertools (or
started processes until the machine stalled), a refused run left a marked folder behind, or a
run with other weights replaced another model's pictures without a word.
"""

import os

import pytest
from tests.conftest import tiny_cnn_model

import vital
from vital.errors import VitalError

FAST = {"steps": 1, "resolution": 32}


# --- a run's folder that is an atlas's, however it is named ------------------------------------


def test_an_atlas_reached_through_a_symlink_dot_or_dotdot_is_refused(tmp_path, refs, monkeypatch):
    # The check read the name as typed: a symlink to the results folder, `.` inside it, and
    # a path through `..` all wrote the run's files into the atlas's results.
    atlas = tmp_path / "atlas"
    atlas.mkdir()
    (atlas / "atlas.sqlite").write_bytes(b"")
    (tmp_path / "shown").symlink_to(atlas / "results", target_is_directory=True)
    model = tiny_cnn_model()

    def refused(out, named):
        with pytest.raises(VitalError, match=named):
            vital.visualize(model, [1], refs / "1", out=out, settings=FAST, progress=False)

    refused(f"{atlas}/made/../results", "is an atlas's results folder")  # neither made yet
    (atlas / "results").mkdir()
    refused(tmp_path / "shown", "is an atlas's results folder")
    monkeypatch.chdir(atlas / "results")
    refused(".", "is an atlas's results folder")
    assert sorted(p.name for p in atlas.rglob("*")) == ["atlas.sqlite", "results"]


# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["lr", "eps"])
def test_a_learning_rate_past_float32_is_refused_before_the_first_step(refs, setting):
    # --lr 1e300 passed the check (finite, positive) and ended in torch's Adam with
    # "RuntimeError: value cannot be converted to type float without overflow".
    with pytest.raises(VitalError, match="must be a positive finite number of at most 1,000,000"):
        vital.visualize(
            tiny_cnn_model(), [1], refs / "1", settings={**FAST, setting: 1e300}, progress=False
        )


def test_the_cli_says_the_learning_rate_bound_in_its_words(monkeypatch, capsys, refs):
    from test_hostile import assert_one_line_error, run

    arguments = ["class", "-c", "1", "--refs", refs / "1", "--lr", "1e300", "--steps", "1"]
    arguments += ["--out", refs.parent / "out"]
    code, _, err = run(monkeypatch, capsys, *arguments, model=tiny_cnn_model())
    assert_one_line_error(code, err, "(--lr LR)", "at most 1,000,000")


def test_a_count_past_what_python_slices_take_is_refused_before_mining(tmp_path, refs):
    # `mine --batch 10**23` failed every shard in itertools.islice, then said "run the same
    # command again to retry the rest", which failed the same way.
    from vital.mining import mine

    with pytest.raises(VitalError, match=r"batch_size=N is at most 2\*\*63 - 1"):
        mine(tiny_cnn_model(), "stage3", refs, tmp_path / "m", batch_size=10**23, progress=False)
    assert not (tmp_path / "m").exists()


def test_decoding_processes_past_the_cores_are_refused_before_any_starts(tmp_path, refs):
    # `mine --workers 100000` started DataLoader processes until the machine stalled (load
    # 155 on two cores); `--workers 10**23` never got past starting them.
    from vital.mining import mine

    most = 4 * (os.cpu_count() or 1)
    with pytest.raises(VitalError, match=f"workers=N is at most {most} "):
        mine(tiny_cnn_model(), "stage3", refs, tmp_path / "m", workers=most + 1, progress=False)
    assert not (tmp_path / "m").exists()


# --- a refused run writes nothing -----------------------------------------------------------


@pytest.mark.parametrize("wrong", ["layer", "data"])
def test_a_concepts_run_refused_for_its_layer_or_images_leaves_no_mark(tmp_path, refs, wrong):
    # The folder was made and marked as vital's (`.vital-concepts`, which keeps a folder out of
    # every later listing of images) before the layer and the images were looked at.
    from vital.concepts import concepts

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    layer, data = ("nope", refs) if wrong == "layer" else ("stage3", tmp_path / "missing")
    with pytest.raises(VitalError, match="not found" if wrong == "layer" else "does not exist"):
        concepts(tiny_cnn_model(), 1, data, layer=layer, count=2, crops=8, pictures=False, out=out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    with pytest.raises(VitalError):
        concepts(tiny_cnn_model(), 1, data, layer=layer, out=tmp_path / "new", pictures=False)
    assert not (tmp_path / "new").exists()


# --- images ------------------------------------------------------------------------------------


def test_mining_over_images_none_of_which_reads_says_so(tmp_path, unreadable_images):
    # "nothing was mined for stage3 channel 0": the files (text named .png, an empty .jpg)
    # were not named, nor that none of them could be read.
    from vital.mining import mine

    data = unreadable_images
    with pytest.raises(VitalError, match="none of the 2 images could be read") as refused:
        mine(
            tiny_cnn_model(),
            "stage3",
            data,
            tmp_path / "m",
            patch_side=16,
            workers=0,
            progress=False,
        )
    assert "a.png" in str(refused.value) and "b.jpg" in str(refused.value)


# --- a run with other weights into the same folder ------------------------------------------------


def test_other_weights_do_not_write_over_a_models_pictures_unasked(tmp_path, refs):
    # The files are named by target, method and seed, not by model; the check for pictures
    # made otherwise looked only under the new model, so a run with other weights replaced the
    # first model's pictures without a word, and the first model's index rows then named them.
    out = tmp_path / "out"
    first, other = tiny_cnn_model(0), tiny_cnn_model(5)
    options = {"settings": FAST, "out": out, "progress": False}
    (made,) = vital.visualize(first, [1], refs / "1", **options)
    picture = made.paths["png"].read_bytes()
    with pytest.raises(VitalError, match=r"made with other inputs \(model"):
        vital.visualize(other, [1], refs / "1", **options)
    assert made.paths["png"].read_bytes() == picture
    vital.visualize(other, [1], refs / "1", force=True, **options)  # asked: replaced
    # the first model's row names files that now hold the other's picture: not reused as its
    with pytest.raises(VitalError, match=r"made with other inputs \(model"):
        vital.visualize(first, [1], refs / "1", **options)


def test_maco_pictures_are_made_and_recorded(tmp_path):
    # Methods' options() came to take the reference set a picture used; MACO's own options()
    # did not: `vital class --method maco` and `vital compare` ended in a TypeError.
    (result,) = vital.visualize(
        tiny_cnn_model(), [1], method="maco", out=tmp_path / "out", settings=FAST, progress=False
    )
    assert "canvas" in result.record.options  # its options are in the record
    assert result.paths["png"].is_file()


@pytest.mark.parametrize(
    "typed, said",
    [(["--seed", str(2**64)], "the seed must be"), (["-c", "1,1"], "names a target twice")],
)
def test_atlas_build_refused_for_what_was_typed_makes_no_atlas(
    monkeypatch, capsys, tmp_path, refs, typed, said
):
    # The atlas folder (atlas.sqlite) was made before the seed, the classes and the layer were
    # checked: a refused build left an empty atlas where the user meant none.
    from test_hostile import assert_one_line_error, run

    monkeypatch.setattr("vital.atlas.ModelSpec.__call__", lambda self: tiny_cnn_model())
    out = tmp_path / "atlas"
    arguments = ["atlas", "build", "-c", "1", "--refs", refs, "--steps", "1", "--out", out]
    code, _, err = run(monkeypatch, capsys, *arguments, *typed)
    assert_one_line_error(code, err, said)
    assert not out.exists()
