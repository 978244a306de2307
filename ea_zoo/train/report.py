"""The ablation report: results.md / results.csv / results.json / results.png.

Input: the statistics of :func:`ea_zoo.train.ablate.collect_runs`. Layout of ``results.md``:

1. the machine(s) the runs ran on, threads per run and parallel jobs, total run time;
2. per task and protocol, a table (rows = backends, columns = cells titled by dataset) of
   mean ± sample std over seeds (``(n=k of m)`` when seeds are missing), best mean in bold, the
   paper's number in parentheses beside the paper's own cells only;
3. the paired verdicts (A - B per cell, same seeds, 95% t-interval, ahead / tied / behind);
4. per cell and protocol: dataset, experiment config, overrides, config hash (of the resolved
   config without backend and seed), budget;
5. per cell, protocol and backend: n seeds, final train loss / accuracy (or MAE) of the best
   checkpoint on the whole training split, best epoch, optimizer steps, wall seconds per run.

``results.csv`` has one row per cell x protocol x backend x metric (dataset, protocol, config
hash, overrides, n, mean, std, paper, status, seeds, values, run hashes); ``results.json`` is
the statistics as given (every run's summary included).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["write_report"]


def _fmt(x: Optional[float], metric: str) -> str:
    if x is None:
        return "-"
    if metric == "int":
        return f"{x:.0f}"
    return f"{x:.3f}" if metric.lower().startswith("acc") or abs(x) < 10 else f"{x:.2f}"


def _task_order(stats: Dict[str, Any]) -> List[str]:
    order = []
    for c in stats["cells"]:
        if c["task"] not in order:
            order.append(c["task"])
    return order


def _table(stats: Dict[str, Any], task: str, protocol: str, metrics: Sequence[str], with_paper: bool) -> List[str]:
    from ea_zoo.train.ablate import HIGHER_IS_BETTER

    rows = {(r["cell"], r["backend"], r["metric"]): r for r in stats["rows"]
            if r["task"] == task and r["protocol"] == protocol}
    cells = [c["cell"] for c in stats["cells"] if c["task"] == task and protocol in c["protocols"]]
    backends = [b for b in stats["backends"] if any((c, b, m) in rows for c in cells for m in metrics)]
    if not cells or not backends:
        return []
    head = ["backend"] + [f"{c} {m}" if len(metrics) > 1 else c for c in cells for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best: Dict[Tuple[str, str], float] = {}
    for c in cells:
        for m in metrics:
            ms = [rows[(c, b, m)]["mean"] for b in backends if rows.get((c, b, m)) and rows[(c, b, m)]["mean"] is not None]
            if len(ms) > 1:
                best[(c, m)] = max(ms) if HIGHER_IS_BETTER[task] else min(ms)
    for b in backends:
        out = [b]
        for c in cells:
            for m in metrics:
                r = rows.get((c, b, m))
                if r is None:
                    out.append("")
                    continue
                if r["mean"] is None:
                    out.append(r["status"])
                    continue
                s = _fmt(r["mean"], m) + (f" ± {_fmt(r['std'], m)}" if r["n"] > 1 else "")  # no std of one seed
                if best.get((c, m)) == r["mean"]:
                    s = f"**{s}**"
                if r["n"] != r["n_planned"]:
                    s += f" (n={r['n']} of {r['n_planned']})"
                if with_paper and r["paper"] is not None:
                    s += f" (paper {r['paper']:g})"
                out.append(s)
        lines.append("| " + " | ".join(out) + " |")
    return lines


def _machine_lines(stats: Dict[str, Any]) -> List[str]:
    out = []
    for m in stats.get("machines") or []:
        out.append(f"{m.get('cpu')} ({m.get('cpu_count')} CPUs), {m.get('platform')}, torch {m.get('torch')}, "
                   f"{m.get('torch_threads')} torch thread(s) per run"
                   + (f", full EA on CPU: {m['cpu_impl']}" if m.get("cpu_impl") else ""))
    return out


def write_report(stats: Dict[str, Any], out_dir: Path, budget: str = "", plot: bool = True, title: str = "",
                 command: str = "") -> Dict[str, Path]:
    """Write ``results.{md,csv,json,png}`` into ``out_dir``; returns their paths."""
    from ea_zoo.train.ablate import PROTOCOL_SHORT, PROTOCOLS, TASK_EXTRA_METRICS, TASK_METRICS, TASK_TITLES

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"results.{k}" for k in ("md", "csv", "json", "png")}
    lines = [f"# {title or 'Ablation'}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    ms = _machine_lines(stats)
    if ms:
        lines += ["Machine: " + "; ".join(ms) + f". Jobs side by side: {stats.get('jobs', 1)}. "
                  f"Total run time: {stats.get('wall_seconds_total', 0) / 3600:.2f} h over {len(stats['runs'])} runs.", ""]
    lines += ["Mean ± sample std over seeds; best mean per column in bold; the paper's number (Feng 2025, Tables "
              "3-4) in parentheses beside the paper's own cells only.", ""]
    lines += [f"* **{PROTOCOL_SHORT[p]}** = {PROTOCOLS[p]}." for p in stats["protocols"]] + [""]
    if budget:
        lines += [f"Note: {budget}", ""]
    if stats.get("missing"):
        lines += [f"* {c}: data not present ({why})" for c, why in stats["missing"].items()] + [""]
    for task in _task_order(stats):
        for protocol in stats["protocols"]:
            t = _table(stats, task, protocol, list(TASK_METRICS[task]), with_paper=True)
            if not t:
                continue
            lines += [f"## {TASK_TITLES[task]}; {PROTOCOL_SHORT[protocol]}", ""] + t + [""]
            extra = TASK_EXTRA_METRICS.get(task)
            if extra:
                e = _table(stats, task, protocol, list(extra), with_paper=False)
                if e:
                    lines += [f"On the train-fitted standard scale ({', '.join(extra)}; the scale TSL reports):", ""]
                    lines += e + [""]
    if stats.get("verdicts"):
        a, b = stats["compare"]
        lines += [f"## Is {a} >= {b}? Paired differences per cell", "",
                  f"d = {a} - {b} on the same seeds (for errors {b} - {a}), so d > 0 means {a} is better; 95% "
                  "Student-t interval over seeds; verdict ahead (interval above 0), tied (contains 0), behind "
                  "(below 0). With few seeds the interval is wide, or of zero width when every seed gave the same "
                  "difference (accuracies move in steps of one test case): read n beside the verdict.", "",
                  "| cell | protocol | metric | n | mean d | 95% interval | verdict |", "|---|---|---|---|---|---|---|"]
        for v in stats["verdicts"]:
            ci = "-" if v["lo"] is None else f"[{v['lo']:+.4f}, {v['hi']:+.4f}]"
            md = "-" if v["mean"] is None else f"{v['mean']:+.4f}"
            lines.append(f"| {v['cell']} | {PROTOCOL_SHORT[v['protocol']]} | {v['metric']} | {v['n']} | {md} | {ci} | "
                         f"**{v['verdict']}** |")
        lines.append("")
    lines += ["## Cells", "", "| cell | dataset | protocol | config | overrides | config hash | paper column | budget |",
              "|---|---|---|---|---|---|---|---|"]
    for c in stats["cells"]:
        for p, info in c["protocols"].items():
            ov = " ".join(f"`{o}`" for o in info["overrides"]) or "-"
            lines.append(f"| {c['cell']} | {c['dataset']} | {PROTOCOL_SHORT[p]} | {info['config']} | {ov} | "
                         f"{info['config_hash']} | {c['paper'] or '-'} | {info['budget']} |")
    lines.append("")
    done = [r for r in stats["rows"] if r["status"] == "ok" and r["metric"] == next(iter(TASK_METRICS[r["task"]]))]
    if done:
        lines += ["## Fit and cost per run (means over seeds)", "",
                  "Train loss / accuracy (or MAE, scaled) of the best checkpoint on the whole training split, "
                  "eval mode; best epoch; optimizer steps run; wall seconds per run.", "",
                  "| cell | protocol | backend | n | train loss | train acc / MAE | best epoch | steps | wall s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in done:
            fit = r.get("train_acc_mean") if r["task"] != "forecasting" else r.get("train_mae_mean")
            lines.append(f"| {r['cell']} | {PROTOCOL_SHORT[r['protocol']]} | {r['backend']} | {r['n']} | "
                         f"{_fmt(r.get('train_loss_mean'), 'x')} | {_fmt(fit, 'acc')} | "
                         f"{_fmt(r.get('best_epoch_mean'), 'int')} | {_fmt(r.get('steps_mean'), 'int')} | "
                         f"{_fmt(r.get('wall_seconds_mean'), 'int')} |")
        lines.append("")
    paths["md"].write_text("\n".join(lines) + "\n")

    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "dataset", "task", "protocol", "backend", "metric", "n", "mean", "std", "paper", "status",
                    "seeds", "values", "config_hash", "run_hashes", "overrides", "train_loss", "train_acc", "train_mae",
                    "best_epoch", "steps", "wall_seconds"])
        for r in stats["rows"]:
            def g(k: str) -> str:
                v = r.get(k)
                return "" if v is None else f"{v:.6g}"

            w.writerow([r["cell"], r["dataset"], r["task"], r["protocol"], r["backend"], r["metric"], r["n"],
                        g("mean"), g("std"), "" if r["paper"] is None else r["paper"], r["status"],
                        " ".join(map(str, r["seeds"])), " ".join(f"{v:.6g}" for v in r["values"]), r["config_hash"],
                        " ".join(r["run_hashes"]), " ".join(r["overrides"]), g("train_loss_mean"), g("train_acc_mean"),
                        g("train_mae_mean"), g("best_epoch_mean"), g("steps_mean"), g("wall_seconds_mean")])
    paths["json"].write_text(json.dumps({**stats, "budget": budget, "title": title, "command": command}, indent=2,
                                        default=str))
    if plot and stats["rows"]:
        _plot(stats, paths["png"], title)
    else:
        paths.pop("png")
        if (out_dir / "results.png").exists() and not stats["rows"]:
            (out_dir / "results.png").unlink()
    return paths


def _plot(stats: Dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ea_zoo.train.ablate import HIGHER_IS_BETTER, PROTOCOL_SHORT, TASK_METRICS

    panels = [(task, m) for task in _task_order(stats) for m in TASK_METRICS[task]]
    protocols = stats["protocols"]
    ncell = max(1, max(sum(1 for c in stats["cells"] if c["task"] == t) for t, _ in panels))
    fig, axes = plt.subplots(len(panels), len(protocols), squeeze=False,
                             figsize=(max(5.0, 1.3 * ncell + 2) * len(protocols), 3.2 * len(panels) + 0.6))
    for i, (task, m) in enumerate(panels):
        for j, protocol in enumerate(protocols):
            ax = axes[i][j]
            rows = {(r["cell"], r["backend"]): r for r in stats["rows"]
                    if r["task"] == task and r["protocol"] == protocol and r["metric"] == m}
            cells = [c["cell"] for c in stats["cells"] if c["task"] == task and protocol in c["protocols"]]
            backends = [b for b in stats["backends"] if any((c, b) in rows for c in cells)]
            width = 0.8 / max(1, len(backends))
            vals = []
            for k, b in enumerate(backends):
                xs, ys, es, px, py = [], [], [], [], []
                for jj, c in enumerate(cells):
                    r = rows.get((c, b))
                    if r and r["mean"] is not None:
                        x = jj + (k - (len(backends) - 1) / 2) * width
                        xs.append(x)
                        ys.append(r["mean"])
                        es.append(r["std"])
                        vals.append(r["mean"])
                        if r["paper"] is not None:  # paper markers on the paper's own cells only
                            px.append(x)
                            py.append(r["paper"])
                            vals.append(r["paper"])
                ax.bar(xs, ys, width, yerr=es, capsize=3, label=b)
                if px:
                    ax.scatter(px, py, marker="x", color="black", zorder=3, s=30, label="paper")
            ax.set_xticks(range(len(cells)))
            ax.set_xticklabels(cells, fontsize=8, rotation=15 if len(cells) > 4 else 0)
            ax.set_xlim(-0.5, max(0.5, len(cells) - 0.5))
            ax.set_ylabel(m)
            ax.set_title(PROTOCOL_SHORT[protocol], fontsize=9)
            if HIGHER_IS_BETTER[task] and vals:
                ax.set_ylim(max(0.0, min(vals) - 0.1), min(1.0, max(vals) + 0.05))
            lo, hi = ax.get_ylim()
            for jj, c in enumerate(cells):
                if all(rows.get((c, b), {}).get("mean") is None for b in backends):
                    status = next((rows[(c, b)]["status"] for b in backends if (c, b) in rows), "not run")
                    ax.text(jj, lo + 0.5 * (hi - lo), status, ha="center", va="center", rotation=90, fontsize=8,
                            color="gray")
            ax.grid(axis="y", alpha=0.3)
            handles, labels = ax.get_legend_handles_labels()
            uniq = dict(zip(labels, handles))
            if uniq:
                ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="best")
    fig.suptitle(title or "Ablation", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
