"""Image data sets for training and evaluating the models of a zoo, read offline.

* ``"digits"``: scikit-learn's bundled 8x8 digits (1,797 images). Always available, the default.
* ``"mnist"`` and ``"fashion_mnist"``: the standard IDX files (``train-images-idx3-ubyte`` ...,
  gzipped or not) from a local folder; the torchvision layout ``root/MNIST/raw/`` works too.
* ``"digits-c"``: digits with its *test* split corrupted (a corruption benchmark after CIFAR-10-C):
  ``load_dataset("digits-c", corruption="gaussian_noise", severity=3)``, or by one name,
  ``"digits-c/gaussian_noise/3"`` (what ``weightzoo eval --dataset`` takes). Train and validation
  stay clean. Any data set takes ``corruption=``/``severity=`` the same way.
* ``"cifar10"``: the binary version (``cifar-10-batches-bin/``) or the python version
  (``cifar-10-batches-py/``), the latter read with a restricted unpickler that runs no code.

Nothing is ever downloaded. Splits are stratified and fixed by ``seed``; images are scaled to
[0, 1] and (by default) normalised per channel with the *training* split's mean and std, which
are kept on the :class:`Dataset` so that raw pixels can be recovered (:meth:`Dataset.unnormalize`).

:func:`inr_targets` turns images into implicit-neural-representation targets (one network per
image): a shared coordinate grid and each image's pixel values.

Shapes:
    ``X_*``: ``[n, C, H, W]`` float32 (or ``[n, C*H*W]`` after :meth:`Dataset.flat`);
    ``y_*``: ``[n]`` int64.
"""

from __future__ import annotations

import gzip
import importlib
import io
import pickle
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.errors import (
    ConfigError,
    CorruptFileError,
    DatasetError,
    MismatchError,
    NotFoundError,
    UnsafeFileError,
)
from zoo.settings import default_root

__all__ = [
    "DIGITS_C_CORRUPTIONS",
    "Dataset",
    "INRData",
    "available_datasets",
    "inr_targets",
    "load_dataset",
    "read_idx",
    "safe_unpickle",
]


@dataclass
class Dataset:
    """A data set split into train / validation / test tensors.

    ``input_shape`` is the shape of one row of ``X_*`` (``(1, 8, 8)`` for digits images,
    ``(64,)`` after :meth:`flat`); ``image_shape`` is always the ``(C, H, W)`` of the images.
    ``mean`` / ``std`` (``[C]``) are the per-channel statistics the pixels were normalised with,
    or ``None`` when ``X`` holds raw [0, 1] pixels.
    """

    name: str
    X_train: Tensor
    y_train: Tensor
    X_val: Tensor
    y_val: Tensor
    X_test: Tensor
    y_test: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    image_shape: tuple[int, ...] = ()
    mean: Tensor | None = None
    std: Tensor | None = None
    corruption: str | None = None  # the test split's corruption (digits-c), else None
    severity: int | None = None

    def __post_init__(self) -> None:
        if not self.image_shape:  # built by hand from image tensors: the images are the inputs
            self.image_shape = tuple(self.input_shape)

    def for_architecture(self, config: Mapping[str, Any]) -> Dataset:
        """The data laid out as ``config``'s models take it: flattened for families whose input is a
        feature vector (:func:`zoo.models.architectures.input_shape` of rank 1), as images otherwise."""
        from zoo.models.architectures import input_shape

        return self.flat() if len(input_shape(config)) == 1 else self

    def flat(self) -> Dataset:
        """The same data with every ``X`` flattened to ``[n, features]`` (for MLPs)."""

        def f(x: Tensor) -> Tensor:
            return x.reshape(x.shape[0], -1)

        features = int(np.prod(self.image_shape))
        return replace(
            self,
            X_train=f(self.X_train),
            X_val=f(self.X_val),
            X_test=f(self.X_test),
            input_shape=(features,),
        )

    def split(self, split: str) -> tuple[Tensor, Tensor]:
        """``(X, y)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if split not in ("train", "val", "test"):
            raise ConfigError(f"unknown split {split!r}; use 'train', 'val' or 'test'")
        return getattr(self, f"X_{split}"), getattr(self, f"y_{split}")

    def unnormalize(self, x: Tensor) -> Tensor:
        """Map normalised inputs (any shape ``[n, ...]`` of this data set) back to [0, 1] pixels."""
        if self.mean is None or self.std is None:
            return x
        shape = x.shape
        img = x.reshape(shape[0], *self.image_shape)
        mean, std = self.mean.view(1, -1, 1, 1), self.std.view(1, -1, 1, 1)
        return (img * std + mean).reshape(shape)

    def normalize(self, x: Tensor) -> Tensor:
        """Map [0, 1] pixels to this data set's normalised space (the inverse of :meth:`unnormalize`)."""
        if self.mean is None or self.std is None:
            return x
        shape = x.shape
        img = x.reshape(shape[0], *self.image_shape)
        mean, std = self.mean.view(1, -1, 1, 1), self.std.view(1, -1, 1, 1)
        return ((img - mean) / std).reshape(shape)


_LOADERS: dict[
    str, Callable[[Path | None], tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]
]


#: the corruptions of the digits-c benchmark (all of :data:`zoo.models.corruptions.CORRUPTIONS`), severities 1..5
DIGITS_C_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "contrast", "brightness", "pixelate",
    "rotate", "occlusion",
)  # fmt: skip
_CORRUPTED = {"digits_c": "digits"}  # benchmark name -> the clean data set it corrupts


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset` (only ``"digits"`` and ``"digits-c"`` need no local files)."""
    return [*_LOADERS, "digits-c"]


def _parse_name(name: str, corruption: str | None, severity: int | None) -> tuple[str, str | None, int | None]:
    """``"digits-c/gaussian_noise/3"`` -> ``("digits_c", "gaussian_noise", 3)`` (arguments win if both given)."""
    if not isinstance(name, str):
        raise ConfigError(f"a data set name must be a string, got {name!r}")
    base, *rest = name.strip().split("/")
    key = base.strip().lower().replace("-", "_")
    key = {"fashionmnist": "fashion_mnist", "cifar": "cifar10", "cifar_10": "cifar10"}.get(key, key)
    if len(rest) > 2:
        raise ConfigError(f"data set {name!r}: give NAME, NAME/CORRUPTION or NAME/CORRUPTION/SEVERITY")
    if rest and corruption is None:
        corruption = rest[0]
    if len(rest) == 2 and severity is None:
        try:
            severity = int(rest[1])
        except ValueError:
            raise ConfigError(f"data set {name!r}: the severity {rest[1]!r} must be an integer from 1 to 5") from None
    return key, corruption, severity


def load_dataset(
    name: str = "digits",
    *,
    root: str | Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    flatten: bool = False,
    normalize: bool = True,
    corruption: str | None = None,
    severity: int | None = None,
    corruption_seed: int = 0,
) -> Dataset:
    """Load a data set, split it and (optionally) normalise it.

    Args:
        name: one of :func:`available_datasets`.
        root: folder holding the data set's files (not needed for ``"digits"``). Defaults to
            ``<zoo root>/datasets/<name>``.
        seed: fixes the stratified splits: the same seed always gives the same split.
        val_fraction: fraction held out for validation: of all examples for data sets without an
            official test split (digits), of the official training split otherwise.
        test_fraction: fraction held out for testing, used only by data sets without an official
            test split (digits).
        flatten: return ``X`` as ``[n, features]`` (see :meth:`Dataset.flat`).
        normalize: subtract the training split's per-channel mean and divide by its std.
        corruption, severity: corrupt the *test* split with :func:`zoo.models.corruptions.corrupt` (one of
            :data:`DIGITS_C_CORRUPTIONS`, severity 1..5, default 3); required for ``"digits-c"``.
            The name may carry them: ``"digits-c/rotate/4"``.
        corruption_seed: seeds the random corruptions (noise, rotation signs, occluder positions).
    """
    key, corruption, severity = _parse_name(name, corruption, severity)
    if key in _CORRUPTED:
        if corruption is None:
            raise ConfigError(
                f"data set {name!r} needs a corruption: load_dataset('digits-c', corruption=..., severity=1..5) or "
                f"'digits-c/CORRUPTION/SEVERITY'; valid corruptions: {', '.join(DIGITS_C_CORRUPTIONS)}"
            )
        key = _CORRUPTED[key]
    if key not in _LOADERS:
        raise ConfigError(f"unknown data set {name!r}; valid names: {', '.join(available_datasets())}")
    if corruption is not None:
        from zoo.models.corruptions import CORRUPTIONS

        if corruption not in CORRUPTIONS:
            raise ConfigError(f"unknown corruption {corruption!r}; valid corruptions: {', '.join(CORRUPTIONS)}")
        severity = 3 if severity is None else severity
        if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
            raise ConfigError(f"severity must be an integer from 1 to 5, got {severity!r}")
    elif severity is not None:
        raise ConfigError(f"severity={severity!r} given without a corruption; valid corruptions: {', '.join(DIGITS_C_CORRUPTIONS)}")
    for label, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ConfigError(f"{label} must be in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError("val_fraction + test_fraction must leave some training data (sum < 1)")

    folder = Path(root).expanduser() if root is not None else None
    if folder is None and key != "digits":
        folder = default_root() / "datasets" / key
    x_train, y_train, x_test, y_test = _LOADERS[key](folder)

    if x_test is None or y_test is None:  # no official test split: carve one out, stratified
        x_train, x_test, y_train, y_test = _stratified_split(x_train, y_train, test_fraction, seed)
        val_of_rest = val_fraction / (1.0 - test_fraction)
    else:
        val_of_rest = val_fraction
    x_train, x_val, y_train, y_val = _stratified_split(x_train, y_train, val_of_rest, seed + 1)

    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x_train, x_val, x_test)]
    if corruption is not None:  # in [0, 1] pixel space, before normalisation
        from zoo.models.corruptions import corrupt

        tensors[2] = corrupt(tensors[2], corruption, severity, seed=corruption_seed)  # type: ignore[arg-type]
    labels = [torch.from_numpy(np.asarray(a, dtype=np.int64)) for a in (y_train, y_val, y_test)]
    mean = std = None
    if normalize:
        mean = tensors[0].mean(dim=(0, 2, 3))
        std = tensors[0].std(dim=(0, 2, 3)).clamp_min(1e-6)
        tensors = [(t - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1) for t in tensors]
    image_shape = tuple(int(s) for s in tensors[0].shape[1:])
    ds = Dataset(
        name=key if corruption is None else ("digits_c" if key == "digits" else key + "_c"),
        X_train=tensors[0],
        y_train=labels[0],
        X_val=tensors[1],
        y_val=labels[1],
        X_test=tensors[2],
        y_test=labels[2],
        num_classes=int(max(int(lab.max()) for lab in labels if lab.numel()) + 1),
        input_shape=image_shape,
        image_shape=image_shape,
        mean=mean,
        std=std,
        corruption=corruption,
        severity=severity,
    )
    return ds.flat() if flatten else ds


def _stratified_split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``(x, y)`` into ``(x_a, x_b, y_a, y_b)`` with ``fraction`` of each class in ``b``."""
    from sklearn.model_selection import train_test_split

    if fraction <= 0.0:
        return x, x[:0], y, y[:0]
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 and round(fraction * len(y)) >= len(counts) else None
    xa, xb, ya, yb = train_test_split(x, y, test_size=fraction, random_state=seed, stratify=stratify)
    return xa, xb, ya, yb


# ----------------------------------------------------------------------------------------- digits


def _load_digits(_root: Path | None) -> tuple[np.ndarray, np.ndarray, None, None]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return images, bunch.target.astype(np.int64), None, None


# ---------------------------------------------------------------------------- MNIST (IDX format)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (MNIST's format), gzipped (``.gz``) or not, checking magic and size.

    Raises:
        NotFoundError: the file does not exist.
        CorruptFileError: a bad magic number, a truncated file or trailing bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"IDX file {path} does not exist")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptFileError(f"{path} is not a readable gzip file ({exc}); re-download it") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise CorruptFileError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise CorruptFileError(f"{path}: IDX header is truncated; re-download the file")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise CorruptFileError(
            f"{path} is {what}: {len(raw)} bytes, expected {expected} for shape {dims}; re-download it"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).copy()


def _find_idx(folders: list[Path], stem: str) -> Path | None:
    """The first existing ``stem`` file (``-idx`` / ``.idx`` spelling, with or without ``.gz``)."""
    alt = stem.replace("-idx", ".idx")
    for folder in folders:
        for candidate in (stem, stem + ".gz", alt, alt + ".gz"):
            if (folder / candidate).is_file():
                return folder / candidate
    return None


def _idx_loader(torchvision_name: str) -> Callable[[Path | None], tuple[np.ndarray, ...]]:
    def load(root: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        assert root is not None
        if not root.is_dir():
            raise DatasetError(
                f"data folder {root} does not exist; put the four IDX files (train-images-idx3-ubyte, "
                f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, .gz or not) "
                f"there, or pass root= pointing at them"
            )
        folders = [root, root / torchvision_name / "raw", root / torchvision_name, root / "raw"]
        stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
        stems += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
        paths = {s: _find_idx(folders, s) for s in stems}
        missing = [s for s, p in paths.items() if p is None]
        if missing:
            raise DatasetError(
                f"missing IDX file(s) {', '.join(missing)} (optionally .gz) in {root} "
                f"(also looked in {root / torchvision_name / 'raw'}); copy the standard files there"
            )
        arrays = [read_idx(paths[s]) for s in stems]  # type: ignore[arg-type]
        out = []
        for images, labels, split in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "t10k")):
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise CorruptFileError(
                    f"{split} images {images.shape} and labels {labels.shape} in {root} do not match; "
                    "re-download the files"
                )
            out += [(images.astype(np.float32) / 255.0)[:, None], labels.astype(np.int64)]
        return out[0], out[1], out[2], out[3]

    return load


# --------------------------------------------------------------------------------------- CIFAR-10

_CIFAR_RECORD = 1 + 3 * 32 * 32


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = path.read_bytes()
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise CorruptFileError(
            f"{path} has {len(raw)} bytes, not a whole number of {_CIFAR_RECORD}-byte CIFAR-10 "
            "records; the file is truncated or not CIFAR-10 binary data: re-download it"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise CorruptFileError(f"{path} holds labels above 9; it is not CIFAR-10 binary data")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _numpy_core(module: str) -> Any:
    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:  # numpy < 2
        return importlib.import_module(f"numpy.core.{module}")


def _safe_globals() -> dict[tuple[str, str], Any]:
    """The only globals a pickled dict of numpy arrays needs; nothing here can run user code."""
    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer
    import codecs

    allowed[("_codecs", "encode")] = codecs.encode  # how Python 3 protocol-2 pickles spell bytes
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays and plain containers, never calls other code."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source
        self._allowed = _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeFileError(
                f"{self._source} refers to {module}.{name}, which is not a numpy array type: the file "
                "could run arbitrary code and was not loaded. Use data from a trusted source."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"{self._source} uses pickle persistent ids; refused (not plain data)")


def safe_unpickle(path: str | Path) -> Any:
    """Unpickle ``path`` allowing only numpy arrays, numbers, strings, lists and dicts.

    Raises:
        UnsafeFileError: the pickle refers to any other global (it would run code); nothing ran.
        CorruptFileError: the file is truncated or not a pickle.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return _RestrictedUnpickler(fh, str(path)).load()  # type: ignore[arg-type]
    except UnsafeFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise CorruptFileError(f"{path} is not a valid pickle ({type(exc).__name__}: {exc})") from exc


def _read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path} does not hold a dict; it is not a CIFAR-10 python batch")
    batch = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in batch or "labels" not in batch:
        raise CorruptFileError(f"{path} lacks 'data' or 'labels'; it is not a CIFAR-10 python batch")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise CorruptFileError(
            f"{path}: data {data.shape} / labels {labels.shape} are not CIFAR-10 shaped ([n, 3072], [n])"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(root: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    assert root is not None
    bin_names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    py_names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    reader: Callable[[Path], tuple[np.ndarray, np.ndarray]] | None = None
    for folder, names, read in (
        (root / "cifar-10-batches-bin", bin_names, _read_cifar_bin),
        (root, bin_names, _read_cifar_bin),
        (root / "cifar-10-batches-py", py_names, _read_cifar_py),
        (root, py_names, _read_cifar_py),
    ):
        if (folder / names[-1]).is_file():
            reader = read
            break
    if reader is None:
        raise DatasetError(
            f"no CIFAR-10 files under {root}: expected cifar-10-batches-bin/ (data_batch_1..5.bin, "
            f"test_batch.bin) or cifar-10-batches-py/ (data_batch_1..5, test_batch); extract the "
            f"official archive there or pass root= pointing at it"
        )
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DatasetError(f"CIFAR-10 folder {folder} lacks {', '.join(missing)}; extract the full archive")
    parts = [reader(folder / n) for n in names]
    x_train = np.concatenate([p[0] for p in parts[:-1]]).astype(np.float32) / 255.0
    y_train = np.concatenate([p[1] for p in parts[:-1]])
    return x_train, y_train, parts[-1][0].astype(np.float32) / 255.0, parts[-1][1]


_LOADERS = {
    "digits": _load_digits,
    "mnist": _idx_loader("MNIST"),
    "fashion_mnist": _idx_loader("FashionMNIST"),
    "cifar10": _load_cifar10,
}


# ------------------------------------------------------------------------------------ INR targets


@dataclass
class INRData:
    """Targets for implicit neural representations: one network fits one image.

    Shapes:
        coords: ``[P, 2]`` with ``P = H * W``; ``coords[p] = (row, col)`` of pixel
            ``p = row * W + col``, each scaled linearly to [-1, 1].
        targets: ``[n, P, C]`` pixel values of image ``i`` at ``coords`` (range: see
            :func:`inr_targets`).
        labels: ``[n]`` class of each image; indices: ``[n]`` position of each image in its split.
    """

    coords: Tensor
    targets: Tensor
    labels: Tensor
    indices: Tensor
    image_shape: tuple[int, int, int]


def inr_targets(
    dataset: Dataset,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> INRData:
    """Per-image INR targets (e.g. one SIREN per digits image).

    Pixels are first brought back to [0, 1] (undoing the data set's normalisation), then mapped
    linearly to ``value_range``: [-1, 1] by default (the SIREN convention), ``(0.0, 1.0)`` for
    raw intensities.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        n: how many images; ``None`` takes all. A subset is drawn at random (fixed by ``seed``)
            and returned in split order.
    """
    x, y = dataset.split(split)
    total = x.shape[0]
    if n is None:
        idx = torch.arange(total)
    else:
        if not 0 < n <= total:
            raise ConfigError(f"n must be between 1 and {total} (the size of split {split!r}), got {n}")
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(total, generator=gen)[:n].sort().values
    if len(dataset.image_shape) != 3:
        raise MismatchError(f"inr_targets needs images (C, H, W); {dataset.name} has {dataset.image_shape}")
    c, h, w = dataset.image_shape
    pixels = dataset.unnormalize(x[idx]).reshape(len(idx), c, h, w).clamp(0.0, 1.0)
    lo, hi = value_range
    values = pixels * (hi - lo) + lo
    rows = torch.linspace(-1.0, 1.0, h) if h > 1 else torch.zeros(1)
    cols = torch.linspace(-1.0, 1.0, w) if w > 1 else torch.zeros(1)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(h * w, 2)
    targets = values.permute(0, 2, 3, 1).reshape(len(idx), h * w, c).contiguous()
    return INRData(coords=grid, targets=targets, labels=y[idx].clone(), indices=idx, image_shape=(c, h, w))
