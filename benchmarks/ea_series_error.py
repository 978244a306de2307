"""How far EA-series (Taylor order t) is from full EA at the scales our backbones produce.

The Taylor polynomial P_t(2qk) is accurate only while |2 q k| / tau is small, so the error
depends on the scale of the projected q and k. This script builds the ``ea_series`` module
(and its exact ``ea`` counterpart with the same weights) at three initialisations and feeds
it LayerNorm-ed tokens (unit variance per token: what a transformer block hands to its
attention):

* ``timm_vit_init``: projections initialised as timm's ViT does (trunc_normal std 0.02),
* ``torch_default_init``: PyTorch's nn.Linear default (what a freshly built module has),
* ``torch_default_init + qk_norm``: the same with per-head LayerNorm on q and k.

For each, it reports quantiles of |2 q k| and the relative error ||y_t - y_EA|| / ||y_EA||
of the attention mixing (before the output projection) for t = 2, 4, 6, 8, non-causal and
causal. Writes JSON and markdown to ``benchmarks/results/``.

    python benchmarks/ea_series_error.py [--dim 384 --heads 6 --length 197 --batch 8]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

import torch
from torch import nn

import ea_zoo
from ea_zoo.functional import ea, ea_series

ORDERS = (2, 4, 6, 8)


def build(dim, heads, init, qk_norm, temperature):
    m = ea_zoo.create_attention("ea_series", dim=dim, num_heads=heads, qk_norm=qk_norm, temperature=temperature)
    if init == "timm_vit_init":
        for lin in (m.qkv, m.proj):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
    return m.eval()


@torch.no_grad()
def measure(m, x):
    q, k, v = m.project(x)
    q, k = m.scale_qk(q, k)
    q, k, v = q.double(), k.double(), v.double()
    prod = (2 * q * k).abs().flatten()
    qs = torch.quantile(prod[torch.randperm(prod.numel())[:200_000]], torch.tensor([0.5, 0.99, 1.0], dtype=torch.float64))
    row = {"abs_2qk_p50": qs[0].item(), "abs_2qk_p99": qs[1].item(), "abs_2qk_max": prod.max().item()}
    for causal in (False, True):
        exact = ea(q, k, v, causal=causal)
        for t in ORDERS:
            approx = ea_series(q, k, v, order=t, causal=causal)
            rel = ((approx - exact).norm() / exact.norm()).item()
            row[f"{'causal' if causal else 'noncausal'}_rel_err_t{t}"] = rel
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--length", type=int, default=197)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = nn.functional.layer_norm(torch.randn(args.batch, args.length, args.dim), (args.dim,))
    settings = [
        ("timm_vit_init", False, 1.0),
        ("torch_default_init", False, 1.0),
        ("torch_default_init", True, 1.0),
        ("torch_default_init", True, 2.0),
    ]
    rows = []
    for init, qk_norm, tau in settings:
        torch.manual_seed(1)
        m = build(args.dim, args.heads, init, qk_norm, tau)
        row = {"init": init, "qk_norm": qk_norm, "temperature": tau, **measure(m, x)}
        rows.append(row)
        print(row)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "ea_zoo": ea_zoo.__version__,
        "shape": {"batch": args.batch, "length": args.length, "dim": args.dim, "heads": args.heads},
        "input": "LayerNorm(randn) tokens, float64 evaluation",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ea_series_error.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    head = "| init | qk_norm | tau | \\|2qk\\| p50 / p99 / max | " + " | ".join(
        f"EA-{t} rel. err (non-causal / causal)" for t in ORDERS) + " |"
    lines = [
        f"EA-series vs full EA, relative error of the attention output. {meta['date']}, torch {meta['torch']}, "
        f"B={args.batch}, L={args.length}, D={args.dim}, H={args.heads}; {meta['input']}.",
        "",
        head,
        "|" + "---|" * (4 + len(ORDERS)),
    ]
    for r in rows:
        cells = [f"{r['noncausal_rel_err_t' + str(t)]:.1e} / {r['causal_rel_err_t' + str(t)]:.1e}" for t in ORDERS]
        lines.append(
            f"| {r['init']} | {r['qk_norm']} | {r['temperature']:g} | "
            f"{r['abs_2qk_p50']:.2f} / {r['abs_2qk_p99']:.2f} / {r['abs_2qk_max']:.1f} | " + " | ".join(cells) + " |"
        )
    (args.out / "ea_series_error.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
