"""Mining on a local Ray instance (2 CPUs) gives exactly the local engine's index.

Also after a worker that dies or raises, and after a driver stopped between shards. One Ray
instance serves the whole module (it takes seconds to start).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest
import torch

import test_mining
from conftest import first_caller
from test_mining import COUNT, LAYER, dump, mine_kwargs, planted_model, write_dataset
from vital.errors import VitalError
from vital.mining import list_images, mine
from vital.mining.index import MiningIndex

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def engine():
    import conftest
    from vital.engines import RayEngine

    # Workers cannot import the test modules: ship the tiny model and the hooks by value.
    modules = [conftest, test_mining, sys.modules[__name__]]
    for module in modules:
        ray.cloudpickle.register_pickle_by_value(module)
    engine = RayEngine(num_cpus=2)
    yield engine
    engine.shutdown()
    for module in modules:
        ray.cloudpickle.unregister_pickle_by_value(module)


IMAGES = COUNT + 2


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """test_mining's images plus exact copies of two planted ones in other shards (exact ties)."""
    folder = tmp_path_factory.mktemp("mining") / "data"
    write_dataset(folder)
    for planted, copy in (("img008", "img099"), ("img014", "img014b")):
        (folder / f"{copy}.png").write_bytes((folder / f"{planted}.png").read_bytes())
    return folder


@pytest.fixture(scope="module")
def local_index(data, tmp_path_factory) -> list[tuple]:
    """The local engine's index: the reference every Ray run must equal."""
    database = tmp_path_factory.mktemp("local") / "out"
    report = mine(planted_model(), LAYER, data, database, **mine_kwargs())
    assert report.engine == "local"
    rows = dump(report.database)
    assert len(rows) == 8 * 5  # 8 channels, top 5 each
    # The planted channel ranks an image and its copy (in another stage-2 shard) with the same
    # score, the earlier first; in stage 1 all planted images tie (the red square saturates).
    paths = list_images(data).paths
    planted = [(Path(paths[row[8]]).stem, row[9]) for row in rows if row[2] == "channel:0"]
    names = [name for name, _ in planted]
    assert names.index("img014") + 1 == names.index("img014b")
    assert planted[names.index("img014")][1] == planted[names.index("img014b")][1]
    return rows


# --- forward hooks, pickled with the model into the workers -----------------------------------


def note_process(folder: str, _module, _inputs, _output) -> None:
    """Leave a file named after the process that ran this forward."""
    Path(folder, str(os.getpid())).touch()


def die_once(marker: str, driver: int, _module, _inputs, _output) -> None:
    """Kill the first worker process that runs a forward (the driver's probe is spared)."""
    if os.getpid() != driver and first_caller(marker):
        os._exit(1)


def raise_once(marker: str, driver: int, _module, _inputs, _output) -> None:
    if os.getpid() != driver and first_caller(marker):
        raise RuntimeError("transient worker failure")


def fail_after(counter: str, limit: int, poison: str, driver: int, _m, _i, _o) -> None:
    """While ``poison`` exists, every forward after the first ``limit`` in workers fails."""
    if os.getpid() == driver or not os.path.exists(poison):
        return
    with open(counter, "ab") as handle:
        handle.write(b".")
    if os.path.getsize(counter) > limit:
        raise RuntimeError("persistent worker failure")


def hooked(hook) -> object:
    model = planted_model()
    dict(model.module.named_modules())[LAYER].register_forward_hook(hook)
    return model


# --- tests --------------------------------------------------------------------------------------


def test_ray_mining_equals_the_local_engine(engine, data, local_index, tmp_path):
    seen = tmp_path / "processes"
    seen.mkdir()
    model = hooked(functools.partial(note_process, str(seen)))
    report = mine(model, LAYER, data, tmp_path / "ray", engine=engine, **mine_kwargs())
    assert report.engine == "ray" and report.scanned == IMAGES
    assert dump(report.database) == local_index
    workers = {int(p.name) for p in seen.iterdir()} - {os.getpid()}  # minus the driver's probe
    assert len(workers) >= 1  # the shards ran in Ray worker processes
    # Shard size changes where the work is cut, not the result.
    resharded = mine(
        planted_model(),
        LAYER,
        data,
        tmp_path / "resharded",
        engine=engine,
        **{**mine_kwargs(), "shard_size": 12},
    )
    assert dump(resharded.database) == local_index


def test_ray_mining_survives_a_dead_and_a_raising_worker(engine, data, local_index, tmp_path):
    for hook, name in ((die_once, "died"), (raise_once, "raised")):
        marker = tmp_path / name
        model = hooked(functools.partial(hook, str(marker), os.getpid()))
        report = mine(model, LAYER, data, tmp_path / f"out-{name}", engine=engine, **mine_kwargs())
        assert marker.exists()  # a shard did fail once; Ray ran it again
        assert report.scanned == IMAGES
        assert dump(report.database) == local_index


def test_ray_mining_resumes_after_a_stopped_driver(engine, data, local_index, tmp_path):
    database = tmp_path / "out"
    recorded = []
    original = MiningIndex.record_shard

    def stop_after_two(self, *arguments, **keywords):
        original(self, *arguments, **keywords)
        recorded.append(arguments[4])  # the shard's images
        if len(recorded) == 2:
            raise KeyboardInterrupt  # the driver stops between two shards

    MiningIndex.record_shard = stop_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            mine(planted_model(), LAYER, data, database, engine=engine, **mine_kwargs())
    finally:
        MiningIndex.record_shard = original
    assert dump(database / "mining.sqlite") == []  # nothing finished
    resumed = mine(planted_model(), LAYER, data, database, engine=engine, **mine_kwargs())
    assert recorded == [8, 8]  # shards of 8 images
    assert resumed.scanned == IMAGES - 16  # the recorded shards were not redone
    assert dump(resumed.database) == local_index


def test_shards_that_keep_failing_stop_the_pass_and_a_rerun_finishes(
    engine, data, local_index, tmp_path
):
    poison = tmp_path / "poison"
    poison.touch()
    hook = functools.partial(fail_after, str(tmp_path / "count"), 4, str(poison), os.getpid())
    database = tmp_path / "out"
    with pytest.raises(VitalError, match="failed 3 times on the Ray cluster.*run the same command"):
        mine(hooked(hook), LAYER, data, database, engine=engine, **mine_kwargs())
    poison.unlink()
    resumed = mine(hooked(hook), LAYER, data, database, engine=engine, **mine_kwargs())
    assert 0 < resumed.scanned <= IMAGES - 8  # at least one shard had been saved
    assert dump(resumed.database) == local_index


def test_local_and_ray_agree_on_whole_images_and_directions(engine, data, tmp_path):
    directions = torch.randn(2, 8, generator=torch.Generator().manual_seed(5)).numpy()
    kwargs = {**mine_kwargs(), "patch_side": 0, "directions": directions}
    local = mine(planted_model(), LAYER, data, tmp_path / "local", **kwargs)
    remote = mine(planted_model(), LAYER, data, tmp_path / "ray", engine=engine, **kwargs)
    assert dump(local.database) and dump(remote.database) == dump(local.database)
