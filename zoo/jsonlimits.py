"""Bounds on the JSON that enters the catalog: architecture configs, HF ``config.json``, hparams.

A config is stored whole in the catalog and read back by every query that touches its row, so an
unbounded one (a 100 MB ``config.json``) slows every later query of the zoo, and a deeply nested one
makes ``json.loads`` / ``json.dumps`` recurse until Python's stack gives out (a raw
``RecursionError``). Everything here checks without recursing:

* :func:`loads` parses JSON text after checking its size and scanning its nesting depth (a linear
  scan of brackets outside strings), so even a 100k-deep document is refused cleanly.
* :func:`read_json_file` does the same for a file, checking its size before reading it.
* :func:`check_value` walks an in-memory value iteratively (depth, cycles) and returns its JSON text,
  refusing it when the text exceeds the size bound.
* :func:`check_config` applies them to an architecture config (``zoo.models.architectures.normalize_config``
  calls it, so every config the catalog stores passes here: ``Zoo.add``, ``register_architecture``,
  populations, ingest).

Limits are :data:`MAX_CONFIG_BYTES` and :data:`MAX_CONFIG_DEPTH`; errors are :class:`ConfigError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError, CorruptFileError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_INDEX_BYTES",
    "SIGNATURE_BYTES_PER_TENSOR",
    "check_config",
    "check_value",
    "json_depth",
    "loads",
    "read_json_file",
]

#: the largest config (architecture config, HF ``config.json``, one hyperparameter) kept in the catalog
MAX_CONFIG_BYTES: int = 1 << 20  # 1 MiB; real HF configs are a few KB
#: the deepest nesting of objects/arrays accepted in such JSON (real configs nest 2-4 levels)
MAX_CONFIG_DEPTH: int = 64
#: the largest shard index json read (not stored; a 100k-tensor model's index is ~10 MB)
MAX_INDEX_BYTES: int = 64 << 20


def _size(n: int) -> str:
    return (
        f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} bytes"
    )


def _too_big(what: str, n: int, limit: int) -> ConfigError:
    if limit != MAX_CONFIG_BYTES:  # not a stored config (a shard index, a signature)
        return ConfigError(f"{what} is {_size(n)}, over the limit of {_size(limit)}; refused")
    return ConfigError(
        f"{what} is {_size(n)}, over the limit of {_size(limit)} for configs (zoo.jsonlimits.MAX_CONFIG_BYTES); "
        "it would be stored whole in the catalog and slow every query. Remove the bulky entries (embedded "
        "data, vocabularies, weights) and keep only the architecture's settings"
    )


def _too_deep(what: str, limit: int) -> ConfigError:
    return ConfigError(
        f"{what} nests objects/arrays more than {limit} levels deep (zoo.jsonlimits.MAX_CONFIG_DEPTH); "
        "that is not a real config: flatten it"
    )


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_CURLY_TO_SQUARE = bytes.maketrans(b"{}", b"[]")


def json_depth(text: str | bytes, *, stop_at: int | None = None) -> int:
    """The deepest nesting of ``{``/``[`` in JSON text, counting brackets outside strings only.

    Non-recursive, in C-speed passes (strings removed by a regex, then one pass per level), and
    stops once ``stop_at`` is exceeded. Unbalanced text counts its unmatched openers, so the result
    bounds what :func:`json.loads` would recurse into; it reports any syntax error afterwards.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", data)).translate(_CURLY_TO_SQUARE)
    limit = len(brackets) if stop_at is None else stop_at + 1
    depth = 0
    while brackets and depth < limit:  # each pass removes the innermost pairs: passes = depth
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):  # unbalanced: count the unmatched openers as depth
            return depth + shorter.count(b"[")
        brackets, depth = shorter, depth + 1
    return depth


def loads(
    text: str | bytes, what: str, *, max_bytes: int = MAX_CONFIG_BYTES, max_depth: int = MAX_CONFIG_DEPTH
) -> Any:
    """``json.loads(text)`` after checking its size and depth.

    Raises:
        ConfigError: over ``max_bytes`` or nested deeper than ``max_depth``.
        CorruptFileError: not valid JSON (or not UTF-8).
    """
    n = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)
    if n > max_bytes:
        raise _too_big(what, n, max_bytes)
    if json_depth(text, stop_at=max_depth) > max_depth:
        raise _too_deep(what, max_depth)
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{what} is not valid JSON ({exc}); fix or remove it") from exc
    except RecursionError:  # pragma: no cover - the depth scan above comes first
        raise _too_deep(what, max_depth) from None


def read_json_file(
    path: str | Path, *, max_bytes: int = MAX_CONFIG_BYTES, max_depth: int = MAX_CONFIG_DEPTH
) -> Any:
    """Parse a JSON file with :func:`loads`' bounds; the size is checked before the file is read."""
    path = Path(path)
    try:
        n = path.stat().st_size
        if n > max_bytes:
            raise _too_big(str(path), n, max_bytes)
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)  # a file growing while read is still bounded
    except OSError as exc:
        raise CorruptFileError(f"{path} cannot be read ({exc})") from exc
    if len(data) > max_bytes:
        raise _too_big(str(path), len(data), max_bytes)
    return loads(data, str(path), max_bytes=max_bytes, max_depth=max_depth)


def check_value(
    value: Any, what: str, *, max_bytes: int = MAX_CONFIG_BYTES, max_depth: int = MAX_CONFIG_DEPTH,
    sort_keys: bool = True, default: Any = None,
) -> str:  # fmt: skip
    """The JSON text of an in-memory value, refused when too deep (or cyclic) or too large.

    The depth walk is iterative, so a 100k-deep dict gives a :class:`ConfigError`, not a
    ``RecursionError``. Values ``json.dumps`` cannot encode raise ``ConfigError`` too.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, Mapping):
            children: Any = obj.values()
        elif isinstance(obj, list | tuple):
            children = obj
        else:
            continue
        if depth > max_depth:
            raise _too_deep(what, max_depth)
        stack.extend((c, depth + 1) for c in children if isinstance(c, Mapping | list | tuple))
    try:
        text = json.dumps(value, sort_keys=sort_keys, default=default)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} is not JSON-able: {exc}") from None
    except RecursionError:  # pragma: no cover - the walk above comes first
        raise _too_deep(what, max_depth) from None
    n = len(text.encode("utf-8", "surrogatepass"))
    if n > max_bytes:
        raise _too_big(what, n, max_bytes)
    return text


#: per-tensor allowance for the generated ``tensors`` signature of a ``raw`` config (name, dtype, shape)
SIGNATURE_BYTES_PER_TENSOR: int = 512


def check_config(config: Any, what: str = "architecture config") -> None:
    """Refuse an architecture config that is too large or too deeply nested to store.

    The user's part of the config (every key of a buildable config; ``hf_config`` and any extra keys
    of a ``raw`` one) must fit :data:`MAX_CONFIG_BYTES`. The ``tensors`` signature of a ``raw`` config,
    one entry per tensor, is allowed :data:`SIGNATURE_BYTES_PER_TENSOR` bytes per entry on top, so a
    model with many tensors is never refused for its own size. Depth is bounded throughout (a raw
    config's ``hf_config`` may nest as deep as a ``config.json`` may: the wrapper's level is free).
    """
    if (
        isinstance(config, Mapping)
        and config.get("family") == "raw"
        and isinstance(config.get("tensors"), Mapping)
    ):
        sig = config["tensors"]
        check_value(sig, f"the tensor signature of the {what}", default=str,
                    max_bytes=MAX_CONFIG_BYTES + SIGNATURE_BYTES_PER_TENSOR * len(sig))  # fmt: skip
        # the raw wrapper ({"family": "raw", "hf_config": {...}}) adds one level to the user's config
        rest = {k: v for k, v in config.items() if k != "tensors"}
        check_value(rest, what, default=str, max_depth=MAX_CONFIG_DEPTH + 1)
        return
    check_value(config, what, default=str)
