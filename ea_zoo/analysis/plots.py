"""matplotlib figures of the cost tools (Agg backend, PNG files; nothing is shown)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

__all__ = ["complexity_figures", "train_cost_figure", "infer_cost_figure"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _style(label: str, i: int) -> Dict[str, Any]:
    markers = "osD^v<>ph*Xd"
    ls = "-"
    if label.startswith(("ea", "EA")):
        ls = "-"
    elif label.startswith("sa"):
        ls = "--"
    else:
        ls = ":"
    return {"marker": markers[i % len(markers)], "linestyle": ls, "markersize": 4, "linewidth": 1.3}


def _series(rows, label, sweep, key, xkey):
    pts = sorted((r[xkey], r[key]) for r in rows
                 if r.get("backend") == label and r.get("sweep") == sweep and r.get(key) not in (None, 0)
                 and r.get(xkey) is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def complexity_figures(rows: Sequence[Dict[str, Any]], specs: Sequence[Any], out: Path, cfg: Any) -> List[Path]:
    """``complexity.png`` (rows: L sweep, D sweep; columns: FLOPs, activation memory, state,
    fwd+bwd time; log-log) and ``complexity_t.png`` (the EA-series order sweep)."""
    plt = _plt()
    out = Path(out)
    measures = [("flops", "forward FLOPs (mixing)"), ("act_bytes", "saved activations (bytes)"),
                ("state_numel", "decoding state (numbers)"), ("time_fwd_bwd_s", "fwd+bwd time (s)")]
    fig, axes = plt.subplots(2, len(measures), figsize=(4.2 * len(measures), 7.5), squeeze=False)
    labels = [s.label for s in specs]
    for row_i, (sweep, xlabel) in enumerate((("L", f"sequence length L (D={cfg.dim})"),
                                              ("D", f"width D (L={cfg.length}, H={cfg.heads})"))):
        for col, (key, title) in enumerate(measures):
            ax = axes[row_i][col]
            xkey = "decode_L" if (key.startswith("state") and sweep == "L") else sweep
            for i, lab in enumerate(labels):
                xs, ys = _series(rows, lab, sweep, key, xkey)
                if xs:
                    ax.plot(xs, ys, label=lab, **_style(lab, i))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_title(title, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
    handles, labs = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labs, loc="lower center", ncol=min(len(labs), 7), fontsize=8, frameon=False)
    fig.suptitle("Measured cost of the attention mixing (Table 1 of Feng 2025)", fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    p1 = out / "complexity.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)
    paths = [p1]

    trows = sorted((r for r in rows if r.get("sweep") == "t" and r.get("flops") is not None), key=lambda r: r["t"])
    if trows:
        tm = [("flops", "FLOPs"), ("act_bytes", "saved activations (bytes)"), ("state_numel", "state (numbers)"),
              ("time_fwd_bwd_s", "fwd+bwd time (s)")]
        fig, axes = plt.subplots(1, len(tm), figsize=(3.6 * len(tm), 3.4), squeeze=False)
        ts = [r["t"] for r in trows]
        for ax, (key, title) in zip(axes[0], tm):
            ys = [r.get(key) for r in trows]
            pts = [(t, y) for t, y in zip(ts, ys) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
            ax.set_xlabel("EA-series order t")
            ax.set_title(title, fontsize=10)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        fig.suptitle(f"EA-series cost vs order t (L={cfg.length}, D={cfg.dim})", fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 0.92))
        p2 = out / "complexity_t.png"
        fig.savefig(p2, dpi=110)
        plt.close(fig)
        paths.append(p2)
    return paths


def _hyperbolas(ax, tokens_list, xs_range, color="0.6"):
    lo, hi = xs_range
    for tok in tokens_list:
        xs = [lo * (hi / lo) ** (i / 50) for i in range(51)]
        ax.plot(xs, [tok / x for x in xs], linestyle="--", color=color, linewidth=0.8)
        ax.annotate(f"{tok:.3g} tok", (xs[-1], tok / xs[-1]), fontsize=6, color=color)


def train_cost_figure(memory_rows: Sequence[Dict[str, Any]], curve_rows: Sequence[Dict[str, Any]],
                      backends: Sequence[str], out: Path, budget_bytes: float, measure_name: str) -> Path:
    """Figure 4: (a) memory vs L at BS 1, (b) BS-L curve with constant-token hyperbolas,
    (c) throughput along the curve."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for i, b in enumerate(backends):
        pts = sorted((r["L"], r["memory_bytes"]) for r in memory_rows
                     if r["backend"] == b and r.get("memory_bytes") is not None)
        if pts:
            axes[0].plot([p[0] for p in pts], [p[1] / 2**20 for p in pts], label=b, **_style(b, i))
        cur = sorted((r["max_L"], r["batch_size"]) for r in curve_rows if r["backend"] == b and r.get("max_L"))
        if cur:
            axes[1].plot([p[0] for p in cur], [p[1] for p in cur], label=b, **_style(b, i))
        thr = sorted((r["max_L"], r["tokens_per_s"]) for r in curve_rows
                     if r["backend"] == b and r.get("max_L") and r.get("tokens_per_s"))
        if thr:
            axes[2].plot([p[0] for p in thr], [p[1] for p in thr], label=b, **_style(b, i))
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("sequence length L (batch size 1)")
    axes[0].set_ylabel(f"{measure_name} (MiB)")
    axes[0].set_title("(a) training memory")
    toks = [r["batch_size"] * r["max_L"] for r in curve_rows if r.get("max_L")]
    ls = [r["max_L"] for r in curve_rows if r.get("max_L")]
    if toks and ls:
        tk = sorted(set(toks))
        picks = sorted({tk[0], tk[len(tk) // 2], tk[-1]})
        _hyperbolas(axes[1], picks, (min(ls) / 1.2, max(ls) * 1.2))
    axes[1].set_xscale("log", base=2)
    axes[1].set_yscale("log", base=2)
    axes[1].set_xlabel("largest L that fits")
    axes[1].set_ylabel("batch size")
    budget = f"{budget_bytes / 2**30:.3g} GiB" if budget_bytes >= 2**30 else f"{budget_bytes / 2**20:.3g} MiB"
    axes[1].set_title(f"(b) BS-L curve (budget {budget}; dashed: BS x L = const)", fontsize=10)
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("L on the BS-L curve")
    axes[2].set_ylabel("training tokens / s")
    axes[2].set_title("(c) throughput along the curve")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    p = Path(out) / "train_cost.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def infer_cost_figure(rows: Sequence[Dict[str, Any]], backends: Sequence[str], batch_sizes: Sequence[int],
                      out: Path) -> Path:
    """Figure 5: (a) memory (params + state) vs generated length, per batch size;
    (b) total latency vs generated length; (c) per-token latency."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    styles = ["-", "--", ":", "-."]
    for i, b in enumerate(backends):
        color = f"C{i % 10}"
        for j, bs in enumerate(batch_sizes):
            pts = sorted((r["length"], r) for r in rows if r["backend"] == b and r["batch_size"] == bs)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            lab = f"{b} BS={bs}"
            kw = dict(color=color, linestyle=styles[j % len(styles)], marker="o", markersize=3, linewidth=1.2)
            axes[0].plot(xs, [p[1]["memory_bytes"] / 2**20 for p in pts], label=lab, **kw)
            axes[1].plot(xs, [p[1]["total_latency_s"] for p in pts], label=lab, **kw)
            axes[2].plot(xs, [1000 * p[1]["token_latency_s"] for p in pts], label=lab, **kw)
    axes[0].set_ylabel("params + state (MiB)")
    axes[0].set_title("(a) decoding memory")
    axes[1].set_ylabel("total seconds to generate L tokens")
    axes[1].set_title("(b) latency")
    axes[2].set_ylabel("ms for token L")
    axes[2].set_title("(c) per-token latency")
    for ax in axes:
        ax.set_xlabel("generated length L")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    p = Path(out) / "infer_cost.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
