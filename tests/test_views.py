"""Views: per-tensor normalisation (fit on train, transform), flat vectors, dense chains, neural graphs."""

from __future__ import annotations

import pytest
import torch

from weightspace.spec import apply_permutation, random_permutation, spec_for
from weightspace.views import (
    FlatNormalizer,
    LayerNormalizer,
    dense_chain,
    flatten,
    mlp_spec_from_names,
    unflatten,
)
from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import init_state

CFG = {"family": "mlp", "in_features": 5, "hidden": [7, 6], "out_features": 3}


def stacked(n: int = 6, cfg: dict = CFG) -> dict[str, torch.Tensor]:
    states = [init_state(cfg, s) for s in range(n)]
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}


def test_layer_normalizer_fit_transform_roundtrip_and_equivariance() -> None:
    X = stacked()
    norm = LayerNormalizer().fit(X)
    Z = norm.transform(X)
    for k in X:
        assert abs(float(Z[k].mean())) < 1e-5 and abs(float(Z[k].std()) - 1) < 1e-4
        torch.testing.assert_close(norm.inverse_transform(Z)[k], X[k])
    spec = spec_for(CFG)
    perms = random_permutation(spec, X, torch.Generator().manual_seed(0), batch=6)
    a = norm.transform(apply_permutation(spec, perms, X))
    b = apply_permutation(spec, perms, Z)
    for k in X:
        torch.testing.assert_close(a[k], b[k])
    state = LayerNormalizer.from_state(norm.state())
    torch.testing.assert_close(state.transform(X)["layers.0.weight"], Z["layers.0.weight"])


def test_normalizer_refuses_unfitted_and_wrong_shapes() -> None:
    with pytest.raises(ConfigError, match="not fitted"):
        LayerNormalizer().transform(stacked())
    norm = LayerNormalizer().fit(stacked())
    other = stacked(cfg={**CFG, "hidden": [4, 6]})
    with pytest.raises(MismatchError):
        norm.transform(other)


def test_flatten_unflatten_and_flat_normalizer() -> None:
    X = stacked()
    f = flatten(X)
    assert f.shape == (6, sum(v[0].numel() for v in X.values()))
    back = unflatten(f, {k: v.shape[1:] for k, v in X.items()})
    for k in X:
        assert torch.equal(back[k], X[k])
    z = FlatNormalizer().fit_transform(f)
    assert z.shape == f.shape
    with pytest.raises(MismatchError):
        unflatten(f[:, :-1], {k: v.shape[1:] for k, v in X.items()})


def test_dense_chain_from_spec_and_names() -> None:
    chain = dense_chain(spec_for(CFG))
    assert [c.weight for c in chain] == ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
    assert chain[0].p_in is None and chain[-1].p_out is None and chain[1].p_in == chain[0].p_out
    assert mlp_spec_from_names(list(stacked())) == spec_for(CFG)
    with pytest.raises(ConfigError, match="dense"):
        dense_chain(spec_for({"family": "cnn", "in_channels": 1, "channels": [4], "out_features": 3}))
    with pytest.raises(ConfigError, match="spec"):
        mlp_spec_from_names(["conv.weight"])


def test_neural_graph_of_mlp_and_permutation() -> None:
    pytest.importorskip("torch_geometric")
    from weightspace.graph import neural_graph, neural_graphs

    st = init_state(CFG, 0)
    g = neural_graph(st, spec_for(CFG))
    n_nodes = 5 + 7 + 6 + 3
    assert g.num_nodes == n_nodes
    assert g.edge_index.shape[1] == 5 * 7 + 7 * 6 + 6 * 3
    # edge (i -> j) of layer 1 carries W1[j, i]; node features carry the biases
    W1 = st["layers.1.weight"]
    src, dst = g.edge_index
    m = (src == 5 + 2) & (dst == 12 + 4)
    assert torch.equal(g.edge_attr[m, 0], W1[4, 2].reshape(1))
    assert torch.equal(g.x[12:18, 0], st["layers.1.bias"])
    # permuting hidden neurons gives an isomorphic graph: same multiset of edge features per layer
    spec = spec_for(CFG)
    perms = random_permutation(spec, st, torch.Generator().manual_seed(1))
    g2 = neural_graph(apply_permutation(spec, perms, st), spec)
    assert torch.equal(g.edge_attr.sort(0).values, g2.edge_attr.sort(0).values)
    batch = neural_graphs(stacked(3), spec)
    assert len(batch) == 3


def test_neural_graph_of_cnn_flattens_kernels_onto_edges() -> None:
    pytest.importorskip("torch_geometric")
    from weightspace.graph import neural_graph

    cfg = {"family": "cnn", "in_channels": 1, "channels": [4, 5], "out_features": 3, "kernel_size": 3}
    st = init_state(cfg, 0)
    g = neural_graph(st, spec_for(cfg))
    assert g.edge_attr.shape[1] == 9  # 3x3 kernels flattened; dense edges zero-padded
    assert g.num_nodes == 1 + 4 + 5 + 3
