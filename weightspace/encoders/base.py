"""The encoder contract (scikit-learn style) and the shared machinery of the torch encoders.

* configuration is only the constructor's arguments, stored unchanged (:meth:`Encoder.get_params`);
* ``fit(X, y, spec=None, align=None)`` returns ``self``; learned state ends in ``_``;
* ``predict(X)`` gives targets (floats for ``task="regression"``, class labels for
  ``"classification"``), ``transform(X)`` gives embeddings ``[N, D]`` (invariant for equivariant encoders);
* ``save(dir)`` writes ``config.json`` (name, params, JSON-able learned state) and, for torch
  encoders, ``weights.safetensors``; :func:`load_encoder` rebuilds it.

``X`` is always a stacked population ``{name: Tensor[N, *shape]}`` of one architecture (``Population.stack()``).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from weightspace.augment import AlignFn, Augmenter
from weightspace.spec import PermutationSpec
from weightspace.train import classification_loss, regression_loss, train_network
from weightspace.views import LayerNormalizer, check_stacked, mlp_spec_from_names
from zoo.errors import ConfigError, CorruptFileError, MismatchError, NotFoundError

__all__ = ["Encoder", "TorchEncoder", "load_encoder", "TASKS"]

TASKS = ("regression", "classification")
Stacked = Mapping[str, Tensor]


class Encoder:
    """Base class: the scikit-learn contract plus JSON save/load of the configuration."""

    name: ClassVar[str] = ""

    def _store_params(self, params: Mapping[str, Any]) -> None:
        """Keep the constructor's arguments as attributes (call ``self._store_params(locals())`` first thing
        in ``__init__``); tuples become lists, so a configuration survives a JSON round trip unchanged."""
        for k in inspect.signature(type(self).__init__).parameters:
            if k != "self":
                v = params[k]
                setattr(self, k, list(v) if isinstance(v, tuple) else v)

    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments (the configuration), as given."""
        return {p: getattr(self, p) for p in inspect.signature(type(self).__init__).parameters if p != "self"}

    def set_params(self, **params: Any) -> Encoder:
        valid = self.get_params()
        for k, v in params.items():
            if k not in valid:
                raise ConfigError(f"encoder {self.name!r} has no option {k!r}; options: {', '.join(valid)}")
            setattr(self, k, v)
        return self

    def clone(self) -> Encoder:
        """An unfitted copy with the same configuration."""
        return type(self)(**json.loads(json.dumps(self.get_params())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_task(self) -> None:
        if self.task not in TASKS:  # type: ignore[attr-defined]
            raise ConfigError(f"unknown task {self.task!r}; valid: {', '.join(TASKS)}")  # type: ignore[attr-defined]

    @property
    def fitted(self) -> bool:
        return hasattr(self, "layout_")

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise ConfigError(f"encoder {self.name!r} is not fitted yet; call fit(X, y) first")

    # -- targets
    def _encode_targets(self, y: Any) -> Tensor:
        y = np.asarray(y)
        if self.task == "regression":  # type: ignore[attr-defined]
            y = y.astype(np.float64)
            if not np.isfinite(y).all():
                raise ConfigError("regression targets contain NaN/inf; drop those models first")
            self.y_mean_, self.y_std_ = float(y.mean()), float(y.std() or 1.0)
            if getattr(self, "target", "standard") == "rank":  # normal scores of the ranks; decoded by quantiles
                from scipy.stats import norm, rankdata

                self.y_sorted_ = np.sort(y).tolist()
                return torch.tensor(norm.ppf((rankdata(y) - 0.5) / len(y)), dtype=torch.float32)
            if getattr(self, "target", "standard") != "standard":
                raise ConfigError(f"unknown target transform {self.target!r}; valid: standard, rank")  # type: ignore[attr-defined]
            return torch.tensor((y - self.y_mean_) / self.y_std_, dtype=torch.float32)
        self.classes_ = sorted(np.unique(y).tolist())
        if len(self.classes_) < 2:
            raise ConfigError("classification needs at least two classes in the training labels")
        index = {c: i for i, c in enumerate(self.classes_)}
        lab = torch.tensor([index[v] for v in y.tolist()])
        return torch.nn.functional.one_hot(lab, len(self.classes_)).float()

    def _decode(self, out: Tensor) -> np.ndarray:
        if self.task == "regression":  # type: ignore[attr-defined]
            z = np.asarray(out, dtype=np.float64).reshape(len(out), -1)[:, 0]
            if getattr(self, "target", "standard") == "rank":
                from scipy.stats import norm

                ys = np.asarray(self.y_sorted_)
                return np.interp(norm.cdf(z), (np.arange(len(ys)) + 0.5) / len(ys), ys)
            return z * self.y_std_ + self.y_mean_
        return np.asarray(self.classes_, dtype=object)[out.argmax(-1).numpy()].astype(type(self.classes_[0]))

    def _loss(self) -> Any:
        """The training loss ``(outputs [B, n_out], encoded targets) -> scalar`` (a hook: the weight-diff
        interpreter's multi-head encoders replace it with a masked sum of per-head losses)."""
        return regression_loss if self.task == "regression" else classification_loss  # type: ignore[attr-defined]

    def _n_out(self) -> int:
        return 1 if self.task == "regression" else len(self.classes_)  # type: ignore[attr-defined]

    def _target_state(self) -> dict[str, Any]:
        if self.task == "regression":  # type: ignore[attr-defined]
            st = {"y_mean_": self.y_mean_, "y_std_": self.y_std_}
            if hasattr(self, "y_sorted_"):
                st["y_sorted_"] = self.y_sorted_
            return st
        return {"classes_": self.classes_}

    # -- persistence
    def _fitted_state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        raise NotImplementedError

    def _restore(self, state: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        raise NotImplementedError

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the fitted encoder as a folder: ``config.json`` (+ ``weights.safetensors``).

        The folder is written under a temporary name and renamed into place, through the guard every
        weightzoo output goes through (:mod:`zoo.io.outpath`): never into a zoo, the home folder or the
        current one; a non-empty folder only with ``overwrite=True``, and only one weightzoo wrote.
        """
        from zoo.io.outpath import staged_output_dir

        self._check_fitted()
        with staged_output_dir(path, overwrite=overwrite, what="encoder folder") as tmp:
            self.write_files(tmp)
        return Path(path).expanduser()

    def write_files(self, p: Path) -> None:
        """Write the saved form into the existing folder ``p`` (what :meth:`save` stages)."""
        self._check_fitted()
        state, tensors = self._fitted_state()
        doc = {"encoder": self.name, "params": self.get_params(), "state": state}
        tmp = p / "config.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        if tensors:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(p / "weights.safetensors"))
        tmp.replace(p / "config.json")

    def to_config(self) -> dict[str, Any]:
        """``{"encoder": name, "params": {...}}``: enough to rebuild an unfitted copy."""
        return {"encoder": self.name, "params": self.get_params()}


def load_encoder(path: str | Path, *, trust_pickle: bool = False) -> Encoder:
    """Rebuild a fitted encoder saved with :meth:`Encoder.save`.

    ``trust_pickle``: allow unpickling a scikit-learn model (the ``stats`` encoder); refused by default.
    """
    from weightspace.encoders.registry import make_encoder

    p = Path(path)
    cfg = p / "config.json"
    if not cfg.is_file():
        raise NotFoundError(f"no saved encoder in {p} (config.json missing); save one with encoder.save(folder)")
    try:
        doc = json.loads(cfg.read_text())
        name, params, state = doc["encoder"], doc["params"], doc["state"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptFileError(f"{cfg} is not a saved encoder config ({e})") from None
    enc = make_encoder(name, **params)
    w = p / "weights.safetensors"
    tensors = load_file(str(w)) if w.is_file() else {}
    if name == "stats":
        enc._restore(state, tensors, folder=p, trust_pickle=trust_pickle)
    else:
        enc._restore(state, tensors)
    return enc


class TorchEncoder(Encoder):
    """A torch network over a normalised view of the weights; subclasses define the view and network.

    Subclasses implement ``_prepare(normalised stacked) -> inputs`` and ``_build_net(n_out) -> nn.Module``
    (a module with ``forward(inputs) -> [B, n_out]`` and ``embed(inputs) -> [B, D]``).
    """

    needs_spec: ClassVar[bool] = True  # False: any architecture (the spec only serves augmentations)
    needs_arch: ClassVar[bool] = False  # True: the encoder runs the models (fit needs ``arch=``)
    normalize_inputs: ClassVar[bool] = True  # False: ``_prepare`` gets the raw weights
    task: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    augment: list
    seed: int

    def _prepare(self, stacked: Stacked) -> Any:
        raise NotImplementedError

    def _build_net(self, n_out: int) -> nn.Module:
        raise NotImplementedError

    def _set_arch(self, arch: Mapping[str, Any] | None) -> None:
        if arch is None:
            if self.needs_arch:
                raise ConfigError(
                    f"encoder {self.name!r} runs the models, so it needs their architecture: "
                    "fit(X, y, arch=zoo.population(name).config)"
                )
            self.arch_ = None
            return
        from zoo.models.architectures import normalize_config

        self.arch_ = normalize_config(arch)

    def _normalize(self, raw: Stacked) -> Stacked:
        return self.normalizer_.transform(raw) if self.normalize_inputs else raw

    def _layout(self, X: Stacked, spec: PermutationSpec | None) -> None:
        """Learn the input layout (shapes, spec) from the training population.

        The spec comes from the caller, else from the architecture (``fit(..., arch=...)``); only a bare
        ``fit(X, y)`` falls back to reading an MLP chain from ``layers.{i}`` tensor names.
        """
        if spec is None and getattr(self, "arch_", None) is not None:
            from weightspace.spec import spec_for

            spec = spec_for(self.arch_)
        if spec is None:
            try:
                spec = mlp_spec_from_names(list(X))
            except ConfigError:
                if self.needs_spec:
                    raise
                spec = PermutationSpec({k: (None,) * (v.dim() - 1) for k, v in X.items()})  # nothing permuted
        spec.check(X)
        self.spec_ = spec
        self.layout_ = {k: list(v.shape[1:]) for k, v in X.items()}

    def fit(
        self,
        X: Stacked,
        y: Any,
        *,
        spec: PermutationSpec | None = None,
        align: AlignFn | None = None,
        arch: Mapping[str, Any] | None = None,
        progress: bool = False,
    ) -> TorchEncoder:
        """Fit on a stacked training population ``X`` and targets ``y [N]``.

        ``spec``: the architecture's permutation spec (default: read from mlp-style names).
        ``align``: the aligner for mixup augmentation (see :class:`~weightspace.augment.Augmenter`).
        ``arch``: the population's architecture config (``Population.config``); needed by encoders that
        run the models (``probe``), ignored by the others.
        """
        self._check_task()
        n = check_stacked(X)
        if len(y) != n:
            raise MismatchError(f"{n} models but {len(y)} targets")
        X = {k: v.float() for k, v in X.items()}
        self._set_arch(arch)
        self._layout(X, spec)
        yt = self._encode_targets(y)
        self.normalizer_ = LayerNormalizer().fit(X)
        torch.manual_seed(int(self.seed))
        self.net_ = self._build_net(self._n_out())
        aug = Augmenter(self.augment).prepare(X, align, self.spec_)
        aug.set_targets(yt)

        def batch_fn(idx: Tensor, gen: torch.Generator) -> tuple[Any, Tensor]:
            raw = {k: v[idx] for k, v in X.items()}
            yb = yt[idx]
            if aug:
                raw, yb = aug(raw, yb, self.spec_, index=idx, generator=gen)
            return self._prepare(self._normalize(raw)), yb

        loss = self._loss()
        self.history_ = train_network(
            self.net_, n, batch_fn, loss, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            weight_decay=self.weight_decay, seed=self.seed, progress=progress,
        )  # fmt: skip
        return self

    @torch.no_grad()
    def _forward(self, X: Stacked, method: str, batch: int = 1024) -> Tensor:
        self._check_fitted()
        check_stacked(X, self.layout_)
        n = check_stacked(X)
        outs = []
        for i in range(0, n, batch):
            raw = {k: X[k][i : i + batch].float() for k in self.layout_}
            outs.append(getattr(self.net_, method)(self._prepare(self._normalize(raw))))
        return torch.cat(outs)

    def decision_function(self, X: Stacked) -> Tensor:
        """Raw network outputs ``[N, n_out]`` (standardised regression targets or class logits)."""
        return self._forward(X, "forward")

    def predict(self, X: Stacked) -> np.ndarray:
        return self._decode(self.decision_function(X))

    def predict_proba(self, X: Stacked) -> np.ndarray:
        if self.task != "classification":
            raise ConfigError("predict_proba is for task='classification'")
        return torch.softmax(self.decision_function(X), -1).numpy()

    def transform(self, X: Stacked) -> np.ndarray:
        """Embeddings ``[N, D]``: the head's penultimate activations."""
        return self._forward(X, "embed").numpy()

    def _fitted_state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        state = {
            "layout_": self.layout_, "spec_": self.spec_.to_dict(), "normalizer_": self.normalizer_.state(),
            "history_": self.history_, "arch_": getattr(self, "arch_", None), **self._target_state(),
        }  # fmt: skip
        return state, {k: v.detach().clone() for k, v in self.net_.state_dict().items()}

    def _restore(self, state: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        self.layout_ = {k: list(v) for k, v in state["layout_"].items()}
        self.spec_ = PermutationSpec.from_dict(state["spec_"])
        self.normalizer_ = LayerNormalizer.from_state(state["normalizer_"])
        self.history_ = list(state.get("history_", []))
        self.arch_ = state.get("arch_")
        for k in ("y_mean_", "y_std_", "y_sorted_", "classes_"):
            if k in state:
                setattr(self, k, state[k])
        self.net_ = self._build_net(self._n_out())
        try:
            self.net_.load_state_dict(dict(tensors))
        except RuntimeError as e:
            raise CorruptFileError(f"the saved weights do not fit encoder {self.name!r}: {e}") from None
        self.net_.eval()
