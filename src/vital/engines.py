"""Where batches of work run: in this process (default) or as Ray tasks on a cluster.

The contract, shared by both engines::

    for outcome in engine.run(jobs, work, prepare=None, on_failure=None):
        ...  # the caller (the driver) records each outcome: one writer whatever the engine

* ``jobs`` is pulled lazily: a remote engine keeps a bounded number of jobs in flight and asks
  for the next one when one finishes, so a caller can build each job when it is submitted (with
  what it knows by then) and stop submitting by ending the iterable.
* ``work(job)`` (or ``work(job, prepared)``) computes a job's outcome; it must be picklable for
  a remote engine, which ships it to the cluster once per ``run``, not once per job.
* ``prepare(job)`` (optional) returns an iterable of inputs for ``work``, e.g. decoded image
  batches. The local engine hands it over lazily (whatever parallelism it has of its own, such
  as DataLoader workers, overlaps with ``work``); a remote engine runs it to completion in a
  one-CPU task and passes the list to ``work``'s task through the object store: decoding on CPU
  workers, the model on the GPU worker.
* Outcomes are yielded in completion order. A job whose work fails (after the engine's retries)
  yields ``on_failure(job, error)`` instead, ``error`` being a one-line description; without
  ``on_failure`` the failure raises.

Ray does the distribution, placement and retries; nothing here schedules, queues or talks to
workers by itself.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from vital.errors import VitalError

Job = TypeVar("Job")
Outcome = TypeVar("Outcome")
# The callables of ``Engine.run`` (see the module doc).
Work = Callable[..., Any]
Prepare = Callable[[Any], Iterable[Any]] | None
OnFailure = Callable[[Any, str], Any] | None


class JobFailedError(VitalError):
    """A job kept failing on the cluster and the caller gave no ``on_failure``."""


class Engine(Protocol):
    """Runs ``work`` on every job and yields outcomes as they finish (see the module doc)."""

    name: str
    remote: bool  # work runs in other processes: it must be picklable and find its own device

    def run(
        self, jobs: Iterable[Job], work: Work, prepare: Prepare = None, on_failure: OnFailure = None
    ) -> Iterator[Outcome]:
        """Yield every job's outcome, in completion order."""
        ...

    def shutdown(self) -> None:
        """Release what the engine started (nothing for the local engine)."""
        ...


def describe(error: BaseException) -> str:
    """A one-line description of an exception (its type and first line)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class LocalEngine:
    """Runs jobs one after the other in this process."""

    name = "local"
    remote = False

    def run(
        self, jobs: Iterable[Job], work: Work, prepare: Prepare = None, on_failure: OnFailure = None
    ) -> Iterator[Outcome]:
        """Yield ``work(job[, prepare(job)])`` for every job, in order.

        An ``Exception`` from ``work`` or ``prepare`` becomes ``on_failure(job, error)`` when
        given (no retries: in one process a failure repeats); Ctrl-C always propagates.
        """
        for job in jobs:
            try:
                outcome = work(job, prepare(job)) if prepare is not None else work(job)
            except Exception as error:
                if on_failure is None:
                    raise
                outcome = on_failure(job, describe(error))
            yield outcome

    def shutdown(self) -> None:
        """Nothing to release."""


def slot_options(resources: dict[str, float]) -> dict[str, float]:
    """Ray resources of one ``work`` task: one GPU when the cluster has GPUs, else one CPU."""
    if resources.get("GPU", 0) >= 1:
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": 1}


def default_window(resources: dict[str, float]) -> int:
    """Jobs kept in flight: two per work slot, and at least one per CPU (for ``prepare``)."""
    slots = int(resources.get("GPU", 0)) or int(resources.get("CPU", 1))
    return max(2 * max(slots, 1), int(resources.get("CPU", 1)))


# Objects a worker process has already fetched for earlier tasks of the same run (the model,
# shared arrays): fetched and deserialised once per worker, not once per task.
_RESOLVED: dict[str, Any] = {}


def _resolve(held: list) -> Any:
    """The object behind ``held[0]`` (an ObjectRef wrapped in a list so Ray does not fetch it)."""
    import ray

    key = held[0].hex()
    if key not in _RESOLVED:
        while len(_RESOLVED) >= 2:
            _RESOLVED.pop(next(iter(_RESOLVED)))
        _RESOLVED[key] = ray.get(held[0])
    return _RESOLVED[key]


def _work_task(held_work: list, job: Any, *prepared: Any) -> Any:
    work = _resolve(held_work)
    return work(job, *prepared)


def _prepare_task(held_prepare: list, job: Any) -> list:
    return list(_resolve(held_prepare)(job))


class RayEngine:
    """Runs each job as a Ray task: one per GPU when the cluster has GPUs, else one per CPU.

    Parameters
    ----------
    address
        Address of a running cluster (``ray start --head`` prints it), ``"auto"`` for the
        cluster this machine belongs to, or ``None`` to start a local one.
    num_cpus
        CPUs of a locally started cluster (ignored when connecting to one).
    retries
        Times a failed task is run again (on another worker when the worker died, Ray's
        ``max_retries``; also after an exception, ``retry_exceptions``) before the job counts as
        failed.
    window
        Jobs in flight at once (default: :func:`default_window` of the cluster).
    """

    name = "ray"
    remote = True

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        retries: int = 2,
        window: int | None = None,
    ):
        try:
            import ray
        except ImportError as error:
            raise VitalError(
                "the ray engine needs Ray: pip install 'vital[ray]' (or use engine=local)."
            ) from error
        self._ray = ray
        self.retries = retries
        self.window = window
        self.started = not ray.is_initialized()
        if self.started and address is not None:
            _check_reachable(address)
        if self.started:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                # "local" starts an instance of our own even when another Ray runs on this
                # machine (ray.init() alone would join that one, and refuse num_cpus there).
                options["num_cpus"] = num_cpus
            try:
                ray.init(address="local" if address is None else address, **options)
            except (ConnectionError, RuntimeError, ValueError) as error:
                where = "start a local Ray instance" if address is None else f"reach {address!r}"
                raise VitalError(
                    f"cannot {where}: {error}. Start a cluster with `ray start --head` and pass "
                    "it as address=ADDR, or leave the address out to start a local one."
                ) from error

    def run(
        self, jobs: Iterable[Job], work: Work, prepare: Prepare = None, on_failure: OnFailure = None
    ) -> Iterator[Outcome]:
        """Submit jobs (at most ``window`` in flight) and yield outcomes as tasks finish.

        Jobs left in flight when the caller stops iterating (Ctrl-C, an error) are cancelled.
        """
        ray = self._ray
        resources = ray.cluster_resources()
        retry = {"max_retries": self.retries, "retry_exceptions": True}
        work_task = ray.remote(**slot_options(resources), **retry)(_work_task)
        prepare_task = ray.remote(num_cpus=1, **retry)(_prepare_task)
        held_work = [ray.put(work)]
        held_prepare = [ray.put(prepare)] if prepare is not None else None
        window = self.window or default_window(resources)
        pending: dict[Any, Any] = {}
        remaining = iter(jobs)

        def submit() -> None:
            for job in remaining:
                inputs = []
                if held_prepare is not None:
                    inputs.append(prepare_task.remote(held_prepare, job))
                pending[work_task.remote(held_work, job, *inputs)] = (job, inputs)
                if len(pending) >= window:
                    return

        try:
            submit()
            while pending:
                (finished,), _ = ray.wait(list(pending), num_returns=1)
                job, _ = pending.pop(finished)
                try:
                    outcome = ray.get(finished)
                except ray.exceptions.RayError as error:
                    outcome = self._failed(job, error, on_failure)
                submit()  # the next job runs while the caller records this outcome
                yield outcome
        finally:
            for ref, (_, inputs) in pending.items():
                for task in (ref, *inputs):
                    ray.cancel(task)

    def _failed(self, job: Any, error: Exception, on_failure: Callable | None) -> Any:
        cause = getattr(error, "cause", None)
        detail = describe(cause if isinstance(cause, BaseException) else error)
        message = f"failed {1 + self.retries} times on the Ray cluster: {detail}"
        if on_failure is None:
            raise JobFailedError(f"a job {message}") from error
        return on_failure(job, message)

    def shutdown(self) -> None:
        """Stop the cluster if this engine started it (a cluster it connected to keeps running)."""
        if self.started:
            self._ray.shutdown()


# Seconds to wait for a cluster's address to answer before calling it unreachable.
_REACH_SECONDS = 10

# Ray's default client port, for a "ray://HOST" address without one.
_RAY_CLIENT_PORT = 10001


def _check_reachable(address: str) -> None:
    """Refuse a cluster address that nothing answers at, before Ray retries it for minutes.

    ``ray.init`` keeps retrying an unreachable address (several minutes, its log lines on the
    terminal meanwhile) before it fails. "auto" and "local" name no host and are left to Ray.
    """
    if address in ("auto", "local"):
        return
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if not host:  # "ray://HOST" alone, or a bare host
        host, port = where, str(_RAY_CLIENT_PORT) if address.startswith("ray://") else ""
    if not port.isdigit() or not host:
        raise VitalError(
            f"the Ray address {address!r} is not HOST:PORT; give the address `ray start --head` "
            "printed (e.g. 192.168.1.5:6379), or leave the address out to start a local one."
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_REACH_SECONDS).close()
    except OSError as error:
        raise VitalError(
            f"cannot reach a Ray cluster at {address!r} ({error}); is it running? "
            "`ray start --head` prints its address, or leave the address out to start a local "
            "one."
        ) from None


def check_engine(name: str, address: str | None = None) -> None:
    """Refuse an unknown engine, an address without Ray, or Ray when it is not installed.

    Cheap (starts nothing): callers check before long work and make the engine when needed.
    """
    if name == "local":
        if address is not None:
            raise VitalError("address=ADDR names a Ray cluster: use it with engine=ray.")
        return
    if name != "ray":
        raise VitalError(f"unknown engine {name!r}: use 'local' or 'ray'.")
    try:
        import ray  # noqa: F401
    except ImportError as error:
        raise VitalError(
            "the ray engine needs Ray: pip install 'vital[ray]' (or use engine=local)."
        ) from error


def make_engine(
    name: str, address: str | None = None, num_cpus: int | None = None
) -> LocalEngine | RayEngine:
    """``local`` or ``ray`` (``address``: the Ray cluster; default: start a local one)."""
    check_engine(name, address)
    if name == "local":
        return LocalEngine()
    return RayEngine(address, num_cpus=num_cpus)
