"""Population recipes: what to train (YAML/JSON file, dict or Python object) and their expansion into runs.

A recipe names a population, a data set, a base architecture, a search over hyperparameters (a grid
or a random draw), epochs and which epochs to checkpoint::

    name: digits-mlp
    dataset: {name: digits, seed: 0}
    arch: {family: mlp, in_features: 64, hidden: [32], out_features: 10}
    task: classification            # or "inr": one SIREN per image of the data set
    epochs: 25
    checkpoint_epochs: [2, 8, 25]
    search:
      mode: random                  # or "grid" (cartesian product of lists, times `seeds`)
      n: 300                        # random: number of runs
      seed: 0
      params:
        lr: {loguniform: [3.0e-4, 3.0e-2]}
        weight_decay: {choice: [0.0, 1.0e-4, 1.0e-3]}
        dropout: {choice: [0.0, 0.1, 0.3]}
        init_scale: {uniform: [0.5, 2.0]}
        label_noise: {choice: [0.0, 0.1, 0.3]}
        data_fraction: {choice: [0.3, 0.6, 1.0]}

Search parameters are training hyperparameters (:data:`TRAIN_PARAMS`), keys of the architecture
config (``activation``, ``hidden``, ...) or the shorthands ``width``/``depth`` (mlp/siren:
``hidden = [width] * depth``; cnn: ``channels = [width * 2**i for i in range(depth)]``).
``init_seed`` seeds the initialisation alone (the run's ``seed`` still draws its data order, subset
and label noise): ``init_seed: [0]`` with ``seeds: 200`` trains 200 models from one shared init.
A population holds one architecture, so a recipe that varies the architecture writes one population
per architecture, named ``<name>/<key>=<value>,...``; every model is tagged ``recipe:<name>``.

A fine-tune recipe starts from parents in the zoo (``finetune: {parents: {population: P, final: true,
limit: 50, tag: T}, corruption: {kind: gaussian_noise, severity: 3}, classes: [0, 1]}``): each parent
gets the search's runs, trained on (optionally corrupted or class-restricted) data. With
``finetune.change`` every parent gets labelled children instead (suppress / boost / swap a class,
robust to a corruption, a backdoor trigger, or null; drawn per child): see :mod:`zoo.build.finetune`.

An INR recipe (``task: inr``, ``inr: {split: train, n: 500, seed: 0, shared_init: false}``) fits one
SIREN per image of ``n`` images drawn from the split, for each point of the search. With
``shared_init: true`` every SIREN starts from the same initial weights (a common choice that makes
the weights of different images directly comparable); by default each image gets its own seed.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo.errors import ConfigError, NotFoundError, ZooError
from zoo.models.architectures import normalize_config

#: Training hyperparameters a search can vary (per model, inside one batched shard).
TRAIN_PARAMS = ("lr", "weight_decay", "dropout", "init_scale", "label_noise", "data_fraction")
#: Training options that split runs into different shards when they vary.
SHARD_PARAMS = ("optimizer", "batch_size", "rank")  # rank > 0: low-rank (LoRA-style) training
TASKS = ("classification", "inr")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")
BUILTIN_DIR = Path(__file__).parent / "recipes"


@dataclass
class FinetuneSpec:
    """Which zoo models to fine-tune, and on what data."""

    parents: dict[str, Any]  # population, final (bool, default true), limit, tag (or tags: [...]), min_test_acc
    corruption: dict[str, Any] | None = None  # {kind, severity}: robust fine-tunes
    classes: list[int] | None = None  # train only on these classes
    change: Any = None  # labelled changes per child (zoo.finetune): a kind, {kind, args}, a list, or {draw: [...], n, weights}
    seed: int = 0  # seeds the per-child draws of change kinds and arguments


@dataclass
class Recipe:
    """A population recipe. Build it with :func:`zoo.build.builder.build`."""

    name: str
    arch: dict[str, Any]
    dataset: dict[str, Any] = field(default_factory=lambda: {"name": "digits", "seed": 0})
    task: str = "classification"
    epochs: int = 20
    checkpoint_epochs: list[int] = field(default_factory=list)
    optimizer: str = "adam"
    batch_size: int = 64
    search: dict[str, Any] = field(default_factory=dict)
    finetune: FinetuneSpec | None = None
    inr: dict[str, Any] = field(default_factory=lambda: {"split": "train", "n": 100})
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError("a recipe needs a non-empty 'name'")
        if isinstance(self.finetune, Mapping):
            valid = {"parents", "corruption", "classes", "change", "seed"}
            if unknown := sorted(set(self.finetune) - valid):
                raise ConfigError(f"recipe {self.name!r}: unknown finetune key(s) {unknown}; valid: {', '.join(sorted(valid))}")
            if "parents" not in self.finetune or not isinstance(self.finetune["parents"], Mapping):
                raise ConfigError(f"recipe {self.name!r}: finetune needs 'parents': {{population: ..., final: true, limit: N, tag: ...}}")
            self.finetune = FinetuneSpec(**self.finetune)
        if self.finetune is not None:
            valid = {"population", "final", "limit", "tag", "tags", "min_test_acc"}
            if unknown := sorted(set(self.finetune.parents) - valid):
                raise ConfigError(f"recipe {self.name!r}: unknown finetune.parents key(s) {unknown}; valid: {', '.join(sorted(valid))}")
            if self.finetune.change is not None:
                self._check_change()
        if self.task not in TASKS:
            raise ConfigError(f"recipe {self.name!r}: unknown task {self.task!r}; valid: {', '.join(TASKS)}")
        if not isinstance(self.arch, Mapping) or "family" not in self.arch:
            raise ConfigError(f"recipe {self.name!r}: 'arch' must be an architecture config with a 'family'")
        normalize_config(self.arch)
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"recipe {self.name!r}: epochs must be a non-negative integer, got {self.epochs!r}")
        if not isinstance(self.checkpoint_epochs, list) or not all(
            isinstance(e, int) and not isinstance(e, bool) for e in self.checkpoint_epochs
        ):
            raise ConfigError(f"recipe {self.name!r}: checkpoint_epochs must be a list of integers, got {self.checkpoint_epochs!r}")
        if not self.checkpoint_epochs:
            self.checkpoint_epochs = [self.epochs]
        if max(self.checkpoint_epochs) > self.epochs or min(self.checkpoint_epochs) < 0:
            raise ConfigError(f"recipe {self.name!r}: checkpoint_epochs {self.checkpoint_epochs} must lie in [0, {self.epochs}]")
        if not isinstance(self.search, Mapping):
            raise ConfigError(f"recipe {self.name!r}: search must be a mapping")
        valid = {"mode", "n", "seed", "seeds", "params"}
        if unknown := sorted(set(self.search) - valid):
            raise ConfigError(f"recipe {self.name!r}: unknown search key(s) {unknown}; valid: {', '.join(sorted(valid))}")
        mode = self.search.get("mode", "grid")
        if mode not in ("grid", "random"):
            raise ConfigError(f"recipe {self.name!r}: search.mode must be 'grid' or 'random', not {mode!r}")
        for k, spec in self.search.get("params", {}).items():
            self._param_kind(k)
            if mode == "grid" and isinstance(spec, Mapping):
                raise ConfigError(
                    f"recipe {self.name!r}: search param {k!r} is a distribution {spec!r}, which only a random "
                    "search can draw from; give a list of values for a grid search, or set mode: random"
                )
            if mode == "random":
                _draw(k, spec, random.Random(0))  # validates the distribution spec now
        if self.task == "inr":
            n = self.inr.get("n", 100)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"recipe {self.name!r}: inr.n must be a positive integer, got {n!r}")

    def _check_change(self) -> None:
        ft = self.finetune
        assert ft is not None
        if ft.corruption or ft.classes:
            raise ConfigError(
                f"recipe {self.name!r}: finetune.change replaces finetune.corruption/classes; write "
                "change: {kind: robust, corruption: ..., severity: ...} instead"
            )
        if self.task != "classification":
            raise ConfigError(f"recipe {self.name!r}: finetune.change applies to classification recipes, not {self.task!r}")
        if isinstance(ft.seed, bool) or not isinstance(ft.seed, int):
            raise ConfigError(f"recipe {self.name!r}: finetune.seed must be an integer, got {ft.seed!r}")
        self.change_plan()

    def change_plan(self, num_classes: int | None = None) -> dict[str, Any]:
        """The validated ``finetune.change`` (see :func:`zoo.build.finetune.normalize_change`)."""
        from zoo.build.finetune import image_hw, normalize_change

        assert self.finetune is not None
        k = int(num_classes if num_classes is not None else normalize_config(self.arch).get("out_features", 10))
        return normalize_change(self.finetune.change, num_classes=k, image_hw=image_hw(self.dataset, self.arch),
                                where=f"recipe {self.name!r}: finetune.change")  # fmt: skip

    # ------------------------------------------------------------------ io
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recipe:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown recipe key(s) {unknown}; valid keys: {', '.join(sorted(known))}")
        if "name" not in d or "arch" not in d:
            raise ConfigError("a recipe needs at least 'name' and 'arch'")
        return cls(**dict(d))

    @classmethod
    def from_file(cls, path: str | Path) -> Recipe:
        p = Path(path)
        if not p.is_file():
            raise NotFoundError(f"no recipe file {p}; built-in recipes: {', '.join(builtin_recipes())}")
        from zoo import jsonlimits

        if p.stat().st_size > jsonlimits.MAX_CONFIG_BYTES:
            raise ConfigError(f"recipe {p} is {p.stat().st_size:,} bytes; a recipe may be at most "
                              f"{jsonlimits.MAX_CONFIG_BYTES:,} bytes (list large grids in code instead)")  # fmt: skip
        try:
            if p.suffix in (".yml", ".yaml"):
                d = yaml.safe_load(p.read_text())
                jsonlimits.check_value(d, f"recipe {p}", default=str)  # depth and size of what YAML built
            else:
                d = jsonlimits.loads(p.read_bytes(), f"recipe {p}")
        except ZooError:
            raise
        except (yaml.YAMLError, ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"recipe {p} does not parse: {e}") from None
        except RecursionError:
            raise ConfigError(f"recipe {p} is nested too deeply to parse (at most "
                              f"{jsonlimits.MAX_CONFIG_DEPTH} levels)") from None
        if not isinstance(d, Mapping):
            raise ConfigError(f"recipe {p} must be a mapping of keys to values")
        return cls.from_dict(d)

    @classmethod
    def load(cls, name_or_path: str | Path) -> Recipe:
        """A built-in recipe by name (``digits-mlp``) or a recipe file."""
        builtin = BUILTIN_DIR / f"{name_or_path}.yml"
        if isinstance(name_or_path, str) and builtin.is_file():
            return cls.from_file(builtin)
        return cls.from_file(name_or_path)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.finetune is None:
            d.pop("finetune")
        return d

    def scaled(self, n: int | None = None, epochs: int | None = None) -> Recipe:
        """A copy with another number of random runs (of parents, for a ``finetune.change`` recipe) and/or
        epochs (checkpoints scaled to fit)."""
        d = json.loads(json.dumps(self.to_dict()))
        if n is not None and self.finetune is not None and self.finetune.change is not None:
            d["finetune"]["parents"]["limit"] = int(n)  # a labelled-diff recipe: n parents, each its children
        elif n is not None:
            d["search"]["n"] = int(n)
            if d["search"].get("mode", "grid") != "random":
                raise ConfigError("--n applies to random searches only")
        if epochs is not None:
            old = self.epochs
            d["epochs"] = int(epochs)
            d["checkpoint_epochs"] = sorted({max(1, round(e * epochs / old)) if e else 0 for e in self.checkpoint_epochs})
        return Recipe.from_dict(d)

    # ------------------------------------------------------------------ expansion
    def _param_kind(self, key: str) -> str:
        if key in TRAIN_PARAMS:
            return "train"
        if key in SHARD_PARAMS:
            return "shard"
        if key in ("width", "depth", "seed", "init_seed"):
            return key
        if key in normalize_config(self.arch) and key != "family":
            return "arch"
        raise ConfigError(
            f"recipe {self.name!r}: cannot vary {key!r}; use a training hyperparameter ({', '.join(TRAIN_PARAMS)}), "
            f"{', '.join(SHARD_PARAMS)}, width/depth, init_seed, or a key of the {self.arch['family']} config"
        )

    def draws(self) -> list[dict[str, Any]]:
        """The search's points: one dict of parameter values per run (``seed`` included)."""
        s = self.search
        params = s.get("params", {})
        if s.get("mode", "grid") == "grid":
            keys = list(params)
            values = [v if isinstance(v, list) else [v] for v in params.values()]
            seeds = s.get("seeds", 1)
            seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
            out = []
            for combo in itertools.product(*values):
                for sd in seeds:
                    out.append({**dict(zip(keys, combo, strict=True)), "seed": sd})
        else:
            rng = random.Random(s.get("seed", 0))
            n = int(s.get("n", 10))
            out = []
            for i in range(n):
                point = {k: _draw(k, spec, rng) for k, spec in params.items()}
                point.setdefault("seed", s.get("seed", 0) * 1_000_003 + i)
                out.append(point)
        for i, p in enumerate(out):
            p["seed"] = int(p["seed"]) if "seed" in p else i
        return out

    def arch_for(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """The architecture config of one search point."""
        cfg = dict(self.arch)
        fam = cfg["family"]
        width, depth = point.get("width"), point.get("depth")
        if width is not None or depth is not None:
            if fam in ("mlp", "siren"):
                base = cfg.get("hidden") or [32]
                w = int(width if width is not None else base[0])
                d = int(depth if depth is not None else len(base))
                cfg["hidden"] = [w] * d
            elif fam == "cnn":
                base = cfg.get("channels") or [8, 16]
                w = int(width if width is not None else base[0])
                d = int(depth if depth is not None else len(base))
                cfg["channels"] = [w * 2**i for i in range(d)]
            elif fam == "resnet":
                if width is not None:
                    cfg["width"] = int(width)
                if depth is not None:
                    cfg["blocks"] = [1] * int(depth)
        for k, v in point.items():
            if self._param_kind(k) == "arch":
                cfg[k] = v
        return normalize_config(cfg)


def _draw(key: str, spec: Any, rng: random.Random) -> Any:
    if not isinstance(spec, Mapping):
        return spec  # a constant
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"search param {key!r}: give one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {spec!r}")
    kind, arg = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"search param {key!r}: choice needs a non-empty list, got {arg!r}")
        return rng.choice(list(arg))
    try:
        lo, hi = float(arg[0]), float(arg[1])
        if len(arg) != 2 or lo > hi:
            raise ValueError
    except (TypeError, ValueError, IndexError, KeyError):
        raise ConfigError(f"search param {key!r}: {kind} needs [low, high] with low <= high, got {arg!r}") from None
    if kind == "uniform":
        return rng.uniform(lo, hi)
    if kind == "loguniform":
        if lo <= 0 or hi <= 0:
            raise ConfigError(f"search param {key!r}: loguniform bounds must be > 0")
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.randint(int(lo), int(hi))


def builtin_recipes() -> list[str]:
    """Names of the built-in recipes (``digits-mlp``, ``digits-cnn``, ``digits-inr``, ...)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yml"))
