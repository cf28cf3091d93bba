"""Writing models out as Hugging Face-style folders, model cards, and pushing them to the Hub.

:func:`write_hf_folder` writes ``model.safetensors`` (or shards plus
``model.safetensors.index.json``), ``config.json`` and ``README.md`` atomically: everything goes
into a temporary folder next to ``out_dir`` that is renamed into place at the end, so a crash
never leaves a half-written model. :func:`zoo.io.ingest.read_checkpoint` reads the result back.
Where it may write, and what ``overwrite`` may replace, is decided by
:func:`zoo.io.outpath.guard_output_dir`: never a zoo, never a folder weightzoo did not write.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from zoo.errors import ConfigError, NotFoundError, StorageError, ZooError
from zoo.io.outpath import MARKER, guard_output_dir, staged_output_dir
from zoo.settings import offline as offline_setting

__all__ = ["model_card", "push_to_hub", "write_hf_folder"]

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def write_hf_folder(
    out_dir: str | Path,
    state_dict: Mapping[str, Tensor],
    *,
    config: dict[str, Any] | None = None,
    card: str | None = None,
    max_shard_size: int | None = None,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a state dict as a Hugging Face-style model folder and return the folder.

    Args:
        out_dir: the folder to create. It must not exist or be empty; with ``overwrite`` it may
            also be a folder weightzoo wrote (it carries :data:`zoo.io.outpath.MARKER`). Zoos, the
            home and current folders and their ancestors are refused (:mod:`zoo.io.outpath`).
        state_dict: ``{name: tensor}``; tensors are moved to CPU and made contiguous, and tensors
            sharing storage are cloned (safetensors refuses shared storage).
        config: written as ``config.json`` (``{}`` when omitted).
        card: ``README.md`` text (see :func:`model_card`); a minimal card when omitted.
        max_shard_size: in bytes; above it the weights are split into
            ``model-00001-of-0000N.safetensors`` files plus ``model.safetensors.index.json``.
            A tensor larger than the limit gets a shard of its own.
        metadata: string pairs stored in each safetensors header (``format: pt`` is added).

    Raises:
        DuplicateError: ``out_dir`` exists and is not empty, and ``overwrite`` is False.
        OutputPathError: ``out_dir`` is a place no output may go, or a folder weightzoo did not write.
        StorageError: the folder cannot be written (name too long, read-only, disk full, ...).
        ConfigError: an empty state dict, non-tensor values or non-string metadata.
    """
    from safetensors.torch import save_file

    out_dir = guard_output_dir(out_dir, overwrite=overwrite, what="export folder")
    tensors = _prepare(state_dict)
    header = {"format": "pt", **_check_metadata(metadata)}
    shards = _plan_shards(tensors, max_shard_size)
    with staged_output_dir(out_dir, overwrite=overwrite, what="export folder") as tmp:
        try:
            if len(shards) == 1:
                save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=header)
            else:
                weight_map: dict[str, str] = {}
                for i, keys in enumerate(shards, start=1):
                    name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                    save_file({k: tensors[k] for k in keys}, str(tmp / name), metadata=header)
                    weight_map.update(dict.fromkeys(keys, name))
                total = sum(t.numel() * t.element_size() for t in tensors.values())
                index = {"metadata": {"total_size": total, **(metadata or {})}, "weight_map": weight_map}
                _write_text(tmp / INDEX_NAME, json.dumps(index, indent=2) + "\n")
            _write_text(
                tmp / "config.json", json.dumps(config or {}, indent=2, sort_keys=True, default=str) + "\n"
            )
            _write_text(tmp / "README.md", card if card is not None else model_card(title=out_dir.name))
        except OSError as e:
            raise StorageError(f"cannot write the export folder {out_dir}: {e.strerror or e}; "
                               "check free disk space and write permission") from e  # fmt: skip
    return out_dir


def _prepare(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, no shared storage: what safetensors can save."""
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ConfigError("state_dict must be a non-empty mapping of name -> tensor")
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, t in state_dict.items():
        if not isinstance(name, str) or not isinstance(t, Tensor):
            raise ConfigError(
                f"state_dict entry {name!r} is a {type(t).__name__}; only str -> Tensor is saved"
            )
        t = t.detach().to("cpu")
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        shared = ptr in seen or storage.nbytes() != t.numel() * t.element_size()
        if t.numel() and ptr:
            seen.add(ptr)
        out[name] = t.clone(memory_format=torch.contiguous_format) if shared else t.contiguous()
    return out


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    metadata = dict(metadata or {})
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ConfigError(f"safetensors metadata must map str -> str; convert {bad} (e.g. json.dumps)")
    return metadata


def _plan_shards(tensors: dict[str, Tensor], max_shard_size: int | None) -> list[list[str]]:
    """Greedy split of the keys (in order) into shards of at most ``max_shard_size`` bytes."""
    if max_shard_size is None:
        return [list(tensors)]
    if max_shard_size <= 0:
        raise ConfigError(f"max_shard_size must be a positive number of bytes, got {max_shard_size}")
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------------ model card


def model_card(
    *,
    title: str,
    description: str = "",
    metrics: dict[str, Any] | None = None,
    hyperparameters: dict[str, Any] | None = None,
    lineage: list[dict[str, Any]] | None = None,
    tags: list[str] | None = None,
) -> str:
    """A markdown model card with YAML front matter (``library_name: weightzoo``, ``tags``).

    ``metrics`` may be flat (``{"acc": 0.9}``) or per split (``{"test": {"acc": 0.9}}``).
    ``lineage`` holds edges ``{"parent": ..., "child": ..., "op": ..., "params": {...}}``
    (``role`` optional), listed as ``parent -> child: op params``.
    """
    front = {"library_name": "weightzoo", "tags": ["weightzoo", *[t for t in tags or [] if t != "weightzoo"]]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {title}", ""]
    if description:
        lines += [description.strip(), ""]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in _flat_items(metrics)]
        lines.append("")
    if hyperparameters:
        lines += ["## Hyperparameters", "", "| name | value |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in _flat_items(hyperparameters)]
        lines.append("")
    if lineage:
        lines += ["## Lineage", ""]
        for edge in lineage:
            parent = edge.get("parent") or "(no parent)"
            role = f" ({edge['role']})" if edge.get("role") else ""
            params = json.dumps(edge.get("params") or {}, sort_keys=True, default=str)
            lines.append(
                f"- `{parent}`{role} -> `{edge.get('child', '')}`: `{edge.get('op', '')}` `{params}`"
            )
        lines.append("")
    lines.append("Written by weightzoo.")
    return "\n".join(lines) + "\n"


def _flat_items(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        items += _flat_items(v, key) if isinstance(v, Mapping) else [(key, v)]
    return items


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = "nan" if math.isnan(value) else f"{value:.6g}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


# ------------------------------------------------------------------------------------ push to hub


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload from weightzoo",
    offline: bool | None = None,
) -> str:
    """Upload a folder (e.g. from :func:`write_hf_folder`) to a Hub model repo; return the commit URL.

    The repo is created if needed (``exist_ok``). ``offline`` defaults to
    :func:`zoo.settings.offline` read at call time; when offline nothing touches the network.

    Raises:
        NotFoundError: ``folder`` does not exist.
        ZooError: offline mode is on, or the Hub refused the upload.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise NotFoundError(f"{folder} is not a folder; write one with write_hf_folder() first")
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise ConfigError(f"repo_id must look like 'org/name', got {repo_id!r}")
    if offline_setting() if offline is None else offline:
        raise ZooError(
            f"cannot push {folder} to {repo_id}: offline mode is on (WEIGHTZOO_OFFLINE / HF_HUB_OFFLINE "
            "or offline=True); unset it on a machine with network access"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message,
            ignore_patterns=[MARKER],
        )
    except (HfHubHTTPError, OSError) as exc:
        raise ZooError(f"pushing {folder} to {repo_id} failed: {exc}") from exc
    return str(getattr(info, "commit_url", None) or info)
