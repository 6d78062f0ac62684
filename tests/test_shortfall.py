"""A picture that does not show its target says so where it is looked at.

The driver warns when an inner picture ends below its starting noise or its unit never fires,
but the warning is gone by the time someone opens the grid, the concepts' overview or an atlas
page; each of those names the failure from the record.
"""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
from PIL import Image

import vital.concepts.pipeline as pipeline
from conftest import activations_from
from vital.atlas import build_atlas
from vital.cli.concepts import print_concepts
from vital.cli.session import _caption
from vital.record import shortfall
from vital.references import from_folder
from vital.targets import Channel


@pytest.mark.parametrize(
    ("evaluation", "words"),
    [
        ({"below_start": True, "silent": False}, "below start"),
        ({"below_start": True, "silent": True}, "silent"),  # a silent unit is below start too
        ({"below_start": False, "silent": False}, None),
        ({"probability": 0.9, "rank": 1}, None),  # a class picture has neither flag
        ({"below_start": "yes"}, None),  # only the driver's own flags count
        (None, None),
    ],
)
def test_shortfall_names_what_the_record_says_failed(evaluation, words):
    assert shortfall(evaluation) == words


def _result(evaluation: dict) -> SimpleNamespace:
    return SimpleNamespace(record=SimpleNamespace(evaluation=evaluation), target=Channel("s", 3))


def test_the_neuron_grid_captions_a_picture_below_its_start():
    assert _caption(_result({"below_start": True, "silent": False})) == "s channel 3 (below start)"
    assert _caption(_result({"below_start": True, "silent": True})) == "s channel 3 (silent)"
    assert _caption(_result({"below_start": False, "silent": False})) == "s channel 3"


def _concepts_folder(tmp_path, failed: str | None):
    """A concepts folder with one pictured concept whose picture ``failed`` (or did not)."""
    for name in ("picture.png", "alpha.png", "map.png", "example.png"):
        Image.new("RGB", (8, 8), "white").save(tmp_path / name)
    entry = {
        "index": 2, "rank": 0, "share": 0.5, "relevance": 1.0, "picture": "picture.png",
        "alpha": "alpha.png", "examples": ["example.png"], "example_coefficients": [1.0],
        "activation": 0.47, "reference_activation": 1.0, "maps": ["map.png"], "record": None,
        "shortfall": failed,
    }  # fmt: skip
    record = {
        "class": {"index": 1, "name": "cat"}, "layer": "s", "crops": 4, "images": 1,
        "explained_share": 0.5, "concepts": [entry], "notes": [],
        "relevance": {"per_image": [{"image": "000-photo"}]},
    }  # fmt: skip
    (tmp_path / "concepts.json").write_text(json.dumps(record))
    return record


@pytest.mark.parametrize("failed", ["below start", None])
def test_the_concepts_overview_and_summary_name_a_failed_picture(
    tmp_path, monkeypatch, capsys, failed
):
    record = _concepts_folder(tmp_path, failed)
    captions = []
    real_grid = pipeline.grid
    monkeypatch.setattr(
        pipeline,
        "grid",
        lambda cells, said, **kw: captions.extend(said) or real_grid(cells, said, **kw),
    )
    pipeline.write_overview(tmp_path)
    print_concepts(record)
    printed = capsys.readouterr().out
    if failed:
        assert captions[0] == "below start 0.47x"
        assert "0.47x its references (below start: it does not show the concept)" in printed
    else:
        assert captions[0] == "VITAL 0.47x refs"
        assert "below start" not in printed


def _atlas_unit_page(monkeypatch, tmp_path, model, images, final: float, initial: float) -> str:
    """The atlas page of one channel whose picture ends at ``final`` from ``initial``."""
    monkeypatch.setattr("vital.driver.metrics.evaluate", activations_from(final, initial))
    with warnings.catch_warnings():  # the driver's warning is tested elsewhere
        warnings.simplefilter("ignore")
        build_atlas(
            model, [Channel("stage2", 3)], lambda target: from_folder(images, count=2),
            tmp_path / "atlas", {"steps": 2}, batch_size=1, progress=False,
        )  # fmt: skip
    (page,) = (tmp_path / "atlas" / "units").glob("*.html")
    return page.read_text()


def test_an_atlas_page_tells_close_activations_apart(tmp_path, monkeypatch, tiny_cnn, image_folder):
    """Four digits would show 0.47712 and 0.47714 as the same 0.4771 "below" 0.4771."""
    text = _atlas_unit_page(monkeypatch, tmp_path, tiny_cnn, image_folder, 0.47712, 0.47714)
    note = text.split("id='shortfall'")[1].split("</p>")[0]
    assert ">0.47712</span> against" in note and ">0.47714</span> on the noise" in note


@pytest.mark.parametrize(("final", "said"), [(0.2, True), (0.6, False)])
def test_an_atlas_unit_page_says_its_picture_ended_below_its_start(
    tmp_path, monkeypatch, tiny_cnn, image_folder, final, said
):
    text = _atlas_unit_page(monkeypatch, tmp_path, tiny_cnn, image_folder, final, 0.5)
    assert ("id='shortfall'" in text) is said
    if said:
        note = text[text.index("id='shortfall'") :].split("</p>")[0]
        assert "ended below its starting noise" in note
        assert "data-value='0.2'" in note and "data-value='0.5'" in note
