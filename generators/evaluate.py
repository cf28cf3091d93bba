"""Evaluation of a sampling run: quality, novelty, the memorisation baselines and a verdict.

For a run of generated models (and the same figures for every baseline of :mod:`generators.baselines`,
the held-out reference models and the training models themselves, leave-one-out):

* **quality**: classifiers: test accuracy (batched evaluation, :func:`zoo.build.evaluate.functional_forward`),
  plus validation accuracy; SIRENs: PSNR of the rendered image against the nearest training model's
  target image, and the class a digits classifier gives the render (against the class asked for);
* **novelty**: distance (L2 over all weights) to the nearest training model *after aligning the model to
  it*: candidates are the ``k`` nearest in the canonical frame (everything aligned to the preparer's
  reference), then each candidate is re-aligned to the model by weight matching and the least distance
  kept; plus the agreement of test predictions with that nearest model and the maximum
  wrong-prediction IoU against all training models (Zeng et al.'s similarity);
* **reference**: the held-out models' nearest-training distance (models of the same recipe the generator
  never saw); the samples' ratio to it; near-copies: closer than a third of the typical (median)
  training-to-training nearest-neighbour distance;
* medians and 5th percentiles over *all* models, never a best-of-N;
* the **verdict**: ``memorising`` when the samples' median novelty is no larger than the noise-copy
  baseline's at the same accuracy (the noise curve interpolated at the samples' median quality),
  ``degenerate`` when the samples' median accuracy is under 50% (classifiers; SIRENs: median PSNR under
  the 5th percentile of the held-out SIRENs' PSNR against their nearest training image, or under every
  training model's own fit without held-out models; class-conditional SIRENs: fewer than half the
  renders classified as the asked digit); ``poor`` when not memorising but less accurate than the noise copies at
  the same novelty; else ``novel``.

Shapes: stacked ``name -> [M, *shape]``; per-model arrays ``[M]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from generators.baselines import BASELINES
from generators.prepare import AlignFn, WeightPreparer, population_aligner
from zoo.errors import ConfigError

__all__ = ["RunContext", "GroupResult", "evaluate_run", "summarize", "verdict", "NEAR_COPY_FRACTION"]

#: A model closer to a training model than this fraction of the typical train-to-train distance is a near-copy.
NEAR_COPY_FRACTION = 1.0 / 3.0
Stacked = Mapping[str, Tensor]


def _flat_raw(stacked: Stacked, names: Sequence[str]) -> Tensor:
    n = next(iter(stacked.values())).shape[0]
    return torch.cat([stacked[k].reshape(n, -1).double() for k in names], 1)


@dataclass
class RunContext:
    """What every evaluation of one generator's runs shares (built once, :meth:`build`).

    Shapes: train_flat ``[N, D]`` raw aligned training weights; train_quality ``[N]``;
    train_preds ``[N, n_test]`` (classifiers) or None.
    """

    config: dict[str, Any]
    prep: WeightPreparer
    train: dict[str, Tensor]
    train_ids: list[int]
    held_out: dict[str, Tensor] | None
    held_out_ids: list[int]
    align: AlignFn
    family: str
    data: Any = None
    inr: Any = None
    digit_classifier: Any = None
    train_labels: Tensor | None = None
    k: int = 3
    cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, prep: WeightPreparer, config: Mapping[str, Any], train: Stacked, train_ids: Sequence[int], *,
              held_out: Stacked | None = None, held_out_ids: Sequence[int] = (), train_labels: Sequence[int] | None = None,
              inr_targets: Tensor | None = None, k: int = 3, seed: int = 0) -> RunContext:  # fmt: skip
        """``train``: the training population (raw; aligned here); ``inr_targets``: SIRENs' target images
        ``[N, P, C]`` in the training models' order; ``train_labels``: their classes."""
        from zoo.models.architectures import normalize_config

        cfg = normalize_config(config)
        align = population_aligner(prep.spec_, seed=seed) if prep.canonicalize else (lambda pop, ref: dict(pop))
        aligned = prep.align_to_reference(train, align)
        aligned.update({k: v.expand(len(train_ids), *v.shape).clone() for k, v in prep.fixed_.items()})
        ctx = cls(cfg, prep, aligned, [int(i) for i in train_ids], dict(held_out) if held_out is not None else None,
                  [int(i) for i in held_out_ids], align, cfg["family"], k=int(k))  # fmt: skip
        if ctx.family == "siren":
            from zoo.models.datasets import load_dataset

            if inr_targets is None:
                raise ConfigError("evaluating SIREN samples needs the training models' target images (inr_targets=)")
            ctx.inr = inr_targets.float()
            ctx.train_labels = torch.as_tensor(list(train_labels)) if train_labels is not None else None
            ctx.digit_classifier = _digit_classifier(load_dataset("digits"))
        else:
            from zoo.models.datasets import load_dataset

            ds = load_dataset("digits")
            ctx.data = ds.flat() if ctx.family == "mlp" else ds
        return ctx

    # -- per-model figures -------------------------------------------------------------------------

    def flat(self, stacked: Stacked) -> Tensor:
        return _flat_raw(stacked, self.prep.names_)

    def train_flat(self) -> Tensor:
        if "train_flat" not in self.cache:
            self.cache["train_flat"] = self.flat(self.train)
        return self.cache["train_flat"]

    def predictions(self, stacked: Stacked, split: str = "test") -> Tensor:
        """Classifiers: predicted classes ``[M, n]`` on a split."""
        from zoo.build.evaluate import functional_forward

        X, _ = self.data.split(split)
        out = []
        n = next(iter(stacked.values())).shape[0]
        with torch.no_grad():
            for i in range(0, n, 64):
                chunk = {k: v[i : i + 64] for k, v in stacked.items()}
                out.append(functional_forward(self.config, chunk, X.float()).argmax(-1))
        return torch.cat(out)

    def render(self, stacked: Stacked) -> Tensor:
        """SIRENs: rendered images ``[M, P, C]`` at the targets' pixel coordinates."""
        from zoo.build.evaluate import functional_forward
        from zoo.models.datasets import inr_targets, load_dataset

        if "coords" not in self.cache:
            self.cache["coords"] = inr_targets(load_dataset("digits"), n=1).coords
        with torch.no_grad():
            return functional_forward(self.config, stacked, self.cache["coords"])

    def nearest(self, stacked: Stacked, exclude_self: bool = False) -> tuple[Tensor, Tensor]:
        """``(distance [M], index into the training models [M])`` of each model's nearest training model
        after aligning the model to it (see the module docstring). ``exclude_self``: ``stacked`` is the
        training population itself (leave-one-out)."""
        tf = self.train_flat()
        canon = stacked if exclude_self else {**self.prep.align_to_reference(stacked, self.align),
                                              **{k: stacked[k] for k in self.prep.fixed_ if k in stacked}}  # fmt: skip
        q = self.flat(canon)
        d = torch.cdist(q, tf)
        if exclude_self:
            d.fill_diagonal_(float("inf"))
        k = min(self.k, tf.shape[0] - int(exclude_self))
        cand = d.topk(k, largest=False).indices  # [M, k]
        best_d, best_i = d.gather(1, cand[:, :1]).squeeze(1).clone(), cand[:, 0].clone()
        if not self.prep.canonicalize:
            return best_d.float(), best_i
        full = {**canon, **{k: v.expand(q.shape[0], *v.shape).clone() for k, v in self.prep.fixed_.items()}}
        for j in cand.unique().tolist():  # align every model that has training model j as a candidate to j
            rows = (cand == j).any(1).nonzero().squeeze(1)
            ref = {k: v[j] for k, v in self.train.items()}
            sub = self.align({k: v[rows] for k, v in full.items()}, ref)
            dj = (self.flat(sub) - tf[j]).norm(dim=1)
            better = dj < best_d[rows]
            best_d[rows[better]], best_i[rows[better]] = dj[better], j
        return best_d.float(), best_i

    def train_predictions(self) -> Tensor:
        if "train_preds" not in self.cache:
            self.cache["train_preds"] = self.predictions(self.train)
        return self.cache["train_preds"]

    def train_nn(self) -> Tensor:
        """Each training model's distance to its nearest other training model ``[N]``."""
        if "train_nn" not in self.cache:
            self.cache["train_nn"] = self.nearest(self.train, exclude_self=True)[0]
        return self.cache["train_nn"]

    def score(self, stacked: Stacked, *, classes: Sequence[int] | None = None, exclude_self: bool = False) -> dict[str, np.ndarray]:
        """Per-model figures: ``quality`` (test accuracy, or PSNR in dB), ``novelty``, ``nearest``
        (index into the training models), ``near_copy``; classifiers: ``val_acc``, ``agreement``,
        ``max_wrong_iou``; SIRENs: ``predicted_class``, ``class_match`` (given ``classes``)."""
        dist, idx = self.nearest(stacked, exclude_self=exclude_self)
        typical = float(self.train_nn().median()) if not exclude_self else float(dist.median())
        out: dict[str, np.ndarray] = {"novelty": dist.numpy(), "nearest": idx.numpy(),
                                      "near_copy": (dist < NEAR_COPY_FRACTION * typical).numpy()}  # fmt: skip
        if self.family == "siren":
            img = self.render(stacked)
            own = torch.arange(len(idx)) if exclude_self else idx  # a training model is scored on its own image
            target = self.inr[own]
            mse = (img - target).pow(2).flatten(1).mean(1)
            rng = (target.flatten(1).amax(1) - target.flatten(1).amin(1)).clamp_min(1e-6)
            out["quality"] = (10 * torch.log10(rng**2 / mse.clamp_min(1e-12))).numpy()
            pred = self.digit_classifier(img)
            out["predicted_class"] = pred.numpy()
            if classes is not None:
                out["class_match"] = (pred == torch.tensor(np.array(classes, dtype=np.int64))).numpy()
            elif self.train_labels is not None:
                out["class_match"] = (pred == self.train_labels[own]).numpy()  # its own (training) or the nearest model's class
            return out
        _, y = self.data.split("test")
        preds = self.train_predictions() if exclude_self else self.predictions(stacked)
        _, yv = self.data.split("val")
        out["quality"] = (preds == y).float().mean(1).numpy()
        out["val_acc"] = (self.predictions(stacked, "val") == yv).float().mean(1).numpy()
        tp = self.train_predictions()
        out["agreement"] = (preds == tp[idx]).float().mean(1).numpy()
        wrong, twrong = (preds != y).float(), (tp != y).float()
        inter = wrong @ twrong.T
        union = wrong.sum(1, keepdim=True) + twrong.sum(1)[None] - inter
        iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
        if exclude_self:
            iou.fill_diagonal_(0.0)
        out["max_wrong_iou"] = iou.max(1).values.numpy()
        return out


def _digit_classifier(ds: Any) -> Any:
    """A digits classifier for rendered SIREN images (values in [-1, 1], the INR convention):
    logistic regression on the training split; returns ``classify(images [M, P, 1]) -> [M]``."""
    from sklearn.linear_model import LogisticRegression

    X, y = ds.split("train")
    pix = ds.unnormalize(X).reshape(X.shape[0], -1).clamp(0, 1) * 2 - 1
    clf = LogisticRegression(max_iter=2000).fit(pix.numpy(), y.numpy())
    Xt, yt = ds.split("test")
    test_acc = float((clf.predict((ds.unnormalize(Xt).reshape(Xt.shape[0], -1).clamp(0, 1) * 2 - 1).numpy()) == yt.numpy()).mean())

    def classify(images: Tensor) -> Tensor:
        return torch.as_tensor(clf.predict(images.reshape(images.shape[0], -1).clamp(-1, 1).numpy()))

    classify.test_accuracy = test_acc  # type: ignore[attr-defined]
    return classify


# ----------------------------------------------------------------------------------------------
# Summaries and the verdict


@dataclass
class GroupResult:
    """The per-model figures of one group (``samples``, a baseline, ``held_out``, ``train``)."""

    kind: str
    scores: dict[str, np.ndarray]


def _q(x: np.ndarray, p: float) -> float:
    return float(np.quantile(x, p)) if len(x) else float("nan")


def summarize(scores: Mapping[str, np.ndarray], *, reference_novelty: float, train_quality: np.ndarray) -> dict[str, float]:
    """Medians / 5th percentiles of a group's figures (never a best-of-N)."""
    q, nov = np.asarray(scores["quality"], dtype=float), np.asarray(scores["novelty"], dtype=float)
    out = {"n": int(len(q)), "quality_median": _q(q, 0.5), "quality_p5": _q(q, 0.05),
           "novelty_median": _q(nov, 0.5), "novelty_p5": _q(nov, 0.05),
           "novelty_ratio": _q(nov, 0.5) / reference_novelty if reference_novelty > 0 else float("nan"),
           "near_copy_fraction": float(np.mean(scores["near_copy"])),
           "inside_train_range": float(np.mean((q >= train_quality.min()) & (q <= train_quality.max())))}  # fmt: skip
    for k in ("agreement", "max_wrong_iou", "val_acc"):
        if k in scores:
            out[f"{k}_median"] = _q(np.asarray(scores[k], dtype=float), 0.5)
    if "class_match" in scores:
        out["class_match_fraction"] = float(np.mean(scores["class_match"]))
    if "val_acc" in scores:
        out["below_50"] = float(np.mean(q < 0.5))
    return out


def verdict(samples: Mapping[str, float], noise: Sequence[Mapping[str, float]], *, classifier: bool = True,
            quality_floor: float | None = None, class_match: float | None = None) -> dict[str, Any]:
    """The run's verdict from the summaries of the samples and of the noise-copy levels.

    ``noise_novelty_at_quality``: the noise curve's median novelty at the samples' median quality
    (linear interpolation, clamped to the curve's ends); ``noise_quality_at_novelty``: the curve's
    median quality at the samples' median novelty; ``quality_gain_vs_noise`` = samples' quality minus it.
    ``degenerate``: classifiers under 50% median accuracy; SIRENs whose median PSNR is under
    ``quality_floor`` (what a new SIREN reaches, see :func:`evaluate_run`), or class-conditional SIRENs
    of which fewer than half render the asked digit (``class_match``); ``poor``: not memorising, but less accurate than the noise
    copies at the same novelty.
    """
    pts = sorted((float(s["quality_median"]), float(s["novelty_median"])) for s in noise)
    qs, ns = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    by_nov = sorted(pts, key=lambda p: p[1])
    nov_at_q = float(np.interp(samples["quality_median"], qs, ns))
    q_at_nov = float(np.interp(samples["novelty_median"], [p[1] for p in by_nov], [p[0] for p in by_nov]))
    if classifier and samples["quality_median"] < 0.5 or (
        not classifier and quality_floor is not None and samples["quality_median"] < quality_floor
    ) or (class_match is not None and class_match < 0.5):
        word = "degenerate"
    elif samples["novelty_median"] <= nov_at_q:
        word = "memorising"
    elif float(samples["quality_median"]) < q_at_nov:
        word = "poor"  # new, but less accurate than noise copies as far from the training set
    else:
        word = "novel"
    return {"verdict": word, "noise_novelty_at_quality": nov_at_q, "noise_quality_at_novelty": q_at_nov,
            "quality_gain_vs_noise": float(samples["quality_median"]) - q_at_nov}  # fmt: skip


def evaluate_run(ctx: RunContext, samples: Stacked, *, classes: Sequence[int] | None = None, n_baseline: int | None = None,
                 seed: int = 0, baselines: Sequence[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Score the samples, every baseline, the held-out and the training models; summaries and verdict.

    Returns ``{"groups": {kind: GroupResult}, "summary": {kind: {...}}, "verdict": {...}, "reference": ...}``.
    """
    n = next(iter(samples.values())).shape[0]
    nb = int(n_baseline or min(n, 100))
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    groups = {"samples": GroupResult("samples", ctx.score(samples, classes=classes))}
    train_scores = ctx.score(ctx.train, exclude_self=True)
    groups["train"] = GroupResult("train", train_scores)
    train_norm = ctx.prep.flat(ctx.train).double()
    for name in baselines if baselines is not None else BASELINES:
        vec = BASELINES[name](train_norm, nb, generator=gen)
        groups[name] = GroupResult(name, ctx.score(ctx.prep.inverse_transform(vec.float() if ctx.prep.dtype == "float32" else vec)))
    if ctx.held_out is not None:
        groups["held_out"] = GroupResult("held_out", ctx.score(ctx.held_out))
        reference, ref_kind = float(np.median(groups["held_out"].scores["novelty"])), "held_out"
    else:
        reference, ref_kind = float(np.median(train_scores["novelty"])), "train_leave_one_out"
    tq = np.asarray(train_scores["quality"], dtype=float)
    summary = {k: summarize(g.scores, reference_novelty=reference, train_quality=tq) for k, g in groups.items()}
    noise = [s for k, s in summary.items() if k.startswith("noise_")]
    # SIRENs: a sample's PSNR is against its nearest training model's image, which a new SIREN (a held-out
    # one) matches no better than that; a training SIREN's own fit is far higher (measured 126 dB vs 16 dB)
    floor = float(np.quantile(groups["held_out"].scores["quality"], 0.05)) if ctx.held_out is not None else float(tq.min())
    asked = summary["samples"].get("class_match_fraction") if classes is not None else None
    v = verdict(summary["samples"], noise, classifier=ctx.family != "siren", quality_floor=floor, class_match=asked)
    v.update({"reference": ref_kind, "reference_novelty": reference, "typical_train_distance": float(ctx.train_nn().median()),
              "train_quality_median": float(np.median(tq)), "novelty_ratio": summary["samples"]["novelty_ratio"],
              "near_copy_fraction": summary["samples"]["near_copy_fraction"], "quality_floor": floor})  # fmt: skip
    if ctx.digit_classifier is not None:
        v["digit_classifier_test_acc"] = ctx.digit_classifier.test_accuracy
    return {"groups": groups, "summary": summary, "verdict": v}


def plot_run(result: Mapping[str, Any], title: str = "", quality_label: str = "test accuracy") -> Any:
    """A matplotlib figure of quality against novelty for the samples, baselines, held-out and training models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    styles = {"samples": ("tab:red", "o", 18), "held_out": ("tab:green", "^", 22), "train": ("0.6", ".", 10)}
    for kind, g in result["groups"].items():
        color, marker, size = styles.get(kind, (None, "x" if kind.startswith("noise_") else "s", 10))
        ax.scatter(g.scores["novelty"], g.scores["quality"], s=size, marker=marker, color=color, alpha=0.6, label=kind)
    v = result["verdict"]
    ax.set_xlabel("novelty: L2 distance to the nearest training model after alignment")
    ax.set_ylabel(quality_label)
    ax.set_title(title or f"verdict: {v['verdict']} (novelty ratio {v['novelty_ratio']:.2f} vs {v['reference']})", fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    return fig
