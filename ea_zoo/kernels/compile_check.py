"""Compile every kernel ahead of time for a CUDA architecture, without a GPU.

The Triton interpreter (what the CPU tests run) accepts code that the compiler may reject,
and says nothing about registers. This builds each kernel, in the configurations the
launchers use, down to a cubin for ``--arch`` (default sm_90) with triton's bundled ptxas,
and reports registers and spill (local-memory stack) bytes from ``cuobjdump`` when present.

    python -m ea_zoo.kernels.compile_check [--arch 90] [--max-stack 64] [--quick]

Exit status 1 if a kernel fails to compile or spills more than ``--max-stack`` bytes.
Must run with the interpreter off (TRITON_INTERPRET unset).
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
import time

INT_ARGS = {"H", "L", "C", "LQ", "LK", "CPS", "NS", "NROW", "M"}


def _signature(fn, consts, ptr_types):
    sig = {}
    for name in inspect.signature(fn).parameters:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptr_types:
            sig[name] = ptr_types[name]
        elif name.isupper() and name not in INT_ARGS:
            sig[name] = "*fp32"
        else:
            sig[name] = "i32"
    return sig


def _usage(cubin: bytes):
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    reg = re.search(r"REG:(\d+)", out)
    stack = re.search(r"STACK:(\d+)", out)
    return (int(reg.group(1)) if reg else None, int(stack.group(1)) if stack else None)


def cases(quick: bool = False):
    """(label, python function, constexprs, pointer types, num_warps) as the launchers use them."""
    from ea_zoo.kernels import decode as kd
    from ea_zoo.kernels import ea_flash as kf
    from ea_zoo.kernels import ea_series as ks
    from ea_zoo.kernels._triton_utils import next_pow2

    half = {"MASK": "*u8", "Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "G": "*bf16",
            "DQ": "*bf16", "DK": "*bf16", "DV": "*bf16", "Y": "*bf16"}
    out = []
    orders = (6,) if quick else (2, 6, 8)
    cuda = __import__("torch").device("cuda")
    for order in orders:
        bl, bc = ks.default_blocks(cuda, order)
        nw = ks._num_warps(bl, bc)
        base = dict(ORDER=order, NPOW=max(2, next_pow2(order + 1)), BL=bl, BC=bc, HAS_MASK=True)
        out.append((f"series_sums t={order}", ks._series_sums_kernel, base, half, nw))
        for rev in (False, True):
            scan = dict(NPOW=next_pow2(2 * (order + 1)), BC=bc, REVERSE=rev, HAS_INIT=not rev)
            out.append((f"series_split_scan t={order} reverse={rev}", ks._split_scan_kernel, scan, {}, 4))
        for causal in ((True,) if quick else (False, True)):
            c = dict(CAUSAL=causal, **base)
            tag = f"t={order} causal={causal} BL={bl} BC={bc} warps={nw}"
            out.append((f"series_out {tag}", ks._series_out_kernel, dict(c, STORE_END=causal), half, nw))
            out.append((f"series_bwd_q {tag}", ks._series_bwd_q_kernel, c, half, nw))
            out.append((f"series_bwd_kv {tag}", ks._series_bwd_kv_kernel, c, half, nw))
    cfgs = kf._configs()[:1] if quick else kf._configs()
    for cfg in cfgs:
        meta = dict(cfg.kwargs, HAS_MASK=True, CAUSAL=True)
        tag = f"BM={meta['BM']} BN={meta['BN']} BC={meta['BC']} warps={cfg.num_warps}"
        out.append((f"ea_fwd {tag}", kf._ea_fwd_kernel, meta, half, cfg.num_warps))
        out.append((f"ea_bwd_dkdv {tag}", kf._ea_bwd_dkdv_kernel, meta, half, cfg.num_warps))
        out.append((f"ea_bwd_dq {tag}", kf._ea_bwd_dq_kernel, meta, half, cfg.num_warps))
    out.append(("decode t=8", kd._decode_kernel, dict(ORDER=8, BLOCK=kd.BLOCK), half, 4))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90 = H100)")
    ap.add_argument("--max-stack", type=int, default=64, help="largest tolerated spill stack, bytes")
    ap.add_argument("--quick", action="store_true", help="one order, one flash config")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_check: unset TRITON_INTERPRET (the interpreter replaces the compiler)", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    target = GPUTarget("cuda", args.arch, 32)
    bad = 0
    for label, fn, consts, ptrs, nw in cases(args.quick):
        t = time.time()
        try:
            src = ASTSource(JITFunction(fn), _signature(fn, consts, ptrs), constexprs=consts)
            k = triton.compile(src, target=target, options={"num_warps": nw})
            use = _usage(k.asm["cubin"])
        except Exception as e:  # report every failure, then fail
            bad += 1
            print(f"FAIL {label}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")
            continue
        reg, stack = use if use else (None, None)
        spill = stack is not None and stack > args.max_stack
        bad += spill
        print(f"{'SPILL' if spill else 'ok  '} {label}: regs={reg} stack={stack} ({time.time() - t:.1f}s)")
    print(f"compile_check sm_{args.arch}: {'FAILED' if bad else 'all compiled'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
