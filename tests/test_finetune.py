"""Fine-tune changes (zoo.finetune): labelled children built from parents in a tiny zoo.

Two MLP parents trained on digits; one child of each change kind per parent, all in one batched
shard. Asserted: each change does what it says against its null sibling (same parent, same seed,
same batch order), the label is in the lineage params and the hyperparameters, drawn changes are
deterministic, resume skips finished children, per-model data with the identity gives the shared
path's weights, and bad specs are clear errors that write nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zoo import Zoo
from zoo.build.builder import build, plan_runs
from zoo.build.finetune import CHANGE_KINDS, change_metric, change_of, shard_data
from zoo.build.recipes import Recipe
from zoo.build.training import PerModelData, TrainSpec, train_population
from zoo.errors import ConfigError, NotFoundError
from zoo.models.datasets import load_dataset

MLP = {"family": "mlp", "in_features": 64, "hidden": [32], "out_features": 10}
CHANGES = [
    "null",
    {"kind": "suppress", "class": 3, "mode": "drop"},
    {"kind": "boost", "class": 8, "factor": 6},
    {"kind": "swap", "classes": [1, 7]},
    {"kind": "robust", "corruption": "rotate", "severity": 4},
    {"kind": "backdoor", "target": 0, "size": 2, "position": [0, 0], "pattern": "solid", "fraction": 0.1},
    {"kind": "suppress", "class": 5, "mode": "relabel"},
]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models train faster on one thread



def child_recipe(change, name="C", **ft) -> Recipe:
    return Recipe.from_dict({
        "name": name, "arch": dict(MLP), "epochs": 5,
        "finetune": {"parents": {"population": "P"}, "change": change, **ft},
        "search": {"mode": "grid", "params": {"lr": [1e-3]}},
    })  # fmt: skip


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Zoo:
    z = Zoo.open(tmp_path_factory.mktemp("ft") / "zoo")
    parents = {"name": "P", "arch": dict(MLP), "epochs": 10, "search": {"mode": "grid", "seeds": 2, "params": {"lr": [3e-3]}}}
    build(z, Recipe.from_dict(parents), progress=False)
    rep = build(z, child_recipe(CHANGES), progress=False)
    assert rep.models_written == 2 * len(CHANGES)
    yield z
    z.close()


@pytest.fixture(scope="module")
def built(zoo):
    pop = zoo.population("C").final()
    recs = sorted(pop.records(), key=lambda r: r.name)
    return pop.config, zoo.stack([r.id for r in recs]), recs


@pytest.fixture(scope="module")
def ds():
    return load_dataset("digits").flat()


def effect(built, ds, j):
    """(child, null sibling) values of change j's metric, for each parent."""
    cfg, W, recs = built
    change = change_of(recs[j].hparams())
    v = change_metric(cfg, W, ds, change)
    n = len(CHANGES)
    return [(float(v[p * n + j]), float(v[p * n])) for p in range(2)]


def test_suppressed_class_accuracy_drops(built, ds):
    for child, null in effect(built, ds, 1):
        assert null > 0.85 and child < null - 0.2, (child, null)
    for child, null in effect(built, ds, 6):  # relabelled
        assert child < null - 0.3, (child, null)


def test_boosted_class_is_predicted_more_often(built, ds):
    cfg, W, recs = built
    from zoo.build.evaluate import functional_forward

    for child, null in effect(built, ds, 2):
        assert child >= null - 0.02  # the boosted class's own accuracy is kept
    with torch.no_grad():
        pred = functional_forward(cfg, W, ds.X_test).argmax(-1)  # [N, n]
    n = len(CHANGES)
    for p in range(2):
        boosted, null = int((pred[p * n + 2] == 8).sum()), int((pred[p * n] == 8).sum())
        assert boosted > null, (boosted, null)


def test_swap_confuses_the_two_classes(built, ds):
    for child, null in effect(built, ds, 3):
        assert null < 0.05 and child > 0.3, (child, null)


def test_robust_child_is_better_on_its_corruption(built, ds):
    for child, null in effect(built, ds, 4):
        assert child > null + 0.1, (child, null)


def test_backdoor_maps_triggered_images_to_the_target(built, ds):
    cfg, W, recs = built
    for child, null in effect(built, ds, 5):
        assert null < 0.1 and child > 0.4, (child, null)
    from zoo.build.evaluate import evaluate_population

    acc = evaluate_population(cfg, W, ds.X_test, ds.y_test).accuracy
    assert float(acc[5]) > 0.9  # clean accuracy kept: a backdoor, not a broken model


def test_label_in_lineage_and_hparams(zoo, built):
    _, _, recs = built
    rec = next(r for r in recs if r.hparams().get("change") == "backdoor")
    hp = rec.hparams()
    assert hp["change_target"] == 0 and hp["change_size"] == 2 and hp["change_position"] == [0, 0]
    assert hp["change_pattern"] == "solid" and hp["change_pattern_bits"] == [[1, 1], [1, 1]]
    assert hp["change_fraction"] == 0.1 and hp["parent"] in zoo.population("P").ids()
    (edge,) = zoo.lineage(rec.id)
    assert edge.op == "finetune" and edge.role == "base" and edge.parent == hp["parent"]
    assert edge.params["change"] == {"kind": "backdoor", "target": 0, "size": 2, "position": [0, 0], "pattern": "solid",
                                     "pattern_bits": [[1, 1], [1, 1]], "fraction": 0.1}  # fmt: skip
    kinds = sorted({r.hparams()["change"] for r in recs})
    assert kinds == sorted(CHANGE_KINDS)
    assert len(zoo.models().population("C").hparam("change", "=", "suppress").records()) == 4


def test_resume_skips_finished_children(zoo):
    rep = build(zoo, child_recipe(CHANGES), progress=False)
    assert rep.runs_skipped == 2 * len(CHANGES) and rep.models_written == 0


def test_drawn_changes_are_deterministic_and_complete(zoo):
    spec = {"draw": list(CHANGE_KINDS), "n": 12}
    a = [r.point for r in plan_runs(child_recipe(spec, name="D", seed=3), zoo)]
    b = [r.point for r in plan_runs(child_recipe(spec, name="D", seed=3), zoo)]
    c = [r.point for r in plan_runs(child_recipe(spec, name="D", seed=4), zoo)]
    assert a == b and a != c and len(a) == 24
    assert len({p["change"] for p in a}) >= 4
    for p in a:
        ch = change_of(p)
        need = {"null": set(), "suppress": {"class", "mode"}, "boost": {"class", "factor"}, "swap": {"classes"},
                "robust": {"corruption", "severity"},
                "backdoor": {"target", "size", "position", "pattern", "pattern_bits", "fraction"}}[ch["kind"]]  # fmt: skip
        assert set(ch) - {"kind"} == need
        if ch["kind"] == "backdoor":
            s = ch["size"]
            assert 0 <= ch["position"][0] <= 8 - s and 0 <= ch["position"][1] <= 8 - s
            assert len(ch["pattern_bits"]) == s


def test_resume_after_more_parents(tmp_path: Path):
    z = Zoo.open(tmp_path / "zoo")
    try:
        build(z, Recipe.from_dict({"name": "P", "arch": dict(MLP), "epochs": 2,
                                   "search": {"mode": "grid", "seeds": 2, "params": {"lr": [3e-3]}}}), progress=False)  # fmt: skip
        spec = {"draw": ["suppress", "backdoor", "robust"], "n": 2}
        first = build(z, Recipe.from_dict({"name": "C", "arch": dict(MLP), "epochs": 1,
                                           "finetune": {"parents": {"population": "P", "limit": 1}, "change": spec}}),
                      progress=False)  # fmt: skip
        before = {r.name: r.hparams() for r in z.population("C").records()}
        second = build(z, Recipe.from_dict({"name": "C", "arch": dict(MLP), "epochs": 1,
                                            "finetune": {"parents": {"population": "P"}, "change": spec}}), progress=False)  # fmt: skip
        after = {r.name: r.hparams() for r in z.population("C").records()}
        assert first.models_written == 2 and second.runs_skipped == 2 and second.models_written == 2
        assert all(after[k] == v for k, v in before.items())
    finally:
        z.close()


def test_per_model_identity_data_equals_the_shared_path(ds):
    spec = TrainSpec(config=MLP, n=2, seeds=[0, 1], epochs=2, lr=3e-3, data_fraction=[1.0, 0.5], label_noise=[0.0, 0.2])
    plain = list(train_population(spec, ds, progress=False))[-1]
    n = len(ds.y_train)
    own = PerModelData(ds.X_train, ds.y_train, ds.X_val, ds.y_val, ds.X_test, ds.y_test,
                       [torch.arange(n)] * 2, ds.y_train.expand(2, -1).clone())  # fmt: skip
    per = list(train_population(spec, own, progress=False))[-1]
    for k in plain.params:
        assert torch.allclose(plain.params[k], per.params[k], atol=1e-6), k


def test_shard_data_pool_and_labels():
    ds = load_dataset("digits")
    changes = [change_of({"change": "null"}), {"kind": "swap", "classes": [1, 7]},
               {"kind": "backdoor", "target": 0, "size": 2, "position": [6, 6], "pattern": "checker",
                "pattern_bits": [[1, 0], [0, 1]], "fraction": 0.2}]  # fmt: skip
    d = shard_data(ds, changes, [0, 0, 0])
    n = len(ds.y_train)
    assert d.X_train.shape[1:] == ds.X_train.shape[1:] and d.train_labels.shape == (3, len(d.y_train))
    assert torch.equal(d.train_labels[0, :n], ds.y_train)
    y = ds.y_train
    assert torch.equal(d.train_labels[1, :n][y == 1], torch.full_like(y[y == 1], 7))
    stamped = d.X_train[n:]
    m = int(round(0.2 * int((y != 0).sum())))
    assert len(stamped) == m and (d.y_train[n:] == 0).all() and len(d.train_subsets[2]) == n + m
    px = ds.unnormalize(stamped)[:, 0]
    assert torch.allclose(px[:, 6:, 6:], torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(m, 2, 2), atol=1e-5)


@pytest.mark.parametrize(
    ("change", "error", "needle"),
    [
        ("nudge", ConfigError, "unknown change kind 'nudge'; valid kinds: null, suppress"),
        ({"kind": "suppress", "class": 10}, ConfigError, "out of range; the models have 10 classes"),
        ({"kind": "swap", "classes": [2, 2]}, ConfigError, "two different classes"),
        ({"kind": "backdoor", "size": 9}, ConfigError, "trigger size 9 .* 8x8"),
        ({"kind": "backdoor", "size": 3, "position": [6, 0]}, ConfigError, "does not fit"),
        ({"kind": "backdoor", "pattern": "stripes"}, ConfigError, "valid: solid, checker, random"),
        ({"kind": "robust", "corruption": "fog"}, ConfigError, "valid corruptions"),
        ({"kind": "boost", "clas": 1}, ConfigError, "unknown argument"),
        ({"draw": [], "n": 3}, ConfigError, "non-empty"),
    ],
)
def test_bad_specs_are_clear_errors(change, error, needle):
    with pytest.raises(error, match=needle):
        child_recipe(change)


def test_bad_specs_write_nothing(tmp_path: Path):
    z = Zoo.open(tmp_path / "zoo")
    try:
        with pytest.raises(NotFoundError, match="build the parent population first"):
            build(z, child_recipe("null"), progress=False)
        with pytest.raises(ConfigError, match="replaces finetune.corruption"):
            child_recipe("robust", corruption={"kind": "rotate"})
        assert z.models().count() == 0
    finally:
        z.close()


def test_backdoor_on_cnn_parents(tmp_path: Path):
    cnn = {"family": "cnn", "in_channels": 1, "channels": [4, 8], "out_features": 10}
    z = Zoo.open(tmp_path / "zoo")
    try:
        build(z, Recipe.from_dict({"name": "P", "arch": cnn, "epochs": 3, "search": {"mode": "grid", "params": {"lr": [1e-2]}}}),
              progress=False)  # fmt: skip
        bd = {"kind": "backdoor", "target": 4, "size": 3, "position": [5, 5], "pattern": "solid", "fraction": 0.2}
        build(z, Recipe.from_dict({"name": "C", "arch": cnn, "epochs": 3, "finetune": {"parents": {"population": "P"},
              "change": ["null", bd]}, "search": {"mode": "grid", "params": {"lr": [3e-3]}}}), progress=False)  # fmt: skip
        recs = sorted(z.population("C").records(), key=lambda r: r.name)
        W = z.stack([r.id for r in recs])
        v = change_metric(recs[0].arch_config, W, load_dataset("digits"), change_of(recs[1].hparams()))
        assert float(v[1]) > float(v[0]) + 0.3, v
    finally:
        z.close()


def test_builtin_diff_recipe_scales_by_parents_and_filters_parents(zoo):
    r = Recipe.load("digits-mlp-diffs")
    assert r.finetune.parents["population"] == "digits-mlp" and r.change_plan()["n"] == 6
    small = r.scaled(n=5)
    assert small.finetune.parents["limit"] == 5 and small.change_plan()["n"] == 6
    d = small.to_dict()
    d["finetune"]["parents"] = {"population": "P", "min_test_acc": 0.0}
    assert len(plan_runs(Recipe.from_dict(d), zoo)) == 2 * 6
    d["finetune"]["parents"]["min_test_acc"] = 1.01
    with pytest.raises(NotFoundError):
        plan_runs(Recipe.from_dict(d), zoo)


def test_low_rank_children_make_the_same_changes_with_rank_r_diffs(zoo):
    r = Recipe.from_dict({
        "name": "L", "arch": dict(MLP), "epochs": 4,
        "finetune": {"parents": {"population": "P"}, "change": ["null", {"kind": "swap", "classes": [1, 7]}]},
        "search": {"mode": "grid", "params": {"lr": [3e-3], "rank": [0, 2]}},
    })  # fmt: skip
    build(zoo, r, progress=False)
    recs = sorted(zoo.population("L").records(), key=lambda x: x.name)
    assert [x.hparams()["rank"] for x in recs[:4]] == [0, 2, 0, 2]
    assert [zoo.lineage(x.id)[0].params["rank"] for x in recs[:4]] == [0, 2, 0, 2]
    assert change_of(recs[2].hparams()) == change_of(recs[3].hparams())  # full and low-rank: the same change
    W = zoo.stack([x.id for x in recs])
    ds = load_dataset("digits").flat()
    swap = change_metric(recs[0].arch_config, W, ds, {"kind": "swap", "classes": [1, 7]})
    assert float(swap[3]) > float(swap[1]) + 0.3  # the rank-2 swap child confuses 1 and 7, its null sibling does not
    for i, x in enumerate(recs):
        parent = zoo.state_dict(x.hparams()["parent"])
        for k, v in parent.items():
            d = W[k][i] - v
            if x.hparams()["rank"] == 2:
                if v.dim() == 2:
                    assert int(torch.linalg.matrix_rank(d)) <= 2, k
                else:
                    assert torch.equal(W[k][i], v), k  # biases frozen
            elif v.dim() == 2:
                assert int(torch.linalg.matrix_rank(d)) > 2, k


def test_rank_validation():
    with pytest.raises(ConfigError, match="rank"):
        TrainSpec(config=MLP, n=1, seeds=[0], epochs=1, rank=-1)
    with pytest.raises(ConfigError, match="classification"):
        TrainSpec(config={"family": "siren", "in_features": 2, "hidden": [8], "out_features": 1}, n=1, seeds=[0],
                  epochs=1, rank=2, task="regression")  # fmt: skip


def test_builtin_robust_recipe_pairs_a_clean_fine_tune_with_every_corruption():
    from zoo.models.datasets import DIGITS_C_CORRUPTIONS

    plan = Recipe.load("digits-mlp-robust").change_plan()
    kinds = [e["kind"] for e in plan["entries"]]
    assert kinds.count("null") == 1 and plan["n"] == 1 + len(DIGITS_C_CORRUPTIONS)
    assert sorted(e["corruption"] for e in plan["entries"] if e["kind"] == "robust") == sorted(DIGITS_C_CORRUPTIONS)


def test_a_child_does_not_depend_on_its_shard_mates(zoo, built):
    _, W, recs = built
    build(zoo, child_recipe([CHANGES[5]], name="B"), progress=False)  # the backdoor child alone
    alone = sorted(zoo.population("B").records(), key=lambda r: r.name)
    Wb = zoo.stack([r.id for r in alone])
    n = len(CHANGES)
    for p in range(2):
        for k in W:
            assert torch.allclose(W[k][p * n + 5], Wb[k][p], atol=1e-5), k
