"""Reading checkpoints from disk and from Hugging Face repos into plain state dicts.

This module knows nothing about the store: it turns files into ``{name: tensor}`` dicts and
refuses bad input with the project's errors. ``Zoo.add`` builds on it.

* :func:`read_checkpoint`: one ``.safetensors`` or ``.pt/.pth/.bin/.ckpt`` file (torch files are
  loaded with ``weights_only=True``: a pickle that would run code is refused, never executed).
  Wrappers such as ``{"state_dict": ...}`` are unwrapped and nested dicts flattened with ``"."``.
* :func:`read_sharded` / :func:`iter_sharded`: checkpoints split into shards with an
  ``*.index.json`` (Hugging Face's ``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``).
* :func:`discover` and :func:`load_source`: every model in a file or folder tree.
* :func:`resolve_hf`: a repo id (``"org/name"``) or local folder to a local folder, offline-aware.

Symbolic links (the policy; ``follow_symlinks=True`` / ``--follow-symlinks`` lifts the first two):

* a file link (a checkpoint, shard, index or ``config.json``) read during a folder ingest must resolve
  inside the folder that was named; one leading outside is refused with :class:`UnsafeFileError`
  naming the link and its target, before anything is read or written;
* a directory link inside the folder is skipped with a :class:`SymlinkWarning`, never followed (so a
  ``loop -> .`` cannot repeat the tree); with ``follow_symlinks=True`` it is followed, but every real
  directory is visited once, so cycles and duplicates still cannot happen;
* inside a Hugging Face cache repo (``models--org--name/`` with ``blobs/`` and ``snapshots/``) the
  boundary is that repo folder: ``snapshots/<commit>/x -> ../../blobs/<sha>`` is read, a link leading
  out of ``models--org--name/`` is refused;
* the path the user names itself (a file, or a folder) may be a link: it is what was asked for.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from zoo.errors import ConfigError, CorruptFileError, NotFoundError, UnsafeFileError, ZooError
from zoo.jsonlimits import MAX_INDEX_BYTES, read_json_file
from zoo.settings import offline as offline_setting

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CheckpointSource",
    "SymlinkWarning",
    "discover",
    "iter_sharded",
    "load_source",
    "looks_like_hf_repo_id",
    "read_checkpoint",
    "read_checkpoint_with_meta",
    "read_sharded",
    "resolve_hf",
]

#: file suffixes read as checkpoints
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
TORCH_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".bin", ".ckpt")

#: keys under which training scripts commonly nest the weights, tried in this order
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "module", "net", "params")

#: files in training folders that are not model weights (HF Trainer, Lightning)
_NOT_WEIGHTS = re.compile(
    r"^(training_args\.bin|optimizer(_\w+)?\.(pt|bin)|scheduler\.(pt|bin)|scaler\.pt|rng_state.*\.pth)$"
)


# --------------------------------------------------------------------------------- single files


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read one checkpoint file (or a folder holding exactly one model) into a state dict.

    Raises:
        NotFoundError: ``path`` does not exist.
        CorruptFileError: the file is truncated, does not parse, or holds no tensors.
        UnsafeFileError: a torch pickle that is not weights-only (it would run code; not loaded).
    """
    return read_checkpoint_with_meta(path)[0]


def read_checkpoint_with_meta(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Like :func:`read_checkpoint`, also returning the non-tensor content.

    The metadata is a safetensors file's ``__metadata__`` (``dict[str, str]``), or for a torch
    checkpoint every non-tensor leaf (``epoch``, ``global_step``, hyperparameters, ...) flattened
    with ``"."`` joins. Tensors outside the unwrapped state dict (optimizer state) are dropped.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise NotFoundError(f"checkpoint {path} does not exist; check the path")
    if path.is_dir():
        sources = discover(path)
        if len(sources) != 1:
            names = ", ".join(s.name for s in sources[:5])
            raise ConfigError(
                f"{path} holds {len(sources)} checkpoints ({names}...), not one; use discover() to "
                "read them one by one"
            )
        return _load_source_with_meta(sources[0])
    if path.name.endswith(".index.json"):
        return read_sharded(path), {}
    if path.suffix == ".safetensors" or (path.suffix not in TORCH_SUFFIXES and _sniff_safetensors(path)):
        return _read_safetensors(path)
    return _read_torch(path)


def _sniff_safetensors(path: Path) -> bool:
    """True when the file starts like a safetensors file (8-byte header length, then ``{``)."""
    with path.open("rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CorruptFileError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated, re-copy it"
        ) from exc
    if not tensors:
        raise CorruptFileError(f"{path} holds no tensors; is it a model checkpoint?")
    return tensors, meta


def _read_torch(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    obj = _torch_load(path)
    if isinstance(obj, Tensor):
        raise CorruptFileError(f"{path} holds a single tensor, not a state dict of named tensors")
    if not isinstance(obj, Mapping):
        raise CorruptFileError(
            f"{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead"
        )
    try:
        state, meta = split_state_dict(obj)
    except RecursionError:
        raise CorruptFileError(f"{path} nests its dicts too deeply to be a state dict; save model.state_dict()") from None
    except CorruptFileError as exc:
        raise CorruptFileError(f"{path}: {exc}") from None
    if not state:
        raise CorruptFileError(f"{path} holds no tensors; is it a model checkpoint?")
    return state, meta


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with torch's many failure modes mapped to our errors."""
    try:
        zipped = zipfile.is_zipfile(path)
    except zipfile.BadZipFile:  # Python 3.11's is_zipfile lets a damaged ZIP64 locator's error through
        zipped = False  # torch.load then refuses the file below, as a damaged checkpoint
    try:
        # mmap only works for the zip format (torch >= 1.6 default); it avoids copying the tensors.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) and _pickle_is_complete(path, zipped):
            raise UnsafeFileError(
                f"{path} contains arbitrary Python objects (a pickle that is not weights-only) and was "
                f"not loaded, because loading it could run code. If you trust its source, load it "
                f"yourself and re-save model.state_dict() with safetensors. Detail: "
                f"{_last_line(str(exc.__cause__ or exc))}"
            ) from None
        raise CorruptFileError(f"{path} is not a valid torch checkpoint ({_last_line(str(exc))})") from exc
    except Exception as exc:  # RuntimeError, OSError, EOFError, struct.error, ...: a damaged file
        raise CorruptFileError(
            f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {_last_line(str(exc))}); "
            "it may be truncated or in another format: re-copy it"
        ) from exc


def _last_line(msg: str) -> str:
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if "Unsupported" in ln or "GLOBAL" in ln]
    return (useful or lines or [""])[0][:300]


def _pickle_is_complete(path: Path, zipped: bool) -> bool:
    """Whether the pickle stream parses to its end (without executing anything).

    A truncated file can fail inside torch's weights-only unpickler with a message that looks like
    an unsafe global (a half-read name); only a complete stream is reported as unsafe.
    """
    try:
        if zipped:
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                for _ in pickletools.genops(zf.read(name)):
                    pass
            return True
        with path.open("rb") as fh:  # legacy format: magic, protocol, sys info, then the object
            for i in range(4):  # (a bare pickle, one stream up to the end of the file, counts as complete too)
                if i and not fh.peek(1):
                    break
                for _ in pickletools.genops(fh):
                    pass
        return True
    except Exception:
        return False


def split_state_dict(obj: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Unwrap a checkpoint dict and split it into ``(tensors, other leaves)``.

    ``{"state_dict": {...}, "epoch": 3}`` -> ``({...}, {"epoch": 3})``. A wrapper key is unwrapped
    only when no tensor sits directly at the top level. Nested dicts (and lists) of tensors are
    flattened with ``"."``: ``{"enc": {"w": t}}`` -> ``{"enc.w": t}``.
    """
    meta: dict[str, Any] = {}
    current: Mapping[str, Any] = obj
    while not any(isinstance(v, Tensor) for v in current.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(current.get(k), Mapping)), None)
        if key is None:
            break
        for k, v in current.items():
            if k != key:
                _collect_meta(str(k), v, meta)
        current = current[key]
    state: dict[str, Tensor] = {}
    _flatten("", current, state, meta)
    return state, meta


def _flatten(prefix: str, value: Any, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
    if isinstance(value, Tensor):
        if prefix in state:  # {"a.b": t, "a": {"b": t2}} or {1: t, "1": t2}: one would be lost silently
            raise CorruptFileError(f"two tensors flatten to the same name {prefix!r}; rename one and re-save")
        state[prefix] = value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, state, meta)
    elif isinstance(value, list | tuple) and any(isinstance(v, Tensor | Mapping) for v in value):
        for i, v in enumerate(value):
            _flatten(f"{prefix}.{i}" if prefix else str(i), v, state, meta)
    else:
        meta[prefix] = value


def _collect_meta(prefix: str, value: Any, meta: dict[str, Any]) -> None:
    """Keep plain (JSON-like) leaves of the wrapper, drop tensors such as optimizer state."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _collect_meta(f"{prefix}.{k}", v, meta)
    elif isinstance(value, str | int | float | bool) or value is None:
        meta[prefix] = value
    elif isinstance(value, list | tuple) and all(isinstance(v, str | int | float | bool) for v in value):
        meta[prefix] = list(value)


# ---------------------------------------------------------------------------- sharded checkpoints


def read_index(
    index_json: str | Path, *, follow_symlinks: bool = False, boundary: str | Path | None = None
) -> tuple[Path, dict[str, str]]:
    """Parse an index json; return its folder and ``weight_map`` after checking every shard exists.

    A shard name must stay inside the index's folder (no ``..``, not absolute), always. A shard that
    is a symbolic link must resolve inside ``boundary`` (default: the index's folder, or the
    Hugging Face cache repo folder ``models--org--name/`` holding it, whose snapshots link into
    ``blobs/``) unless ``follow_symlinks``.
    """
    index_json = Path(index_json).expanduser()
    if not index_json.is_file():
        raise NotFoundError(f"shard index {index_json} does not exist")
    index = read_json_file(index_json, max_bytes=MAX_INDEX_BYTES)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptFileError(f"{index_json} has no 'weight_map' (tensor name -> shard file)")
    folder = index_json.parent
    lexical_root = Path(os.path.abspath(folder))
    bound = Path(boundary).resolve() if boundary is not None else link_boundary(folder)
    missing = []
    for shard in sorted(set(map(str, weight_map.values()))):
        if not Path(os.path.abspath(folder / shard)).is_relative_to(lexical_root):
            raise UnsafeFileError(f"{index_json} points at {shard!r}, outside its folder; refused")
        if not (folder / shard).is_file():
            missing.append(str(shard))
    if missing:
        raise NotFoundError(
            f"{index_json} lists shard(s) missing from {folder}: {', '.join(missing)}; "
            "download or copy every shard next to the index"
        )
    for shard in sorted(set(map(str, weight_map.values()))):
        check_link(folder / shard, bound, follow_symlinks, what=f"shard of {index_json.name}")
    return folder, {str(k): str(v) for k, v in weight_map.items()}


def read_sharded(
    index_json: str | Path, *, follow_symlinks: bool = False, boundary: str | Path | None = None
) -> dict[str, Tensor]:
    """Read a sharded checkpoint (all tensors of its ``weight_map``) into one state dict.

    Symbolic links among the shards follow :func:`read_index`'s rule.

    Raises:
        NotFoundError: the index or one of its shards is missing.
        CorruptFileError: a shard lacks a tensor the index assigns to it, or does not parse.
        UnsafeFileError: a shard outside the index's folder (or a link leading out of it).
    """
    return dict(iter_sharded(index_json, follow_symlinks=follow_symlinks, boundary=boundary))


def iter_sharded(
    index_json: str | Path, *, follow_symlinks: bool = False, boundary: str | Path | None = None
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` shard by shard, loading one tensor at a time where possible.

    Every shard's existence is checked before the first tensor is yielded. Safetensors shards are
    opened lazily with ``safe_open``; torch shards are loaded whole (one at a time).
    """
    folder, weight_map = read_index(index_json, follow_symlinks=follow_symlinks, boundary=boundary)
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    return _iter_shards(folder, by_shard)


def _iter_shards(folder: Path, by_shard: dict[str, list[str]]) -> Iterator[tuple[str, Tensor]]:
    from safetensors import SafetensorError, safe_open

    for shard, names in by_shard.items():
        path = folder / shard
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    _check_keys(path, names, set(f.keys()))
                    for name in names:
                        yield name, f.get_tensor(name)
            except SafetensorError as exc:
                raise CorruptFileError(f"shard {path} is not a readable safetensors file ({exc})") from exc
        else:
            state = read_checkpoint(path)
            _check_keys(path, names, set(state))
            for name in names:
                yield name, state[name]


def _check_keys(path: Path, names: list[str], present: set[str]) -> None:
    missing = [n for n in names if n not in present]
    if missing:
        raise CorruptFileError(
            f"shard {path} lacks {len(missing)} tensor(s) its index assigns to it "
            f"(e.g. {', '.join(missing[:3])}); the shard is incomplete or from another model"
        )


# ------------------------------------------------------------------------------------- discovery

SourceKind = Literal["safetensors", "torch", "sharded", "hf_folder"]


@dataclass
class CheckpointSource:
    """One model found on disk.

    ``name`` is its path relative to the discovered root, without extension, in safe characters
    (``[A-Za-z0-9._-]`` parts joined by ``/``). ``path`` is the file, the index json
    (``"sharded"``) or the folder (``"hf_folder"``). ``config`` is the parsed ``config.json``
    next to it, if any. ``boundary`` is the folder its symbolic links must stay in (``None``: no
    check, as with ``follow_symlinks=True``).
    """

    name: str
    path: Path
    kind: SourceKind
    config: dict[str, Any] | None = None
    boundary: Path | None = field(default=None, compare=False, repr=False)


class SymlinkWarning(UserWarning):
    """A symbolic link that a folder ingest skipped (a directory link, not followed)."""


def is_hf_cache_repo(folder: Path) -> bool:
    """True for a Hugging Face cache repo folder: ``models--org--name/`` with ``blobs/`` and ``snapshots/``."""
    return (
        folder.name.startswith("models--") and (folder / "snapshots").is_dir() and (folder / "blobs").is_dir()
    )


def link_boundary(path: str | Path) -> Path:
    """The folder that symbolic links under ``path`` must resolve into.

    The resolved ``path`` itself (its folder, for a file), or the Hugging Face cache repo folder
    (``models--org--name/``) that holds it: snapshot files there are links to ``../../blobs/<sha>``.
    """
    real = Path(path).expanduser().resolve()
    for p in (real, *real.parents):
        if is_hf_cache_repo(p):
            return p
    return real if real.is_dir() else real.parent


def check_link(
    path: Path, boundary: Path | None, follow_symlinks: bool = False, *, what: str = "file"
) -> None:
    """Refuse ``path`` when it resolves outside ``boundary`` (a link leaving the folder), unless followed."""
    if follow_symlinks or boundary is None:
        return
    target = path.resolve()
    if not target.is_relative_to(boundary):
        raise UnsafeFileError(
            f"{path} ({what}) is a symbolic link to {target}, outside {boundary}; refused: an ingest "
            "reads only files inside the folder it is given. If you trust the link, pass "
            "follow_symlinks=True (CLI: weightzoo ingest --follow-symlinks), or copy the file in"
        )


def _safe_name(parts: list[str]) -> str:
    clean = [re.sub(r"[^A-Za-z0-9._-]+", "_", p).strip("._") or "_" for p in parts if p]
    return "/".join(clean) or "model"


def _strip_suffix(name: str) -> str:
    for suffix in (".safetensors.index.json", ".bin.index.json", ".index.json", *CHECKPOINT_SUFFIXES):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_config(
    folder: Path, boundary: Path | None = None, follow_symlinks: bool = False
) -> dict[str, Any] | None:
    """The ``config.json`` in ``folder``, bounded in size and depth (:mod:`zoo.jsonlimits`)."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    check_link(path, boundary, follow_symlinks, what="config")
    config = read_json_file(path)
    return config if isinstance(config, dict) else None


def _kind_of(path: Path) -> SourceKind | None:
    if path.name.endswith(".index.json"):
        return "sharded"
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix in TORCH_SUFFIXES:
        return "torch"
    return None


def discover(path: str | Path, *, follow_symlinks: bool = False) -> list[CheckpointSource]:
    """Every model under ``path``, sorted by name.

    * a file -> that one checkpoint;
    * a folder with an ``*.index.json`` -> one sharded model (its shards are not listed);
    * a folder with ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``) -> one
      Hugging Face-style model with its config;
    * any other folder -> each checkpoint file in it; sub-folders are searched recursively.
      Hidden folders and training state (``optimizer.pt``, ``training_args.bin``, ...) are skipped.

    Symbolic links follow the module's policy: a file link read here must resolve inside ``path``
    (or the HF cache repo holding it), directory links are skipped with a :class:`SymlinkWarning`;
    ``follow_symlinks=True`` reads any file link and follows directory links (each real directory
    once, so no cycles). A sharded checkpoint's shards are all checked here, before any is read.

    Raises:
        NotFoundError: ``path`` does not exist or holds no checkpoint (or a listed shard is missing).
        UnsafeFileError: a file link leading outside ``path`` (without ``follow_symlinks``).
        ConfigError: a ``config.json`` over the size or depth limit of :mod:`zoo.jsonlimits`.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise NotFoundError(f"{root} does not exist; pass a checkpoint file or a folder of them")
    boundary = None if follow_symlinks else link_boundary(root)
    if root.is_file():
        kind = _kind_of(root)
        if kind is None:
            if not _sniff_safetensors(root):
                raise ConfigError(
                    f"{root} is not a checkpoint (expected {', '.join(CHECKPOINT_SUFFIXES)} or *.index.json)"
                )
            kind = "safetensors"
        config = _read_config(root.parent, boundary)
        if kind == "sharded":
            read_index(root, follow_symlinks=follow_symlinks, boundary=boundary)
        return [CheckpointSource(_safe_name([_strip_suffix(root.name)]), root, kind, config, boundary)]
    found: list[CheckpointSource] = []
    _discover_folder(root, root, found, boundary, follow_symlinks, {root.resolve()})
    if not found:
        raise NotFoundError(
            f"no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)}, *.index.json) under {root}"
        )
    return sorted(found, key=lambda s: s.name)


def _discover_folder(folder: Path, root: Path, found: list[CheckpointSource], boundary: Path | None,
                     follow: bool, seen: set[Path]) -> None:  # fmt: skip
    entries = sorted(folder.iterdir())
    files = {e.name: e for e in entries if e.is_file()}
    rel = [] if folder == root else list(folder.relative_to(root).parts)
    folder_name = _safe_name(rel or [root.name])
    config = _read_config(folder, boundary, follow) if "config.json" in files else None
    indexes = sorted(n for n in files if n.endswith(".index.json"))
    weights = next((files[n] for n in ("model.safetensors", "pytorch_model.bin") if n in files), None)
    if indexes:  # prefer the safetensors index when both formats are present
        index = next((n for n in indexes if n.endswith(".safetensors.index.json")), indexes[0])
        check_link(files[index], boundary, follow, what="shard index")
        read_index(files[index], follow_symlinks=follow, boundary=boundary)  # every shard, before any write
        found.append(CheckpointSource(folder_name, files[index], "sharded", config, boundary))
    elif config is not None and weights is not None:
        check_link(weights, boundary, follow, what="weights")
        found.append(CheckpointSource(folder_name, folder, "hf_folder", config, boundary))
    else:
        for name, file in files.items():
            kind = _kind_of(file)
            if kind is None or _NOT_WEIGHTS.match(name):
                continue
            check_link(file, boundary, follow, what="checkpoint")
            found.append(
                CheckpointSource(_safe_name([*rel, _strip_suffix(name)]), file, kind, config, boundary)
            )
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.is_symlink() and not follow:
            warnings.warn(
                f"skipped {entry}: a symbolic link to a directory ({entry.resolve()}) is not followed; "
                "ingest its target directly, or pass follow_symlinks=True (CLI: --follow-symlinks)",
                SymlinkWarning,
                stacklevel=2,
            )
            continue
        real = entry.resolve()
        if real in seen:  # only reachable through a followed link: a cycle or a second path to it
            warnings.warn(f"skipped {entry}: {real} was already searched (a link cycle or duplicate)",
                          SymlinkWarning, stacklevel=2)  # fmt: skip
            continue
        seen.add(real)
        _discover_folder(entry, root, found, boundary, follow, seen)


def load_source(src: CheckpointSource) -> dict[str, Tensor]:
    """The state dict of a :class:`CheckpointSource` found by :func:`discover`."""
    return _load_source_with_meta(src)[0]


def _load_source_with_meta(src: CheckpointSource) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if src.kind == "sharded":
        return read_sharded(src.path, follow_symlinks=src.boundary is None, boundary=src.boundary), {}
    if src.kind == "hf_folder":
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (src.path / name).is_file():
                return read_checkpoint_with_meta(src.path / name)
        raise NotFoundError(f"{src.path} has no model.safetensors or pytorch_model.bin")
    return read_checkpoint_with_meta(src.path)


# ----------------------------------------------------------------------------------- Hugging Face

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def looks_like_hf_repo_id(s: str) -> bool:
    """True for ``"org/name"`` strings that are not an existing local path."""
    if not _REPO_ID.match(s) or ".." in s or "--" in s or s.endswith((".git", ".")):
        return False
    return not Path(s).expanduser().exists()


HF_ALLOW_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.json", "*.bin", "*.md")


def resolve_hf(
    repo_id_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    token: str | bool | None = None,
) -> Path:
    """A local folder for a Hugging Face model: a local path as is, else a snapshot of the repo.

    Repos are fetched with ``huggingface_hub.snapshot_download`` (weights, json and markdown only).
    When ``offline`` (default: :func:`zoo.settings.offline`, read at call time) only the local HF
    cache (``cache_dir``, default ``$HF_HOME/hub``) is used and the network is never touched.

    Raises:
        NotFoundError: not a local path, and the repo (or revision) is not in the cache while
            offline, or does not exist online.
    """
    local = Path(repo_id_or_path).expanduser()
    if local.exists():
        return local
    repo_id = str(repo_id_or_path)
    if not looks_like_hf_repo_id(repo_id):
        raise NotFoundError(
            f"{repo_id!r} is neither an existing local path nor a Hugging Face repo id ('org/name')"
        )
    offline = offline_setting() if offline is None else offline
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise ConfigError(
            "reading Hugging Face repos needs huggingface_hub: pip install huggingface_hub"
        ) from exc
    rev = f" at revision {revision!r}" if revision else ""
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            local_files_only=offline,
            allow_patterns=list(HF_ALLOW_PATTERNS),
            token=token,
        )
    except LocalEntryNotFoundError as exc:
        where = cache_dir if cache_dir is not None else "the default HF cache ($HF_HOME/hub)"
        why = "offline mode is on" if offline else "the Hub could not be reached"
        raise NotFoundError(
            f"{repo_id}{rev} is not in the local Hugging Face cache ({where}) and {why}. Download it "
            f"on a machine with network (`hf download {repo_id}` or huggingface_hub.snapshot_download) "
            f"and copy the cache here, or pass a local folder holding the model files"
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise NotFoundError(
            f"{repo_id}{rev} was not found on the Hugging Face Hub (or is private: pass token=)"
        ) from exc
    except HfHubHTTPError as exc:
        raise ZooError(f"downloading {repo_id}{rev} from the Hugging Face Hub failed: {exc}") from exc
    return Path(os.fspath(folder))  # type: ignore[arg-type]
