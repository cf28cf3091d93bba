"""Encoders: a conformance suite over the registry (invariance, save/load, bad input) + NP equivariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weightspace.encoders import (
    NPEncoder,
    encoders,
    get_encoder,
    load_encoder,
    make_encoder,
    register_encoder,
)
from weightspace.spec import apply_permutation, random_permutation, spec_for
from zoo.errors import ConfigError, DuplicateError, MismatchError, UnsafeFileError
from zoo.models.architectures import init_state

CFGS = {
    "mlp1": {"family": "mlp", "in_features": 6, "hidden": [8], "out_features": 3},
    "mlp3": {"family": "mlp", "in_features": 5, "hidden": [7, 6, 4], "out_features": 2},
    "siren": {"family": "siren", "in_features": 2, "hidden": [8, 8], "out_features": 1},
}
#: conformance variants: key -> (registered name, fast config)
FAST = {
    "np": ("np", {"epochs": 3, "hidden": 8, "edge_hidden": 4, "head_hidden": 16}),
    "np_probes": ("np", {"epochs": 3, "hidden": 8, "edge_hidden": 4, "head_hidden": 16, "probes": 5}),
    "gmn_probes": ("gmn", {"epochs": 2, "hidden": 8, "edge_hidden": 4, "msg_hidden": 4, "head_hidden": 16, "probes": 4}),
    "probe": ("probe", {"epochs": 3, "n_probes": 6, "head_hidden": 16}),
    "probe_free": ("probe", {"epochs": 3, "n_probes": 6, "head_hidden": 16, "generator": "free"}),
    "np_diff": ("np_diff", {"task": "regression", "epochs": 3, "hidden": 8, "edge_hidden": 4, "head_hidden": 16}),
    "flat_mlp": ("flat_mlp", {"epochs": 3, "hidden": [16]}),
    "stats": ("stats", {"max_iter": 10}),
}
INVARIANT = ("np", "np_diff", "np_probes", "gmn_probes", "probe", "probe_free", "stats")


def fast(key: str, **kw) -> object:
    name, cfg = FAST[key]
    return make_encoder(name, **{**cfg, **kw})


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def population(cfg: dict, n: int = 24) -> dict[str, torch.Tensor]:
    states = [init_state(cfg, s, init_scale=0.5 + s / n) for s in range(n)]
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}


def permuted(cfg: dict, X: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    spec = spec_for(cfg)
    n = next(iter(X.values())).shape[0]
    return apply_permutation(spec, random_permutation(spec, X, torch.Generator().manual_seed(seed), batch=n), X)


def targets(X: dict[str, torch.Tensor], task: str) -> np.ndarray:
    s = X["layers.0.weight"].reshape(len(X["layers.0.weight"]), -1).std(1).numpy()
    return s if task == "regression" else (s > np.median(s)).astype(int)


def test_registry() -> None:
    assert {"np", "gmn", "probe", "flat_mlp", "stats"} <= set(encoders())
    with pytest.raises(ConfigError, match="unknown encoder 'dws9000'; valid encoders: .*np"):
        get_encoder("dws9000")
    with pytest.raises(DuplicateError):
        register_encoder("np")
    with pytest.raises(ConfigError, match="options"):
        make_encoder("np", widht=3)


def test_stats_transform_is_standardised_with_training_statistics(tmp_path) -> None:
    X = population(CFGS["mlp1"], 30)
    enc = fast("stats").fit(X, targets(X, "regression"))
    f = enc.transform(X)
    assert np.allclose(f.mean(0), 0, atol=1e-9)
    assert np.allclose(f.std(0)[f.std(0) > 0], 1, atol=1e-6)
    again = load_encoder(enc.save(tmp_path / "s"), trust_pickle=True)
    assert np.allclose(again.transform(X), f)


def test_every_registered_encoder_is_enrolled_in_the_conformance_suite() -> None:
    """Registering an encoder enrols it here: it must declare a fast configuration in FAST."""
    missing = set(encoders()) - {name for name, _ in FAST.values()}
    assert not missing, f"add a fast configuration for {sorted(missing)} to FAST (and INVARIANT if invariant)"


def test_lazy_registration_imports_on_first_use(monkeypatch) -> None:
    from weightspace.encoders import registry

    registry.register_lazy("ghost", "weightspace.encoders.no_such_module", "pip install ghost-extra")
    try:
        assert "ghost" in encoders()
        with pytest.raises(ConfigError, match="ghost-extra"):
            make_encoder("ghost")
    finally:
        registry.ENCODERS.unregister("ghost")
    with pytest.raises(DuplicateError):
        registry.register_lazy("np", "weightspace.encoders.np_encoder")
    assert get_encoder("gmn").__name__ == "GMNEncoder"  # torch_geometric is a dev dependency


@pytest.mark.parametrize("name", INVARIANT)
@pytest.mark.parametrize("arch", sorted(CFGS))
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_invariant_to_hidden_permutations(name: str, arch: str, task: str) -> None:
    cfg = CFGS[arch]
    X = population(cfg)
    enc = fast(name, task=task).fit(X, targets(X, task), spec=spec_for(cfg), arch=cfg)
    Xp = permuted(cfg, X)
    if task == "regression":
        np.testing.assert_allclose(enc.predict(Xp), enc.predict(X), rtol=1e-4, atol=1e-5)
    else:
        np.testing.assert_allclose(enc.predict_proba(Xp), enc.predict_proba(X), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(enc.transform(Xp), enc.transform(X), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["mlp3", "siren"])
@pytest.mark.parametrize("probes", [0, 3])
def test_np_intermediate_features_are_equivariant(arch: str, probes: int) -> None:
    cfg = CFGS[arch]
    X = population(cfg, 6)
    enc = NPEncoder(epochs=1, hidden=8, head_hidden=8, probes=probes).fit(X, targets(X, "regression"), arch=cfg)
    spec = spec_for(cfg)
    perms = random_permutation(spec, X, torch.Generator().manual_seed(3), batch=6)
    nodes, edges = enc.features(X)
    nodes_p, edges_p = enc.features(apply_permutation(spec, perms, X))
    hidden = [f"layers.{i}" for i in range(len(cfg["hidden"]))]
    for s, p in enumerate(hidden):  # node set s = neurons permuted by hidden[s]
        idx = perms[p]
        want = torch.take_along_dim(nodes[s], idx[:, :, None], dim=1)
        torch.testing.assert_close(nodes_p[s], want, rtol=1e-4, atol=1e-5)
    for e, x in enumerate(edges):  # edge set e: [N, n_{e+1}, n_e, C], rows by hidden[e+1], columns by hidden[e]
        r, c = perms[hidden[e + 1]], perms[hidden[e]]
        want = torch.take_along_dim(torch.take_along_dim(x, r[:, :, None, None], dim=1), c[:, None, :, None], dim=2)
        torch.testing.assert_close(edges_p[e], want, rtol=1e-4, atol=1e-5)


def test_flat_mlp_is_not_invariant_but_learns() -> None:
    cfg = CFGS["mlp1"]
    X = population(cfg, 40)
    y = targets(X, "regression")
    enc = make_encoder("flat_mlp", epochs=30, hidden=[32]).fit(X, y)
    assert not np.allclose(enc.predict(permuted(cfg, X)), enc.predict(X), atol=1e-6)
    assert enc.history_[-1] < enc.history_[0]


@pytest.mark.parametrize("name", sorted(FAST))
def test_save_load_roundtrip(name: str, tmp_path) -> None:
    cfg = CFGS["mlp3"]
    X = population(cfg)
    enc = fast(name).fit(X, targets(X, "regression"), arch=cfg)
    enc.save(tmp_path / name)
    if name == "stats":
        with pytest.raises(UnsafeFileError, match="trust"):
            load_encoder(tmp_path / name)
        back = load_encoder(tmp_path / name, trust_pickle=True)
    else:
        back = load_encoder(tmp_path / name)
    assert back.get_params() == enc.get_params()
    np.testing.assert_allclose(back.predict(X), enc.predict(X), rtol=1e-5)
    assert enc.clone().get_params() == enc.get_params() and not enc.clone().fitted


@pytest.mark.parametrize("name", sorted(FAST))
def test_bad_input_raises_project_errors(name: str) -> None:
    cfg = CFGS["mlp1"]
    X = population(cfg)
    enc = fast(name)
    with pytest.raises(ConfigError, match="not fitted"):
        enc.predict(X)
    with pytest.raises(MismatchError):
        enc.fit(X, np.zeros(3), arch=cfg)
    enc.fit(X, targets(X, "regression"), arch=cfg)
    with pytest.raises(MismatchError):
        enc.predict(population(CFGS["mlp3"]))
    with pytest.raises(ConfigError, match="task"):
        fast(name, task="ranking").fit(X, targets(X, "regression"), arch=cfg)


@pytest.mark.parametrize("name", ["np_probes", "gmn_probes", "probe"])
def test_encoders_that_run_models_need_the_architecture(name: str) -> None:
    X = population(CFGS["mlp1"])
    with pytest.raises(ConfigError, match="arch"):
        fast(name).fit(X, targets(X, "regression"))
    cnn = {"family": "cnn", "in_channels": 1, "channels": [4], "out_features": 3}
    if name != "probe":  # probe features need a dense chain
        with pytest.raises(ConfigError):
            fast(name).fit(population(cnn, 4), np.arange(4.0), spec=spec_for(cnn), arch=cnn)


def test_probe_encoder_runs_any_batched_family_and_is_invariant_to_relu_rescaling() -> None:
    from weightspace.augment import rescale

    cnn = {"family": "cnn", "in_channels": 1, "image_size": 8, "channels": [4, 4], "out_features": 3}
    X = population(cnn, 12)
    enc = fast("probe").fit(X, targets({"layers.0.weight": X["convs.0.weight"]}, "regression"), arch=cnn)
    assert enc.probes().shape == (6, 1, 8, 8)
    np.testing.assert_allclose(enc.predict(permuted(cnn, X)), enc.predict(X), rtol=1e-4, atol=1e-5)
    cfg = CFGS["mlp3"]
    X = population(cfg)
    enc = fast("probe").fit(X, targets(X, "regression"), arch=cfg)
    Xr = rescale(X, spec_for(cfg), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(Xr["layers.0.weight"], X["layers.0.weight"])
    np.testing.assert_allclose(enc.predict(Xr), enc.predict(X), rtol=1e-4, atol=1e-5)


def test_np_with_probe_features_learns_a_function_property() -> None:
    """A probe-feature NP learns a property of the SIRENs' functions (the sign of their mean output on a
    grid) and scores well above chance on held-out models."""
    from zoo.build.evaluate import functional_forward

    cfg = {"family": "siren", "in_features": 2, "hidden": [8, 8], "out_features": 1, "w0": 30.0}
    X = population(cfg, 48)
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 4), torch.linspace(-1, 1, 4), indexing="ij"), -1).reshape(-1, 2)
    y = (functional_forward(cfg, X, grid)[..., 0].mean(1) > 0).long().numpy()  # label: mean brightness sign
    tr, te = np.arange(36), np.arange(36, 48)
    enc = NPEncoder(task="classification", epochs=60, hidden=16, edge_hidden=4, head_hidden=32, probes=16, lr=3e-3)
    enc.fit({k: v[tr] for k, v in X.items()}, y[tr], arch=cfg)
    acc = (enc.predict({k: v[te] for k, v in X.items()}) == y[te]).mean()
    assert acc >= 0.75, acc


def test_np_refuses_non_chains() -> None:
    cfg = {"family": "cnn", "in_channels": 1, "channels": [4], "out_features": 3}
    X = population(cfg, 4)
    with pytest.raises(ConfigError):
        NPEncoder(epochs=1).fit(X, np.arange(4.0), spec=spec_for(cfg))
    with pytest.raises(ConfigError, match="probes"):
        NPEncoder(epochs=1, probes=-1).fit(population(CFGS["mlp1"], 4), np.arange(4.0), arch=CFGS["mlp1"])


def test_encoder_save_goes_through_the_output_guard(tmp_path) -> None:
    from zoo import Zoo
    from zoo.errors import DuplicateError, OutputPathError

    X = population(CFGS["mlp1"], 12)
    enc = fast("np").fit(X, targets(X, "regression"))
    with Zoo.open(tmp_path / "zoo") as z:
        root = z.root
    with pytest.raises(OutputPathError):
        enc.save(root / "enc")  # never inside a zoo
    assert not (root / "enc").exists()
    out = enc.save(tmp_path / "enc")
    assert (out / "config.json").is_file() and (out / ".weightzoo-output").is_file()
    with pytest.raises(DuplicateError):
        enc.save(out)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputPathError):
        enc.save(tmp_path / "mine", overwrite=True)  # not a folder weightzoo wrote
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    np.testing.assert_allclose(load_encoder(enc.save(out, overwrite=True)).predict(X), enc.predict(X), rtol=1e-6)
