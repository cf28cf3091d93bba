"""Weight-space encoders on the built-in populations: every encoder x task x augmentation, mean ± std over seeds.

    weightzoo build digits-mlp --root R && weightzoo build digits-inr --root R
    python benchmarks/bench_encoders.py --root R [--seeds 3] [--epochs 100] [--tasks accuracy,inr-class,hparam-bucket]

Prints a markdown table (docs/encoders.md) and writes JSON rows to --out. Splits are by run (20 % of runs
held out); the seed seeds the split and the encoder. Threads: --threads (default 1).
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

AUG = {"accuracy": ["rescale", "noise"], "hparam-bucket": ["rescale", "noise"], "inr-class": ["noise", "dropout"]}
MAIN = {"accuracy": "kendall_tau", "inr-class": "accuracy", "hparam-bucket": "accuracy"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--tasks", default="accuracy,inr-class,hparam-bucket")
    ap.add_argument("--encoders", default="np,flat_mlp,stats")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench_encoders.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    z = Zoo.open(a.root, create=False)
    rows = []
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for task in a.tasks.split(","):
        data = load_task(z, task)
        for enc in a.encoders.split(","):
            for aug in ([False] if enc == "stats" else [False, True]):
                vals, secs = [], []
                for seed in range(a.seeds):
                    cfg = {} if enc == "stats" else {"epochs": a.epochs, "augment": AUG[task] if aug else []}
                    t = time.perf_counter()
                    res = run_task(z, enc, data, cfg, seed=seed)
                    secs.append(time.perf_counter() - t)
                    vals.append(res.metrics)
                    rows.append({"task": task, "encoder": enc, "augment": aug, **res.to_dict()})
                    Path(a.out).write_text(json.dumps(rows, indent=1, default=str))
                m = {k: (np.mean([v[k] for v in vals]), np.std([v[k] for v in vals])) for k in vals[0]}
                cells = " | ".join(f"{k} {mu:.3f} ± {sd:.3f}" for k, (mu, sd) in m.items())
                print(f"| {task} | {enc} | {'+'.join(AUG[task]) if aug else '-'} | {cells} | {np.mean(secs):.1f} s |", flush=True)
    print(f"load average at end: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
