"""The generators' populations: one shared initialisation (``init_seed``) and spawned runs (a fine-tune
recipe forking one trunk), as p-diff-style zoos are built; and the built-in recipes that use them."""

from __future__ import annotations

import pytest
import torch

from zoo.build.builder import build, plan_runs
from zoo.build.recipes import Recipe
from zoo.build.training import TrainSpec, train_population
from zoo.errors import ConfigError

CNN = {"family": "cnn", "in_channels": 1, "image_size": 8, "channels": [2, 4], "kernel_size": 3, "out_features": 10}


class _Data:
    """A tiny image classification set (random, enough to see batch orders differ)."""

    def __init__(self, n: int = 40) -> None:
        g = torch.Generator().manual_seed(0)
        self.X_train, self.y_train = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
        self.X_val, self.y_val = self.X_train[:8], self.y_train[:8]
        self.X_test, self.y_test = self.X_train[:8], self.y_train[:8]


def _checkpoints(**kw) -> list:
    spec = TrainSpec(config=CNN, n=3, seeds=[1, 2, 3], epochs=1, checkpoint_epochs=[0, 1], lr=0.05, batch_size=8, **kw)
    return list(train_population(spec, _Data(), progress=False))


def test_shared_init_seed_starts_every_model_from_the_same_weights_and_trains_them_apart(one_thread) -> None:
    start, end = _checkpoints(init_seeds=[7, 7, 7])
    for k, v in start.params.items():
        assert torch.equal(v[0], v[1]) and torch.equal(v[0], v[2]), k  # one init
    w = end.params["convs.0.weight"]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])  # own batch orders
    own = _checkpoints()[0].params["convs.0.weight"]  # without init_seeds each seed draws its own init
    assert not torch.equal(own[0], own[1])


def test_init_seed_is_the_init_of_that_seed_and_leaves_the_data_order_to_the_run_seed(one_thread) -> None:
    shared = _checkpoints(init_seeds=[1, 1, 1])
    plain = _checkpoints()
    for k in shared[1].params:  # model 0: init_seed 1 == seed 1, so it trains exactly as before
        torch.testing.assert_close(shared[1].params[k][0], plain[1].params[k][0], rtol=0, atol=0)
        assert torch.equal(shared[0].params[k][2], plain[0].params[k][0])  # model 2 starts from seed 1's init


@pytest.mark.parametrize("bad", [[1, 2], [-1, 0, 0]])
def test_init_seeds_of_the_wrong_length_or_sign_are_refused(bad) -> None:
    with pytest.raises(ConfigError, match="init_seeds"):
        TrainSpec(config=CNN, n=3, seeds=[1, 2, 3], epochs=1, init_seeds=bad)


def test_recipe_init_seed_builds_one_shared_init_and_records_it(zoo, one_thread) -> None:
    r = Recipe.from_dict({"name": "shared-cnn", "arch": CNN, "epochs": 1, "checkpoint_epochs": [0, 1],
                          "search": {"mode": "grid", "seeds": 3, "params": {"lr": [0.01], "init_seed": [5]}}})  # fmt: skip
    assert [(p.point["seed"], p.point["init_seed"]) for p in plan_runs(r)] == [(0, 5), (1, 5), (2, 5)]
    build(zoo, r, progress=False)
    df = zoo.population("shared-cnn").df()
    assert sorted(df["hp_init_seed"].astype(int)) == [5] * 6
    first = df[df["step"] == 0]["id"].astype(int).tolist()
    s = zoo.stack(first)
    assert all(torch.equal(v[0], v[i]) for v in s.values() for i in (1, 2))


def test_the_generators_cnn_recipes_load_and_plan_as_documented() -> None:
    shared = Recipe.load("digits-cnn-shared")
    runs = plan_runs(shared)
    assert len(runs) == 250 and {r.point["init_seed"] for r in runs} == {0} and len({r.point["seed"] for r in runs}) == 250
    trunk, spawn = Recipe.load("digits-cnn-trunk"), Recipe.load("digits-cnn-spawn")
    assert len(plan_runs(trunk)) == 1 and trunk.epochs == 1
    assert spawn.finetune is not None and spawn.finetune.parents == {"population": "digits-cnn-trunk", "final": True, "limit": 1}
    assert spawn.arch == trunk.arch == shared.arch and len(spawn.draws()) == 250


def test_spawning_without_its_trunk_is_refused_and_writes_nothing(zoo) -> None:
    from zoo.errors import NotFoundError

    before = zoo.models().count()
    with pytest.raises(NotFoundError, match="build the parent population first"):
        build(zoo, "digits-cnn-spawn", progress=False)
    assert zoo.models().count() == before == 0
