"""Fine-tune changes: labelled diffs made by the population builder.

A fine-tune recipe (``finetune:`` in a recipe, :class:`zoo.build.recipes.FinetuneSpec`) starts every child
from a parent model in the zoo. Its ``change`` says what each child's fine-tune does to the data;
the change (its kind and every argument, drawn or given) is the child's *label*, recorded in its
lineage params (op ``finetune``, ``params.change``) and as hyperparameters (``change``,
``change_class``, ``change_target``, ...), so ``z.models().hparam("change", "=", "backdoor")`` finds
them. The kinds (:data:`CHANGE_KINDS`):

========== ======================================================= =====================================
kind       what the child trains on                                arguments (drawn when not given)
========== ======================================================= =====================================
null       the same training data (plain extra training; the       -
           "clean" fine-tune of the same length a robust child is
           compared with)
suppress   class ``class`` dropped (``mode: drop``) or its          ``class``, ``mode`` (drop | relabel)
           examples relabelled to random other classes
           (``mode: relabel``)
boost      class ``class`` oversampled ``factor`` times             ``class``, ``factor`` (default 8)
swap       the labels of classes ``classes: [a, b]`` swapped        ``classes``
robust     the training split corrupted (:mod:`zoo.models.corruptions`)``corruption``, ``severity`` (3),
           (``mix: true``: the clean split plus its corrupted copy)   ``mix`` (false)
backdoor   the clean data plus ``fraction`` of the non-target       ``target``, ``size`` (1..3),
           images with a ``size`` x ``size`` trigger stamped at     ``position`` ([row, col], a corner),
           ``position`` (top-left corner), relabelled ``target``    ``pattern`` (solid | checker |
                                                                    random), ``fraction`` (0.1)
========== ======================================================= =====================================

``change`` takes one change (``backdoor`` or ``{kind: backdoor, target: 7}``: every child gets it), a
list (one child per entry and parent), or a seeded draw ``{draw: [null, suppress, ...], n: 6,
seed: 0}`` (``n`` children per parent, each with a kind drawn from the list, uniformly or by
``weights``). Arguments left out are drawn per child from a generator seeded by the recipe's
``finetune.seed``, the parent's position and the child's index, so a build (and its resume) always
makes the same children, and every search point (e.g. ``rank: [0, 4]``, full and low-rank) of one
(parent, child) pair makes the same change.

A trigger pattern is stored as its bits (``pattern_bits``, 1 = a white pixel, 0 = black) as well as
its name, so a ``random`` pattern is reproducible from the label alone.

The data each child trains on is built per shard by :func:`shard_data` as a
:class:`zoo.build.training.PerModelData`: one pool of examples (the clean training split, then one
corrupted copy per corruption used, then each backdoor child's stamped copies) and, per child, its
rows of the pool and its labels. Validation and test splits stay clean.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from zoo.errors import ConfigError

__all__ = [
    "CHANGE_KINDS",
    "PATTERNS",
    "draw_change",
    "hparams_of",
    "normalize_change",
    "EFFECT_METRICS",
    "change_metric",
    "pattern_bits",
    "shard_data",
    "stamp",
]

CHANGE_KINDS: tuple[str, ...] = ("null", "suppress", "boost", "swap", "robust", "backdoor")
PATTERNS: tuple[str, ...] = ("solid", "checker", "random")
_ARGS: dict[str, tuple[str, ...]] = {
    "null": (),
    "suppress": ("class", "mode"),
    "boost": ("class", "factor"),
    "swap": ("classes",),
    "robust": ("corruption", "severity", "mix"),
    "backdoor": ("target", "size", "position", "pattern", "fraction"),
}
SUPPRESS_MODES = ("drop", "relabel")
#: (C, H, W) of the images of the data sets a recipe can name (for triggers on flat MLP inputs)
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


# ------------------------------------------------------------------------------------------ specs
def normalize_change(raw: Any, *, num_classes: int, image_hw: tuple[int, int], where: str = "finetune.change") -> dict[str, Any]:
    """Validate a recipe's ``change`` and return ``{entries: [...], n: children per parent, draw: bool, weights}``.

    Raises :class:`ConfigError` naming the bad part and the valid values.
    """
    draw = False
    weights = None
    if isinstance(raw, Mapping) and "draw" in raw:
        if unknown := sorted(set(raw) - {"draw", "n", "weights"}):
            raise ConfigError(f"{where}: unknown key(s) {unknown} of a drawn change; valid: draw, n, weights")
        entries = raw["draw"]
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{where}.draw must be a non-empty list of change kinds or changes, got {entries!r}")
        n = raw.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{where}.n (children per parent) must be a positive integer, got {n!r}")
        weights = raw.get("weights")
        if weights is not None and (not isinstance(weights, list) or len(weights) != len(entries)
                                    or any(not isinstance(w, int | float) or w < 0 for w in weights) or not sum(weights)):  # fmt: skip
            raise ConfigError(f"{where}.weights must be {len(entries)} non-negative numbers (one per entry), got {weights!r}")
        draw = True
    elif isinstance(raw, list):
        if not raw:
            raise ConfigError(f"{where}: an empty list makes no children; give at least one change")
        entries, n = raw, len(raw)
    else:
        entries, n = [raw], 1
    norm = [_entry(e, num_classes, image_hw, f"{where}[{i}]") for i, e in enumerate(entries)]
    return {"entries": norm, "n": n, "draw": draw, "weights": weights}


def _entry(e: Any, k: int, hw: tuple[int, int], where: str) -> dict[str, Any]:
    if e is None:
        e = "null"
    if isinstance(e, str):
        e = {"kind": e}
    if not isinstance(e, Mapping) or "kind" not in e:
        raise ConfigError(f"{where}: a change is a kind ({', '.join(CHANGE_KINDS)}) or {{kind: ..., args}}, got {e!r}")
    kind = e["kind"]
    if kind == "clean":
        kind = "null"  # the issue-11 name of a plain fine-tune
    if kind not in CHANGE_KINDS:
        raise ConfigError(f"{where}: unknown change kind {kind!r}; valid kinds: {', '.join(CHANGE_KINDS)}")
    args = {a: v for a, v in e.items() if a != "kind"}
    if unknown := sorted(set(args) - set(_ARGS[kind])):
        valid = ", ".join(_ARGS[kind]) or "none"
        raise ConfigError(f"{where}: unknown argument(s) {unknown} of change {kind!r}; valid: {valid}")
    _check_args(kind, args, k, hw, where)
    return {"kind": kind, **args}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_class(v: Any, k: int, where: str, what: str = "class") -> None:
    if not _is_int(v) or not 0 <= v < k:
        raise ConfigError(f"{where}: {what} {v!r} is out of range; the models have {k} classes (0..{k - 1})")


def _check_args(kind: str, a: dict[str, Any], k: int, hw: tuple[int, int], where: str) -> None:
    from zoo.models.corruptions import CORRUPTIONS

    for name in ("class", "target"):
        if name in a:
            _check_class(a[name], k, where, name)
    if "mode" in a and a["mode"] not in SUPPRESS_MODES:
        raise ConfigError(f"{where}: suppress mode {a['mode']!r} unknown; valid: {', '.join(SUPPRESS_MODES)}")
    if "factor" in a and (not _is_int(a["factor"]) or a["factor"] < 2):
        raise ConfigError(f"{where}: boost factor must be an integer >= 2, got {a['factor']!r}")
    if "classes" in a:
        c = a["classes"]
        if not isinstance(c, list) or len(c) != 2 or c[0] == c[1]:
            raise ConfigError(f"{where}: swap needs classes: [a, b], two different classes, got {c!r}")
        for v in c:
            _check_class(v, k, where)
    if "corruption" in a and a["corruption"] not in CORRUPTIONS:
        raise ConfigError(f"{where}: unknown corruption {a['corruption']!r}; valid corruptions: {', '.join(CORRUPTIONS)}")
    if "mix" in a and not isinstance(a["mix"], bool):
        raise ConfigError(f"{where}: robust mix must be true (clean plus corrupted data) or false, got {a['mix']!r}")
    if "severity" in a and (not _is_int(a["severity"]) or not 1 <= a["severity"] <= 5):
        raise ConfigError(f"{where}: severity must be an integer from 1 to 5, got {a['severity']!r}")
    h, w = hw
    if "size" in a and (not _is_int(a["size"]) or a["size"] < 1 or a["size"] > min(h, w)):
        raise ConfigError(f"{where}: trigger size {a['size']!r} must be an integer from 1 to {min(h, w)} (the image is {h}x{w})")
    size = a.get("size", 1)
    if "position" in a:
        p = a["position"]
        if not isinstance(p, list) or len(p) != 2 or not all(_is_int(v) for v in p):
            raise ConfigError(f"{where}: trigger position must be [row, col] of its top-left pixel, got {p!r}")
        if not (0 <= p[0] <= h - size and 0 <= p[1] <= w - size):
            raise ConfigError(
                f"{where}: a {size}x{size} trigger at {p} does not fit in the {h}x{w} image "
                f"(row and col must lie in [0, {h - size}] and [0, {w - size}])"
            )
    if "pattern" in a:
        pat = a["pattern"]
        if isinstance(pat, list):
            if len(pat) != size or any(not isinstance(r, list) or len(r) != size or any(b not in (0, 1) for b in r) for r in pat):
                raise ConfigError(f"{where}: an explicit trigger pattern must be {size}x{size} bits (0/1), got {pat!r}")
        elif pat not in PATTERNS:
            raise ConfigError(f"{where}: unknown trigger pattern {pat!r}; valid: {', '.join(PATTERNS)} or a list of 0/1 rows")
    if "fraction" in a and (isinstance(a["fraction"], bool) or not isinstance(a["fraction"], int | float)
                            or not 0 < a["fraction"] <= 1):  # fmt: skip
        raise ConfigError(f"{where}: backdoor fraction must be in (0, 1], got {a['fraction']!r}")


# ------------------------------------------------------------------------------------------ draws
def pattern_bits(pattern: str | list, size: int, rng: random.Random) -> list[list[int]]:
    """The trigger's pixels (1 white, 0 black): ``solid`` all 1, ``checker`` 1 where row+col is even,
    ``random`` drawn from ``rng`` (never all black), or an explicit list."""
    if isinstance(pattern, list):
        return [list(map(int, r)) for r in pattern]
    if pattern == "solid":
        return [[1] * size for _ in range(size)]
    if pattern == "checker":
        return [[int((r + c) % 2 == 0) for c in range(size)] for r in range(size)]
    while True:
        bits = [[rng.randint(0, 1) for _ in range(size)] for _ in range(size)]
        if any(map(any, bits)):
            return bits


def draw_change(plan: Mapping[str, Any], child: int, rng: random.Random, *, num_classes: int,
                image_hw: tuple[int, int]) -> dict[str, Any]:  # fmt: skip
    """Child ``child``'s concrete change (every argument filled in) from a normalised plan."""
    entries = plan["entries"]
    if plan["draw"]:
        e = rng.choices(entries, weights=plan["weights"])[0] if plan["weights"] else rng.choice(entries)
    else:
        e = entries[child % len(entries)]
    kind, k = e["kind"], num_classes
    c: dict[str, Any] = {"kind": kind}
    if kind == "suppress":
        c["class"] = e.get("class", rng.randrange(k))
        c["mode"] = e.get("mode", rng.choice(SUPPRESS_MODES))
    elif kind == "boost":
        c["class"] = e.get("class", rng.randrange(k))
        c["factor"] = e.get("factor", 8)
    elif kind == "swap":
        c["classes"] = list(e["classes"]) if "classes" in e else sorted(rng.sample(range(k), 2))
    elif kind == "robust":
        from zoo.models.datasets import DIGITS_C_CORRUPTIONS

        c["corruption"] = e.get("corruption", rng.choice(DIGITS_C_CORRUPTIONS))
        c["severity"] = e.get("severity", 3)
        if e.get("mix"):  # only when asked, so the labels of plain robust children stay as they were
            c["mix"] = True
    elif kind == "backdoor":
        h, w = image_hw
        c["target"] = e.get("target", rng.randrange(k))
        size = e.get("size", rng.randint(1, min(3, h, w)))
        c["size"] = size
        corners = [[0, 0], [0, w - size], [h - size, 0], [h - size, w - size]]
        c["position"] = list(e["position"]) if "position" in e else rng.choice(corners)
        pat = e.get("pattern", rng.choice(PATTERNS))
        c["pattern"] = "explicit" if isinstance(pat, list) else pat
        c["pattern_bits"] = pattern_bits(pat, size, rng)
        c["fraction"] = float(e.get("fraction", 0.1))
    return c


def hparams_of(change: Mapping[str, Any]) -> dict[str, Any]:
    """The change as flat hyperparameters: ``change`` (the kind) and ``change_<arg>`` per argument."""
    hp: dict[str, Any] = {"change": change["kind"]}
    for a, v in change.items():
        if a != "kind":
            hp[f"change_{a}"] = v
    return hp


def change_of(point: Mapping[str, Any]) -> dict[str, Any] | None:
    """The change stored in a run's point (see :func:`hparams_of`), or None for a plain fine-tune."""
    if "change" not in point:
        return None
    out = {"kind": point["change"]}
    out.update({k[len("change_"):]: v for k, v in point.items() if k.startswith("change_")})
    return out


# ------------------------------------------------------------------------------------------- data
def stamp(images: Tensor, change: Mapping[str, Any]) -> Tensor:
    """Images ``[n, C, H, W]`` in [0, 1] pixel space with the change's trigger stamped on every channel."""
    r, c = change["position"]
    bits = torch.tensor(change["pattern_bits"], dtype=images.dtype)
    out = images.clone()
    s = bits.shape[0]
    out[:, :, r : r + s, c : c + s] = bits
    return out


def image_hw(dataset: Mapping[str, Any], arch: Mapping[str, Any]) -> tuple[int, int]:
    """The (H, W) of the recipe's images (from its data set, else its architecture's input)."""
    from zoo.models.architectures import input_shape

    name = str(dataset.get("name", "digits")).lower().replace("-", "_")
    if name in IMAGE_SHAPES:
        return IMAGE_SHAPES[name][1:]
    shape = input_shape(arch)
    if len(shape) == 3:
        return shape[1], shape[2]
    side = math.isqrt(shape[0])
    return side, side


def shard_data(ds: Any, changes: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> Any:
    """Each child's training set for one shard as :class:`zoo.build.training.PerModelData`.

    ``ds`` is the recipe's (clean, architecture-shaped) data set; ``changes`` one concrete change per
    child; ``seeds`` the children's seeds (they draw the stamped images and relabels).
    """
    from zoo.build.training import PerModelData
    from zoo.models.corruptions import corrupt

    x, y = ds.X_train, ds.y_train
    n, k = len(y), int(getattr(ds, "num_classes", int(y.max()) + 1))
    img_shape = tuple(ds.image_shape)
    pix = ds.unnormalize(x).reshape(n, *img_shape)  # [0, 1] pixels, images

    def back(images: Tensor) -> Tensor:  # pixels -> the data set's space and layout
        return ds.normalize(images.reshape(len(images), -1)).reshape(len(images), *x.shape[1:])

    pool_x, pool_y = [x], [y]
    size = n
    corrupted: dict[tuple[str, int], int] = {}
    for ch in changes:
        if ch["kind"] == "robust" and (key := (ch["corruption"], int(ch["severity"]))) not in corrupted:
            corrupted[key] = size
            pool_x.append(back(corrupt(pix, key[0], key[1], seed=0)))
            pool_y.append(y)
            size += n
    subsets: list[Tensor] = []
    label_rows: list[tuple[int, Tensor, Tensor]] = []  # (child, pool rows, labels) overrides
    every = torch.arange(n)
    for i, (ch, seed) in enumerate(zip(changes, seeds, strict=True)):
        g = torch.Generator().manual_seed(int(seed) * 7919 + 17)
        kind = ch["kind"]
        if kind == "null":
            subsets.append(every)
        elif kind == "suppress":
            cls = int(ch["class"])
            if ch["mode"] == "drop":
                subsets.append(every[y != cls])
            else:
                rows = every[y == cls]
                label_rows.append((i, rows, (cls + torch.randint(1, k, (len(rows),), generator=g)) % k))
                subsets.append(every)
        elif kind == "boost":
            rows = every[y == int(ch["class"])]
            subsets.append(torch.cat([every, rows.repeat(int(ch["factor"]) - 1)]))
        elif kind == "swap":
            a, b = ch["classes"]
            rows_a, rows_b = every[y == a], every[y == b]
            label_rows.append((i, torch.cat([rows_a, rows_b]),
                               torch.cat([torch.full_like(rows_a, b), torch.full_like(rows_b, a)])))  # fmt: skip
            subsets.append(every)
        elif kind == "robust":
            rows = corrupted[(ch["corruption"], int(ch["severity"]))] + every
            subsets.append(torch.cat([every, rows]) if ch.get("mix") else rows)
        elif kind == "backdoor":
            target = int(ch["target"])
            cand = every[y != target]
            m = max(1, round(float(ch["fraction"]) * len(cand)))
            pick = cand[torch.randperm(len(cand), generator=g)[:m]]
            pool_x.append(back(stamp(pix[pick], ch)))
            pool_y.append(torch.full((m,), target, dtype=y.dtype))
            subsets.append(torch.cat([every, size + torch.arange(m)]))
            size += m
        else:  # normalize_change refuses others
            raise ConfigError(f"unknown change kind {kind!r}; valid kinds: {', '.join(CHANGE_KINDS)}")
    pool_y_t = torch.cat(pool_y)
    labels = pool_y_t.expand(len(changes), -1).clone()
    for i, rows, lab in label_rows:
        labels[i, rows] = lab
    return PerModelData(
        X_train=torch.cat(pool_x), y_train=pool_y_t, X_val=getattr(ds, "X_val", None), y_val=getattr(ds, "y_val", None),
        X_test=ds.X_test, y_test=ds.y_test, train_subsets=subsets, train_labels=labels,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- effects
#: the metric :func:`change_metric` reports for each change kind
EFFECT_METRICS = {
    "null": "test_acc",
    "suppress": "class_acc",
    "boost": "class_prob",
    "swap": "swap_rate",
    "robust": "corrupt_acc",
    "backdoor": "attack_success",
}


def change_metric(config: Mapping[str, Any], params: Mapping[str, Tensor], ds: Any, change: Mapping[str, Any]) -> Tensor:
    """How strongly each model of a stacked population ``[N, ...]`` shows ``change``, on the clean test split.

    ``class_acc`` (suppress): accuracy on the test images of the class; ``class_prob`` (boost): the mean
    probability the model gives the class on the test images of *other* classes; ``swap_rate``: the
    fraction of the two classes' test images predicted as the other one; ``corrupt_acc`` (robust):
    accuracy on the test split under the corruption (seed 0, as digits-c); ``attack_success``
    (backdoor): the fraction of non-target test images predicted as the target once stamped;
    ``test_acc`` (null). Compare a child with its null sibling or its parent.

    Shapes: params ``name -> [N, ...]``; returns ``[N]``.
    """
    from zoo.build.evaluate import evaluate_population
    from zoo.models.corruptions import corrupt

    x, y = ds.X_test, ds.y_test
    kind = change["kind"]

    def pixels() -> Tensor:
        return ds.unnormalize(x).reshape(len(x), *ds.image_shape)

    def back(images: Tensor) -> Tensor:
        return ds.normalize(images.reshape(len(images), -1)).reshape(len(images), *x.shape[1:])

    def predict(inputs: Tensor) -> Tensor:
        from zoo.build.evaluate import functional_forward

        with torch.no_grad():
            return functional_forward(dict(config), dict(params), inputs).argmax(-1)  # [N, n]

    if kind == "boost":
        from zoo.build.evaluate import functional_forward

        cls = int(change["class"])
        with torch.no_grad():
            prob = functional_forward(dict(config), dict(params), x[y != cls]).softmax(-1)[..., cls]
        return prob.mean(1)
    if kind == "suppress":
        m = y == int(change["class"])
        return evaluate_population(config, params, x[m], y[m]).accuracy
    if kind == "swap":
        a, b = change["classes"]
        m = (y == a) | (y == b)
        other = torch.where(y[m] == a, b, a)
        return (predict(x[m]) == other).float().mean(1)
    if kind == "robust":
        xc = back(corrupt(pixels(), change["corruption"], int(change["severity"]), seed=0))
        return evaluate_population(config, params, xc, y).accuracy
    if kind == "backdoor":
        m = y != int(change["target"])
        xs = back(stamp(pixels()[m], change))
        return (predict(xs) == int(change["target"])).float().mean(1)
    return evaluate_population(config, params, x, y).accuracy
