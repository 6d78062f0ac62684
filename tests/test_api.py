import inspect
import json
import sqlite3

import pytest
import torch
from tests.conftest import write_images

import vital
from vital.api import class_references, class_target
from vital.errors import VitalError
from vital.targets import ClassTarget


def run_tiny(model, targets, folder, seed=0, steps=6, **kwargs):
    settings = vital.Settings(steps=steps, seed=seed, jitter=3)
    return vital.visualize(
        model, targets, folder, settings=settings, progress=False, reference_count=4, **kwargs
    )


@pytest.fixture
def class_tree(tmp_path):
    """Class sub-folders named by index, as users often lay out their own data."""
    for index in (1, 2, 3):
        write_images(tmp_path / "tree" / str(index), 2, seed=index)
    return tmp_path / "tree"


def test_seeded_cpu_run_is_bit_for_bit_repeatable(tiny_cnn, class_tree):
    first = run_tiny(tiny_cnn, [1, 2], class_tree, seed=5)
    second = run_tiny(tiny_cnn, [1, 2], class_tree, seed=5)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.pixels, b.pixels)
        assert a.record.loss_history == b.record.loss_history
    third = run_tiny(tiny_cnn, [1, 2], class_tree, seed=6)
    assert not torch.equal(first[0].pixels, third[0].pixels)


def test_a_batch_gives_each_target_what_it_gets_alone(tiny_cnn, class_tree):
    # In float64 the batched kernels' different summation orders vanish below Adam's eps, so
    # the batch must reproduce each lone run exactly; float32 differs by rounding only.
    tiny_cnn.module.double()
    together = run_tiny(tiny_cnn, [1, 2, 3], class_tree, seed=10)
    for offset, target in enumerate([1, 2, 3]):
        alone = run_tiny(tiny_cnn, [target], class_tree, seed=10 + offset)[0]
        assert alone.record.seed == together[offset].record.seed
        assert torch.allclose(alone.pixels, together[offset].pixels, atol=1e-9, rtol=0)


def test_batches_smaller_than_the_target_list(tiny_cnn, class_tree):
    results = run_tiny(tiny_cnn, [1, 2, 3], class_tree, seed=0, batch_size=2)
    assert [r.record.seed for r in results] == [0, 1, 2]
    assert [r.record.batch_size for r in results] == [2, 2, 1]


def test_the_loss_falls(tiny_cnn, class_tree):
    result = run_tiny(tiny_cnn, [2], class_tree, steps=40)[0]
    history = result.record.loss_history
    assert len(history) == 40 and history[-1] < 0.5 * history[0]


def test_records_and_files(tiny_cnn, class_tree, tmp_path):
    out = tmp_path / "out"
    results = run_tiny(tiny_cnn, [1, 3], class_tree, out=out)
    record = json.loads(results[1].paths["json"].read_text())
    assert record["target"] == {"kind": "class", "index": 3, "name": "class 3"}
    assert record["model"]["name"] == "tiny_cnn" and record["model"]["fingerprint"]
    assert [t["layer"] for t in record["taps"]] == ["stem", "stage1", "stage2", "stage3"]
    assert record["settings"]["steps"] == 6 and record["seed"] == 1
    assert record["references"]["count"] == 4 and record["references"]["distinct_images"] == 2
    assert set(record["final_loss"]) == {"stem", "stage1", "stage2", "stage3"}
    assert 0 <= record["evaluation"]["probability"] <= 1 and record["evaluation"]["rank"] >= 1
    assert record["seconds"] > 0
    assert results[1].paths["png"].is_file()
    with sqlite3.connect(out / "index.sqlite") as connection:
        assert connection.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 2


def test_each_finished_result_is_reported_at_once(tiny_cnn, class_tree):
    seen = []
    run_tiny(tiny_cnn, [1, 2, 3], class_tree, batch_size=1, on_result=seen.append)
    assert [r.target.index for r in seen] == [1, 2, 3]


def test_user_taps_and_vit(tiny_vit, class_tree):
    result = run_tiny(tiny_vit, [1], class_tree, taps=["blocks.0=2", "blocks.3"])[0]
    assert result.record.taps == [
        {"layer": "blocks.0", "weight": 2.0},
        {"layer": "blocks.3", "weight": 1.0},
    ]
    with pytest.raises(VitalError, match="did you mean 'blocks.3'"):
        run_tiny(tiny_vit, [1], class_tree, taps=["blocks.33"])


def test_reference_lookup(tiny_cnn, class_tree, image_folder, tmp_path):
    target = ClassTarget(2, "class 2")
    assert "tree/2" in class_references(tiny_cnn, target, class_tree).description
    with pytest.raises(VitalError, match="none for class 4"):
        class_references(tiny_cnn, ClassTarget(4, "class 4"), class_tree)
    with pytest.raises(VitalError, match="same references"):
        class_references(tiny_cnn, target, image_folder)
    assert class_references(tiny_cnn, target, image_folder, shared_ok=True).sources
    with pytest.raises(VitalError) as error:
        class_references(tiny_cnn, target, None)
    assert str(error.value).startswith(  # the class once (not "class 2 (2)"), in the API's words
        "no embedded photo shows class 2; give images of it with references=DIR"
    )


def test_concepts_without_an_embedded_photo_ask_for_data(tiny_cnn, tmp_path):
    with pytest.raises(VitalError) as error:
        vital.concepts(tiny_cnn, 3, None, layer="stage3", pictures=False, out=tmp_path)
    assert str(error.value).startswith(
        "no embedded photo shows class 3; give images of it with data=DIR"
    )


def test_bad_targets(tiny_cnn, class_tree):
    with pytest.raises(VitalError, match="no targets"):
        run_tiny(tiny_cnn, [], class_tree)
    with pytest.raises(VitalError, match="out of range"):
        class_target(tiny_cnn, 12)
    with pytest.raises(VitalError, match="batch_size=N is a whole number of at least 1"):
        run_tiny(tiny_cnn, [1], class_tree, batch_size=0)


@pytest.mark.slow
def test_mobilenet_short_run_raises_the_target_probability(tmp_path):
    model = vital.load_model("mobilenet_v2")
    settings = vital.Settings(steps=60, seed=0)
    result = vital.visualize(
        model, "espresso", None, settings=settings, progress=False, reference_count=8
    )[0]
    evaluation = result.record.evaluation
    assert evaluation["initial_probability"] < 0.01
    assert evaluation["probability"] > 20 * evaluation["initial_probability"]
    assert evaluation["probability"] > 0.1


def test_vital_concepts_shows_the_functions_parameters():
    # The package is callable (vital.concepts(...)); its signature is the function's, so help,
    # IDEs and inspect show the parameters instead of (*args, **kwargs).
    from vital.concepts.pipeline import concepts as function

    shown = inspect.signature(vital.concepts)
    assert shown == inspect.signature(function)
    assert {"layer", "count", "crop_scale"} <= set(shown.parameters)
