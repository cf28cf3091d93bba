"""The checkpoint store's basics: add/get, exact round trips, dedup, populations, errors, lineage, stack, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import MLP_CFG, mlp_state
from zoo import (
    ConfigError,
    DuplicateError,
    MismatchError,
    NewModel,
    NotFoundError,
    Zoo,
    ZooError,
)
from zoo.facade import raw_config
from zoo.models.architectures import build_module

# ------------------------------------------------------------------------------------------ add / get


def test_add_returns_record_and_get_by_id_and_name(zoo: Zoo, mlp_cfg, make_state) -> None:
    sd = make_state(0)
    rec = zoo.add(
        sd, arch=mlp_cfg, population="pop", name="first", run="r1", step=3, op="train", source="unit"
    )
    assert rec.id >= 1
    assert (rec.name, rec.population, rec.run, rec.step, rec.op, rec.source) == (
        "first",
        "pop",
        "r1",
        3,
        "train",
        "unit",
    )
    assert rec.n_params == 8 * 16 + 16 + 16 * 4 + 4 == 212
    assert rec.nbytes == 212 * 4
    assert rec.arch_config["family"] == "mlp" and rec.arch_config["hidden"] == [16]
    by_id, by_name, by_digits = zoo.get(rec.id), zoo.get("first"), zoo.get(str(rec.id))
    assert by_id.id == by_name.id == by_digits.id == rec.id
    assert by_name.architecture == rec.architecture and by_name.arch_config == rec.arch_config
    assert zoo.summary()["models"] == 1
    assert [p.name for p in zoo.populations()] == ["pop"] and zoo.population_info("pop").n_models == 1


def test_state_dict_round_trip_is_exact_for_all_dtypes(zoo: Zoo) -> None:
    g = torch.Generator().manual_seed(1)
    sd = {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "i64": torch.arange(-5, 6, dtype=torch.int64),
        "mask": torch.tensor([True, False, True, True]),
        "scalar_f32": torch.tensor(3.25),
        "scalar_i64": torch.tensor(-7),
        "special": torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0]),
        "strided": torch.randn(4, 6, generator=g).t(),  # non-contiguous input
    }
    rec = zoo.add(sd)
    back = zoo.state_dict(rec.id)
    assert list(back) == list(sd)  # stored order
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        # bit-exact (NaN and -0.0 included)
        a, b = back[k].contiguous(), v.contiguous()
        if a.dtype.is_floating_point:
            a, b = (
                a.view({2: torch.int16, 4: torch.int32}[a.element_size()]),
                b.view({2: torch.int16, 4: torch.int32}[b.element_size()]),
            )
        assert torch.equal(a, b), k
    assert rec.state_dict().keys() == sd.keys()
    assert zoo.verify().ok


def test_empty_shaped_tensor_round_trip(zoo: Zoo) -> None:
    sd = {
        "w": torch.randn(2, 2),
        "empty": torch.zeros(0, 3),
        "empty_i64": torch.zeros(4, 0, dtype=torch.int64),
    }
    rec = zoo.add(sd)
    back = zoo.state_dict(rec.id)
    assert back["empty"].shape == (0, 3) and back["empty"].dtype == torch.float32
    assert back["empty_i64"].shape == (4, 0) and back["empty_i64"].dtype == torch.int64
    assert torch.equal(back["w"], sd["w"])
    assert zoo.stack([rec.id])["empty"].shape == (1, 0, 3)


def test_module_rebuilds_and_matches_original(zoo: Zoo, mlp_cfg) -> None:
    torch.manual_seed(0)
    net = build_module(mlp_cfg).eval()
    rec = zoo.add(net.state_dict(), arch=mlp_cfg)
    rebuilt = zoo.get(rec.id).module()
    assert type(rebuilt) is type(net) and not rebuilt.training
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))


def test_module_of_raw_model_is_refused(zoo: Zoo) -> None:
    rec = zoo.add({"w": torch.ones(2)})
    assert rec.arch_config["family"] == "raw"
    with pytest.raises(ConfigError):
        rec.module()


# ------------------------------------------------------------------------------------------ dedup


def test_same_weights_are_stored_once(zoo: Zoo, mlp_cfg, make_state) -> None:
    sd = make_state(0)
    a = zoo.add(sd, arch=mlp_cfg)
    packs_after_first = len(list((zoo.root / "packs").glob("*.safetensors")))
    b = zoo.add({k: v.clone() for k, v in sd.items()}, arch=mlp_cfg)
    assert a.id != b.id
    s = zoo.summary()
    assert s["models"] == 2 and s["blobs"] == 4 and s["packs"] == 1
    assert s["logical_bytes"] == 2 * 212 * 4 and s["stored_bytes"] == 212 * 4
    assert s["dedup_ratio"] == pytest.approx(2.0)
    # the second write wrote no new pack file
    assert len(list((zoo.root / "packs").glob("*.safetensors"))) == packs_after_first == 1
    assert torch.equal(zoo.state_dict(b.id)["layers.0.weight"], sd["layers.0.weight"])


def test_shared_frozen_layer_is_deduplicated(zoo: Zoo, mlp_cfg, make_state) -> None:
    base = make_state(0)
    ft = make_state(1)
    ft["layers.0.weight"] = base["layers.0.weight"].clone()  # frozen first layer
    ft["layers.0.bias"] = base["layers.0.bias"].clone()
    zoo.add_many([NewModel(base, arch=mlp_cfg), NewModel(ft, arch=mlp_cfg)])
    s = zoo.summary()
    assert s["blobs"] == 6  # 4 + 2 new
    assert s["stored_bytes"] == 4 * (212 + 16 * 4 + 4)
    # identical tensors within one model are stored once too
    z2 = zoo.add({"a": torch.ones(3), "b": torch.ones(3)})
    assert zoo.summary()["blobs"] == 7
    back = zoo.state_dict(z2.id)
    assert torch.equal(back["a"], back["b"])


# ------------------------------------------------------------------------------------------ populations


def test_population_binds_architecture(zoo: Zoo, mlp_cfg, make_state) -> None:
    zoo.create_population("bound", arch=mlp_cfg, description="tiny mlps")
    info = zoo.population_info("bound")
    assert info.architecture is not None and info.n_models == 0 and info.description == "tiny mlps"
    rec = zoo.add(make_state(0), population="bound")  # no arch: the population's
    assert rec.arch_config == zoo.population("bound").config
    assert rec.architecture == info.architecture
    # a wider MLP (a different nn config) does not fit
    wide = dict(mlp_cfg, hidden=[32])
    with pytest.raises(MismatchError, match="bound"):
        zoo.add(make_state(1, wide), arch=wide, population="bound")
    # a state dict that does not fit the population's architecture
    bad = make_state(2)
    bad["layers.1.weight"] = torch.zeros(4, 17)
    with pytest.raises(MismatchError):
        zoo.add(bad, population="bound")
    # a state dict that does not fit its own config
    with pytest.raises(MismatchError):
        zoo.add(make_state(3), arch=wide)
    assert zoo.population_info("bound").n_models == 1 and zoo.summary()["models"] == 1


def test_population_created_on_first_add_binds_its_arch(zoo: Zoo, mlp_cfg, make_state) -> None:
    zoo.add(make_state(0), arch=mlp_cfg, population="auto")
    assert zoo.population_info("auto").architecture is not None
    wide = dict(mlp_cfg, hidden=[32])
    with pytest.raises(MismatchError):
        zoo.add(make_state(1, wide), arch=wide, population="auto")


def test_raw_population_refuses_a_different_signature(zoo: Zoo) -> None:
    zoo.add({"a": torch.zeros(2), "b": torch.zeros(3)}, population="raw")
    zoo.add({"a": torch.ones(2), "b": torch.ones(3)}, population="raw")  # same signature: fine
    extra = {"a": torch.ones(2), "b": torch.ones(3), "c": torch.ones(1)}
    with pytest.raises(MismatchError, match="unexpected tensors"):
        zoo.add(extra, population="raw", arch=raw_config(extra))
    fewer = {"a": torch.ones(2)}
    with pytest.raises(MismatchError, match="missing tensors"):
        zoo.add(fewer, population="raw", arch=raw_config(fewer))
    # a buildable architecture is not the raw one either
    with pytest.raises(MismatchError):
        zoo.add(mlp_state(0), population="raw", arch=MLP_CFG)
    assert zoo.population_info("raw").n_models == 2
    assert zoo.population("raw").stack()["b"].shape == (2, 3)


@pytest.mark.parametrize(
    "sd",
    [
        {"a": torch.ones(2), "b": torch.ones(3), "c": torch.ones(1)},
        {"a": torch.ones(2)},
        {"a": torch.ones(2), "b": torch.ones(4)},
        {"a": torch.ones(2), "b": torch.ones(3, dtype=torch.float16)},
    ],
    ids=["extra-key", "missing-key", "other-shape", "other-dtype"],
)
def test_raw_population_refuses_different_keys_without_arch(zoo: Zoo, sd) -> None:
    zoo.add({"a": torch.zeros(2), "b": torch.zeros(3)}, population="raw")
    with pytest.raises(MismatchError):
        zoo.add(sd, population="raw")
    assert zoo.population_info("raw").n_models == 1


def test_add_many_mixed_arch_in_one_population_is_all_or_nothing(
    zoo: Zoo, mlp_cfg, make_state, snapshot
) -> None:
    before = snapshot(zoo)
    wide = dict(mlp_cfg, hidden=[32])
    with pytest.raises(MismatchError):
        zoo.add_many(
            [
                NewModel(make_state(0), arch=mlp_cfg, population="p"),
                NewModel(make_state(1, wide), arch=wide, population="p"),
            ]
        )
    assert snapshot(zoo) == before


def test_duplicate_names_are_refused(zoo: Zoo, mlp_cfg, make_state) -> None:
    zoo.add(make_state(0), arch=mlp_cfg, name="m")
    with pytest.raises(DuplicateError, match="'m'"):
        zoo.add(make_state(1), arch=mlp_cfg, name="m")
    with pytest.raises(DuplicateError):
        zoo.add_many(
            [NewModel(make_state(2), arch=mlp_cfg, name="x"), NewModel(make_state(3), arch=mlp_cfg, name="x")]
        )
    zoo.create_population("p")
    with pytest.raises(DuplicateError):
        zoo.create_population("p")
    assert zoo.create_population("p", exist_ok=True).name == "p"
    assert zoo.summary()["models"] == 1 and len(zoo.populations()) == 1


def test_not_found_errors(zoo: Zoo, mlp_cfg, make_state) -> None:
    rec = zoo.add(make_state(0), arch=mlp_cfg, name="m")
    for key in (rec.id + 100, "nope", str(rec.id + 100)):
        with pytest.raises(NotFoundError):
            zoo.get(key)
        with pytest.raises(NotFoundError):
            zoo.state_dict(key)
    with pytest.raises(NotFoundError):
        zoo.add(make_state(1), arch=mlp_cfg, parents=["nope"])
    with pytest.raises(NotFoundError):
        zoo.add(make_state(1), arch=mlp_cfg, parents=[rec.id + 100])
    with pytest.raises(NotFoundError):
        zoo.population("nope")
    with pytest.raises(NotFoundError):
        zoo.architecture("nope")
    with pytest.raises(NotFoundError):
        zoo.stack([rec.id, rec.id + 100])
    with pytest.raises(NotFoundError):
        zoo.lineage("nope")
    with pytest.raises(NotFoundError):
        zoo.remove(["nope"])
    assert issubclass(NotFoundError, ZooError) and issubclass(NotFoundError, LookupError)
    assert zoo.summary()["models"] == 1


# ------------------------------------------------------------------------------------------ metadata


def test_metrics_are_long_form_with_splits(zoo: Zoo, mlp_cfg, make_state) -> None:
    rec = zoo.add(
        make_state(0), arch=mlp_cfg, step=5,
        metrics={"test_acc": 0.9, "train_loss": 0.25, "val_acc": 0.8, "flops": 12, "testing": 1.0},
    )  # fmt: skip
    df = zoo.metrics(rec.id)
    assert list(df.columns) == ["model_id", "name", "split", "step", "value"]
    got = {(r.name, r.split): (r.step, r.value) for r in df.itertuples()}
    assert got == {
        ("acc", "test"): (5, 0.9), ("loss", "train"): (5, 0.25), ("acc", "val"): (5, 0.8),
        ("flops", ""): (5, 12.0), ("testing", ""): (5, 1.0),
    }  # fmt: skip
    zoo.add_metrics(rec.id, [("acc", "test", 10, 0.95)])
    zoo.add_metrics("1", {"test_acc": 0.97}, step=11)
    assert rec.metric("acc", "test") == pytest.approx(0.97)
    assert rec.metric("acc", "val") == pytest.approx(0.8)
    assert rec.metric("nope") is None
    assert len(zoo.metrics()) == 7


def test_hparams_tags_untag(zoo: Zoo, mlp_cfg, make_state) -> None:
    hp = {"lr": 0.001, "epochs": 3, "opt": "adam", "nesterov": True, "betas": [0.9, 0.99], "sched": None}
    rec = zoo.add(make_state(0), arch=mlp_cfg, hparams=hp, tags=["b", "a", "b"])
    assert rec.hparams() == hp
    assert rec.tags() == ["a", "b"]
    zoo.tag(rec.id, "c", "a")
    assert zoo.tags(rec.id) == ["a", "b", "c"]
    zoo.untag(rec.id, "a", "zzz")
    assert zoo.tags(rec.id) == ["b", "c"]


def test_lineage_up_down_both(zoo: Zoo, mlp_cfg, make_state) -> None:
    a = zoo.add(make_state(0), arch=mlp_cfg, name="a", op="train")
    e = zoo.add(make_state(1), arch=mlp_cfg, name="e", op="train")
    b = zoo.add(make_state(2), arch=mlp_cfg, name="b", parents=["a"], op="finetune", params={"epochs": 3})
    c = zoo.add(make_state(3), arch=mlp_cfg, name="c", parents=[b.id], op="finetune", params={"epochs": 1})
    d = zoo.add(
        make_state(4), arch=mlp_cfg, name="d", parents={b.id: "base", e.id: "other"}, op="merge.ties",
        params={"density": 0.5},
    )  # fmt: skip

    def pairs(edges):
        return sorted((x.parent, x.child, x.op) for x in edges)

    assert pairs(zoo.lineage(c.id, direction="up")) == sorted(
        [(a.id, b.id, "finetune"), (b.id, c.id, "finetune")]
    )
    assert pairs(zoo.lineage(c.id, direction="up", max_depth=1)) == [(b.id, c.id, "finetune")]
    assert pairs(zoo.lineage("a", direction="down")) == sorted(
        [(a.id, b.id, "finetune"), (b.id, c.id, "finetune"), (b.id, d.id, "merge.ties")]
    )
    assert pairs(zoo.lineage(b.id, direction="both")) == sorted(
        [(a.id, b.id, "finetune"), (b.id, c.id, "finetune"), (b.id, d.id, "merge.ties")]
    )
    merge_edges = {x.parent: x for x in d.parents()}
    assert set(merge_edges) == {b.id, e.id}
    assert merge_edges[b.id].role == "base" and merge_edges[e.id].role == "other"
    assert merge_edges[b.id].params == {"density": 0.5} and merge_edges[b.id].op == "merge.ties"
    assert [x.child for x in b.children()] == [c.id, d.id]
    assert zoo.lineage(a.id, direction="up") == []
    with pytest.raises(ConfigError):
        zoo.lineage(a.id, direction="sideways")


def test_remove_refuses_parents_unless_forced(zoo: Zoo, mlp_cfg, make_state) -> None:
    a = zoo.add(make_state(0), arch=mlp_cfg, name="a", tags=["t"], metrics={"acc": 1}, hparams={"lr": 1})
    b = zoo.add(make_state(1), arch=mlp_cfg, name="b", parents=[a.id], op="finetune")
    with pytest.raises(ZooError, match="children"):
        zoo.remove([a.id])
    assert zoo.summary()["models"] == 2
    assert zoo.remove([a.id, b.id]) == 2  # both together: no lineage is cut
    assert zoo.summary()["models"] == 0
    a = zoo.add(make_state(0), arch=mlp_cfg, name="a2")
    b = zoo.add(make_state(1), arch=mlp_cfg, name="b2", parents=[a.id])
    assert zoo.remove(["a2"], force=True) == 1
    with pytest.raises(NotFoundError):
        zoo.get("a2")
    assert zoo.lineage(b.id, direction="up") == []
    assert zoo.sql("select count(*) as n from metrics")["n"][0] == 0
    assert zoo.sql("select count(*) as n from tags")["n"][0] == 0
    assert zoo.verify().ok


# ------------------------------------------------------------------------------------------ stack


def test_stack_order_and_shapes_match_torch_stack(zoo: Zoo, mlp_cfg, make_state) -> None:
    recs = zoo.add_many([NewModel(make_state(s), arch=mlp_cfg, population="p") for s in range(3)])
    recs.append(zoo.add(make_state(3), arch=mlp_cfg, population="p"))  # a second pack
    ids = [r.id for r in recs]
    order = [ids[2], ids[0], ids[3], ids[1]]
    W = zoo.stack(order)
    assert set(W) == {"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"}
    for k, v in W.items():
        ref = torch.stack([zoo.state_dict(i)[k] for i in order])
        assert v.shape == ref.shape == (4, *make_state(0)[k].shape)
        assert v.dtype == ref.dtype and torch.equal(v, ref)
    assert torch.equal(zoo.stack(order, names=["layers.1.bias"])["layers.1.bias"], W["layers.1.bias"])
    assert list(zoo.stack(order, names=["layers.1.bias"])) == ["layers.1.bias"]
    pop = zoo.population("p").stack()
    assert torch.equal(
        pop["layers.0.weight"], torch.stack([make_state(s)["layers.0.weight"] for s in range(4)])
    )
    with pytest.raises(NotFoundError):
        zoo.stack(order, names=["nope"])


def test_stack_keys_follow_state_dict_order(zoo: Zoo) -> None:
    cfg = {"family": "mlp", "in_features": 4, "hidden": [4] * 11, "out_features": 2}
    recs = [zoo.add(mlp_state(s, cfg), arch=cfg, population="deep") for s in range(2)]
    want = list(mlp_state(0, cfg))
    assert list(zoo.state_dict(recs[0].id)) == want
    assert list(zoo.stack([r.id for r in recs])) == want
    assert list(zoo.population("deep").stack()) == want


def test_stack_of_different_architectures_is_refused(zoo: Zoo, mlp_cfg, make_state) -> None:
    a = zoo.add(make_state(0), arch=mlp_cfg)
    wide = dict(mlp_cfg, hidden=[32])
    b = zoo.add(make_state(1, wide), arch=wide)
    c = zoo.add({"other": torch.ones(2)})
    with pytest.raises(MismatchError):
        zoo.stack([a.id, b.id])
    with pytest.raises(MismatchError):
        zoo.stack([a.id, c.id])


def test_stack_with_repeated_ids(zoo: Zoo, mlp_cfg, make_state) -> None:
    """Bootstrap sampling: a model may appear several times, rows follow the given order."""
    a = zoo.add(make_state(0), arch=mlp_cfg)
    b = zoo.add(make_state(1), arch=mlp_cfg)
    W = zoo.stack([a.id, b.id, a.id])
    assert W["layers.0.bias"].shape == (3, 16)
    assert torch.equal(W["layers.0.bias"][0], W["layers.0.bias"][2])
    assert torch.equal(W["layers.0.bias"][1], make_state(1)["layers.0.bias"])
    assert torch.equal(W["layers.0.bias"][2], make_state(0)["layers.0.bias"])


# ------------------------------------------------------------------------------------------ export / ingest


def test_export_then_ingest_gives_identical_tensors(zoo: Zoo, mlp_cfg, make_state, tmp_path: Path) -> None:
    sd = make_state(0)
    rec = zoo.add(sd, arch=mlp_cfg, name="orig", metrics={"test_acc": 0.5}, hparams={"lr": 0.1})
    out = zoo.export(rec.id, tmp_path / "export")
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    cfg = json.loads((out / "config.json").read_text())
    assert {k: v for k, v in cfg.items() if k != "weightzoo"} == rec.arch_config
    (back,) = zoo.ingest(out, population="re")
    assert back.op == "ingest" and back.id != rec.id
    got = zoo.state_dict(back.id)
    assert set(got) == set(sd)  # (safetensors files keep tensors sorted by name, not in module order)
    for k in sd:
        assert got[k].dtype == sd[k].dtype and torch.equal(got[k], sd[k])
    # identical tensors are deduplicated: no new blobs
    assert zoo.summary()["blobs"] == 4


def test_export_then_ingest_keeps_architecture(zoo: Zoo, mlp_cfg, make_state, tmp_path: Path) -> None:
    rec = zoo.add(make_state(0), arch=mlp_cfg, name="orig")
    out = zoo.export(rec.id, tmp_path / "export")
    (back,) = zoo.ingest(out)
    assert back.architecture == rec.architecture
    assert back.arch_config == rec.arch_config
    x = torch.randn(2, 8)
    assert torch.equal(back.module()(x), rec.module()(x))


def test_open_existing_and_missing(zoo_root: Path, mlp_cfg, make_state, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        Zoo.open(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotFoundError):
        Zoo.open(tmp_path / "afile")
    with Zoo.open(zoo_root) as z:
        rec = z.add(make_state(0), arch=mlp_cfg, name="m", hparams={"nesterov": True})
    with Zoo.open(zoo_root, create=False) as z:  # reopening keeps everything
        assert z.get("m").id == rec.id
        assert z.models().hparam("nesterov", "==", True).ids() == [rec.id]
        assert z.models().hparam("nesterov", "==", False).ids() == []
        assert_same = z.state_dict("m")
        assert all(torch.equal(assert_same[k], v) for k, v in make_state(0).items())


def test_records_of_unknown_ids_raise_not_found(zoo: Zoo, make_state) -> None:
    from zoo.errors import NotFoundError

    m = zoo.add(make_state(0))
    assert [r.id for r in zoo.records([m.id, m.id])] == [m.id, m.id]
    with pytest.raises(NotFoundError, match="no model"):
        zoo.records([m.id, 987654])
