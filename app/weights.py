"""Weight computations behind the explorer's charts (pure functions: tensors in, tables/arrays out).

No Streamlit here, so they are tested and timed on their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from zoo.errors import ConfigError


def as_matrix(t: Tensor) -> Tensor | None:
    """A weight as a 2-D matrix ``[out, in * k...]`` (conv kernels flattened), or None for vectors/scalars."""
    if t.dim() < 2 or not t.is_floating_point() or t.numel() == 0:
        return None
    return t.reshape(t.shape[0], -1).double()


def singular_values(t: Tensor) -> np.ndarray | None:
    """Singular values of ``as_matrix(t)``, largest first (None for 0-/1-D tensors)."""
    m = as_matrix(t)
    if m is None:
        return None
    return torch.linalg.svdvals(m).numpy()


def effective_rank(s: np.ndarray | None) -> float | None:
    """Roy & Vetterli's effective rank: ``exp(entropy(s / sum(s)))`` (1 .. min(shape))."""
    if s is None or len(s) == 0:
        return None
    total = float(s.sum())
    if total <= 0 or not math.isfinite(total):
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def stable_rank(s: np.ndarray | None) -> float | None:
    """``||W||_F^2 / ||W||_2^2``."""
    if s is None or len(s) == 0 or s[0] <= 0:
        return None
    return float((s**2).sum() / s[0] ** 2)


def layer_table(state: Mapping[str, Tensor], blob_stats: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per tensor: name, shape, dtype, numel, L2 / mean / std / abs max (from the catalog's
    blobs table when given, else computed), and for 2-D+ weights the effective and stable rank and
    the largest singular value."""
    stats = {}
    if blob_stats is not None and not blob_stats.empty:
        stats = {r["name"]: r for r in blob_stats.to_dict("records")}
    rows = []
    for name, t in state.items():
        st = stats.get(name)
        if st is None:
            f = t.double() if t.numel() else None
            st = {
                "l2": float(f.norm()) if f is not None else None,
                "mean": float(f.mean()) if f is not None else None,
                "std": float(f.std()) if f is not None and t.numel() > 1 else 0.0,
                "absmax": float(f.abs().max()) if f is not None else None,
            }
        s = singular_values(t)
        rows.append({
            "tensor": name, "shape": "×".join(map(str, t.shape)) or "scalar", "dtype": str(t.dtype).replace("torch.", ""),
            "numel": t.numel(), "l2": st.get("l2"), "mean": st.get("mean"), "std": st.get("std"),
            "absmax": st.get("absmax"), "effective_rank": effective_rank(s), "stable_rank": stable_rank(s),
            "sigma_max": float(s[0]) if s is not None and len(s) else None,
        })  # fmt: skip
    return pd.DataFrame(rows)


def diff_norms(child: Mapping[str, Tensor], parent: Mapping[str, Tensor]) -> pd.DataFrame:
    """Per tensor: ``||child - parent||``, the parent's norm, the relative change and the cosine
    similarity. Tensors only in one model or with different shapes are listed with a note."""
    rows = []
    for name in list(parent) + [k for k in child if k not in parent]:
        a, b = child.get(name), parent.get(name)
        if a is None or b is None:
            rows.append({"tensor": name, "note": "only in the " + ("parent" if a is None else "child")})
            continue
        if a.shape != b.shape:
            rows.append({"tensor": name, "note": f"shape {tuple(b.shape)} -> {tuple(a.shape)}"})
            continue
        if not (a.is_floating_point() and b.is_floating_point()):
            rows.append({"tensor": name, "note": "not floating point", "diff_l2": float((a != b).sum())})
            continue
        a64, b64 = a.double().flatten(), b.double().flatten()
        d = float((a64 - b64).norm())
        pn, cn = float(b64.norm()), float(a64.norm())
        rows.append({
            "tensor": name, "numel": a.numel(), "diff_l2": d, "parent_l2": pn, "relative": d / pn if pn > 0 else None,
            "cosine": float(a64 @ b64 / (cn * pn)) if cn > 0 and pn > 0 else None,
            "diff_absmax": float((a64 - b64).abs().max()) if a.numel() else 0.0, "note": "",
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["tensor", "numel", "diff_l2", "parent_l2", "relative", "cosine", "diff_absmax", "note"])


def flatten_stack(W: Mapping[str, Tensor], *, standardize: bool = True) -> np.ndarray:
    """A stacked population ``{name: [N, ...]}`` as one float32 matrix ``[N, D]`` (floating tensors only).

    With ``standardize`` each tensor block is divided by its overall standard deviation, so that big
    layers do not drown out small ones (biases, the output layer).
    """
    blocks = []
    for v in W.values():
        if not v.is_floating_point() or v.shape[0] == 0:
            continue
        x = v.reshape(v.shape[0], -1).float()
        if standardize:
            s = float(x.std()) if x.numel() > 1 else 0.0
            x = x / s if s > 0 else x
        blocks.append(x)
    if not blocks:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(blocks, dim=1).numpy()


def align_stack(stacked: Mapping[str, Tensor], config: Mapping[str, Any] | None) -> tuple[dict[str, Tensor], dict]:
    """The population canonicalised: every model's neurons permuted onto the first model's by weight
    matching (Git Re-Basin), so that unit i means the same unit across models and a map of the weights
    shows their differences instead of their arbitrary neuron order.

    Returns ``(aligned stack, info)``; ``info`` holds the mean L2 distance to the reference before and
    after. Raises :class:`~zoo.ConfigError` when the architecture has no permutation spec.
    """
    from analysis.align import align_population
    from weightspace.spec import spec_for

    if config is None:
        raise ConfigError("the population has no architecture config, so it has no permutation spec")
    spec = spec_for(config)
    reference = {k: v[0] for k, v in stacked.items()}
    res = align_population(dict(stacked), reference, spec=spec, config=dict(config), max_iter=30)
    info = {"distance_before": float(res.distance_before.mean()), "distance_after": float(res.distance_after.mean())}
    return res.aligned, info


def embed_2d(X: np.ndarray, method: str = "pca", *, seed: int = 0, perplexity: float = 30.0) -> tuple[np.ndarray, dict]:
    """2-D coordinates of the rows of ``X`` (``[N, D]``) by PCA or t-SNE (on the top 50 principal
    components). Returns ``(coords [N, 2], info)``; ``info`` holds the explained variance for PCA."""
    n = X.shape[0]
    if n == 0:
        return np.zeros((0, 2)), {}
    Xc = X - X.mean(0, keepdims=True)
    k = min(50 if method == "tsne" else 2, n, Xc.shape[1])
    if k == 0:
        return np.zeros((n, 2)), {}
    if n > 2000 or Xc.shape[1] > 2000:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=k, svd_solver="randomized", random_state=seed)
        Z = pca.fit_transform(Xc)
        ratio = pca.explained_variance_ratio_
    else:
        U, S, _ = np.linalg.svd(Xc.astype(np.float64), full_matrices=False)
        Z = U[:, :k] * S[:k]
        var = S**2
        ratio = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    info = {"explained_variance": [float(r) for r in ratio[:2]]}
    if method == "tsne" and n >= 5:
        from sklearn.manifold import TSNE

        perp = float(min(perplexity, max(2.0, (n - 1) / 3)))
        Z = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(Z.astype(np.float32))
        info = {"perplexity": perp}
    Z = np.asarray(Z, dtype=np.float64)
    if Z.shape[1] < 2:
        Z = np.concatenate([Z, np.zeros((n, 2 - Z.shape[1]))], axis=1)
    return Z[:, :2], info


def lineage_layout(edges: pd.DataFrame, center: int) -> dict[int, tuple[float, float]]:
    """Layered positions for a lineage graph around ``center``: x = generation (ancestors < 0 <
    descendants), y spread within a generation. ``edges`` has child_id, parent_id, op, role."""
    depth: dict[int, int] = {center: 0}
    parents: dict[int, list[int]] = {}
    children: dict[int, list[int]] = {}
    for r in edges.itertuples():
        parents.setdefault(r.child_id, []).append(r.parent_id)
        children.setdefault(r.parent_id, []).append(r.child_id)
    for step, nbrs in ((-1, parents), (1, children)):
        frontier = [center]
        while frontier:
            nxt = []
            for m in frontier:
                for o in nbrs.get(m, []):
                    if o not in depth:
                        depth[o] = depth[m] + step
                        nxt.append(o)
            frontier = nxt
    for r in edges.itertuples():  # nodes reached only sideways (a merge's co-parents) sit next to their child
        for node, other, off in ((r.parent_id, r.child_id, -1), (r.child_id, r.parent_id, 1)):
            if node not in depth and other in depth:
                depth[node] = depth[other] + off
    layers: dict[int, list[int]] = {}
    for m, d in sorted(depth.items(), key=lambda kv: (kv[1], kv[0])):
        layers.setdefault(d, []).append(m)
    pos = {}
    for d, ms in layers.items():
        for i, m in enumerate(ms):
            pos[m] = (float(d), float(i - (len(ms) - 1) / 2))
    return pos
