"""Data sets (digits, fake MNIST / CIFAR-10 folders), INR targets and corruptions."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.errors import ConfigError, CorruptFileError, DatasetError, MismatchError, UnsafeFileError
from zoo.models.corruptions import CORRUPTIONS, corrupt
from zoo.models.datasets import available_datasets, inr_targets, load_dataset, read_idx

# ------------------------------------------------------------------------------------ helpers


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, array in files.items():
        data = _idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def _cifar_arrays(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072)).astype(np.uint8), [i % 10 for i in range(n)]


# -------------------------------------------------------------------------------------- digits


def test_available_datasets() -> None:
    assert available_datasets() == ["digits", "mnist", "fashion_mnist", "cifar10", "digits-c"]


def test_digits_default_shapes_and_normalisation() -> None:
    ds = load_dataset()
    n = len(ds.y_train) + len(ds.y_val) + len(ds.y_test)
    assert n == 1797
    assert ds.X_train.shape[1:] == (1, 8, 8) and ds.input_shape == (1, 8, 8)
    assert ds.X_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.num_classes == 10
    assert abs(len(ds.y_test) / n - 0.2) < 0.01 and abs(len(ds.y_val) / n - 0.15) < 0.01
    assert abs(float(ds.X_train.mean())) < 1e-4 and abs(float(ds.X_train.std()) - 1.0) < 1e-3
    raw = ds.unnormalize(ds.X_train)
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5
    # stratified: every class in every split
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert set(y.tolist()) == set(range(10))


def test_digits_split_fixed_by_seed() -> None:
    a, b, c = load_dataset(seed=1), load_dataset(seed=1), load_dataset(seed=2)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)


def test_flat_and_unnormalised() -> None:
    ds = load_dataset(flatten=True, normalize=False)
    assert ds.X_train.shape[1:] == (64,) and ds.input_shape == (64,) and ds.image_shape == (1, 8, 8)
    assert float(ds.X_train.min()) >= 0.0 and float(ds.X_train.max()) <= 1.0
    assert ds.mean is None


def test_unknown_dataset_lists_names() -> None:
    with pytest.raises(ConfigError, match="digits"):
        load_dataset("imagenet")


# -------------------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_from_folder(tmp_path: Path, gz: bool) -> None:
    _write_idx(tmp_path, gz=gz)
    ds = load_dataset("mnist", root=tmp_path, val_fraction=0.25, normalize=False)
    assert ds.X_train.shape[1:] == (1, 28, 28)
    assert len(ds.y_train) + len(ds.y_val) == 40 and len(ds.y_test) == 20
    assert float(ds.X_train.max()) <= 1.0


def test_mnist_torchvision_layout(tmp_path: Path) -> None:
    _write_idx(tmp_path / "FashionMNIST" / "raw", gz=True)
    ds = load_dataset("fashion_mnist", root=tmp_path)
    assert len(ds.y_test) == 20 and ds.name == "fashion_mnist"


def test_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("mnist", root=tmp_path / "nowhere")
    tmp_path.joinpath("train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", root=tmp_path)


def test_truncated_idx_is_corrupt(tmp_path: Path) -> None:
    _write_idx(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="truncated"):
        load_dataset("mnist", root=tmp_path)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(CorruptFileError, match="magic"):
        read_idx(bad)
    gz = tmp_path / "cut.gz"
    gz.write_bytes(gzip.compress(_idx_bytes(np.zeros((3, 2, 2))))[:-10])
    with pytest.raises(CorruptFileError):
        read_idx(gz)


# ------------------------------------------------------------------------------------ CIFAR-10


def test_cifar_binary(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        data, labels = _cifar_arrays(10, i)
        records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], data], axis=1)
        (folder / name).write_bytes(records.tobytes())
    ds = load_dataset("cifar10", root=tmp_path, normalize=False, val_fraction=0.2)
    assert ds.X_train.shape[1:] == (3, 32, 32) and ds.image_shape == (3, 32, 32)
    assert len(ds.y_train) + len(ds.y_val) == 50 and len(ds.y_test) == 10
    # the first record of test_batch.bin comes back pixel-exact, channel-major
    data, _ = _cifar_arrays(10, 5)
    expected = torch.from_numpy(data[0].reshape(3, 32, 32).astype(np.float32) / 255.0)
    assert torch.allclose(ds.X_test[0], expected)

    (folder / "test_batch.bin").write_bytes(records.tobytes()[:-7])
    with pytest.raises(CorruptFileError, match="truncated"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_python_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        data, labels = _cifar_arrays(10, i)
        batch = (
            {b"batch_label": b"x", b"labels": labels, b"data": data}
            if i % 2
            else {"labels": labels, "data": data}
        )
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2 + i % 4))
    ds = load_dataset("cifar10", root=tmp_path, normalize=False)
    assert len(ds.y_test) == 10 and ds.X_test.shape == (10, 3, 32, 32)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_pickle_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data, labels = _cifar_arrays(2, 0)
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels, "x": _Evil(marker)}))
    with pytest.raises(UnsafeFileError, match="system"):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()


def test_cifar_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cifar-10-batches-bin"):
        load_dataset("cifar10", root=tmp_path)


# ------------------------------------------------------------------------------------- INR targets


def test_inr_targets_digits() -> None:
    ds = load_dataset()
    inr = inr_targets(ds, n=7, seed=3)
    assert inr.coords.shape == (64, 2) and inr.targets.shape == (7, 64, 1)
    assert float(inr.coords.min()) == -1.0 and float(inr.coords.max()) == 1.0
    assert float(inr.targets.min()) >= -1.0 and float(inr.targets.max()) <= 1.0
    assert torch.equal(inr.labels, ds.y_train[inr.indices])
    # pixel p = row * W + col holds image[row, col]
    raw = ds.unnormalize(ds.X_train[inr.indices[0]].unsqueeze(0))[0, 0]
    assert torch.allclose(inr.targets[0, 8 * 2 + 5, 0], raw[2, 5] * 2 - 1, atol=1e-5)
    assert torch.equal(inr_targets(ds, n=7, seed=3).indices, inr.indices)
    unit = inr_targets(ds, split="test", value_range=(0.0, 1.0))
    assert unit.targets.shape[0] == len(ds.y_test) and float(unit.targets.min()) >= 0.0
    with pytest.raises(ConfigError):
        inr_targets(ds, n=0)


# ------------------------------------------------------------------------------------- corruptions


@pytest.fixture(scope="module")
def clean() -> torch.Tensor:
    return load_dataset(normalize=False).X_test[:64]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corruption_deterministic_shape_and_monotone(clean: torch.Tensor, kind: str) -> None:
    out = corrupt(clean, kind, severity=3, seed=5)
    assert out.shape == clean.shape and out.dtype == clean.dtype
    assert torch.equal(out, corrupt(clean, kind, severity=3, seed=5))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    dist = [float((corrupt(clean, kind, severity=s, seed=0) - clean).norm()) for s in range(1, 6)]
    assert all(a < b for a, b in zip(dist, dist[1:], strict=False)), dist


def test_corruption_in_normalised_space() -> None:
    ds = load_dataset()
    x = ds.X_test[:16]
    out = corrupt(x, "contrast", severity=2, mean=ds.mean, std=ds.std)
    expected = ds.normalize(corrupt(ds.unnormalize(x), "contrast", severity=2))
    assert torch.allclose(out, expected, atol=1e-5)


def test_corruption_bad_arguments(clean: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="gaussian_noise"):
        corrupt(clean, "fog")
    with pytest.raises(ConfigError, match="severity"):
        corrupt(clean, "contrast", severity=6)
    with pytest.raises(MismatchError):
        corrupt(clean.flatten(1), "contrast")
