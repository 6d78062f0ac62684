"""Leftovers of the last closing note, second batch: each test fails before its fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from tests.conftest import tiny_cnn_model, write_images
from typer.testing import CliRunner

import vital
from vital.errors import VitalError

# --- 1. a record whose target is of an unknown kind ---------------------------------------------


def _record(target: dict) -> dict:
    return {
        "method": "vital", "model": {"name": "m", "fingerprint": "f"}, "target": target,
        "settings": {}, "seed": 0, "evaluation": {}, "final_loss": {}, "final_total": None,
        "loss_history": [1.0], "seconds": 1.0, "batch_size": 1, "device": "cpu",
    }  # fmt: skip


def test_a_record_whose_target_kind_is_unknown_is_refused_naming_file_field_and_kinds(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_record({"kind": "neuron", "index": 3})))
    # read as valid before: the unit id then failed deep inside the store or the atlas
    with pytest.raises(VitalError) as error:
        vital.Record.from_file(path)
    message = str(error.value)
    assert message.startswith(f"{path} is damaged: ")
    assert "target.kind is 'neuron'" in message and "(class, channel, direction)" in message
    assert "Move it away (or delete it)" in message
    with pytest.raises(VitalError, match=r"target\.kind is None"):  # no kind at all
        vital.Record.from_dict(_record({"index": 3}))


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ({"kind": "class"}, "class target lacks index"),
        ({"kind": "channel", "index": 2}, "channel target lacks layer"),
        ({"kind": "class", "index": 1.5}, "target.index is a whole number, not 1.5"),
        ({"kind": "class", "index": True}, "target.index is a whole number, not True"),
        ({"kind": "direction", "layer": "L", "name": "d", "direction": "up"}, "list of numbers"),
    ],
)
def test_a_record_target_of_a_known_kind_missing_its_fields_is_refused(target, said):
    with pytest.raises(VitalError, match=said):
        vital.Record.from_dict(_record(target))


@pytest.mark.parametrize(
    "target",
    [
        {"kind": "class", "index": 1},  # an older record without the name
        {"kind": "class", "index": 1, "name": "class 1"},
        {"kind": "channel", "layer": "stage2", "index": 0},
        {"kind": "direction", "layer": "stage2", "name": "d", "direction": [0.5, 1.0]},
    ],
)
def test_the_targets_vital_writes_still_read(target):
    assert vital.Record.from_dict(_record(target)).target == target


# --- 2. atlas import of a class index beyond the model's classes ------------------------------


@pytest.fixture(scope="module")
def concepts_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("concepts-classes")
    write_images(root / "images", 3, size=64)
    vital.concepts(
        tiny_cnn_model(), 3, root / "images", layer="stage3", count=2, crops=12, examples=2,
        pictures=False, out=root / "run", progress=False,
    )  # fmt: skip
    return root / "run"


def _edited(run: Path, tmp_path: Path, **fields) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    record = json.loads((copy / "concepts.json").read_text())
    for key, value in fields.items():
        where, _, name = key.partition("__")
        (record[where] if name else record)[name or where] = value
    (copy / "concepts.json").write_text(json.dumps(record))
    return copy


def test_the_concepts_report_stores_how_many_classes_the_model_has(concepts_run):
    record = json.loads((concepts_run / "concepts.json").read_text())
    assert record["class"] == {"index": 3, "name": "class 3", "classes": 10}


def test_importing_a_class_beyond_the_models_classes_is_refused_before_any_work(
    concepts_run, tmp_path
):
    from vital.cli import app
    from vital.concepts import import_concepts

    run = _edited(concepts_run, tmp_path, class__index=10)
    atlas = tmp_path / "atlas"
    with pytest.raises(VitalError) as error:
        import_concepts(run, atlas)
    message = str(error.value)
    assert "its class.index is 10, beyond the model's 10 classes (0 to 9;" in message
    assert "`vital classes MODEL` lists them" in message  # tiny_cnn is no zoo name
    result = CliRunner().invoke(app, ["atlas", "import", str(run), "--out", str(atlas)])
    assert result.exit_code != 0 and isinstance(result.exception, VitalError)
    assert "beyond the model's 10 classes" in str(result.exception)
    assert not atlas.exists()  # refused before the atlas was made
    import_concepts(_edited(concepts_run, tmp_path / "ok", class__index=9), atlas, render=False)


def test_the_refusal_names_the_zoo_models_classes_command(concepts_run, tmp_path):
    from vital.concepts import import_concepts

    run = _edited(
        concepts_run, tmp_path, model="mobilenet_v2", model_info__weights="embedded",
        class__index=1000, class__classes=1000,
    )  # fmt: skip
    with pytest.raises(VitalError, match=r"0 to 999; `vital classes mobilenet_v2` lists them"):
        import_concepts(run, tmp_path / "atlas")
    with pytest.raises(VitalError, match=r"class\.classes is \"ten\", not a whole number"):
        import_concepts(_edited(concepts_run, tmp_path / "t", class__classes="ten"), tmp_path)


# --- 3. a closed pipe: exit status 141, nothing on stderr ---------------------------------------


@pytest.mark.parametrize("arguments", [["--version"], ["classes"]])
def test_a_pipe_closed_early_exits_141_quietly(tmp_path, arguments):
    source = Path(vital.__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    read_end, write_end = os.pipe()
    os.close(read_end)  # `vital … | head -1` whose head has left: every write is EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "vital", *arguments], stdout=write_end,
            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=environment, timeout=300,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")  # 1 before: a failure to `pipefail`


# --- 4. mine(out=), as every other API function names its output --------------------------------


def test_mine_takes_out_and_its_old_database_keyword_with_a_warning(tmp_path):
    import inspect

    from vital.mining import mined

    assert list(inspect.signature(vital.mine).parameters)[:4] == ["model", "layer", "data", "out"]
    model = tiny_cnn_model()
    write_images(tmp_path / "data", 3)
    kwargs = dict(channels=[0], top_images=2, reference_count=1, patch_side=16, workers=0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        new = vital.mine(model, "stage2", tmp_path / "data", out=tmp_path / "m", **kwargs,
                         progress=False)  # fmt: skip
    assert not [w for w in seen if issubclass(w.category, FutureWarning)]
    assert new.database == tmp_path / "m" / "mining.sqlite"
    with pytest.warns(FutureWarning, match=r"mine: database= is now out=") as warned:
        old = vital.mine(model, "stage2", tmp_path / "data", database=tmp_path / "m", **kwargs,
                         progress=False)  # fmt: skip
    assert warned[0].filename == __file__  # it points at the caller's line
    assert old.database == new.database and old.reused == new.units  # the same index
    assert len(mined(old.database, model, "stage2", 0)[1]) == 1
    with (
        pytest.raises(VitalError, match="database= is the old name of out="),
        pytest.warns(FutureWarning),
    ):
        vital.mine(model, "stage2", tmp_path / "data", tmp_path / "m", database=tmp_path / "x")
    assert not (tmp_path / "x").exists()
