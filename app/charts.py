"""Plotly figures of the explorer (no Streamlit here)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app.weights import lineage_layout

_OP_COLORS = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC"]


def lineage_figure(edges: pd.DataFrame, center: int, labels: Mapping[int, str], ops: Mapping[int, str]) -> go.Figure:
    """The lineage around ``center``: ancestors left, descendants right, edges coloured by operation.

    ``edges``: child_id, parent_id, role, op. ``labels``/``ops``: hover text and op of each node.
    """
    pos = lineage_layout(edges, center)
    fig = go.Figure()
    opnames = sorted(set(edges["op"])) if not edges.empty else []
    colour = {op: _OP_COLORS[i % len(_OP_COLORS)] for i, op in enumerate(opnames)}
    for op in opnames:
        xs, ys = [], []
        for r in edges[edges["op"] == op].itertuples():
            (x0, y0), (x1, y1) = pos[r.parent_id], pos[r.child_id]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": colour[op], "width": 2}, name=op, hoverinfo="skip"))
    for r in edges.itertuples():  # arrow heads, at the child end
        (x0, y0), (x1, y1) = pos[r.parent_id], pos[r.child_id]
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                           arrowhead=2, arrowsize=1.2, arrowwidth=1.5, arrowcolor=colour[r.op], standoff=12, text="")  # fmt: skip
    nodes = sorted(pos)
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes], mode="markers+text",
        text=[str(n) for n in nodes], textposition="top center", customdata=nodes,
        marker={"size": [22 if n == center else 14 for n in nodes], "color": ["#E45756" if n == center else "#4C78A8" for n in nodes],
                "line": {"width": 1, "color": "white"}},
        hovertext=[f"{labels.get(n, n)}<br>made by {ops.get(n, '?')}" for n in nodes], hoverinfo="text", name="models",
        showlegend=False,
    ))  # fmt: skip
    fig.update_layout(
        height=max(260, 60 * (max((sum(1 for p in pos.values() if p[0] == d) for d in {p[0] for p in pos.values()}), default=1) + 2)),
        margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend_title_text="operation",
        xaxis={"title": "generation (0 = this model)", "dtick": 1, "zeroline": False},
        yaxis={"visible": False},
    )  # fmt: skip
    return fig


def histograms(values: Mapping[str, np.ndarray], *, bins: int = 60, title: str = "") -> go.Figure:
    """Overlaid histograms (one trace per key)."""
    fig = go.Figure()
    for name, v in values.items():
        fig.add_trace(go.Histogram(x=v, name=name, nbinsx=bins, opacity=0.6, histnorm="probability density"))
    fig.update_layout(barmode="overlay", height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10}, title=title,
                      yaxis_title="density")
    return fig


def spectra(svals: Mapping[str, np.ndarray]) -> go.Figure:
    """Singular value spectra, one line per layer (log scale)."""
    fig = go.Figure()
    for name, s in svals.items():
        fig.add_trace(go.Scatter(x=np.arange(1, len(s) + 1), y=s, mode="lines+markers", name=name))
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10}, title="Singular value spectra",
                      xaxis_title="index", yaxis_title="singular value", yaxis_type="log")  # fmt: skip
    return fig


def lmc_figure(curves: Mapping[str, object], what: str = "loss") -> go.Figure:
    """Loss or accuracy along the linear path, one line per curve (``LMCCurve``-like: t, loss, acc)."""
    fig = go.Figure()
    for label, c in curves.items():
        y = getattr(c, what)
        fig.add_trace(go.Scatter(x=np.asarray(c.t), y=np.asarray(y), mode="lines+markers", name=label))
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title="t (0 = A, 1 = B)",
                      yaxis_title=what, title=f"{what} along the linear path")  # fmt: skip
    return fig
