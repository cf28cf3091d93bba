"""weightzoo explorer: Overview (the landing page).

Run it with ``weightzoo app`` (or ``python -m streamlit run app/Home.py -- --root ZOO``).
Populations with their counts, architectures, sizes and deduplication; metric distributions per
population; the newest models and how they were made.
"""

import pandas as pd
import plotly.express as px
import streamlit as st

from app import common as C

z = C.page("weightzoo explorer")
if z is None:
    st.stop()

s = C.summary()
cols = st.columns(6)
cols[0].metric("models", f"{s['models']:,}")
cols[1].metric("populations", f"{s['populations']:,}")
cols[2].metric("on disk (packs)", C.fmt_bytes(s["pack_bytes"]))
cols[3].metric("logical size", C.fmt_bytes(s["logical_bytes"]))
cols[4].metric("dedup ratio", f"{s['dedup_ratio']:.2f}×", help="logical bytes of all models / bytes of unique tensors stored")
cols[5].metric("blobs / packs", f"{s['blobs']:,} / {s['packs']:,}")

# ------------------------------------------------------------------------------------ populations
st.subheader("Populations")
pops = C.populations()
view = pd.DataFrame({
    "population": pops["name"], "models": pops["n_models"], "architecture": pops["architecture"],
    "family": pops["family"], "params / model": pops["n_params"], "logical": pops["logical_bytes"].map(C.fmt_bytes),
    "stored (unique tensors)": pops["stored_bytes"].map(C.fmt_bytes), "dedup ratio": pops["dedup_ratio"].round(2),
    "description": pops["description"],
})  # fmt: skip
st.dataframe(view, hide_index=True, width="stretch")
st.caption("Stored bytes count each unique tensor once per population; tensors shared across populations count in each.")

# ------------------------------------------------------------------------------------ metric distributions
df = C.models_table()
metrics = C.metric_columns(df)
st.subheader("Metric distributions")
if not metrics:
    st.info("No metrics recorded yet. `weightzoo eval ID ...` evaluates stored classifiers and records them.")
else:
    c1, c2, c3 = st.columns([2, 3, 1])
    default = metrics.index("test_acc") if "test_acc" in metrics else 0
    metric = c1.selectbox("metric", metrics, index=default, key="ov_metric")
    with_metric = df[df[metric].notna()]
    pop_names = sorted(with_metric["population"].dropna().unique())
    chosen = c2.multiselect("populations", pop_names, default=pop_names[:8], key="ov_pops")
    final = c3.checkbox("final checkpoints", value=True, key="ov_final", help="only the last checkpoint of each training run")
    d = with_metric[with_metric["population"].isin(chosen)]
    if final:
        d = C.final_only(d)
    if d.empty:
        st.caption(f"No model of these populations has `{metric}`.")
    else:
        fig = px.histogram(d, x=metric, color="population", barmode="overlay", nbins=50, opacity=0.65,
                           hover_data=["population"])  # fmt: skip
        fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 10, "b": 10})
        st.plotly_chart(fig, width="stretch", key="ov_hist")
        stats = d.groupby("population")[metric].describe()[["count", "mean", "std", "min", "50%", "max"]]
        st.dataframe(stats.round(4), width="stretch")

# ------------------------------------------------------------------------------------ recent activity
st.subheader("Recent activity")
c1, c2 = st.columns([3, 2])
recent = df.sort_values(["created_at", "id"], ascending=False).head(15)
edges = C.lineage_edges()
parents = edges.groupby("child_id")["parent_id"].apply(lambda s: ", ".join(map(str, s))) if not edges.empty else pd.Series(dtype=str)
recent = recent.assign(parents=recent["id"].map(parents).fillna(""))
c1.dataframe(recent[["id", "name", "population", "op", "parents", "created_at"]], hide_index=True, width="stretch")
ops = df.groupby("op").size().rename("models").reset_index().sort_values("models", ascending=False)
fig = px.bar(ops, x="op", y="models", title="models by operation")
fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10})
c2.plotly_chart(fig, width="stretch", key="ov_ops")

# ------------------------------------------------------------------------------------ derived tables
st.subheader("Derived tables")
tables = C.derived_tables()
if tables.empty:
    st.caption(
        "No derived tables yet. Learners write their outputs here, e.g. "
        "`weightzoo train-encoder accuracy --to-zoo --write-table acc_pred`; query them on **Models** with SQL."
    )
else:
    st.dataframe(tables, hide_index=True, width="stretch", key="ov_tables")
    name = st.selectbox("preview", tables["name"].tolist(), key="ov_table")
    with C.shown_errors("reading the table"):
        st.dataframe(C.sql(f'select * from "{name}" limit 50'), hide_index=True, width="stretch", key="ov_table_rows")

st.divider()
st.markdown(
    "**Next:** browse and query models on **Models**, look inside one on **Model detail**, map a population on "
    "**Population map**, re-basin and merge on **Align and merge**, compare a fine-tune with its parent on "
    "**Diffs**, which also says what a fine-tune did (sidebar)."
)
