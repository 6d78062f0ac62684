"""Large pictures: the batch is sized to the free memory, or refused, before any work."""

from __future__ import annotations

import pytest
import torch

import vital
import vital.memory
from vital.errors import VitalError
from vital.memory import graph_bytes, picture_bytes, pictures_at_once


def test_the_graph_grows_with_the_pixels_and_leaves_the_weights_out(tiny_cnn):
    small, large = graph_bytes(tiny_cnn, 32), graph_bytes(tiny_cnn, 64)
    assert 3.6 < large / small < 4.4  # four times the pixels
    weights = sum(p.numel() * p.element_size() for p in tiny_cnn.module.parameters())
    # the stem's output alone (8 channels at 32 px, float32) is kept for the backward
    assert small >= 8 * 32 * 32 * 4 and small < 50 * weights + 8 * 32 * 32 * 4 * 20
    assert picture_bytes(tiny_cnn, 512) == graph_bytes(tiny_cnn, 128) * 16  # probed at 128


def test_a_model_that_takes_only_its_own_size_is_probed_at_it(tiny_cnn, monkeypatch):
    sides = []
    real = vital.memory.graph_bytes

    def only_300(model, side):
        sides.append(side)
        if side != 300:
            raise RuntimeError("Input height (128) doesn't match model (300)")
        return real(model, side)

    monkeypatch.setattr(vital.memory, "graph_bytes", only_300)
    assert picture_bytes(tiny_cnn, 300) == real(tiny_cnn, 300) and sides == [128, 300]


def _free(monkeypatch, pictures: float, model, resolution: int) -> None:
    """Make the free memory hold ``pictures`` forward graphs of ``resolution`` px."""
    graph = picture_bytes(model, resolution)
    monkeypatch.setattr(vital.memory, "free_bytes", lambda device: int(pictures * graph))


def test_a_batch_is_cut_to_what_fits_and_says_so(tiny_cnn, monkeypatch):
    _free(monkeypatch, 2 * vital.memory.STEP_SHARES["unit"] + 0.5, tiny_cnn, 256)  # two fit
    with pytest.warns(UserWarning, match=r"8 pictures of 256px .* optimising 2 at a time") as said:
        assert pictures_at_once(tiny_cnn, 256, 8) == 2
    assert said[0].filename == __file__  # the caller's line, not vital's
    assert pictures_at_once(tiny_cnn, 256, 2) == 2  # fits: nothing said
    assert pictures_at_once(tiny_cnn, 224, 8) == 8  # the usual side is not probed
    monkeypatch.setattr(vital.memory, "free_bytes", lambda device: None)
    assert pictures_at_once(tiny_cnn, 256, 8) == 8  # nothing known: as asked


def test_a_step_larger_than_the_free_memory_is_refused_with_a_side_that_fits(tiny_cnn, monkeypatch):
    """Room for the graph but not for a step (twice it) is refused too; the side it names
    leaves room for a step."""
    _free(monkeypatch, 1.5, tiny_cnn, 1024)
    with pytest.raises(VitalError, match=r"about (\d+) fits") as error:
        pictures_at_once(tiny_cnn, 1024, 1)
    side = int(error.value.args[0].split("about ")[-1].split(" fits")[0])
    assert 16 <= side < 1024
    assert vital.memory.STEP_SHARES["unit"] * picture_bytes(tiny_cnn, side) <= 1.5 * picture_bytes(
        tiny_cnn, 1024
    )


def test_a_picture_larger_than_the_free_memory_is_refused_before_any_work(
    tiny_cnn, monkeypatch, tmp_path, image_folder
):
    _free(monkeypatch, 0.5, tiny_cnn, 512)
    with pytest.raises(VitalError, match=r"one 512px picture needs about .* resolution=R"):
        vital.visualize(
            tiny_cnn, [1], image_folder, settings={"steps": 1, "resolution": 512},
            out=tmp_path / "out", progress=False,
        )  # fmt: skip
    assert not list((tmp_path / "out").glob("*.png"))


def test_a_run_whose_batch_does_not_fit_runs_fewer_at_a_time(tiny_cnn, monkeypatch, tmp_path):
    from conftest import write_images

    for index in (1, 2):
        write_images(tmp_path / "refs" / str(index), 2, seed=index)
    _free(monkeypatch, vital.memory.STEP_SHARES["class"] + 0.5, tiny_cnn, 240)  # one step fits
    with pytest.warns(UserWarning, match="optimising 1 at a time"):
        results = vital.visualize(
            tiny_cnn, [1, 2], tmp_path / "refs", settings={"steps": 1, "resolution": 240},
            progress=False,
        )  # fmt: skip
    assert [r.record.batch_size for r in results] == [1, 1]
    assert all(r.image.size == (240, 240) for r in results)


def test_free_memory_is_read_on_this_machine():
    free = vital.memory.free_bytes(torch.device("cpu"))
    assert free is None or free > 0


def test_the_probe_runs_once_per_model_and_side(tiny_cnn, monkeypatch):
    """An atlas sends every unit through the driver: one probe per model and side, not per unit."""
    sides = []
    real = vital.memory.graph_bytes

    def counted(model, side):
        sides.append(side)
        return real(model, side)

    monkeypatch.setattr(vital.memory, "graph_bytes", counted)
    first = picture_bytes(tiny_cnn, 512)
    assert picture_bytes(tiny_cnn, 512) == first and sides == [128]
    picture_bytes(tiny_cnn, 256)
    assert sides == [128, 128]  # another side is probed (and scaled) on its own


def test_an_inner_units_step_is_budgeted_larger_than_a_classs(tiny_cnn, monkeypatch, tmp_path):
    """Its relevance pass runs beside the forward graph (RESULTS: ResNet-50 4.5 graphs at 512
    px against a class's 1.7), so the same memory holds fewer inner units than classes."""
    shares = vital.memory.STEP_SHARES
    assert shares["unit"] >= 4.5 and shares["class"] >= 2.11
    _free(monkeypatch, 2 * shares["unit"] + 0.5, tiny_cnn, 256)
    with pytest.warns(UserWarning, match="optimising 2 at a time"):
        assert pictures_at_once(tiny_cnn, 256, 8, "unit") == 2
    with pytest.warns(UserWarning, match="at a time"):
        assert pictures_at_once(tiny_cnn, 256, 8, "class") > 2
    # the driver budgets a channel as an inner unit: one fits where two classes would
    _free(monkeypatch, shares["unit"] + 0.5, tiny_cnn, 240)
    from conftest import write_images

    write_images(tmp_path / "refs", 2)
    with pytest.warns(UserWarning, match="optimising 1 at a time"):
        results = vital.visualize(
            tiny_cnn, [vital.Channel("stage3", 0), vital.Channel("stage3", 1)],
            tmp_path / "refs", settings={"steps": 1, "resolution": 240}, progress=False,
        )  # fmt: skip
    assert [r.record.batch_size for r in results] == [1, 1]
