"""Streaming merges of a ~150M-parameter Llama-style checkpoint: weightzoo vs mergekit, side by side.

Builds (in a temp folder) a random Llama-shaped base model and three "fine-tunes" made by
perturbation, all as sharded safetensors with an HF ``config.json``; then runs TIES, task arithmetic,
DARE-TIES and SLERP through weightzoo and through mergekit (``mergekit-yaml`` in a subprocess, same
YAML), each tool in its own subprocess, measuring wall time and peak RSS (``getrusage(RUSAGE_CHILDREN)``
in a fresh wrapper process per run). Outputs are compared tensor by tensor (DARE: statistics of the
deltas, since the random drops differ by construction).

mergekit is a benchmark-only tool, never a project dependency. Install it beside (not over) torch::

    python -m venv --system-site-packages /tmp/mkvenv
    /tmp/mkvenv/bin/pip install -c <(echo torch==2.13.0) mergekit

    python benchmarks/bench_merge.py --mergekit /tmp/mkvenv/bin/mergekit-yaml [--layers 14] [--keep DIR]

Targets: ours >= 3x faster and <= 1/3 of mergekit's peak memory; same tensors within float tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.merging.sources import SafetensorsSource, TensorInfo, open_source  # noqa: E402
from analysis.merging.writer import StreamingWriter  # noqa: E402


def llama_shapes(vocab: int, hidden: int, inter: int, layers: int) -> dict[str, tuple[int, ...]]:
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            s[p + f"self_attn.{n}.weight"] = (hidden, hidden)
        s[p + "mlp.gate_proj.weight"] = (inter, hidden)
        s[p + "mlp.up_proj.weight"] = (inter, hidden)
        s[p + "mlp.down_proj.weight"] = (hidden, inter)
        s[p + "input_layernorm.weight"] = (hidden,)
        s[p + "post_attention_layernorm.weight"] = (hidden,)
    s["model.norm.weight"] = (hidden,)
    s["lm_head.weight"] = (vocab, hidden)
    return s


def llama_config(vocab: int, hidden: int, inter: int, layers: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 12, "num_key_value_heads": 12,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
        "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2, "rope_theta": 10000.0,
    }  # fmt: skip


def build_models(root: Path, layers: int, n_finetunes: int = 3, shard: str = "200MB") -> list[Path]:
    """Base + fine-tunes (base + a shared direction + own noise; some tensors left unchanged)."""
    vocab, hidden, inter = 32000, 768, 2048
    shapes = llama_shapes(vocab, hidden, inter, layers)
    plan = {k: TensorInfo(v, torch.float32) for k, v in shapes.items()}
    cfg = llama_config(vocab, hidden, inter, layers)
    paths = [root / "base"] + [root / f"ft{i}" for i in range(n_finetunes)]
    writers = [StreamingWriter(p, plan, max_shard_size=shard) for p in paths]
    g = torch.Generator().manual_seed(0)
    for j, (name, shp) in enumerate(shapes.items()):
        base = torch.randn(shp, generator=g) * (0.02 if len(shp) == 2 else 1.0)
        if len(shp) == 1:
            base = 1.0 + 0.1 * torch.randn(shp, generator=g)
        writers[0].write(name, base)
        shared = torch.randn(shp, generator=g) * 0.002
        for i, w in enumerate(writers[1:]):
            if (j + i) % 7 == 0:  # this fine-tune left the tensor untouched
                w.write(name, base)
            else:
                w.write(name, base + shared + torch.randn(shp, generator=g) * 0.003)
    for w in writers:
        w.finish(config=cfg)
    return paths


def measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` under a fresh wrapper process; wall time and the child's peak RSS."""
    wrapper = (
        "import json,resource,subprocess,sys,time\n"
        "t=time.perf_counter(); r=subprocess.run(sys.argv[1:]); dt=time.perf_counter()-t\n"
        "ru=resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print('@@'+json.dumps({'rc':r.returncode,'seconds':dt,'peak_rss_mb':ru.ru_maxrss/1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("@@")]
    if not line:
        raise RuntimeError(f"wrapper failed: {out.stderr[-2000:]}")
    res = json.loads(line[-1][2:])
    if res["rc"] != 0:
        raise RuntimeError(f"{cmd[0]} failed (rc {res['rc']}): {out.stderr[-3000:]}")
    return res


def compare(a: Path, b: Path, base: Path | None, *, stats_only: bool) -> dict:
    sa, sb = open_source(str(a)), open_source(str(b))
    sbase = open_source(str(base)) if base is not None else None
    ia, ib = sa.infos(), sb.infos()
    if set(ia) != set(ib):
        return {"same_names": False, "only_ours": sorted(set(ia) - set(ib))[:5], "only_mergekit": sorted(set(ib) - set(ia))[:5]}
    max_abs, max_rel, n_diff, n_all = 0.0, 0.0, 0, 0
    acc = {"ours": [0.0, 0.0, 0, 0], "mergekit": [0.0, 0.0, 0, 0]}  # sum, sumsq, zeros, n
    for name in ia:
        x, y = sa.get(name).float(), sb.get(name).float()
        if stats_only and sbase is not None:
            bt = sbase.get(name).float()
            for key, t in (("ours", x - bt), ("mergekit", y - bt)):
                s = acc[key]
                s[0] += float(t.sum())
                s[1] += float((t.double() ** 2).sum())
                s[2] += int((t == 0).sum())
                s[3] += t.numel()
        else:
            dd = (x - y).abs()
            d = dd.max().item()
            n_diff += int(torch.count_nonzero(dd > 1e-5 * max(y.abs().max().item(), 1e-12)))
            n_all += dd.numel()
            max_abs = max(max_abs, d)
            max_rel = max(max_rel, d / max(y.abs().max().item(), 1e-12))
    for s in (sa, sb, sbase):
        if s is not None:
            s.close()
    if stats_only:
        out = {}
        for key, (s1, s2, z, n) in acc.items():
            mean = s1 / n
            out[key] = {"delta_mean": mean, "delta_std": (s2 / n - mean * mean) ** 0.5, "zero_fraction": z / n}
        return out
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "entries_differing": n_diff, "entries": n_all}


def configs(paths: list[Path]) -> dict[str, dict]:
    base, ft = str(paths[0]), [str(p) for p in paths[1:]]
    three = ft[:3]
    return {
        "ties": {"merge_method": "ties", "base_model": base, "dtype": "float32",
                 "models": [{"model": m, "parameters": {"weight": 1.0, "density": 0.5}} for m in three],
                 "parameters": {"normalize": True}},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": base, "dtype": "float32",
                            "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(three, (0.5, 0.3, 0.2), strict=True)],
                            "parameters": {"lambda": 1.0}},
        "dare_ties": {"merge_method": "dare_ties", "base_model": base, "dtype": "float32",
                      "models": [{"model": m, "parameters": {"weight": 1.0, "density": 0.5}} for m in three]},
        "slerp": {"merge_method": "slerp", "base_model": base, "dtype": "float32",
                  "models": [{"model": base}, {"model": ft[0]}], "parameters": {"t": 0.3}},
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mergekit", default=shutil.which("mergekit-yaml") or "/tmp/mkvenv/bin/mergekit-yaml",
                    help="path of mergekit-yaml (default: on PATH, else /tmp/mkvenv/bin/mergekit-yaml)")  # fmt: skip
    ap.add_argument("--layers", type=int, default=14, help="decoder layers (14 -> ~148M parameters)")
    ap.add_argument("--methods", nargs="*", default=["ties", "task_arithmetic", "dare_ties", "slerp"])
    ap.add_argument("--shard", default="200MB", help="output shard size for both tools")
    ap.add_argument("--keep", help="build/keep the models in this folder (reused when present)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_merge_"))
    tmp.mkdir(parents=True, exist_ok=True)
    models_dir = tmp / "models"
    if not (models_dir / "ft2" / "config.json").exists():
        shutil.rmtree(models_dir, ignore_errors=True)
        t = time.perf_counter()
        paths = build_models(models_dir, args.layers)
        print(f"built 4 models in {time.perf_counter() - t:.1f}s under {models_dir}")
    else:
        paths = [models_dir / "base"] + [models_dir / f"ft{i}" for i in range(3)]
    n_params = sum(torch.Size(i.shape).numel() for i in SafetensorsSource.from_index(
        paths[0] / "model.safetensors.index.json", "base").infos().values())  # fmt: skip
    print(f"model: Llama-style, {n_params / 1e6:.1f}M parameters, float32 ({n_params * 4 / 1e6:.0f} MB per model)")
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; torch {torch.__version__}")

    import yaml

    env = dict(os.environ, PYTHONPATH=str(REPO))
    results = {}
    shard_mk = args.shard.upper().replace("MB", "M").replace("GB", "B")
    for name in args.methods:
        cfg = configs(paths)[name]
        cfg_path = tmp / f"{name}.yml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        ours_out, mk_out = tmp / f"out_ours_{name}", tmp / f"out_mergekit_{name}"
        shutil.rmtree(ours_out, ignore_errors=True)
        shutil.rmtree(mk_out, ignore_errors=True)
        load_before = os.getloadavg()[0]
        ours = measured([sys.executable, "-m", "analysis.merge_cli", str(cfg_path), str(ours_out),
                         "--max-shard-size", args.shard, "--no-progress"], env=env)  # fmt: skip
        mk = measured([args.mergekit, str(cfg_path), str(mk_out), "--out-shard-size", shard_mk, "--no-copy-tokenizer",
                       "--lazy-unpickle", "--quiet"])  # fmt: skip
        cmp = compare(ours_out, mk_out, paths[0], stats_only=name.startswith("dare"))
        r = {"ours": ours, "mergekit": mk, "speedup": mk["seconds"] / ours["seconds"],
             "memory_ratio": ours["peak_rss_mb"] / mk["peak_rss_mb"], "compare": cmp,
             "load": [load_before, os.getloadavg()[0]]}  # fmt: skip
        results[name] = r
        print(f"\n{name}: ours {ours['seconds']:.1f}s / {ours['peak_rss_mb']:.0f} MB peak RSS; "
              f"mergekit {mk['seconds']:.1f}s / {mk['peak_rss_mb']:.0f} MB -> {r['speedup']:.2f}x faster, "
              f"{r['memory_ratio']:.2f}x the memory (load {r['load'][0]:.1f} -> {r['load'][1]:.1f})")  # fmt: skip
        print(f"  outputs: {json.dumps(cmp)}")
        shutil.rmtree(ours_out, ignore_errors=True)
        shutil.rmtree(mk_out, ignore_errors=True)
    print("\n| method | ours s | mergekit s | speedup | ours MB | mergekit MB | memory ratio | load |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['ours']['seconds']:.1f} | {r['mergekit']['seconds']:.1f} | {r['speedup']:.2f}x | "
              f"{r['ours']['peak_rss_mb']:.0f} | {r['mergekit']['peak_rss_mb']:.0f} | {r['memory_ratio']:.2f} | "
              f"{r['load'][0]:.1f}-{r['load'][1]:.1f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
