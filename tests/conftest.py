"""Shared fixtures: a fresh zoo per test, a small MLP config, state-dict makers, subprocess helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import torch

from zoo import Zoo
from zoo.models.architectures import init_state

REPO_ROOT = Path(__file__).resolve().parents[1]

#: A tiny MLP (8 -> 16 -> 4): 4 tensors, 212 parameters.
MLP_CFG: dict = {"family": "mlp", "in_features": 8, "hidden": [16], "out_features": 4}


@pytest.fixture
def zoo_root(tmp_path: Path) -> Path:
    """Where the test's zoo lives (not created yet)."""
    return tmp_path / "zoo"


@pytest.fixture
def zoo(zoo_root: Path) -> Iterator[Zoo]:
    """A fresh, empty zoo at ``zoo_root``."""
    z = Zoo.open(zoo_root)
    try:
        yield z
    finally:
        z.close()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one thread is many times faster than two on a shared, loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def mlp_cfg() -> dict:
    return dict(MLP_CFG, hidden=list(MLP_CFG["hidden"]))


def mlp_state(seed: int, cfg: Mapping | None = None) -> dict[str, torch.Tensor]:
    """A freshly initialised state dict of ``cfg`` (default: the tiny MLP), deterministic in ``seed``."""
    return init_state(cfg or MLP_CFG, seed)


@pytest.fixture
def make_state() -> Callable[..., dict[str, torch.Tensor]]:
    """``make_state(seed, cfg=None)`` -> a small MLP state dict."""
    return mlp_state


def assert_same_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    """Same names, dtypes, shapes and bit-exact values."""
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def same_state() -> Callable[[Mapping, Mapping], None]:
    return assert_same_state


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (the repo on ``sys.path``); returns the finished process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO_ROOT,
    )


def popen_python(code: str, *args: str) -> subprocess.Popen:
    """Start ``code`` in a fresh interpreter without waiting for it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )


@pytest.fixture
def py() -> Callable[..., subprocess.CompletedProcess]:
    """``py(code, *argv)`` runs Python code in a subprocess (see :func:`run_python`)."""
    return run_python


@pytest.fixture
def py_start() -> Callable[..., subprocess.Popen]:
    """``py_start(code, *argv)`` starts Python code in a subprocess (see :func:`popen_python`)."""
    return popen_python


def pack_files(root: Path) -> set[str]:
    """Names of the pack files (and temp files) under a zoo root."""
    packs = root / "packs"
    names = {p.name for p in packs.glob("*.safetensors")}
    tmp = packs / ".tmp"
    if tmp.is_dir():
        names |= {".tmp/" + p.name for p in tmp.iterdir()}
    return names


def catalog_counts(z: Zoo) -> dict[str, int]:
    """Row counts of every catalog table (to assert that a refused write changed nothing)."""
    from sqlalchemy import func, select

    from zoo.store.schema import Base

    out = {}
    with z.engine.connect() as c:
        for t in Base.metadata.sorted_tables:
            if t.name in ("catalog_state", "alembic_version"):
                continue
            out[t.name] = int(c.execute(select(func.count()).select_from(t)).scalar_one())
    return out


@pytest.fixture
def snapshot() -> Callable[[Zoo], tuple[dict[str, int], set[str]]]:
    """``snapshot(zoo)`` -> (catalog row counts, pack file names): compare before/after a refused write."""

    def snap(z: Zoo) -> tuple[dict[str, int], set[str]]:
        return catalog_counts(z), pack_files(z.root)

    return snap


def catalog_dump(z: Zoo) -> list[dict]:
    """Every model with what the catalog says about it, ids included (the same build -> the same dump)."""
    from sqlalchemy import select

    from zoo.store import schema as S

    out = []
    with z.engine.connect() as c:
        names = dict(c.execute(select(S.Model.id, S.Model.name)).all())
        for m in c.execute(select(S.Model.__table__).order_by(S.Model.id)).all():
            out.append({
                "id": m.id, "name": m.name, "op": m.op, "run": m.run, "step": m.step, "source": m.source,
                "population": m.population_id,
                "tensors": dict(c.execute(select(S.TensorEntry.name, S.TensorEntry.blob_id).where(S.TensorEntry.model_id == m.id)).all()),
                "hparams": dict(c.execute(select(S.Hyperparameter.name, S.Hyperparameter.value).where(S.Hyperparameter.model_id == m.id)).all()),
                "metrics": sorted(c.execute(select(S.Metric.name, S.Metric.split, S.Metric.value).where(S.Metric.model_id == m.id)).all()),
                "parents": sorted((names[e.parent_id], e.role, e.op, e.params) for e in c.execute(
                    select(S.LineageEdge.__table__).where(S.LineageEdge.child_id == m.id)).all()),
                "tags": sorted(c.execute(select(S.Tag.tag).where(S.Tag.model_id == m.id)).scalars()),
            })  # fmt: skip
    return out


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """A local two-CPU Ray for the module (it starts in seconds, not milliseconds); skipped without the
    ``ray`` extra. Yields a file path: a shard that finds the file removes it and kills its worker
    (``zoo.build.executors.KILL_ONCE_ENV``)."""
    from zoo.build.executors import KILL_ONCE_ENV

    ray = pytest.importorskip("ray")
    kill_file = tmp_path_factory.mktemp("kill") / "kill-once"
    mp = pytest.MonkeyPatch()
    mp.setenv(KILL_ONCE_ENV, str(kill_file))  # before ray.init: the workers inherit the environment
    mp.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield kill_file
    ray.shutdown()
    mp.undo()


@pytest.fixture
def spawn_safe_main(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty ``__main__`` for process-pool tests: spawned workers re-run the parent's ``__main__`` script
    (the multiprocessing rule: guard it with ``if __name__ == "__main__"``), and Streamlit's AppTest, run
    earlier in the suite, leaves a page script there."""
    import types

    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
