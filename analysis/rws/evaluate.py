"""Corruption accuracy: clean and corrupted test accuracy of models, through the batched evaluation.

Two doors, one data path (``zoo.models.datasets.load_dataset(NAME, corruption=K, severity=S)``, i.e. digits-c
for digits):

* :func:`corruption_accuracy` on weights in memory (a stacked population, e.g. a clean model, its
  robust fine-tune and patched variants stacked together): one :func:`zoo.build.evaluate.evaluate_population`
  pass per (corruption, severity); nothing is written.
* :func:`evaluate_corruptions` on stored models: :meth:`zoo.Zoo.evaluate` per (corruption, severity),
  recorded as metrics ``acc``/``loss`` with split ``test/KIND/SEVERITY`` (and ``test`` for clean).

Both return a long DataFrame: ``model, corruption ("clean" or a kind), severity (0 for clean), acc, loss``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
from torch import Tensor

from zoo.errors import ConfigError
from zoo.progress import progress_bar

__all__ = ["corruption_names", "severity_list", "corruption_accuracy", "evaluate_corruptions", "summary"]

CLEAN = "clean"


def corruption_names(corruptions: str | Iterable[str] | None) -> list[str]:
    """Validated corruption kinds; None or ``"all"`` is every digits-c corruption. Unknown: ConfigError."""
    from zoo.models.datasets import DIGITS_C_CORRUPTIONS

    if corruptions is None or corruptions == "all" or (not isinstance(corruptions, str) and list(corruptions) == ["all"]):
        return list(DIGITS_C_CORRUPTIONS)
    items = [c.strip() for c in corruptions.split(",")] if isinstance(corruptions, str) else [str(c) for c in corruptions]
    bad = [c for c in items if c not in DIGITS_C_CORRUPTIONS]
    if bad or not items:
        raise ConfigError(f"unknown corruption(s) {bad or items}; valid corruptions: {', '.join(DIGITS_C_CORRUPTIONS)} "
                          "(or 'all')")  # fmt: skip
    return list(dict.fromkeys(items))


def severity_list(severities: int | Iterable[int] | None) -> list[int]:
    """Validated severities (1..5); None is ``[3]``."""
    if severities is None:
        return [3]
    items = [severities] if isinstance(severities, int) else list(severities)
    bad = [s for s in items if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5]
    if bad or not items:
        raise ConfigError(f"severities must be integers from 1 to 5, got {bad or items}")
    return list(dict.fromkeys(items))


@functools.lru_cache(maxsize=64)
def _data(dataset: str, root: str | None, corruption: str | None, severity: int | None, flat: bool,
          split: str = "test") -> tuple[Tensor, Tensor]:  # fmt: skip
    """The test split (digits-c when corrupted) or the validation split, corrupted the same way.

    The validation split is corrupted like the test split of digits-c: in [0, 1] pixel space, seed 0.
    """
    from zoo.models.datasets import load_dataset

    if split == "test":
        ds = load_dataset(dataset, root=root, corruption=corruption, severity=severity)
        ds = ds.flat() if flat else ds
        return ds.X_test, ds.y_test
    if split != "val":
        raise ConfigError(f"corruption accuracy is measured on split 'test' or 'val', got {split!r}")
    from zoo.models.corruptions import corrupt

    ds = load_dataset(dataset, root=root)
    X, y = ds.X_val, ds.y_val
    if corruption is not None:
        pix = ds.unnormalize(X).reshape(len(X), *ds.image_shape)
        X = ds.normalize(corrupt(pix, corruption, int(severity or 3), seed=0).reshape(len(X), -1)).reshape(X.shape)
    return (X.reshape(len(X), -1) if flat else X), y


def corruption_accuracy(
    config: Mapping[str, Any],
    params: Mapping[str, Tensor],
    *,
    corruptions: str | Iterable[str] | None = None,
    severities: int | Iterable[int] | None = None,
    dataset: str = "digits",
    dataset_root: str | None = None,
    clean: bool = True,
    split: str = "test",
) -> pd.DataFrame:
    """Test (or ``split="val"``: validation) accuracy of every model of a stacked population, clean and
    under each corruption.

    Shapes: params ``name -> [N, *shape]``. Returns one row per (model index, corruption, severity).
    """
    from zoo.build.evaluate import evaluate_population
    from zoo.models.architectures import input_shape, is_classifier

    if not is_classifier(config):
        raise ConfigError(f"corruption accuracy needs a classifier the zoo can run; {config.get('family')!r} models are not")
    kinds, sevs = corruption_names(corruptions), severity_list(severities)
    flat = len(input_shape(config)) == 1
    jobs: list[tuple[str | None, int | None]] = ([(None, None)] if clean else []) + [(k, s) for k in kinds for s in sevs]
    rows = []
    for kind, sev in progress_bar(jobs, desc="corruption accuracy", unit="test set", leave=False, disable=len(jobs) < 10):
        X, y = _data(dataset, dataset_root, kind, sev, flat, split)
        res = evaluate_population(config, params, X, y)
        for i, (a, lo) in enumerate(zip(res.accuracy.tolist(), res.loss.tolist(), strict=True)):
            rows.append({"model": i, "corruption": kind or CLEAN, "severity": sev or 0, "acc": a, "loss": lo})
    return pd.DataFrame(rows, columns=["model", "corruption", "severity", "acc", "loss"])


def evaluate_corruptions(
    zoo: Any,
    models: Sequence[int | str],
    *,
    corruptions: str | Iterable[str] | None = None,
    severities: int | Iterable[int] | None = None,
    dataset: str = "digits",
    dataset_root: str | None = None,
    record: bool = True,
) -> pd.DataFrame:
    """Clean and corrupted test accuracy of stored classifiers, recorded as metrics (``record``).

    Every model is checked first (an unknown model, one that is not an evaluable classifier, e.g. a
    raw state dict or a signature: :class:`~zoo.errors.ZooError`), so a refused call writes nothing.
    """
    from zoo.models.architectures import is_classifier

    kinds, sevs = corruption_names(corruptions), severity_list(severities)
    recs = [zoo.get(m) for m in models]
    for r in recs:
        if not is_classifier(r.arch_config):
            raise ConfigError(f"model {r.id} ({r.architecture}) is not a classifier the zoo can evaluate "
                              "(a raw state dict or a signature has no accuracy); give classifier models")  # fmt: skip
    ids = [r.id for r in recs]
    base = dataset.split("/")[0]
    named = "digits-c" if base.lower().replace("_", "-") == "digits" else base
    frames = []
    jobs: list[tuple[str | None, int | None]] = [(None, None)] + [(k, s) for k in kinds for s in sevs]
    for kind, sev in progress_bar(jobs, desc="evaluate on digits-c", unit="test set", leave=False, disable=len(jobs) < 10):
        name = base if kind is None else f"{named}/{kind}/{sev}"
        df = zoo.evaluate(ids, dataset=name, splits=("test",), dataset_root=dataset_root, record=record)
        frames.append(df.assign(corruption=kind or CLEAN, severity=sev or 0))
    out = pd.concat(frames, ignore_index=True).rename(columns={"model_id": "model"})
    return out[["model", "corruption", "severity", "acc", "loss"]]


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model: clean accuracy, mean corrupted accuracy, and one column per ``corruption/severity``."""
    wide = df.assign(col=[CLEAN if c == CLEAN else f"{c}/{s}" for c, s in zip(df["corruption"], df["severity"], strict=True)])
    table = wide.pivot_table(index="model", columns="col", values="acc", sort=False)
    corrupted = [c for c in table.columns if c != CLEAN]
    if corrupted:
        table.insert(0, "corrupted_mean", table[corrupted].mean(axis=1))
    if CLEAN in table.columns:
        table.insert(0, CLEAN, table.pop(CLEAN))
    table.columns.name = None
    return table.reset_index()
