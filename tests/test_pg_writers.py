"""Many writers on one PostgreSQL catalog and one bucket at once, while a reader queries and stacks:
nothing lost, no duplicate blobs (a tensor every writer writes is stored once), verify clean."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from sqlalchemy import func, select

from tests.conftest import popen_python
from tests.pgserver import PgServer
from tests.s3server import S3Server, serve
from zoo import Zoo
from zoo.store import schema as S

pytestmark = [pytest.mark.postgres, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

WRITER = """
import json, sys, torch
from zoo import NewModel, Zoo
root, url, packs, opts, w, batches, per = sys.argv[1:8]
w, batches, per = int(w), int(batches), int(per)
z = Zoo.open(root, url=url, packs=packs, storage_options=json.loads(opts))
shared = torch.arange(64, dtype=torch.float32)     # the same tensor in every model of every writer
for b in range(batches):
    items = []
    for k in range(per):
        i = b * per + k
        g = torch.Generator().manual_seed(w * 1_000_003 + i)
        items.append(NewModel({"w": torch.randn(8, 8, generator=g), "shared": shared}, population="pw",
                              name=f"w{w}/{i:05d}", metrics={"i": float(i)}))
    z.add_many(items)
z.close()
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def pg():
    yield from serve(PgServer(), "url")


@pytest.fixture(scope="module")
def s3():
    yield from serve(S3Server(), "endpoint")


def test_four_writers_and_a_reader_on_postgres_and_a_bucket(pg, s3, tmp_path):
    url, packs = pg.new_database(), f"s3://{s3.new_bucket()}/shared"
    writers, batches, per = 4, 4, 5
    # each machine has its own root folder (caches); the catalog and the bucket are shared
    z = Zoo.open(tmp_path / "reader", url=url, packs=packs, storage_options=s3.options)
    procs = [popen_python(WRITER, str(tmp_path / f"w{w}"), url, packs, json.dumps(s3.options), str(w), str(batches),
                          str(per)) for w in range(writers)]  # fmt: skip
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                n = z.population("pw").count() if z.populations() else 0
                assert not seen or n >= seen[-1]  # counts only grow: no half-visible write
                seen.append(n)
                if n:
                    W = z.population("pw").stack()
                    assert W["w"].shape[0] == W["shared"].shape[0] >= n  # every row whole
                    assert torch.equal(W["shared"][0], torch.arange(64, dtype=torch.float32))
                stop.wait(0.05)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    outs = [p.communicate(timeout=300) for p in procs]
    stop.set()
    reader.join(timeout=60)
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert not errors, errors
    total = writers * batches * per
    with z.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(S.Model)).scalar_one() == total  # nothing lost
        assert c.execute(select(func.count(func.distinct(S.Model.name)))).scalar_one() == total
        assert c.execute(select(func.count()).select_from(S.Blob)).scalar_one() == total + 1  # "shared" once
        assert c.execute(select(func.count()).select_from(S.Pack)).scalar_one() == writers * batches
    rep = z.verify()
    assert rep.ok and rep.orphan_packs == [] and rep.n_models == total
    assert len(seen) > 1
    g = torch.Generator().manual_seed(2 * 1_000_003 + 7)
    assert torch.equal(z.state_dict("w2/00007")["w"], torch.randn(8, 8, generator=g))
    z.close()
