"""Low-rank and sparse robust weight signatures (analysis.rws.forms) and alpha chosen on the validation split.

Exact statements, against hand-computed values: the truncated SVD's error is the dropped singular
values (Eckart-Young), the energy rule, the per-entry bound after quantising the factors, the stored
bytes, top-k selection with its bit mask or index coding, round trips through the stored form (also of
the layout stored before forms existed), and unpatching a low-rank patch within float32 rounding. In
the zoo (a tiny fixture): extract --rank with its layout in the lineage params, patch with alpha
chosen on the validation split (recorded, never the test split), the CLI, and bad input refused with
the store unchanged.
"""

from __future__ import annotations

import math

import pytest
import torch

from analysis.rws import (
    Signature,
    choose_alpha,
    corruption_accuracy,
    decode_parts,
    encode,
    extract,
    extract_signature,
    load_signature,
    lowrank_bound,
    patch,
    patch_model,
    unpatch,
)
from analysis.rws.forms import energy_rank
from tests.test_rws import _three
from zoo import Zoo
from zoo.errors import ConfigError, MismatchError

pytestmark = pytest.mark.usefixtures("one_thread")

MLP = {"family": "mlp", "in_features": 64, "hidden": [16], "out_features": 10}
CNN = {"family": "cnn", "in_channels": 1, "image_size": 8, "channels": [4, 6], "kernel_size": 3, "out_features": 10}


# ------------------------------------------------------------------------------------ low rank
def test_truncated_svd_drops_exactly_the_smallest_singular_values() -> None:
    m = torch.zeros(6, 5)
    m[0, 0], m[1, 1], m[2, 2] = 3.0, 2.0, 1.0  # singular values 3, 2, 1 (squares 9, 4, 1 of 14)
    f = encode(m, form="lowrank", rank=2, bits=None)
    assert f.form == "lowrank" and f.rank == 2 and tuple(f.left.shape) == (6, 2) and tuple(f.right.shape) == (2, 5)
    want = m.clone()
    want[2, 2] = 0.0
    assert torch.allclose(f.decode(), want, atol=1e-6)
    assert energy_rank(m, 0.9) == 2 and energy_rank(m, 9 / 14) == 1 and energy_rank(m, 0.93) == 3
    assert encode(m, form="lowrank", energy=0.9, bits=None).rank == 2
    # rank 3 would store 3 * (6 + 5) = 33 entries for a 30-entry matrix: kept dense
    assert encode(m, form="lowrank", rank=3, bits=None).form == "dense"
    assert encode(torch.ones(4), form="lowrank", rank=1).form == "dense"  # vectors stay dense


def test_conv_kernels_factorise_as_out_by_in_times_kernel_and_eckart_young_holds() -> None:
    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    f = encode(w, form="lowrank", rank=3, bits=None)
    assert tuple(f.left.shape) == (6, 3) and tuple(f.right.shape) == (3, 36) and f.decode().shape == w.shape
    sv = torch.linalg.svdvals(w.reshape(6, -1).double())
    err = (w.double() - f.decode().double()).pow(2).sum()
    assert float(err) == pytest.approx(float(sv[3:].pow(2).sum()), rel=1e-5)


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("gran", ["tensor", "channel"])
def test_quantised_factors_stay_within_the_stated_bound(bits: int, gran: str) -> None:
    w = torch.randn(12, 20, generator=torch.Generator().manual_seed(bits))
    exact = encode(w, form="lowrank", rank=4, bits=None).decode().double()
    f = encode(w, form="lowrank", rank=4, bits=bits, granularity=gran)
    err = (exact - f.decode().double()).abs()
    bound = lowrank_bound(f)
    assert (err <= bound + 1e-6 * exact.abs() + 1e-7).all()
    assert float(bound.max()) > 0 and float(lowrank_bound(encode(w, form="lowrank", rank=4, bits=None)).max()) == 0.0
    rows = 12 + 4 if gran == "channel" else 2  # one (lo, step) pair per row of left and of right, or per factor
    assert f.nbytes == math.ceil(12 * 4 * bits / 8) + math.ceil(4 * 20 * bits / 8) + 8 * rows


def test_decoding_is_the_same_from_the_stored_form() -> None:
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    for kw in ({"form": "lowrank", "rank": 5, "bits": 4}, {"form": "sparse", "density": 0.1, "bits": 8},
               {"form": "dense", "bits": 2, "granularity": "channel"}, {"form": "lowrank", "rank": 5, "bits": None}):  # fmt: skip
        f = encode(w, **kw)
        back = decode_parts(f.parts(), f.layout())
        assert torch.equal(back.decode(), f.decode()), kw


# ------------------------------------------------------------------------------------ sparse
def test_top_k_entries_with_a_bit_mask_by_hand() -> None:
    t = torch.tensor([[0.1, -3.0, 0.2, 2.0], [0.0, 1.0, -0.5, 0.0]])
    f = encode(t, form="sparse", density=0.5, bits=None)  # k = 4: |-3|, |2|, |1|, |-0.5| at flat 1, 3, 5, 6
    assert f.coding == "mask" and f.positions.tolist() == [2 + 8 + 32 + 64]  # 1 byte beats 4 int16 indices
    assert f.values.tolist() == [-3.0, 2.0, 1.0, -0.5]
    assert torch.equal(f.decode(), torch.tensor([[0.0, -3.0, 0.0, 2.0], [0.0, 1.0, -0.5, 0.0]]))
    assert f.nbytes == 4 * 4 + 1
    tie = encode(torch.tensor([[1.0, -1.0], [1.0, 0.5]]), form="sparse", density=0.5, bits=None)
    assert torch.equal(tie.decode(), torch.tensor([[1.0, -1.0], [0.0, 0.0]]))  # ties: the lower flat index


def test_sparse_positions_as_indices_when_smaller_and_quantised_values() -> None:
    t = torch.randn(40, 25, generator=torch.Generator().manual_seed(1))
    f = encode(t, form="sparse", density=0.01, bits=None)  # 10 of 1000: 20 index bytes < 125 mask bytes
    assert f.coding == "index" and f.positions.dtype == torch.int16 and f.nbytes == 10 * 4 + 10 * 2
    top = t.abs().reshape(-1).topk(10).indices
    assert set(f.decode().reshape(-1).nonzero().reshape(-1).tolist()) == set(top.tolist())
    q = encode(t, form="sparse", density=0.3, bits=4)
    dec, kept = q.decode().reshape(-1), encode(t, form="sparse", density=0.3, bits=None).decode().reshape(-1)
    assert torch.equal(dec[kept == 0], torch.zeros(int((kept == 0).sum())))  # dropped entries exactly zero
    assert ((dec - kept).abs() <= float(q.values.step) / 2 + 1e-7).all()


# ------------------------------------------------------------------------------------ signatures
def test_extract_low_rank_per_layer_and_its_errors() -> None:
    robust, base, clean = _three()
    full = extract(robust, base, clean, config=MLP, layers=2, bits=None)
    sig = extract(robust, base, clean, config=MLP, layers=2, rank=[3, None], bits=None)
    assert sig.forms["layers.0.weight"].form == "lowrank" and sig.forms["layers.0.weight"].rank == 3
    assert sig.forms["layers.1.weight"].form == "dense" and torch.equal(sig.deltas["layers.1.weight"], full.deltas["layers.1.weight"])
    sv = torch.linalg.svdvals(full.deltas["layers.0.weight"].double())
    total = sum(float(v.double().pow(2).sum()) for v in full.deltas.values())
    assert sig.approximation_error == pytest.approx(math.sqrt(float(sv[3:].pow(2).sum()) / total), rel=1e-4)
    assert sig.relative_error == pytest.approx(sig.approximation_error) and sig.quantization_error == 0.0
    q = extract(robust, base, clean, config=MLP, layers=2, rank={"layers.0": 3}, bits=4)
    assert q.forms["layers.1.weight"].form == "dense" and q.relative_error > q.approximation_error > 0
    meta = q.meta()
    assert meta["tensors"]["layers.0.weight"] == {"shape": [16, 64], "form": "lowrank", "bits": 4, "granularity": "tensor",
                                                  "rank": 3}  # fmt: skip
    back = Signature.from_state_dict(q.state_dict(), meta)
    assert all(torch.equal(back.deltas[k], q.deltas[k]) for k in q.deltas) and back.nbytes == q.nbytes
    conv = extract(*_three(0, CNN), config=CNN, layers=2, rank=[None, 2], bits=8)
    assert conv.forms["convs.1.weight"].rank == 2 and conv.deltas["convs.1.weight"].shape == (6, 4, 3, 3)


def test_signatures_stored_before_forms_still_load() -> None:
    robust, base, clean = _three()
    sig = extract(robust, base, clean, config=MLP, layers=1, bits=4, granularity="channel")
    meta = sig.meta()
    old = {k: v for k, v in meta.items() if k not in ("approximation_error", "relative_error", "rank", "energy", "density")}
    old["tensors"] = {k: {"shape": v["shape"], "granularity": v["granularity"]} for k, v in meta["tensors"].items()}
    back = Signature.from_state_dict(sig.state_dict(), old)
    assert all(torch.equal(back.deltas[k], sig.deltas[k]) for k in sig.deltas)
    with pytest.raises(MismatchError, match="layers.0.weight"):
        Signature.from_state_dict({k: v for k, v in sig.state_dict().items() if not k.endswith("::step")}, meta)


def test_unpatching_a_low_rank_patch_is_exact_up_to_float32_rounding() -> None:
    robust, base, clean = _three()
    s = extract(robust, base, clean, config=MLP, layers=2, rank=[4, 2], bits=4)
    p = patch(clean, s, alpha=1.5, config=MLP)
    back = unpatch(p, s, alpha=1.5, config=MLP)
    for k in clean:
        total = (1.5 * s.deltas.get(k, torch.zeros_like(clean[k]))).abs()
        assert ((back[k] - clean[k]).abs() <= 2**-23 * (clean[k].abs() + total)).all(), k


@pytest.mark.parametrize(("kw", "match"), [
    ({"rank": 0}, "positive integer"), ({"rank": [2]}, "one rank per kept layer"), ({"rank": {"layers.5": 2}}, "does not keep"),
    ({"rank": 2, "density": 0.5}, "one of rank"), ({"energy": 1.5}, "energy"), ({"density": 0.0}, "density"),
    ({"rank": True}, "positive integer"),
])  # fmt: skip
def test_bad_forms_are_refused(kw: dict, match: str) -> None:
    robust, base, clean = _three()
    with pytest.raises(ConfigError, match=match):
        extract(robust, base, clean, config=MLP, layers=2, **kw)


# ------------------------------------------------------------------------------------ in the zoo
@pytest.fixture(scope="module")
def fz(tmp_path_factory) -> Zoo:
    """One digits MLP parent with a null and a robust (rotate, mixed, severity 5) fine-tune."""
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe

    z = Zoo.open(tmp_path_factory.mktemp("rwsf") / "zoo")
    build(z, Recipe.from_dict({"name": "P", "arch": MLP, "epochs": 12, "search": {"mode": "grid", "seeds": 1,
                                                                                    "params": {"lr": [5e-3]}}}), progress=False)  # fmt: skip
    change = ["null", {"kind": "robust", "corruption": "rotate", "severity": 5, "mix": True}]
    build(z, Recipe.from_dict({"name": "R", "arch": MLP, "epochs": 6, "finetune": {"parents": {"population": "P"}, "change": change},
                               "search": {"mode": "grid", "params": {"lr": [2e-3]}}}), progress=False)  # fmt: skip
    yield z
    z.close()


def _kids(z: Zoo) -> tuple:
    recs = {r.hparams()["change"]: r for r in z.population("R").records()}
    return recs["null"], recs["robust"]


def test_low_rank_signature_in_the_zoo(fz: Zoo) -> None:
    clean, robust = _kids(fz)
    rec = extract_signature(fz, robust.id, layers=2, rank=[4, None], bits=4)
    assert rec.population == "R/rws-2L-r4_f-4bit-tensor" and rec.name.endswith("/rws-2L-r4_f-4bit-tensor")
    hp = rec.hparams()
    assert (hp["form"], hp["rank"], hp["bits"]) == ("lowrank", 4, 4)
    assert {"layers.0.weight::left::codes", "layers.0.weight::right::codes", "layers.1.weight::codes"} <= set(rec.state_dict())
    edge = next(e for e in fz.lineage(rec.id, max_depth=1) if e.role == "robust")
    assert edge.params["tensors"]["layers.0.weight"]["rank"] == 4 and edge.params["rank"] == [4, None]
    sig = load_signature(fz, rec.id)
    base = fz.get(robust.hparams()["parent"]).state_dict()
    mem = extract(robust.state_dict(), base, clean.state_dict(), config=MLP, layers=2, rank=[4, None], bits=4)
    assert all(torch.equal(sig.deltas[k], mem.deltas[k]) for k in mem.deltas)
    assert rec.metric("storage_ratio") == pytest.approx(robust.nbytes / rec.nbytes) and rec.nbytes == mem.nbytes
    assert rec.metric("relative_error") == pytest.approx(mem.relative_error)
    energy = extract_signature(fz, robust.id, layers=1, energy=0.8, bits=8)
    r = load_signature(fz, energy.id).forms["layers.0.weight"].rank
    assert energy.population == f"R/rws-1L-e0.8-r{r}-8bit-tensor"  # the rank it came to: one shape per population


def test_alpha_chosen_on_the_validation_split(fz: Zoo, snapshot) -> None:
    clean, robust = _kids(fz)
    rec = extract_signature(fz, robust.id, layers=1, bits=8, name="sig-val")
    sig = load_signature(fz, rec.id)
    state = clean.state_dict()
    choice = choose_alpha(MLP, state, sig, alphas=[0.5, 1.0, 2.0], max_clean_drop=0.02)
    grid = [0.5, 1.0, 2.0]
    stacked = {k: torch.stack([state[k]] + [patch(state, sig, alpha=a, config=MLP)[k] for a in grid]) for k in state}
    df = corruption_accuracy(MLP, stacked, corruptions="rotate", severities=[5], split="val")
    clean_val = df[df["corruption"] == "clean"]["acc"].tolist()
    rot_val = df[df["corruption"] == "rotate"]["acc"].tolist()
    assert choice.table["clean_val"].tolist() == pytest.approx(clean_val[1:])
    assert choice.table["corrupted_val"].tolist() == pytest.approx(rot_val[1:])
    assert choice.reference == pytest.approx((clean_val[0], rot_val[0]))
    ok = [i for i in range(3) if clean_val[0] - clean_val[i + 1] <= 0.02 + 1e-9]
    want = grid[max(ok, key=lambda i: (rot_val[i + 1], -i))] if ok else None
    assert choice.within_budget == bool(ok) and (want is None or choice.alpha == want)
    test_rot = corruption_accuracy(MLP, stacked, corruptions="rotate", severities=[5])
    assert not test_rot["acc"].tolist() == df["acc"].tolist()  # the validation split is not the test split
    res = patch_model(fz, clean.id, [rec.id], alpha="auto", alphas=grid, max_clean_drop=0.02, evaluate=False)
    sel = res.params["alpha_selection"]
    assert res.params["alpha"] == choice.alpha and sel["split"] == "val" and sel["grid"] == grid
    assert fz.lineage(res.record.id, max_depth=1)[0].params["alpha_selection"]["alpha"] == choice.alpha
    before = snapshot(fz)
    with pytest.raises(ConfigError, match="or 'auto'"):
        patch_model(fz, clean.id, [rec.id], alpha="best")
    with pytest.raises(ConfigError, match="max_clean_drop"):
        patch_model(fz, clean.id, [rec.id], alpha="auto", max_clean_drop=2)
    with pytest.raises(ConfigError, match="alpha"):
        patch_model(fz, clean.id, [rec.id], alpha="auto", alphas=[float("nan")])
    assert snapshot(fz) == before


def test_cli_rank_and_auto_alpha(fz: Zoo, snapshot, capsys) -> None:
    from zoo.cli import main

    root = str(fz.root)
    clean, robust = _kids(fz)
    assert main(["rws", "extract", str(robust.id), "--root", root, "--layers", "2", "--rank", "6,full", "--bits", "4"]) == 0
    out = capsys.readouterr().out
    assert "layers.0.weight rank 6" in out and "smaller than the full model" in out
    sig = fz.get(f"{robust.name}/rws-2L-r6_f-4bit-tensor")
    before = snapshot(fz)
    assert main(["rws", "patch", str(clean.id), str(sig.id), "--root", root, "--alpha", "auto", "--alpha-grid", "0.5,1"]) == 0
    assert "chosen on the validation split" in capsys.readouterr().out
    assert main(["rws", "extract", str(robust.id), "--root", root, "--rank", "x"]) == 2
    assert "--rank must be" in capsys.readouterr().err
    assert main(["rws", "extract", str(robust.id), "--root", root, "--rank", "2", "--density", "0.5"]) == 2
    assert main(["rws", "patch", str(clean.id), str(sig.id), "--root", root, "--alpha", "auto", "--max-clean-drop", "300"]) == 2
    assert snapshot(fz) == before
    assert main(["rws", "ls", "--root", root]) == 0
    assert "r<=6" in capsys.readouterr().out
