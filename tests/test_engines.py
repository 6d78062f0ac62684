"""The engine contract: outcomes as they finish, retries, failures as outcomes, lazy jobs.

The Ray tests share one local Ray instance with 2 CPUs (module scope: it takes seconds to start).
Jobs that fail "once" leave a marker file, so the retry that follows sees it and succeeds.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import warnings
from pathlib import Path

import pytest

import vital
from conftest import first_caller, tiny_cnn_model, write_images
from vital.engines import (
    JobFailedError,
    LocalEngine,
    default_window,
    make_engine,
    slot_options,
)
from vital.errors import VitalError
from vital.mining import mine

# --- work functions (shipped to Ray workers by value with this module) ---------------------


def square(job: int) -> int:
    return job * job


def sleepy(job: tuple[str, float]) -> str:
    time.sleep(job[1])
    return job[0]


def raise_once(job: tuple[int, str]) -> int:
    number, marker = job
    if number == 1 and first_caller(marker):
        raise RuntimeError("transient failure")
    return number


def die_once(job: tuple[int, str]) -> int:
    number, marker = job
    if number == 1 and first_caller(marker):
        os._exit(1)  # the worker process dies: no exception, no cleanup
    return number


def always_fails(job: int) -> int:
    if job == 2:
        raise ValueError(f"job {job} is broken")
    return job


def add_prepared(job: int, prepared: list[int]) -> tuple[int, list[int], int]:
    return job, list(prepared), os.getpid()


def count_up(job: int) -> range:
    return range(job)


# --- without Ray -------------------------------------------------------------------------------


def test_local_engine_runs_in_order_and_turns_failures_into_outcomes():
    engine = LocalEngine()
    assert list(engine.run(range(4), square)) == [0, 1, 4, 9]
    outcomes = list(engine.run(range(4), always_fails, on_failure=lambda j, e: ("failed", j, e)))
    assert outcomes[:2] == [0, 1] and outcomes[3] == 3
    assert outcomes[2] == ("failed", 2, "ValueError: job 2 is broken")
    with pytest.raises(ValueError, match="job 2 is broken"):
        list(engine.run(range(4), always_fails))
    assert list(engine.run([3, 1], add_prepared, prepare=count_up)) == [
        (3, [0, 1, 2], os.getpid()),
        (1, [0], os.getpid()),
    ]


def test_local_engine_pulls_jobs_lazily():
    pulled = []

    def jobs():
        for job in range(5):
            pulled.append(job)
            yield job

    outcomes = LocalEngine().run(jobs(), square)
    assert next(outcomes) == 0 and pulled == [0]


def test_a_task_asks_for_a_gpu_only_where_the_cluster_has_one():
    assert slot_options({"CPU": 16.0}) == {"num_cpus": 1}
    assert slot_options({"CPU": 16.0, "GPU": 0.0}) == {"num_cpus": 1}
    assert slot_options({"CPU": 16.0, "GPU": 4.0}) == {"num_cpus": 1, "num_gpus": 1}
    # CPU-only: two jobs per CPU slot; GPUs: two per GPU, but at least one per CPU for decoding.
    assert default_window({"CPU": 2.0}) == 4
    assert default_window({"CPU": 16.0, "GPU": 4.0}) == 16
    assert default_window({"CPU": 4.0, "GPU": 4.0}) == 8


def test_engine_names_and_a_missing_ray_are_one_clear_line(monkeypatch, tmp_path):
    with pytest.raises(VitalError, match="unknown engine 'spark'"):
        make_engine("spark")
    with pytest.raises(VitalError, match="engine=ray"):
        make_engine("local", address="10.0.0.1:6379")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(VitalError, match=r"pip install 'vital\[ray\]'"):
        make_engine("ray")
    # Mining says so before it lists the data or loads anything onto workers.
    with pytest.raises(VitalError, match=r"pip install 'vital\[ray\]'"):
        mine(tiny_cnn_model(), "stem", tmp_path / "nowhere", tmp_path / "out", engine="ray")


def test_without_an_address_ray_starts_its_own_instance_even_beside_another(monkeypatch):
    """``ray.init()`` alone joins a cluster already running on the machine and then refuses
    ``num_cpus``; vital asks for a local instance of its own instead."""
    import types

    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **k: calls.append(k))
    monkeypatch.setitem(sys.modules, "ray", fake)
    from vital.engines import RayEngine

    RayEngine(num_cpus=2)
    with socket.create_server(("127.0.0.1", 0)) as head:  # a cluster's address that answers
        address = f"127.0.0.1:{head.getsockname()[1]}"
        RayEngine(address=address)
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] == 2
    assert calls[1]["address"] == address and "num_cpus" not in calls[1]

    def refused(**options):
        raise ValueError("no room")

    fake.init = refused
    with pytest.raises(VitalError, match="cannot start a local Ray instance: no room"):
        RayEngine(num_cpus=2)


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "nowhere", "x:y"])
def test_an_address_nothing_answers_at_is_refused_before_ray_retries_it(monkeypatch, form):
    """``ray.init`` retries an unreachable address for minutes, its log lines on the terminal."""
    import types

    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **k: calls.append(k))
    monkeypatch.setitem(sys.modules, "ray", fake)
    from vital.engines import RayEngine

    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    with pytest.raises(VitalError, match="cannot reach a Ray cluster|is not HOST:PORT"):
        RayEngine(address=form.format(port=port))
    assert calls == []


# --- on a local Ray instance ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_engine():
    ray = pytest.importorskip("ray")
    import conftest
    from vital.engines import RayEngine

    # Workers cannot import the test modules: ship their functions and classes by value.
    modules = [conftest, sys.modules[__name__]]
    for module in modules:
        ray.cloudpickle.register_pickle_by_value(module)
    engine = RayEngine(num_cpus=2)
    assert engine.started
    yield engine
    engine.shutdown()
    for module in modules:
        ray.cloudpickle.unregister_pickle_by_value(module)


def test_ray_yields_outcomes_as_they_finish(ray_engine):
    jobs = [("slow", 2.0), ("fast", 0.0)]
    assert list(ray_engine.run(jobs, sleepy)) == ["fast", "slow"]
    assert sorted(ray_engine.run(range(6), square)) == [0, 1, 4, 9, 16, 25]


def test_ray_retries_an_exception_and_a_dead_worker(ray_engine, tmp_path):
    for work, name in ((raise_once, "raised"), (die_once, "died")):
        marker = str(tmp_path / name)
        outcomes = ray_engine.run([(n, marker) for n in range(3)], work, on_failure=pytest.fail)
        assert sorted(outcomes) == [0, 1, 2]
        assert Path(marker).exists()  # job 1 did fail once before its retry succeeded


def test_ray_job_that_keeps_failing_becomes_an_outcome_or_an_error(ray_engine):
    outcomes = list(ray_engine.run(range(4), always_fails, on_failure=lambda j, e: (j, e)))
    assert sorted(o for o in outcomes if isinstance(o, int)) == [0, 1, 3]
    (failure,) = [o for o in outcomes if isinstance(o, tuple)]
    assert failure == (2, "failed 3 times on the Ray cluster: ValueError: job 2 is broken")
    with pytest.raises(JobFailedError, match="job 2 is broken"):
        list(ray_engine.run(range(4), always_fails))


def test_ray_prepares_each_job_in_a_task_and_keeps_a_bounded_window(ray_engine):
    from vital.engines import RayEngine

    outcomes = sorted(ray_engine.run([3, 1, 2], add_prepared, prepare=count_up))
    assert [(job, prepared) for job, prepared, _ in outcomes] == [
        (1, [0]),
        (2, [0, 1]),
        (3, [0, 1, 2]),
    ]
    assert os.getpid() not in {pid for _, _, pid in outcomes}  # ran in worker processes
    pulled = []

    def jobs():
        for job in range(8):
            pulled.append(job)
            yield ("job", 0.5)

    windowed = RayEngine(window=2)  # joins the running instance, does not start one
    assert not windowed.started
    outcomes = windowed.run(jobs(), sleepy)
    next(outcomes)
    assert len(pulled) == 3  # two submitted, then one more when the first finished
    outcomes.close()  # the jobs still in flight are cancelled


def test_atlas_on_ray_records_a_batch_whose_worker_keeps_dying(ray_engine, tmp_path):
    from vital.atlas import build_atlas
    from vital.references import ImageSource, ReferenceSet, from_folder
    from vital.targets import ClassTarget

    for i in range(4):
        write_images(tmp_path / "data" / str(i), 2, seed=i)
    driver = os.getpid()

    def deadly(_):  # opening these references kills any worker process
        if os.getpid() != driver:
            os._exit(1)
        raise OSError("not in the driver")

    def references(target):
        if target.index == 2:
            source = ImageSource("deadly", lambda: deadly(None), "deadly")
            return ReferenceSet((source,), 3, 0, "kills its worker")
        return from_folder(tmp_path / "data" / str(target.index), count=3)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = build_atlas(
            tiny_cnn_model(),
            [ClassTarget(i, f"class {i}") for i in range(4)],
            references,
            tmp_path / "atlas",
            {"steps": 2, "jitter": 2, "seed": 0},
            engine=ray_engine,
            batch_size=1,
            progress=False,
        )
    assert (report.finished, report.failed) == (3, 1)
    store = vital.ResultStore(tmp_path / "atlas" / "results", tmp_path / "atlas" / "atlas.sqlite")
    (failure,) = store.failures()
    assert failure["unit"] == "class/2"
    assert "failed 3 times on the Ray cluster" in failure["error"]
