"""``"stats"``: statistics features (Unterthiner et al. 2020) with a scikit-learn model.

Per floating tensor: mean, variance, quantiles (0, 25, 50, 75, 100 %), L2 norm and mean absolute
value; invariant to hidden-neuron permutations by construction. The model: ``"gbt"`` (gradient
boosted trees: HistGradientBoostingRegressor/Classifier), ``"ridge"`` (RidgeCV / logistic
regression), or ``"auto"`` (gbt). Features are standardised for the linear models.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from weightspace.encoders.base import Encoder
from weightspace.encoders.registry import register_encoder
from weightspace.spec import PermutationSpec
from weightspace.views import check_stacked
from zoo.errors import ConfigError, MismatchError, UnsafeFileError

__all__ = ["StatsEncoder", "weight_statistics", "STAT_NAMES"]

STAT_NAMES = ("mean", "var", "q0", "q25", "q50", "q75", "q100", "l2", "absmean")
_Q = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)


def weight_statistics(stacked: Mapping[str, Tensor], names: list[str] | None = None) -> np.ndarray:
    """Statistics features ``[N, len(names) * 9]`` (:data:`STAT_NAMES` per tensor, in ``names`` order)."""
    n = check_stacked(stacked)
    names = names if names is not None else [k for k, v in stacked.items() if v.is_floating_point()]
    cols = []
    for k in names:
        x = stacked[k].reshape(n, -1).double()
        q = torch.quantile(x, _Q, dim=1).T if x.shape[1] > 0 else torch.zeros(n, 5, dtype=torch.float64)
        var = x.var(1, unbiased=False)
        cols.append(torch.cat([x.mean(1, keepdim=True), var[:, None], q, x.norm(dim=1, keepdim=True), x.abs().mean(1, keepdim=True)], 1))
    return torch.cat(cols, 1).numpy()


@register_encoder("stats")
class StatsEncoder(Encoder):
    """Statistics features + a scikit-learn model (see the module docstring)."""

    def __init__(self, task: str = "regression", model: str = "auto", target: str = "rank", seed: int = 0,
                 max_iter: int = 300) -> None:  # fmt: skip
        self._store_params(locals())

    def _make_model(self) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
        from sklearn.linear_model import LogisticRegression, RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        kind = "gbt" if self.model == "auto" else self.model
        reg = self.task == "regression"
        if kind == "gbt":
            cls = HistGradientBoostingRegressor if reg else HistGradientBoostingClassifier
            return cls(max_iter=self.max_iter, random_state=self.seed, learning_rate=0.05)
        if kind in ("ridge", "linear"):
            est = RidgeCV(alphas=np.logspace(-3, 3, 13)) if reg else LogisticRegression(max_iter=2000, C=1.0)
            return make_pipeline(StandardScaler(), est)
        raise ConfigError(f"unknown stats model {self.model!r}; valid: auto, gbt, ridge")

    def fit(self, X: Mapping[str, Tensor], y: Any, *, spec: PermutationSpec | None = None, align: Any = None,
            arch: Any = None, progress: bool = False) -> StatsEncoder:  # fmt: skip
        """Fit the model on the statistics of ``X``; ``spec``/``align``/``arch`` are accepted and unused."""
        self._check_task()
        n = check_stacked(X)
        if len(y) != n:
            raise MismatchError(f"{n} models but {len(y)} targets")
        self.names_ = [k for k, v in X.items() if v.is_floating_point()]
        y = np.asarray(y)
        if self.task == "regression":
            y = self._encode_targets(y).numpy()  # standard or rank scores
        else:
            self.classes_ = sorted(np.unique(y).tolist())
        feats = weight_statistics(X, self.names_)
        self.feat_mean_ = feats.mean(0)
        std = feats.std(0)
        self.feat_std_ = np.where(std > 0, std, 1.0)  # constant features stay finite (0 after centring)
        self.model_ = self._make_model().fit(feats, y)
        self.layout_ = {k: list(X[k].shape[1:]) for k in self.names_}
        return self

    def _features(self, X: Mapping[str, Tensor]) -> np.ndarray:
        self._check_fitted()
        check_stacked({k: X[k] for k in self.layout_ if k in X}, self.layout_)
        return weight_statistics(X, self.names_)

    def predict(self, X: Mapping[str, Tensor]) -> np.ndarray:
        f = self._features(X)
        out = self.model_.predict(f)
        return self._decode(torch.as_tensor(out)) if self.task == "regression" else out

    def predict_proba(self, X: Mapping[str, Tensor]) -> np.ndarray:
        if self.task != "classification":
            raise ConfigError("predict_proba is for task='classification'")
        f = self._features(X)
        return self.model_.predict_proba(f)

    def transform(self, X: Mapping[str, Tensor]) -> np.ndarray:
        """The statistics features, standardised with the training statistics."""
        f = self._features(X)
        return (f - self.feat_mean_) / self.feat_std_

    def _fitted_state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        state = {"names_": self.names_, "layout_": self.layout_, "feat_mean_": self.feat_mean_.tolist(),
                 "feat_std_": self.feat_std_.tolist(), **self._target_state()}
        return state, {}

    def write_files(self, p: Path) -> None:
        """Also writes ``model.pkl`` (a scikit-learn pickle: :func:`load_encoder` needs ``trust_pickle=True``)."""
        super().write_files(p)
        (p / "model.pkl").write_bytes(pickle.dumps(self.model_))

    def _restore(self, state: Mapping[str, Any], tensors: Mapping[str, Tensor], folder: Path | None = None,
                 trust_pickle: bool = False) -> None:  # fmt: skip
        self.names_, self.layout_ = list(state["names_"]), dict(state["layout_"])
        # encoders saved before features were standardised: keep their raw features
        self.feat_mean_ = np.asarray(state.get("feat_mean_", 0.0), dtype=np.float64)
        self.feat_std_ = np.asarray(state.get("feat_std_", 1.0), dtype=np.float64)
        for k in ("y_mean_", "y_std_", "y_sorted_", "classes_"):
            if k in state:
                setattr(self, k, state[k])
        if folder is None or not (folder / "model.pkl").is_file():
            raise ConfigError("the saved stats encoder has no model.pkl")
        if not trust_pickle:
            raise UnsafeFileError(
                f"{folder / 'model.pkl'} is a pickle (a scikit-learn model); loading it can run code. "
                "Load it only if you trust its source: load_encoder(path, trust_pickle=True)"
            )
        self.model_ = pickle.loads((folder / "model.pkl").read_bytes())
