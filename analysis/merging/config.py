"""A merge's configuration: mergekit-style YAML in, a JSON-able dict out (stored as lineage params).

    merge_method: ties
    base_model: zoo:3                     # a zoo id/name, a local path or an HF repo id
    models:
      - model: zoo:4
        parameters: {weight: 1.0, density: 0.5}
      - model: ./finetune-b               # folder, sharded folder or .safetensors file
        parameters: {weight: 0.5, density: 0.5}
    parameters: {normalize: true, lambda: 1.0}
    dtype: float32                        # output dtype (arithmetic is float32 regardless)
    seed: 0                               # DARE's random drops (per tensor, order independent)

mergekit keys that only concern tokenizers (``tokenizer_source``, ``tokenizer``, ``chat_template``)
are accepted and ignored with a note. Features weightzoo does not implement (``slices``,
``modules``, per-layer gradients such as ``t: [0, 0.5, 1]``, filtered values, LoRA ``model+lora``
references) are refused with :class:`~zoo.errors.ConfigError`, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from zoo.errors import ConfigError, NotFoundError

__all__ = ["MergeConfig", "ModelRef", "parse_dtype"]

_IGNORED = {
    "tokenizer_source": "tokenizers are not merged; copy the tokenizer files yourself",
    "tokenizer": "tokenizers are not merged; copy the tokenizer files yourself",
    "chat_template": "chat templates are not written",
    "name": "the name is informational",
}
_UNSUPPORTED = {
    "slices": "layer slicing (frankenmerges) is not supported; merge whole models with `models:`",
    "modules": "per-module configurations are not supported",
    "architecture": "architecture overrides are not supported",
}
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}  # fmt: skip


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    try:
        return _DTYPES[str(name).lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


@dataclass
class ModelRef:
    """One input model: where it is and its own parameters (``weight``, ``density``, ...)."""

    model: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class MergeConfig:
    """Everything that defines a merge. Round-trips through :meth:`to_dict` / :meth:`from_dict`."""

    merge_method: str
    models: list[ModelRef]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    seed: int = 0
    notes: list[str] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.merge_method, str) or not self.merge_method:
            raise ConfigError("merge_method is required (e.g. `merge_method: ties`)")
        self.models = [m if isinstance(m, ModelRef) else ModelRef(str(m)) for m in self.models]
        if self.base_model is not None:
            self.base_model = str(self.base_model)
            kept = [m for m in self.models if m.model != self.base_model]
            if len(kept) != len(self.models):
                dropped = [m for m in self.models if m.model == self.base_model]
                if any(m.parameters for m in dropped):
                    self.notes.append(f"the base model {self.base_model} is also listed under models; its parameters there are ignored")
                self.models = kept
        if not self.models:
            raise ConfigError("a merge needs at least one model besides the base (`models:`)")
        for where, params in [("parameters", self.parameters)] + [(m.model, m.parameters) for m in self.models]:
            _check_values(where, params)
        parse_dtype(self.dtype)
        parse_dtype(self.out_dtype)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MergeConfig:
        """From a mergekit-style mapping (see the module docstring)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a merge config must be a mapping, got {type(d).__name__}")
        d = dict(d)
        notes = []
        for k, why in _UNSUPPORTED.items():
            if k in d:
                raise ConfigError(f"mergekit feature `{k}` is not supported: {why}")
        for k, why in _IGNORED.items():
            if d.pop(k, None) is not None:
                notes.append(f"`{k}` ignored: {why}")
        if "merge_method" not in d:
            raise ConfigError("merge_method is required (e.g. `merge_method: ties`)")
        models = []
        for i, m in enumerate(d.pop("models", None) or []):
            if isinstance(m, str | int):
                models.append(ModelRef(_model_name(m, i)))
            elif isinstance(m, Mapping):
                extra = sorted(set(m) - {"model", "parameters"})
                if extra:
                    raise ConfigError(f"models[{i}]: unknown key(s) {extra}; an entry has `model` and `parameters`")
                if "model" not in m:
                    raise ConfigError(f"models[{i}] has no `model:`")
                params = m.get("parameters") or {}
                if not isinstance(params, Mapping):
                    raise ConfigError(f"models[{i}].parameters must be a mapping")
                models.append(ModelRef(_model_name(m["model"], i), dict(params)))
            else:
                raise ConfigError(f"models[{i}] must be a model reference or a mapping with `model:`")
        seed = d.pop("seed", d.pop("random_seed", 0))
        known = {"merge_method", "base_model", "parameters", "dtype", "out_dtype"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in the merge config; known: {sorted(known | {'models', 'seed'})}")
        params = d.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise ConfigError("`parameters` must be a mapping")
        base = d.get("base_model")
        return cls(
            merge_method=str(d["merge_method"]), models=models,
            base_model=_model_name(base, "base_model") if base is not None else None, parameters=dict(params),
            dtype=d.get("dtype"), out_dtype=d.get("out_dtype"), seed=seed, notes=notes,
        )  # fmt: skip

    @classmethod
    def from_yaml(cls, source: str | Path) -> MergeConfig:
        """From a YAML file path, or YAML text."""
        text = str(source)
        p = Path(text).expanduser()
        if "\n" not in text and (p.suffix in (".yml", ".yaml", ".json") or p.exists()):
            if not p.is_file():
                raise NotFoundError(f"merge config {p} does not exist")
            text = p.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"the merge config is not valid YAML: {e}") from e
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            d["base_model"] = self.base_model
        d["models"] = [{"model": m.model, **({"parameters": dict(m.parameters)} if m.parameters else {})} for m in self.models]
        if self.parameters:
            d["parameters"] = dict(self.parameters)
        for k in ("dtype", "out_dtype"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        d["seed"] = self.seed
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _model_name(m: Any, where: Any) -> str:
    if isinstance(m, Mapping):  # mergekit's {model: {path: ..., lora: ...}} form
        if set(m) - {"model", "path"} or "lora" in m:
            raise ConfigError(f"{where}: LoRA/structured model references are not supported; give a path, repo id or zoo id")
        m = m.get("path") or m.get("model")
    if isinstance(m, bool) or not isinstance(m, str | int):
        raise ConfigError(f"{where}: a model reference must be a string or zoo id, got {m!r}")
    s = str(m)
    if "+" in s and not Path(s).exists():
        raise ConfigError(f"{where}: {s!r} looks like a mergekit `model+lora` reference; LoRA merging is not supported")
    return s


def _check_values(where: str, params: Mapping[str, Any]) -> None:
    for k, v in params.items():
        if isinstance(v, list | tuple):
            raise ConfigError(
                f"{where}: parameter {k!r} is a list ({v!r}): mergekit's per-layer gradients are not supported; "
                "give one number"
            )
        if isinstance(v, Mapping):
            raise ConfigError(
                f"{where}: parameter {k!r} is a mapping ({v!r}): mergekit's filtered values are not supported; give one number"
            )
