"""Robust weight signatures (analysis.rws): exact maths against hand-computed values, then end to end.

The maths: min-max quantisation (codes, packing, error <= step/2), the projection of d_r off d_c, the
layer selection by count and by norm share, the forward order of layers (a BatchNorm CNN's norms
follow their convs), patching as clean + sum_k (alpha/K) sig_k, unpatching within float32 rounding,
and a permuted signature patching a permuted model. End to end on a tiny zoo (2 digits MLP parents,
each with a null and two robust fine-tunes): extraction with lineage and the zoo's metadata, patching
and composing with lineage and metrics, unpatching, the CLI, and bad input refused with the store
unchanged.
"""

from __future__ import annotations

import math

import pytest
import torch

from analysis.rws import (
    EXTRACT_OP,
    PATCH_OP,
    Signature,
    coefficients,
    corruption_accuracy,
    evaluate_corruptions,
    extract,
    extract_signature,
    find_clean,
    layers_of,
    load_signature,
    patch,
    patch_model,
    permute_signature,
    project_out,
    quantize,
    select_layers,
    unpatch,
    unpatch_model,
)
from analysis.rws.layers import Layer
from zoo import Zoo
from zoo.errors import ConfigError, DuplicateError, MismatchError, NotFoundError
from zoo.models.architectures import init_state

pytestmark = pytest.mark.usefixtures("one_thread")

MLP = {"family": "mlp", "in_features": 64, "hidden": [16], "out_features": 10}
BN_CNN = {"family": "cnn", "in_channels": 1, "image_size": 8, "channels": [4, 6], "kernel_size": 3, "out_features": 10,
          "batchnorm": True}  # fmt: skip


# ------------------------------------------------------------------------------------ quantisation
def test_two_bit_codes_of_four_levels_are_exact_and_packed_four_to_a_byte() -> None:
    q = quantize(torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0]), bits=2)
    assert float(q.lo) == 0.0 and float(q.step) == 1.0
    # codes 0, 1, 2, 3 | 3 -> bytes 0b11_10_01_00 = 228, then 0b00_00_00_11 = 3
    assert q.codes.tolist() == [228, 3] and q.nbytes == 2 + 4 + 4
    assert torch.equal(q.dequantize(), torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0]))


def test_four_bit_packing_by_hand() -> None:
    t = torch.tensor([1.0, 2.0, 15.0]) / 15.0  # lo 1/15, step 14/15/15
    q = quantize(t, bits=4)
    codes = [round((v - 1 / 15) / (14 / 15 / 15)) for v in t.tolist()]
    assert codes == [0, 1, 15]
    assert q.codes.tolist() == [codes[0] | (codes[1] << 4), codes[2]]


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("gran", ["tensor", "channel"])
def test_quantisation_error_is_at_most_half_a_step(bits: int, gran: str) -> None:
    t = torch.randn(7, 5, 3, generator=torch.Generator().manual_seed(bits))
    q = quantize(t, bits=bits, granularity=gran)
    err = (q.dequantize() - t).abs()
    step = q.step if q.step.dim() == 0 else q.step.view(-1, 1, 1)
    assert (err <= step / 2 + 1e-6).all()
    assert q.codes.numel() == math.ceil(t.numel() * bits / 8)
    if gran == "channel":  # each output channel has its own min and max
        assert torch.equal(q.lo, t.reshape(7, -1).amin(1))
        assert torch.allclose(q.step, (t.reshape(7, -1).amax(1) - q.lo) / (2**bits - 1))


def test_constant_and_one_dimensional_tensors() -> None:
    c = quantize(torch.full((3, 2), 0.25), bits=4, granularity="channel")
    assert torch.equal(c.dequantize(), torch.full((3, 2), 0.25))
    b = quantize(torch.tensor([1.0, -1.0]), bits=8, granularity="channel")
    assert b.granularity == "tensor" and b.lo.dim() == 0  # per channel only for rank >= 2
    with pytest.raises(ConfigError, match="bits"):
        quantize(torch.ones(2), bits=3)


# ------------------------------------------------------------------------------------ projection and layers
def test_projection_removes_the_clean_direction() -> None:
    assert torch.equal(project_out(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0])), torch.tensor([0.0, 1.0]))
    d_r, d_c = torch.randn(5, 4), torch.randn(5, 4)
    s = project_out(d_r, d_c)
    assert abs(float((s * d_c).sum())) < 1e-5
    assert torch.equal(project_out(d_r, torch.zeros(5, 4)), d_r)


def test_layer_selection_by_count_and_by_norm_share() -> None:
    lays = [Layer("a", ("a.w", "a.b")), Layer("b", ("b.w",)), Layer("c", ("c.w",))]
    sq = {"a.w": 5.0, "a.b": 1.0, "b.w": 3.0, "c.w": 1.0}  # shares 0.6, 0.3, 0.1
    kept, shares = select_layers(lays, sq, count=2)
    assert [k.name for k in kept] == ["a", "b"] and shares == pytest.approx({"a": 0.6, "b": 0.3, "c": 0.1})
    assert [k.name for k in select_layers(lays, sq, norm_share=0.6)[0]] == ["a"]
    assert [k.name for k in select_layers(lays, sq, norm_share=0.85)[0]] == ["a", "b"]
    assert [k.name for k in select_layers(lays, sq)[0]] == ["a", "b"]  # default 0.8
    for bad in ({"count": 0}, {"count": 4}, {"norm_share": 0.0}, {"norm_share": 1.5}, {"count": 1, "norm_share": 0.5}):
        with pytest.raises(ConfigError):
            select_layers(lays, sq, **bad)


def test_layers_in_forward_order_without_running_statistics() -> None:
    assert [(la.name, la.tensors) for la in layers_of(MLP, init_state(MLP, 0))] == [
        ("layers.0", ("layers.0.weight", "layers.0.bias")), ("layers.1", ("layers.1.weight", "layers.1.bias"))]
    lays = layers_of(BN_CNN, init_state(BN_CNN, 0))  # the state dict lists both convs before the norms
    assert [(la.name, la.tensors) for la in lays] == [
        ("convs.0", ("convs.0.weight", "norms.0.weight", "norms.0.bias")),
        ("convs.1", ("convs.1.weight", "norms.1.weight", "norms.1.bias")),
        ("head", ("head.weight", "head.bias")),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------ extract and patch in memory
def _three(seed: int = 0, cfg: dict = MLP) -> tuple[dict, dict, dict]:
    """(robust, base, clean) state dicts of ``cfg``: the base, plus small (clean) and larger (robust) noise."""
    base = init_state(cfg, seed)
    g = torch.Generator().manual_seed(seed + 100)
    clean = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    robust = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    return robust, base, clean


def test_extract_is_the_projected_difference_of_the_kept_layers() -> None:
    robust, base, clean = _three()
    sig = extract(robust, base, clean, config=MLP, layers=1, bits=None)
    assert sig.layers == ["layers.0"] and set(sig.deltas) == {"layers.0.weight", "layers.0.bias"}
    for k, d in sig.deltas.items():
        d_r, d_c = (robust[k] - base[k]).double().flatten(), (clean[k] - base[k]).double().flatten()
        want = d_r - (d_r @ d_c) / (d_c @ d_c) * d_c
        assert torch.allclose(d.double().flatten(), want, atol=1e-7)
    raw = extract(robust, base, None, config=MLP, layers=2, bits=None, projection=False)
    assert all(torch.allclose(raw.deltas[k], robust[k] - base[k]) for k in robust)
    assert sum(sig.shares.values()) == pytest.approx(1.0)


def test_quantised_signature_round_trips_through_its_stored_form() -> None:
    robust, base, clean = _three()
    sig = extract(robust, base, clean, config=MLP, layers=2, bits=4, granularity="channel")
    back = Signature.from_state_dict(sig.state_dict(), sig.meta())
    assert all(torch.equal(back.deltas[k], sig.deltas[k]) for k in sig.deltas)
    exact = extract(robust, base, clean, config=MLP, layers=2, bits=None)
    assert 0 < sig.quantization_error == pytest.approx(max(float((sig.deltas[k] - exact.deltas[k]).abs().max()) for k in sig.deltas))
    # 4-bit codes: half a byte per entry plus a (lo, step) pair per output channel (vectors: per tensor)
    n_w = sum(v.numel() for k, v in exact.deltas.items() if v.dim() >= 2)
    n_b = sum(v.numel() for k, v in exact.deltas.items() if v.dim() == 1)
    rows = sum(v.shape[0] for v in exact.deltas.values() if v.dim() >= 2)
    assert sig.nbytes == math.ceil(n_w / 2) + 8 * rows + sum(math.ceil(v.numel() / 2) + 8 for v in exact.deltas.values()
                                                             if v.dim() == 1) and n_b > 0  # fmt: skip


def test_patch_is_clean_plus_alpha_over_k_times_the_sum_and_unpatch_undoes_it() -> None:
    robust, base, clean = _three()
    s1 = extract(robust, base, clean, config=MLP, layers=1, bits=8)
    r2, _, _ = _three(1)
    s2 = extract({k: base[k] + (r2[k] - init_state(MLP, 1)[k]) for k in base}, base, clean, config=MLP, layers=2, bits=None)
    assert coefficients(2, 1.5) == [0.75, 0.75] and coefficients(2, [1.0, 3.0], normalize=False) == [1.0, 3.0]
    p = patch(clean, [s1, s2], alpha=1.5, config=MLP)
    for k in clean:
        want = clean[k] + 0.75 * s1.deltas.get(k, 0) + 0.75 * s2.deltas[k]
        assert torch.allclose(p[k], want, atol=1e-6)
    back = unpatch(p, [s1, s2], alpha=1.5, config=MLP)
    for k in clean:
        total = (0.75 * s1.deltas.get(k, torch.zeros_like(clean[k])) + 0.75 * s2.deltas[k]).abs()
        assert ((back[k] - clean[k]).abs() <= 2**-23 * (clean[k].abs() + total)).all(), k
    stacked = patch({k: torch.stack([clean[k], base[k]]) for k in clean}, s1, alpha=2.0, config=MLP)
    assert torch.allclose(stacked["layers.0.weight"][1], base["layers.0.weight"] + 2.0 * s1.deltas["layers.0.weight"])


def test_a_permuted_signature_patches_a_permuted_model() -> None:
    from weightspace.spec import PermutationSpec, apply_permutation, random_permutation, spec_for

    robust, base, clean = _three()
    sig = extract(robust, base, clean, config=MLP, layers=1, bits=None)
    spec = spec_for(MLP)
    perms = random_permutation(spec, clean, torch.Generator().manual_seed(0))
    sub = PermutationSpec({k: spec.axes[k] for k in sig.deltas})
    moved = permute_signature(sig, sub, perms)
    a = apply_permutation(spec, perms, patch(clean, sig, config=MLP))
    b = patch(apply_permutation(spec, perms, clean), moved, config=MLP)
    assert all(torch.allclose(a[k], b[k]) for k in a)


@pytest.mark.parametrize("alpha", ["1", float("nan"), float("inf"), None, True])
def test_alpha_must_be_a_number(alpha) -> None:
    robust, base, clean = _three()
    sig = extract(robust, base, clean, config=MLP, layers=1)
    with pytest.raises(ConfigError, match="alpha"):
        patch(clean, sig, alpha=alpha, config=MLP)


def test_a_signature_of_another_architecture_is_refused() -> None:
    robust, base, clean = _three()
    sig = extract(robust, base, clean, config=MLP, layers=1)
    wide = dict(MLP, hidden=[24])
    with pytest.raises(MismatchError, match="shape"):
        patch(init_state(wide, 0), sig, strict=False)
    with pytest.raises(MismatchError, match="extracted for"):
        patch(init_state(wide, 0), sig, config=wide)
    deeper = dict(MLP, hidden=[16, 8])  # the kept first layer has the same shape
    with pytest.raises(MismatchError):
        patch(init_state(deeper, 0), sig, config=deeper)
    out = patch(init_state(deeper, 0), sig, config=deeper, strict=False)
    assert torch.allclose(out["layers.0.weight"], init_state(deeper, 0)["layers.0.weight"] + sig.deltas["layers.0.weight"])
    with pytest.raises(MismatchError, match="different tensors"):
        extract(robust, init_state(deeper, 0), clean, config=MLP)


# ------------------------------------------------------------------------------------ in the zoo
@pytest.fixture(scope="module")
def rz(tmp_path_factory) -> Zoo:
    """2 digits MLP parents (P), each with a null and two robust (rotate, occlusion; mixed, severity 5)
    fine-tunes (R), and one narrower model (N)."""
    from zoo.build.builder import build
    from zoo.build.recipes import Recipe

    z = Zoo.open(tmp_path_factory.mktemp("rws") / "zoo")
    build(z, Recipe.from_dict({"name": "P", "arch": MLP, "epochs": 12, "search": {"mode": "grid", "seeds": 2,
                                                                                    "params": {"lr": [5e-3]}}}), progress=False)  # fmt: skip
    change = ["null"] + [{"kind": "robust", "corruption": c, "severity": 5, "mix": True} for c in ("rotate", "occlusion")]
    build(z, Recipe.from_dict({"name": "R", "arch": MLP, "epochs": 6, "finetune": {"parents": {"population": "P"}, "change": change},
                               "search": {"mode": "grid", "params": {"lr": [2e-3]}}}), progress=False)  # fmt: skip
    narrow = dict(MLP, hidden=[8])
    z.add(init_state(narrow, 0), arch=narrow, population="N", name="narrow")
    yield z
    z.close()


def _child(z: Zoo, parent_run: int, kind: str, corruption: str | None = None):
    recs = sorted(z.population("R").records(), key=lambda r: r.name)
    parents = sorted({r.hparams()["parent"] for r in recs})
    return next(r for r in recs if r.hparams()["parent"] == parents[parent_run] and r.hparams()["change"] == kind
                and r.hparams().get("change_corruption") == corruption)  # fmt: skip


@pytest.fixture(scope="module")
def sigs(rz: Zoo) -> dict:
    rot = extract_signature(rz, _child(rz, 0, "robust", "rotate").id, bits=None, layers=2)
    occ = extract_signature(rz, _child(rz, 0, "robust", "occlusion").id, bits=8)
    return {"rotate": rot, "occlusion": occ}


def test_extract_stores_a_signature_row_with_lineage(rz: Zoo, sigs: dict) -> None:
    robust = _child(rz, 0, "robust", "occlusion")
    clean = _child(rz, 0, "null")
    rec = sigs["occlusion"]
    edges = {e.role: e for e in rz.lineage(rec.id, max_depth=1)}
    assert {r: e.parent for r, e in edges.items()} == {"robust": robust.id, "base": robust.hparams()["parent"], "clean": clean.id}
    assert {e.op for e in edges.values()} == {EXTRACT_OP}
    assert rec.arch_config["family"] == "raw" and rec.population == "R/rws-1L-8bit-tensor"
    assert rec.name == f"{robust.name}/rws-1L-8bit-tensor" and "rws:occlusion" in rec.tags()
    hp = rec.hparams()
    assert (hp["corruption"], hp["severity"], hp["bits"], hp["n_layers"], hp["projection"]) == ("occlusion", 5, 8, 1, True)
    assert rec.metric("storage_ratio") == pytest.approx(robust.nbytes / rec.nbytes)
    assert find_clean(rz, robust, rz.get(robust.hparams()["parent"])).id == clean.id
    mem = extract(robust.state_dict(), rz.get(robust.hparams()["parent"]).state_dict(), clean.state_dict(), config=MLP, bits=8)
    got = load_signature(rz, rec.id)
    assert got.layers == mem.layers and all(torch.equal(got.deltas[k], mem.deltas[k]) for k in mem.deltas)


def test_patch_in_the_zoo_matches_memory_and_improves_its_corruption(rz: Zoo, sigs: dict) -> None:
    clean = _child(rz, 0, "null")
    res = patch_model(rz, clean.id, [sigs["rotate"].id], alpha=1.0)
    rec = res.record
    assert rec.op == PATCH_OP and rec.population == "R/patched"
    assert {e.parent: e.role for e in rz.lineage(rec.id, max_depth=1)} == {clean.id: "model", sigs["rotate"].id: "signature"}
    mem = patch(clean.state_dict(), load_signature(rz, sigs["rotate"].id), config=MLP)
    assert all(torch.equal(rec.state_dict()[k], mem[k]) for k in mem)
    before = evaluate_corruptions(rz, [clean.id], corruptions=["rotate"], severities=[5])
    after = rec.metric("acc", "test/rotate/5")
    assert after is not None and rec.metric("acc", "test") is not None
    # the paper's claim on this tiny zoo: the full-precision signature of the robust fine-tune helps under its corruption
    assert after > float(before.loc[before["corruption"] == "rotate", "acc"].iloc[0])


def test_composition_and_unpatching_in_the_zoo(rz: Zoo, sigs: dict, snapshot) -> None:
    clean = _child(rz, 0, "null")
    both = patch_model(rz, clean.id, [sigs["rotate"].id, sigs["occlusion"].id], alpha=2.0, evaluate=False)
    assert both.coefficients == [1.0, 1.0] and both.record.metric("acc", "test") is None
    full = unpatch_model(rz, both.record.id)
    assert full.max_error is not None and full.max_error < 1e-6
    one = unpatch_model(rz, both.record.id, [sigs["occlusion"].id], to_zoo=True)
    only_rot = patch(clean.state_dict(), load_signature(rz, sigs["rotate"].id), alpha=1.0, config=MLP)
    assert all(torch.allclose(one.state[k], only_rot[k], atol=1e-6) for k in only_rot)
    assert {e.role for e in rz.lineage(one.record.id, max_depth=1)} == {"patched", "signature"}
    before = snapshot(rz)
    with pytest.raises(ConfigError, match="not patched with"):
        unpatch_model(rz, both.record.id, [sigs["rotate"].id, clean.id])
    with pytest.raises(ConfigError, match="not made by patching"):
        unpatch_model(rz, clean.id)
    assert snapshot(rz) == before


def test_transfer_with_alignment_keeps_the_target_neuron_order(rz: Zoo, sigs: dict) -> None:
    other = _child(rz, 1, "null")  # another seed's clean fine-tune
    plain = patch_model(rz, other.id, [sigs["rotate"].id], to_zoo=False)
    aligned = patch_model(rz, other.id, [sigs["rotate"].id], align=True, to_zoo=False)
    perm = torch.tensor(aligned.params["perms"][0]["layers.0"])
    assert sorted(perm.tolist()) == list(range(16)) and not torch.equal(perm, torch.arange(16))
    sig = load_signature(rz, sigs["rotate"].id)
    inv = torch.argsort(perm)  # signature row i goes to the target's neuron perm[i]
    want = other.state_dict()["layers.0.weight"] + sig.deltas["layers.0.weight"][inv]
    assert torch.allclose(aligned.state["layers.0.weight"], want, atol=1e-6)
    assert not torch.allclose(plain.state["layers.0.weight"], aligned.state["layers.0.weight"])
    stored = patch_model(rz, other.id, [sigs["rotate"].id], align=True, evaluate=False)
    assert torch.equal(stored.record.state_dict()["layers.0.weight"], aligned.state["layers.0.weight"])
    back = unpatch_model(rz, stored.record.id)  # the recorded permutation moves the signature the same way
    assert back.max_error is not None and back.max_error < 1e-6


def test_corruption_accuracy_in_memory_equals_the_recorded_metrics(rz: Zoo) -> None:
    clean = _child(rz, 1, "null")
    df = corruption_accuracy(MLP, {k: v.unsqueeze(0) for k, v in clean.state_dict().items()}, corruptions="rotate,occlusion",
                             severities=[1, 5])  # fmt: skip
    assert len(df) == 5 and set(df["corruption"]) == {"clean", "rotate", "occlusion"}
    rec = evaluate_corruptions(rz, [clean.id], corruptions=["occlusion"], severities=[1])
    got = rz.get(clean.id).metric("acc", "test/occlusion/1")
    assert got == pytest.approx(float(rec.loc[rec["corruption"] == "occlusion", "acc"].iloc[0]))
    assert got == pytest.approx(float(df[(df["corruption"] == "occlusion") & (df["severity"] == 1)]["acc"].iloc[0]))


def test_batchnorm_statistics_are_recomputed_after_patching(tmp_path) -> None:
    z = Zoo.open(tmp_path / "bn")
    base = z.add(init_state(BN_CNN, 0), arch=BN_CNN, population="B", name="base")
    g = torch.Generator().manual_seed(1)
    moved = {k: (v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v) for k, v in base.state_dict().items()}
    robust = z.add(moved, arch=BN_CNN, population="B", name="robust", parents={base.id: "base"}, op="finetune",
                   hparams={"change": "robust", "change_corruption": "contrast", "change_severity": 5})  # fmt: skip
    sig = extract_signature(z, robust.id, projection=False, layers=1)
    assert set(load_signature(z, sig.id).deltas) == {"convs.0.weight", "norms.0.weight", "norms.0.bias"}
    kept = patch_model(z, base.id, [sig.id], bn_reset=False, to_zoo=False, evaluate=False)
    reset = patch_model(z, base.id, [sig.id], to_zoo=False, evaluate=False)
    assert torch.equal(kept.state["norms.0.running_mean"], base.state_dict()["norms.0.running_mean"])
    assert not torch.allclose(reset.state["norms.0.running_mean"], base.state_dict()["norms.0.running_mean"])
    assert reset.params["bn_reset"] is True
    z.close()


# ------------------------------------------------------------------------------------ bad input, CLI
def test_bad_input_is_refused_and_writes_nothing(rz: Zoo, sigs: dict, snapshot) -> None:
    clean = _child(rz, 0, "null")
    narrow = rz.get("narrow")
    before = snapshot(rz)
    with pytest.raises(MismatchError, match="extracted for"):
        patch_model(rz, narrow.id, [sigs["occlusion"].id])
    with pytest.raises(MismatchError, match="shape"):
        patch_model(rz, narrow.id, [sigs["occlusion"].id], strict=False)
    with pytest.raises(ConfigError, match="alpha"):
        patch_model(rz, clean.id, [sigs["occlusion"].id], alpha="strong")
    with pytest.raises(ConfigError, match="is a signature"):
        patch_model(rz, sigs["rotate"].id, [sigs["occlusion"].id])
    with pytest.raises(ConfigError, match="not a robust weight signature"):
        patch_model(rz, clean.id, [narrow.id])
    with pytest.raises(ConfigError, match="unknown corruption"):
        evaluate_corruptions(rz, [clean.id], corruptions=["fog"])
    with pytest.raises(ConfigError, match="not a classifier"):
        evaluate_corruptions(rz, [clean.id, sigs["occlusion"].id], corruptions=["rotate"])
    with pytest.raises(NotFoundError):
        patch_model(rz, clean.id, [999999])
    with pytest.raises(DuplicateError, match="extracted before"):
        extract_signature(rz, _child(rz, 0, "robust", "occlusion").id, bits=8)
    with pytest.raises(MismatchError, match="different architectures"):
        extract_signature(rz, _child(rz, 0, "robust", "rotate").id, base=narrow.id, name="x")
    with pytest.raises(ConfigError, match="bits"):
        extract_signature(rz, _child(rz, 0, "robust", "rotate").id, bits=3, name="y")
    with pytest.raises(NotFoundError, match="finetune parent"):
        extract_signature(rz, narrow.id)
    assert snapshot(rz) == before


def test_cli_extract_patch_eval_and_errors(rz: Zoo, sigs: dict, snapshot, capsys) -> None:
    from zoo.cli import main

    root = str(rz.root)
    robust = _child(rz, 1, "robust", "rotate")
    clean = _child(rz, 1, "null")
    assert main(["rws", "extract", str(robust.id), "--root", root, "--bits", "4", "--granularity", "channel"]) == 0
    out = capsys.readouterr().out
    assert "stored signature" in out and "4 bit channel" in out and "smaller than the full model" in out
    sig = rz.get(f"{robust.name}/rws-1L-4bit-channel")
    before = snapshot(rz)
    assert main(["rws", "patch", str(clean.id), str(sig.id), "--root", root, "--alpha", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "not stored" in out and "rotate/5" in out and "patched" in out
    assert snapshot(rz) == before  # without --to-zoo nothing is written
    assert main(["rws", "patch", str(clean.id), str(sig.id), "--root", root, "--alpha", "x1"]) == 2
    assert "--alpha must be a number" in capsys.readouterr().err
    assert main(["rws", "eval", str(sig.id), "--root", root]) == 2
    assert "not a classifier" in capsys.readouterr().err
    assert main(["rws", "eval", str(clean.id), "--root", root, "--corruptions", "fog"]) == 2
    assert main(["rws", "patch", str(clean.id), str(sig.id), "--root", root, "--to-zoo", "--corruptions", "fog"]) == 2
    assert main(["rws", "patch", str(clean.id), str(sig.id), "--root", root, "--to-zoo", "--severities", "9"]) == 2
    assert snapshot(rz) == before
    assert main(["rws", "patch", str(clean.id), str(sig.id), "--root", root, "--to-zoo", "--json"]) == 0
    assert main(["rws", "ls", "--root", root]) == 0
    assert "rotate" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ recipes (zoo.finetune's mix)
def test_mixed_robust_children_train_on_clean_plus_corrupted_data() -> None:
    from zoo.build.finetune import normalize_change, shard_data
    from zoo.models.datasets import load_dataset

    ds = load_dataset("digits").flat()
    n = len(ds.y_train)
    data = shard_data(ds, [{"kind": "robust", "corruption": "rotate", "severity": 5},
                           {"kind": "robust", "corruption": "rotate", "severity": 5, "mix": True}], [0, 0])  # fmt: skip
    plain, mixed = data.train_subsets
    assert torch.equal(plain, n + torch.arange(n))  # the corrupted copy only
    assert torch.equal(mixed, torch.cat([torch.arange(n), n + torch.arange(n)]))  # the clean split, then the copy
    with pytest.raises(ConfigError, match="mix"):
        normalize_change({"kind": "robust", "corruption": "rotate", "mix": "yes"}, num_classes=10, image_hw=(8, 8))


@pytest.mark.parametrize("name", ["digits-mlp-robust-mix", "digits-cnn-robust-mix", "digits-cnn-bn-robust-mix"])
def test_builtin_mix_recipes_pair_a_clean_fine_tune_with_every_corruption(name: str) -> None:
    from zoo.build.recipes import Recipe
    from zoo.models.datasets import DIGITS_C_CORRUPTIONS

    entries = Recipe.load(name).change_plan()["entries"]
    assert entries[0] == {"kind": "null"}
    assert [e["corruption"] for e in entries[1:]] == list(DIGITS_C_CORRUPTIONS)
    assert all(e["severity"] == 5 and e["mix"] is True for e in entries[1:])
