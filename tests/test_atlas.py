import http.client
import json
import sqlite3
import threading
import warnings

import pytest
from tests.conftest import tiny_cnn_model, write_images

import vital
from vital.atlas import build_atlas, make_server
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


def build(model, data, folder, **kwargs):
    return build_atlas(
        model,
        TARGETS,
        lambda t: from_folder(data / str(t.index), count=3),
        folder,
        {"steps": 5, "jitter": 2, "seed": 7},
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


def test_rerunning_does_no_work(tmp_path, data):
    build(tiny_cnn_model(), data, tmp_path / "atlas")
    before = images(tmp_path / "atlas")
    seen = []
    report = build(tiny_cnn_model(), data, tmp_path / "atlas", on_unit=seen.append)
    assert (report.skipped, report.finished, seen) == (5, 0, [])
    assert images(tmp_path / "atlas") == before


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
    connection = http.client.HTTPConnection(*server.server_address, timeout=5)
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


def test_serving_a_folder_that_is_no_atlas(tmp_path):
    with pytest.raises(VitalError, match="not an atlas"):
        make_server(tmp_path, 0)


def test_activation_curve_scales_steps_and_draws_the_reference_level():
    from vital.atlas.site import activation_curve_svg

    svg = activation_curve_svg([[1, 0.0], [11, float("nan")], [21, 2.0]], 4.0, 108, 58)
    lines = svg.split("<polyline")[1:]
    assert len(lines) == 2  # the trace and the dashed reference level
    # Step 1 at the left margin, step 21 at the right; 0 at the bottom, half the height for 2.0
    # on a 0–4 scale (the reference sets the top).
    assert "points='4.0,54.0 104.0,29.0'" in lines[0]
    assert "points='4.0,4.0 104.0,4.0'" in lines[1] and "stroke-dasharray" in lines[1]
    assert "the references' mean, 4" in svg
    assert activation_curve_svg([[1, 0.5]], None) == "<p>no activation trace</p>"
