"""Signatures: apply robust weight signatures to a model or take them off, with corruption accuracy
before and after (Cai et al. 2023; :mod:`analysis.rws`).

Signatures are model rows tagged ``rws`` (made by ``weightzoo rws extract``). The page previews a
patch in memory (nothing written) and stores it on request (op ``patch.rws``); for a stored patched
model it previews taking signatures off (op ``unpatch.rws`` when stored).
"""

import pandas as pd
import plotly.express as px
import streamlit as st

from app import common as C
from zoo import ZooError

z = C.page("Signatures")
if z is None:
    st.stop()

try:
    from analysis import rws
except ImportError as e:  # pragma: no cover - the package ships with weightzoo
    st.info(f"Robust weight signatures are not installed ({e}); reinstall weightzoo.")
    st.stop()

table = C.models_table()
edges = C.lineage_edges()
sig_ids = sorted(set(edges.loc[edges["op"] == rws.EXTRACT_OP, "child_id"].astype(int)))
patched_ids = sorted(set(edges.loc[edges["op"] == rws.PATCH_OP, "child_id"].astype(int)))
label = C.labeller()


def _sig_label(i: int) -> str:
    row = table[table["id"] == i]
    if row.empty:
        return str(i)
    r = row.iloc[0]
    form = {"lowrank": f", rank <= {r.get('hp_rank')}", "sparse": f", density {r.get('hp_density')}"}.get(r.get("hp_form"), "")
    return (f"{i} · {r.get('hp_corruption', '?')} sev {r.get('hp_severity', '?')} · {r.get('hp_n_layers', '?')} layer(s)"
            f"{form}, {r.get('hp_bits', '?')} bit · {r['name']}")  # fmt: skip


def _plot(df: pd.DataFrame, names: dict[int, str], key: str) -> None:
    df = df.assign(model=df["model"].map(names),
                   data=[("clean" if c == "clean" else f"{c}/{s}") for c, s in zip(df["corruption"], df["severity"], strict=True)])  # fmt: skip
    fig = px.bar(df, x="data", y="acc", color="model", barmode="group", range_y=[0, 1],
                 labels={"acc": "test accuracy", "data": ""})  # fmt: skip
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 10, "b": 10}, legend_title=None)
    st.plotly_chart(fig, width="stretch", key=key)
    st.dataframe(rws.summary(df), hide_index=True, width="stretch")


@st.cache_data(show_spinner=False, max_entries=32)
def _accuracy(root: str, gen: int, model: int, sigs: tuple[int, ...], alpha: float | str, normalize: bool, align: bool,
              kinds: tuple[str, ...], sevs: tuple[int, ...]) -> tuple[pd.DataFrame, dict]:  # fmt: skip
    import torch

    with C.reading():
        res = rws.patch_model(z, model, list(sigs), alpha=alpha, normalize=normalize, align=align, to_zoo=False)
        before = z.state_dict(model)
    both = {k: torch.stack([before[k], res.state[k]]) for k in res.state}
    df = rws.corruption_accuracy(res.config, both, corruptions=list(kinds), severities=list(sevs))
    return df, {"coefficients": res.coefficients, "alpha": res.params["alpha"], "selection": res.params.get("alpha_selection")}


@st.cache_data(show_spinner=False, max_entries=32)
def _unpatched(root: str, gen: int, patched: int, sigs: tuple[int, ...], kinds: tuple[str, ...],
               sevs: tuple[int, ...]) -> tuple[pd.DataFrame, float | None]:  # fmt: skip
    import torch

    with C.reading():
        res = rws.unpatch_model(z, patched, list(sigs))
        before = z.state_dict(patched)
    both = {k: torch.stack([before[k], res.state[k]]) for k in res.state}
    df = rws.corruption_accuracy(res.config, both, corruptions=list(kinds), severities=list(sevs))
    return df, res.max_error


if not sig_ids:
    st.info(
        "No signatures in this zoo yet. Build robust fine-tunes and extract one, e.g.\n\n"
        "```\nweightzoo build digits-mlp && weightzoo build digits-mlp-robust-mix\n"
        "weightzoo rws extract digits-mlp-robust-mix/00001/e006\n```\n\n"
        "then reload this page to patch models with it."
    )
    st.stop()

apply_tab, remove_tab = st.tabs(["Apply signatures", "Remove signatures"])

with apply_tab:
    chosen = st.multiselect("signatures", sig_ids, default=sig_ids[:1], format_func=_sig_label, key="sg_sigs")
    if not chosen:
        st.info("Pick at least one signature.")
    else:
        sigs = {i: rws.load_signature(z, i) for i in chosen}
        first = next(iter(sigs.values()))
        base_of = {e.parent: e for e in z.lineage(chosen[0], max_depth=1) if e.role == "clean"}
        arch = z.get(next(e.parent for e in z.lineage(chosen[0], max_depth=1) if e.role == "robust")).architecture
        cands = table[(table["architecture"] == arch) & ~table["id"].isin(sig_ids)]["id"].astype(int).tolist()
        default = next(iter(base_of), cands[0] if cands else None)
        c1, c2, c3 = st.columns([3, 2, 2])
        model = c1.selectbox("model to patch", cands, index=cands.index(default) if default in cands else 0,
                             format_func=label, key="sg_model")  # fmt: skip
        auto = c2.checkbox("choose alpha on the validation split", value=False, key="sg_auto",
                           help="the best corrupted validation accuracy losing at most 1 point of clean validation accuracy")  # fmt: skip
        alpha: float | str = "auto" if auto else c2.slider("alpha", 0.0, 3.0, 1.0, 0.05, key="sg_alpha")
        normalize = c3.checkbox("alpha / K (compose)", value=True, key="sg_norm")
        align = c3.checkbox("align to the signature's base first", value=False, key="sg_align")
        kinds_all = rws.corruption_names(None)
        own = list(dict.fromkeys(s.corruption for s in sigs.values() if s.corruption)) or kinds_all[:1]
        c4, c5 = st.columns([3, 1])
        kinds = c4.multiselect("corruptions shown", kinds_all, default=own, key="sg_kinds")
        sevs = c5.multiselect("severities", [1, 2, 3, 4, 5], default=[int(first.severity or 3)], key="sg_sevs")
        shaped = [f"{k} rank {f.rank}" if f.form == "lowrank" else f"{k} {f.count} entries"
                  for k, f in (first.forms or {}).items() if f.form != "dense"]  # fmt: skip
        st.caption(f"kept layers {', '.join(first.layers)}" + (f" ({'; '.join(shaped)})" if shaped else "")
                   + "; patched = model + sum_k c_k * signature_k")  # fmt: skip
        if model is not None and kinds and sevs:
            try:
                with st.spinner("patching and evaluating ..."):
                    df, info = _accuracy(C.zoo_location()[0], C.generation(), int(model), tuple(chosen),
                                         alpha if auto else float(alpha), normalize, align, tuple(kinds),
                                         tuple(sorted(sevs)))  # fmt: skip
            except ZooError as e:
                st.error(f"cannot patch: {e}")
                st.stop()
            if (sel := info["selection"]) is not None:
                st.caption(f"alpha {sel['alpha']:g} chosen on the validation split from {sel['grid']}"
                           + ("" if sel["within_budget"] else " (no candidate within 1 point of clean accuracy: the least loss)"))  # fmt: skip
            st.caption("coefficients " + ", ".join(f"{c:g}" for c in info["coefficients"]) + " (preview: nothing written)")
            _plot(df, {0: f"model {model}", 1: "patched"}, key="sg_plot")
            if st.button("Store the patched model", type="primary", key="sg_store"):
                with C.shown_errors("nothing was stored"), st.spinner("storing and evaluating ..."):
                    res = rws.patch_model(z, int(model), chosen, alpha=alpha if auto else float(alpha), normalize=normalize,
                                          align=align)  # fmt: skip
                    st.success(f"stored the patched model as model {res.record.id} in `{res.record.population}` "
                               "(op patch.rws)")  # fmt: skip
                    C.model_link(res.record.id)

with remove_tab:
    if not patched_ids:
        st.info("No patched models stored yet: store one on the Apply tab (or `weightzoo rws patch ... --to-zoo`).")
    else:
        patched = st.selectbox("patched model", patched_ids[::-1], format_func=label, key="sg_patched")
        p_sigs = [int(e.parent) for e in z.lineage(int(patched), max_depth=1) if e.role == "signature"]
        off = st.multiselect("signatures to take off", p_sigs, default=p_sigs, format_func=_sig_label, key="sg_off")
        if off:
            kinds = list(dict.fromkeys(rws.load_signature(z, i).corruption for i in off)) or rws.corruption_names(None)[:1]
            sev = int(rws.load_signature(z, off[0]).severity or 3)
            with C.shown_errors("cannot unpatch"), st.spinner("unpatching and evaluating ..."):
                df, err = _unpatched(C.zoo_location()[0], C.generation(), int(patched), tuple(off), tuple(kinds), (sev,))
                if err is not None:
                    st.caption(f"largest difference from the original model: {err:.3g} (float32 rounding)")
                _plot(df, {0: f"patched {patched}", 1: "unpatched"}, key="sg_unplot")
                if st.button("Store the unpatched model", key="sg_unstore"):
                    res = rws.unpatch_model(z, int(patched), off, to_zoo=True)
                    st.success(f"stored as model {res.record.id} (op unpatch.rws)")
