"""``ea-zoo ablate``: the paper's Table 3 / Table 4 grids (and a ViT grid) over backends and seeds.

    ea-zoo ablate --suite table3 --backends sa,ea2,ea6 --seeds 3
    ea-zoo ablate --suite table4 --cells ETTh2-6,ETTh2-12 --backends sa,ea2,ea6,la --seeds 3
    ea-zoo ablate --suite table3 --cells JAP --backends sa,ea2 --seeds 1 trainer.max_epochs=2

A *cell* is one column of the paper's table (a dataset, or a dataset and horizon), trained
from ``configs/experiment/<config>.yaml``; a *run* is (cell, backend, seed). Each run writes
``<runs-dir>/<cell>/<backend>/seed<k>/results.json`` (and its ``best.ckpt``); a run whose
results.json exists is skipped, so an interrupted grid resumes where it stopped. A cell whose
data files are missing (SCP2 and Traffic are not staged offline) is reported as
"data not present" instead of failing the grid.

The report (``--out``, default ``benchmarks/results/ablation_<suite>``): ``results.md``
(mean ± sample std over seeds per backend and cell, with the paper's number beside each
cell the paper reports), ``results.csv`` (long format, one row per cell x backend x metric,
with the per-seed values), ``results.json`` (the per-run summaries) and ``results.png``
(bars with std error bars, the paper's values as markers). Checkpoints stay in ``--runs-dir``
(default ``runs/ablate/<suite>``, git-ignored).

Extra positional arguments are dotlist overrides applied to every run (``trainer.max_epochs=5``).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["Suite", "SUITES", "PAPER", "run_grid", "collect", "write_report", "add_arguments", "run"]


@dataclass(frozen=True)
class Suite:
    """A grid: cells (label -> experiment config), reported metrics (label -> results key)."""

    name: str
    cells: Dict[str, str]
    metrics: Dict[str, str]
    extra_metrics: Dict[str, str] = field(default_factory=dict)
    higher_is_better: bool = True
    title: str = ""
    paper_note: str = ""


SUITES: Dict[str, Suite] = {
    "table3": Suite(
        "table3",
        cells={"JAP": "table3_jap", "SCP1": "table3_scp1", "SCP2": "table3_scp2", "UWG": "table3_uwg"},
        metrics={"acc": "test/acc"},
        higher_is_better=True,
        title="Table 3: multivariate time-series classification accuracy (non-causal)",
        paper_note="paper: Feng 2025, Table 3 (accuracy)",
    ),
    "table4": Suite(
        "table4",
        cells={"ETTh2-6": "table4_etth2_6", "ETTh2-12": "table4_etth2_12", "ETTm2-6": "table4_ettm2_6",
               "ETTm2-12": "table4_ettm2_12", "Traffic-6": "table4_traffic_6", "Traffic-12": "table4_traffic_12"},
        metrics={"MAE": "test/orig_mae", "RMSE": "test/orig_rmse"},
        extra_metrics={"MAE_scaled": "test/mae", "RMSE_scaled": "test/rmse"},
        higher_is_better=False,
        title="Table 4: time-series forecasting, L=6 -> L' (causal); MAE/RMSE in original units of OT",
        paper_note="paper: Feng 2025, Table 4 (MAE, RMSE; apparently original units of the univariate target)",
    ),
    "vit": Suite(
        "vit",
        cells={"FashionMNIST": "vit_fmnist"},
        metrics={"acc": "test/acc"},
        higher_is_better=True,
        title="ViT-Tiny (4x4 patches) on Fashion-MNIST: test accuracy",
    ),
}

#: the paper's numbers: suite -> (cell, backend, metric) -> value
PAPER: Dict[str, Dict[Tuple[str, str, str], float]] = {"table3": {}, "table4": {}, "vit": {}}
for _cell, _vals in {"JAP": (0.957, 0.973, 0.970), "SCP1": (0.887, 0.904, 0.894), "SCP2": (0.500, 0.533, 0.528),
                     "UWG": (0.794, 0.847, 0.822)}.items():
    for _b, _v in zip(("ea2", "ea6", "sa"), _vals):
        PAPER["table3"][(_cell, _b, "acc")] = _v
for _cell, _vals in {
    "ETTh2-6": ((1.43, 2.01), (1.23, 1.79), (1.24, 1.79)), "ETTh2-12": ((2.14, 2.90), (1.90, 2.67), (1.92, 2.71)),
    "ETTm2-6": ((0.44, 0.63), (0.36, 0.53), (0.36, 0.54)), "ETTm2-12": ((0.73, 1.08), (0.64, 0.98), (0.64, 0.99)),
    "Traffic-6": ((0.12, 0.15), (0.09, 0.13), (0.10, 0.13)), "Traffic-12": ((0.18, 0.28), (0.16, 0.25), (0.16, 0.27)),
}.items():
    for _b, (_mae, _rmse) in zip(("ea2", "ea6", "sa"), _vals):
        PAPER["table4"][(_cell, _b, "MAE")] = _mae
        PAPER["table4"][(_cell, _b, "RMSE")] = _rmse

DATA_MISSING = "data not present"


def _run_dir(runs_dir: Path, cell: str, backend: str, seed: int) -> Path:
    return runs_dir / cell / backend / f"seed{seed}"


def _log(msg: str) -> None:
    print(f"[ablate {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_grid(suite: Suite, backends: Sequence[str], seeds: Sequence[int], runs_dir: Path,
             cells: Optional[Sequence[str]] = None, overrides: Sequence[str] = (), threads: Optional[int] = None,
             dry_run: bool = False) -> Dict[str, List[Any]]:
    """Train every missing (cell, backend, seed) run; return ``{"ran", "skipped", "missing", "failed"}``."""
    from ea_zoo.data.paths import DataNotFoundError
    from ea_zoo.train.run import load_experiment, train

    cells = list(cells or suite.cells)
    status: Dict[str, List[Any]] = {"ran": [], "skipped": [], "missing": [], "failed": []}
    for cell in cells:
        if cell not in suite.cells:
            raise ValueError(f"unknown cell {cell!r} for suite {suite.name}; cells: {', '.join(suite.cells)}")
        missing_cell = False
        for backend in backends:
            for seed in seeds:
                key = (cell, backend, seed)
                out = _run_dir(runs_dir, cell, backend, seed)
                if (out / "results.json").is_file():
                    status["skipped"].append(key)
                    continue
                if missing_cell:
                    status["missing"].append(key)
                    continue
                ov = [f"attention={backend}", f"seed={seed}", f"output_dir={out}", "trainer.enable_progress_bar=false",
                      *overrides]
                if threads:
                    ov.append(f"threads={threads}")
                cfg = load_experiment(suite.cells[cell], ov)
                if dry_run:
                    _log(f"would run {cell} {backend} seed {seed} -> {out}")
                    status["ran"].append(key)
                    continue
                _log(f"run {cell} {backend} seed {seed} -> {out}")
                t0 = time.time()
                try:
                    res = train(cfg)
                except DataNotFoundError as e:
                    _log(f"{cell}: {DATA_MISSING}: {str(e).splitlines()[1].strip()}")
                    missing_cell = True
                    status["missing"].append(key)
                    (runs_dir / cell).mkdir(parents=True, exist_ok=True)
                    (runs_dir / cell / "DATA_MISSING.txt").write_text(str(e) + "\n")
                    continue
                except Exception:  # keep the grid going; the cell shows as failed
                    _log(f"{cell} {backend} seed {seed} FAILED:\n{traceback.format_exc()}")
                    status["failed"].append(key)
                    continue
                shown = {k: round(v, 4) for k, v in res["test"].items() if k in suite.metrics.values()}
                _log(f"done {cell} {backend} seed {seed} in {time.time() - t0:.0f}s: {shown}")
                status["ran"].append(key)
    return status


def data_present(suite: Suite, cell: str, overrides: Sequence[str] = ()) -> bool:
    """Whether the files of a cell's dataset are under the data root (no download, no loading)."""
    from ea_zoo.data.download import ensure_dataset
    from ea_zoo.data.paths import DataNotFoundError
    from ea_zoo.train.run import load_experiment

    data = load_experiment(suite.cells[cell], overrides).data
    if data.kind == "image" or (data.kind == "forecast" and data.get("path")):
        return True  # torchvision datasets / explicit paths: checked when loading
    name = data.dataset
    if data.kind == "uea":
        from ea_zoo.data.uea import UEA_TABLE3

        name = UEA_TABLE3.get(name, name)
    try:
        ensure_dataset(name, root=data.get("root"), download=False)
    except DataNotFoundError:
        return False
    return True


def _mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return m, sd


def collect(suite: Suite, backends: Sequence[str], seeds: Sequence[int], runs_dir: Path,
            cells: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Read the runs' results.json into per-cell statistics."""
    cells = list(cells or suite.cells)
    metrics = {**suite.metrics, **suite.extra_metrics}
    rows, runs = [], []
    for cell in cells:
        cell_missing = (runs_dir / cell / "DATA_MISSING.txt").is_file() or not data_present(suite, cell)
        for backend in backends:
            per_seed: Dict[str, List[float]] = {m: [] for m in metrics}
            meta = []
            for seed in seeds:
                f = _run_dir(runs_dir, cell, backend, seed) / "results.json"
                if not f.is_file():
                    continue
                r = json.loads(f.read_text())
                for m, key in metrics.items():
                    if key in r["test"]:
                        per_seed[m].append(float(r["test"][key]))
                meta.append({"seed": seed, "epochs_run": r.get("epochs_run"), "fit_seconds": r.get("fit_seconds"),
                             "params": r.get("params"), "best_val": r.get("best_val", {}).get("value")})
                runs.append({"cell": cell, "backend": backend, "seed": seed, "test": r["test"],
                             "best_val": r.get("best_val"), "epochs_run": r.get("epochs_run"),
                             "fit_seconds": r.get("fit_seconds"), "params": r.get("params")})
            for m in metrics:
                vals = per_seed[m]
                paper = PAPER.get(suite.name, {}).get((cell, backend, m))
                row = {"suite": suite.name, "cell": cell, "backend": backend, "metric": m, "n": len(vals),
                       "mean": None, "std": None, "paper": paper, "values": vals,
                       "status": "ok" if vals else (DATA_MISSING if cell_missing else "not run")}
                if vals:
                    row["mean"], row["std"] = _mean_std(vals)
                if meta:
                    row["epochs_run_mean"] = sum(x["epochs_run"] or 0 for x in meta) / len(meta)
                    row["fit_seconds_mean"] = sum(x["fit_seconds"] or 0 for x in meta) / len(meta)
                    row["params"] = meta[0]["params"]
                rows.append(row)
    return {"suite": suite.name, "cells": cells, "backends": list(backends), "seeds": list(seeds), "rows": rows,
            "runs": runs}


def _fmt(x: Optional[float], metric: str) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if metric.lower().startswith("acc") or abs(x) < 10 else f"{x:.2f}"


def _table(stats: Dict[str, Any], suite: Suite, metrics: Sequence[str], with_paper: bool) -> List[str]:
    rows = {(r["cell"], r["backend"], r["metric"]): r for r in stats["rows"]}
    cells, backends = stats["cells"], stats["backends"]
    head = ["backend"] + [f"{c} {m}" if len(metrics) > 1 else c for c in cells for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best: Dict[Tuple[str, str], float] = {}
    for c in cells:
        for m in metrics:
            ms = [rows[(c, b, m)]["mean"] for b in backends if rows.get((c, b, m)) and rows[(c, b, m)]["mean"] is not None]
            if ms:
                best[(c, m)] = max(ms) if suite.higher_is_better else min(ms)
    for b in backends:
        out = [b]
        for c in cells:
            for m in metrics:
                r = rows.get((c, b, m))
                if r is None or r["mean"] is None:
                    out.append(r["status"] if r else "-")
                    continue
                s = f"{_fmt(r['mean'], m)} ± {_fmt(r['std'], m)}"
                if best.get((c, m)) == r["mean"] and len(backends) > 1:
                    s = f"**{s}**"
                if r["n"] != len(stats["seeds"]):
                    s += f" (n={r['n']})"
                if with_paper and r["paper"] is not None:
                    s += f" (paper {r['paper']:g})"
                out.append(s)
        lines.append("| " + " | ".join(out) + " |")
    return lines


def write_report(stats: Dict[str, Any], suite: Suite, out_dir: Path, budget: str = "", plot: bool = True) -> Dict[str, Path]:
    """Write results.md / .csv / .json / .png into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"results.{k}" for k in ("md", "csv", "json", "png")}
    lines = [f"# {suite.title or suite.name}", ""]
    lines += [f"Mean ± sample std over seeds {stats['seeds']} (n per cell unless noted); best mean per column in bold; "
              f"{suite.paper_note or 'no paper numbers'} in parentheses.", ""]
    if budget:
        lines += [f"Budget: {budget}", ""]
    lines += _table(stats, suite, list(suite.metrics), with_paper=True)
    if suite.extra_metrics:
        lines += ["", f"On the train-fitted standard scale ({', '.join(suite.extra_metrics)}; the scale TSL reports):", ""]
        lines += _table(stats, suite, list(suite.extra_metrics), with_paper=False)
    done = [r for r in stats["rows"] if r["status"] == "ok" and r["metric"] == list(suite.metrics)[0]]
    if done:
        lines += ["", "Per backend and cell: mean epochs run (early stopping), mean fit seconds, parameters:", "",
                  "| cell | backend | epochs | fit s | params |", "|---|---|---|---|---|"]
        for r in done:
            lines.append(f"| {r['cell']} | {r['backend']} | {r.get('epochs_run_mean', 0):.1f} | "
                         f"{r.get('fit_seconds_mean', 0):.0f} | {r.get('params', '-')} |")
    paths["md"].write_text("\n".join(lines) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["suite", "cell", "backend", "metric", "n", "mean", "std", "paper", "status", "values"])
        for r in stats["rows"]:
            w.writerow([r["suite"], r["cell"], r["backend"], r["metric"], r["n"],
                        "" if r["mean"] is None else f"{r['mean']:.6g}", "" if r["std"] is None else f"{r['std']:.6g}",
                        "" if r["paper"] is None else r["paper"], r["status"], " ".join(f"{v:.6g}" for v in r["values"])])
    paths["json"].write_text(json.dumps({**stats, "budget": budget}, indent=2))
    if plot:
        _plot(stats, suite, paths["png"])
    else:
        paths.pop("png")
    return paths


def _plot(stats: Dict[str, Any], suite: Suite, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {(r["cell"], r["backend"], r["metric"]): r for r in stats["rows"]}
    metrics = list(suite.metrics)
    cells = list(stats["cells"])
    empty = {c: next((rows[(c, b, metrics[0])]["status"] for b in stats["backends"] if (c, b, metrics[0]) in rows),
                     "not run")
             for c in cells if all(rows.get((c, b, metrics[0]), {}).get("mean") is None for b in stats["backends"])}
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(5.0, 1.3 * len(cells) + 2), 3.2 * len(metrics) + 0.6),
                             squeeze=False)
    axes = [[row[0] for row in axes]]
    backends = stats["backends"]
    width = 0.8 / max(1, len(backends))
    for ax, m in zip(axes[0], metrics):
        for i, b in enumerate(backends):
            xs, ys, es, px, py = [], [], [], [], []
            for j, c in enumerate(cells):
                r = rows.get((c, b, m))
                if r and r["mean"] is not None:
                    xs.append(j + (i - (len(backends) - 1) / 2) * width)
                    ys.append(r["mean"])
                    es.append(r["std"])
                    if r["paper"] is not None:
                        px.append(xs[-1])
                        py.append(r["paper"])
            bars = ax.bar(xs, ys, width, yerr=es, capsize=3, label=b)
            if px:
                ax.scatter(px, py, marker="x", color="black", zorder=3, s=30,
                           label="paper" if i == 0 else None)
            del bars
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels(cells)
        ax.set_xlim(-0.5, len(cells) - 0.5)
        ax.set_ylabel(m)
        vals = [r["mean"] for r in stats["rows"] if r["metric"] == m and r["mean"] is not None]
        vals += [r["paper"] for r in stats["rows"] if r["metric"] == m and r["paper"] is not None and r["cell"] not in empty]
        if suite.higher_is_better and vals:
            ax.set_ylim(max(0.0, min(vals) - 0.1), min(1.0, max(vals) + 0.05))
        lo, hi = ax.get_ylim()
        for j, c in enumerate(cells):
            if c in empty:
                ax.text(j, lo + 0.5 * (hi - lo), empty[c], ha="center", va="center", rotation=90, fontsize=8, color="gray")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    axes[0][-1].legend(uniq.values(), uniq.keys(), fontsize=8, loc="best")
    fig.suptitle(suite.title or suite.name, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", required=True, choices=sorted(SUITES), help="which grid")
    parser.add_argument("--backends", default="sa,ea2,ea6",
                        help="comma-separated attention backends (e.g. sa,ea2,ea6,la,aft_simple,hedgehog,taylor)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (seed-offset .. seed-offset+N-1)")
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--cells", default=None, help="comma-separated subset of the suite's cells "
                        "(table3: JAP,SCP1,SCP2,UWG; table4: ETTh2-6,ETTh2-12,ETTm2-6,ETTm2-12,Traffic-6,Traffic-12)")
    parser.add_argument("--runs-dir", default=None, help="where runs and checkpoints go (default runs/ablate/<suite>)")
    parser.add_argument("--out", default=None, help="report folder (default benchmarks/results/ablation_<suite>)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (1 is fastest on a busy CPU)")
    parser.add_argument("--budget", default="", help="budget line written into the report")
    parser.add_argument("--report-only", action="store_true", help="only aggregate existing runs")
    parser.add_argument("--dry-run", action="store_true", help="list the runs that would be trained")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides applied to every run")


def run(args: argparse.Namespace) -> int:
    suite = SUITES[args.suite]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    from ea_zoo.registry import list_attentions
    import ea_zoo  # noqa: F401  (registers the backends)

    unknown = [b for b in backends if b not in list_attentions()]
    if unknown:
        print(f"ea-zoo ablate: unknown backend(s) {unknown}; valid: {', '.join(list_attentions())}", file=sys.stderr)
        return 2
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    cells = [c.strip() for c in args.cells.split(",")] if args.cells else list(suite.cells)
    runs_dir = Path(args.runs_dir or Path("runs") / "ablate" / suite.name)
    out = Path(args.out or Path("benchmarks") / "results" / f"ablation_{suite.name}")
    if not args.report_only:
        status = run_grid(suite, backends, seeds, runs_dir, cells, args.overrides, args.threads, args.dry_run)
        _log("grid: " + ", ".join(f"{k} {len(v)}" for k, v in status.items()))
        if args.dry_run:
            return 0
    stats = collect(suite, backends, seeds, runs_dir, cells)
    paths = write_report(stats, suite, out, budget=args.budget, plot=not args.no_plot)
    print(paths["md"].read_text())
    _log("report: " + ", ".join(str(p) for p in paths.values()))
    return 0
