"""digits-c: the digits test split corrupted by each corruption at severities 1..5.

Asserted: the same arguments give the same tensors, train/val stay clean, the pixel distance to the
clean test split grows with severity, a trained model's accuracy does not rise with severity (on
average over the corruptions), the one-string name works through ``Zoo.evaluate`` (and is recorded as
its own split), and bad names are ConfigErrors listing the valid ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zoo import Zoo
from zoo.build.evaluate import evaluate_population
from zoo.build.training import TrainSpec, train_population
from zoo.errors import ConfigError
from zoo.models.datasets import DIGITS_C_CORRUPTIONS, available_datasets, load_dataset

MLP = {"family": "mlp", "in_features": 64, "hidden": [32], "out_features": 10}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models train faster on one thread



@pytest.fixture(scope="module")
def clean():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(clean):
    spec = TrainSpec(config=MLP, n=3, seeds=[0, 1, 2], epochs=6, lr=3e-3)
    return list(train_population(spec, clean.flat(), progress=False))[-1].params


def test_listed_and_all_corruptions_known():
    from zoo.models.corruptions import CORRUPTIONS

    assert "digits-c" in available_datasets()
    assert set(DIGITS_C_CORRUPTIONS) == set(CORRUPTIONS)
    assert {"rotate", "occlusion", "gaussian_noise", "shot_noise", "gaussian_blur", "contrast",
            "brightness", "pixelate"} <= set(DIGITS_C_CORRUPTIONS)  # fmt: skip


@pytest.mark.parametrize("kind", DIGITS_C_CORRUPTIONS)
def test_deterministic_shapes_and_clean_train(clean, kind):
    a = load_dataset("digits-c", corruption=kind, severity=3)
    b = load_dataset(f"digits-c/{kind}/3")
    assert a.name == "digits_c" and a.corruption == kind and a.severity == 3
    assert torch.equal(a.X_test, b.X_test) and torch.equal(a.y_test, clean.y_test)
    assert a.X_test.shape == clean.X_test.shape == (360, 1, 8, 8)
    assert torch.equal(a.X_train, clean.X_train) and torch.equal(a.X_val, clean.X_val)
    assert torch.equal(a.mean, clean.mean)  # normalised with the clean training statistics
    assert not torch.equal(a.X_test, clean.X_test)
    other = load_dataset("digits-c", corruption=kind, severity=3, corruption_seed=1)
    if kind in ("gaussian_noise", "shot_noise", "impulse_noise", "rotate", "occlusion"):
        assert not torch.equal(other.X_test, a.X_test)  # the seed drives the random ones
    else:
        assert torch.equal(other.X_test, a.X_test)


@pytest.mark.parametrize("kind", DIGITS_C_CORRUPTIONS)
def test_pixel_distance_grows_with_severity(clean, kind):
    d = [float((load_dataset("digits-c", corruption=kind, severity=s).X_test - clean.X_test).norm()) for s in range(1, 6)]
    assert all(x < y for x, y in zip(d, d[1:], strict=False)), d


def test_accuracy_does_not_rise_with_severity(clean, trained):
    acc = torch.zeros(len(DIGITS_C_CORRUPTIONS), 5)
    for i, kind in enumerate(DIGITS_C_CORRUPTIONS):
        for s in range(1, 6):
            ds = load_dataset("digits-c", corruption=kind, severity=s).flat()
            acc[i, s - 1] = evaluate_population(MLP, trained, ds.X_test, ds.y_test).accuracy.mean()
    clean_acc = float(evaluate_population(MLP, trained, clean.flat().X_test, clean.y_test).accuracy.mean())
    mean = acc.mean(0)
    assert clean_acc > 0.9
    assert all(float(a) >= float(b) - 0.01 for a, b in zip(mean, mean[1:], strict=False)), mean
    assert float(mean[-1]) < clean_acc - 0.15  # severity 5 really hurts
    assert float(acc[:, -1].min()) < 0.6  # and some corruption badly


def test_evaluate_records_a_separate_split(tmp_path: Path, trained):
    z = Zoo.open(tmp_path / "zoo")
    try:
        rec = z.add({k: v[0] for k, v in trained.items()}, arch=MLP, name="m")
        clean_df = z.evaluate([rec.id], dataset="digits")
        bad_df = z.evaluate([rec.id], dataset="digits-c/gaussian_noise/5")
        assert list(bad_df["split"]) == ["test/gaussian_noise/5"]
        assert float(bad_df["acc"][0]) < float(clean_df["acc"][0])
        assert z.metrics(rec.id).query("split == 'test'")["value"].notna().all()
        m = z.metrics(rec.id)
        assert set(m["split"]) >= {"test", "test/gaussian_noise/5"}
    finally:
        z.close()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "digits-c"}, "valid corruptions: gaussian_noise"),
        ({"name": "digits-c", "corruption": "fog"}, "valid corruptions: .*occlusion"),
        ({"name": "digits-c/fog/3"}, "valid corruptions"),
        ({"name": "digits-c", "corruption": "rotate", "severity": 6}, "severity"),
        ({"name": "digits-c/rotate/high"}, "severity"),
        ({"name": "digits", "severity": 2}, "without a corruption"),
        ({"name": "digitz-c"}, "valid names: .*digits-c"),
    ],
)
def test_bad_names_are_config_errors(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        load_dataset(**kwargs)
