"""Several processes on one zoo at once: writers serialise on the catalog lock, readers see consistent data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from tests.conftest import MLP_CFG, assert_same_state, mlp_state
from zoo import Zoo

CFG_JSON = repr(MLP_CFG)

WRITER = f"""
import os, sys, time
from zoo import Zoo
from zoo.models.architectures import init_state

root, w, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
z = Zoo.open(root)
while not os.path.exists(go):          # start all writers at the same moment
    time.sleep(0.005)
for i in range(n):
    z.add(init_state({CFG_JSON}, 1000 * w + i), arch={CFG_JSON}, population="shared", name=f"w{{w}}-{{i}}",
          run=f"w{{w}}", step=i, metrics={{"test_acc": i / n}}, hparams={{"writer": w}}, tags=[f"writer{{w}}"])
z.close()
print("done", w, flush=True)
"""


def test_three_writers_at_once(zoo: Zoo, py_start, tmp_path: Path) -> None:
    n, writers = 50, 3
    go = tmp_path / "go"
    procs = [py_start(WRITER, str(zoo.root), str(w), str(n), str(go)) for w in range(writers)]
    time.sleep(0.2)
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        assert out.startswith("done")
    with Zoo.open(zoo.root) as z:
        assert z.summary()["models"] == writers * n
        assert z.population_info("shared").n_models == writers * n
        assert len(z.architectures()) == 1
        for w in range(writers):
            q = z.models().tag(f"writer{w}")
            assert q.count() == n
            assert q.hparam("writer", "==", w).count() == n
            assert q.final().ids() == [z.get(f"w{w}-{n - 1}").id]
        # every model readable, bit-exact, in any order
        ids = z.population("shared").ids()
        recs = z.records(ids)
        W = z.stack(ids)
        for row, rec in enumerate(recs):
            w, i = (int(x) for x in rec.name[1:].split("-"))
            want = mlp_state(1000 * w + i)
            assert all(torch.equal(W[k][row], want[k]) for k in want), rec.name
        assert_same_state(z.state_dict("w2-49"), mlp_state(2049))
        rep = z.verify()
        assert rep.ok and rep.n_models == writers * n
        assert rep.orphan_packs == [] and rep.temp_files == [] and rep.unreferenced_blobs == 0
        assert z.sql("select count(*) as n from metrics")["n"][0] == writers * n


SEQ_WRITER = """
import sys, torch
from zoo import NewModel, Zoo

root, n = sys.argv[1], int(sys.argv[2])
shapes = {"layers.0.weight": (16, 8), "layers.0.bias": (16,), "layers.1.weight": (4, 16), "layers.1.bias": (4,)}

def model(i):  # every tensor of model i is filled with i
    return {k: torch.full(s, float(i)) for k, s in shapes.items()}

z = Zoo.open(root)
i = 1
while i <= n:
    if i % 4 == 0 and i + 2 <= n:  # sometimes a batch of three in one transaction
        z.add_many([NewModel(model(j), population="seq", name=f"m{j}", metrics={"idx": j}) for j in range(i, i + 3)])
        i += 3
    else:
        z.add(model(i), population="seq", name=f"m{i}", metrics={"idx": i})
        i += 1
z.close()
print("done", flush=True)
"""

CONSISTENCY = """
select
  (select count(*) from models) as n_models,
  (select count(*) from (select m.id from models m left join tensors t on t.model_id = m.id
                         group by m.id having count(t.name) <> 4)) as incomplete_models,
  (select count(*) from tensors t left join blobs b on b.id = t.blob_id where b.id is null) as dangling_tensors,
  (select count(*) from blobs b left join packs p on p.id = b.pack_id where p.id is null) as dangling_blobs,
  (select count(*) from metrics x left join models m on m.id = x.model_id where m.id is null) as dangling_metrics,
  (select count(*) from models m left join metrics x on x.model_id = m.id where x.model_id is null) as models_without_metrics
"""


def _while_writing(zoo: Zoo, py_start, n: int, check) -> int:
    """Run SEQ_WRITER (n models) in a subprocess and call ``check()`` in a loop until it is done."""
    writer = py_start(SEQ_WRITER, str(zoo.root), str(n))
    checks = 0
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            running = writer.poll() is None
            check()
            checks += 1
            if not running:
                break
    finally:
        if writer.poll() is None:
            writer.kill()
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err[-2000:]
    assert zoo.population("seq").count() == n
    rep = zoo.verify()
    assert rep.ok and rep.orphan_packs == [] and rep.temp_files == [] and rep.n_models == n
    return checks


def test_reader_stack_is_consistent_while_a_writer_writes(zoo: Zoo, mlp_cfg, py_start) -> None:
    zoo.create_population("seq", arch=mlp_cfg)
    seen: list[int] = []

    def check() -> None:
        pop = zoo.population("seq")
        ids = pop.ids()
        seen.append(len(ids))
        if not ids:
            return
        recs = zoo.records(ids)
        W = zoo.stack(ids)  # every row holds the model it claims to, no half-written model
        idx = torch.tensor([float(r.name[1:]) for r in recs])
        for k, v in W.items():
            assert v.shape[0] == len(ids)
            assert torch.equal(v.reshape(len(ids), -1), idx[:, None].expand(len(ids), v[0].numel())), k
        df = zoo.models().ids_in(ids).df()  # pop.df() would re-query and may see newer models
        assert df["idx"].tolist() == idx.tolist()

    checks = _while_writing(zoo, py_start, 60, check)
    assert checks >= 2 and seen == sorted(seen) and seen[-1] == 60


def test_sql_counts_grow_while_a_writer_writes(zoo: Zoo, mlp_cfg, py_start) -> None:
    zoo.create_population("seq", arch=mlp_cfg)
    seen: list[int] = []

    def check() -> None:
        row = zoo.sql(CONSISTENCY).iloc[0]
        seen.append(int(row["n_models"]))
        assert int(row["incomplete_models"]) == 0  # models are loaded before tensors: never incomplete

    _while_writing(zoo, py_start, 60, check)
    assert seen == sorted(seen) and seen[-1] == 60
    assert {k: int(v) for k, v in zoo.sql(CONSISTENCY).iloc[0].items()} == {
        "n_models": 60, "incomplete_models": 0, "dangling_tensors": 0, "dangling_blobs": 0, "dangling_metrics": 0,
        "models_without_metrics": 0,
    }  # fmt: skip


def test_sql_snapshot_is_consistent_while_a_writer_writes(zoo: Zoo, mlp_cfg, py_start) -> None:
    zoo.create_population("seq", arch=mlp_cfg)
    bad: list[dict] = []

    def check() -> None:
        row = {k: int(v) for k, v in zoo.sql(CONSISTENCY).iloc[0].items()}
        if any(v for k, v in row.items() if k != "n_models"):
            bad.append(row)

    _while_writing(zoo, py_start, 60, check)
    assert bad == []


OPENER = """
import json, os, sys, time
from pathlib import Path
import alembic.command  # noqa: F401  (imported up front so that the opens below race tightly)
from zoo import Zoo

base, rounds = Path(sys.argv[1]), int(sys.argv[2])
(base / f"ready-{os.getpid()}").touch()
go = base / "go"
while not go.exists():
    time.sleep(0.002)
start = float(go.read_text())
errors = []
for r in range(rounds):
    while time.time() < start + 0.15 * r:  # all processes open zoo{r} within a millisecond
        pass
    try:
        Zoo.open(base / f"zoo{r}").close()
    except Exception as e:
        errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
print(json.dumps(errors), flush=True)
"""


def test_processes_opening_a_new_zoo_at_once(tmp_path: Path, py_start) -> None:
    rounds, procs_n = 3, 3
    procs = [py_start(OPENER, str(tmp_path), str(rounds)) for _ in range(procs_n)]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready-*"))) < procs_n and time.time() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        time.sleep(0.01)
    (tmp_path / "go.tmp").write_text(str(time.time() + 0.2))
    (tmp_path / "go.tmp").rename(tmp_path / "go")
    errors = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        errors += json.loads(out.strip().splitlines()[-1])
    assert errors == []
    for r in range(rounds):
        with Zoo.open(tmp_path / f"zoo{r}") as z:
            assert z.summary()["models"] == 0
