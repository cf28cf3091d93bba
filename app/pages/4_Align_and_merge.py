"""Align and merge: the linear path between two models before and after re-basin alignment, and
merging two or more models of one architecture (any registered method), saved to the zoo with lineage.

Uses the learners' public APIs when they are installed: ``analysis.align`` (aligners,
align_and_store), ``analysis.lmc`` (linear_mode_connectivity) and ``analysis.merging`` (merge
methods, merge, merge_state_dicts). A missing one is named on the page; the rest still works.
"""

import importlib
import typing

import pandas as pd
import streamlit as st

from app import charts
from app import common as C
from zoo import ZooError
from zoo.models.architectures import is_classifier


def _load(*names: str) -> tuple[object | None, str]:
    """The first importable module of ``names``, and a message naming what is missing otherwise."""
    errors = []
    for n in names:
        try:
            return importlib.import_module(n), ""
        except ImportError as e:
            errors.append(f"`{n}` ({e})")
    return None, " / ".join(errors)


z = C.page("Align and merge")
if z is None:
    st.stop()

align_mod, align_err = _load("analysis.align")
lmc_mod, lmc_err = _load("analysis.lmc")
merge_mod, merge_err = _load("analysis.merging", "analysis.merge")

table = C.models_table()
pops = C.populations()
pops = pops[pops["n_models"] >= 1]
if pops.empty:
    st.info("No population has models yet.")
    st.stop()

# ------------------------------------------------------------------------------------ pick models
c1, c2 = st.columns([2, 3])
pop = c1.selectbox("population", pops.sort_values("n_models", ascending=False)["name"].tolist(), key="am_pop")
members = table[table["population"] == pop]
final_members = C.final_only(members)
rank_col = "test_acc" if "test_acc" in members.columns and members["test_acc"].notna().any() else None
ranked = final_members.sort_values(rank_col, ascending=False) if rank_col else final_members
ranked_ids = set(ranked["id"])
options = ranked["id"].tolist() + [i for i in members["id"].tolist() if i not in ranked_ids]


_label = C.labeller()


chosen = c2.multiselect("models (the first is the reference / base)", options, default=options[:2], format_func=_label,
                        key=f"am_models_{pop}", max_selections=16)  # fmt: skip
extra = st.text_input("more model ids, from any population (comma separated, optional)", key="am_extra",
                      help="models of another architecture are refused with an explanation")  # fmt: skip
bad_extra = []
known = set(table["id"]) if extra.strip() else set()
for tok in [t.strip() for t in extra.split(",") if t.strip()]:
    if tok.isdigit() and int(tok) in known:
        if int(tok) not in chosen:
            chosen.append(int(tok))
    else:
        bad_extra.append(tok)
if bad_extra:
    st.error(f"no model(s) {', '.join(bad_extra)} in this zoo; give model ids (see the Models page)")
arch = pops.loc[pops["name"] == pop, "architecture"].iloc[0]
family = pops.loc[pops["name"] == pop, "family"].iloc[0]
st.caption(f"architecture `{arch}` ({family}); {len(members):,} models in `{pop}`")

t_path, t_merge = st.tabs(["Linear path and alignment", "Merge"])

# ------------------------------------------------------------------------------------ LMC / alignment
with t_path:
    missing = [m for m, err in (("analysis.lmc", lmc_err), ("analysis.align", align_err)) if err]
    if missing:
        st.info(f"Linear mode connectivity and alignment are not built yet: missing module(s) {', '.join(missing)}.")
    elif len(chosen) < 2:
        st.info("Pick two models (A = the first, B = the second) to draw the linear path between them.")
    else:
        c1, c2, c3, c4, c5 = st.columns(5)
        a = c1.selectbox("A (reference)", chosen, index=0, format_func=_label, key="am_a")
        b = c2.selectbox("B (aligned to A)", [i for i in chosen if i != a], index=0, format_func=_label, key="am_b")
        aligner_names = align_mod.aligners()
        method = c3.selectbox("aligner", aligner_names, key="am_aligner",
                              index=aligner_names.index("weight_matching") if "weight_matching" in aligner_names else 0)
        points = c4.slider("points on the path", 3, 25, 11, key="am_points")
        split = c5.selectbox("evaluated on", ["test", "val", "train"], key="am_split")
        seed = int(st.number_input("seed", 0, 10_000, 0, key="am_seed"))
        params = (a, b, method, points, split, seed, C.generation())
        if st.button("Compute the linear path", type="primary", key="am_lmc"):
            bar = st.progress(0.1, text="aligning B to A and evaluating every point of both paths ...")
            try:
                rep = lmc_mod.linear_mode_connectivity(z, a, b, align=True, method=method, seed=seed, points=points, split=split)
            except ZooError as e:
                st.error(str(e))
            else:
                st.session_state["am_lmc_result"] = (params, rep)
            bar.empty()
        got = st.session_state.get("am_lmc_result")
        if got is not None and got[0][:6] == params[:6]:
            rep = got[1]
            curves = {"naive (B as stored)": rep.naive}
            if rep.aligned is not None:
                curves["after aligning B to A"] = rep.aligned
            m = st.columns(4)
            m[0].metric("loss barrier, naive", f"{rep.naive.loss_barrier:.4f}")
            m[2].metric("accuracy barrier, naive", f"{rep.naive.acc_barrier:.4f}")
            if rep.aligned is not None:
                m[1].metric("loss barrier, aligned", f"{rep.aligned.loss_barrier:.4f}",
                            delta=f"{rep.aligned.loss_barrier - rep.naive.loss_barrier:+.4f}", delta_color="inverse")  # fmt: skip
                m[3].metric("accuracy barrier, aligned", f"{rep.aligned.acc_barrier:.4f}",
                            delta=f"{rep.aligned.acc_barrier - rep.naive.acc_barrier:+.4f}", delta_color="inverse")  # fmt: skip
            g1, g2 = st.columns(2)
            g1.plotly_chart(charts.lmc_figure(curves, "loss"), width="stretch", key="am_loss")
            g2.plotly_chart(charts.lmc_figure(curves, "acc"), width="stretch", key="am_acc")
            if rep.align_params:
                with st.expander("alignment details"):
                    st.json(rep.align_params)
            if st.button("Save B aligned to A in the zoo", key="am_save_aligned"):
                try:
                    with st.spinner("aligning, storing and evaluating ..."):
                        new = align_mod.align_and_store(z, b, a, method=method, seed=seed)
                except ZooError as e:
                    st.error(str(e))
                else:
                    st.success(f"stored model {new.id} ({new.name or 'unnamed'}) in population `{new.population}` "
                               f"(op `{new.op}`, parents {b} and {a})")  # fmt: skip
                    C.model_link(new.id)

# ------------------------------------------------------------------------------------ merge
with t_merge:
    if merge_mod is None:
        st.info(f"Merging is not built yet: missing module {merge_err}.")
    elif not chosen:
        st.info("Pick the models to merge.")
    else:
        names = merge_mod.list_methods()
        c1, c2 = st.columns([1, 3])
        mname = c1.selectbox("method", names, index=names.index("linear") if "linear" in names else 0, key="am_method")
        meth = merge_mod.get_method(mname)
        c2.code(meth.describe(), language=None)
        base = None
        if meth.base != "ignored":
            opts = chosen if meth.base == "required" else [None, *chosen]
            base = st.selectbox(f"base model ({meth.base})", opts, format_func=lambda i: "(none)" if i is None else _label(i),
                                key=f"am_base_{meth.base}")  # fmt: skip
        inputs = [i for i in chosen if i != base]
        st.caption(f"merging {len(inputs)} model(s)" + (f" onto base {base}" if base is not None else ""))

        values = {}
        auto = []
        cols = st.columns(4)
        for k, p in enumerate(meth.params):
            col = cols[k % 4]
            label = p.name + (" (each model)" if p.per_model else "")
            wkey = f"am_p_{mname}_{p.name}"
            if p.name in meth.from_metrics:  # the method declares it is read from each zoo model's metrics
                auto.append(f"{p.name} (stored metric {meth.from_metrics[p.name]!r})")
                continue
            tp = p.type
            if typing.get_origin(tp) is typing.Literal:
                choices = list(typing.get_args(tp))
                values[p.name] = col.selectbox(label, choices, index=0 if p.required else choices.index(p.default), key=wkey)
            elif tp is bool:
                values[p.name] = col.checkbox(label, value=not p.required and bool(p.default), key=wkey)
            elif tp is int:
                values[p.name] = int(col.number_input(label, value=0 if p.required else int(p.default), step=1, key=wkey))
            elif tp is float:
                start = 0.0 if p.required else float(p.default)
                values[p.name] = float(col.number_input(label, value=start, format="%.4f", key=wkey))
            else:
                txt = col.text_input(label, value="" if p.required else str(p.default), key=wkey)
                values[p.name] = txt
        if auto:
            st.caption(f"taken from the zoo for each model: {', '.join(auto)}")
        c1, c2, c3 = st.columns(3)
        out_pop = c1.text_input("save to population", value=f"{pop}/merged", key="am_out_pop")
        out_name = c2.text_input("model name (optional)", key="am_out_name")
        out_tags = c3.text_input("tags (comma separated)", value="merge", key="am_out_tags")
        prealign = False
        if align_mod is not None and len(chosen) >= 2:
            prealign = st.checkbox(
                f"align every model to {chosen[0]} first (re-basin; stores the aligned copies with lineage)", key="am_prealign",
            )  # fmt: skip
        ref = lambda i: f"zoo:{int(i)}"  # noqa: E731
        config = {"merge_method": mname, "models": [ref(i) for i in inputs], "parameters": values}
        if base is not None:
            config["base_model"] = ref(base)
        b1, b2 = st.columns(2)
        preview = b1.button("Preview (evaluate, save nothing)", key="am_preview", disabled=prealign)
        save = b2.button("Merge and save to the zoo", type="primary", key="am_save")
        if preview:
            try:
                with st.spinner("merging in memory and evaluating ..."), C.reading():
                    sds = [z.state_dict(i) for i in inputs]
                    bsd = z.state_dict(base) if base is not None else None
                    pvalues = dict(values)
                    if "loss" in auto:  # as the engine does: each model's stored loss (val, test, train)
                        cols = [c for c in ("val_loss", "test_loss", "train_loss", "loss") if c in table.columns]
                        losses = [next((float(v) for c in cols if pd.notna(v := table.loc[table["id"] == i, c].squeeze())), None)
                                  for i in inputs]  # fmt: skip
                        if None in losses:
                            raise ZooError(f"model {inputs[losses.index(None)]} has no stored loss for {mname}")
                        pvalues["loss"] = losses
                    merged = merge_mod.merge_state_dicts(mname, sds, bsd, **pvalues)
                    rec = z.get(inputs[0])
                    res = None
                    if is_classifier(rec.arch_config):
                        from zoo.build.evaluate import evaluate_population
                        from zoo.models.datasets import load_dataset

                        ds = load_dataset(str(z.hparams(inputs[0]).get("dataset", "digits")))
                        ds = ds.for_architecture(rec.arch_config)
                        X, y = ds.split("test")
                        res = evaluate_population(rec.arch_config, {k: v[None] for k, v in merged.items()}, X, y)
            except (ZooError, ValueError, RuntimeError) as e:
                st.error(f"cannot merge these models: {e}")
            else:
                rows = [{"model": _label(i), "test_acc": table.loc[table["id"] == i, "test_acc"].squeeze()
                         if "test_acc" in table.columns else None} for i in ([base] if base is not None else []) + inputs]  # fmt: skip
                if res is not None:
                    rows.append({"model": f"merged ({mname}, preview)", "test_acc": float(res.accuracy[0])})
                    st.success(f"preview: merged test accuracy {float(res.accuracy[0]):.4f}, loss {float(res.loss[0]):.4f}")
                else:
                    st.info("merged in memory; this architecture is not evaluable here (not a classifier)")
                st.dataframe(pd.DataFrame(rows), hide_index=True)
        if save:
            tags = [t.strip() for t in out_tags.split(",") if t.strip()]
            bar = st.progress(0.05, text="starting ...")
            try:
                cfg = dict(config)
                if prealign:
                    bar.progress(0.2, text=f"aligning {len(chosen) - 1} model(s) to {chosen[0]} ...")
                    aligned = align_mod.canonicalize(z, [i for i in chosen if i != chosen[0]], chosen[0])
                    new_ids = {i: r.id for i, r in zip([i for i in chosen if i != chosen[0]], aligned, strict=True)}
                    cfg["models"] = [ref(new_ids.get(i, i)) for i in inputs]
                    if base is not None:
                        cfg["base_model"] = ref(new_ids.get(base, base))
                bar.progress(0.5, text=f"merging {len(inputs)} model(s) with {mname} and evaluating ...")
                result = merge_mod.merge(cfg, zoo=z, to_zoo=True, population=out_pop.strip() or None,
                                         name=out_name.strip() or None, tags=tags, evaluate=True)  # fmt: skip
            except ZooError as e:
                bar.empty()
                st.error(f"nothing was merged: {e}")
            else:
                bar.progress(1.0, text="done")
                st.success(f"stored the merge as model {result.model_id} in `{out_pop}` ({result.seconds:.1f}s)")
                if result.metrics:
                    st.dataframe(pd.DataFrame([result.metrics]), hide_index=True)
                for note in result.notes:
                    st.caption(note)
                C.model_link(int(result.model_id))
