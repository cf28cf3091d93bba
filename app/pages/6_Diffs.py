"""Diffs: a child against its parent (a lineage edge), tensor by tensor, and what the fine-tune did.

Beside the per-tensor diff norms, a stored weight-diff interpreter (``weightzoo interpret train
--to-zoo``) trained on the child's architecture reads the diff and says what the fine-tune changed,
with its confidences; the label a labelled fine-tune recorded in its lineage is shown next to it.
"""

import pandas as pd
import plotly.express as px
import streamlit as st

from app import common as C
from app import weights as W
from zoo import ZooError

#: most lineage edges offered in one list (filter by operation for the rest)
MAX_EDGES = 5000

z = C.page("Diffs")
if z is None:
    st.stop()

edges = C.lineage_edges()
if edges.empty:
    st.info("No lineage edges in this zoo yet: a diff needs a child and its parent (a fine-tune, a merge, a "
            "training checkpoint and the one before it). `weightzoo build RECIPE` records them.")  # fmt: skip
    st.stop()

table = C.models_table()
ops = sorted(edges["op"].unique())
wanted = C.selected_model_key()
wanted = int(wanted) if wanted and wanted.isdigit() else None
default_op = "(all)"
if wanted is not None and (edges["child_id"] == wanted).any():
    default_op = "(all)"
elif "finetune" in ops:
    default_op = "finetune"
c1, c2, c3 = st.columns([1, 2, 2])
op = c1.selectbox("operation", ["(all)", *ops], index=(["(all)", *ops]).index(default_op), key="df_op")
sel = edges if op == "(all)" else edges[edges["op"] == op]
children = sel["child_id"].drop_duplicates()
if len(children) > MAX_EDGES:
    children = children.tail(MAX_EDGES)
    c1.caption(f"the newest {MAX_EDGES:,} children; filter by operation for others")
children = children.tolist()
if wanted is not None and wanted not in children and (edges["child_id"] == wanted).any():
    children.insert(0, wanted)
idx = children.index(wanted) if wanted in children else len(children) - 1


_label = C.labeller()


child = c2.selectbox("child", children, index=idx, format_func=_label, key="df_child")
pe = edges[edges["child_id"] == child]
parent = c3.selectbox("parent", pe["parent_id"].tolist(),
                      format_func=lambda i: f"{_label(i)} ({pe.loc[pe['parent_id'] == i, 'op'].iloc[0]}, "
                                            f"{pe.loc[pe['parent_id'] == i, 'role'].iloc[0]})", key="df_parent")  # fmt: skip


@st.cache_data(show_spinner=False, max_entries=32)
def diff(root: str, gen: int, child: int, parent: int) -> pd.DataFrame:
    with C.reading():
        return W.diff_norms(z.state_dict(child), z.state_dict(parent))


try:
    with st.spinner("reading both models ..."):
        d = diff(C.zoo_location()[0], C.generation(), int(child), int(parent))
except ZooError as e:
    st.error(str(e))
    st.stop()



@st.cache_data(show_spinner=False, max_entries=16)
def interpreters(root: str, gen: int) -> pd.DataFrame:
    """Stored interpreters: id, name, the population they were trained on, their architecture config."""
    import json

    rows = []
    with C.reading():
        for r in z.models().tag("interpreter").records():
            hp = r.hparams()
            if r.op == "train.interpreter" and "interpreter_doc" in hp:
                arch = json.loads(hp["interpreter_doc"])["state"].get("arch_")
                rows.append({"id": r.id, "name": r.name, "trained_on": hp.get("trained_on"), "encoder": hp.get("encoder"),
                             "view": hp.get("view"), "arch": json.dumps(arch, sort_keys=True)})  # fmt: skip
    return pd.DataFrame(rows, columns=["id", "name", "trained_on", "encoder", "view", "arch"])


@st.cache_data(show_spinner=False, max_entries=64)
def explain(root: str, gen: int, child: int, parent: int, interp: int) -> dict:
    from weightspace.interpret import explain_diff

    with C.reading():
        return explain_diff(z, child, parent, interpreter=interp).to_dict()


def child_arch(child: int) -> str:
    import json

    from zoo.models.architectures import normalize_config

    cfg = z.get(child).arch_config
    return json.dumps(normalize_config(cfg), sort_keys=True) if cfg else ""


def show_reading() -> None:
    """The stored interpreter's reading of this diff (in the current container)."""
    st.subheader("What the fine-tune did")
    try:
        from weightspace import interpret as _interpret  # noqa: F401  (the interpreter is a learner module)
    except ImportError as e:  # pragma: no cover - a broken install
        st.warning(f"The weight-diff interpreter cannot be imported here ({e}).")
        return
    its = interpreters(C.zoo_location()[0], C.generation())
    fits = its[its["arch"] == child_arch(int(child))] if len(its) else its
    label = z.hparams(int(child))
    if fits.empty:
        st.info("No weight-diff interpreter in this zoo is trained on this architecture. Train one on labelled "
                "fine-tunes, e.g. `weightzoo build digits-mlp-diffs` then `weightzoo interpret train -p "
                "digits-mlp-diffs --to-zoo` (docs/interpreter.md).")  # fmt: skip
        return
    ids = fits.sort_values("id", ascending=False)["id"].tolist()
    pick = st.selectbox("interpreter", ids, key="df_interp",
                        format_func=lambda i: f"{i}: {fits.loc[fits['id'] == i, 'encoder'].iloc[0]} "
                                              f"({fits.loc[fits['id'] == i, 'view'].iloc[0]} view), trained on "
                                              f"{fits.loc[fits['id'] == i, 'trained_on'].iloc[0]}")  # fmt: skip
    try:
        with st.spinner("reading the diff ..."):
            ex = explain(C.zoo_location()[0], C.generation(), int(child), int(parent), int(pick))
    except ZooError as e:
        st.error(str(e))
        return
    st.markdown(f"**{ex['sentence'].split(' (confidence')[0]}**")
    rows = [{"field": "kind", "reading": ex["kind"], "confidence": ex["confidence"]["kind"]}]
    rows += [{"field": f, "reading": str(v), "confidence": ex["confidence"].get(f)} for f, v in ex["fields"].items()]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="df_reading")
    kp = pd.DataFrame({"kind": list(ex["kind_probs"]), "probability": list(ex["kind_probs"].values())})
    fig = px.bar(kp, x="probability", y="kind", orientation="h", range_x=[0, 1])
    fig.update_layout(height=200, margin={"l": 10, "r": 10, "t": 10, "b": 10}, yaxis_title=None)
    st.plotly_chart(fig, width="stretch", key="df_kinds")
    for f, probs in ex.get("class_probs", {}).items():  # which class: every class's probability
        cp = pd.DataFrame({"class": list(probs), "probability": list(probs.values())})
        fig = px.bar(cp, x="class", y="probability", range_y=[0, 1])
        fig.update_layout(height=180, margin={"l": 10, "r": 10, "t": 24, "b": 10}, xaxis_type="category",
                          title={"text": f"{f}: probability of each class", "font": {"size": 12}})  # fmt: skip
        st.plotly_chart(fig, width="stretch", key=f"df_class_{f}")
    if "change" in label:
        truth = {k[len("change_"):]: v for k, v in label.items() if k.startswith("change_") and k != "change_pattern_bits"}
        st.caption(f"Label recorded by the fine-tune: **{label['change']}** "
                   + ", ".join(f"{k} {v}" for k, v in truth.items()))  # fmt: skip


num = d[d["diff_l2"].notna() & (d["note"] == "")]
total = float((num["diff_l2"] ** 2).sum() ** 0.5) if len(num) else 0.0
ptotal = float((num["parent_l2"] ** 2).sum() ** 0.5) if len(num) else 0.0
m = st.columns(4)
m[0].metric("‖child − parent‖", f"{total:.4g}")
m[1].metric("relative to ‖parent‖", f"{total / ptotal:.4g}" if ptotal else "-")
m[2].metric("tensors changed", f"{int((num['diff_l2'] > 0).sum())} / {len(d)}")
m[3].metric("largest relative change", num.loc[num["relative"].idxmax(), "tensor"] if num["relative"].notna().any() else "-")
left, right = st.columns([3, 2])
with left:  # the per-tensor diff norms ...
    if len(num):
        scale = st.radio("bars", ["relative (‖Δ‖ / ‖parent‖)", "absolute ‖Δ‖"], horizontal=True, key="df_scale")
        y = "relative" if scale.startswith("relative") else "diff_l2"
        fig = px.bar(num, x="tensor", y=y, hover_data=["numel", "diff_l2", "parent_l2", "relative", "cosine"])
        fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 10, "b": 10}, xaxis_title=None,
                          yaxis_title="‖child − parent‖ / ‖parent‖" if y == "relative" else "‖child − parent‖")  # fmt: skip
        st.plotly_chart(fig, width="stretch", key="df_bar")
with right:  # ... and beside them, what they mean
    show_reading()
odd = d[d["note"] != ""]
if len(odd):
    st.warning(f"{len(odd)} tensor(s) cannot be compared: " + "; ".join(f"{r.tensor}: {r.note}" for r in odd.itertuples()))
st.dataframe(d, hide_index=True, width="stretch")
c1, c2 = st.columns(2)
with c1:
    C.model_link(int(child), label=f"open child {child}")
with c2:
    C.model_link(int(parent), label=f"open parent {parent}")
