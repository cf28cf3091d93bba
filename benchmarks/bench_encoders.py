"""Weight-space encoders on the built-in populations: every encoder x task x augmentation, mean ± std over seeds.

    R=/tmp/benchzoo
    weightzoo build digits-mlp --root $R && weightzoo build digits-cnn --root $R && weightzoo build digits-inr-views --root $R
    python benchmarks/bench_encoders.py --root $R [--seeds 3] [--tasks accuracy,accuracy-cnn,inr-class,hparam-bucket]
        [--encoders np,np+probes,gmn,gmn+probes,probe,flat_mlp,stats] [--augment both|none|only]

Prints a markdown table (docs/encoders.md) and appends JSON rows to --out (one per fit; a rerun skips the
fits already in --out, so an interrupted benchmark resumes). Splits are by run (20 % of the runs held out;
for INRs, by image); the seed seeds the split and the encoder. Threads: --threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from weightspace.tasks import load_task, run_task  # noqa: E402
from zoo import Zoo  # noqa: E402

#: task key -> (weightspace task, population, main score, augmentations)
TASKS = {
    "accuracy": ("accuracy", "digits-mlp", "kendall_tau", ["rescale", "noise"]),
    "accuracy-cnn": ("accuracy", "digits-cnn", "kendall_tau", ["rescale", "noise"]),
    "inr-class": ("inr-class", "digits-inr-views", "accuracy", ["noise", "dropout"]),
    "hparam-bucket": ("hparam-bucket", "digits-mlp", "accuracy", ["rescale", "noise"]),
}
#: variant -> (registered encoder, config, families it supports, per-task config overrides; epochs
#: default to --epochs). The probe-feature GMN on SIRENs needs a gentler optimiser than its defaults
#: (lr 3e-3, weight decay 1e-2 left two of three seeds near chance at 40 epochs).
VARIANTS = {
    "np": ("np", {}, {"mlp", "siren"}, {"inr-class": {"epochs": 40}}),
    "np+probes": ("np", {"probes": 32}, {"mlp", "siren"}, {"inr-class": {"epochs": 40}}),
    "gmn": ("gmn", {}, {"mlp", "siren", "cnn"}, {"inr-class": {"epochs": 40}}),
    "gmn+probes": ("gmn", {"probes": 32}, {"mlp", "siren"},
                   {"inr-class": {"epochs": 60, "lr": 1e-3, "weight_decay": 1e-4, "dropout": 0.1}}),
    "probe": ("probe", {}, {"mlp", "siren", "cnn"}, {}),
    "flat_mlp": ("flat_mlp", {}, {"mlp", "siren", "cnn"}, {}),
    "stats": ("stats", {}, {"mlp", "siren", "cnn"}, {}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, action="append", help="zoo root; repeat to take each population from "
                    "the first root that has it")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--encoders", default=",".join(VARIANTS))
    ap.add_argument("--augment", default="both", choices=["both", "none", "only"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench_encoders.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    try:
        import weightspace.encoders.gmn  # noqa: F401  (registers "gmn" when present)
    except ImportError:
        pass
    zoos = [Zoo.open(r, create=False) for r in a.root]
    out = Path(a.out)
    rows = json.loads(out.read_text()) if out.is_file() else []
    done = {(r["task_key"], r["variant"], r["augment"], r["seed"]): r for r in rows}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for key in a.tasks.split(","):
        task, pop, main_score, aug_steps = TASKS[key]
        z = next((zz for zz in zoos if pop in {p.name for p in zz.populations()}), zoos[0])
        data = load_task(z, task, pop)
        family = (data.config or {}).get("family", "mlp")
        for var in a.encoders.split(","):
            enc, base, families, per_task = VARIANTS[var]
            if family not in families:
                continue
            augs = {"both": [False, True], "none": [False], "only": [True]}[a.augment]
            for aug in [False] if enc == "stats" else augs:
                vals, secs = [], []
                for seed in range(a.seeds):
                    k = (key, var, aug, seed)
                    if k not in done:
                        cfg = dict(base)
                        if enc != "stats":
                            cfg |= {"epochs": a.epochs, "augment": aug_steps if aug else [], **per_task.get(key, {})}
                        t = time.perf_counter()
                        res = run_task(z, enc, data, cfg, seed=seed)
                        r = {"task_key": key, "variant": var, "augment": aug, "wall_seconds": time.perf_counter() - t,
                             "load": os.getloadavg()[0], **res.to_dict()}  # fmt: skip
                        rows.append(r)
                        done[k] = r
                        out.write_text(json.dumps(rows, indent=1, default=str))
                    vals.append(done[k]["metrics"])
                    secs.append(done[k]["train_seconds"])
                m = {s: (np.mean([v[s] for v in vals]), np.std([v[s] for v in vals])) for s in vals[0]}
                cells = " | ".join(f"{mu:.3f} ± {sd:.3f}" for mu, sd in m.values())
                print(f"| {key} ({pop}) | {var} | {'+'.join(aug_steps) if aug else '-'} | {cells} "
                      f"({', '.join(m)}) | {np.mean(secs):.0f} s |", flush=True)  # fmt: skip
    print(f"load average at end: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
