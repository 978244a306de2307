"""Triton kernels vs the PyTorch reference, SDPA and fla's linear attention: check, then time.

One run, side by side, on one GPU:

* correctness first, at a small size: each kernel (EA-series orders 2 and 6, causal and
  non-causal, with a padding mask; full EA; the decode step) against the float64 reference,
  output and dq, dk, dv (max relative error);
* EA-series at D = 768 (12 heads of 64) and B * L = 65536 tokens, L in {1k, 4k, 16k, 64k},
  causal and non-causal, orders 2 and 6, bf16 inputs: forward ms, forward+backward ms, peak
  memory above the inputs, and the effective bandwidth over the bytes of q, k, v, o
  (forward) or q, k, v, o, do, dq, dk, dv (forward+backward) against a device copy
  bandwidth measured in the same run. Columns: ``reference`` (PyTorch, impl="reference"),
  ``triton`` (the kernels), ``sdpa`` (torch's scaled_dot_product_attention, softmax
  attention with 12 heads of 64: the usual baseline) and ``fla_linear`` (flash-linear-
  attention's ``chunk_linear_attn``, causal only, normalize=False: a kernel of the same
  linear-time class) when ``fla`` imports; otherwise that column is skipped with a note;
* full EA at B = 1, L = 16384, D = 768, forward+backward: kernel vs reference (and SDPA).

Writes ``kernels.json`` and ``kernels.md`` into ``benchmarks/results/kernels_<gpu-name>/``
with the device, versions and date.

    python benchmarks/kernels.py                 # the GPU run (about 10 minutes on an H100)
    python benchmarks/kernels.py --smoke         # tiny shapes; on CPU through TRITON_INTERPRET=1

``--smoke`` only proves the script runs end to end (its timings mean nothing); without
``--out`` it writes to a temporary directory.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

if "--smoke" in sys.argv:
    try:  # must precede the first kernel launch; harmless where CUDA exists (we then stay on CPU)
        import torch as _t

        if not _t.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
    except Exception:  # pragma: no cover
        pass

import torch
import torch.nn.functional as F

from ea_zoo.functional import ea, ea_series, ea_series_init_state, ea_series_step

ROOT = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------
# measurement helpers
# ----------------------------------------------------------------------------------------


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timeit(fn, dev, warmup, reps):
    """Median wall time of fn() in ms (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def peak_extra_mb(fn, dev):
    """Peak memory allocated during fn() above what was allocated before (MiB); None on CPU."""
    if dev.type != "cuda":
        fn()
        return None
    sync(dev)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    sync(dev)
    return (torch.cuda.max_memory_allocated(dev) - base) / 2**20


def copy_bandwidth_gbs(dev, nbytes, warmup, reps):
    """Device-to-device copy: (read + write) bytes / time, GB/s."""
    n = max(1, nbytes // 4)
    src = torch.empty(n, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    ms = timeit(lambda: dst.copy_(src), dev, warmup, reps)
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def is_oom(e):
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def measure(make_fwd, tensors, dev, warmup, reps, fwd_bytes, fb_bytes, grad_out=None):
    """Forward and forward+backward time, peak extra memory and effective bandwidth."""
    row = {}
    try:
        with torch.no_grad():
            ms = timeit(make_fwd, dev, warmup, reps)
            row["fwd_ms"] = ms
            row["fwd_peak_mib"] = peak_extra_mb(make_fwd, dev)
        row["fwd_gbs"] = fwd_bytes / (ms * 1e-3) / 1e9

        def fb():
            for t in tensors:
                t.grad = None
            y = make_fwd()
            y.backward(grad_out if grad_out is not None else torch.ones_like(y))

        ms = timeit(fb, dev, warmup, reps)
        row["fwdbwd_ms"] = ms
        row["fwdbwd_peak_mib"] = peak_extra_mb(fb, dev)
        row["fwdbwd_gbs"] = fb_bytes / (ms * 1e-3) / 1e9
    except Exception as e:  # OOM or an unavailable path: record, do not abort the run
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        row = {"error": ("OOM" if is_oom(e) else f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")}
    for t in tensors:
        t.grad = None
    return row


def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


# ----------------------------------------------------------------------------------------
# correctness
# ----------------------------------------------------------------------------------------


def check_correctness(dev, small):
    B, L, D = small
    torch.manual_seed(0)
    out = []
    mask = torch.ones(B, L, dtype=torch.bool, device=dev)
    mask[-1, : max(1, L // 10)] = False
    mask[-1, -max(1, L // 7):] = False

    def grads(fn, xs, g):
        xs = [x.detach().clone().requires_grad_() for x in xs]
        y = fn(*xs)
        return (y, *torch.autograd.grad(y, xs, g.to(y.dtype)))

    cases = []
    for order in (2, 6):
        for causal in (False, True):
            cases.append((f"ea_series order={order} causal={causal}",
                          lambda q, k, v, o=order, c=causal, impl="triton": ea_series(
                              q, k, v, order=o, causal=c, key_padding_mask=mask, impl=impl), 0.7))
    for causal in (False, True):
        cases.append((f"ea (full) causal={causal}",
                      lambda q, k, v, c=causal, impl="triton": ea(q, k, v, causal=c, key_padding_mask=mask, impl=impl),
                      1.0))
    for name, fn, scale in cases:
        q, k, v = (torch.randn(B, L, D, device=dev) * scale for _ in range(3))
        g = torch.randn(B, L, D, device=dev, dtype=torch.float64)
        got = grads(lambda a, b, c: fn(a, b, c, impl="triton"), (q, k, v), g)
        want = grads(lambda a, b, c: fn(a, b, c, impl="reference"), [t.double() for t in (q, k, v)], g)
        errs = {n: rel_err(a, b) for n, a, b in zip(("y", "dq", "dk", "dv"), got, want)}
        out.append({"case": name, "shape": [B, L, D], "dtype": "float32", **errs,
                    "ok": all(e < 1e-4 for e in errs.values())})
    # decode step vs the reference step
    st_k = ea_series_init_state((B, D), 6, device=dev)
    st_r = ea_series_init_state((B, D), 6, device=dev, dtype=torch.float64)
    worst = 0.0
    with torch.no_grad():
        for _ in range(min(L, 64)):
            q, k, v = (torch.randn(B, D, device=dev) * 0.7 for _ in range(3))
            yk, st_k = ea_series_step(q, k, v, st_k, order=6, impl="triton")
            yr, st_r = ea_series_step(q.double(), k.double(), v.double(), st_r, order=6, impl="reference")
            worst = max(worst, rel_err(yk, yr))
    out.append({"case": "ea_series_step order=6 (decode)", "shape": [B, D], "dtype": "float32", "y": worst,
                "ok": worst < 1e-4})
    return out


# ----------------------------------------------------------------------------------------
# benchmarks
# ----------------------------------------------------------------------------------------


def load_fla():
    try:
        from fla.ops.linear_attn import chunk_linear_attn  # type: ignore

        import inspect

        params = inspect.signature(chunk_linear_attn).parameters
        return chunk_linear_attn, ("head_first" in params), None
    except Exception as e:
        return None, False, f"fla not importable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"


def bench_series(dev, args, copy_gbs):
    rows = []
    D, H = args.dim, args.heads
    dh = D // H
    dtype = getattr(torch, args.dtype)
    esize = torch.tensor([], dtype=dtype).element_size()
    fla_fn, fla_head_first, fla_note = load_fla()
    for L in args.lengths:
        B = max(1, args.tokens // L)
        n = B * L * D
        fwd_bytes = 4 * n * esize  # q, k, v read, o written
        fb_bytes = 8 * n * esize  # + do read, dq, dk, dv written (o read again in bwd is not counted)
        torch.manual_seed(0)
        # (B, H, L, dh) head-split layout, as the attention modules call the functional ops
        q, k, v = ((torch.randn(B, H, L, dh, device=dev) * 0.5).to(dtype).requires_grad_() for _ in range(3))
        g = torch.randn(B, H, L, dh, device=dev, dtype=dtype)
        for causal in (False, True):
            base = {"L": L, "B": B, "D": D, "heads": H, "causal": causal, "dtype": args.dtype}
            for order in args.orders:
                for impl in ("reference", "triton"):
                    f = lambda o=order, c=causal, i=impl: ea_series(q, k, v, order=o, causal=c, impl=i)
                    r = measure(f, (q, k, v), dev, args.warmup, args.reps, fwd_bytes, fb_bytes, g)
                    rows.append({**base, "op": f"ea_series t={order}", "impl": impl, **r})
                    print(f"  L={L:6d} B={B:3d} causal={causal!s:5} t={order} {impl:9s} {fmt_row(r)}", flush=True)
            # baselines (order-independent)
            f = lambda c=causal: F.scaled_dot_product_attention(q, k, v, is_causal=c)
            r = measure(f, (q, k, v), dev, args.warmup, args.reps, fwd_bytes, fb_bytes, g)
            rows.append({**base, "op": "softmax attention", "impl": "sdpa", **r})
            print(f"  L={L:6d} B={B:3d} causal={causal!s:5} sdpa          {fmt_row(r)}", flush=True)
            if not causal:
                rows.append({**base, "op": "linear attention", "impl": "fla_linear",
                             "note": "chunk_linear_attn is causal only"})
            elif fla_fn is None:
                rows.append({**base, "op": "linear attention", "impl": "fla_linear", "note": fla_note})
            else:
                qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
                gt = g.transpose(1, 2).contiguous()
                kw = {"head_first": False} if fla_head_first else {}
                f = lambda: fla_fn(qt, kt, vt, normalize=False, **kw)[0]
                r = measure(f, (qt, kt, vt), dev, args.warmup, args.reps, fwd_bytes, fb_bytes, gt)
                rows.append({**base, "op": "linear attention", "impl": "fla_linear", **r})
                print(f"  L={L:6d} B={B:3d} causal={causal!s:5} fla_linear    {fmt_row(r)}", flush=True)
        del q, k, v, g
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for r in rows:
        for key in ("fwd_gbs", "fwdbwd_gbs"):
            if key in r:
                r[key.replace("_gbs", "_frac_copy_bw")] = r[key] / copy_gbs
    return rows, fla_note


def bench_full_ea(dev, args, copy_gbs):
    rows = []
    L, D, H = args.ea_length, args.dim, args.heads
    dtype = getattr(torch, args.dtype)
    esize = torch.tensor([], dtype=dtype).element_size()
    n = L * D
    torch.manual_seed(0)
    q, k, v = ((torch.randn(1, H, L, D // H, device=dev)).to(dtype).requires_grad_() for _ in range(3))
    g = torch.randn(1, H, L, D // H, device=dev, dtype=dtype)
    reps = 1 if dev.type == "cuda" else args.reps
    for causal in (False, True):
        base = {"L": L, "B": 1, "D": D, "heads": H, "causal": causal, "dtype": args.dtype}
        impls = ["triton"] + ([] if args.skip_full_ea_reference else ["reference"])
        for impl in impls:
            f = lambda c=causal, i=impl: ea(q, k, v, causal=c, impl=i)
            r = measure(f, (q, k, v), dev, 1 if impl == "triton" else 0, reps if impl == "reference" else args.reps,
                        4 * n * esize, 8 * n * esize, g)
            rows.append({**base, "op": "ea (full)", "impl": impl, **r})
            print(f"  full EA L={L} causal={causal!s:5} {impl:9s} {fmt_row(r)}", flush=True)
        f = lambda c=causal: F.scaled_dot_product_attention(q, k, v, is_causal=c)
        r = measure(f, (q, k, v), dev, args.warmup, args.reps, 4 * n * esize, 8 * n * esize, g)
        rows.append({**base, "op": "softmax attention", "impl": "sdpa", **r})
        print(f"  full EA L={L} causal={causal!s:5} sdpa      {fmt_row(r)}", flush=True)
    return rows


# ----------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def fmt_row(r):
    if "error" in r:
        return r["error"]
    return (f"fwd {fmt(r.get('fwd_ms'), '.3f')} ms, fwd+bwd {fmt(r.get('fwdbwd_ms'), '.3f')} ms, "
            f"peak {fmt(r.get('fwdbwd_peak_mib'), '.0f')} MiB, {fmt(r.get('fwd_gbs'), '.0f')} GB/s fwd")


def device_info(dev):
    info = {"device": str(dev)}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(name=p.name, sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda)
    else:
        info.update(name=f"cpu ({platform.processor() or platform.machine()})",
                    triton_interpret=os.environ.get("TRITON_INTERPRET"))
    return info


def versions():
    v = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        v["triton"] = triton.__version__
    except Exception as e:
        v["triton"] = f"unavailable ({type(e).__name__})"
    try:
        import fla  # type: ignore

        v["fla"] = getattr(fla, "__version__", "unknown")
    except Exception:
        v["fla"] = None
    return v


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def table(lines, rows, copy_gbs):
    lines.append("| L | B | causal | op | impl | fwd ms | fwd GB/s (% copy) | fwd+bwd ms | fwd+bwd GB/s (% copy) "
                 "| peak fwd / fwd+bwd MiB |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r or "note" in r:
            msg = r.get("error") or r.get("note")
            lines.append(f"| {r['L']} | {r['B']} | {r['causal']} | {r['op']} | {r['impl']} | {msg} | | | | |")
            continue
        fwd_pct = 100 * r["fwd_gbs"] / copy_gbs
        fb_pct = 100 * r["fwdbwd_gbs"] / copy_gbs
        lines.append(
            f"| {r['L']} | {r['B']} | {r['causal']} | {r['op']} | {r['impl']} | {r['fwd_ms']:.3f} | "
            f"{r['fwd_gbs']:.0f} ({fwd_pct:.0f}%) | {r['fwdbwd_ms']:.3f} | {r['fwdbwd_gbs']:.0f} ({fb_pct:.0f}%) | "
            f"{fmt(r['fwd_peak_mib'], '.0f')} / {fmt(r['fwdbwd_peak_mib'], '.0f')} |"
        )


def write_markdown(path, res):
    lines = []
    info, ver = res["device"], res["versions"]
    lines.append(f"# Kernel benchmark: {info['name']}")
    lines.append("")
    lines.append(f"{res['date']}; torch {ver['torch']}, triton {ver['triton']}, fla {ver['fla']}; "
                 f"{'SMOKE RUN (tiny shapes; timings meaningless)' if res['smoke'] else ''}")
    lines.append("")
    lines.append(f"Copy bandwidth (device copy, read+write): **{res['copy_gbs']:.0f} GB/s**.")
    lines.append("")
    lines.append("## Correctness (float32 vs float64 reference, max relative error)")
    lines.append("")
    lines.append("| case | shape | y | dq | dk | dv | ok |")
    lines.append("|---|---|---|---|---|---|---|")
    for c in res["correctness"]:
        lines.append(f"| {c['case']} | {c['shape']} | {fmt(c.get('y'), '.1e')} | {fmt(c.get('dq'), '.1e')} | "
                     f"{fmt(c.get('dk'), '.1e')} | {fmt(c.get('dv'), '.1e')} | {c['ok']} |")
    lines.append("")
    a = res["args"]
    lines.append(f"## EA-series: D={a['dim']} ({a['heads']} heads), B*L={a['tokens']} tokens, {a['dtype']}")
    lines.append("")
    lines.append("Bandwidth: forward over q, k, v, o bytes; forward+backward over q, k, v, o, do, dq, dk, dv; "
                 "'% copy' relates it to the copy bandwidth above. Peak: memory above the inputs.")
    if res.get("fla_note"):
        lines.append(f"fla_linear column: {res['fla_note']}.")
    lines.append("")
    table(lines, res["ea_series"], res["copy_gbs"])
    lines.append("")
    lines.append(f"## Full EA: B=1, L={a['ea_length']}, D={a['dim']} ({a['heads']} heads), {a['dtype']}")
    lines.append("")
    table(lines, res["full_ea"], res["copy_gbs"])
    lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes; runs on CPU via TRITON_INTERPRET=1")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: results/kernels_<gpu-name>)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=65536, help="B * L")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    ap.add_argument("--orders", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--ea-length", type=int, default=16384)
    ap.add_argument("--skip-full-ea-reference", action="store_true",
                    help="the PyTorch full-EA reference at L=16384 takes tens of seconds")
    ap.add_argument("--check-shape", type=int, nargs=3, default=[2, 300, 96], metavar=("B", "L", "D"))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)

    if args.smoke:
        args.dim, args.heads, args.tokens = 32, 2, 128
        args.lengths, args.ea_length = [32, 64], 32
        args.check_shape = [2, 23, 12]
        args.warmup, args.reps = 0, 1
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cpu" and not args.smoke:
        sys.exit("benchmarks/kernels.py needs a CUDA GPU (use --smoke for the CPU/interpreter dry run)")
    if dev.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("--smoke on CPU needs TRITON_INTERPRET=1 (set it before running)")
    info = device_info(dev)
    print(f"device: {info['name']}; {versions()}", flush=True)

    t0 = time.time()
    res = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "smoke": args.smoke,
           "device": info, "versions": versions(),
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    print("correctness ...", flush=True)
    res["correctness"] = check_correctness(dev, tuple(args.check_shape))
    for c in res["correctness"]:
        print(f"  {c['case']:36s} ok={c['ok']}  " + " ".join(f"{n}={c[n]:.1e}" for n in ("y", "dq", "dk", "dv") if n in c))
    res["copy_gbs"] = copy_bandwidth_gbs(dev, 1 << (30 if dev.type == "cuda" else 24), args.warmup + 2, max(args.reps, 3))
    print(f"copy bandwidth: {res['copy_gbs']:.0f} GB/s", flush=True)
    print("EA-series ...", flush=True)
    res["ea_series"], res["fla_note"] = bench_series(dev, args, res["copy_gbs"])
    print("full EA ...", flush=True)
    res["full_ea"] = bench_full_ea(dev, args, res["copy_gbs"])
    res["wall_s"] = round(time.time() - t0, 1)

    out = args.out
    if out is None:
        if args.smoke:
            out = Path(tempfile.mkdtemp(prefix="ea_zoo_kernels_smoke_"))
        else:
            out = ROOT / "results" / f"kernels_{slug(info['name'])}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(out / "kernels.md", res)
    print(f"wrote {out / 'kernels.json'} and {out / 'kernels.md'} ({res['wall_s']} s)")
    if not all(c["ok"] for c in res["correctness"]):
        print("CORRECTNESS CHECK FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
