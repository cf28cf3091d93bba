"""Catalog row builders and input checks shared by the store's write paths (no database access)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from zoo.errors import ConfigError
from zoo.jsonlimits import check_value
from zoo.models import architectures as archs
from zoo.names import check_name
from zoo.store.hashing import dtype_name
from zoo.store.packs import BlobLocation

_SPLITS = ("train", "val", "test")
_CHUNK = 500  # rows per IN (...) list


def chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def split_metric_name(name: str, split: str | None = None) -> tuple[str, str]:
    """``"test_acc"`` -> ``("acc", "test")``; an explicit ``split`` wins."""
    if split is not None:
        return name, split
    for s in _SPLITS:
        if name.startswith(s + "_") and len(name) > len(s) + 1:
            return name[len(s) + 1 :], s
    return name, ""


def raw_config(state: Mapping[str, torch.Tensor], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The architecture config of a state dict with no builder: its tensor names, dtypes and shapes."""
    cfg: dict[str, Any] = {
        "family": archs.RAW_FAMILY,
        "tensors": {k: [dtype_name(v.dtype), list(v.shape)] for k, v in state.items()},
    }
    if extra:
        cfg["hf_config"] = dict(extra)
    return cfg


def _json(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def check_entity_name(name: str, what: str) -> str:
    """A population or model name: a valid name (zoo.names) that is not all digits (it would read as an id)."""
    return check_name(name, what, allow_digits=False)


def check_tag(tag: str) -> str:
    return check_name(tag, "tag", max_len=200)


def blob_row(tid: str, t: torch.Tensor, loc: BlobLocation) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": tid, "pack_id": loc.pack_id, "offset": loc.offset, "nbytes": loc.nbytes, "dtype": loc.dtype,
        "shape": json.dumps(list(t.shape)), "numel": t.numel(), "l2": None, "mean": None, "std": None, "absmax": None,
    }  # fmt: skip
    if t.numel() and (t.is_floating_point() or t.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)):
        f = t.double()
        row["l2"] = _finite(f.norm())
        row["mean"] = _finite(f.mean())
        row["std"] = _finite(f.std()) if t.numel() > 1 else 0.0
        row["absmax"] = _finite(f.abs().max())
    return row


def _finite(x: torch.Tensor) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def hparam_row(mid: int, name: str, value: Any) -> dict[str, Any]:
    check_name(name, "hyperparameter")
    text = check_value(value, f"hyperparameter {name!r}")  # JSON-able, bounded in size and depth
    num = float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) else None
    if isinstance(value, bool):
        num = float(value)
    return {"model_id": mid, "name": name, "value": text, "value_num": num,
            "value_text": value if isinstance(value, str) else None}  # fmt: skip


def metric_rows(mid: int, metrics: Any, step: int | None) -> list[dict[str, Any]]:
    if not metrics:
        return []
    rows = _metric_rows_unchecked(mid, metrics, step)
    for r in rows:
        check_name(r["name"], "metric")
        if r["split"]:
            check_name(r["split"], "metric split")
    return rows


def _metric_rows_unchecked(mid: int, metrics: Any, step: int | None) -> list[dict[str, Any]]:
    rows = []
    if isinstance(metrics, Mapping):
        for k, v in metrics.items():
            name, split = split_metric_name(str(k))
            rows.append({"model_id": mid, "name": name, "split": split, "step": step, "value": _metric_value(k, v)})
    else:
        for m in metrics:
            if isinstance(m, Mapping):
                name, split = split_metric_name(m["name"], m.get("split"))
                rows.append({"model_id": mid, "name": name, "split": split, "step": m.get("step", step),
                             "value": _metric_value(name, m["value"])})  # fmt: skip
            else:
                name, split, st, value = m
                rows.append({"model_id": mid, "name": name, "split": split or "", "step": st, "value": _metric_value(name, value)})
    return rows


def _metric_value(name: Any, v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"metric {name!r} must be a number, got {v!r}") from None


def arch_mismatch_message(pop: str | None, pop_arch: str, pcfg: dict, cfg: dict) -> str:
    diff = []
    if pcfg.get("family") != cfg.get("family"):
        diff.append(f"family {pcfg.get('family')!r} vs {cfg.get('family')!r}")
    elif pcfg.get("family") == archs.RAW_FAMILY:
        a, b = pcfg.get("tensors", {}), cfg.get("tensors", {})
        miss, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        if miss:
            diff.append(f"missing tensors {miss[:3]}")
        if extra:
            diff.append(f"unexpected tensors {extra[:3]}")
        diff += [f"{k}: {a[k]} vs {b[k]}" for k in sorted(set(a) & set(b)) if a[k] != b[k]][:3]
    else:
        diff += [f"{k}: {pcfg.get(k)!r} vs {cfg.get(k)!r}" for k in sorted(set(pcfg) | set(cfg)) if pcfg.get(k) != cfg.get(k)][:4]
    return (
        f"population {pop!r} holds architecture {pop_arch!r}; this model differs ({'; '.join(diff) or 'config'}). "
        "Add it to another population, or pass the population's architecture."
    )
