"""Our NP layer (``weightspace.encoders.np_layers``) next to the ``nfn`` package's NP layer on the same data.

    weightzoo build digits-mlp --root R
    python -m venv --system-site-packages V && V/bin/pip install nfn==0.1.2 einops==0.8.1 --no-deps
    V/bin/python benchmarks/bench_nfn.py --root R --seeds 3 --epochs 100 [--out bench_nfn.json]

``nfn`` (Zhou et al., "Permutation Equivariant Neural Functionals", NeurIPS 2023; PyPI ``nfn``) is not a
dependency of weightzoo: install it in a throw-away venv that reuses the installed torch (``--no-deps``).

Task: ``load_task(zoo, "accuracy")`` (digits-mlp 64-32-10, every checkpoint: predict test accuracy from the
weights); split by run (20 % of runs held out), the seed seeds split and network. Both networks go through
the *same* pipeline, :class:`~weightspace.encoders.np_encoder.NPEncoder`'s: per-tensor
:class:`~weightspace.views.LayerNormalizer` fitted on the training split, rank-normalised targets (normal
scores, decoded through the training quantiles), :func:`~weightspace.train.train_network` (AdamW, lr 3e-3,
weight decay 1e-4, warm-up + cosine, batch 64), no augmentation, the same MLP head (pooled -> 128 -> 128 ->
1, ReLU, dropout 0.1). Only the view (``_prepare``) and the equivariant trunk (``_build_net``) differ:

* **ours** -- ``NPEncoder`` / ``NPNet``: only the *hidden* neurons are permuted (the symmetry group of the
  MLP). The fixed input/output neurons become feature channels of the hidden node set (first-layer
  weights 64 + bias 1 + last-layer weights 10 = 75 channels on 32 nodes); hidden-to-hidden matrices are edge
  sets (none here: one hidden layer). Layer terms: self, set-mean, global (every set's mean + output bias),
  in/out-edge means; ReLU; residual from the 2nd layer on; readout mean **and max** per set + output bias.
* **nfn-np** -- ``nfn.layers.NPLinear`` x n, ``TupleOp(ReLU)`` after each, ``NPPool``: every weight matrix
  ``[B, C, n_out, n_in]`` and bias ``[B, C, n_out]`` is a feature map (converter :func:`nfn_inputs`);
  NPLinear assumes a permutation symmetry of *all* neuron sets, inputs and outputs included (the "NP"
  group, larger than the MLP's true group). Terms per weight: pointwise 1x1 conv, row means, column
  means (+ neighbouring bias/weight means), global means of all weights/biases; no residual; readout is
  the mean only (NPPool). Consequently it cannot tell input pixels or output classes apart (printed
  below: its output does not change when the input pixels are permuted). It also carries per-weight
  channels on all 64x32 + 32x10 entries, where ours carries them on 32 nodes: most of its cost.
* **nfn-np-io** -- the same with ``NPLinear(io_embed=True)`` (nfn's learned input/output position
  embeddings, which break the input/output symmetry back down to the hidden permutations).

``nfn.layers.HNPLinear`` (hidden-neuron symmetry only, the group ours uses) is not trained here: for this
MLP its first-layer map is a ``Conv1d(76*C, 64*C)``, ~80M parameters per layer at C=128, ~1.2M at C=16.

Reported per network: Kendall tau, R^2, MAE on the held-out runs (mean ± std over seeds), parameters, seconds
per training epoch (wall clock and process CPU, ``fit`` time / epochs, one thread), and the ratio of the
nfn network's time to ours. Runs are interleaved per seed so that machine-load drift hits all alike.
A sanity check (printed, in the JSON) confirms every network's output is invariant to random hidden-neuron
permutations of the input models (untrained small nets before, trained nets after training).
A timing sweep (``--sweep-widths``, ``--sweep-epochs``) times a short fit of ours/nfn-np at equal widths.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from weightspace.augment import permute  # noqa: E402
from weightspace.encoders.np_encoder import NPEncoder  # noqa: E402
from weightspace.spec import PermutationSpec  # noqa: E402
from weightspace.tasks import load_task, score, split_by_run  # noqa: E402
from weightspace.views import DenseLayer, dense_chain  # noqa: E402
from zoo import Zoo  # noqa: E402

try:
    from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat
    from nfn.layers import NPLinear, NPPool, TupleOp
except ImportError as e:  # pragma: no cover - depends on the venv
    raise SystemExit(
        f"this benchmark needs the `nfn` package ({e}); install it without touching torch:\n"
        "  python -m venv --system-site-packages V && V/bin/pip install nfn==0.1.2 einops==0.8.1 --no-deps\n"
        "  V/bin/python benchmarks/bench_nfn.py --root R"
    ) from None


# ----------------------------------------------------------------------------------------------
# The converter and nfn's network


def nfn_inputs(stacked: Mapping[str, Tensor], chain: Sequence[DenseLayer]) -> WeightSpaceFeatures:
    """(Normalised) stacked weights of a dense chain -> nfn's ``WeightSpaceFeatures``.

    Shapes: ``weights[i]`` ``[B, 1, n_out, n_in]`` (one channel; torch's ``[out, in]`` layout is nfn's), ``biases[i]``
    ``[B, 1, n_out]`` (zeros for a layer without bias, as :func:`~weightspace.encoders.np_layers.np_inputs` does).
    """
    ws, bs = [], []
    for lay in chain:
        w = stacked[lay.weight]
        ws.append(w.unsqueeze(1))
        bs.append((stacked[lay.bias] if lay.bias else w.new_zeros(w.shape[0], w.shape[1])).unsqueeze(1))
    return WeightSpaceFeatures(ws, bs)


class NFNNet(nn.Module):
    """nfn's NP network: ``n_layers`` x (NPLinear, TupleOp(ReLU)), NPPool, then the same head as ``NPNet``."""

    def __init__(
        self,
        spec: Any,
        n_out: int,
        channels: int,
        n_layers: int,
        head_hidden: int,
        dropout: float,
        io_embed: bool,
    ) -> None:
        super().__init__()
        trunk: list[nn.Module] = []
        c = 1
        for _ in range(n_layers):
            trunk += [NPLinear(spec, c, channels, io_embed=io_embed), TupleOp(nn.ReLU())]
            c = channels
        self.trunk = nn.Sequential(*trunk)
        self.pool = NPPool(spec)
        readout = channels * NPPool.get_num_outs(spec)
        self.embedder = nn.Sequential(
            nn.Linear(readout, head_hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, head_hidden),
            nn.ReLU(),
        )
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(head_hidden, n_out))

    def pooled(self, inputs: WeightSpaceFeatures) -> Tensor:
        return self.pool(self.trunk(inputs)).flatten(1)  # [B, C, 2L] -> [B, 2L*C]

    def embed(self, inputs: WeightSpaceFeatures) -> Tensor:
        return self.embedder(self.pooled(inputs))

    def forward(self, inputs: WeightSpaceFeatures) -> Tensor:
        return self.out(self.embed(inputs))


class NFNEncoder(NPEncoder):
    """``NPEncoder``'s whole pipeline (normaliser, targets, training loop, decoding) with nfn's network:
    ``hidden`` is nfn's channel count. Not registered; benchmark only."""

    name = "nfn-np"
    io_embed = False

    def _prepare(self, stacked: Mapping[str, Tensor]) -> WeightSpaceFeatures:
        return nfn_inputs(stacked, self._chain())

    def _build_net(self, n_out: int) -> nn.Module:
        chain = self._chain()
        probe = {k: torch.zeros(1, *v) for k, v in self.layout_.items()}
        spec = network_spec_from_wsfeat(nfn_inputs(probe, chain))
        return NFNNet(spec, n_out, self.hidden, self.n_layers, self.head_hidden, self.dropout, self.io_embed)


class NFNEncoderIO(NFNEncoder):
    name = "nfn-np-io"
    io_embed = True


MODELS = {"ours": NPEncoder, "nfn-np": NFNEncoder, "nfn-np-io": NFNEncoderIO}


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ----------------------------------------------------------------------------------------------
# Invariance checks


def permute_inputs(
    X: Mapping[str, Tensor], chain: Sequence[DenseLayer], gen: torch.Generator
) -> dict[str, Tensor]:
    """A negative control: the first layer's input columns (pixels) shuffled -- *not* a symmetry of the MLP."""
    first = chain[0].weight
    perm = torch.randperm(X[first].shape[-1], generator=gen)
    return {**X, first: X[first][..., perm]}


def mlp_forward(X: Mapping[str, Tensor], chain: Sequence[DenseLayer], x: Tensor) -> Tensor:
    """The stacked MLPs (ReLU) on inputs ``x [P, n_0]`` -> ``[N, P, n_L]``: shows a permutation keeps the function."""
    h = x.expand(X[chain[0].weight].shape[0], *x.shape)
    for i, lay in enumerate(chain):
        h = h @ X[lay.weight].transpose(1, 2) + (X[lay.bias].unsqueeze(1) if lay.bias else 0)
        if i < len(chain) - 1:
            h = torch.relu(h)
    return h


def check_encoder(
    enc: NPEncoder, X: Mapping[str, Tensor], spec: PermutationSpec, seed: int
) -> dict[str, float]:
    """Max |change| of a fitted encoder's raw outputs under hidden permutations, vs under an input-pixel shuffle."""
    gen = torch.Generator().manual_seed(seed)
    chain = dense_chain(spec)
    out = enc.decision_function(X)
    return {
        "hidden_perm_max_abs_diff": float((enc.decision_function(permute(X, spec, gen)) - out).abs().max()),
        "input_perm_max_abs_diff": float(
            (enc.decision_function(permute_inputs(X, chain, gen)) - out).abs().max()
        ),
        "output_std_over_models": float(out.std()),
    }


def small_scale_check(X: Mapping[str, Tensor], spec: PermutationSpec, seed: int = 0) -> dict[str, Any]:
    """Untrained small nets (width 8, 2 layers) on 16 models: output change under hidden permutations."""
    gen = torch.Generator().manual_seed(seed)
    X = {k: v[:16].float() for k, v in X.items()}
    chain = dense_chain(spec)
    Xp = permute(X, spec, gen)
    x = torch.randn(5, X[chain[0].weight].shape[-1], generator=gen)
    res: dict[str, Any] = {
        "mlp_function_max_abs_diff": float((mlp_forward(X, chain, x) - mlp_forward(Xp, chain, x)).abs().max())
    }
    y = np.linspace(0, 1, 16)
    for name, cls in MODELS.items():
        enc = cls(hidden=8, n_layers=2, head_hidden=16, epochs=0, seed=seed).fit(X, y, spec=spec)
        res[name] = check_encoder(enc, X, spec, seed)
    return res


# ----------------------------------------------------------------------------------------------
# Runs


def fit_timed(
    cls: type, X: Mapping[str, Tensor], y: np.ndarray, spec: PermutationSpec, **cfg: Any
) -> tuple[NPEncoder, float, float]:
    enc = cls(**cfg)
    t, c = time.perf_counter(), time.process_time()
    enc.fit(X, y, spec=spec)
    return enc, time.perf_counter() - t, time.process_time() - c


def versions() -> dict[str, str]:
    v = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("nfn", "einops", "numpy", "scipy", "scikit-learn"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = "-"
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument(
        "--models",
        default="ours:128,ours:32,nfn-np:32",
        help="name:width,... (names: ours, nfn-np, nfn-np-io)",
    )
    ap.add_argument("--n-layers", type=int, default=3)
    ap.add_argument(
        "--sweep-widths", default="32,48,128", help="widths timed for ours and nfn-np ('' to skip)"
    )
    ap.add_argument("--sweep-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench_nfn.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    print(f"versions: {versions()}; threads {a.threads}", flush=True)
    z = Zoo.open(a.root, create=False)
    data = load_task(z, "accuracy")
    X = {k: v.float() for k, v in data.X.items()}
    print(f"task accuracy on {data.population}: {len(data.y)} models, {len(set(data.groups))} runs, "
          f"shapes {({k: tuple(v.shape[1:]) for k, v in X.items()})}", flush=True)  # fmt: skip
    doc: dict[str, Any] = {"argv": sys.argv, "versions": versions(), "threads": a.threads, "epochs": a.epochs,
                           "load_start": os.getloadavg()}  # fmt: skip

    small = small_scale_check(X, data.spec)
    doc["small_scale_check"] = small
    print(f"sanity (untrained, width 8, 16 models): permuted MLPs compute the same function "
          f"(max |diff| {small['mlp_function_max_abs_diff']:.1e})", flush=True)  # fmt: skip
    for name in MODELS:
        r = small[name]
        print(f"  {name:10s} output change: hidden perm {r['hidden_perm_max_abs_diff']:.1e}, input-pixel shuffle "
              f"{r['input_perm_max_abs_diff']:.1e} (output std over models {r['output_std_over_models']:.1e})", flush=True)  # fmt: skip

    models = [(m.split(":")[0], int(m.split(":")[1])) for m in a.models.split(",")]
    common = {"n_layers": a.n_layers, "head_hidden": 128, "dropout": 0.1, "epochs": a.epochs, "batch_size": 64,
              "lr": 3e-3, "weight_decay": 1e-4, "target": "rank"}  # fmt: skip
    rows = []
    for seed in range(a.seeds):
        tr, te = split_by_run(data.groups, 0.2, seed)
        Xtr, Xte = data.subset(tr), data.subset(te)
        for name, width in models:
            enc, wall, cpu = fit_timed(
                MODELS[name], Xtr, data.y[tr], data.spec, hidden=width, seed=seed, **common
            )
            m = score("regression", data.y[te], enc.predict(Xte))
            row = {"model": name, "width": width, "seed": seed, "params": n_params(enc.net_), **m,
                   "fit_seconds": wall, "fit_cpu_seconds": cpu, "s_per_epoch": wall / a.epochs,
                   "cpu_s_per_epoch": cpu / a.epochs, "final_train_loss": enc.history_[-1], "n_train": len(tr),
                   "n_test": len(te)}  # fmt: skip
            if seed == 0:
                row["invariance"] = check_encoder(enc, Xte, data.spec, seed)
                inv = row["invariance"]
                print(f"  sanity (trained {name}:{width}, {len(te)} test models): output change under hidden perm "
                      f"{inv['hidden_perm_max_abs_diff']:.1e}, under input-pixel shuffle {inv['input_perm_max_abs_diff']:.1e}, "
                      f"output std {inv['output_std_over_models']:.2f}", flush=True)  # fmt: skip
            rows.append(row)
            print(f"seed {seed} {name}:{width}: tau {m['kendall_tau']:.3f} r2 {m['r2']:.3f} mae {m['mae']:.4f} "
                  f"{wall / a.epochs:.3f} s/epoch (cpu {cpu / a.epochs:.3f}) loss {enc.history_[-1]:.3f}", flush=True)  # fmt: skip
            doc["runs"] = rows
            Path(a.out).write_text(json.dumps(doc, indent=1, default=str))

    summary = []
    for name, width in models:
        rs = [r for r in rows if r["model"] == name and r["width"] == width]
        s: dict[str, Any] = {"model": name, "width": width, "params": rs[0]["params"]}
        for k in ("kendall_tau", "r2", "mae", "s_per_epoch", "cpu_s_per_epoch"):
            s[k] = (float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs])))
        summary.append(s)
    ref = {s["width"]: s for s in summary if s["model"] == "ours"}
    print(
        "\n| network | width | params | Kendall tau | R2 | MAE | s/epoch (wall) | s/epoch (CPU) | time ratio vs ours |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        ratio = "1 (reference)" if s["model"] == "ours" else "- (no ours row in this run)"
        if s["model"] != "ours" and ref:
            parts = [
                f"{s['cpu_s_per_epoch'][0] / r['cpu_s_per_epoch'][0]:.1f}x (ours:{w})"
                for w, r in sorted(ref.items())
            ]
            ratio = ", ".join(parts)
            s["cpu_time_ratio_vs_ours"] = {
                w: s["cpu_s_per_epoch"][0] / r["cpu_s_per_epoch"][0] for w, r in ref.items()
            }
        cells = " | ".join(f"{s[k][0]:.3f} ± {s[k][1]:.3f}" for k in ("kendall_tau", "r2", "mae"))
        print(f"| {s['model']} | {s['width']} | {s['params']:,} | {cells} | {s['s_per_epoch'][0]:.3f} | "
              f"{s['cpu_s_per_epoch'][0]:.3f} | {ratio} |")  # fmt: skip
    doc["summary"] = summary

    if a.sweep_widths and a.sweep_epochs > 0:
        tr, _ = split_by_run(data.groups, 0.2, 0)
        Xtr = data.subset(tr)
        sweep = []
        print(f"\ntiming sweep ({a.sweep_epochs} epochs, seed-0 training split):")
        print(
            "| width | ours params | ours s/epoch (CPU) | nfn-np params | nfn-np s/epoch (CPU) | ratio nfn/ours |"
        )
        print("|---|---|---|---|---|---|")
        for width in (int(w) for w in a.sweep_widths.split(",")):
            cfg = {**common, "epochs": a.sweep_epochs}
            e1, _, c1 = fit_timed(NPEncoder, Xtr, data.y[tr], data.spec, hidden=width, seed=0, **cfg)
            e2, _, c2 = fit_timed(NFNEncoder, Xtr, data.y[tr], data.spec, hidden=width, seed=0, **cfg)
            c1, c2 = c1 / a.sweep_epochs, c2 / a.sweep_epochs
            sweep.append({"width": width, "ours_params": n_params(e1.net_), "ours_cpu_s_per_epoch": c1,
                          "nfn_params": n_params(e2.net_), "nfn_cpu_s_per_epoch": c2, "ratio": c2 / c1})  # fmt: skip
            print(
                f"| {width} | {n_params(e1.net_):,} | {c1:.3f} | {n_params(e2.net_):,} | {c2:.3f} | {c2 / c1:.1f}x |",
                flush=True,
            )
        doc["sweep"] = sweep

    doc["load_end"] = os.getloadavg()
    Path(a.out).write_text(json.dumps(doc, indent=1, default=str))
    print(f"\nload average at end: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
