import http.client
import json
import re
import sqlite3
import subprocess
import sys
import threading
import warnings

import pytest
from tests.conftest import tiny_cnn_model, write_images
from typer.testing import CliRunner

import vital
import vital.cli
from vital.atlas import build_atlas, make_server, render_site
from vital.cli import app
from vital.errors import VitalError
from vital.references import from_folder
from vital.targets import ClassTarget

TARGETS = [ClassTarget(i, f"class {i}") for i in range(5)]


@pytest.fixture
def data(tmp_path):
    for i in range(5):
        write_images(tmp_path / "data" / str(i), 2, seed=i)
    return tmp_path / "data"


def double_model():
    # float64 makes batch composition irrelevant to the result, so resumed builds can be
    # compared exactly with uninterrupted ones.
    model = tiny_cnn_model()
    model.module.double()
    return model


def build(model, data, folder, settings=None, **kwargs):
    return build_atlas(
        model,
        TARGETS,
        lambda t: from_folder(data / str(t.index), count=3),
        folder,
        settings or {"steps": 5, "jitter": 2, "seed": 7},
        batch_size=2,
        progress=False,
        **kwargs,
    )


def store_rows(folder):
    with sqlite3.connect(folder / "atlas.sqlite") as connection:
        rows = connection.execute("SELECT unit, seed, record FROM results ORDER BY unit").fetchall()
    return [(unit, seed, json.loads(record)) for unit, seed, record in rows]


def images(folder):
    return {
        unit: (folder / "results" / r["files"]["png"]).read_bytes()
        for unit, _, r in store_rows(folder)
    }


def test_build_writes_store_and_site(tmp_path, data):
    report = build(tiny_cnn_model(), data, tmp_path / "atlas")
    assert (report.planned, report.finished, report.failed) == (5, 5, 0)
    rows = store_rows(tmp_path / "atlas")
    assert [unit for unit, _, _ in rows] == [f"class/{i}" for i in range(5)]
    assert [seed for _, seed, _ in rows] == [7, 8, 9, 10, 11]
    record = rows[0][2]
    assert record["unit"] == "class/0" and record["loss_history"] and record["seconds"] > 0
    for reference in record["references"]["top"]:
        assert (tmp_path / "atlas" / reference["image"]).is_file()  # copied inside the atlas
    index = (tmp_path / "atlas" / "index.html").read_text()
    assert index.count("class='card'") == 5 and "id='search'" in index
    page = tmp_path / "atlas" / "units" / f"{record['files']['png'][:-4]}.html"
    assert "<svg class='curve'" in page.read_text()


def test_the_overview_counts_in_words_that_agree_with_the_numbers(tmp_path, data):
    folder = tmp_path / "atlas"
    build_atlas(
        tiny_cnn_model(), TARGETS[:1], lambda t: from_folder(data / str(t.index), count=3),
        folder, {"steps": 2}, progress=False,
    )  # fmt: skip
    index = (folder / "index.html").read_text()
    assert " 1 unit · 0 failed · 0 explanations · 0 concept sets" in index


def test_rerunning_does_no_work(tmp_path, data):
    build(tiny_cnn_model(), data, tmp_path / "atlas")
    before = images(tmp_path / "atlas")
    seen = []
    report = build(tiny_cnn_model(), data, tmp_path / "atlas", on_unit=seen.append)
    assert (report.skipped, report.finished, seen) == (5, 0, [])
    assert images(tmp_path / "atlas") == before


def test_seed_is_the_first_units_seed_and_device_where_it_runs(tmp_path, data):
    build(tiny_cnn_model(), data, tmp_path / "atlas")  # settings={"seed": 7}
    report = build(
        tiny_cnn_model(), data, tmp_path / "atlas", {"steps": 5, "jitter": 2}, seed=7,
        device="cpu",
    )  # fmt: skip
    assert (report.skipped, report.finished) == (5, 0)  # the same inputs: nothing to do
    assert [seed for _, seed, _ in store_rows(tmp_path / "atlas")] == [7, 8, 9, 10, 11]
    with pytest.raises(VitalError, match="disagree"):
        build(tiny_cnn_model(), data, tmp_path / "atlas", seed=3)


def test_killed_build_resumes_to_the_uninterrupted_store(tmp_path, data):
    build(double_model(), data, tmp_path / "whole")
    count = []

    def kill_after_three(outcome):
        count.append(outcome)
        if len(count) == 3:  # in the middle of the second batch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(double_model(), data, tmp_path / "resumed", on_unit=kill_after_three)
    assert len(store_rows(tmp_path / "resumed")) == 3
    report = build(double_model(), data, tmp_path / "resumed")
    assert (report.skipped, report.finished) == (3, 2)
    assert images(tmp_path / "resumed") == images(tmp_path / "whole")
    whole = [(u, s, r["loss_history"]) for u, s, r in store_rows(tmp_path / "whole")]
    resumed = [(u, s, r["loss_history"]) for u, s, r in store_rows(tmp_path / "resumed")]
    assert resumed == whole


def test_a_failing_unit_is_recorded_and_the_rest_finish(tmp_path, data):
    (data / "3" / "img000.png").write_bytes(b"broken")
    (data / "3" / "img001.png").write_bytes(b"broken too")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = build(tiny_cnn_model(), data, tmp_path / "atlas")
    assert (report.finished, report.failed) == (4, 1)
    failures = vital.ResultStore(
        tmp_path / "atlas" / "results", tmp_path / "atlas" / "atlas.sqlite"
    ).failures()
    assert [f["unit"] for f in failures] == ["class/3"]
    assert "could be read" in failures[0]["error"]
    assert "failed: " in (tmp_path / "atlas" / "index.html").read_text()


def test_duplicate_units_are_refused(tmp_path, data):
    with pytest.raises(VitalError, match="twice"):
        build_atlas(
            tiny_cnn_model(),
            [TARGETS[0], TARGETS[0]],
            lambda t: None,
            tmp_path,
            {"steps": 1},
            progress=False,
        )


@pytest.mark.slow
def test_ray_engine_gives_the_local_store(tmp_path, data):
    ray = pytest.importorskip("ray")
    import conftest
    from vital.engines import RayEngine

    # Workers cannot import the test module: ship the tiny model's class by value.
    ray.cloudpickle.register_pickle_by_value(conftest)
    build(double_model(), data, tmp_path / "local")
    engine = RayEngine(num_cpus=2)
    try:
        build(double_model(), data, tmp_path / "ray", engine=engine)
    finally:
        engine.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(conftest)
    local = [(u, s, r["loss_history"]) for u, s, r in store_rows(tmp_path / "local")]
    distributed = [(u, s, r["loss_history"]) for u, s, r in store_rows(tmp_path / "ray")]
    assert distributed == local
    assert images(tmp_path / "ray") == images(tmp_path / "local")


@pytest.fixture
def server(tmp_path, data):
    build(tiny_cnn_model(), data, tmp_path / "atlas")
    (tmp_path / "secret.txt").write_text("TOP-SECRET-CONTENT")
    server = make_server(tmp_path / "atlas", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def get(server, path):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=5)
    connection.request("GET", path)  # sent as written: no client-side normalisation
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body


def test_server_binds_loopback_and_serves_the_atlas(server):
    assert server.server_address[0] == "127.0.0.1"
    status, body = get(server, "/index.html")
    assert status == 200 and b"vital atlas" in body
    assert get(server, "/")[0] == 200
    assert get(server, "/results/")[0] == 404  # no folder listings


def test_a_browser_leaving_mid_download_prints_no_traceback_but_real_errors_do(server, capsys):
    for error, printed in [(BrokenPipeError(32, "gone"), False), (ValueError("bug"), True)]:
        try:
            raise error
        except type(error):
            server.handle_error(None, ("127.0.0.1", 1))
        assert ("Traceback" in capsys.readouterr().err) is printed


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/units/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/%252e%252e/secret.txt",
        "/..%5csecret.txt",
        "/static/..%2f..%2fsecret.txt",
    ],
)
def test_server_refuses_paths_outside_the_atlas(server, path):
    status, body = get(server, path)
    assert status == 403 and b"TOP-SECRET-CONTENT" not in body


def test_server_refuses_links_that_leave_the_atlas(server, tmp_path):
    (tmp_path / "atlas" / "escape.txt").symlink_to(tmp_path / "secret.txt")
    status, body = get(server, "/escape.txt")
    assert status == 403 and b"TOP-SECRET-CONTENT" not in body


def test_server_serves_no_working_files_of_vitals(server, tmp_path):
    """A concepts build's staging folder (left by a stopped build) is no page of the atlas."""
    staging = tmp_path / "atlas" / ".vital-staging" / "run"
    staging.mkdir(parents=True)
    (staging / "directions.npy").write_text("STAGED")
    for path in ("/.vital-staging/run/directions.npy", "/%2evital-staging/run/directions.npy"):
        status, body = get(server, path)
        assert status == 404 and b"STAGED" not in body
    assert get(server, "/index.html")[0] == 200


@pytest.mark.parametrize(
    "name", ["atlas.sqlite", "mining.sqlite", "mining.sqlite-wal", "mining.lock", "x.db"]
)
def test_server_serves_no_databases_or_locks(server, tmp_path, name):
    """vital's databases and locks hold the absolute paths of the data and the weights."""
    path = tmp_path / "atlas" / name
    if not path.exists():
        path.write_text("/home/someone/private/data")
    status, body = get(server, f"/{name}")
    assert status == 404 and b"/home/someone" not in body and b"SQLite" not in body


def test_a_long_request_is_cut_in_the_log(server, capsys):
    server.verbose = True
    assert get(server, "/index.html?" + "q" * 20_000)[0] == 200
    logged = capsys.readouterr().err.splitlines()
    assert logged and all(len(line) < 400 for line in logged), [len(line) for line in logged]


def test_server_listens_on_an_ipv6_address(tmp_path, data):
    from vital.atlas.serve import url

    build(tiny_cnn_model(), data, tmp_path / "atlas")
    try:
        server = make_server(tmp_path / "atlas", 0, host="::1")
    except VitalError as error:  # a machine without IPv6
        pytest.skip(str(error))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert server.server_address[0] == "::1"
        assert get(server, "/index.html")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
    assert url("::1", 8000) == "http://[::1]:8000/"
    assert url("localhost", 8000) == "http://127.0.0.1:8000/"


@pytest.mark.parametrize("host", ["", " ", "[]"])
def test_serve_refuses_an_empty_host_in_one_line(tmp_path, data, host, monkeypatch, capsys):
    build(tiny_cnn_model(), data, tmp_path / "atlas")
    with pytest.raises(VitalError, match="--host is empty"):
        make_server(tmp_path / "atlas", 0, host=host)
    monkeypatch.setattr(sys, "argv", ["vital", "atlas", "serve", str(tmp_path / "atlas")])
    sys.argv += ["--host", host, "--port", "0"]
    with pytest.raises(SystemExit) as exit_info:
        vital.cli.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: --host is empty")


def test_serving_a_folder_that_is_no_atlas(tmp_path):
    with pytest.raises(VitalError, match="not an atlas"):
        make_server(tmp_path, 0)


def test_activation_curve_has_axes_ticks_and_the_reference_level():
    from vital.atlas.site import activation_curve_svg

    svg = activation_curve_svg([[1, 0.0], [11, float("nan")], [21, 2.0]], 4.0)
    lines = svg.split("<polyline")[1:]
    assert len(lines) == 2  # the trace and the dashed reference level
    # Plot area: x from 62 to 506, y from 170 (bottom) to 12 (top) in a 520 x 210 chart. Step 1
    # at the left, step 21 at the right; ticks 0..4 on y (the reference sets the top): 0 at the
    # bottom, 2.0 half way up.
    assert "points='62.0,170.0 506.0,91.0'" in lines[0]
    assert "points='62.0,12.0 506.0,12.0'" in lines[1] and "stroke-dasharray" in lines[1]
    y_ticks = re.findall(r"class='y-tick'[^>]*>([^<]*)<", svg)
    x_ticks = re.findall(r"class='x-tick'[^>]*>([^<]*)<", svg)
    assert y_ticks == ["0", "1", "2", "3", "4"] and x_ticks == ["5", "10", "15", "20"]
    assert ">step</text>" in svg and ">activation</text>" in svg
    assert "the references' mean, <span data-value='4.0'>4</span>" in svg
    assert "no activation trace" in activation_curve_svg([[1, 0.5]], None)


def test_loss_curve_uses_a_log_axis_when_it_spans_decades():
    from vital.atlas.site import loss_curve_svg

    svg = loss_curve_svg([1000.0, 100.0, 10.0, 1.0, 0.5])
    assert re.findall(r"class='y-tick'[^>]*>([^<]*)<", svg) == ["0.1", "1", "10", "100", "1000"]
    assert "loss (log scale)" in svg
    linear = loss_curve_svg([0.0031, 0.0025, 0.0018])
    assert re.findall(r"class='y-tick'[^>]*>([^<]*)<", linear) == [
        "0.0015",
        "0.0020",
        "0.0025",
        "0.0030",
        "0.0035",
    ]


def test_tick_labels_are_round_and_cover_the_data():
    from vital.atlas.charts import nice_ticks

    assert nice_ticks(0.19, 0.22) == [0.19, 0.2, 0.21, 0.22]
    assert nice_ticks(-3, 12.5) == [-5, 0, 5, 10, 15]
    assert nice_ticks(1, 3, smallest_step=1) == [1, 2, 3]
    assert nice_ticks(5, 5)[0] < 5 < nice_ticks(5, 5)[-1]


# --- what the atlas writes, and what it reuses -----------------------------------------------


def test_build_refuses_to_write_over_the_users_files(tmp_path, data):
    folder = tmp_path / "atlas"
    folder.mkdir()
    (folder / "index.html").write_text("my own page")
    with pytest.raises(VitalError, match=r"vital did not write .*index\.html"):
        build(tiny_cnn_model(), data, folder)
    assert (folder / "index.html").read_text() == "my own page"
    assert [p.name for p in folder.iterdir()] == ["index.html"]  # nothing else was created


def test_a_folder_of_the_users_where_the_atlas_writes_is_refused(tmp_path, data):
    folder = tmp_path / "atlas"
    (folder / "results").mkdir(parents=True)
    (folder / "results" / "notes.txt").write_text("mine")
    with pytest.raises(VitalError, match="results/"):
        build(tiny_cnn_model(), data, folder)
    assert (folder / "results" / "notes.txt").read_text() == "mine"


def test_a_users_file_inside_the_atlas_is_kept_and_never_overwritten(tmp_path, data):
    folder = tmp_path / "atlas"
    build(tiny_cnn_model(), data, folder)
    (folder / "units" / "notes.txt").write_text("my notes")  # left alone by later builds
    build(tiny_cnn_model(), data, folder)
    assert (folder / "units" / "notes.txt").read_text() == "my notes"
    # A file of the user's where the site would write: refused, and left as it was.
    page = next((folder / "units").glob("vital-class-0-*.html"))
    page.write_text("my version of the page")  # the user edits a page vital wrote
    with pytest.raises(VitalError, match=f"{page.name} was changed since vital wrote it"):
        render_site(folder)
    assert page.read_text() == "my version of the page"
    # A file of the user's at a name a later build would write (another seed's result).
    user_file = folder / "results" / "vital-class-0-class-0-seed30.png"
    user_file.write_bytes(b"my picture")
    with pytest.raises(VitalError, match=f"{user_file.name} exists and vital did not write it"):
        build(tiny_cnn_model(), data, folder, settings={"steps": 5, "jitter": 2, "seed": 30})
    assert user_file.read_bytes() == b"my picture"
    page.unlink()  # moved away: vital writes it anew
    render_site(folder)
    assert "vital atlas" in page.read_text()


def test_an_atlas_database_that_is_not_vitals_is_refused(tmp_path, data):
    folder = tmp_path / "atlas"
    folder.mkdir()
    with sqlite3.connect(folder / "atlas.sqlite") as connection:
        connection.execute("CREATE TABLE accounts (name TEXT)")
    with pytest.raises(VitalError, match="not an atlas database"):
        build(tiny_cnn_model(), data, folder)
    (folder / "mining.sqlite").write_text("not a database")
    (folder / "atlas.sqlite").unlink()
    with pytest.raises(VitalError, match="mining.sqlite"):
        build(tiny_cnn_model(), data, folder)


def test_changed_settings_recompute_and_say_what_changed(tmp_path, data):
    folder = tmp_path / "atlas"
    build(tiny_cnn_model(), data, folder)
    before = images(folder)
    report = build(tiny_cnn_model(), data, folder, settings={"steps": 6, "jitter": 2, "seed": 7})
    assert (report.skipped, report.finished, report.reused) == (0, 5, [])
    assert set(report.changed) == {f"class/{i}" for i in range(5)}
    assert report.changed["class/0"] == ["settings.steps 5 → 6"]
    rows = store_rows(folder)
    assert len(rows) == 5 and all(r["settings"]["steps"] == 6 for _, _, r in rows)
    assert all(images(folder)[unit] != before[unit] for unit in before)
    again = build(tiny_cnn_model(), data, folder, settings={"steps": 6, "jitter": 2, "seed": 7})
    assert (again.skipped, again.finished, again.changed) == (5, 0, {})
    assert again.reused == [f"class/{i}" for i in range(5)]
    forced = build(
        tiny_cnn_model(), data, folder, settings={"steps": 6, "jitter": 2, "seed": 7}, force=True
    )
    assert (forced.skipped, forced.finished, len(forced.forced)) == (0, 5, 5)


def test_new_references_recompute_only_their_unit(tmp_path, data):
    folder = tmp_path / "atlas"
    build(tiny_cnn_model(), data, folder)
    write_images(data / "3", 3, seed=30)  # class 3 gets another image (more distinct images)
    report = build(tiny_cnn_model(), data, folder)
    assert list(report.changed) == ["class/3"] and report.finished == 1
    assert any(line.startswith("references ") for line in report.changed["class/3"])


def test_the_site_shows_each_units_current_result_only(tmp_path, data):
    folder = tmp_path / "atlas"
    build(tiny_cnn_model(), data, folder)
    build(tiny_cnn_model(), data, folder, settings={"steps": 5, "jitter": 2, "seed": 20})
    assert len(list((folder / "results").glob("*.png"))) == 10  # both runs' files are kept
    index = (folder / "index.html").read_text()
    assert index.count("class='card'") == 5
    assert "seed20.png" in index and "seed7.png" not in index


def test_unit_pages_link_the_previous_and_next_unit_of_their_layer(tmp_path, data):
    folder = tmp_path / "atlas"
    build(tiny_cnn_model(), data, folder)
    first = (folder / "units" / "vital-class-0-class-0-seed7.html").read_text()
    middle = (folder / "units" / "vital-class-2-class-2-seed9.html").read_text()
    assert (
        "id='previous'" not in first and "href='../units/vital-class-1-class-1-seed8.html'" in first
    )
    assert "← class/1" in middle and "class/3 →" in middle
    assert "id='record-link' href='../results/vital-class-2-class-2-seed9.json'" in middle


def test_serve_refuses_an_out_of_range_port_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["atlas", "serve", str(tmp_path), "--port", "70000"])
    assert result.exit_code != 0
    with pytest.raises(VitalError, match="from 1 to 65535"):
        make_server(tmp_path, 70000)
    process = subprocess.run(
        [sys.executable, "-m", "vital", "atlas", "serve", str(tmp_path), "--port", "-1"],
        capture_output=True,
        text=True,
    )
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [
        "error: --port must be a whole number from 1 to 65535 (0: any free port), not -1."
    ]


def test_serve_warns_when_it_listens_beyond_this_machine(tmp_path, data, monkeypatch):
    build(tiny_cnn_model(), data, tmp_path / "atlas")
    server = make_server(tmp_path / "atlas", 0, host="0.0.0.0")
    assert server.server_address[0] == "0.0.0.0"
    server.server_close()

    class Quick:
        server_address = ("0.0.0.0", 8123)

        def serve_forever(self):
            pass

        def server_close(self):
            pass

    import vital.atlas.serve

    monkeypatch.setattr(vital.atlas.serve, "make_server", lambda *a, **k: Quick())
    arguments = ["atlas", "serve", str(tmp_path / "atlas"), "--host", "0.0.0.0", "--port", "8123"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0
    assert "warning: listening on 0.0.0.0: anyone who can reach this machine" in result.output
    assert "http://0.0.0.0:8123/" in result.output
    quiet = CliRunner().invoke(app, ["atlas", "serve", str(tmp_path / "atlas"), "--port", "8123"])
    assert "warning" not in quiet.output and "http://127.0.0.1:8123/" in quiet.output


def test_names_with_markup_are_shown_as_text_on_every_page(tmp_path, data):
    from html.parser import HTMLParser

    from vital.explanation import explain
    from vital.labels import ClassLabels

    model = tiny_cnn_model()
    hostile = tuple(f"<script>alert('{i}')</script> & \"q{i}\"" for i in range(10))
    model.labels = ClassLabels(names=hostile, synonyms=tuple((n.lower(),) for n in hostile))
    folder = tmp_path / "atlas"
    build_atlas(
        model,
        [ClassTarget(1, hostile[1])],
        lambda t: from_folder(data / "1", count=2),
        folder,
        {"steps": 2},
        progress=False,
    )
    photo = data / "0" / "img000.png"
    record = explain(
        model, photo, layer="stage3", top=1, data=data / "0", out=folder, settings={"steps": 2},
        reference_count=2, top_images=2, patch_side=16, workers=0, progress=False,
    )  # fmt: skip
    explained = record.explained["name"]

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.scripts, self.text, self.labels = [], [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "script":
                self.scripts.append(attrs.get("src"))
            self.labels += [attrs[k] for k in ("data-label", "alt", "title") if k in attrs]

        def handle_data(self, text):
            self.text.append(text)

    pages = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*.html")}
    unit_page = next(name for name in pages if name.startswith("units/vital-class-1"))
    shown = {}
    for name, path in pages.items():
        page = Page()
        page.feed(path.read_text("utf-8"))
        assert all((src or "").endswith("static/atlas.js") for src in page.scripts), name
        assert len(page.scripts) == 1, name
        shown[name] = ("".join(page.text), page.labels)
    # The names are there, as text and as whole attribute values (no attribute broken open).
    assert hostile[1] in shown["index.html"][0] and hostile[1].lower() in shown["index.html"][1]
    assert hostile[1] in shown[unit_page][0]
    assert f"Why tiny_cnn says “{explained}”" in shown[record.files["page"]][0]
    assert explained in hostile


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"seed": 2**63 - 2}, r"seeds past 2\*\*63 - 1 .* at most 9223372036854775803"),
        ({"seeds": [1, 2, 3, 4, -1]}, "the seed must be a whole number from 0"),
        ({"seeds": [1, 2]}, "2 seeds were given for 5 targets"),
        ({"seed": 1, "settings": {"seed": True}}, "the seed must be a whole number"),
    ],
)
def test_seeds_past_the_range_are_refused_before_any_unit(tmp_path, data, options, said):
    """Once, unit i took seed + i unchecked: units past 2**63 - 1 failed one by one after the
    first ones ran, and the build exited 0."""
    settings = options.pop("settings", {"steps": 1})
    with pytest.raises(VitalError, match=said):
        build(tiny_cnn_model(), data, tmp_path / "atlas", settings, **options)
    assert not list((tmp_path / "atlas").glob("results/*.png"))


def test_a_run_into_an_atlas_results_folder_is_refused_before_it_writes(tmp_path, data):
    # `vital class --out ATLAS/results` wrote its pictures and a second index among the
    # atlas's results, where no page showed them. (The atlas's own folder is taken:
    # tests/test_hostile_round.py, `explain` and `class` share vital-out.)
    atlas = tmp_path / "atlas"
    build(tiny_cnn_model(), data, atlas)
    before = sorted(p.relative_to(atlas) for p in atlas.rglob("*"))
    model = tiny_cnn_model()
    with pytest.raises(VitalError, match="is an atlas's results folder") as refused:
        vital.visualize(
            model, [1], data / "1", out=atlas / "results", settings={"steps": 1}, progress=False
        )
    assert "vital atlas build --out ATLAS --class C" in str(refused.value)
    assert sorted(p.relative_to(atlas) for p in atlas.rglob("*")) == before
    # a folder named results beside no atlas is any folder
    (result,) = vital.visualize(
        model, [1], data / "1", out=tmp_path / "results", settings={"steps": 1}, progress=False
    )
    assert result.paths["png"].parent == tmp_path / "results"
