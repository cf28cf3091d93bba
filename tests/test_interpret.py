"""The weight-diff interpreter (weightspace.interpret): exact pieces, then end to end on a tiny diff zoo.

Exact: the fields read from a change label, the multi-head targets and masked loss against a hand
computation, the renderer's sentences, the held-out scores against hand-counted values, the diff view's
invariance to hidden-neuron permutations. End to end: four digits MLP parents x six labelled children
(built with the population builder), an interpreter trained on them, stored in the zoo with lineage,
rebuilt, its predictions written as a table, `explain-diff` through the CLI, and bad input refused with
the store unchanged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from weightspace.interpret import (
    DiffInterpreter,
    HeadLayout,
    describe,
    explain_diff,
    interpreter_from_zoo,
    lineage_parent,
    load_diffs,
    load_interpreter,
    split_by_parent,
    store_interpreter,
    train_interpreter,
    write_predictions,
)
from weightspace.interpret.fields import check_fields, field_values
from weightspace.interpret.metrics import score
from weightspace.interpret.render import corner_name
from zoo import Zoo
from zoo.build.builder import build
from zoo.build.recipes import Recipe
from zoo.errors import ConfigError, MismatchError, NotFoundError, ZooError

pytestmark = pytest.mark.usefixtures("one_thread")

MLP = {"family": "mlp", "in_features": 64, "hidden": [16], "out_features": 10}
BACKDOOR = {"kind": "backdoor", "target": 7, "size": 2, "position": [0, 6], "pattern": "solid", "fraction": 0.1,
            "pattern_bits": [[1, 1], [1, 1]]}  # fmt: skip


# ------------------------------------------------------------------------------------ fields
def test_field_values_per_kind():
    f = ["kind", "classes", "corruption", "position", "size", "target"]
    assert field_values({"kind": "null"}, f) == {"kind": "null"}
    assert field_values({"kind": "suppress", "class": 3, "mode": "drop"}, f) == {"kind": "suppress", "classes": [3]}
    assert field_values({"kind": "swap", "classes": [7, 2]}, f) == {"kind": "swap", "classes": [2, 7]}
    assert field_values({"kind": "robust", "corruption": "rotate", "severity": 3}, f) == {"kind": "robust", "corruption": "rotate"}
    assert field_values(BACKDOOR, f) == {"kind": "backdoor", "position": "0,6", "size": 2, "target": 7}
    assert field_values(BACKDOOR, ["kind", "target"]) == {"kind": "backdoor", "target": 7}


def test_fields_are_checked():
    assert check_fields(["target", "kind", "target"]) == ["kind", "target"]
    with pytest.raises(ConfigError, match="valid: kind"):
        check_fields(["kind", "colour"])
    with pytest.raises(ConfigError, match="must include 'kind'"):
        check_fields(["target"])


# ------------------------------------------------------------------------------------- heads
def test_head_targets_and_masked_loss_match_a_hand_computation():
    values = [{"kind": "swap", "classes": [0, 2]}, {"kind": "null"}, {"kind": "suppress", "classes": [1]}]
    lay = HeadLayout.fit(values, ["kind", "classes"], {"kind": ["null", "suppress", "swap"]})
    assert lay.vocab == {"kind": ["null", "suppress", "swap"], "classes": [0, 1, 2]}
    assert lay.offsets == {"kind": (0, 3), "classes": (3, 6)} and lay.width == 6
    y = lay.encode(values)
    assert y.tolist() == [[0, 0, 1, 0.5, 0, 0.5], [1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 1, 0]]
    out = torch.tensor([[0.1, 0.2, 0.3, 1.0, -1.0, 0.0], [2.0, 0.0, 0.0, 5.0, 5.0, 5.0], [0.0, 1.0, 0.0, 0.0, 3.0, 0.0]])

    def ce(logits, target):  # -sum t log softmax
        lse = math.log(sum(math.exp(v) for v in logits))
        return -sum(t * (v - lse) for t, v in zip(target, logits, strict=True))

    kind = np.mean([ce([0.1, 0.2, 0.3], [0, 0, 1]), ce([2, 0, 0], [1, 0, 0]), ce([0, 1, 0], [0, 1, 0])])
    classes = np.mean([ce([1.0, -1.0, 0.0], [0.5, 0, 0.5]), ce([0, 3, 0], [0, 1, 0])])  # the null row is masked out
    assert float(lay.loss(out, y)) == pytest.approx(kind + classes, rel=1e-6)


# ------------------------------------------------------------------------------------ render
def _onehot(n: int, i: int, p: float = 0.9) -> list[float]:
    v = [(1 - p) / (n - 1)] * n
    v[i] = p
    return v


def test_sentences():
    vocab = {"kind": ["null", "suppress", "boost", "swap", "robust", "backdoor"], "classes": list(range(10)),
             "corruption": ["gaussian_noise", "rotate"], "position": ["0,0", "0,6", "3,3"], "size": [1, 2], "target": list(range(10))}  # fmt: skip
    cls = np.zeros(10)
    cls[[2, 7]] = 0.45
    cls[0] = 0.1
    probs = {
        "kind": np.array([_onehot(6, 0), _onehot(6, 1), _onehot(6, 3), _onehot(6, 4), _onehot(6, 5), _onehot(6, 5)]),
        "classes": np.array([_onehot(10, 0), _onehot(10, 3), cls, _onehot(10, 0), _onehot(10, 0), _onehot(10, 0)]),
        "corruption": np.array([_onehot(2, 0)] * 3 + [_onehot(2, 1)] * 3),
        "position": np.array([_onehot(3, 0)] * 4 + [_onehot(3, 1), _onehot(3, 2)]),
        "size": np.array([_onehot(2, 1)] * 6),
        "target": np.array([_onehot(10, 7)] * 6),
    }
    d = describe(probs, vocab, image_hw=(8, 8))
    phrases = [x.sentence.split(" (confidence")[0] for x in d]
    assert phrases == ["no behavioural change (plain extra training)", "suppressed class 3", "swapped classes 2 and 7",
                       "made robust to rotate", "backdoor: 2x2 patch at top-right -> label 7",
                       "backdoor: 2x2 patch at row 3, col 3 -> label 7"]  # fmt: skip
    assert d[2].fields == {"classes": [2, 7]} and d[2].confidence["classes"] == pytest.approx(0.9)
    assert d[4].fields == {"position": [0, 6], "size": 2, "target": 7}
    assert d[4].p_backdoor == pytest.approx(0.9) and d[0].p_backdoor == pytest.approx(0.02)
    assert d[0].class_probs == {} and list(d[4].class_probs) == ["target"]  # the class-valued fields the kind reads
    assert d[1].class_probs["classes"]["3"] == pytest.approx(0.9) and d[2].class_probs["classes"]["7"] == pytest.approx(0.45)
    assert sum(d[4].class_probs["target"].values()) == pytest.approx(1.0)
    assert "confidence: kind 0.90, position 0.90, size 0.90, target 0.90" in d[4].sentence
    assert [corner_name(p, 2, (8, 8)) for p in ([0, 0], [0, 6], [6, 0], [6, 6], [0, 3])] == [
        "top-left", "top-right", "bottom-left", "bottom-right", None]  # fmt: skip


# ----------------------------------------------------------------------------------- metrics
class _Fixed:
    """A stand-in interpreter with fixed head outputs (to check the scores by hand)."""

    fields = ["kind", "target"]
    vocab_ = {"kind": ["null", "backdoor"], "target": [0, 1, 2]}

    def __init__(self, probs):
        self.probs = probs

    def predict_proba(self, data):
        return self.probs


class _Data:
    def __init__(self, changes):
        self.changes = changes


def test_scores_against_hand_counts():
    changes = [{"kind": "null"}, {"kind": "null"}, {"kind": "backdoor", "target": 1, "position": [0, 0], "size": 1},
               {"kind": "backdoor", "target": 2, "position": [0, 0], "size": 1}]  # fmt: skip
    probs = {"kind": np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]]),
             "target": np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]])}  # fmt: skip
    s = score(_Fixed(probs), _Data(changes))
    assert s["acc_kind"] == 0.5  # rows 0 and 2 right
    assert s["acc_target"] == 1.0
    # AUROC of p_backdoor [.1, .6, .7, .2] for labels [0, 0, 1, 1]: pairs (pos > neg) = 0.7>.1, .7>.6, .2>.1 -> 3/4
    assert s["backdoor_auroc"] == pytest.approx(0.75)
    assert s["target_if_detected"] == 1.0  # one backdoor detected (row 2), its target right
    assert s["exact"] == 0.5 and s["n_backdoor"] == 2


# ----------------------------------------------------------------------------- a tiny diff zoo
CHANGES = ["null", {"kind": "suppress", "mode": "drop"}, "boost", "swap", {"kind": "robust", "corruption": "rotate"},
           {"kind": "backdoor", "size": 2, "pattern": "solid"}]  # fmt: skip


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Zoo:
    z = Zoo.open(tmp_path_factory.mktemp("interp") / "zoo")
    build(z, Recipe.from_dict({"name": "P", "arch": dict(MLP), "epochs": 8,
                               "search": {"mode": "grid", "seeds": 4, "params": {"lr": [5e-3]}}}), progress=False)  # fmt: skip
    build(z, Recipe.from_dict({"name": "D", "arch": dict(MLP), "epochs": 3, "finetune": {
        "parents": {"population": "P"}, "seed": 1, "change": CHANGES}, "search": {"mode": "grid", "params": {"lr": [3e-3]}}}),
        progress=False)  # fmt: skip
    yield z
    z.close()


@pytest.fixture(scope="module")
def trained(zoo):
    return train_interpreter(zoo, "D", "np", {"epochs": 4, "hidden": 16, "head_hidden": 16, "n_layers": 1}, seed=0,
                             test_fraction=0.25)  # fmt: skip


def test_load_diffs_reads_labels_and_parents(zoo):
    ds = load_diffs(zoo, "D")
    assert len(ds) == 24 and len(set(ds.parent_ids)) == 4
    i = ds.kinds.tolist().index("backdoor")
    edge = [e for e in zoo.lineage(ds.child_ids[i], max_depth=1) if e.op == "finetune"][0]
    assert edge.parent == ds.parent_ids[i] and edge.params["change"]["position"] == ds.changes[i]["position"]
    c, p = zoo.state_dict(ds.child_ids[i]), zoo.state_dict(ds.parent_ids[i])
    for k in c:
        assert torch.equal(ds.diff[k][i], c[k].float() - p[k].float()) and torch.equal(ds.parent[k][i], p[k].float())
    assert load_diffs(zoo, "D", kinds=["swap"]).kinds.tolist() == ["swap"] * 4
    tr, te = split_by_parent(ds.parent_ids, 0.25, seed=0)
    assert not {ds.parent_ids[i] for i in tr} & {ds.parent_ids[i] for i in te} and len(te) == 6


def _permuted(d: dict, perm: torch.Tensor) -> dict:
    return {"layers.0.weight": d["layers.0.weight"][:, perm], "layers.0.bias": d["layers.0.bias"][:, perm],
            "layers.1.weight": d["layers.1.weight"][:, :, perm], "layers.1.bias": d["layers.1.bias"]}  # fmt: skip


@pytest.mark.parametrize("encoder,view", [("np", "diff"), ("np_diff", "diff"), ("np_diff", "pair")])
def test_interpreter_is_invariant_to_hidden_permutations(trained, encoder, view):
    """Permuting the hidden neurons of child and parent alike permutes the diff (and the parent): the
    reading is unchanged."""
    interp, test = trained.interpreter, trained.test
    if (encoder, view) != ("np", "diff"):
        cfg = {"epochs": 2, "hidden": 8, "head_hidden": 8, "n_layers": 1}
        interp = DiffInterpreter(encoder, cfg, view=view).fit(trained.train)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    d, p = test.diff, test.parent
    a, b = interp.predict_proba(d, p), interp.predict_proba(_permuted(d, perm), _permuted(p, perm))
    for f in a:
        np.testing.assert_allclose(a[f], b[f], atol=1e-5)
    assert not np.allclose(a["kind"], interp.predict_proba({k: v * 2 for k, v in d.items()}, p)["kind"], atol=1e-5)


def test_learns_a_planted_signal():
    """Diffs whose kind is written in one input column of the first layer: the multi-head encoder reads it."""
    from weightspace.interpret.data import DiffSet

    g = torch.Generator().manual_seed(0)
    n = 120
    kinds = ["null", "backdoor"] * (n // 2)
    diff = {"layers.0.weight": 0.01 * torch.randn(n, 16, 64, generator=g), "layers.0.bias": 0.01 * torch.randn(n, 16, generator=g),
            "layers.1.weight": 0.01 * torch.randn(n, 10, 16, generator=g), "layers.1.bias": 0.01 * torch.randn(n, 10, generator=g)}  # fmt: skip
    changes = []
    for i, k in enumerate(kinds):
        if k == "backdoor":
            diff["layers.0.weight"][i, :, 7] += 0.5  # the trigger's pixel (0, 7)
            diff["layers.1.bias"][i, i % 3] += 0.3  # the target's output
            changes.append({"kind": "backdoor", "target": i % 3, "position": [0, 7], "size": 1})
        else:
            changes.append({"kind": "null"})
    parent = {k: torch.zeros_like(v) for k, v in diff.items()}
    ds = DiffSet("synthetic", dict(MLP), diff, parent, changes, list(range(n)), [i // 2 for i in range(n)], [0] * n)
    tr, te = split_by_parent(ds.parent_ids, 0.25, seed=0)
    interp = DiffInterpreter("np", {"epochs": 30, "hidden": 16, "head_hidden": 32, "n_layers": 1}, fields=["kind", "target"])
    s = interp.fit(ds.subset(tr)).score(ds.subset(te))
    assert s["acc_kind"] == 1.0 and s["backdoor_auroc"] == 1.0 and s["acc_target"] >= 0.9


def _planted_backdoors(n: int, targets: list[int], seed: int):
    """Null diffs and backdoor diffs whose trigger is written in input column 7 of the first layer and whose
    target in its output's bias (the target class's row of the last layer)."""
    from weightspace.interpret.data import DiffSet

    g = torch.Generator().manual_seed(seed)
    diff = {"layers.0.weight": 0.01 * torch.randn(n, 16, 64, generator=g), "layers.0.bias": 0.01 * torch.randn(n, 16, generator=g),
            "layers.1.weight": 0.01 * torch.randn(n, 10, 16, generator=g), "layers.1.bias": 0.01 * torch.randn(n, 10, generator=g)}  # fmt: skip
    changes = []
    for i in range(n):
        if i % 2:
            t = targets[(i // 2) % len(targets)]
            diff["layers.0.weight"][i, :, 7] += 0.5
            diff["layers.1.bias"][i, t] += 0.3
            changes.append({"kind": "backdoor", "target": t, "position": [0, 7], "size": 1})
        else:
            changes.append({"kind": "null"})
    parent = {k: torch.zeros_like(v) for k, v in diff.items()}
    return DiffSet("synthetic", dict(MLP), diff, parent, changes, list(range(n)), list(range(n)), [0] * n)


def _relabelled(d: dict, perm: torch.Tensor) -> dict:
    """The classes relabelled: new class i is old class perm[i] (rows of the last layer and its bias)."""
    return {**d, "layers.1.weight": d["layers.1.weight"][:, perm], "layers.1.bias": d["layers.1.bias"][:, perm]}


@pytest.mark.parametrize("outputs,view", [("set", "diff"), ("set", "pair"), ("set_separate", "diff")])
def test_class_set_heads_permute_with_the_classes(trained, outputs, view):
    """outputs='set' (and 'set_separate'): relabelling the classes of child and parent alike permutes the
    class-valued fields' probabilities the same way (exactly), and the readings stay invariant to hidden
    permutations."""
    cfg = {"epochs": 2, "hidden": 8, "head_hidden": 16, "n_layers": 1, "outputs": outputs}
    interp = DiffInterpreter("np_diff", cfg, view=view).fit(trained.train)
    d, p = trained.test.diff, trained.test.parent
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    a, b = interp.predict_proba(d, p), interp.predict_proba(_relabelled(d, perm), _relabelled(p, perm))
    for f in ("classes", "target"):
        assert a[f].shape == (len(trained.test), 10)
        np.testing.assert_allclose(b[f], a[f][:, perm.numpy()], atol=1e-5)
        assert not np.allclose(a[f], b[f], atol=1e-3)  # the classes did move
    hidden = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    c = interp.predict_proba(_permuted(d, hidden), _permuted(p, hidden))
    for f in a:
        np.testing.assert_allclose(a[f], c[f], atol=1e-5)


def test_class_set_heads_name_a_target_never_seen_in_training():
    """Backdoors to targets 0-4 only in training; held-out ones to 5-9 (their target in their own class's
    bias): the class-equivariant head names them, the one-output-per-class head cannot."""
    train, test = _planted_backdoors(120, [0, 1, 2, 3, 4], seed=0), _planted_backdoors(40, [5, 6, 7, 8, 9], seed=1)
    cfg = {"epochs": 30, "hidden": 16, "head_hidden": 32, "n_layers": 1}
    got = {out: DiffInterpreter("np_diff", {**cfg, "outputs": out}, fields=["kind", "target"]).fit(train).score(test)
           for out in ("vector", "set")}  # fmt: skip
    assert got["set"]["acc_kind"] == 1.0 and got["set"]["acc_target"] >= 0.9
    assert got["vector"]["acc_target"] <= 0.1


def test_class_set_heads_refuse_an_interpreter_without_class_fields(trained, tmp_path: Path):
    with pytest.raises(ConfigError, match="class-valued"):
        DiffInterpreter("np_diff", {"epochs": 1, "outputs": "set"}, fields=["kind", "corruption"]).fit(trained.train)
    with pytest.raises(ConfigError, match="valid: vector, set"):  # lists the valid ones
        DiffInterpreter("np_diff", {"epochs": 1, "outputs": "sets"}).fit(trained.train)
    interp = DiffInterpreter("np_diff", {"epochs": 1, "hidden": 8, "head_hidden": 8, "n_layers": 1, "outputs": "set"},
                             fields=["kind", "target"]).fit(trained.train)  # fmt: skip
    again = load_interpreter(interp.save(tmp_path / "set-interp"))
    for f, v in interp.predict_proba(trained.test).items():
        np.testing.assert_allclose(again.predict_proba(trained.test)[f], v, atol=1e-6)


def test_relabel_classes_moves_rows_and_labels_alike():
    from weightspace.interpret.data import concat_diffs, relabel_classes

    ds = _planted_backdoors(6, [2], seed=0)
    ds.changes[0] = {"kind": "swap", "classes": [2, 9]}
    ds.changes[2] = {"kind": "suppress", "class": 9, "mode": "drop"}
    perm = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    r = relabel_classes(ds, perm)
    assert [c.get("target") for c in r.changes if c["kind"] == "backdoor"] == [7, 7, 7]  # old class 2 is new class 7
    assert r.changes[0]["classes"] == [0, 7] and r.changes[2]["class"] == 0 and ds.changes[2]["class"] == 9
    assert torch.equal(r.diff["layers.1.bias"][:, 7], ds.diff["layers.1.bias"][:, 2])
    assert torch.equal(r.diff["layers.1.weight"][:, 0], ds.diff["layers.1.weight"][:, 9])
    assert torch.equal(r.diff["layers.0.weight"], ds.diff["layers.0.weight"])
    both = concat_diffs([ds, r])
    assert len(both) == 12 and both.changes[6:] == r.changes
    with pytest.raises(ConfigError, match="permutation"):
        relabel_classes(ds, [0, 0, 1, 2, 3, 4, 5, 6, 7, 8])


def test_field_loss_weights_scale_their_head():
    values = [{"kind": "null"}, {"kind": "backdoor", "target": 1}]
    lay = HeadLayout.fit(values, ["kind", "target"], {"kind": ["null", "backdoor"], "target": [0, 1]})
    y, out = lay.encode(values), torch.tensor([[0.3, -0.2, 0.0, 0.0], [0.1, 0.4, 0.5, -0.5]])
    kind = float(HeadLayout(lay.vocab, {"target": 0.0}).loss(out, y))
    target = float(lay.loss(out, y)) - kind
    assert float(HeadLayout(lay.vocab, {"kind": 2.0}).loss(out, y)) == pytest.approx(2 * kind + target, rel=1e-6)
    with pytest.raises(ConfigError, match="loss weights"):
        DiffInterpreter("np_diff", {"epochs": 1}, weights={"colour": 2.0}).fit(ds := _planted_backdoors(8, [1], 0))
    with pytest.raises(ConfigError, match="relabel"):
        DiffInterpreter("np_diff", {"epochs": 1}, relabel=-1).fit(ds)


def test_store_rebuild_and_write_predictions(zoo, trained, snapshot):
    interp = trained.interpreter
    rec = store_interpreter(zoo, interp, trained_on=trained.train, metrics=trained.metrics)
    assert rec.op == "train.interpreter" and rec.population.startswith("interpreters/np-D-")
    edges = [e for e in zoo.lineage(rec.id, max_depth=1) if e.child == rec.id]
    assert sorted(e.parent for e in edges) == sorted(trained.train.child_ids) and {e.role for e in edges} == {"train"}
    m = zoo.metrics(rec.id).set_index(["split", "name"])["value"]
    assert m.loc[("test", "acc_kind")] == pytest.approx(trained.metrics["acc_kind"])
    again = interpreter_from_zoo(zoo, rec.id)
    for f, p in interp.predict_proba(trained.test).items():
        np.testing.assert_allclose(again.predict_proba(trained.test)[f], p, atol=1e-6)
    info = write_predictions(zoo, again, "diff_pred", population="D", train_ids=trained.train.child_ids,
                             test_ids=trained.test.child_ids, produced_by=rec.id)  # fmt: skip
    assert info.name == "diff_pred"
    t = zoo.sql("select split, count(*) as n from diff_pred group by split order by split")
    assert t["n"].tolist() == [6, 18]
    row = zoo.sql("select * from diff_pred limit 1").iloc[0]
    assert row["sentence"].startswith(tuple(["no behavioural", "suppressed", "boosted", "swapped", "made robust", "backdoor"]))
    assert isinstance(json.loads(row["fields"]), dict)


def test_explain_diff_defaults_to_the_lineage_parent(zoo, trained):
    ds = trained.test
    child = ds.child_ids[0]
    assert lineage_parent(zoo, child) == ds.parent_ids[0]
    ex = explain_diff(zoo, child, interpreter=trained.interpreter)
    assert ex.parent == ds.parent_ids[0] and ex.child == child
    assert ex.description.sentence == trained.interpreter.describe(ds.subset([0]))[0].sentence


def test_save_load_folder_and_stats_per_field(tmp_path: Path, trained, zoo):
    interp = trained.interpreter
    interp.save(tmp_path / "it")
    again = load_interpreter(tmp_path / "it")
    np.testing.assert_allclose(again.predict_proba(trained.test)["kind"], interp.predict_proba(trained.test)["kind"], atol=1e-6)
    with pytest.raises(ZooError):
        interp.save(zoo.root)  # never into a zoo
    st = DiffInterpreter("stats", {"model": "ridge"}).fit(trained.train)  # one scikit-learn model per field
    p = st.predict_proba(trained.test)
    assert p["kind"].shape == (6, 6) and np.allclose(p["kind"].sum(1), 1)
    with pytest.raises(ConfigError, match="cannot be saved"):
        st.to_doc()


def test_cli_train_and_explain(zoo, capsys, tmp_path: Path):
    from zoo.cli import main

    root = str(zoo.root)
    assert main(["interpret", "train", "-p", "D", "--encoder", "flat_mlp", "--epochs", "1", "--fields", "kind,target",
                 "--save", str(tmp_path / "it"), "--root", root, "--no-progress"]) == 0  # fmt: skip
    assert "saved_to" in capsys.readouterr().out
    any_child = str(load_diffs(zoo, "D").child_ids[0])
    assert main(["explain-diff", any_child, "--interpreter-dir", str(tmp_path / "it"), "--root", root, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["interpreter"] is None
    assert main(["interpret", "train", "-p", "D", "--epochs", "2", "--config", '{"hidden": 8, "head_hidden": 8}',
                 "--to-zoo", "--root", root, "--no-progress", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["n_test"] == 6 and "acc_kind" in out["metrics"]
    child = load_diffs(zoo, "D").child_ids[5]
    assert main(["explain-diff", str(child), "--root", root, "--json"]) == 0
    ex = json.loads(capsys.readouterr().out)
    assert ex["interpreter"] == out["model_id"] and ex["parent"] == lineage_parent(zoo, child)
    assert main(["explain-diff", str(child), "--root", root]) == 0
    assert "(confidence: kind" in capsys.readouterr().out
    assert main(["interpret", "predict", "-p", "D", "--write-table", "d_read", "--root", root, "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["interpreter"] == out["model_id"] and pred["n"] == 24
    assert zoo.sql("select count(*) as n from d_read")["n"].iloc[0] == 24
    assert main(["explain-diff", "nope", "--root", root]) != 0  # a clear error, not a traceback
    assert "nope" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_and_writes_nothing(zoo, trained, snapshot, tmp_path: Path):
    before = snapshot(zoo)
    child = trained.test.child_ids[0]
    cnn = {"family": "cnn", "in_channels": 1, "image_size": 8, "channels": [4], "kernel_size": 3, "out_features": 10}
    from zoo.models.architectures import init_state

    other = Zoo.open(tmp_path / "other")
    lone = other.add(init_state(cnn, 0), arch=cnn, population="C", name="lone")
    lone2 = other.add(init_state(cnn, 1), arch=cnn, population="C", name="lone2", parents=[lone.id], op="finetune")
    mlp_p = zoo.population("P").df()["id"].iloc[0]
    with pytest.raises(NotFoundError, match="no parent in its lineage"):
        explain_diff(zoo, int(mlp_p), interpreter=trained.interpreter)
    small = other.add(init_state(MLP, 0), arch=MLP, population="M", name="small")
    big = other.add(init_state(dict(MLP, hidden=[20]), 0), arch=dict(MLP, hidden=[20]), population="B", name="big")
    with pytest.raises(MismatchError, match="different architectures"):
        explain_diff(other, big.id, small.id, interpreter=trained.interpreter)
    with pytest.raises(MismatchError, match="trained on diffs of"):
        explain_diff(other, lone2.id, interpreter=trained.interpreter)
    with pytest.raises(NotFoundError, match="no interpreter is stored"):
        explain_diff(other, lone2.id)
    with pytest.raises(ConfigError, match="no labelled diffs"):
        load_diffs(zoo, "P")
    with pytest.raises(NotFoundError, match="no population"):
        load_diffs(zoo, "nope")
    with pytest.raises(ConfigError, match="unknown interpreter view"):
        DiffInterpreter(view="sideways").fit(trained.train)
    with pytest.raises(ZooError, match="valid"):
        DiffInterpreter("nope").fit(trained.train)
    with pytest.raises(ConfigError, match="its own parent"):
        explain_diff(zoo, child, child, interpreter=trained.interpreter)
    other.close()
    assert snapshot(zoo) == before


def test_cnn_diffs_need_an_encoder_that_reads_them():
    """CNN diffs: np_diff (dense chains only) refuses them with the reason; flat_mlp reads them."""
    from weightspace.interpret.data import DiffSet
    from zoo.models.architectures import init_state

    cnn = {"family": "cnn", "in_channels": 1, "image_size": 8, "channels": [4], "kernel_size": 3, "out_features": 10}
    states = [init_state(cnn, s) for s in range(8)]
    diff = {k: torch.stack([s[k] for s in states]) * 0.01 for k in states[0]}
    changes = [{"kind": "null"}, {"kind": "backdoor", "target": 1, "position": [0, 0], "size": 1}] * 4
    ds = DiffSet("cnn-d", cnn, diff, {k: torch.zeros_like(v) for k, v in diff.items()}, changes, list(range(8)),
                 [0, 0, 1, 1, 2, 2, 3, 3], [0] * 8)  # fmt: skip
    with pytest.raises(ConfigError, match="dense"):
        DiffInterpreter("np_diff", {"epochs": 1}).fit(ds)
    p = DiffInterpreter("flat_mlp", {"epochs": 1, "hidden": [8]}).fit(ds).predict_proba(ds)
    assert p["kind"].shape == (8, 6) and p["target"].shape == (8, 10)


# ------------------------------------------------------------------------------- explorer page
def test_diffs_page_shows_the_reading(zoo, trained, monkeypatch):
    from streamlit.testing.v1 import AppTest

    store_interpreter(zoo, trained.interpreter, trained_on=trained.train)
    child = trained.test.child_ids[0]
    monkeypatch.setenv("WEIGHTZOO_HOME", str(zoo.root))
    monkeypatch.delenv("WEIGHTZOO_URL", raising=False)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "pages" / "6_Diffs.py"), default_timeout=120)
    at.query_params["model"] = str(child)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="df_parent").value == trained.test.parent_ids[0]
    want = explain_diff(zoo, child, interpreter=at.selectbox(key="df_interp").value).sentence.split(" (confidence")[0]
    assert any(want in str(m.value) for m in at.markdown)
    reading = [d.value for d in at.dataframe if "field" in d.value.columns]
    assert reading and reading[0]["field"].iloc[0] == "kind"
    assert any("Label recorded by the fine-tune" in str(c.value) for c in at.caption)
