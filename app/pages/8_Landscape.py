"""Landscape: spectral, sharpness and similarity metrics of a population, per-layer spectra, the phase map.

Uses the public API of :mod:`analysis.landscape` (``landscape`` writes the metrics through the zoo;
``population_spectra`` computes one model's spectra on the fly; ``report`` draws the phase map).
"""

import math

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from analysis.landscape import report as R
from analysis.landscape.metrics import METRIC_FAMILIES, landscape
from analysis.landscape.spectral import population_spectra, spectra_frame
from app import common as C
from zoo import ZooError

z = C.page("Landscape")
if z is None:
    st.stop()

pops = C.populations()
names = pops["name"].tolist()
# a grid whose width varies is one population per width ("digits-mlp-phases/width=16"): offer "<prefix>/*"
grids = sorted({n.split("/", 1)[0] + "/*" for n in names if "/" in n})
choices = grids + names
wanted_model = C.selected_model_key()
default = 0
if wanted_model and wanted_model.isdigit():
    with C.shown_errors():
        pop = z.get(int(wanted_model)).population
        default = choices.index(pop) if pop in choices else 0
c1, c2 = st.columns([3, 1])
target = c1.selectbox("population (or a grid of populations)", choices, index=default, key="ls_pop")
final = c2.checkbox("final checkpoints only", value=True, key="ls_final")

# ------------------------------------------------------------------------------------ compute
with st.expander("compute metrics for this population (writes them to the zoo)"):
    fams = st.multiselect("metric families", METRIC_FAMILIES.names(), default=["spectral"], key="ls_fams",
                          help="spectral: weights only, fast; hessian and cka run the models on digits (classifiers; SIRENs on their own image / grid)")  # fmt: skip
    b1, b2, b3 = st.columns(3)
    probes = int(b1.number_input("Hutchinson probes", min_value=2, value=50, step=10, key="ls_probes"))
    samples = int(b2.number_input("data samples", min_value=16, value=256, step=64, key="ls_samples"))
    boot = int(b3.number_input("bootstrap replicates", min_value=0, value=100, step=50, key="ls_boot"))
    if st.button("compute and store", key="ls_run", disabled=not fams):
        with C.shown_errors("not computed"), st.spinner("computing ..."), C.reading():
            run = landscape(z, target, metrics=fams, final=final, options={
                "spectral": {"bootstrap": boot}, "hessian": {"probes": probes, "samples": samples, "iters": 50},
                "cka": {"samples": samples}}, )  # fmt: skip
            st.success(f"{len(run.model_ids)} models: " + ", ".join(f"{k} {v:.1f}s" for k, v in run.seconds.items())
                       + f"; {run.rows_written} metric rows written")  # fmt: skip


@st.cache_data(show_spinner=False, max_entries=16)
def table(root: str, gen: int, target: str, final: bool) -> pd.DataFrame:
    with C.reading():
        return R.population_table(z, target, final=final)


try:
    df = table(C.zoo_location()[0], C.generation(), target, final)
except ZooError as e:
    st.error(str(e))
    st.stop()

metric_cols = R.landscape_metric_columns(df)
ls_cols = [c for c in ("esd_alpha", "esd_alpha_weighted", "log_spectral_norm", "stable_rank", "effective_rank",
                       "train_hessian_trace", "train_hessian_top_eig", "test_cka") if c in df.columns]  # fmt: skip

# ------------------------------------------------------------------------------------ population metrics
st.subheader("population metrics")
if not ls_cols:
    st.info(f"No landscape metrics for {target!r} yet: compute them above, or from the shell:\n\n"
            f"```\nweightzoo landscape \"{target}\" --final --metrics spectral,hessian,cka\n```")  # fmt: skip
else:
    m = st.columns(min(4, len(ls_cols)))
    for col, name in zip(m, ls_cols[:4], strict=False):
        col.metric(f"median {name}", f"{df[name].median():.4g}")
    front = [c for c in ("id", "name", "population", "test_acc") if c in df.columns]
    st.dataframe(df[front + ls_cols], hide_index=True, width="stretch", height=260)
    numeric = [c for c in metric_cols + [h for h in df.columns if h.startswith("hp_")]
               if pd.api.types.is_numeric_dtype(df[c])]  # fmt: skip
    s1, s2, s3 = st.columns(3)
    xs = s1.selectbox("x", numeric, index=numeric.index(ls_cols[0]), key="ls_x")
    ys = s2.selectbox("y", numeric, index=numeric.index("test_acc") if "test_acc" in numeric else 0, key="ls_y")
    hps = [h for h in df.columns if h.startswith("hp_") and df[h].nunique() > 1]
    color = s3.selectbox("colour", ["(none)", *hps], key="ls_color")
    fig = px.scatter(df, x=xs, y=ys, color=None if color == "(none)" else color, hover_data=["id", "name"])
    st.plotly_chart(fig, width="stretch")

    corr = R.rank_correlations(df)
    st.subheader("which hyperparameters move which metric (Spearman)")
    if corr.empty:
        st.caption("no hyperparameter varies over at least 5 models here")
    else:
        st.dataframe(corr.head(30), hide_index=True, width="stretch", height=260)

# ------------------------------------------------------------------------------------ per-layer spectra
st.subheader("per-layer spectra of a model")
ids = df["id"].tolist()
if not ids:
    st.stop()
pick = int(wanted_model) if wanted_model and wanted_model.isdigit() and int(wanted_model) in ids else ids[0]
label = C.labeller()
model = st.selectbox("model", ids, index=ids.index(pick), format_func=label, key="ls_model")


@st.cache_data(show_spinner=False, max_entries=32)
def spectra(root: str, gen: int, model: int) -> tuple[pd.DataFrame, dict[str, list[float]]]:
    with C.reading():
        state = z.state_dict(model)
    sp = population_spectra({k: v.unsqueeze(0) for k, v in state.items()}, bootstrap=200)
    return spectra_frame(sp, [model]), {s.layer: s.evals[0].tolist() for s in sp}


try:
    frame, evals = spectra(C.zoo_location()[0], C.generation(), int(model))
except ZooError as e:
    st.error(str(e))
    st.stop()
show = frame.drop(columns=["model_id"])
st.dataframe(show, hide_index=True, width="stretch")
layer = st.selectbox("layer", show["layer"].tolist(), key="ls_layer")
row = show[show["layer"] == layer].iloc[0]
ev = [e for e in evals[layer] if e > 1e-5]
fig = go.Figure(go.Histogram(x=[math.log10(e) for e in ev], nbinsx=max(10, len(ev) // 3), name="eigenvalues"))
if row["status"] in ("ok", "small_sample"):
    fig.add_vline(x=math.log10(row["xmin"]), line_dash="dash",
                  annotation_text=f"xmin: alpha {row['alpha']:.2f} [{row['alpha_lo']:.2f}, {row['alpha_hi']:.2f}]")  # fmt: skip
fig.update_layout(xaxis_title="log10 eigenvalue of W^T W", yaxis_title="count", height=320,
                  title=f"{layer}: {len(ev)} eigenvalues, fit status {row['status']}")  # fmt: skip
st.plotly_chart(fig, width="stretch")

# ------------------------------------------------------------------------------------ phase map
st.subheader("phase map")
hps = [h for h in df.columns if h.startswith("hp_") and pd.to_numeric(df[h], errors="coerce").nunique() > 1 and h != "hp_seed"]
if len(hps) < 2:
    st.info("A phase map needs two hyperparameters that vary over a grid, e.g. the width x batch-size zoo:\n\n"
            "```\nweightzoo build digits-mlp-phases\nweightzoo landscape \"digits-mlp-phases/*\" "
            "--metrics spectral,hessian,cka --report phases.png\n```\n\nthen pick `digits-mlp-phases/*` above.")  # fmt: skip
else:
    p1, p2 = st.columns(2)
    px_ = p1.selectbox("x axis", hps, index=hps.index("hp_width") if "hp_width" in hps else 0, key="ls_px")
    rest = [h for h in hps if h != px_]
    py_ = p2.selectbox("y axis", rest, index=rest.index("hp_batch_size") if "hp_batch_size" in rest else 0, key="ls_py")
    with C.shown_errors("no phase map"):
        st.pyplot(R.phase_map(df, x=px_, y=py_, title=f"{target}: medians over the models of each cell"))
