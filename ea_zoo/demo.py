"""``ea-zoo demo`` (``make demo``): the main job on built-in defaults, CPU only, no data.

1. A check of every registered backend (aliases included): forward and backward at a few
   lengths in float32, each compared with a float64 run of the same module (same weights):
   max abs error of the outputs (non-causal and causal) and of the input gradient, and the
   float32 forward+backward time.
2. ``ea-zoo complexity`` at its CPU defaults: Table 1 of Feng 2025 measured (FLOPs,
   activation memory, decoding state, time vs L, D and the EA-series order t), written to
   ``<out>/complexity/``.

Under 3 minutes on 2 CPU cores. Writes ``<out>/demo.md``, ``<out>/demo.json`` and the
complexity outputs; ``--out`` defaults to ``runs/demo`` (not ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import copy
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

__all__ = ["accuracy_table", "add_arguments", "run"]


def _build(spec: Any, dim: int, heads: int, causal: bool, max_len: int):
    from ea_zoo.registry import parse_attention

    torch.manual_seed(0)  # a length option (AFT's max_len) is the length checked
    return parse_attention(spec).with_length(max_len).build(dim, heads, causal=causal).eval()


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def check_backend(name: Any, length: int, dim: int = 64, heads: int = 4, batch: int = 2) -> Dict[str, Any]:
    """float32 vs float64 of one backend at one length: output and input-gradient errors."""
    m32 = _build(name, dim, heads, False, length)
    m64 = copy.deepcopy(m32).double()
    torch.manual_seed(1)
    x64 = torch.randn(batch, length, dim, dtype=torch.float64)
    g64 = torch.randn(batch, length, dim, dtype=torch.float64)
    x32 = x64.float().requires_grad_(True)
    x64 = x64.clone().requires_grad_(True)

    t0 = time.perf_counter()
    y32 = m32(x32)
    y32.backward(g64.float())
    t_fb = time.perf_counter() - t0
    y64 = m64(x64)
    y64.backward(g64)
    with torch.no_grad():
        yc32 = m32(x32.detach(), is_causal=True)
        yc64 = m64(x64.detach(), is_causal=True)
    scale = float(y64.detach().abs().max())
    return {
        "backend": str(name), "L": length, "D": dim, "H": heads, "B": batch,
        "out_err": _max_abs(y32.detach(), y64.detach()),
        "out_rel_err": _max_abs(y32.detach(), y64.detach()) / max(scale, 1e-30),
        "causal_out_err": _max_abs(yc32, yc64),
        "grad_err": _max_abs(x32.grad, x64.grad),
        "finite": bool(torch.isfinite(y32).all() and torch.isfinite(x32.grad).all()),
        "fwd_bwd_ms": 1000 * t_fb,
        "recurrent": bool(getattr(m32, "recurrent", False)),
        "supports_step": bool(getattr(m32, "supports_step", False)),
    }


def accuracy_table(lengths: Sequence[int], dim: int = 64, heads: int = 4, batch: int = 2,
                   names: Optional[Sequence[str]] = None, quiet: bool = False) -> List[Dict[str, Any]]:
    """:func:`check_backend` for every registered backend (aliases included) and length."""
    from tqdm.auto import tqdm

    from ea_zoo.registry import list_attentions, parse_attention

    specs = [parse_attention(n) for n in (names or list_attentions())]
    jobs = [(s, L) for s in specs for L in lengths]
    rows = []
    for s, L in tqdm(jobs, desc="backends fp32 vs fp64", disable=quiet, leave=False, dynamic_ncols=True):
        rows.append(check_backend(s, L, dim, heads, batch))
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--preset", choices=["cpu", "tiny"], default="cpu",
                   help="cpu (default, < 3 min on 2 cores) or tiny (seconds; for tests)")
    p.add_argument("--lengths", default=None, help="lengths of the fp32-vs-fp64 table (default 16,128,512)")
    p.add_argument("--skip-complexity", action="store_true", help="only the backend table")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 = torch's default)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ea_zoo.analysis import complexity, report
    from ea_zoo.analysis.common import parse_ints
    from ea_zoo.analysis.speed import cpu_threads

    out = report.prepare_out(args.out)
    tiny = args.preset == "tiny"
    lengths = parse_ints(args.lengths, "--lengths") or ([8, 16] if tiny else [16, 128, 512])
    dim, heads = (16, 2) if tiny else (64, 4)
    t0 = time.perf_counter()
    with cpu_threads(args.threads):
        rows = accuracy_table(lengths, dim, heads, quiet=args.quiet)
    t_table = time.perf_counter() - t0

    e = lambda v: f"{v:.1e}"  # noqa: E731
    headers = ["backend", "L", "max|y32-y64|", "rel.", "causal max|y32-y64|", "max|dx32-dx64|", "finite",
               "fwd+bwd ms (fp32)", "recurrent"]
    trows = [[r["backend"], r["L"], e(r["out_err"]), e(r["out_rel_err"]), e(r["causal_out_err"]), e(r["grad_err"]),
              "yes" if r["finite"] else "NO", f"{r['fwd_bwd_ms']:.1f}", "yes" if r["recurrent"] else "no"]
             for r in rows]
    title = f"every registered backend, float32 vs float64 (same weights; B=2, D={dim}, H={heads}, CPU)"
    print(f"\nea-zoo demo: {title}\n")
    print(report.text_table(headers, trows))
    env = report.environment("cpu", torch.float32)
    sections = [(title, report.markdown_table(headers, trows))]

    cx_out = out / "complexity"
    if not args.skip_complexity:
        print(f"\nea-zoo demo: measuring Table 1 (ea-zoo complexity, CPU defaults) into {cx_out} ...")
        p = argparse.ArgumentParser()
        complexity.add_arguments(p)
        cx_args = ["--out", str(cx_out), "--threads", str(args.threads)]
        if tiny:
            cx_args += ["--preset", "tiny"]
        if args.quiet:
            cx_args += ["--quiet"]
        rc = complexity.run(p.parse_args(cx_args))
        if rc:
            return rc
        parts = (cx_out / "complexity.md").read_text().split("\n## ")
        if len(parts) > 1:  # the first section: the measured exponents beside Table 1
            sections.append(("Table 1 measured (complexity/complexity.md has the rest)", parts[1].split("\n", 1)[-1]))
    report.write_markdown(out / "demo.md", "ea-zoo demo", sections, env)
    report.write_json(out / "demo.json", {"tool": "ea-zoo demo", "environment": env, "backend_check": rows,
                                          "backend_check_s": t_table, "complexity_out": str(cx_out),
                                          "elapsed_s": time.perf_counter() - t0})
    bad = [r["backend"] for r in rows if not r["finite"]]
    if bad:
        print(f"WARNING: non-finite outputs or gradients: {', '.join(sorted(set(bad)))}")
    print(f"\nea-zoo demo: wrote {out / 'demo.md'}, {out / 'demo.json'}"
          + ("" if args.skip_complexity else f" and {cx_out}/") + f" in {time.perf_counter() - t0:.0f} s")
    return 0
