"""Where the builder's shards run: in this process, in a process pool, or as Ray tasks.

A shard (:func:`run_shard`: recipe, runs, data -> its checkpoints) is a plain function, so an executor
only decides where it runs; results always come back to the driver, which writes them through the one
write path, ``Zoo.add_many``, in shard order. The catalog therefore ends the same whichever executor
built it (same names, lineage, hyperparameters, metrics and tensor hashes, even the same model ids), and
a shard whose worker dies mid-way returns nothing: its partial output never reaches the catalog, and the
executor runs it again (``retries``)::

    from zoo.build.builder import build
    build(zoo, "digits-mlp", workers=2, executor="ray")                # a local Ray with 2 CPUs
    build(zoo, "digits-mlp", executor="ray", address="10.0.0.5:6379")   # a running Ray cluster

The learners' population-wide jobs (alignment to a reference, encoder outputs, generator sampling) run
the same way: each takes ``workers=``/``executor=``/``address=``/``timeout=``, opens its executor with
:func:`executor_scope`, cuts its population into :func:`shard_bounds` slices, and sends the workers only
tensors and configs (never an open zoo); the driver writes what comes back (docs/scale-out.md).

Executors are a :class:`~zoo.registry.Registry` (``EXECUTORS``): ``inprocess``, ``process`` (a pool of
``workers`` spawned processes, ``concurrent.futures``), ``ray`` (optional extra ``weightzoo[ray]``).
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from zoo.errors import ConfigError, ZooError
from zoo.registry import Registry

__all__ = ["EXECUTORS", "Executor", "InProcessExecutor", "ProcessExecutor", "RayExecutor", "make_executor",
           "executor_scope", "shard_bounds", "run_shard", "run_shard_task", "evaluate_shard", "ShardFailed"]  # fmt: skip

#: A test seam for remote workers (a driver cannot patch them): a file path. The first shard run that
#: finds the file removes it and kills its own process after its first checkpoint (mid-shard).
KILL_ONCE_ENV = "WEIGHTZOO_TEST_KILL_SHARD_ONCE"


class ShardFailed(ZooError):
    """A shard failed on every attempt (its output was never written)."""


def run_shard(recipe: Any, runs: Sequence[Any], data: Any, init_params: Any = None, num_threads: int = 1) -> list[Any]:
    """Train one shard and return all its checkpoints (the builder's unit of work, run by executors).

    ``num_threads`` bounds torch's intra-op threads in the worker (1: workers do not oversubscribe the
    cores, and results match an in-process build run with one thread bit for bit).
    """
    import torch

    from zoo.build.builder import train_shard

    torch.set_num_threads(max(1, int(num_threads)))
    out = []
    for ckpt in train_shard(recipe, runs, data, init_params=init_params, progress=False):
        out.append(ckpt)
        _kill_once()
    return out


def run_shard_task(shared: Any, recipe: Any, runs: Sequence[Any], data: Any, init_params: Any,
                   num_threads: int) -> list[Any]:  # fmt: skip
    """:func:`run_shard` as an executor task: ``data`` None means the data set shared by every task."""
    return run_shard(recipe, runs, shared if data is None else data, init_params, num_threads)


def evaluate_shard(shared: Any, config: Any, params: Any) -> dict[str, tuple[Any, Any]]:
    """Evaluate a slice of a stacked population on every split in ``shared`` (``{split: (X, y)}``):
    ``{split: (loss [n], accuracy [n])}`` (the executor task of sharded evaluation)."""
    from zoo.build.evaluate import evaluate_population
    from zoo.threads import torch_threads

    out = {}
    with torch_threads(1):  # restored afterwards: the in-process executor runs this in the caller's process
        for split, (X, y) in shared.items():
            r = evaluate_population(config, params, X, y)
            out[split] = (r.loss, r.accuracy)
            _kill_once()
    return out


def _kill_once() -> None:
    path = os.environ.get(KILL_ONCE_ENV)
    if path:
        try:
            os.remove(path)
        except FileNotFoundError:
            return
        os._exit(17)  # a worker dying mid-shard (OOM killer, a lost node): no cleanup, no result


class Executor(ABC):
    """Runs tasks ``fn(shared, *task)`` and yields their results in task order (see :meth:`map`)."""

    name: str = ""

    def __init__(self, workers: int = 1, *, retries: int = 2) -> None:
        if int(workers) < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self.workers = int(workers)
        self.retries = int(retries)

    @abstractmethod
    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple], shared: Any = None) -> Iterator[Any]:
        """``fn(shared, *task)`` for every task, results yielded in task order while later tasks still run.
        A task whose worker dies is run again up to ``retries`` times, then :class:`ShardFailed`."""

    def close(self) -> None:
        """Release the workers."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EXECUTORS: Registry[type[Executor]] = Registry("executor")


@EXECUTORS.register("inprocess")
class InProcessExecutor(Executor):
    """Every task in this process, one after another (``workers`` is ignored)."""

    name = "inprocess"

    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple], shared: Any = None) -> Iterator[Any]:
        for t in tasks:
            yield fn(shared, *t)


def _call(fn: Callable[..., Any], shared: Any, task: tuple) -> Any:
    return fn(shared, *task)


@EXECUTORS.register("process")
class ProcessExecutor(Executor):
    """A pool of ``workers`` spawned processes (``concurrent.futures``), started at the first :meth:`map`
    and kept until :meth:`close`, so one executor passed to several jobs pays the workers' start (each
    imports torch: seconds) once. A dead worker breaks the pool, which is then restarted and the
    unfinished tasks submitted again."""

    name = "process"

    def __init__(self, workers: int = 1, *, retries: int = 2) -> None:
        super().__init__(workers, retries=retries)
        self._pool: Any = None

    def _get_pool(self) -> Any:
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("spawn")  # never fork a process that holds torch threads and DB connections
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        return self._pool

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple], shared: Any = None) -> Iterator[Any]:
        from concurrent.futures.process import BrokenProcessPool

        done: dict[int, Any] = {}
        attempts = [0] * len(tasks)
        nxt = 0
        while nxt < len(tasks):
            todo = [i for i in range(nxt, len(tasks)) if i not in done]
            pool = self._get_pool()
            futs = {i: pool.submit(_call, fn, shared, tasks[i]) for i in todo}
            try:
                for i in todo:
                    done[i] = futs[i].result()
                    while nxt in done:
                        yield done.pop(nxt)
                        nxt += 1
            except BrokenProcessPool as e:
                self._drop_pool()
                for j, f in futs.items():  # keep what finished before the pool broke
                    if j >= nxt and j not in done and f.done() and not f.cancelled() and f.exception() is None:
                        done[j] = f.result()
                first = min(j for j in todo if j >= nxt and j not in done)
                attempts[first] += 1
                if attempts[first] > self.retries:
                    raise ShardFailed(f"task {first} failed {attempts[first]} times: its worker process died "
                                      f"({e})") from e  # fmt: skip
            except BaseException:
                for f in futs.values():  # a task raised (or the caller stopped): nothing of this map keeps running
                    f.cancel()
                raise

    def close(self) -> None:
        self._drop_pool()


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Tasks on Ray: ``address`` None starts a local Ray with ``workers`` CPUs (``ray.init()``); else the
    cluster at ``address`` (``host:port`` of its head, ``ray://host:10001`` or ``auto``), checked to answer
    within ``timeout`` seconds first. Ray runs a task again when its worker dies (``max_retries``)."""

    name = "ray"

    def __init__(self, workers: int = 1, *, retries: int = 2, address: str | None = None, timeout: float = 30.0) -> None:
        super().__init__(workers, retries=retries)
        self.address = address
        self.timeout = float(timeout)
        self._started = False
        self._ray = _import_ray()

    def _ensure(self) -> Any:
        ray = self._ray
        local = self.address in (None, "", "local")
        if not local:
            check_reachable(self.address, self.timeout)  # type: ignore[arg-type]
        if ray.is_initialized():  # the caller's own Ray session (e.g. ray.init() in a notebook): use it
            return ray
        if local:
            ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            try:
                ray.init(address=self.address, log_to_driver=False)
            except Exception as e:  # noqa: BLE001 - Ray raises many kinds; one message
                raise ZooError(f"cannot connect to the Ray cluster at {self.address}: {e}") from e
        self._started = True
        return ray

    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple], shared: Any = None) -> Iterator[Any]:
        ray = self._ensure()
        remote = ray.remote(num_cpus=1, max_retries=self.retries, retry_exceptions=False)(_call)
        shared_ref = ray.put(shared)
        refs = [remote.remote(fn, shared_ref, t) for t in tasks]
        for i, ref in enumerate(refs):
            try:
                yield ray.get(ref)
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                    ray.exceptions.TaskUnschedulableError) as e:  # fmt: skip
                for r in refs[i + 1 :]:
                    ray.cancel(r, force=True)
                raise ShardFailed(f"task {i} failed on {self.retries + 1} attempts: {e}") from e

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ConfigError("Ray is not installed: pip install 'weightzoo[ray]' (or run without --ray: "
                          "--workers N uses a local process pool)") from e  # fmt: skip
    return ray


def check_reachable(address: str, timeout: float) -> None:
    """Raise :class:`ZooError` unless ``host:port`` of a Ray head (or ``ray://host:port``) accepts a TCP
    connection within ``timeout`` seconds (Ray itself would wait for minutes). ``auto`` is not checked."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as e:
        raise ZooError(f"the Ray cluster at {address} did not answer within {timeout:.0f}s ({e.strerror or e}); "
                       "check the address (`ray status` on the head node) and the network, or drop the address "
                       "to start a local Ray") from e  # fmt: skip


def make_executor(executor: str | Executor | None = None, workers: int = 1, *, address: str | None = None,
                  timeout: float = 30.0, retries: int = 2) -> Executor:  # fmt: skip
    """An executor by name (``inprocess``, ``process``, ``ray``) or the one given. None picks ``ray`` when an
    address is given, ``process`` for ``workers > 1``, else ``inprocess``."""
    if isinstance(executor, Executor):
        return executor
    if executor is None:
        executor = "ray" if address else ("process" if workers > 1 else "inprocess")
    cls = EXECUTORS.get(executor)
    if cls is RayExecutor:
        return RayExecutor(workers, retries=retries, address=address, timeout=timeout)
    if address:
        raise ConfigError(f"an address is for the ray executor, not {executor!r}")
    return cls(workers, retries=retries)


@contextmanager
def executor_scope(executor: str | Executor | None = None, workers: int = 1, *, address: str | None = None,
                   timeout: float = 30.0) -> Iterator[Executor | None]:  # fmt: skip
    """The executor a job asked for, or None when it asked for none (``executor`` None, ``workers`` 1, no
    ``address``: the job's plain in-process path). Made (Ray missing, a cluster down: raised here, before
    any work) and closed by this block; an :class:`Executor` passed in belongs to the caller and stays open."""
    if executor is None and int(workers) <= 1 and not address:
        yield None
        return
    ex = make_executor(executor, workers, address=address, timeout=timeout)
    try:
        yield ex
    finally:
        if ex is not executor:
            ex.close()


def shard_bounds(n: int, workers: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``workers`` contiguous shards of ``n`` items (the last may be shorter; none empty).

    A job cut by these bounds gives the same result on every executor with the same ``workers``; to get
    it in this process, run it with ``executor="inprocess", workers=N`` (same shards, one after another)."""
    if int(workers) < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    per = max(1, -(-int(n) // int(workers)))
    return [(a, min(a + per, int(n))) for a in range(0, int(n), per)]
