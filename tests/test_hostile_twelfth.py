"""A twelfth hostile round: refused runs that left files behind, and atlas files of the user's.

Each test failed before its fix: `atlas build`, `mine`, `explain` and `concepts` refused for a
layer, their images, a count, a store, a backend or a setting only after writing their folder
(`atlas.sqlite`, `mining.lock`, the site's skeleton, a concepts mark and its examples), a plain
folder of unreadable images ended `concepts` in a traceback, and an `atlas.sqlite` the user
wrote was read as an atlas.
"""

import hashlib
import sqlite3

import pytest
from tests.conftest import tiny_cnn_model

import vital
from vital.errors import VitalError

FAST = {"steps": 1, "resolution": 32}


def files_of(folder):
    """Every file under ``folder`` with its SHA-256: what a refused run must leave as it was."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# --- atlas build and mine: refused before the folder -----------------------------------------


@pytest.fixture
def atlas_cli(monkeypatch, capsys):
    """``vital atlas build ARGUMENTS`` with the tiny model: returns (exit status, stderr)."""
    from test_hostile import run

    monkeypatch.setattr("vital.atlas.ModelSpec.__call__", lambda self: tiny_cnn_model())

    def build(*arguments):
        code, _, err = run(monkeypatch, capsys, "atlas", "build", "--steps", "1", *arguments)
        return code, err

    return build


REFUSED_BUILDS = {
    # mining's own checks, made after atlas.sqlite and mining.lock were written
    "a layer without positions": (["--layer", "head", "--data", "{refs}"], "has no positions"),
    "missing data": (["--layer", "stage3", "--data", "{tmp}/none"], "neither a folder"),
    "a channel past the layer": (
        ["--layer", "stage3", "--channel", "99", "--data", "{refs}"],
        "do not exist",
    ),
    "a patch side past the crop": (
        ["--layer", "stage3", "--patch", "3", "--data", "{refs}"],
        "--patch N",
    ),
    "--top-images 10**23": (
        ["--layer", "stage3", "--data", "{refs}", "--top-images", str(10**23)],
        "--top-images N is at most",
    ),
    # a class's references, read after the site's skeleton was written
    "a class folder with no images": (["-c", "1", "--refs", "{tmp}/empty"], "no images found"),
    "--ref-count 10**23 (classes)": (
        ["-c", "1", "--refs", "{refs}", "--ref-count", str(10**23)],
        "--ref-count N is at most",
    ),
    "--ref-count 10**23 (channels)": (
        ["--layer", "stage3", "--data", "{refs}", "--ref-count", str(10**23)],
        "--ref-count N is at most",
    ),
    "--ref-count 0": (["-c", "1", "--refs", "{refs}", "--ref-count", "0"], "at least 1"),
    # concepts at a layer without positions: refused after the class's picture was made
    "--by concepts at a layer without positions": (
        "--by concepts --layer head -c 1 --refs {refs} --data {refs}/1 --count 2 --crops 8".split(),
        "has no positions",
    ),
}


def _typed(arguments, tmp_path, refs):
    (tmp_path / "empty" / "1").mkdir(parents=True, exist_ok=True)
    return [a.format(refs=refs, tmp=tmp_path) for a in arguments]


@pytest.mark.parametrize("case", sorted(REFUSED_BUILDS))
def test_an_atlas_build_refused_by_its_inputs_writes_no_folder(atlas_cli, tmp_path, refs, case):
    # The layer, images and counts were checked by mining and the references' reading, after
    # the atlas was prepared: a refused build left atlas.sqlite (and mining.lock, or the site's
    # index.html, static/ and results/) where the user meant no atlas.
    from test_hostile import assert_one_line_error

    arguments, said = REFUSED_BUILDS[case]
    out = tmp_path / "atlas"
    code, err = atlas_cli(*_typed(arguments, tmp_path, refs), "--out", out)
    assert_one_line_error(code, err, said)
    assert not out.exists()


def test_an_atlas_build_refused_by_its_inputs_leaves_an_atlas_as_it_was(atlas_cli, tmp_path, refs):
    # Into an existing atlas the refused build rendered the site again and claimed files.
    from test_hostile import assert_one_line_error

    out = tmp_path / "atlas"
    code, err = atlas_cli("-c", "1", "--refs", refs, "--out", out)
    assert code in (0, None), err
    before = files_of(out)
    for case in ("a layer without positions", "a class folder with no images", "--ref-count 0"):
        arguments, said = REFUSED_BUILDS[case]
        code, err = atlas_cli(*_typed(arguments, tmp_path, refs), "--out", out)
        assert_one_line_error(code, err, said)
        assert files_of(out) == before, case


@pytest.mark.parametrize("layer, said", [("nope", "not found"), ("head", "has no positions")])
def test_mining_refused_for_its_layer_leaves_no_lock(tmp_path, refs, layer, said):
    # The folder and its mining.lock were made before the layer was looked at.
    from vital.mining import mine

    with pytest.raises(VitalError, match=said):
        mine(tiny_cnn_model(), layer, refs, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    with pytest.raises(VitalError, match=said):
        mine(tiny_cnn_model(), layer, refs, tmp_path / "mine", progress=False)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


# --- explain: mining's and the stores' refusals before the atlas -----------------------------


def _users_atlas_file(folder, kind):
    """``folder/atlas.sqlite`` as a user may write it: text, or a database of their tables."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "atlas.sqlite"
    if kind == "text":
        path.write_text("my notes\n")
    else:
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE mine (x)")
            connection.execute("INSERT INTO mine VALUES (1)")
        connection.close()
    return path


@pytest.mark.parametrize("wrong", ["data", "patch", "top_images", "store"])
def test_an_explanation_refused_for_its_mining_or_store_writes_no_atlas(tmp_path, refs, wrong):
    # The atlas (atlas.sqlite, results/, and mining.lock) was made before mining looked at the
    # images, the patch side and the counts; a store that is not vital's was refused after the
    # mining pass, beside a whole explanation's files.
    from vital.explanation import explain

    arguments = {"data": refs, "top_images": 4, "reference_count": 2, "patch_side": 16}
    said = {
        "data": "neither a folder",
        "patch": "patch side",
        "top_images": "top_images=N is at most",
        "store": "atlas.sqlite is not",
    }[wrong]
    if wrong == "data":
        arguments["data"] = tmp_path / "none"
    elif wrong == "patch":
        arguments["patch_side"] = 3
    elif wrong == "top_images":
        arguments["top_images"] = 10**23
    else:
        arguments["store"] = _users_atlas_file(tmp_path / "theirs", "text").parent
    out = tmp_path / "explained"
    with pytest.raises(VitalError, match=said):
        explain(
            tiny_cnn_model(), refs / "1" / "img000.png", layer="stage3", top=1, out=out,
            settings={"steps": 1}, progress=False, **arguments,
        )  # fmt: skip
    assert not out.exists()


# --- concepts: refused before the folder is marked ---------------------------------------------


@pytest.mark.parametrize("wrong", ["layer", "relevance", "setting"])
def test_a_concepts_run_refused_for_its_layer_backend_or_setting_leaves_no_mark(
    tmp_path, refs, wrong
):
    # A layer without positions and an unknown backend were refused once the folder was
    # marked (`.vital-concepts`, which hides it from listings of images); a setting no picture
    # takes only after the discovery had written its directions, examples and maps.
    from vital.concepts import concepts

    arguments = {"layer": "stage3", "count": 2, "crops": 8, "settings": {"steps": 1}}
    said = {"layer": "has no positions", "relevance": "unknown relevance backend"}
    said["setting"] = "setting 9 does not exist"
    if wrong == "layer":
        arguments["layer"] = "head"
    elif wrong == "relevance":
        arguments["relevance"] = "nope"
    else:
        arguments["setting"] = 9
    out = tmp_path / "concepts"
    with pytest.raises(VitalError, match=said[wrong]):
        concepts(tiny_cnn_model(), 1, refs / "1", out=out, progress=False, **arguments)
    assert not out.exists()


def test_concepts_over_images_none_of_which_reads_says_so(tmp_path, unreadable_images):
    # A plain folder of several files none of which is an image ended in "ValueError: min()
    # arg is an empty sequence" (the class's image was chosen among the read ones).
    from vital.concepts import concepts

    data = unreadable_images
    with pytest.raises(VitalError, match="none of the 2 images could be read") as refused:
        concepts(
            tiny_cnn_model(), 1, data, layer="stage3", count=2, crops=8, pictures=False,
            out=tmp_path / "out", progress=False,
        )  # fmt: skip
    assert "a.png" in str(refused.value)
    assert not (tmp_path / "out").exists()


# --- an atlas.sqlite of the user's ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "tables"])
def test_an_atlas_sqlite_the_user_wrote_is_not_read_as_an_atlas(tmp_path, refs, kind):
    # Its folder was taken for an atlas: ResultStore said "is an atlas: its results are …",
    # and a run into its results/ was refused as "an atlas's results folder".
    from vital.atlas import Atlas

    folder = tmp_path / "mine"
    users = _users_atlas_file(folder, kind)
    written = users.read_bytes()
    with pytest.raises(VitalError, match="its atlas.sqlite is not an atlas's index") as refused:
        vital.ResultStore(folder)
    assert "is an atlas" not in str(refused.value)
    (made,) = vital.visualize(
        tiny_cnn_model(), [1], refs / "1", out=folder / "results", settings=FAST, progress=False
    )
    assert made.paths["png"].is_file()
    with pytest.raises(VitalError, match="is not an atlas database written by vital"):
        Atlas(folder)  # a writer refuses it, as before
    assert users.read_bytes() == written
