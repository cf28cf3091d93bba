"""Population builds on executors: a local two-CPU Ray (module-scoped: Ray starts in seconds, not
milliseconds) and a process pool write the same catalog as an in-process build (names, lineage, metrics,
hyperparameters, tensor hashes, model ids); a worker killed mid-shard is retried and its partial output
never reaches the catalog; Ray missing or a cluster that does not answer is a clear error."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.conftest import catalog_dump as dump
from zoo import Zoo
from zoo.build.builder import build
from zoo.build.executors import EXECUTORS, KILL_ONCE_ENV, check_reachable, make_executor
from zoo.build.recipes import Recipe
from zoo.errors import ConfigError, ZooError


def small_recipe() -> Recipe:
    """8 digits MLPs, 2 epochs, checkpoints at 1 and 2: two shards of 4 on two workers."""
    return Recipe.load("digits-mlp").scaled(n=8, epochs=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """The in-process build (one thread, shards of 4) that every executor must reproduce."""
    root = tmp_path_factory.mktemp("ref") / "zoo"
    z = Zoo.open(root)
    rep = build(z, small_recipe(), progress=False, max_shard=4, threads=1)
    assert rep.models_written == 16
    d = dump(z)
    z.close()
    REFERENCE_ROOT.append(root)
    return d


REFERENCE_ROOT: list = []


def test_ray_build_writes_what_an_in_process_build_writes(ray_local, reference, zoo, one_thread):
    rep = build(zoo, small_recipe(), progress=False, workers=2, executor="ray")
    assert rep.models_written == 16 and rep.runs_trained == 8
    assert dump(zoo) == reference
    assert zoo.verify().ok


def test_a_ray_worker_killed_mid_shard_is_retried_and_writes_nothing_partial(ray_local, reference, zoo, one_thread):
    ray_local.write_text("die")  # the first shard to finish a checkpoint kills its worker
    rep = build(zoo, small_recipe(), progress=False, workers=2, executor="ray")
    assert not ray_local.exists()  # a worker did die
    assert rep.models_written == 16
    assert dump(zoo) == reference  # nothing of the dead attempt, everything of the retry
    assert zoo.verify().ok


def test_process_pool_with_a_killed_worker(tmp_path, reference, zoo, one_thread, monkeypatch, spawn_safe_main):
    kill = tmp_path / "kill-once"
    kill.write_text("die")
    monkeypatch.setenv(KILL_ONCE_ENV, str(kill))  # spawned workers inherit it
    rep = build(zoo, small_recipe(), progress=False, workers=2, executor="process")
    assert not kill.exists() and rep.models_written == 16
    assert dump(zoo) == reference
    monkeypatch.setenv(KILL_ONCE_ENV, str(tmp_path / "never"))


def _pid_plus(shared: int, a: int) -> tuple[int, int]:
    import os

    if a < 0:
        raise ValueError(f"bad task {a}")
    return os.getpid(), shared + a


def test_a_process_executor_keeps_its_workers_across_jobs_until_closed(spawn_safe_main):
    import os

    with make_executor("process", 2) as ex:
        first = list(ex.map(_pid_plus, [(1,), (2,), (3,)], shared=10))
        assert [v for _, v in first] == [11, 12, 13]  # in task order
        with pytest.raises(ValueError, match="bad task -1"):  # a task's error reaches the caller...
            list(ex.map(_pid_plus, [(1,), (-1,), (2,)], shared=0))
        second = list(ex.map(_pid_plus, [(4,), (5,)], shared=0))  # ...and the pool still serves the next job
        assert [v for _, v in second] == [4, 5]
        pids = {p for p, _ in first} | {p for p, _ in second}
        assert os.getpid() not in pids and len(pids) <= 2  # the same two workers, not a new pool per job
        procs = list(ex._pool._processes.values())
    assert ex._pool is None and procs and all(not p.is_alive() for p in procs)  # close() ends them


def test_executors_registry_and_choice():
    assert EXECUTORS.names() == ["inprocess", "process", "ray"]
    assert make_executor(None, 1).name == "inprocess" and make_executor(None, 3).name == "process"
    with pytest.raises(ConfigError, match="valid executors"):
        make_executor("dask", 2)
    with pytest.raises(ConfigError, match="at least 1"):
        make_executor("process", 0)
    with pytest.raises(ConfigError, match="for the ray executor"):
        make_executor("process", 2, address="10.0.0.1:6379")
    seen = list(make_executor("inprocess").map(lambda shared, a, b: shared + a * b, [(1, 2), (3, 4)], shared=10))
    assert seen == [12, 22]


def test_ray_not_installed_names_the_extra(monkeypatch, zoo):
    monkeypatch.setitem(sys.modules, "ray", None)
    n = zoo.summary()["models"]
    with pytest.raises(ConfigError, match=r"pip install 'weightzoo\[ray\]'"):
        build(zoo, small_recipe(), progress=False, executor="ray")
    assert zoo.summary()["models"] == n


def test_cluster_that_does_not_answer_times_out_with_a_message(zoo):
    pytest.importorskip("ray")
    t0 = time.perf_counter()
    with pytest.raises(ZooError, match=r"Ray cluster at 192\.0\.2\.1:6379 did not answer within 1s"):
        build(zoo, small_recipe(), progress=False, address="192.0.2.1:6379", timeout=1)  # TEST-NET: no host
    assert time.perf_counter() - t0 < 15
    assert zoo.summary()["models"] == 0
    with pytest.raises(ConfigError, match="host:port"):
        check_reachable("nonsense", 1)


def test_cli_build_flags(ray_local, tmp_path, one_thread, capsys):
    from zoo.cli import main

    root = tmp_path / "zoo"
    rc = main(["build", "digits-mlp", "--n", "4", "--epochs", "1", "--workers", "2", "--ray", "--root", str(root),
               "--no-progress", "--json"])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models_written"] == 4 and out["runs_trained"] == 4
    rc = main(["build", "digits-mlp", "--n", "4", "--epochs", "1", "--ray", "192.0.2.1:6379", "--ray-timeout", "1",
               "--root", str(root), "--no-progress"])  # fmt: skip
    assert rc == 2 and "did not answer" in capsys.readouterr().err


def test_sharded_evaluation_on_ray_matches_in_process(ray_local, reference, one_thread):
    with Zoo.open(REFERENCE_ROOT[0]) as z:
        ids = z.population("digits-mlp").ids()
        here = z.evaluate(ids, splits=["test", "val"], record=False)
        n = len(z.metrics())
        there = z.evaluate(ids, splits=["test", "val"], workers=2, executor="ray")  # 2 shards of 8, recorded
        assert there[["model_id", "split", "acc"]].equals(here[["model_id", "split", "acc"]])
        assert (there["loss"] - here["loss"]).abs().max() < 1e-6
        assert len(z.metrics()) == n + 2 * 2 * len(ids)  # loss and acc for 2 splits, one transaction
