"""Generate: sample new models from a stored weight generator, judge them against the memorisation
baselines (accuracy vs novelty), and save them to the zoo with lineage (op ``generate.<family>``).

Uses the public API of :mod:`generators` (``generators.api.sample`` / ``store_run``); a generator is
trained with ``weightzoo generate train`` (or ``generators.train``).
"""

import json

import pandas as pd
import streamlit as st

from app import common as C

z = C.page("Generate")
if z is None:
    st.stop()

try:
    from generators import api as G
    from generators.evaluate import plot_run
except ImportError as e:  # pragma: no cover - the package ships with weightzoo
    st.info(f"The generators are not installed ({e}); reinstall weightzoo.")
    st.stop()

recs = [r for r in z.models().tag("generator") if r.op == "train.generator"]
if not recs:
    st.info(
        "No stored generator in this zoo yet. Train one from the shell, e.g.\n\n"
        "```\nweightzoo build digits-mlp-seeds\n"
        "weightzoo generate train --population digits-mlp-seeds --method flow --holdout 50 --name mlp-flow\n```\n\n"
        "then reload this page to sample from it. CNNs want a population that shares its start "
        "(`weightzoo build digits-cnn-trunk` then `digits-cnn-spawn`): independently seeded CNNs do not mix."
    )
    st.stop()

labels = {f"{r.name} (model {r.id})": r for r in recs}
choice = st.selectbox("generator", list(labels), key="gen_pick")
rec = labels[choice]
hp = rec.hparams()
doc = json.loads(hp["generator_doc"])
cond_kind, cond_info = doc["state"]["cond_kind_"], doc["state"]["cond_info_"]
n_train = len([e for e in rec.parents() if e.role == "train"])
st.caption(
    f"{hp['generator']} generator trained on **{hp.get('trained_on')}** ({n_train} models, "
    f"{len(json.loads(hp.get('held_out_ids', '[]')))} held out); denoiser `{doc['params']['denoiser']}`; "
    f"{'latent: ' + str(doc['state']['latent_']['dim_']) + ' principal components' if doc['state'].get('latent_') else 'flat view'}; "
    f"condition: {hp.get('condition') or 'none'}"
)

c1, c2, c3, c4 = st.columns(4)
n = int(c1.number_input("samples", min_value=1, max_value=1000, value=50, step=10, key="gen_n"))
seed = int(c2.number_input("seed", min_value=0, value=0, step=1, key="gen_seed"))
steps = int(c3.number_input("steps (0: the generator's default)", min_value=0, value=0, step=5, key="gen_steps"))
condition = None
guidance = 1.0
if cond_kind == "class":
    condition = c4.selectbox("class", cond_info["classes"], key="gen_class")
elif cond_kind == "scalar":
    lo, hi = float(cond_info["min"]), float(cond_info["max"])
    condition = c4.slider(f"{hp.get('condition')}", min_value=lo, max_value=hi, value=hi, key="gen_cond")
if cond_kind != "none":
    guidance = st.slider("guidance scale (classifier-free; 1 = plain conditional)", 0.0, 5.0, 1.0, 0.5, key="gen_guidance")
temperature = st.slider("temperature (scale of the starting noise; below 1: nearer the learned modes, less new)",
                        0.1, 2.0, 1.0, 0.1, key="gen_temperature")  # fmt: skip

if st.button("Sample and evaluate", type="primary", key="gen_go"):
    with C.shown_errors("sampling failed"), st.spinner("sampling, aligning and evaluating ..."):
        st.session_state["gen_run"] = G.sample(z, rec.id, n=n, condition=condition, guidance=guidance,
                                               steps=steps or None, seed=seed, temperature=temperature, store=False,
                                               threads=1)  # fmt: skip

run = st.session_state.get("gen_run")
if run is not None and run.generator_id == rec.id and run.result:
    v, summ = run.verdict, run.summary
    quality = "test accuracy" if "val_acc_median" in summ["samples"] else "PSNR (dB)"
    word = v["verdict"]
    text = (f"verdict: **{word}** (samples' median novelty {summ['samples']['novelty_median']:.3f} vs "
            f"{v['noise_novelty_at_quality']:.3f} for noise copies of the same {quality}; "
            f"novelty ratio {v['novelty_ratio']:.2f} vs {v['reference'].replace('_', ' ')} models; "
            f"near-copies {v['near_copy_fraction']:.1%}; {run.params['nfe']} network evaluations per sample)")  # fmt: skip
    (st.success if word == "novel" else st.warning)(text)
    m1, m2, m3 = st.columns(3)
    m1.metric(f"median {quality}", f"{summ['samples']['quality_median']:.4f}")
    m2.metric("training median", f"{v['train_quality_median']:.4f}")
    m3.metric("novelty ratio", f"{v['novelty_ratio']:.2f}")
    st.pyplot(plot_run(run.result, quality_label=quality), clear_figure=True)
    table = pd.DataFrame(summ).T[["n", "quality_median", "quality_p5", "novelty_median", "novelty_ratio",
                                  "near_copy_fraction", "inside_train_range"]]  # fmt: skip
    st.dataframe(table, use_container_width=True)
    if run.sample_ids:
        st.success(f"saved {len(run.sample_ids)} samples to population `{rec.name}/samples` (run `{run.run}`)")
    elif st.button("Save samples to the zoo", key="gen_save"):
        with C.shown_errors("saving failed"):
            G.store_run(z, run)
            st.success(f"saved {len(run.sample_ids)} samples to population `{rec.name}/samples` (run `{run.run}`, "
                       f"tables {', '.join(run.tables)})")  # fmt: skip
