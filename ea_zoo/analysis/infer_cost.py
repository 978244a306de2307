"""``ea-zoo infer-cost``: Figure 5 of Feng 2025 (autoregressive decoding cost).

A causal LM (``ea_zoo.create_model("lm", attention=<backend>)``; BERT-base sizes with
``--preset paper``: 12 layers, D 768, 12 heads, FFN 3072, vocab 30522) decodes greedily, one
token at a time through ``model.step`` (SA and full EA with their growing K/V cache, every
recurrent backend with its fixed-size state). For each backend and batch size, at each
checkpoint length L:

* (a) memory: parameters + the decoding state's tensors after L tokens (measured on the
  state, every layer; on CUDA also ``torch.cuda.memory_allocated`` and the peak);
* (b) latency: total seconds to generate L tokens, and the per-token latency at L (median of
  the last steps before L).

Runs under ``torch.no_grad`` in eval mode (no dropout).
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any, Dict, List

import torch

from ea_zoo.analysis import common, report
from ea_zoo.analysis.common import BackendSpec, sdpa_context
from ea_zoo.analysis.fit import tail_slope
from ea_zoo.analysis.memory import is_oom, param_bytes, tensor_bytes, tensor_numel
from ea_zoo.analysis.speed import timed_greedy_step
from ea_zoo.registry import get_attention_cls, list_attentions

__all__ = ["PRESETS", "InferCostConfig", "default_backends", "decode_run", "add_arguments", "run"]

PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(depth=1, dim=32, heads=2, mlp_ratio=4.0, vocab=64, lengths=[8, 16, 32], batch_sizes=[1, 2]),
    # CPU default: a small LM, ~1 minute on 2 cores
    "cpu": dict(depth=2, dim=128, heads=4, mlp_ratio=4.0, vocab=256, lengths=[64, 128, 256, 512],
                batch_sizes=[1, 8, 32]),
    # Feng 2025 section 4.3: BERT-base-sized causal model on one GPU
    "paper": dict(depth=12, dim=768, heads=12, mlp_ratio=4.0, vocab=30522, lengths=[512, 1024, 2048, 4096, 8192],
                  batch_sizes=[1, 8, 32, 64]),
}


def default_backends() -> List[BackendSpec]:
    """SA (KV cache) and every recurrent backend (registry order; EA-series as EA-2 and EA-6)."""
    labels = ["sa"]
    for n in list_attentions(include_aliases=False):
        if n == "ea_series":
            labels += ["ea2", "ea6"]
        elif n != "sa" and getattr(get_attention_cls(n), "recurrent", False):
            labels.append(n)
    return [common.parse_backend(lab) for lab in labels]


@dataclass
class InferCostConfig(common.ModelRunConfig):
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    preset: str = ""


def build_lm(spec: BackendSpec, cfg: InferCostConfig, max_len: int) -> torch.nn.Module:
    from ea_zoo.models import create_model

    torch.manual_seed(0)
    with torch.device(cfg.device):
        model = create_model("lm", attention=spec.attention, embed_dim=cfg.dim, depth=cfg.depth,
                             num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, vocab_size=cfg.vocab, dropout=0.0,
                             max_len=max_len)
    return model.to(device=cfg.device, dtype=cfg.dtype).eval()


def decode_run(spec: BackendSpec, cfg: InferCostConfig, batch_size: int) -> List[Dict[str, Any]]:
    """Greedy decoding of max(lengths) tokens; one row per checkpoint length."""
    dev = torch.device(cfg.device)
    checkpoints = sorted(set(cfg.lengths))
    n_max = checkpoints[-1]
    model = build_lm(spec, cfg, n_max + 1)
    pbytes = param_bytes(model)
    rows: List[Dict[str, Any]] = []
    times: List[float] = []
    torch.manual_seed(1)
    tok = torch.randint(0, cfg.vocab, (batch_size,), device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        with torch.no_grad(), sdpa_context(spec.sdpa):
            state = model.init_state(batch_size, device=dev, dtype=cfg.dtype)
            for n in range(1, n_max + 1):
                tok, state, seconds = timed_greedy_step(model, tok, state, dev)
                times.append(seconds)
                if n in checkpoints:
                    sbytes = tensor_bytes(state)
                    window = times[-max(1, min(16, n // 4)):]
                    row = {
                        "backend": spec.label, "batch_size": batch_size, "length": n,
                        "param_bytes": pbytes, "state_bytes": sbytes, "memory_bytes": pbytes + sbytes,
                        "state_numel_per_seq": tensor_numel(state) // batch_size,
                        "state_numel_declared": int(model.state_numel(n)),
                        "total_latency_s": float(sum(times)), "token_latency_s": statistics.median(window),
                    }
                    if dev.type == "cuda":
                        row["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated(dev))
                        row["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(dev))
                    rows.append(row)
    except Exception as err:  # noqa: BLE001
        if not is_oom(err):
            raise
        rows.append({"backend": spec.label, "batch_size": batch_size, "length": len(times) + 1, "oom": True})
    finally:
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="tiny (tests), cpu (default on CPU: small LM, ~1 min), paper (BERT-base sizes; default on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index> (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--backends", default=None,
                   help="comma-separated backend specs (default: sa and every recurrent backend, EA-series as ea2, "
                        "ea6); a per-layer label such as ea6+sa@1 is one more backend (its state: all layers')")
    p.add_argument("--lengths", default=None, help="checkpoint lengths (the longest is generated)")
    p.add_argument("--batch-sizes", default=None)
    common.add_model_arguments(p)
    common.add_output_arguments(p, "benchmarks/results/infer_cost_cpu")


def config_from_args(args: argparse.Namespace) -> InferCostConfig:
    """The run's configuration; ValueError (one line) for a bad value, before any work."""
    common.check_device(args.device)
    for opt in ("depth", "dim", "heads", "vocab"):
        common.check_positive(getattr(args, opt), "--" + opt)
    preset, base = common.preset_config(args, PRESETS, dict(
        lengths=common.parse_ints(args.lengths, "--lengths"),
        batch_sizes=common.parse_ints(args.batch_sizes, "--batch-sizes"),
        depth=args.depth, dim=args.dim, heads=args.heads, vocab=args.vocab))
    common.check_heads([base["dim"]], base["heads"])
    return InferCostConfig(**base, device=args.device, dtype=getattr(torch, args.dtype), preset=preset)


def run(args: argparse.Namespace) -> int:
    return common.run_with_threads(args, _run)


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    specs = common.parse_backends(args.backends, default_backends)
    common.check_depth(specs, cfg.depth)
    preset, dev = cfg.preset, torch.device(cfg.device)
    out = report.prepare_out(args.out)
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    rows: List[Dict[str, Any]] = []
    jobs = [(s, b) for s in specs for b in sorted(cfg.batch_sizes)]
    for spec, bs in tqdm(jobs, desc="infer-cost", disable=args.quiet, leave=False, dynamic_ncols=True):
        rows += decode_run(spec, cfg, bs)
    elapsed = time.perf_counter() - t0

    env = report.environment(dev, cfg.dtype)
    labels = [s.label for s in specs]
    Ls = sorted(set(cfg.lengths))
    bss = sorted(cfg.batch_sizes)
    get = {(r["backend"], r["batch_size"], r["length"]): r for r in rows if not r.get("oom")}

    def table(key, fmt):
        h = ["backend", "BS", *[f"L={L}" for L in Ls], "∝ L^a"]
        t = []
        for b in labels:
            for bs in bss:
                vals = [get.get((b, bs, L), {}).get(key) for L in Ls]
                slope = tail_slope(Ls, vals)
                t.append([b, bs, *[fmt(v) for v in vals], "-" if slope is None else f"{slope:.2f}"])
        return h, t

    ms = lambda v: "-" if v is None else f"{1000 * v:.3g}"  # noqa: E731
    tables = [
        ("(a) decoding memory: parameters + state (all layers)", table("memory_bytes", report.fmt_bytes)),
        ("(a) decoding state alone (all layers, whole batch)", table("state_bytes", report.fmt_bytes)),
        ("(b) total latency to generate L tokens (ms)", table("total_latency_s", ms)),
        ("(b) per-token latency at L (ms)", table("token_latency_s", ms)),
    ]
    if dev.type == "cuda":
        tables.insert(2, ("(a) CUDA peak allocated while decoding", table("cuda_peak_bytes", report.fmt_bytes)))
    model_desc = (f"lm (causal): depth {cfg.depth}, D {cfg.dim}, {cfg.heads} heads, FFN {int(cfg.mlp_ratio * cfg.dim)}, "
                  f"vocab {cfg.vocab}, dtype {str(cfg.dtype).replace('torch.', '')}")
    notes = (f"Model: {model_desc}. Greedy decoding from one random token, one `model.step` per token under no_grad. "
             "Memory = parameter bytes + bytes of every tensor in the decoding state after L tokens (SA/EA: K/V "
             "cache growing with L; recurrent backends: fixed). Per-token latency = median of the last steps "
             "before L. The exponent is the log-log slope in L over the upper half of the lengths. "
             "Latencies on a shared CPU are noisy.")
    sections = [(h, report.markdown_table(*t)) for h, t in tables] + [("Notes", notes)]
    title = "ea-zoo infer-cost: Figure 5 of Feng 2025, measured"
    report.write_markdown(out / "infer_cost.md", title, sections, env)
    config = {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in vars(cfg).items()}
    config.update(preset=preset, backends=labels, model=model_desc)
    report.write_json(out / "infer_cost.json", {"tool": "ea-zoo infer-cost", "environment": env, "config": config,
                                                "elapsed_s": elapsed, "results": rows})
    report.write_csv(out / "infer_cost.csv", rows)
    fig = None
    if not args.no_plot:
        from ea_zoo.analysis import plots

        fig = plots.infer_cost_figure([r for r in rows if not r.get("oom")], labels, bss, out)
    print(f"\n{title}  [{env['device_name']}, preset {preset}, {elapsed:.0f} s]\n{model_desc}")
    for h, t in tables:
        print(f"\n{h}")
        print(report.text_table(*t))
    print(f"\nwrote {out / 'infer_cost.json'}, .csv, .md" + (f", {fig.name}" if fig else ""))
    return 0
