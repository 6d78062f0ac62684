"""Concept pages in the atlas: a page per concept, the class's overview, their links and numbers.

One small atlas (a class, two channels, a class's three concepts on a tiny CNN) is built once
for the tests that only read it; the others build their own.
"""

import inspect
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from tests.conftest import stop_after_the_first_picture, tiny_cnn_model, write_images
from typer.testing import CliRunner

import vital.concepts.atlas
from vital.atlas import build_atlas
from vital.atlas.folder import Atlas
from vital.cli import app
from vital.concepts import add_concepts, concepts
from vital.errors import VitalError
from vital.labels import ClassLabels
from vital.references import from_folder
from vital.targets import Channel, ClassTarget

CONCEPTS = dict(layer="stage3", count=3, crops=18, examples=3, settings={"steps": 2})


class Page(HTMLParser):
    """Links, sources, scripts, text and the ``data-value`` of each element by class."""

    def __init__(self, path: Path):
        super().__init__()
        self.links, self.scripts, self.text, self.attributes = [], [], [], []
        self.values: dict[str, list] = {}
        self.feed(path.read_text("utf-8"))

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("href", "src") if k in attrs]
        if tag == "script":
            self.scripts.append(attrs.get("src"))
        self.attributes += [v for k, v in attrs.items() if k in ("alt", "title", "data-label")]
        if "data-value" in attrs:
            for name in (attrs.get("class") or "").split():
                self.values.setdefault(name, []).append(json.loads(attrs["data-value"]))

    def handle_data(self, text):
        self.text.append(text)


def resolves(page: Path, link: str, root: Path) -> bool:
    """A relative link of ``page`` names a file inside the atlas ``root``."""
    target = (page.parent / unquote(link.split("#")[0].split("?")[0])).resolve()
    return target.is_file() and target.is_relative_to(root.resolve())


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("concept-atlas")
    data = root / "images"
    write_images(data, 3, size=64)
    model = tiny_cnn_model()
    folder = root / "atlas"
    build_atlas(
        model,
        [ClassTarget(3, "class 3"), Channel("stage3", 0), Channel("stage3", 1)],
        lambda t: from_folder(data, count=2),
        folder,
        {"steps": 2},
        progress=False,
    )
    added = add_concepts(model, 3, data, out=folder, progress=False, **CONCEPTS)
    return folder, added, data


def test_a_page_per_concept_and_the_overview_linked_from_the_index_and_the_class(atlas):
    folder, added, _ = atlas
    record = json.loads((added.folder / "concepts.json").read_text())
    assert added.page == added.folder / "index.html" and added.page.is_file()
    pages = {entry["index"]: added.folder / f"concept-{entry['index']}.html"
             for entry in record["concepts"]}  # fmt: skip
    assert len(pages) == 3 and all(page.is_file() for page in pages.values())
    overview = Page(added.page)
    assert [f"concept-{i}.html" for i in pages] == [
        link for link in dict.fromkeys(overview.links) if link.startswith("concept-")
    ]
    overview_link = added.page.relative_to(folder).as_posix()
    assert overview_link in Page(folder / "index.html").links
    class_page = next((folder / "units").glob("vital-class-3-*.html"))
    assert f"../{overview_link}" in Page(class_page).links


def test_every_link_and_image_on_every_page_resolves_inside_the_atlas(atlas):
    folder, _, _ = atlas
    pages = sorted(folder.rglob("*.html"))
    assert len([p for p in pages if p.parent.parent.name == "concepts"]) == 4
    for page in pages:
        for link in Page(page).links:
            assert resolves(page, link, folder), f"{page.relative_to(folder)}: {link}"


def test_the_pages_show_the_numbers_of_concepts_json(atlas):
    folder, added, _ = atlas
    record = json.loads((added.folder / "concepts.json").read_text())
    overview = Page(added.page)
    assert overview.values["share"] == [c["share"] for c in record["concepts"]]
    assert overview.values["relevance"] == [c["relevance"] for c in record["concepts"]]
    assert overview.values["explained"] == [record["explained_share"]]
    assert overview.values["residual"] == [record["residual_share"]]
    ratios = [c["activation"] / c["reference_activation"] for c in record["concepts"]]
    assert overview.values["ratio"] == pytest.approx(ratios)
    directions = np.load(added.folder / "directions.npy")
    for entry in record["concepts"]:
        page = Page(added.folder / f"concept-{entry['index']}.html")
        assert page.values["share"] == [entry["share"]]
        assert page.values["activation"] == [entry["activation"]]
        assert page.values["reference"] == [entry["reference_activation"]]
        assert page.values["coefficient"] == entry["example_coefficients"]
        assert f"{100 * entry['share']:.2f}%" in "".join(page.text)
        # The direction's largest weights, largest first, each a channel of the layer.
        row = directions[entry["index"]]
        assert page.values["weight"] == sorted(
            page.values["weight"], key=lambda w: -abs(w)
        ) and abs(page.values["weight"][0]) == pytest.approx(np.abs(row).max())
        shown = np.array(page.values["weight"])
        assert page.values["held"] == [pytest.approx((shown**2).sum() / (row**2).sum())]
        # Its picture and maps are the record's files.
        assert {entry["picture"], entry["alpha"], *entry["maps"], *entry["examples"]} <= set(
            page.links
        )


def test_a_concept_page_links_the_channels_the_atlas_has(atlas):
    folder, added, _ = atlas
    record = json.loads((added.folder / "concepts.json").read_text())
    directions = np.load(added.folder / "directions.npy")
    linked = 0
    for entry in record["concepts"]:
        page = Page(added.folder / f"concept-{entry['index']}.html")
        units = {link for link in page.links if link.startswith("../../units/")}
        row = directions[entry["index"]]
        top = set(np.argsort(-np.abs(row), kind="stable")[:8]) & {c for c in (0, 1) if row[c]}
        assert len(units) == len(top)  # channels 0 and 1 are the atlas's units
        for channel in top:
            channel_page = next((folder / "units").glob(f"vital-stage3-ch{channel}-*.html"))
            assert f"../../units/{channel_page.name}" in units
            assert f"../{added.page.parent.relative_to(folder).as_posix()}/concept-" in "".join(
                Page(channel_page).links
            )
            linked += 1
    assert linked > 0


def test_a_rerun_reuses_and_a_change_recomputes_saying_what_changed(tmp_path):
    data = tmp_path / "images"
    write_images(data, 2, size=64)
    model, folder = tiny_cnn_model(), tmp_path / "atlas"
    first = add_concepts(model, 2, data, out=folder, progress=False, **CONCEPTS)
    stamps = {p: p.stat().st_mtime_ns for p in first.folder.rglob("*") if p.is_file()}
    again = add_concepts(model, 2, data, out=folder, progress=False, **CONCEPTS)
    assert again.reused and again.folder == first.folder
    assert stamps == {p: p.stat().st_mtime_ns for p in first.folder.rglob("*") if p.is_file()}
    changed = add_concepts(model, 2, data, out=folder, progress=False, **{**CONCEPTS, "count": 2})
    assert not changed.reused and changed.changed == ["discovery.count 3 → 2"]
    assert changed.folder != first.folder and (first.folder / "concepts.json").is_file()
    index = Page(folder / "index.html")  # the current result only
    assert changed.page.relative_to(folder).as_posix() in index.links
    assert first.page.relative_to(folder).as_posix() not in index.links
    forced = add_concepts(
        model, 2, data, out=folder, progress=False, force=True, **{**CONCEPTS, "count": 2}
    )
    assert forced.forced and not forced.reused and forced.folder == changed.folder


def test_an_interrupted_run_leaves_nothing_and_loses_no_finished_set(tmp_path, monkeypatch):
    data = tmp_path / "images"
    write_images(data, 2, size=64)
    model, folder = tiny_cnn_model(), tmp_path / "atlas"
    kept = add_concepts(model, 2, data, out=folder, progress=False, **CONCEPTS)

    def pages() -> list[Path]:  # the atlas's files, but its databases and staging folder
        staging = folder / vital.concepts.atlas.STAGING
        return sorted(
            p
            for p in folder.rglob("*")
            if p.is_file() and p.suffix != ".sqlite" and not p.is_relative_to(staging)
        )

    files = pages()
    run = vital.concepts.atlas.concepts

    def interrupted(*args, **kwargs):
        run(*args, **kwargs)  # everything written in the staging folder, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(vital.concepts.atlas, "concepts", interrupted)
    with pytest.raises(KeyboardInterrupt):
        add_concepts(model, 5, data, out=folder, progress=False, **CONCEPTS)
    assert pages() == files
    monkeypatch.setattr(vital.concepts.atlas, "concepts", run)
    again = add_concepts(model, 2, data, out=folder, progress=False, **CONCEPTS)
    assert again.reused and again.folder == kept.folder
    finished = add_concepts(model, 5, data, out=folder, progress=False, **CONCEPTS)
    assert not finished.reused and finished.page.is_file()
    index = Page(folder / "index.html").links
    assert {p.page.relative_to(folder).as_posix() for p in (kept, finished)} <= set(index)


def test_an_interrupted_set_resumes_from_its_finished_pictures(tmp_path, monkeypatch):
    """Ctrl-C after the first picture: it stays in the atlas's staging folder (once a system
    temporary folder, deleted on the way out), and the same build again takes it."""
    from vital.store import ResultSink

    data = tmp_path / "images"
    write_images(data, 2, size=64)
    model, folder = tiny_cnn_model(), tmp_path / "atlas"
    arguments = dict(out=folder, progress=False, batch_size=1, **CONCEPTS)
    stop_after_the_first_picture(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        add_concepts(model, 2, data, **arguments)
    monkeypatch.undo()
    staging = folder / vital.concepts.atlas.STAGING
    assert len(list(staging.glob("*/pictures/*.json"))) == 1  # the finished picture, kept
    reused = []
    sink = ResultSink.__call__

    def counted(self, result):
        reused.append(result.stored)
        sink(self, result)

    monkeypatch.setattr(ResultSink, "__call__", counted)
    added = add_concepts(model, 2, data, **arguments)
    assert reused == [True, False, False]  # one picture taken, two made
    assert added.page.is_file() and not staging.exists()  # removed once copied in
    assert vital.concepts.atlas.STAGING not in Page(folder / "index.html").links


def test_a_hostile_class_name_is_text_on_every_page(tmp_path):
    data = tmp_path / "images"
    write_images(data, 2, size=64)
    model = tiny_cnn_model()
    hostile = tuple(f"<script>alert('{i}')</script> & \"q{i}\"" for i in range(10))
    model.labels = ClassLabels(names=hostile, synonyms=tuple((n.lower(),) for n in hostile))
    folder = tmp_path / "atlas"
    build_atlas(model, [ClassTarget(4, hostile[4])], lambda t: from_folder(data, count=2), folder,
                {"steps": 1}, progress=False)  # fmt: skip
    added = add_concepts(model, 4, data, out=folder, progress=False, **CONCEPTS)
    assert re.fullmatch(r"[a-z0-9-]+", added.folder.name)
    for page in [folder / "index.html", *added.folder.glob("*.html")]:
        shown = Page(page)
        assert shown.scripts == ["../../static/atlas.js" if page.parent != folder else
                                 "static/atlas.js"], page  # fmt: skip
        assert hostile[4] in "".join(shown.text), page


def test_a_users_concepts_folder_is_refused_and_kept(tmp_path):
    data = tmp_path / "images"
    write_images(data, 2, size=64)
    (tmp_path / "atlas" / "concepts").mkdir(parents=True)
    (tmp_path / "atlas" / "concepts" / "notes.txt").write_text("mine")
    with pytest.raises(VitalError, match="concepts/"):
        add_concepts(tiny_cnn_model(), 2, data, out=tmp_path / "atlas", progress=False, **CONCEPTS)
    assert (tmp_path / "atlas" / "concepts" / "notes.txt").read_text() == "mine"


def test_add_concepts_takes_the_keywords_of_vital_concepts_and_no_others(tmp_path):
    from vital.concepts.atlas import concept_options

    chosen = concept_options({"count": 4})
    assert chosen["count"] == 4
    assert (
        chosen["setting"]
        == inspect.signature(vital.concepts.concepts).parameters["setting"].default
    )
    with pytest.raises(VitalError, match="add_concepts takes no cout=; did you mean count"):
        add_concepts(tiny_cnn_model(), 2, None, layer="stage3", out=tmp_path, cout=4)


@pytest.fixture
def tiny_everywhere(monkeypatch):
    """The command line loads the tiny CNN whatever --model says."""
    model = tiny_cnn_model()
    monkeypatch.setattr("vital.atlas.build._load_cached", lambda *args: model)
    monkeypatch.setattr("vital.cli.session.load", lambda *args: model)
    return model


def test_atlas_build_by_concepts_from_the_command_line(tmp_path, tiny_everywhere):
    data = tmp_path / "tree"  # one sub-folder per class: the class's picture and its concepts
    write_images(data / "3", 2, size=64)
    arguments = ["atlas", "build", "--class", "3", "--layer", "stage3", "--by", "concepts"]
    arguments += ["--data", str(data), "--count", "2", "--crops", "12", "--steps", "1"]
    arguments += ["--refs", str(data), "--ref-count", "2", "--out", str(tmp_path / "atlas")]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "1 unit visualised, 0 failed, 0 already done" in result.output
    (folder,) = (tmp_path / "atlas" / "concepts").iterdir()
    record = json.loads((folder / "concepts.json").read_text())
    for entry in record["concepts"]:
        assert f"concept {entry['index']:3d}  share {entry['share']:6.1%}" in result.output
    assert f"page: {folder / 'index.html'}" in result.output
    again = CliRunner().invoke(app, arguments)
    assert "reused the concepts of class 3 (class 3) at stage3" in again.output
    assert "0 units visualised, 0 failed, 1 already done" in again.output


def test_atlas_build_by_concepts_takes_any_case_and_every_seed_vital_takes(
    tmp_path, tiny_everywhere
):
    # --by was case-sensitive, and a seed past 2**32 - 1 failed in NMF after the class's unit.
    data = tmp_path / "tree"
    write_images(data / "3", 2, size=64)
    arguments = ["atlas", "build", "--class", "3", "--layer", "stage3", "--by", "Concepts"]
    arguments += ["--data", str(data), "--count", "2", "--crops", "12", "--steps", "1"]
    arguments += ["--refs", str(data), "--ref-count", "2", "--seed", str(2**32)]
    result = CliRunner().invoke(app, [*arguments, "--out", str(tmp_path / "atlas")])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "atlas" / "concepts").iterdir()
    assert json.loads((folder / "concepts.json").read_text())["discovery"]["seed"] == 2**32


def test_numbers_from_numpy_and_a_backend_in_capitals_key_a_set_as_python_numbers(tmp_path):
    data = tmp_path / "images"
    write_images(data, 2, size=64)
    model, folder = tiny_cnn_model(), tmp_path / "atlas"
    options = dict(layer="stage3", count=2, crops=12, pictures=False, out=folder, progress=False)
    first = add_concepts(model, 2, data, seed=3, crop_scale=(0.25, 0.5), **options)
    again = add_concepts(
        model, 2, data, seed=np.int64(3), crop_scale=np.array([0.25, 0.5]), relevance="LRP",
        **options,
    )  # fmt: skip
    assert again.reused and again.folder == first.folder
    with pytest.raises(VitalError, match="seed must be a whole number"):
        add_concepts(model, 2, data, seed=-1, **options)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--by", "concepts"], "--by concepts finds each --class's concepts at --layer"),
        (["--by", "concepts", "--layer", "stage3", "--channel", "1"], "second run"),
        (["--by", "units"], "--by is 'channels' or 'concepts'"),
        (["--by", "concepts", "--layer", "stage3", "--crop-scale", "x"], "--crop-scale is LOW"),
        (["--by", "concepts", "--layer", "stage3", "--crops", "0"], "number of crops"),
        (["--by", "concepts", "--layer", "stage3", "--data", "/no/such/photos"], "does not exist"),
        (["--by", "concepts", "--layer", "stage3", "--seed", "-1"], "seed must be a whole"),
        (["--by", "concepts", "--layer", "stage3", "--seed", str(2**63)], "seed must be a whole"),
    ],
)
def test_atlas_build_by_concepts_mistakes_are_one_line(tmp_path, tiny_everywhere, extra, message):
    arguments = ["atlas", "build", "--class", "3", "--out", str(tmp_path / "atlas"), *extra]
    result = CliRunner().invoke(app, arguments)
    assert isinstance(result.exception, VitalError) and message in str(result.exception)
    assert not (tmp_path / "atlas" / "concepts").exists()
    assert not (tmp_path / "atlas" / "results").exists()  # refused before any picture


def test_a_vital_concepts_folder_imported_into_an_atlas_gets_its_pages(tmp_path):
    data = tmp_path / "images"
    write_images(data, 3, size=64)
    model, run = tiny_cnn_model(), tmp_path / "run"
    concepts(model, 3, data, out=run, progress=False, **CONCEPTS)
    arguments = ["atlas", "import", str(run), "--out", str(tmp_path / "atlas")]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "atlas" / "concepts").iterdir()
    record = json.loads((run / "concepts.json").read_text())
    assert json.loads((folder / "concepts.json").read_text()) == record
    for entry in record["concepts"]:
        assert f"concept {entry['index']:3d}  share {entry['share']:6.1%}" in result.output
        assert (folder / f"concept-{entry['index']}.html").is_file()
    index = tmp_path / "atlas" / "index.html"
    assert (folder / "index.html").relative_to(tmp_path / "atlas").as_posix() in Page(index).links
    again = CliRunner().invoke(app, arguments)
    assert "already in the atlas" in again.output
    assert len(list((tmp_path / "atlas" / "concepts").iterdir())) == 1
    # A re-run into the folder is a new record: imported again, it becomes the atlas's current
    # set, and the copy outlives the run's folder.
    concepts(model, 3, data, out=run, progress=False, **{**CONCEPTS, "count": 2})
    replaced = CliRunner().invoke(app, arguments)
    assert "replaced the atlas's copy" in replaced.output, replaced.output
    shutil.rmtree(run)
    (current,) = Atlas(tmp_path / "atlas").concept_sets().values()
    shown = json.loads((tmp_path / "atlas" / current.folder / "concepts.json").read_text())
    assert len(shown["concepts"]) == 2 and current.folder != folder.name


def test_an_atlas_inside_the_imported_folder_is_not_copied_into_itself(tmp_path):
    data, run = tmp_path / "images", tmp_path / "run"
    write_images(data, 3, size=64)
    concepts(tiny_cnn_model(), 3, data, out=run, progress=False, **CONCEPTS)
    written = {p.relative_to(run) for p in run.rglob("*") if p.is_file()}
    for _ in range(2):  # the second import must not pick up the first one's copy either
        arguments = ["atlas", "import", str(run), "--out", str(run / "atlas")]
        result = CliRunner().invoke(app, arguments)
        assert result.exit_code == 0, result.output
    (folder,) = (run / "atlas" / "concepts").iterdir()
    assert {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()} >= written
    assert not (folder / "atlas").exists()


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda run: (run / "concepts.json").unlink(), "holds no concepts.json"),
        (lambda run: shutil.rmtree(run), "is not a folder"),
        (lambda run: (run / "concepts.json").write_text("{}"), "not written by `vital concepts`"),
        (lambda run: (run / "concepts.json").write_text("{"), "cannot read"),
        (lambda run: shutil.rmtree(run / "examples"), "copy the whole folder"),
    ],
)
def test_importing_a_folder_that_is_not_a_whole_concepts_run_is_one_line(tmp_path, spoil, message):
    data, run = tmp_path / "images", tmp_path / "run"
    write_images(data, 3, size=64)
    concepts(tiny_cnn_model(), 3, data, out=run, progress=False, **{**CONCEPTS, "pictured": 1})
    spoil(run)
    result = CliRunner().invoke(app, ["atlas", "import", str(run), "--out", str(tmp_path / "a")])
    assert isinstance(result.exception, VitalError) and message in str(result.exception)
    assert not (tmp_path / "a" / "concepts").exists()


def test_a_finished_set_removes_what_its_stopped_builds_with_other_inputs_left(
    tmp_path, monkeypatch
):
    """A stopped build's staging folder stays for a resume, until the set is finished with other
    inputs: then nothing would take it, and it was disk space nobody saw."""
    from vital.files import exclusive

    data = tmp_path / "images"
    write_images(data, 2, size=64)
    model, folder = tiny_cnn_model(), tmp_path / "atlas"
    staging = folder / vital.concepts.atlas.STAGING
    run = vital.concepts.atlas.concepts

    def interrupted(*args, **kwargs):
        run(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(vital.concepts.atlas, "concepts", interrupted)
    for target, seed in ((2, 5), (2, 6), (3, 5)):  # two stopped builds of one set, one of another
        with pytest.raises(KeyboardInterrupt):
            add_concepts(model, target, data, out=folder, progress=False, **CONCEPTS, seed=seed)
    monkeypatch.setattr(vital.concepts.atlas, "concepts", run)
    stopped = sorted(p for p in staging.iterdir() if p.is_dir())
    prefixes = [p.name.rpartition("-")[0] for p in stopped]  # the name less the inputs' key
    same_set = [
        p for p, prefix in zip(stopped, prefixes, strict=True) if prefixes.count(prefix) == 2
    ]
    others_set = [p for p in stopped if p not in same_set]
    assert len(same_set) == 2 and len(others_set) == 1
    busy = same_set[0]
    with exclusive(busy.with_name(f"{busy.name}.lock"), "test"):  # another build at work there
        add_concepts(model, 2, data, out=folder, progress=False, **CONCEPTS, seed=7)
    left = sorted(p for p in staging.iterdir() if p.is_dir())
    assert left == sorted([busy, *others_set])  # the free one of the same set is gone
    add_concepts(model, 2, data, out=folder, progress=False, **CONCEPTS, seed=8)
    assert sorted(p for p in staging.iterdir() if p.is_dir()) == others_set
    assert not list(staging.glob(f"{busy.name.rpartition('-')[0]}*.lock"))


def test_two_builds_of_one_set_at_once_analyse_it_once(tmp_path, monkeypatch):
    """The second waits for the first's lock, then takes its result instead of redoing it."""
    import threading
    import time

    data = tmp_path / "images"
    write_images(data, 2, size=64)
    model, folder = tiny_cnn_model(), tmp_path / "atlas"
    run, started, calls = vital.concepts.atlas.concepts, threading.Event(), []

    def slow(*args, **kwargs):
        calls.append(kwargs["out"])
        started.set()
        time.sleep(1.0)  # the second build arrives while this one works
        return run(*args, **kwargs)

    monkeypatch.setattr(vital.concepts.atlas, "concepts", slow)
    added = {}

    def build(name):
        added[name] = add_concepts(model, 2, data, out=folder, progress=False, **CONCEPTS)

    first = threading.Thread(target=build, args=("first",))
    first.start()
    started.wait(30)
    with pytest.warns(UserWarning, match="waiting for another vital concepts build"):
        build("second")
    first.join()
    assert len(calls) == 1
    assert not added["first"].reused and added["second"].reused
    assert added["second"].folder == added["first"].folder
