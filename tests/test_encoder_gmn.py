"""The graph metanetwork encoder ("gmn"): batched neural graphs, invariance, learning, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_encoders import permuted
from tests.test_encoders import population as _population

pytest.importorskip("torch_geometric")

import weightspace.encoders.gmn  # noqa: E402,F401  (registers "gmn")
from weightspace.encoders.base import load_encoder  # noqa: E402
from weightspace.encoders.registry import encoders, make_encoder  # noqa: E402
from weightspace.graph import graph_template, neural_graphs  # noqa: E402
from weightspace.spec import apply_permutation, random_permutation, spec_for  # noqa: E402
from zoo.errors import ConfigError, MismatchError  # noqa: E402

CFGS = {
    "mlp1": {"family": "mlp", "in_features": 6, "hidden": [8], "out_features": 3},
    "mlp3": {"family": "mlp", "in_features": 5, "hidden": [7, 6, 4], "out_features": 2},
    "siren": {"family": "siren", "in_features": 2, "hidden": [8, 8], "out_features": 1},
    "cnn": {"family": "cnn", "in_channels": 2, "channels": [4, 5], "out_features": 3, "image_size": 4},
}
FAST = {"epochs": 3, "hidden": 8, "edge_hidden": 4, "msg_hidden": 8, "head_hidden": 16, "n_layers": 2}


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def population(cfg: dict, n: int = 16) -> dict[str, torch.Tensor]:
    return _population(cfg, n)


def first_weight(X: dict[str, torch.Tensor]) -> torch.Tensor:
    return next(v for k, v in X.items() if k.endswith("weight"))


def targets(X: dict[str, torch.Tensor], task: str) -> np.ndarray:
    w = first_weight(X)
    s = w.reshape(len(w), -1).std(1).numpy()
    return s if task == "regression" else (s > np.median(s)).astype(int)


def test_registered() -> None:
    assert "gmn" in encoders()
    enc = make_encoder("gmn", hidden=16)
    assert enc.get_params()["hidden"] == 16 and enc.clone().get_params() == enc.get_params()


@pytest.mark.parametrize("arch", ["mlp3", "cnn"])
def test_vectorised_batch_equals_per_model_graphs(arch: str) -> None:
    from torch_geometric.data import Batch

    cfg = CFGS[arch]
    X = population(cfg, 3)
    spec = spec_for(cfg)
    t = graph_template(spec, {k: v.shape[1:] for k, v in X.items()})
    fast, ref = t.batch(X), Batch.from_data_list(neural_graphs(X, spec))
    for key in ("x", "edge_index", "edge_attr", "layer", "node_kind", "edge_layer", "batch", "ptr"):
        assert torch.equal(getattr(fast, key), getattr(ref, key)), key
    assert fast.num_graphs == 3
    # hidden neurons carry no identity: one node kind per hidden layer
    hidden = t.node_kind[t.node_slices()[1]]
    assert (hidden == hidden[0]).all() and t.node_kind[t.node_slices()[0]].unique().numel() == t.sizes[0]


@pytest.mark.parametrize("arch", sorted(CFGS))
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_invariant_to_hidden_permutations(arch: str, task: str) -> None:
    cfg = CFGS[arch]
    X = population(cfg)
    enc = make_encoder("gmn", task=task, aggr=["mean", "max"], **FAST).fit(
        X, targets(X, task), spec=spec_for(cfg)
    )
    Xp = permuted(cfg, X)
    assert not torch.equal(first_weight(Xp), first_weight(X))
    if task == "regression":
        np.testing.assert_allclose(enc.predict(Xp), enc.predict(X), rtol=1e-4, atol=1e-5)
    else:
        np.testing.assert_allclose(enc.predict_proba(Xp), enc.predict_proba(X), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(enc.transform(Xp), enc.transform(X), rtol=1e-4, atol=1e-4)


def test_node_states_are_equivariant() -> None:
    cfg = CFGS["mlp1"]
    X = population(cfg, 4)
    spec = spec_for(cfg)
    enc = make_encoder("gmn", **FAST).fit(X, targets(X, "regression"))
    perms = random_permutation(spec, X, torch.Generator().manual_seed(2), batch=4)
    x, _ = enc.features(X)
    xp, _ = enc.features(apply_permutation(spec, perms, X))
    V = 6 + 8 + 3
    x, xp = x.view(4, V, -1), xp.view(4, V, -1)
    hid = slice(6, 14)
    want = torch.take_along_dim(x[:, hid], perms["layers.0"][:, :, None], dim=1)
    torch.testing.assert_close(xp[:, hid], want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xp[:, :6], x[:, :6], rtol=1e-4, atol=1e-5)  # fixed neurons unchanged


def test_learns_a_weight_statistic() -> None:
    from scipy.stats import kendalltau

    cfg = CFGS["mlp1"]
    X = population(cfg, 96)
    y = targets(X, "regression")
    te = np.arange(0, 96, 4)  # 24 held out, 72 to train on
    tr = np.setdiff1d(np.arange(96), te)
    train, test = ({k: v[torch.as_tensor(i)] for k, v in X.items()} for i in (tr, te))
    enc = make_encoder("gmn", epochs=40, hidden=16, edge_hidden=4, msg_hidden=8, head_hidden=32, n_layers=2,
                       batch_size=16, target="standard")  # fmt: skip
    enc.fit(train, y[tr])
    assert enc.history_[-1] < 0.5 * enc.history_[0]
    tau = kendalltau(enc.predict(test), y[te])[0]
    assert tau > 0.6, tau


def test_save_load_roundtrip(tmp_path) -> None:
    cfg = CFGS["mlp3"]
    X = population(cfg)
    enc = make_encoder("gmn", aggr=["mean", "sum"], **FAST).fit(X, targets(X, "regression"))
    back = load_encoder(enc.save(tmp_path / "gmn"))
    assert back.get_params() == enc.get_params()
    np.testing.assert_array_equal(back.predict(X), enc.predict(X))
    np.testing.assert_array_equal(back.transform(X), enc.transform(X))


def test_bad_input_raises_project_errors() -> None:
    X = population(CFGS["mlp1"])
    enc = make_encoder("gmn", **FAST)
    with pytest.raises(ConfigError, match="not fitted"):
        enc.predict(X)
    with pytest.raises(MismatchError):
        enc.fit(X, np.zeros(3))
    with pytest.raises(ConfigError, match="aggregation"):
        make_encoder("gmn", aggr=["median"], **FAST).fit(X, targets(X, "regression"))
    with pytest.raises(ConfigError, match="task"):
        make_encoder("gmn", task="ranking").fit(X, targets(X, "regression"))
    enc.fit(X, targets(X, "regression"))
    with pytest.raises(MismatchError):
        enc.predict(population(CFGS["mlp3"]))  # another layout


@pytest.mark.parametrize(
    "cfg",
    [
        {"family": "cnn", "in_channels": 1, "channels": [4], "out_features": 3, "batchnorm": True},
        {"family": "resnet", "in_channels": 1, "width": 4, "blocks": [1], "out_features": 3},
    ],
    ids=["cnn-batchnorm", "resnet"],
)
def test_refuses_unsupported_architectures(cfg: dict) -> None:
    X = population(cfg, 4)
    with pytest.raises(ConfigError, match="chains of dense/conv"):
        make_encoder("gmn", **FAST).fit(X, np.arange(4.0), spec=spec_for(cfg))


def test_needs_a_spec_for_non_mlp_names() -> None:
    cfg = CFGS["cnn"]
    X = population(cfg, 4)
    with pytest.raises(ConfigError, match="spec"):
        make_encoder("gmn", **FAST).fit(X, np.arange(4.0))
