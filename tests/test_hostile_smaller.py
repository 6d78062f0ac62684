"""Smaller findings of the second hostile report (its F13 and F14), one test each.

Each was a silent surprise, a wrong reason or a traceback; every test failed before its fix.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from conftest import tiny_cnn_model
from vital.errors import VitalError
from vital.targets import ClassTarget


def test_a_list_file_with_a_byte_order_mark_and_indented_comments_is_read(image_folder):
    from vital.mining.datasets import list_images

    names = sorted(p.name for p in image_folder.iterdir())
    listing = image_folder.parent / "list.txt"
    text = f"refs/{names[0]}\n  # an indented comment\n\t#another\nrefs/{names[1]}\n"
    listing.write_bytes(codecs.BOM_UTF8 + text.encode())  # as Windows Notepad saves it
    assert [Path(p).name for p in list_images(listing).paths] == names[:2]


def test_a_list_file_saved_as_utf16_is_refused_in_words(image_folder):
    from vital.mining.datasets import list_images

    listing = image_folder.parent / "list.txt"
    listing.write_text("refs/a.png\n", "utf-16")
    with pytest.raises(VitalError, match="is saved as UTF-16; save it as UTF-8"):
        list_images(listing)


def test_concepts_take_a_list_file_as_mine_does(image_folder):
    from vital.concepts import class_images

    names = sorted(p.name for p in image_folder.iterdir())[:3]
    listing = image_folder.parent / "list.txt"
    listing.write_text("# three of them\n" + "".join(f"refs/{n}\n" for n in names))
    model = tiny_cnn_model()
    sources, notes = class_images(model, ClassTarget(1, "1"), listing)
    assert [Path(s.where).name for s in sources] == names and notes == []
    sources, notes = class_images(model, ClassTarget(1, "1"), listing, limit=2)
    assert len(sources) == 2 and notes == ["a random 2 of the class's images were used."]
    (image_folder.parent / "mining.sqlite").write_text("not a database")
    with pytest.raises(VitalError, match="is not a mining database; --data is .* a list file"):
        class_images(model, ClassTarget(1, "1"), image_folder.parent / "mining.sqlite")


def test_an_atlas_in_a_concepts_runs_folder_is_refused_for_the_true_reason(image_folder):
    import vital
    from vital.atlas.ledger import prepare_folder

    run = image_folder.parent / "run"
    vital.concepts(
        tiny_cnn_model(), 3, image_folder, layer="stage3", count=2, crops=8, examples=2,
        pictures=False, out=run, progress=False,
    )  # fmt: skip
    with pytest.raises(VitalError) as error:
        prepare_folder(run)  # what `vital atlas build --out RUN` does first
    message = str(error.value)
    assert "holds a `vital concepts` run, whose files an atlas would write over (examples/)" in (
        message
    )
    assert f"vital atlas import {run.resolve()} --out DIR" in message
    assert "did not write" not in message


def test_a_crop_scale_that_no_crop_can_have_is_refused_with_the_usable_range(image_folder):
    from vital.concepts import sample_crops
    from vital.references import from_folder

    images = from_folder(image_folder).sources  # 48 px: a crop of 8 px is (8/48)² of it
    with pytest.raises(VitalError, match=r"under 8 pixels .* HIGH of at least 0\.028, not 1e-08"):
        sample_crops(images, count=8, scale=(1e-9, 1e-8))
    assert len(sample_crops(images, count=8, scale=(1e-9, 0.028)).crops) == 8  # that HIGH is taken


def test_more_examples_than_crops_are_noted_not_silently_capped(image_folder):
    import vital

    report = vital.concepts(
        tiny_cnn_model(), 3, image_folder, layer="stage3", count=2, crops=8, examples=100000,
        pictures=False, out=image_folder.parent / "run", progress=False,
    )  # fmt: skip
    assert (
        "100000 examples per concept were asked for, but they are chosen among the 8 crops: "
        "each concept has at most 8." in report.notes
    )


@pytest.mark.parametrize("loaded", [False, True])
def test_a_closed_pil_image_to_explain_is_refused_in_words(image_folder, loaded):
    from PIL import Image

    import vital

    image = Image.open(sorted(image_folder.iterdir())[0])
    if loaded:  # Pillow says "Operation on closed image"; closed before loading, it asserts
        image.load()
    image.close()
    with pytest.raises(VitalError, match="PIL image to explain was closed .* pass its file path"):
        vital.explain(tiny_cnn_model(), image, layer="stage3", out=image_folder.parent / "out")


def test_weights_that_cannot_be_cached_name_the_cache_not_the_network(tmp_path, monkeypatch):
    import vital

    (tmp_path / "torch-home").write_text("a file where torch's cache folder should be")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(VitalError) as error:
        vital.load_model("resnet18", weights="DEFAULT")
    message = str(error.value)
    assert message.startswith("could not get torchvision's ResNet18_Weights.IMAGENET1K_V1: their ")
    assert "cache folder" in message and "Not a directory" in message
    assert "Point TORCH_HOME at a folder you can write" in message and "internet" not in message


@pytest.mark.parametrize(
    "given", [["--steps", "5"], ["--setting", "fast"], ["--batch", "2"], ["--pictured", "1"]]
)
def test_concepts_without_pictures_refuse_the_pictures_options(
    monkeypatch, capsys, image_folder, given
):
    from test_hostile import assert_one_line_error, run

    code, _, err = run(
        monkeypatch, capsys, "concepts", "--class", "3", "--layer", "stage3", "--data",
        image_folder, "--no-pictures", *given, "--out", image_folder.parent / "out",
        model=tiny_cnn_model(),
    )  # fmt: skip
    assert_one_line_error(code, err, f"--no-pictures makes no pictures: leave out {given[0]}.")
    assert not (image_folder.parent / "out").exists()  # refused before any work


def test_concepts_without_pictures_still_take_their_seed(monkeypatch, capsys, image_folder):
    from test_hostile import run

    code, out, err = run(
        monkeypatch, capsys, "concepts", "--class", "3", "--layer", "stage3", "--data",
        image_folder, "--no-pictures", "--seed", "3", "--count", "2", "--crops", "8",
        "--examples", "2", "--out", image_folder.parent / "out", model=tiny_cnn_model(),
    )  # fmt: skip
    assert code in (0, None), err
    assert "record:" in out
