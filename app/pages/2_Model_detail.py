"""Model detail: layers (shapes, norms, effective rank), weight histograms and spectra, metrics and
training curves, editable tags, lineage graph, export to an HF-style folder."""

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from app import charts
from app import common as C
from app import weights as W
from zoo import NotFoundError, ZooError

#: largest matrix (elements) whose singular values are computed on this page
SVD_LIMIT = 4_000_000
#: most values drawn per histogram
HIST_SAMPLE = 200_000

z = C.page("Model detail")
if z is None:
    st.stop()

table = C.models_table()
requested = C.selected_model_key() or str(int(table["id"].iloc[0]))
if "d_model" not in st.session_state or st.session_state.get("d_requested") != requested:
    st.session_state["d_model"] = requested  # arriving with ?model=ID (a link, another page) fills the box
    st.session_state["d_requested"] = requested
key = st.text_input("model id or name", key="d_model",
                    help="or pick one on the Models page, or open /Model_detail?model=ID").strip()  # fmt: skip
if not key:
    st.info("Enter a model id or name.")
    st.stop()
try:
    rec = z.get(key)
except NotFoundError as e:
    st.error(str(e))
    st.stop()
st.session_state["model_id"] = rec.id
if st.query_params.get("model") != str(rec.id):
    st.query_params["model"] = str(rec.id)
    st.session_state["d_requested"] = str(rec.id)


@st.cache_data(show_spinner=False, max_entries=32)
def manifest(root: str, gen: int, mid: int) -> pd.DataFrame:
    return C.sql(
        "select t.name, t.position, t.blob_id, b.dtype, b.shape, b.numel, b.l2, b.mean, b.std, b.absmax "
        f"from tensors t join blobs b on b.id = t.blob_id where t.model_id = {int(mid)} order by t.position"
    )


@st.cache_data(show_spinner=False, max_entries=16)
def layers(root: str, mid: int, blobs: tuple[str, ...], _stats: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Layer table and singular values; keyed on the content-addressed blob ids (tensors never change)."""
    with C.reading():
        sd = z.state_dict(mid)
    svals = {}
    small = {}
    for k, t in sd.items():
        if t.dim() >= 2 and t.numel() <= SVD_LIMIT:
            small[k] = t
            s = W.singular_values(t)
            if s is not None:
                svals[k] = s
    tab = W.layer_table({k: sd[k] for k in sd}, _stats)
    for i, name in enumerate(tab["tensor"]):  # big matrices: no SVD (too slow for a page)
        if name not in small:
            tab.loc[i, ["effective_rank", "stable_rank", "sigma_max"]] = None
    return tab, svals


@st.cache_data(show_spinner=False, max_entries=16)
def samples(root: str, mid: int, blobs: tuple[str, ...], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    with C.reading():
        sd = z.state_dict(mid)
    rng = np.random.default_rng(0)
    out = {}
    for n in names:
        v = sd[n].detach().flatten().double().numpy()
        out[n] = v if len(v) <= HIST_SAMPLE else rng.choice(v, HIST_SAMPLE, replace=False)
    return out


root = C.zoo_location()[0]
gen = C.generation()
man = manifest(root, gen, rec.id)
blobs = tuple(man["blob_id"])

c = st.columns(5)
c[0].metric("id", rec.id)
c[1].metric("made by", rec.op)
c[2].metric("parameters", f"{rec.n_params:,}")
c[3].metric("step", rec.step if rec.step is not None else "-")
c[4].metric("size", C.fmt_bytes(rec.nbytes))
created = f" · created {rec.created_at:%Y-%m-%d %H:%M:%S}" if rec.created_at else ""
st.markdown(f"**{rec.name or '(unnamed)'}** · population `{rec.population or '-'}` · run `{rec.run or '-'}` · "
            f"architecture `{rec.architecture}`{created}" + (f" · source `{rec.source}`" if rec.source else ""))  # fmt: skip

t_layers, t_weights, t_metrics, t_tags, t_lineage, t_similar, t_export = st.tabs(
    ["Layers", "Weights", "Metrics & training", "Tags", "Lineage", "Similar", "Export"]
)

# ------------------------------------------------------------------------------------ layers
with t_layers:
    with st.spinner("reading tensors and computing spectra ..."):
        tab, svals = layers(root, rec.id, blobs, man[["name", "l2", "mean", "std", "absmax"]])
    st.dataframe(tab, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.4g") for c in
                                ["l2", "mean", "std", "absmax", "effective_rank", "stable_rank", "sigma_max"]})  # fmt: skip
    st.caption("Norms and moments from the catalog's blobs table. Effective rank = exp(entropy of the normalised "
               "singular values) of each weight as a matrix [out, in·kernel]; stable rank = ‖W‖²_F / ‖W‖²_2.")  # fmt: skip
    with st.expander("architecture config"):
        st.json(rec.arch_config or {})

# ------------------------------------------------------------------------------------ weights
with t_weights:
    names = list(man["name"])
    floats = [n for n, d in zip(man["name"], man["dtype"], strict=True) if d.startswith(("F", "BF", "f", "bf"))] or names
    chosen = st.multiselect("tensors", floats, default=floats[: min(4, len(floats))], key="d_hist_tensors")
    if chosen:
        vals = samples(root, rec.id, blobs, tuple(chosen))
        st.plotly_chart(charts.histograms(vals, title="Weight histograms"), width="stretch", key="d_hist")
    spec = {k: v for k, v in svals.items() if k in chosen or not chosen}
    if spec:
        st.plotly_chart(charts.spectra(spec), width="stretch", key="d_spec")
    elif chosen:
        st.caption("No 2-D weight among the chosen tensors (or too large for an on-page SVD).")

# ------------------------------------------------------------------------------------ metrics
with t_metrics:
    mets = z.metrics(rec.id)
    if mets.empty:
        st.info("No metrics recorded for this model.")
    else:
        st.dataframe(mets.drop(columns=["model_id"]), hide_index=True, width="stretch")
    if rec.run:
        run = table[table["run"] == rec.run].sort_values("step")
        mcols = [c for c in C.metric_columns(run) if run[c].notna().any()]
        if len(run) > 1 and mcols:
            st.markdown(f"**Training curves** of run `{rec.run}` ({len(run)} checkpoints)")
            picked = st.multiselect("metrics", mcols, default=[m for m in mcols if m.endswith("acc")][:3] or mcols[:2],
                                    key="d_curves")  # fmt: skip
            if picked:
                long = run.melt(id_vars=["id", "step"], value_vars=picked, var_name="metric")
                fig = px.line(long, x="step", y="value", color="metric", markers=True, hover_data=["id"])
                fig.add_vline(x=rec.step, line_dash="dot", annotation_text="this checkpoint")
                fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 30, "b": 10})
                st.plotly_chart(fig, width="stretch", key="d_curve_fig")
        else:
            st.caption(f"Run `{rec.run}` has one checkpoint in the zoo: no curve to draw.")
    hp = rec.hparams()
    if hp:
        st.markdown("**Hyperparameters**")
        st.dataframe(pd.DataFrame({"name": list(hp), "value": [str(v) for v in hp.values()]}), hide_index=True)

# ------------------------------------------------------------------------------------ tags
with t_tags:
    tags = rec.tags()
    st.markdown("Tags: " + (" ".join(f"`{t}`" for t in tags) if tags else "_none_"))
    c1, c2 = st.columns(2)
    with c1.form("d_add_tag", clear_on_submit=True):
        new = st.text_input("add tags (comma separated)", key="d_new_tags")
        add = st.form_submit_button("Add")
    with c2.form("d_remove_tag"):
        gone = st.multiselect("remove tags", tags, key="d_gone_tags")
        remove = st.form_submit_button("Remove")
    if add:
        wanted = [t.strip() for t in new.split(",") if t.strip()]
        if not wanted:
            st.warning("Type a tag to add.")
        else:
            try:
                z.tag(rec.id, *wanted)
            except ZooError as e:
                st.error(str(e))
            else:
                st.toast(f"tagged model {rec.id}: {', '.join(wanted)}")
                st.rerun()
    if remove and gone:
        try:
            z.untag(rec.id, *gone)
        except ZooError as e:
            st.error(str(e))
        else:
            st.toast(f"removed from model {rec.id}: {', '.join(gone)}")
            st.rerun()

# ------------------------------------------------------------------------------------ lineage
with t_lineage:
    depth = st.slider("generations each way", 1, 10, 3, key="d_depth")
    edges = z.lineage(rec.id, direction="both", max_depth=depth)
    if not edges:
        st.info(f"Model {rec.id} has no recorded parents or children (made by `{rec.op}`).")
    else:
        ed = pd.DataFrame([{"child_id": e.child, "parent_id": e.parent, "role": e.role, "op": e.op,
                            "params": str(e.params)} for e in edges])  # fmt: skip
        ids = sorted(set(ed["child_id"]) | set(ed["parent_id"]))
        recs = {r.id: r for r in z.records(ids)}
        labels = {i: f"{i} · {recs[i].name or '(unnamed)'} · {recs[i].population or '-'}" for i in ids}
        opsof = {i: recs[i].op for i in ids}
        fig = charts.lineage_figure(ed, rec.id, labels, opsof)
        ev = st.plotly_chart(fig, width="stretch", key="d_lineage", on_select="rerun", selection_mode="points")
        pts = ev.selection.points if ev is not None and hasattr(ev, "selection") else []
        picked = [p.get("customdata") for p in pts if p.get("customdata") is not None]
        if picked and int(picked[0]) != rec.id:
            if st.button(f"Open model {int(picked[0])}", key="d_lineage_open"):
                C.open_model(int(picked[0]))
        st.dataframe(ed, hide_index=True, width="stretch")
        up = [e for e in edges if e.child == rec.id]
        if up:
            st.caption("Compare this model with a parent on **Diffs**:")
            for e in up[:5]:
                C.model_link(rec.id, label=f"diff {rec.id} vs parent {e.parent} ({e.op})", page_key="diffs")

# ------------------------------------------------------------------------------------ similar
with t_similar:
    encs = table[(table["op"] == "train.encoder")]
    if "hp_trained_on" in encs.columns:
        encs = encs[encs["hp_trained_on"] == rec.population]
    if encs.empty:
        st.info(f"No encoder trained on population `{rec.population}` is stored in this zoo. Train one with "
                f"`weightzoo train-encoder accuracy -p {rec.population} --to-zoo` to search by embedding.")  # fmt: skip
    else:
        labels = {int(r["id"]): f"{int(r['id'])} · {r['hp_encoder']} · {r['hp_task']}" for _, r in encs.iterrows()}
        enc_id = st.selectbox("encoder", list(labels), format_func=labels.get, key="d_sim_encoder")
        k = st.slider("neighbours", 1, 50, 10, key="d_sim_k")
        memo = C.memo("similar")
        key = (C.zoo_location()[0], C.generation(), int(enc_id), rec.id)
        if key not in memo:
            from weightspace.tasks import encoder_from_zoo, similar

            try:
                with st.spinner("embedding the population ..."), C.reading():
                    memo.put(key, similar(z, rec.id, encoder_from_zoo(z, int(enc_id)), k=50))
            except ZooError as e:
                st.error(f"cannot search with encoder {enc_id}: {e}")
                st.stop()
        near = memo.get(key).head(k)
        st.dataframe(near, hide_index=True, width="stretch", key="d_sim_table")
        st.caption("Cosine distance in the encoder's embedding space (its penultimate layer), nearest first.")
        pick = st.selectbox("open", near["id"].astype(int).tolist(), key="d_sim_pick")
        if st.button(f"Open model {pick}", key="d_sim_open"):
            C.open_model(int(pick))

# ------------------------------------------------------------------------------------ export
with t_export:
    st.markdown("Write the model as a Hugging Face style folder: safetensors, `config.json` and a model card "
                "(metrics, hyperparameters, lineage).")  # fmt: skip
    with st.form("d_export"):
        out = st.text_input("folder", value=str(Path.home() / "weightzoo-exports" / f"model-{rec.id}"), key="d_export_path")
        overwrite = st.checkbox("overwrite an existing folder", key="d_export_overwrite")
        go = st.form_submit_button("Export")
    if go:
        if not out.strip():
            st.error("Give a folder to export to.")
        else:
            try:
                with st.spinner("exporting ..."), C.reading():
                    path = z.export(rec.id, out.strip(), overwrite=overwrite)
            except (ZooError, OSError) as e:
                st.error(f"export failed: {e}")
            else:
                files = sorted(p.name for p in Path(path).iterdir())
                st.success(f"exported model {rec.id} to `{path}`: {', '.join(files)}")
