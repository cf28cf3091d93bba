"""Re-basin alignment: exact recovery of known permutations, functional equivalence, trained models, the zoo."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from analysis.align import (
    AlignResult,
    align,
    align_and_store,
    align_population,
    aligners,
    canonicalize,
    get_aligner,
    register_aligner,
)
from tests.test_spec import CONFIGS, inputs, jitter_bn
from weightspace.spec import apply_permutation, invert_permutation, random_permutation, spec_for
from zoo import Zoo
from zoo.build.training import TrainSpec, train_population
from zoo.errors import ConfigError, DuplicateError, MismatchError, NotFoundError
from zoo.models.architectures import init_state, instantiate
from zoo.models.datasets import load_dataset
from zoo.store.records import NewModel

METHODS = aligners()  # conformance: every registered aligner must pass the recovery test
DIGITS_MLP = {"family": "mlp", "in_features": 64, "hidden": [64], "out_features": 10}


@pytest.fixture(scope="module")
def trained_zoo(tmp_path_factory) -> Zoo:
    """Three digits MLPs (width 64, seeds 0-2, 10 epochs) in population "mlps"; one CNN elsewhere."""
    z = Zoo.open(tmp_path_factory.mktemp("align") / "zoo")
    ds = load_dataset("digits").flat()
    ck = list(train_population(TrainSpec(config=DIGITS_MLP, n=3, seeds=[0, 1, 2], epochs=10), ds, progress=False))[-1]
    z.add_many([
        NewModel(ck.model(i), arch=DIGITS_MLP, population="mlps", op="train", name=f"mlp{i}",
                 metrics={k: float(v[i]) for k, v in ck.metrics.items()}, hparams={"seed": i})
        for i in range(3)
    ])  # fmt: skip
    cnn = {"family": "cnn", "channels": [4], "out_features": 10}
    z.add(init_state(cnn, 0), arch=cnn, population="cnns", name="cnn0")
    yield z
    z.close()


def permuted_copy(cfg: dict, seed: int = 0):
    """(state, permuted copy, the permutation) with non-trivial BatchNorm statistics."""
    state = jitter_bn(init_state(cfg, seed), seed)
    spec = spec_for(cfg)
    perms = random_permutation(spec, state, torch.Generator().manual_seed(seed + 100))
    return state, apply_permutation(spec, perms, state), perms


# ------------------------------------------------------------------------------- exact recovery
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["mlp", "siren", "cnn_bn", "resnet"])
def test_aligning_a_permuted_copy_recovers_the_permutation(name, method):
    cfg = CONFIGS[name]
    state, permuted, perms = permuted_copy(cfg)
    res = align(permuted, state, config=cfg, method=method, data=inputs(cfg, 64))
    inverse = invert_permutation(perms)
    for p, v in inverse.items():
        assert torch.equal(res.perm(0)[p], v), p
    assert float(res.distance_before[0]) > 0.1
    assert float(res.distance_after[0]) == 0.0
    aligned = res.model(0)
    assert all(torch.equal(aligned[k], state[k]) for k in state)


@pytest.mark.parametrize("name", ["mlp", "cnn_bn", "resnet"])
def test_aligned_model_computes_the_same_function(name):
    cfg = CONFIGS[name]
    a, b = jitter_bn(init_state(cfg, 1), 1), jitter_bn(init_state(cfg, 2), 2)
    res = align(b, a, config=cfg, seed=3)
    x = inputs(cfg, 16)
    with torch.no_grad():
        torch.testing.assert_close(instantiate(cfg, res.model(0))(x), instantiate(cfg, b)(x), rtol=1e-5, atol=1e-5)
    assert float(res.distance_after[0]) <= float(res.distance_before[0])


def test_population_alignment_matches_one_by_one_and_is_seeded():
    cfg = CONFIGS["resnet"]
    ref = init_state(cfg, 0)
    states = [init_state(cfg, s) for s in range(1, 4)]
    stacked = {k: torch.stack([s[k] for s in states]) for k in ref}
    res = align_population(stacked, ref, config=cfg, seed=7)
    assert isinstance(res, AlignResult) and len(res) == 3
    assert res.perms["stages.0"].shape == (3, 3)
    for i, s in enumerate(states):
        one = align(s, ref, config=cfg, seed=7)
        assert int(one.iterations[0]) == int(res.iterations[i])
        torch.testing.assert_close(one.distance_after[0], res.distance_after[i])
    again = align_population(stacked, ref, config=cfg, seed=7)
    assert all(torch.equal(again.perms[p], res.perms[p]) for p in res.perms)
    assert (res.distance_after <= res.distance_before).all()


def test_weight_matching_brings_trained_digits_mlps_closer(trained_zoo):
    pop = trained_zoo.population("mlps")
    ids = pop.ids()
    res = align_population(pop, ids[0])  # config from the population, reference by id
    assert res.distance_after[0] == 0.0  # the reference itself
    assert (res.distance_after[1:] < 0.9 * res.distance_before[1:]).all()
    act = align_population(pop.stack(), trained_zoo.get(ids[0]).state_dict(), config=DIGITS_MLP,
                           method="activation_matching", data=load_dataset("digits").flat().X_train[:512])  # fmt: skip
    assert (act.distance_after[1:] < act.distance_before[1:]).all()


# ------------------------------------------------------------------------------- registry, errors
def test_registry_lists_and_refuses():
    assert {"weight_matching", "activation_matching"} <= set(aligners())
    assert get_aligner("weight_matching") is not None
    with pytest.raises(ConfigError, match="valid alignment methods: activation_matching, weight_matching"):
        get_aligner("magic")
    with pytest.raises(DuplicateError):
        register_aligner("weight_matching")
    state, permuted, _ = permuted_copy(CONFIGS["mlp"])
    with pytest.raises(ConfigError, match="unknown alignment method"):
        align(permuted, state, config=CONFIGS["mlp"], method="magic")
    with pytest.raises(ConfigError, match="data batch"):
        align(permuted, state, config=CONFIGS["mlp"], method="activation_matching")
    with pytest.raises(ConfigError, match="config"):
        align(permuted, state)
    other = init_state({**CONFIGS["mlp"], "hidden": [7, 4]}, 0)
    with pytest.raises(MismatchError):
        align(other, state, config=CONFIGS["mlp"])


# ------------------------------------------------------------------------------- writing back
def test_align_and_store_records_lineage_and_metrics(trained_zoo, snapshot):
    z = trained_zoo
    src, ref = z.get("mlp1"), z.get("mlp0")
    rec = align_and_store(z, "mlp1", "mlp0", seed=5)
    assert rec.population == f"mlps/aligned-to-{ref.id}"
    assert rec.op == "align.weight_matching"
    assert z.population(rec.population).config == z.population("mlps").config
    edges = {e.role: e for e in rec.parents()}
    assert edges["model"].parent == src.id and edges["reference"].parent == ref.id
    p = edges["model"].params
    assert p["method"] == "weight_matching" and p["seed"] == 5 and p["iterations"] >= 1
    assert p["distance_after"] < p["distance_before"]
    # same function: same accuracy as the source
    assert rec.metric("acc", "test") == pytest.approx(src.metric("acc", "test"), abs=1e-6)
    assert rec.metric("acc", "train") is not None
    # a mismatched architecture is refused and leaves the store unchanged
    before = snapshot(z)
    with pytest.raises(MismatchError, match="different architectures"):
        align_and_store(z, "cnn0", "mlp0")
    with pytest.raises(NotFoundError):
        align_and_store(z, "no-such-model", "mlp0")
    assert snapshot(z) == before


def test_canonicalize_a_population_in_one_write(trained_zoo):
    z = trained_zoo
    ref = z.get("mlp0")
    recs = canonicalize(z, "mlps", ref.id, method="activation_matching", population="mlps-canon", evaluate=False)
    assert len(recs) == 3 and {r.population for r in recs} == {"mlps-canon"}
    assert all(r.op == "align.activation_matching" for r in recs)
    assert z.population("mlps-canon").count() == 3


def _cli():
    from analysis.align_cli import register

    p = argparse.ArgumentParser(prog="weightzoo")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root")
    common.add_argument("--url")
    common.add_argument("--json", action="store_true")
    common.add_argument("--no-progress", action="store_true")
    register(sub, common)
    return p


def test_cli_align(trained_zoo, capsys):
    root = str(trained_zoo.root)
    args = _cli().parse_args(["align", "mlp2", "mlp0", "--root", root, "--seed", "1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "L2 distance to the reference" in out and "test_acc" in out
    args = _cli().parse_args(["align", "mlp2", "mlp0", "--root", root, "--json", "--no-eval", "--population", "cli-json"])
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"]["population"] == "cli-json" and doc["params"]["distance_after"] < doc["params"]["distance_before"]
    with pytest.raises(SystemExit):
        _cli().parse_args(["align", "1", "2", "--method", "nope"])
    help_text = _cli().format_help()
    assert "align" in help_text and "lmc" in help_text
