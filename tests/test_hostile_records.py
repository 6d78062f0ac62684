"""Hand-edited or damaged files that vital wrote: each is named in one line, never a traceback.

Records in an atlas are checked against its ledger (what vital wrote, by SHA-256): a changed
one is left out of the pages with a warning naming it; records read through the API are
type-checked field by field; a ``concepts.json`` to import is checked before it is copied.
"""

import json
import shutil
import sqlite3

import pytest
from tests.conftest import tiny_cnn_model, write_images
from typer.testing import CliRunner

import vital
from vital.atlas import build_atlas, render_site
from vital.cli import app
from vital.concepts import concepts, import_concepts
from vital.errors import VitalError
from vital.references import from_folder
from vital.targets import ClassTarget

TARGETS = [ClassTarget(0, "class 0"), ClassTarget(1, "class 1")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A finished two-class atlas, copied by each test that damages it."""
    root = tmp_path_factory.mktemp("records")
    write_images(root / "data", 2)
    build(root, root / "atlas")
    return root


def build(root, folder, **options):
    return build_atlas(
        tiny_cnn_model(),
        TARGETS,
        lambda t: from_folder(root / "data", count=2),
        folder,
        {"steps": 2},
        progress=False,
        **options,
    )


@pytest.fixture
def atlas(built, tmp_path):
    folder = tmp_path / "atlas"
    shutil.copytree(built / "atlas", folder)
    return folder


def first_record(folder):
    return sorted((folder / "results").glob("*class-0*.json"))[0]


@pytest.mark.parametrize("edit", [{"target": "x"}, {"evaluation": {"probability": 0.99}}])
def test_a_hand_edited_unit_record_is_left_out_of_the_pages_with_one_warning(atlas, edit):
    path = first_record(atlas)
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, **edit}))
    with pytest.warns(UserWarning) as caught:
        render_site(atlas)
    assert len(caught) == 1 and str(path) in str(caught[0].message)
    assert "changed since vital wrote it" in str(caught[0].message)
    index = (atlas / "index.html").read_text()
    assert index.count("class='card'") == 1 and "0.99" not in index
    # The build neither shows nor overwrites it: it says which file to move away.
    with pytest.raises(VitalError, match=f"{path}.*changed since vital wrote it.*Move it away"):
        build(atlas.parent.parent / "records0", atlas)


def test_a_rerun_recomputes_a_unit_whose_record_is_gone_and_says_why(built, atlas):
    path = first_record(atlas)
    path.unlink()
    report = build(built, atlas)
    assert report.forced == [] and report.finished == 1 and report.reused == ["class/1"]
    assert "is gone" in report.incomplete["class/0"] and path.is_file()


def test_a_unit_whose_picture_is_gone_is_recomputed_not_shown_broken(built, atlas):
    png = first_record(atlas).with_suffix(".png")
    png.unlink()
    report = build(built, atlas)
    assert report.reused == ["class/1"] and report.finished == 1
    assert str(png) in report.incomplete["class/0"] and png.is_file()


def test_the_command_line_gives_the_true_reason_for_recomputing(built, atlas, capsys):
    from vital.cli.atlas import _report_reuse

    first_record(atlas).unlink()
    _report_reuse(build(built, atlas))
    said = capsys.readouterr().out
    assert "--force" not in said and "recomputing class/0: its record" in said


@pytest.mark.parametrize(
    "edit, said",
    [("{}", "changed since vital wrote it"), (None, "is damaged: not a vital explanation")],
)
def test_a_hand_edited_explanation_is_named_when_left_out(atlas, edit, said):
    from vital.atlas.ledger import Ledger

    path = atlas / "explanations" / "mine.json"
    ledger = Ledger(atlas)
    ledger.claim([path])  # as vital writes one (a damaged one here), then someone edits it
    path.parent.mkdir()
    path.write_text('{"slug": "mine"}')
    ledger.seal([path])
    if edit is not None:
        path.write_text(edit)
    with pytest.warns(UserWarning, match=said) as caught:
        render_site(atlas)
    assert len(caught) == 1 and str(path) in str(caught[0].message)


def test_damaged_inputs_in_the_atlas_index_are_one_line_naming_it(atlas):
    with sqlite3.connect(atlas / "atlas.sqlite") as connection:
        connection.execute("UPDATE atlas_units SET inputs = '{not json'")
    connection.close()
    with pytest.raises(VitalError, match=r"atlas index .*atlas\.sqlite cannot be read.*Move it"):
        render_site(atlas)


def test_a_damaged_row_of_a_result_index_names_the_index_and_what_to_do(tmp_path):
    store = vital.ResultStore(tmp_path / "out", create=True)
    with sqlite3.connect(store.index) as connection:
        connection.execute(
            "INSERT INTO results VALUES ('class/0', 'vital', 'x', '{}', 0, 'a.png', '{oops', 0)"
        )
    connection.close()
    with pytest.raises(VitalError) as caught:
        store.records()
    message = str(caught.value)
    assert str(store.index) in message and "class/0" in message
    assert "Move it away (or delete it) and run again" in message


def test_a_damaged_record_file_names_the_file_and_what_to_do(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"method": "vital"}')
    with pytest.raises(VitalError, match=f"^{path} is damaged: the record lacks .*Move it away"):
        vital.Record.from_file(path)


def record_data():
    return {
        "method": "vital", "model": {"name": "m", "fingerprint": "f"},
        "target": {"kind": "class", "index": 0, "name": "class 0"},
        "settings": {"scale": [0.1, 0.2]}, "seed": 0, "evaluation": {}, "final_loss": {},
        "final_total": None, "loss_history": [1.0, None], "seconds": 1.0, "batch_size": 1,
        "device": "cpu",
    }  # fmt: skip


@pytest.mark.parametrize(
    "field, value",
    [
        ("seed", "zero"),
        ("seed", True),
        ("evaluation", [1]),
        ("model", "resnet"),
        ("loss_history", "low"),
        ("loss_history", ["low"]),
        ("files", {"png": 5}),
    ],
)
def test_a_record_field_of_the_wrong_type_is_refused_naming_it(field, value):
    vital.Record.from_dict(record_data())  # the untouched record reads
    with pytest.raises(VitalError, match=f"record's {field}"):
        vital.Record.from_dict({**record_data(), field: value})


def test_an_explanation_whose_channels_are_no_objects_is_refused_naming_them():
    with pytest.raises(VitalError, match=r"explanation's top\[0\] is a string"):
        vital.Explanation.from_dict({"top": ["x"]})


def test_a_record_made_now_equals_the_same_record_read_back():
    data = record_data()
    made = vital.Record(**{**data, "settings": {"scale": (0.1, 0.2)}})
    made.model["preprocessing"] = {"mean": [0.5]}
    made = vital.Record(**{**data, "model": {"preprocessing": {"mean": (0.5,)}}})
    assert made == vital.Record.from_json(made.to_json())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("concepts-run")
    write_images(root / "images", 3, size=64)
    out = root / "run"
    concepts(
        tiny_cnn_model(), 3, root / "images", layer="stage3", count=2, crops=12, examples=2,
        pictures=False, out=out, progress=False,
    )  # fmt: skip
    return out


def edited(run, tmp_path, change):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    record = json.loads((copy / "concepts.json").read_text())
    change(record)
    (copy / "concepts.json").write_text(json.dumps(record))
    return copy


def _set(path, value):
    def change(record):
        *parents, last = path
        target = record
        for key in parents:
            target = target[key]
        target[last] = value

    return change


@pytest.mark.parametrize(
    "path, value, said",
    [
        (["concepts"], 5, "concepts is 5, not a list"),
        (["concepts"], ["a"], r"concepts\[0\] is \"a\", not a JSON object"),
        (["class"], "three", 'class is "three"'),
        (["model"], None, "model is null, not a string"),
        (["layer"], 7, "layer is 7, not a string"),
        (["concepts", 0, "share"], "lots", r"concepts\[0\].share is \"lots\""),
        (["class", "index"], -1, "class.index is -1"),
        (["concepts", 0, "examples", 0], "../../../etc/passwd", "outside its folder"),
        (["files", "overview"], "/etc/passwd", "outside its folder"),
    ],
)
def test_a_hand_edited_concepts_json_is_refused_naming_the_field(run, tmp_path, path, value, said):
    copy = edited(run, tmp_path, _set(path, value))
    with pytest.raises(VitalError, match=said) as caught:
        import_concepts(copy, tmp_path / "atlas", render=False)
    assert str(copy / "concepts.json") in str(caught.value)
    assert not (tmp_path / "atlas" / "concepts").exists()


@pytest.mark.parametrize("folder", [None, 5, b"\xff-no-such-run"])
def test_import_concepts_takes_paths_as_every_entry_point_does(tmp_path, folder):
    with pytest.raises(VitalError, match="folder"):
        import_concepts(folder, tmp_path / "atlas")


def test_import_concepts_refuses_no_atlas_folder_in_one_line(run):
    with pytest.raises(VitalError, match="the atlas folder is a path"):
        import_concepts(run, None)


def test_import_concepts_takes_bytes_paths(run, tmp_path):
    added = import_concepts(bytes(run), bytes(tmp_path / "atlas"), render=False)
    assert (added.folder / "concepts.json").is_file()


def test_the_command_line_says_a_damaged_import_in_one_line(run, tmp_path):
    copy = edited(run, tmp_path, _set(["layer"], 7))
    result = CliRunner().invoke(app, ["atlas", "import", str(copy), "--out", str(tmp_path / "a")])
    assert isinstance(result.exception, VitalError) and "layer is 7" in str(result.exception)


def test_a_result_store_opened_to_read_makes_nothing_and_says_what_it_is(tmp_path):
    """ResultStore(typo) made the folder and an index, and read as a folder without results."""
    with pytest.raises(VitalError, match="holds no vital results"):
        vital.ResultStore(tmp_path / "typo").records()
    assert not (tmp_path / "typo").exists()
    (tmp_path / "atlas").mkdir()
    (tmp_path / "atlas" / "atlas.sqlite").write_bytes(b"")
    with pytest.raises(VitalError, match=r"is an atlas: its results are ResultStore\("):
        vital.ResultStore(tmp_path / "atlas")
    assert not (tmp_path / "atlas" / "index.sqlite").exists()
    with pytest.raises(VitalError, match="does not exist"):
        vital.ResultStore(tmp_path / "atlas" / "results", tmp_path / "atlas" / "missing.sqlite")
    made = vital.ResultStore(tmp_path / "new", create=True)
    assert made.index.is_file() and vital.ResultStore(tmp_path / "new").records() == []
