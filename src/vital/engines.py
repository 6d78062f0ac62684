"""Where batches of work run: in this process (default) or as Ray tasks on a cluster.

An engine takes jobs and a picklable work function and yields each job's outcome as soon as it
is finished, in completion order. The caller (the driver) writes outcomes to the store, so there
is one writer whatever the engine. Ray does the distribution; nothing here schedules, queues or
talks to workers by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

from vital.errors import VitalError

Job = TypeVar("Job")
Outcome = TypeVar("Outcome")


class Engine(Protocol):
    """Runs ``work`` on every job and yields outcomes as they finish."""

    name: str

    def run(self, jobs: Iterable[Job], work: Callable[[Job], Outcome]) -> Iterator[Outcome]:
        """Yield ``work(job)`` for every job, in completion order."""
        ...


class LocalEngine:
    """Runs jobs one after the other in this process."""

    name = "local"

    def run(self, jobs: Iterable[Job], work: Callable[[Job], Outcome]) -> Iterator[Outcome]:
        """Yield ``work(job)`` for every job, in order."""
        for job in jobs:
            yield work(job)


class RayEngine:
    """Runs each job as a Ray task; a task asks for a GPU when the cluster has one.

    Parameters
    ----------
    address
        Address of a running cluster (``ray start --head`` prints it), ``"auto"`` for the
        cluster this machine belongs to, or ``None`` to start a local one.
    num_cpus
        CPUs of a locally started cluster (ignored when connecting to one).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError as error:
            raise VitalError(
                "the ray engine needs Ray: pip install 'vital[ray]' (or use --engine local)."
            ) from error
        self._ray = ray
        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                options["num_cpus"] = num_cpus
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise VitalError(
                    f"cannot reach a Ray cluster at {address!r}: {error}. Start one with "
                    "`ray start --head` and pass the address it prints, or leave --ray-address "
                    "out to start a local cluster."
                ) from error

    def run(self, jobs: Iterable[Job], work: Callable[[Job], Outcome]) -> Iterator[Outcome]:
        """Submit every job, then yield outcomes as their tasks finish."""
        ray = self._ray
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(num_gpus=gpus, num_cpus=1, max_retries=1)(work)
        pending = [task.remote(job) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    def shutdown(self) -> None:
        """Disconnect from (and stop, if started here) the cluster."""
        self._ray.shutdown()


def make_engine(name: str, address: str | None = None) -> LocalEngine | RayEngine:
    """``local`` or ``ray``."""
    if name == "local":
        return LocalEngine()
    if name == "ray":
        return RayEngine(address)
    raise VitalError(f"unknown engine {name!r}: use 'local' or 'ray'.")
