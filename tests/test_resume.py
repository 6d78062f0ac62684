"""Stored pictures are reused when every input matches, so an interrupted run goes on."""

import pytest
import torch
from tests.conftest import write_images

import vital
import vital.driver
from vital.errors import VitalError
from vital.targets import Channel


@pytest.fixture
def class_tree(tmp_path):
    for index in (1, 2, 3):
        write_images(tmp_path / "tree" / str(index), 2, seed=index)
    return tmp_path / "tree"


def run_tiny(model, targets, references, out, steps=4, **kwargs):
    return vital.visualize(
        model,
        targets,
        references,
        settings={"steps": steps, "jitter": 3},
        setting=1,
        out=out,
        progress=False,
        **{"reference_count": 4, **kwargs},
    )


def refuse_to_optimise(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a stored picture was computed again")

    monkeypatch.setattr(vital.driver, "optimize", refuse)


def test_a_second_call_reads_the_pictures_back(tiny_cnn, class_tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = run_tiny(tiny_cnn, [1, 2], class_tree, out)
    assert not any(r.stored for r in first)
    refuse_to_optimise(monkeypatch)
    seen = []
    second = run_tiny(tiny_cnn, [1, 2], class_tree, out, on_result=seen.append)
    assert [r.stored for r in second] == [True, True] and len(seen) == 2
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.saved_pixels, b.saved_pixels)
        assert a.record.to_dict() == b.record.to_dict()
        assert a.target == b.target and b.paths["png"].is_file()


@pytest.mark.parametrize("change", [{"seeds": [7, 8]}, {"force": True}])
def test_other_seeds_or_force_compute_again(tiny_cnn, class_tree, tmp_path, change):
    out = tmp_path / "out"
    run_tiny(tiny_cnn, [1, 2], class_tree, out)
    again = run_tiny(tiny_cnn, [1, 2], class_tree, out, **change)
    assert not any(r.stored for r in again)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"steps": 5}, "steps"),  # settings
        ({"reference_count": 3}, "references"),
        ({"taps": ["stage2"]}, "taps"),  # the method's options
    ],
)
def test_a_changed_input_does_not_replace_the_stored_pictures_unasked(
    tiny_cnn, class_tree, tmp_path, change, said
):
    out = tmp_path / "out"
    first = run_tiny(tiny_cnn, [1, 2], class_tree, out)
    before = {path: path.read_bytes() for path in out.iterdir() if path.suffix != ".sqlite"}
    with pytest.raises(VitalError, match=rf"already holds the picture .*{said}.*force=True"):
        run_tiny(tiny_cnn, [1, 2], class_tree, out, **change)
    assert {path: path.read_bytes() for path in before} == before  # nothing rewritten
    again = run_tiny(tiny_cnn, [1, 2], class_tree, out, force=True, **change)
    assert not any(r.stored for r in again) and len(again) == len(first)


def test_other_weights_compute_again(class_tree, tmp_path):
    from tests.conftest import tiny_cnn_model

    out = tmp_path / "out"
    run_tiny(tiny_cnn_model(seed=0), [1], class_tree, out)
    # the other model's picture would go into the same files: asked first, as other settings
    with pytest.raises(VitalError, match=r"made with other inputs \(model"):
        run_tiny(tiny_cnn_model(seed=1), [1], class_tree, out)
    assert not run_tiny(tiny_cnn_model(seed=1), [1], class_tree, out, force=True)[0].stored


def test_an_interrupted_run_resumes_to_the_uninterrupted_pictures(
    tiny_cnn, class_tree, tmp_path, monkeypatch
):
    whole = run_tiny(tiny_cnn, [1, 2, 3], class_tree, tmp_path / "whole", batch_size=2)

    def stop_after_the_first_batch(result):
        if result.target.index == 2:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tiny_cnn, [1, 2, 3], class_tree, out, batch_size=2,
                 on_result=stop_after_the_first_batch)  # fmt: skip
    assert len(list(out.glob("*.json"))) == 2  # the first batch was written before the stop
    resumed = run_tiny(tiny_cnn, [1, 2, 3], class_tree, out, batch_size=2)
    assert [r.stored for r in resumed] == [True, True, False]
    for a, b in zip(whole, resumed, strict=True):
        assert torch.equal(a.saved_pixels, b.saved_pixels)


def test_a_batch_is_reused_whole_or_run_whole(tiny_cnn, class_tree, tmp_path):
    # One picture of a batch missing (a stop while the batch was being written): the batch runs
    # again, so its pictures keep the float rounding they share.
    out = tmp_path / "out"
    first = run_tiny(tiny_cnn, [1, 2], class_tree, out)
    first[1].paths["json"].unlink()
    first[1].paths["png"].unlink()
    again = run_tiny(tiny_cnn, [1, 2], class_tree, out)
    assert [r.stored for r in again] == [False, False]


@pytest.mark.parametrize("damage", ["delete", "garble"])
def test_a_damaged_picture_is_made_again(tiny_cnn, class_tree, tmp_path, damage):
    out = tmp_path / "out"
    first = run_tiny(tiny_cnn, [1], class_tree, out)[0]
    png = first.paths["png"]
    if damage == "delete":
        png.unlink()
    else:
        png.write_bytes(b"not a png")
    again = run_tiny(tiny_cnn, [1], class_tree, out)[0]
    assert not again.stored and torch.equal(again.saved_pixels, first.saved_pixels)


def test_a_channel_is_reused_with_its_map_and_only_with_its_references(
    tiny_cnn, tmp_path, monkeypatch
):
    images = tmp_path / "images"
    write_images(images, 4, seed=3)
    other = tmp_path / "other"
    write_images(other, 4, seed=4)
    out = tmp_path / "out"
    target = [Channel("stage2", 1)]
    first = run_tiny(tiny_cnn, target, images, out)[0]
    with pytest.raises(VitalError, match="references"):  # other references: asked, not done
        run_tiny(tiny_cnn, target, other, out)
    assert not run_tiny(tiny_cnn, target, other, out, force=True)[0].stored
    first = run_tiny(tiny_cnn, target, images, out, force=True)[0]  # these again
    refuse_to_optimise(monkeypatch)
    again = run_tiny(tiny_cnn, target, images, out)[0]
    assert again.stored and again.alpha is not None
    assert torch.equal(again.alpha, first.alpha)


@pytest.mark.parametrize("force", ["yes", 1, None])
def test_force_is_a_bool(tiny_cnn, class_tree, tmp_path, force):
    with pytest.raises(VitalError, match="force is True or False"):
        run_tiny(tiny_cnn, [1], class_tree, tmp_path / "out", force=force)


def test_the_demo_run_again_reuses_its_pictures_and_force_makes_them_again(capsys, tmp_path):
    from vital import cli

    def demo(*extra):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["demo", "--steps", "1", "--out", str(tmp_path), *extra])
        assert exit_info.value.code == 0
        return [line for line in capsys.readouterr().out.splitlines() if "->" in line]

    assert not any(line.endswith("(stored)") for line in demo())
    assert sum(line.endswith("(stored)") for line in demo()) == 3
    assert not any(line.endswith("(stored)") for line in demo("--force"))
