"""A Ray cluster as users run one: a head and worker nodes as separate processes, and a node
that dies in the middle of a run.

``ray.cluster_utils.Cluster`` starts each node's raylet and object store on this machine, as
``ray start --head`` and ``ray start --address`` do on several. The head takes no tasks; two
one-CPU worker nodes do. The cluster serves the whole module (it takes seconds to start).
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
import threading
import time
from pathlib import Path

import pytest

import conftest
import test_mining
from conftest import tiny_cnn_model, write_images
from test_hostile import run
from test_mining import LAYER, dump, mine_kwargs, planted_model, write_dataset
from vital.atlas import build_atlas
from vital.engines import RayEngine
from vital.mining import mine
from vital.references import from_folder
from vital.targets import ClassTarget

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")
pytestmark = pytest.mark.cluster

MEGABYTE = 1 << 20


@pytest.fixture(scope="module")
def cluster():
    # Workers cannot import the test modules: ship the tiny models and the hook by value.
    modules = [conftest, test_mining, sys.modules[__name__]]
    for module in modules:
        ray.cloudpickle.register_pickle_by_value(module)
    small = {"object_store_memory": 80 * MEGABYTE, "include_dashboard": False}
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,  # the head schedules, the workers compute
            **small,
            # A node that stops answering is declared dead after ~1 s, not Ray's ~30 s.
            "_system_config": {"health_check_period_ms": 200, "health_check_failure_threshold": 5},
        },
    )
    workers = [cluster.add_node(num_cpus=1, **small) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()
    for module in modules:
        ray.cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cluster") / "data"
    write_dataset(folder)
    return folder


@pytest.fixture(scope="module")
def local_index(data, tmp_path_factory) -> list[tuple]:
    report = mine(planted_model(), LAYER, data, tmp_path_factory.mktemp("local"), **mine_kwargs())
    return dump(report.database)


def test_mine_on_a_cluster_by_its_address_gives_the_local_index(
    cluster, data, local_index, tmp_path, monkeypatch, capsys
):
    head, _ = cluster
    options = mine_kwargs()
    arguments = ["mine", "--layer", LAYER, "--data", data, "--out", tmp_path / "out"]
    arguments += ["--engine", "ray", "--address", head.address]
    arguments += ["--top-images", options["top_images"], "--ref-count", options["reference_count"]]
    arguments += ["--patch", options["patch_side"], "--batch", options["batch_size"]]
    arguments += ["--shard-size", options["shard_size"], "--sheets", "none"]
    code, out, err = run(monkeypatch, capsys, *arguments, model=planted_model())
    assert code == 0, err
    assert dump(tmp_path / "out" / "mining.sqlite") == local_index
    assert ray.is_initialized() is False  # the command left the cluster (and it runs on)
    assert len([n for n in ray_nodes(head.address) if n["Alive"]]) == 3


def ray_nodes(address: str) -> list[dict]:
    ray.init(address=address, log_to_driver=False)
    try:
        return ray.nodes()
    finally:
        ray.shutdown()


def test_an_atlas_built_on_a_cluster_is_the_local_atlas(cluster, tmp_path):
    head, _ = cluster
    for index in range(2):
        write_images(tmp_path / "refs" / str(index), 2, seed=index)

    def build(folder, engine=None):
        model = tiny_cnn_model()
        model.module.double()  # batch composition cannot change a float64 result
        build_atlas(
            model,
            [ClassTarget(i) for i in range(2)],
            lambda t: from_folder(tmp_path / "refs" / str(t.index), count=2),
            folder,
            {"steps": 2, "seed": 4},
            engine=engine,
            batch_size=1,
            progress=False,
        )

    build(tmp_path / "local")
    engine = RayEngine(address=head.address)
    try:
        build(tmp_path / "ray", engine)
    finally:
        engine.shutdown()
    local, distributed = (pages_and_pictures(tmp_path / name) for name in ("local", "ray"))
    assert distributed.keys() == local.keys() and len(local) > 8
    assert distributed == local


def pages_and_pictures(folder: Path) -> dict[str, bytes]:
    """Every page and picture of an atlas, with what differs between two runs taken out."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix in (".html", ".png", ".jpg", ".npy"):
            found[path.relative_to(folder).as_posix()] = strip_times(path.read_bytes())
    return found


def strip_times(content: bytes) -> bytes:
    """A unit's wall-clock seconds vary between runs; everything else must not."""
    return re.sub(rb"<th>seconds</th><td><span data-value='[^']*'>[^<]*<", b"SECONDS", content)


def stall_on_first_node(workers: frozenset[str], marker: str, _module, _inputs, _output) -> None:
    """On the worker node that runs a shard first: name it (``marker``), hang until it is killed.

    The victim is whichever of ``workers`` gets work first: under load Ray may hand every shard
    to one node, and a victim chosen in advance would then never be hit. Elsewhere (the driver
    on the head) nothing happens.
    """
    if not ray.is_initialized():
        return
    node = ray.get_runtime_context().get_node_id()
    if node not in workers:
        return
    with contextlib.suppress(FileExistsError):  # one node wins the name, atomically
        with open(marker, "x") as file:
            file.write(node)
    if Path(marker).read_text() == node:
        time.sleep(120)


def kill_when(marker: Path, kill) -> threading.Thread:
    def watch():
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if marker.exists():
            kill(marker.read_text())

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_worker_node_that_dies_mid_run_costs_nothing_but_time(
    cluster, data, local_index, tmp_path
):
    head, workers = cluster
    marker = tmp_path / "stalled"
    model = planted_model()
    worker_ids = frozenset(node.node_id for node in workers)
    hook = functools.partial(stall_on_first_node, worker_ids, str(marker))
    dict(model.module.named_modules())[LAYER].register_forward_hook(hook)

    def kill(node_id: str) -> None:  # killed, not drained: raylet, object store, workers at once
        victim = next(node for node in workers if node.node_id == node_id)
        head.remove_node(victim, allow_graceful=False)

    watcher = kill_when(marker, kill)
    engine = RayEngine(address=head.address)
    try:
        report = mine(model, LAYER, data, tmp_path / "out", engine=engine, **mine_kwargs())
    finally:
        engine.shutdown()
    watcher.join(timeout=5)
    assert marker.read_text() in worker_ids  # a shard ran on the node that died
    assert len([n for n in ray_nodes(head.address) if n["Alive"]]) == 2  # head + the survivor
    assert dump(report.database) == local_index
