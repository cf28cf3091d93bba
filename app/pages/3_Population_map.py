"""Population map: the models of a population in 2-D by their weights or by an encoder's stored embeddings
(a vector column of a derived table), with PCA or t-SNE, coloured by any metric, hyperparameter or derived
table column (e.g. an encoder's predictions); pick a point to open the model."""

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from app import common as C
from app import weights as W
from zoo import ZooError

#: t-SNE gets slow beyond this many points on two cores
TSNE_MAX = 3000

z = C.page("Population map")
if z is None:
    st.stop()

table = C.models_table()
pops = C.populations()
pops = pops[pops["n_models"] > 0]
if pops.empty:
    st.info("No population has models yet.")
    st.stop()

names = pops.sort_values("n_models", ascending=False)["name"].tolist()
c1, c2, c3, c4 = st.columns([3, 2, 2, 1])
pop = c1.selectbox("population", names, key="pm_pop")
method = c2.radio("map", ["PCA", "t-SNE"], horizontal=True, key="pm_method",
                  help="projection of the flattened weights (each tensor scaled to unit standard deviation)")  # fmt: skip
members = table[table["population"] == pop]
final = c4.checkbox("final only", value=False, key="pm_final", help="only the last checkpoint of each run")
if final:
    members = C.final_only(members)
n_all = len(members)
cap = TSNE_MAX if method == "t-SNE" else 20_000
if n_all < 3:
    st.info(f"Population `{pop}` has {n_all} model(s) here: a map needs at least 3.")
    st.stop()
n_max = c3.number_input("most models (random sample)", min_value=3, max_value=max(3, min(n_all, cap)),
                        value=min(n_all, cap, 2000), step=100, key="pm_n")  # fmt: skip
# derived tables with a model_id column: vector columns can place the models, scalar ones colour them
vector_cols, scalar_cols = [], []
for name, cols in C.derived_column_types().items():
    if "model_id" not in cols:
        continue
    for c, ty in cols.items():
        if c != "model_id":
            (vector_cols if ty.endswith("]") else scalar_cols).append(f"{name}.{c}")
ALIGNED, RAW = "weights, aligned to a reference", "weights (raw)"


def has_spec(model_id: int) -> bool:
    """Whether the population's architecture has a permutation spec (so it can be canonicalised)."""
    from weightspace.spec import spec_for

    try:
        spec_for(z.get(model_id).arch_config)
        return True
    except (ZooError, TypeError, KeyError):
        return False


alignable = has_spec(int(members["id"].iloc[0]))
sources = ([ALIGNED, RAW] if alignable else [RAW]) + vector_cols
source = st.selectbox("position by", sources, key="pm_source",
                      help="the flattened weights, canonicalised first by weight matching onto the population's "
                           "first model (neuron order is arbitrary, so raw weights of permuted networks do not line "
                           "up), the raw weights, or embeddings an encoder stored as a derived table "
                           "(`weightzoo train-encoder ... --write-table NAME`)")  # fmt: skip
if not vector_cols:
    st.caption("No stored embeddings in this zoo yet (`weightzoo train-encoder accuracy --write-table acc_pred` "
               "writes some); the map uses the weights.")  # fmt: skip


def derived_column(ref: str) -> pd.Series:
    """A derived table's column by model id (``table.column``)."""
    t, c = ref.split(".", 1)
    df = C.sql(f'select model_id, "{c}" as v from "{t}"')
    return df.drop_duplicates("model_id", keep="last").set_index("model_id")["v"]


if source not in (ALIGNED, RAW):
    have = set(derived_column(source).index.astype(int))
    members = members[members["id"].isin(have)]
    if len(members) < 3:
        st.info(f"`{source}` holds embeddings for {len(members)} model(s) of `{pop}`: a map needs at least 3.")
        st.stop()

ids = members["id"].to_numpy()
if len(ids) > n_max:
    ids = np.sort(np.random.default_rng(0).choice(ids, int(n_max), replace=False))


def coords(root: str, gen: int, ids: tuple[int, ...], method: str, source: str) -> tuple[np.ndarray, dict]:
    """2-D coordinates, memoised per (zoo, generation, models, method, source); a progress bar while computing."""
    memo = C.memo("population_map")
    key = (root, gen, ids, method, source)
    if key not in memo:
        bar = st.progress(0.0, text=f"reading the {source} of {len(ids):,} models ...")
        extra: dict = {}
        if source in (ALIGNED, RAW):
            with C.reading():
                stacked = z.stack(list(ids))
            if source == ALIGNED:
                bar.progress(0.2, text=f"aligning {len(ids):,} models to a reference (weight matching) ...")
                stacked, extra = W.align_stack(stacked, z.get(int(ids[0])).arch_config)
            X = W.flatten_stack(stacked)
            del stacked
        else:
            vec = derived_column(source)
            X = np.stack([np.asarray(vec.loc[i], dtype=np.float64) for i in ids])
        bar.progress(0.4, text=f"{'PCA' if method == 'pca' else 'PCA + t-SNE'} of a {X.shape[0]:,} x {X.shape[1]:,} matrix ...")
        xy, info = W.embed_2d(X, method)
        memo.put(key, (xy, {**info, **extra}))
        bar.empty()
    return memo.get(key)


try:
    xy, info = coords(C.zoo_location()[0], C.generation(), tuple(int(i) for i in ids), "tsne" if method == "t-SNE" else "pca",
                      source)  # fmt: skip
except ZooError as e:
    st.error(f"cannot map population {pop!r}: {e}")
    st.stop()

sub = members.set_index("id").loc[ids].reset_index()
colourable = [c for c in C.metric_columns(sub) if sub[c].notna().any()]
colourable += [c for c in sub.columns if c.startswith("hp_") and sub[c].notna().any()]
colourable += ["step", "op", "run"]
for ref in scalar_cols:  # e.g. an encoder's predictions
    sub[ref] = sub["id"].map(derived_column(ref))
    if sub[ref].notna().any():
        colourable.append(ref)
default = colourable.index("test_acc") if "test_acc" in colourable else 0
colour = st.selectbox("colour by", colourable, index=default, key="pm_colour")
plot = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "id": sub["id"], "name": sub["name"].fillna("(unnamed)"),
                     colour: sub[colour]})  # fmt: skip
if plot[colour].dtype == object:
    plot[colour] = plot[colour].astype(str)
fig = px.scatter(plot, x="x", y="y", color=colour, hover_name="name", hover_data={"id": True, colour: True, "x": False, "y": False},
                 custom_data=["id"], render_mode="webgl" if len(plot) > 1000 else "svg")  # fmt: skip
if method == "PCA" and info.get("explained_variance"):
    ev = info["explained_variance"] + [0.0] * (2 - len(info["explained_variance"]))
    fig.update_layout(xaxis_title=f"PC1 ({ev[0]:.1%})", yaxis_title=f"PC2 ({ev[1]:.1%})")
fig.update_traces(marker={"size": 7 if len(plot) < 2000 else 4})
fig.update_layout(height=560, margin={"l": 10, "r": 10, "t": 10, "b": 10}, dragmode="select")
note = ""
if method == "PCA" and info.get("explained_variance"):
    ev = info["explained_variance"] + [0.0] * (2 - len(info["explained_variance"]))
    note = f" The two axes explain {ev[0]:.1%} + {ev[1]:.1%} of the variance."
if "distance_after" in info:
    note += (f" Alignment brought the mean L2 distance to the reference from {info['distance_before']:.3g} "
             f"to {info['distance_after']:.3g}.")
st.caption(f"{len(plot):,} of {n_all:,} models of `{pop}`.{note} Click or box-select points to pick a model.")
event = st.plotly_chart(fig, width="stretch", key="pm_plot", on_select="rerun", selection_mode=("points", "box", "lasso"))

picked: list[int] = []
if event is not None and hasattr(event, "selection"):
    for p in event.selection.points:
        cd = p.get("customdata")
        if cd is not None:
            picked.append(int(cd[0] if isinstance(cd, list | tuple) else cd))
c1, c2 = st.columns([3, 1])
choice = c1.selectbox("model", picked or plot["id"].tolist(), key=f"pm_pick_{len(picked)}",
                      format_func=C.labeller())  # fmt: skip
if picked:
    st.dataframe(sub[sub["id"].isin(picked)], hide_index=True, width="stretch")
if c2.button("Open model", type="primary", key="pm_open", disabled=choice is None):
    C.open_model(int(choice))
