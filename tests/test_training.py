"""The batched population trainer: learning, per-model reproducibility and isolation, exactness."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from zoo.build import training
from zoo.build.training import TrainSpec, finetune, run_shard, train_population
from zoo.errors import ConfigError, MismatchError
from zoo.models.architectures import check_stacked, init_state, instantiate

MLP = {"family": "mlp", "in_features": 64, "hidden": [32], "out_features": 10}


@functools.cache
def digits(images: bool = False) -> SimpleNamespace:
    """sklearn's bundled digits (offline), scaled to [0, 1], split 1257 / 180 / 360."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    X, y = X[perm], y[perm]
    if images:
        X = X.view(-1, 1, 8, 8)
    a, b = 1257, 1257 + 180
    return SimpleNamespace(
        X_train=X[:a], y_train=y[:a], X_val=X[a:b], y_val=y[a:b], X_test=X[b:], y_test=y[b:]
    )


def small(data: SimpleNamespace, n_train: int = 256) -> SimpleNamespace:
    return SimpleNamespace(
        **{**vars(data), "X_train": data.X_train[:n_train], "y_train": data.y_train[:n_train]}
    )


def final(spec: TrainSpec, data: SimpleNamespace, **kw) -> training.Checkpoint:
    return list(train_population(spec, data, progress=False, **kw))[-1]


def test_mlp_population_learns_digits() -> None:
    spec = TrainSpec(config=MLP, n=6, seeds=list(range(6)), epochs=12, checkpoint_epochs=[0, 12], lr=3e-3)
    first, last = list(train_population(spec, digits(), progress=False))
    assert (first.epoch, last.epoch) == (0, 12)
    assert set(last.metrics) >= {
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "test_loss",
        "test_acc",
        "gen_gap",
    }
    assert (last.metrics["train_loss"] < 0.5 * first.metrics["train_loss"]).all()
    assert (last.metrics["test_acc"] > 0.85).all()
    torch.testing.assert_close(last.metrics["gen_gap"], last.metrics["train_acc"] - last.metrics["test_acc"])
    assert check_stacked(MLP, last.params) == 6
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in last.params.values())
    # a checkpoint's model i loads into the nn.Module and gives the reported accuracy
    data = digits()
    module = instantiate(MLP, last.model(2))
    acc = (module(data.X_test).argmax(1) == data.y_test).float().mean()
    assert math.isclose(acc.item(), last.metrics["test_acc"][2].item(), abs_tol=1e-6)


def test_same_seed_same_weights_regardless_of_shard() -> None:
    data = small(digits())
    kw = {"config": MLP, "epochs": 3, "batch_size": 32}
    alone = final(TrainSpec(n=1, seeds=[7], lr=[2e-3], dropout=[0.2], data_fraction=[0.6], **kw), data)
    shard = final(
        TrainSpec(
            n=5,
            seeds=[1, 2, 7, 3, 4],
            lr=[1e-3, 5e-3, 2e-3, 1e-2, 1e-3],
            dropout=[0.0, 0.5, 0.2, 0.1, 0.0],
            data_fraction=[1.0, 0.3, 0.6, 0.9, 0.5],
            label_noise=[0.0, 0.2, 0.0, 0.5, 0.1],
            **kw,
        ),
        data,
    )
    for k, v in alone.params.items():
        torch.testing.assert_close(shard.params[k][2], v[0], rtol=1e-5, atol=1e-5)
    assert shard.steps[2] == alone.steps[0] == 3 * (round(0.6 * 256) // 32)


@pytest.mark.parametrize(
    "knob", ["lr", "dropout", "weight_decay", "label_noise", "data_fraction", "init_scale"]
)
def test_a_per_model_hyperparameter_affects_only_its_model(knob: str) -> None:
    data = small(digits())
    base = {
        "lr": 2e-3,
        "dropout": 0.1,
        "weight_decay": 1e-3,
        "label_noise": 0.1,
        "data_fraction": 0.8,
        "init_scale": 1.0,
    }
    changed = {
        "lr": 2e-2,
        "dropout": 0.5,
        "weight_decay": 0.1,
        "label_noise": 0.6,
        "data_fraction": 0.4,
        "init_scale": 2.0,
    }
    kw = {"config": MLP, "n": 3, "seeds": [0, 1, 2], "epochs": 2, "batch_size": 32}
    a = final(TrainSpec(**kw, **base), data)
    b = final(TrainSpec(**kw, **{**base, knob: [base[knob], changed[knob], base[knob]]}), data)
    for k in a.params:
        torch.testing.assert_close(a.params[k][[0, 2]], b.params[k][[0, 2]], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a.params["layers.0.weight"][1], b.params["layers.0.weight"][1])


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_matches_torch_optim_on_a_single_module(optimizer: str) -> None:
    """One model of the shard follows exactly the nn.Module + torch.optim trajectory on its batches."""
    data = small(digits(), 200)
    seed, lr, wd, bs, epochs = 5, 1e-2, 1e-2, 32, 2
    spec = TrainSpec(
        config=MLP,
        n=2,
        seeds=[0, seed],
        epochs=epochs,
        lr=[1e-3, lr],
        weight_decay=wd,
        batch_size=bs,
        optimizer=optimizer,
    )
    got = final(spec, data)

    module = instantiate(MLP, init_state(MLP, seed)).train()
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optimizer]
    extra = {"momentum": 0.9} if optimizer == "sgd" else {}
    opt = cls(module.parameters(), lr=lr, weight_decay=wd, **extra)
    gen = torch.Generator().manual_seed(seed)
    subsets = training._subsets(len(data.y_train), [1.0], [gen])
    for _ in range(epochs):
        idx, _, _ = training._epoch_batches(subsets, bs, [gen])
        for batch in idx[0]:
            opt.zero_grad()
            F.cross_entropy(module(data.X_train[batch]), data.y_train[batch]).backward()
            opt.step()
    for k, v in module.state_dict().items():
        torch.testing.assert_close(got.params[k][1], v, rtol=1e-4, atol=1e-5)


def test_cnn_with_batchnorm_trains_and_tracks_batches() -> None:
    config = {"family": "cnn", "channels": [4, 8], "batchnorm": True, "pool": "max"}
    data = small(digits(images=True), 200)
    spec = TrainSpec(
        config=config,
        n=3,
        seeds=[0, 1, 2],
        epochs=2,
        checkpoint_epochs=[0, 2],
        lr=1e-2,
        data_fraction=[1.0, 0.5, 1.0],
        batch_size=32,
    )
    first, last = list(train_population(spec, data, progress=False))
    assert (last.metrics["train_loss"] < first.metrics["train_loss"]).all()
    tracked = last.params["norms.0.num_batches_tracked"]
    assert tracked.dtype == torch.int64 and tracked.tolist() == last.steps.long().tolist() == [12, 6, 12]
    assert not torch.equal(last.params["norms.0.running_mean"], first.params["norms.0.running_mean"])


def test_resnet_population_trains() -> None:
    config = {"family": "resnet", "width": 4, "blocks": [1, 1]}
    data = small(digits(images=True), 128)
    spec = TrainSpec(
        config=config, n=2, seeds=[0, 1], epochs=2, checkpoint_epochs=[0, 2], lr=1e-2, batch_size=32
    )
    first, last = list(train_population(spec, data, progress=False))
    assert (last.metrics["train_loss"] < first.metrics["train_loss"]).all()


def test_siren_population_fits_its_own_images() -> None:
    config = {"family": "siren", "in_features": 2, "hidden": [32, 32], "out_features": 1}
    side = 12
    grid = torch.linspace(-1, 1, side)
    coords = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).view(-1, 2)
    images = digits(images=True).X_train[:3].view(3, 64, 1)
    targets = F.interpolate(images.view(3, 1, 8, 8), size=side, mode="bilinear").view(3, -1, 1) * 2 - 1
    data = SimpleNamespace(coords=coords, targets=targets)
    spec = TrainSpec(
        config=config,
        n=3,
        seeds=[0, 1, 2],
        epochs=150,
        checkpoint_epochs=[0, 150],
        lr=1e-3,
        batch_size=10_000,
        task="regression",
    )
    first, last = list(train_population(spec, data, progress=False))
    assert set(last.metrics) == {"train_loss", "psnr"}
    assert (last.metrics["psnr"] > first.metrics["psnr"] + 10).all()
    # minibatched coordinates also work
    mini = TrainSpec(**{**spec.to_dict(), "epochs": 2, "checkpoint_epochs": [2], "batch_size": 48})
    assert run_shard(mini, data)[0].metrics["train_loss"].shape == (3,)
    assert TrainSpec(**{**spec.to_dict(), "task": "inr"}).task == "regression"  # the recipes' name
    with pytest.raises(ConfigError):
        TrainSpec(**{**spec.to_dict(), "dropout": 0.1})


def test_finetune_starts_from_parents() -> None:
    data = small(digits())
    spec = TrainSpec(config=MLP, n=2, seeds=[0, 1], epochs=1, lr=3e-3)
    parents = final(spec, data).params
    zero = TrainSpec(config=MLP, n=2, seeds=[5, 6], epochs=0, checkpoint_epochs=[0])
    (start,) = list(finetune(zero, data, parents, progress=False))
    assert all(torch.equal(start.params[k], parents[k]) for k in parents)
    child = list(
        finetune(
            TrainSpec(**{**zero.to_dict(), "epochs": 1, "checkpoint_epochs": [1]}),
            data,
            parents,
            progress=False,
        )
    )[0]
    assert (child.params["layers.0.weight"] - parents["layers.0.weight"]).abs().max() < 0.1
    with pytest.raises(MismatchError):
        list(finetune(TrainSpec(config=MLP, n=3, seeds=[0, 1, 2], epochs=1), data, parents, progress=False))


def test_noisy_labels_change_exactly_the_requested_fraction() -> None:
    y = torch.randint(0, 10, (1000,))
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    noisy = training._noisy_labels(y, [0.0, 0.25, 1.0], 10, gens)
    assert (noisy != y).float().mean(1).tolist() == [0.0, 0.25, 1.0]


@pytest.mark.parametrize(
    "bad",
    [
        {"seeds": [0]},
        {"lr": [1e-3]},
        {"lr": -1.0},
        {"dropout": 1.0},
        {"optimizer": "lbfgs"},
        {"task": "ranking"},
        {"checkpoint_epochs": [5]},
        {"config": {"family": "nope"}},
    ],
)
def test_bad_specs_are_refused(bad: dict) -> None:
    with pytest.raises(ConfigError):
        TrainSpec(**{"config": MLP, "n": 2, "seeds": [0, 1], "epochs": 2, **bad})


def test_bad_data_is_refused() -> None:
    data = small(digits())
    spec = TrainSpec(config={**MLP, "out_features": 5}, n=1, seeds=[0], epochs=1)
    with pytest.raises(MismatchError, match="out_features"):
        list(train_population(spec, data, progress=False))
    with pytest.raises(MismatchError, match="features"):
        list(
            train_population(
                TrainSpec(config=MLP, n=1, seeds=[0], epochs=1), small(digits(images=True)), progress=False
            )
        )
