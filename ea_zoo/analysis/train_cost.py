"""``ea-zoo train-cost``: Figure 4 of Feng 2025 (training cost of a BERT-base encoder).

The model is ``ea_zoo.create_model("bert_base", attention=<backend>)``: 12 post-LN layers,
D 768, 12 heads, FFN 3072, learned positions (built with ``max_len = L`` for each L), trained
with AdamW on a loss over the encoder's hidden states (no MLM head: its L x 30522 logits would
cost every backend the same and hide the attention's share). Per backend:

* (a) peak training memory of one step vs L at batch size 1;
* (b) the BS-L curve: for each batch size, the largest L (a multiple of ``--l-step``) whose
  training step fits the memory budget, found by doubling then bisection; drawn with
  constant-token hyperbolas BS x L = const;
* (c) training throughput (tokens/s = BS x L / step time) at each point of that curve.

Memory of a step: on CUDA, ``torch.cuda.max_memory_allocated`` over a full step (forward,
backward, AdamW update; after a warm-up step so the optimizer state exists), an OOM counting
as "does not fit"; the budget defaults to the device's memory. On CPU (no allocator
statistics): parameters + AdamW state (3 x parameter bytes) + the peak of live tensors over
forward + backward (:func:`ea_zoo.analysis.memory.peak_live_bytes`, gradients included);
the budget is ``--budget-mib``.

Mixed precision on GPU (``--amp bf16`` by default; fp16 with a GradScaler); fp32 on CPU.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ea_zoo.analysis import common, report
from ea_zoo.analysis.common import BackendSpec, sdpa_context
from ea_zoo.analysis.fit import tail_slope
from ea_zoo.analysis.memory import is_oom, param_bytes, peak_live_bytes
from ea_zoo.analysis.speed import time_call

__all__ = ["PRESETS", "TrainCostConfig", "step_memory", "largest_length", "add_arguments", "run"]

PRESETS: Dict[str, Dict[str, Any]] = {
    # seconds: tests
    "tiny": dict(depth=1, dim=32, heads=2, mlp_ratio=4.0, vocab=128, lengths=[32, 64, 128],
                 batch_sizes=[1, 2, 4], budget_mib=4.0, l_step=16, max_length=1024, warmup=0, repeat=1),
    # the CPU default: ~1-2 minutes on 2 cores
    "cpu": dict(depth=2, dim=64, heads=4, mlp_ratio=4.0, vocab=1024, lengths=[128, 256, 512, 1024, 2048],
                batch_sizes=[1, 2, 4, 8, 16], budget_mib=32.0, l_step=32, max_length=8192, warmup=1, repeat=3),
    # Feng 2025 section 4.2: BERT-base on one GPU (budget: the device's memory)
    "paper": dict(depth=12, dim=768, heads=12, mlp_ratio=4.0, vocab=30522,
                  lengths=[256, 512, 1024, 2048, 4096, 8192, 16384], batch_sizes=[1, 2, 4, 8, 16, 32, 64],
                  budget_mib=None, l_step=256, max_length=131072, warmup=2, repeat=5),
}

DEFAULT_BACKENDS = "sa,sa[math],ea2,ea6"


@dataclass
class TrainCostConfig(common.ModelRunConfig):
    budget_mib: Optional[float]
    l_step: int
    max_length: int
    warmup: int
    repeat: int
    device: str = "cpu"
    amp: Optional[str] = None  # None, "bf16", "fp16"
    dropout: float = 0.1
    curve: bool = True
    preset: str = ""


# ---------------------------------------------------------------------------- one step


class _Trainer:
    """A BERT encoder of one backend at one max length, with AdamW; ``step(B, L)`` trains once."""

    def __init__(self, spec: BackendSpec, cfg: TrainCostConfig, max_len: int) -> None:
        from ea_zoo.models import create_model

        self.spec, self.cfg = spec, cfg
        self.device = torch.device(cfg.device)
        torch.manual_seed(0)
        with torch.device(self.device):  # parameters are created (and initialised) on the device
            self.model = create_model(
                "bert_base", attention=spec.attention, depth=cfg.depth, embed_dim=cfg.dim, num_heads=cfg.heads,
                mlp_ratio=cfg.mlp_ratio, vocab_size=cfg.vocab, max_len=max_len, dropout=cfg.dropout,
            ).to(self.device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp or "")
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def batch(self, B: int, L: int) -> torch.Tensor:
        return torch.randint(0, self.cfg.vocab, (B, L), device=self.device)

    def forward_backward(self, ids: torch.Tensor) -> None:
        ctx = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else torch.autocast(self.device.type, enabled=False))
        with sdpa_context(self.spec.sdpa), ctx:
            h = self.model(ids)
            loss = h.float().square().mean()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self, ids: torch.Tensor) -> None:
        self.forward_backward(ids)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def static_bytes(self) -> int:
        """Parameters + AdamW's two moments (what a step holds besides activations/grads)."""
        return 3 * param_bytes(self.model)

    def close(self) -> None:
        del self.model, self.opt
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def step_memory(spec: BackendSpec, cfg: TrainCostConfig, B: int, L: int) -> Dict[str, Any]:
    """Memory of one training step at (B, L): ``memory_bytes`` (None on OOM) and parts."""
    dev = torch.device(cfg.device)
    tr = None
    try:
        tr = _Trainer(spec, cfg, L)
        ids = tr.batch(B, L)
        if dev.type == "cuda":
            tr.step(ids)  # warm-up: creates the optimizer state
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            tr.step(ids)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev)
            return {"memory_bytes": int(peak), "static_bytes": tr.static_bytes(), "activation_bytes": None,
                    "measure": "cuda max_memory_allocated"}

        def fwd_bwd():
            tr.forward_backward(ids)
            tr.opt.zero_grad(set_to_none=True)

        act = peak_live_bytes(fwd_bwd)
        static = tr.static_bytes()
        return {"memory_bytes": int(static + act), "static_bytes": static, "activation_bytes": int(act),
                "measure": "params + AdamW state + peak live tensors (fwd+bwd)"}
    except Exception as err:  # noqa: BLE001
        if is_oom(err):
            return {"memory_bytes": None, "oom": True}
        raise
    finally:
        if tr is not None:
            tr.close()


def step_throughput(spec: BackendSpec, cfg: TrainCostConfig, B: int, L: int) -> Dict[str, Any]:
    """Seconds per training step and tokens/s at (B, L)."""
    tr = _Trainer(spec, cfg, L)
    try:
        ids = tr.batch(B, L)
        t = time_call(lambda: tr.step(ids), cfg.device, max(1, cfg.warmup), cfg.repeat)["min"]
        return {"step_s": t, "tokens_per_s": B * L / t}
    except Exception as err:  # noqa: BLE001
        if is_oom(err):
            return {"step_s": None, "tokens_per_s": None, "oom": True}
        raise
    finally:
        tr.close()


def largest_length(fits: Callable[[int], bool], l_step: int, max_length: int,
                   upper: Optional[int] = None, guess: Optional[int] = None) -> Optional[int]:
    """Largest multiple of ``l_step`` in [l_step, max_length] with ``fits(L)`` (assumed
    monotone: fits for every shorter L); None when even ``l_step`` does not fit.

    Starts at ``guess`` (default ``l_step``), doubles (or halves) until the answer is
    bracketed, then bisects. ``upper``: a length known not to fit (e.g. the answer for a
    smaller batch plus one step) bounds the search.
    """
    cap = max_length if upper is None else min(max_length, upper - l_step)
    cap = cap // l_step * l_step
    if cap < l_step:
        return None
    g = max(l_step, min(cap, (guess or l_step) // l_step * l_step))
    lo: Optional[int] = None  # fits
    hi: Optional[int] = None  # does not fit
    if fits(g):
        lo = g
        while hi is None:
            nxt = min(lo * 2, cap)
            if nxt <= lo:
                return lo
            if fits(nxt):
                lo = nxt
            else:
                hi = nxt
    else:
        hi = g
        while lo is None:
            nxt = max(l_step, hi // 2 // l_step * l_step)
            if nxt >= hi:
                return None
            if fits(nxt):
                lo = nxt
            else:
                hi = nxt
    while hi - lo > l_step:
        mid = (lo + hi) // 2 // l_step * l_step
        if mid <= lo:
            break
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------------------- the tool


def _progress(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True)


def measure(specs: Sequence[BackendSpec], cfg: TrainCostConfig, budget_bytes: float, quiet: bool = False):
    """(a) memory rows, (b)+(c) curve rows."""
    mem_rows: List[Dict[str, Any]] = []
    curve_rows: List[Dict[str, Any]] = []
    n = len(specs) * (len(cfg.lengths) + (len(cfg.batch_sizes) if cfg.curve else 0))
    bar = _progress(n, "train-cost", quiet)
    for spec in specs:
        stop = None
        for L in cfg.lengths:  # (a)
            bar.set_postfix_str(f"{spec.label} memory L={L}")
            if stop:
                mem_rows.append({"backend": spec.label, "L": L, "batch_size": 1, "memory_bytes": None, "skipped": stop})
            else:
                r = step_memory(spec, cfg, 1, L)
                mem_rows.append({"backend": spec.label, "L": L, "batch_size": 1, **r})
                if r.get("memory_bytes") is None:
                    stop = "oom"
            bar.update(1)
        if not cfg.curve:
            continue
        # (a) already tells which lengths fit at batch size 1
        cache: Dict[tuple, bool] = {(1, r["L"]): r["memory_bytes"] <= budget_bytes for r in mem_rows
                                    if r["backend"] == spec.label and r.get("memory_bytes") is not None}
        upper = None
        guess = max([L for (b, L), ok in cache.items() if ok], default=None)
        prev_tokens = None
        for B in sorted(cfg.batch_sizes):  # (b) and (c)
            bar.set_postfix_str(f"{spec.label} BS-L curve BS={B}")

            def fits(L: int, B=B) -> bool:
                if (B, L) not in cache:
                    r = step_memory(spec, cfg, B, L)
                    cache[(B, L)] = r.get("memory_bytes") is not None and r["memory_bytes"] <= budget_bytes
                return cache[(B, L)]

            if prev_tokens is not None:
                guess = prev_tokens // B  # the constant-token hyperbola through the previous point
            max_L = largest_length(fits, cfg.l_step, cfg.max_length, upper, guess)
            row: Dict[str, Any] = {"backend": spec.label, "batch_size": B, "max_L": max_L,
                                   "tokens_per_step": None if max_L is None else B * max_L,
                                   "probes": sum(1 for k in cache if k[0] == B)}
            if max_L is not None:
                row.update(step_throughput(spec, cfg, B, max_L))
                upper = max_L + cfg.l_step
                prev_tokens = B * max_L
            curve_rows.append(row)
            bar.update(1)
    bar.close()
    return mem_rows, curve_rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="tiny (tests), cpu (default on CPU: small model, ~1-2 min), paper (BERT-base; default on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index> (default cpu)")
    p.add_argument("--backends", default=DEFAULT_BACKENDS,
                   help=f"comma-separated backend specs (default {DEFAULT_BACKENDS}; name[math] forces SDPA's math "
                        "kernel; a per-layer label such as ea6+sa@1 is one more backend)")
    p.add_argument("--lengths", default=None, help="(a) sequence lengths at batch size 1")
    p.add_argument("--batch-sizes", default=None, help="(b) batch sizes of the BS-L curve")
    p.add_argument("--budget-mib", type=float, default=None,
                   help="memory budget of the BS-L curve in MiB (default: the GPU's memory; CPU preset: 32)")
    p.add_argument("--l-step", type=int, default=None, help="BS-L curve: L is searched in multiples of this")
    p.add_argument("--max-length", type=int, default=None, help="BS-L curve: longest L tried")
    common.add_model_arguments(p)
    p.add_argument("--amp", choices=["bf16", "fp16", "none"], default=None,
                   help="mixed precision (default bf16 on CUDA, none on CPU)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--no-curve", action="store_true", help="only (a), skip the BS-L curve and throughput")
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    common.add_output_arguments(p, "benchmarks/results/train_cost_cpu")


def config_from_args(args: argparse.Namespace) -> TrainCostConfig:
    """The run's configuration; ValueError (one line) for a bad value, before any work."""
    dev = common.check_device(args.device)
    for opt in ("l_step", "max_length", "depth", "dim", "heads", "vocab", "repeat"):
        common.check_positive(getattr(args, opt), "--" + opt.replace("_", "-"))
    preset, base = common.preset_config(args, PRESETS, dict(
        lengths=common.parse_ints(args.lengths, "--lengths"),
        batch_sizes=common.parse_ints(args.batch_sizes, "--batch-sizes"),
        budget_mib=args.budget_mib, l_step=args.l_step, max_length=args.max_length, depth=args.depth, dim=args.dim,
        heads=args.heads, vocab=args.vocab, repeat=args.repeat, warmup=args.warmup))
    common.check_heads([base["dim"]], base["heads"])
    if base["budget_mib"] is None and dev.type != "cuda":
        raise ValueError(f"--budget-mib: give the memory budget on {dev.type} (e.g. --budget-mib 64)")
    amp = args.amp if args.amp is not None else ("bf16" if dev.type == "cuda" else "none")
    return TrainCostConfig(**base, device=args.device, amp=None if amp == "none" else amp, dropout=args.dropout,
                           curve=not args.no_curve, preset=preset)


def run(args: argparse.Namespace) -> int:
    return common.run_with_threads(args, _run)


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    specs = common.parse_backends(args.backends, lambda: common.parse_backends(DEFAULT_BACKENDS, list))
    common.check_depth(specs, cfg.depth)
    preset, dev = cfg.preset, torch.device(cfg.device)
    if cfg.budget_mib is not None:
        budget = cfg.budget_mib * 2**20
    else:
        budget = float(torch.cuda.get_device_properties(dev).total_memory)
    out = report.prepare_out(args.out)
    t0 = time.perf_counter()
    mem_rows, curve_rows = measure(specs, cfg, budget, args.quiet)
    elapsed = time.perf_counter() - t0

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp or "", torch.float32)
    env = report.environment(dev, dtype, amp=cfg.amp)
    measure_name = mem_rows[0].get("measure", "memory") if mem_rows else "memory"
    labels = [s.label for s in specs]

    # (a) table: memory (MiB) per backend and L, with the fitted exponent
    ha = ["backend", *[f"L={L}" for L in cfg.lengths], "∝ L^a (upper half)"]
    ta = []
    for b in labels:
        vals = {r["L"]: r.get("memory_bytes") for r in mem_rows if r["backend"] == b}
        acts = {r["L"]: r.get("activation_bytes") or r.get("memory_bytes") for r in mem_rows if r["backend"] == b}
        slope = tail_slope(list(acts), list(acts.values()))
        ta.append([b, *[report.fmt_bytes(vals.get(L)) for L in cfg.lengths],
                   "-" if slope is None else f"{slope:.2f}"])
    # (b)+(c) table
    hb = ["backend", *[f"BS={B}" for B in sorted(cfg.batch_sizes)]]
    tb_len, tb_tok, tb_thr = [], [], []
    for b in labels:
        rows = {r["batch_size"]: r for r in curve_rows if r["backend"] == b}
        tb_len.append([b, *[str(rows.get(B, {}).get("max_L") or "-") for B in sorted(cfg.batch_sizes)]])
        tb_tok.append([b, *[report.fmt_num(rows.get(B, {}).get("tokens_per_step")) for B in sorted(cfg.batch_sizes)]])
        tb_thr.append([b, *[report.fmt_num(rows.get(B, {}).get("tokens_per_s")) for B in sorted(cfg.batch_sizes)]])

    model_desc = (f"bert_base encoder: depth {cfg.depth}, D {cfg.dim}, {cfg.heads} heads, FFN {int(cfg.mlp_ratio * cfg.dim)}, "
                  f"vocab {cfg.vocab}, post-LN, dropout {cfg.dropout}, AdamW, amp {cfg.amp or 'none'}")
    notes = (f"Model: {model_desc}. Memory = {measure_name}. Budget {budget / 2**20:.0f} MiB; L searched in "
             f"multiples of {cfg.l_step} up to {cfg.max_length}. The (a) exponent is fitted on the activation part "
             "(CPU) / the whole peak (CUDA) over the upper half of the lengths. Throughput uses the best of "
             f"{cfg.repeat} timed steps after {max(1, cfg.warmup)} warm-up step(s) (a shared CPU makes it noisy).")
    sections = [("(a) peak training memory at batch size 1", report.markdown_table(ha, ta))]
    if cfg.curve:
        sections += [("(b) BS-L curve: largest L that fits the budget", report.markdown_table(hb, tb_len)),
                     ("(b) tokens per step (BS x L) along the curve", report.markdown_table(hb, tb_tok)),
                     ("(c) training throughput along the curve (tokens/s)", report.markdown_table(hb, tb_thr))]
    sections.append(("Notes", notes))
    title = "ea-zoo train-cost: Figure 4 of Feng 2025, measured"
    report.write_markdown(out / "train_cost.md", title, sections, env)
    config = {k: v for k, v in vars(cfg).items()}
    config.update(preset=preset, backends=labels, budget_bytes=budget, model=model_desc)
    report.write_json(out / "train_cost.json", {"tool": "ea-zoo train-cost", "environment": env, "config": config,
                                                "elapsed_s": elapsed, "memory": mem_rows, "bs_l_curve": curve_rows})
    report.write_csv(out / "train_cost.csv", [{"part": "a", **r} for r in mem_rows]
                     + [{"part": "bc", **r} for r in curve_rows])
    fig = None
    if not args.no_plot:
        from ea_zoo.analysis import plots

        fig = plots.train_cost_figure(mem_rows, curve_rows, labels, out, budget, "memory")

    print(f"\n{title}  [{env['device_name']}, preset {preset}, {elapsed:.0f} s]\n{model_desc}\n")
    print("(a) peak training memory at batch size 1")
    print(report.text_table(ha, ta))
    if cfg.curve:
        print(f"\n(b) BS-L curve: largest L within {budget / 2**20:.0f} MiB")
        print(report.text_table(hb, tb_len))
        print("\n(b) tokens per step (BS x L)")
        print(report.text_table(hb, tb_tok))
        print("\n(c) throughput (tokens/s)")
        print(report.text_table(hb, tb_thr))
    print(f"\nwrote {out / 'train_cost.json'}, .csv, .md" + (f", {fig.name}" if fig else ""))
    return 0
