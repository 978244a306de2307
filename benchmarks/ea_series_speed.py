"""EA-series on CPU (the PyTorch path) against SDPA: forward + backward time, one run.

The question this answers: where Triton is absent, is the PyTorch EA-series path the fast
path? For each L it times one training step of the attention op alone (forward, then
backward of ``out.sum()``) in float32 at B = 1, D = 256:

* ``sdpa``: ``F.scaled_dot_product_attention`` on (1, 4, L, 64) (4 heads; PyTorch's fused
  CPU kernel, O(L D) memory), causal or not;
* ``ea6`` / ``ea2``: ``ea_zoo.functional.ea_series(..., impl="reference")`` on the same
  (1, 4, L, 64) tensors (every channel is independent, so heads only group channels);
  ``ea6c16``: the same with ``chunk_size=16`` (default 64);
* ``ea``: full EA, ``ea_zoo.functional.ea(..., impl="reference")`` (O(L^2 D));
* ``ea_compiled``: the same full EA with ``impl="compiled"`` (six fused reductions through
  torch.compile; the compile happens in the warm-up call and is not timed).

``--scales 1,4`` repeats every measurement with q and k multiplied by each scale (v stays
N(0, 1)): trained models' q and k reach scales of 10-30, and the causal EA-series path's cost
depends on them (rows whose running minimum of k^2 falls more than tau below their chunk's
scale take the exact pairwise path, see ``ea_zoo.functional.ea_series_chunk``).

It reports the best of ``--repeat`` timed calls after a warm-up, the ratio SDPA time / EA
time measured in the same run, and the issue's targets beside them (causal >= 1.5x at
L = 1024 and >= 10x at L = 16384; non-causal >= 4x and >= 25x). Run it on an otherwise idle
machine. Writes JSON, CSV and markdown into ``benchmarks/results/ea_series_speed_cpu/``.

    python benchmarks/ea_series_speed.py [--lengths 1024,4096,16384] [--threads 1] [--repeat 3]
    python benchmarks/ea_series_speed.py --lengths 6,12,64 --batch 32 --heads 4 --head-dim 16 \
        --out benchmarks/results/ea_series_speed_cpu_short      # the forecasting models' shapes
    python benchmarks/ea_series_speed.py --backends ea,ea_compiled,ea6 --lengths 315,896 --batch 16 \
        --heads 4 --head-dim 16 --out benchmarks/results/ea_compiled_cpu   # UWG / SCP1 models' shapes
    python benchmarks/ea_series_speed.py --backends ea6,ea6c16,ea8,ea8c16 --lengths 64,1024 --batch 64 --heads 1 \
        --head-dim 128 --scales 1,2,4 --out benchmarks/results/ea_series_speed_cpu_scale   # MQAR width 128
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from ea_zoo.analysis import report
from ea_zoo.analysis.speed import cpu_threads, time_call
from ea_zoo.functional import ea, ea_series

TARGETS = {(True, 1024): 1.5, (True, 16384): 10.0, (False, 1024): 4.0, (False, 16384): 25.0}
HEADS, HEAD_DIM = 4, 64


def _step(kind: str, causal: bool, L: int, seed: int = 0, batch: int = 1, heads: int = HEADS,
          head_dim: int = HEAD_DIM, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, L, head_dim, generator=g) for _ in range(3))
    q, k = q * scale, k * scale
    for t in (q, k, v):
        t.requires_grad_()

    def run():
        if kind == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        elif kind in ("ea", "ea_compiled"):
            out = ea(q, k, v, causal=causal, impl="reference" if kind == "ea" else "compiled")
        else:
            order, _, chunk = kind[2:].partition("c")  # eaT, or eaTcC: chunk_size C of the causal path
            out = ea_series(q, k, v, order=int(order), causal=causal, impl="reference",
                            **({"chunk_size": int(chunk)} if chunk else {}))
        out.sum().backward()
        for t in (q, k, v):
            t.grad = None

    return run


def measure(lengths: List[int], kinds: List[str], repeat: int, batch: int = 1, heads: int = HEADS,
            head_dim: int = HEAD_DIM, scales: Sequence[float] = (1.0,)) -> List[Dict]:
    """Best of ``repeat`` timed calls per backend after one warm-up each; the backends take
    turns (sdpa, ea6, ea2, sdpa, ...) so a slow spell of the machine hits all of them."""
    rows = []
    for causal, scale, L in ((c, s, L) for c in (True, False) for s in scales for L in lengths):
        steps = {kind: _step(kind, causal, L, batch=batch, heads=heads, head_dim=head_dim, scale=scale)
                 for kind in kinds}
        for fn in steps.values():
            fn()  # warm-up
        best = {kind: float("inf") for kind in kinds}
        for _ in range(repeat if L <= 4096 else max(1, repeat // 2)):
            for kind, fn in steps.items():
                best[kind] = min(best[kind], time_call(fn, warmup=0, repeat=1)["min"])
        times = best
        for kind in kinds:
            print(f"causal={causal} scale={scale:g} L={L} {kind}: {times[kind] * 1e3:.1f} ms", file=sys.stderr,
                  flush=True)
        for kind in kinds:
            if kind == "sdpa":
                continue
            ratio = times["sdpa"] / times[kind]
            at_issue_shape = (batch, heads, head_dim, scale) == (1, HEADS, HEAD_DIM, 1.0)  # the targets' setting
            target = TARGETS.get((causal, L)) if kind == "ea6" and at_issue_shape else None
            rows.append({"causal": causal, "scale": scale, "L": L, "backend": kind, "seconds": times[kind],
                         "sdpa_seconds": times["sdpa"], "speedup_vs_sdpa": ratio, "target": target,
                         "meets_target": None if target is None else ratio >= target})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    p.add_argument("--backends", default="ea6,ea2", help="EA-series orders to time beside sdpa (eaT), ea (full EA, eq. 2) or "
                   "ea_compiled (full EA with impl='compiled')")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--repeat", type=int, default=7, help="timed calls per backend (half of it above L = 4096)")
    p.add_argument("--batch", type=int, default=1, help="batch size B (default 1)")
    p.add_argument("--heads", type=int, default=HEADS, help=f"heads H (default {HEADS})")
    p.add_argument("--head-dim", type=int, default=HEAD_DIM, help=f"head width d (default {HEAD_DIM})")
    p.add_argument("--scales", default="1", help="comma-separated factors of q and k (default 1)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "ea_series_speed_cpu"))
    a = p.parse_args(argv)
    lengths = [int(x) for x in a.lengths.split(",")]
    try:
        scales = [float(x) for x in a.scales.split(",")]
    except ValueError:
        p.error(f"--scales: comma-separated positive numbers, got {a.scales!r}")
    if not scales or any(not s > 0 for s in scales):
        p.error(f"--scales: comma-separated positive numbers, got {a.scales!r}")
    kinds = ["sdpa"] + [b.strip() for b in a.backends.split(",") if b.strip()]
    with cpu_threads(a.threads if a.threads > 0 else None):
        env = report.environment("cpu", torch.float32, batch=a.batch, dim=a.heads * a.head_dim, heads=a.heads,
                                 measured="forward + backward of out.sum(); best of %d interleaved calls (half above "
                                          "L = 4096) after 1 warm-up" % a.repeat)
        rows = measure(lengths, kinds, a.repeat, a.batch, a.heads, a.head_dim, scales)
    out = report.prepare_out(a.out)
    report.write_json(out / "results.json", {"env": env, "rows": rows})
    report.write_csv(out / "results.csv", rows)
    table = report.markdown_table(
        ["form", "q, k scale", "L", "backend", "time (ms)", "SDPA (ms)", "SDPA / EA", "target"],
        [["causal" if r["causal"] else "non-causal", f"{r['scale']:g}", r["L"], r["backend"], f"{r['seconds'] * 1e3:.1f}",
          f"{r['sdpa_seconds'] * 1e3:.1f}", f"{r['speedup_vs_sdpa']:.2f}x",
          "" if r["target"] is None else f">= {r['target']}x {'✓' if r['meets_target'] else '✗'}"] for r in rows])
    notes = (f"B = {a.batch}, D = {a.heads * a.head_dim} ({a.heads} heads of {a.head_dim} for SDPA), float32, {env['torch_threads']} "
             "torch thread(s); forward + backward of `out.sum()` of the attention op alone, best of "
             f"{a.repeat} calls ({max(1, a.repeat // 2)} above L = 4096) after one warm-up, the backends taking "
             "turns; SDPA and EA-series timed in the same run.")
    report.write_markdown(out / "results.md", "EA-series (PyTorch path) vs SDPA on CPU, forward + backward",
                          [("Time and ratio", table), ("Setup", notes)], env)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
