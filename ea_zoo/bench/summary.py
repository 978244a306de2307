"""``ea-zoo which-backend``: the "Which backend?" table, one row per backend.

Reads the result files under ``--results`` (default ``benchmarks/results``) and writes
``which_backend.md`` (and ``.json`` / ``.csv``) there:

* ``mqar_cpu/mqar.json`` -- MQAR accuracy on the trained (length, pairs) segment at the largest
  finished width (with its decode state), and the smallest decode state at which the backend
  reaches ``--recall-threshold`` (0.9) there;
* ``vit_fmnist_cpu/vit_fmnist.json`` -- Fashion-MNIST ViT test accuracy (mean ± std), time per
  training epoch and peak training memory (``--timing-only`` columns);
  ``vit_fmnist_cpu_10ep/vit_fmnist.json`` -- the same recipe trained longer (its accuracy column,
  headed with its epochs; a single seed is marked);
* ``charlm_cpu/charlm.json`` -- Tiny Shakespeare validation loss (mean ± std), training tokens/s,
  decode state and ms/token at the shortest and longest decode context;
* ``ablation_tables34/results.json`` (the combined ``ea-zoo ablate`` report; protocol P1, selection
  on a validation split), else ``ablation_table3/results.json`` / ``ablation_table4/results.json``
  (each with its ``other_backends/results.json``) -- the Tables 3-4 re-runs (accuracy; MAE); one
  source per table, so a table never mixes protocols.

A file that is missing leaves its columns at ``-`` and is listed under the table; every value
links to the markdown report it comes from (paths relative to ``--link-root``, default the
repository root where the README lives). The best value of each column is in bold.
Nothing here judges the numbers: the reading goes in the README, next to the table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["SOURCES", "build_table", "add_arguments", "run"]

#: key -> path under the results folder
SOURCES = {
    "mqar": "mqar_cpu/mqar.json",
    "vit": "vit_fmnist_cpu/vit_fmnist.json",
    "vit_long": "vit_fmnist_cpu_10ep/vit_fmnist.json",
    "charlm": "charlm_cpu/charlm.json",
}
#: Tables 3-4: (file groups; task; metric); inside a group the first value per backend and cell wins
#: groups of files, the first group with data is used alone (one protocol per table)
ABLATIONS = {
    "table3": ([["ablation_tables34/results.json"],
                ["ablation_table3/results.json", "ablation_table3/other_backends/results.json"]], "classification", "acc"),
    "table4": ([["ablation_tables34/results.json"],
                ["ablation_table4/results.json", "ablation_table4/other_backends/results.json"]], "forecasting", "MAE"),
}
#: protocol of the combined ablation file that is reported (P1: selection on a validation split)
PROTOCOL = "val"


def _load(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fin(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _bytes(n: Any) -> str:
    if not _fin(n):
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _pm(m: Any, s: Any, n: Any, digits: int = 3) -> str:
    if not _fin(m):
        return "-"
    out = f"{m:.{digits}f}"
    if _fin(s) and (n or 0) > 1:
        out += f" ± {s:.{digits}f}"
    return out


class _Col:
    """A column: header, per-backend (value for ranking, text), better direction, link."""

    def __init__(self, header: str, higher_better: Optional[bool], link: str) -> None:
        self.header, self.higher_better, self.link = header, higher_better, link
        self.cells: Dict[str, Tuple[Optional[float], str]] = {}

    def set(self, backend: str, value: Optional[float], text: str) -> None:
        self.cells[backend] = (value if _fin(value) else None, text)

    def render(self, backend: str) -> str:
        v, text = self.cells.get(backend, (None, "-"))
        if text == "-":
            return "-"
        best = None
        vals = [c[0] for c in self.cells.values() if c[0] is not None]
        if self.higher_better is not None and vals:
            best = max(vals) if self.higher_better else min(vals)
        cell = f"[{text}]({self.link})" if self.link else text
        return f"**{cell}**" if v is not None and best is not None and v == best and len(vals) > 1 else cell


def _rel(path: Path, link_root: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), link_root.resolve()).replace(os.sep, "/")
    except ValueError:
        return str(path)


def _ablation(results: Path, key: str) -> Tuple[Dict[str, Dict[str, Tuple]], List[str], List[str]]:
    """backend -> cell -> (mean, std, n); cells; files read. Rows of a combined file are kept
    when their ``task`` matches and their ``protocol`` (if any) is :data:`PROTOCOL`; rows of a
    per-table file (``suite`` table3 / table4) when the suite matches."""
    groups, task, metric = ABLATIONS[key]
    for group in groups:
        got = _ablation_group(results, key, group, task, metric)
        if got[2]:
            return got
    return {}, [], []


def _ablation_group(results: Path, key: str, group: List[str], task: str, metric: str):
    out: Dict[str, Dict[str, Tuple]] = {}
    cells: List[str] = []
    files = []
    for rel in group:
        d = _load(results / rel)
        if not d:
            continue
        used = False
        for r in d.get("rows", []):
            if r.get("metric") != metric or not _fin(r.get("mean")):
                continue
            if "task" in r and not str(r["task"]).startswith(task[:8]):
                continue
            if "suite" in r and r["suite"] != key:
                continue
            if r.get("protocol", PROTOCOL) != PROTOCOL:
                continue
            cell, b = r.get("paper_cell") or r.get("cell"), r.get("backend")
            if cell not in cells:
                cells.append(cell)
            out.setdefault(b, {}).setdefault(cell, (r["mean"], r.get("std"), r.get("n"), rel))
            used = True
        if used:
            files.append(rel)
    return out, cells, files


def build_table(results: Path, link_root: Path, recall_threshold: float = 0.9) -> Dict[str, Any]:
    """The table as ``{"headers", "rows", "backends", "missing", "columns"}``."""
    results = Path(results)
    cols: List[_Col] = []
    backends: List[str] = []
    missing: List[str] = []

    def add_backend(b: str) -> None:
        if b not in backends:
            backends.append(b)

    def md_link(key: str) -> str:
        return _rel((results / SOURCES[key]).with_suffix(".md"), link_root)

    # MQAR
    mq = _load(results / SOURCES["mqar"])
    if mq:
        # the report's headline: accuracy on the trained (length, pairs) segment when it is tested
        from ea_zoo.bench.mqar import headline_metric

        cfg = mq.get("config") or {}
        seg, what = headline_metric(cfg) if cfg.get("train") and cfg.get("test") else ("test_acc", "test accuracy")
        best = [r for r in mq.get("results", []) if r.get("kind") == "best" and _fin(r.get("test_acc"))]
        if not all(_fin(r.get(seg)) for r in best):
            seg, what = "test_acc", "test accuracy"
        what = what.replace("test accuracy", "acc")
        widths = sorted({r["width"] for r in best})
        # the report's fixed width (every backend is run there first), else the largest finished one
        width = cfg.get("fixed_width") if cfg.get("fixed_width") in widths else (widths[-1] if widths else None)
        c1 = _Col(f"MQAR {what} @ width {width} (state)", True, md_link("mqar"))
        c2 = _Col(f"MQAR: smallest state with {what} >= {recall_threshold:g}", False, md_link("mqar"))

        def sweep(r: Dict[str, Any]) -> str:
            """'' for a finished lr sweep, else '; k/n lrs' (the best of the learning rates run so far)."""
            done, n = r.get("lrs_done"), r.get("lrs")
            return f"; {done}/{n} lrs" if done is not None and n is not None and done < n else ""

        for r in best:
            add_backend(r["backend"])
            if r["width"] == width:
                c1.set(r["backend"], r[seg], f"{r[seg]:.3f} ({_bytes(r.get('state_bytes'))}{sweep(r)})")
        for b in backends:
            ok = [r for r in best if r["backend"] == b and r[seg] >= recall_threshold and _fin(r.get("state_bytes"))]
            if ok:
                r = min(ok, key=lambda x: x["state_bytes"])
                c2.set(b, r["state_bytes"], f"{_bytes(r['state_bytes'])} (w{r['width']}{sweep(r)})")
            elif any(r["backend"] == b for r in best):
                c2.set(b, None, "not reached")
        cols += [c1, c2]
    else:
        missing.append(SOURCES["mqar"])
    # ViT: the preset's report, and the same recipe trained longer; timing from the first
    vit_time = vit_mem = None
    for key in ("vit", "vit_long"):
        vit = _load(results / SOURCES[key])
        if not vit:
            missing.append(SOURCES[key])
            continue
        epochs = (vit.get("config") or {}).get("epochs")
        c = _Col("Fashion-MNIST ViT test acc" + (f", {epochs} epochs" if epochs else ""), True, md_link(key))
        timed = vit_time is None
        if timed:
            vit_time = _Col("ViT s / epoch (CPU)", False, md_link(key))
            vit_mem = _Col("ViT peak train memory", False, md_link(key))
        for r in vit.get("results", []):
            add_backend(r["backend"])
            if _fin(r.get("test_acc_mean")):
                n = r.get("n_seeds")
                text = _pm(r["test_acc_mean"], r.get("test_acc_std"), n, 4) + (" (1 seed)" if n == 1 else "")
                c.set(r["backend"], r["test_acc_mean"], text)
            if timed and _fin(r.get("epoch_s")):
                vit_time.set(r["backend"], r["epoch_s"], f"{r['epoch_s']:.1f}")
            if timed and _fin(r.get("peak_memory_bytes")):
                vit_mem.set(r["backend"], r["peak_memory_bytes"], _bytes(r["peak_memory_bytes"]))
        cols.append(c)
    # char-LM
    lm = _load(results / SOURCES["charlm"])
    lm_cols: List[_Col] = []
    if lm:
        c = _Col("Tiny Shakespeare val loss", False, md_link("charlm"))
        ctxs = sorted(int(k.rsplit("_", 1)[1]) for k in (lm.get("results") or [{}])[0] if k.startswith("decode_ms_at_"))
        tok = _Col("char-LM train tokens/s (CPU)", True, md_link("charlm"))
        lo, hi = (ctxs[0], ctxs[-1]) if ctxs else (None, None)
        st = _Col(f"decode state @ {hi}", False, md_link("charlm"))
        ms = _Col(f"decode ms/token @ {lo} / {hi}", False, md_link("charlm"))
        for r in lm.get("results", []):
            b = r["backend"]
            add_backend(b)
            if _fin(r.get("val_loss_mean")):
                c.set(b, r["val_loss_mean"], _pm(r["val_loss_mean"], r.get("val_loss_std"), r.get("n_seeds")))
            if _fin(r.get("train_tokens_per_s")):
                tok.set(b, r["train_tokens_per_s"], f"{r['train_tokens_per_s']:.0f}")
            if hi is not None and _fin(r.get(f"state_bytes_at_{hi}")):
                st.set(b, r[f"state_bytes_at_{hi}"], _bytes(r[f"state_bytes_at_{hi}"]))
            if hi is not None and r.get(f"decode_skipped_at_{hi}"):
                lo_ms = r.get(f"decode_ms_at_{lo}")
                ms.set(b, None, (f"{lo_ms:.2f}" if _fin(lo_ms) else "-") + " / skipped (prefill too slow)")
            elif hi is not None and _fin(r.get(f"decode_ms_at_{hi}")):
                ms.set(b, r[f"decode_ms_at_{hi}"], f"{r.get(f'decode_ms_at_{lo}', float('nan')):.2f} / "
                                                   f"{r[f'decode_ms_at_{hi}']:.2f}")
        cols.append(c)
        lm_cols = [tok, st, ms]
    else:
        missing.append(SOURCES["charlm"])
    # Tables 3-4
    for key, digits, higher, name in (("table3", 3, True, "Table 3 acc"), ("table4", 2, False, "Table 4 MAE")):
        vals, cells, files = _ablation(results, key)
        if not files:
            missing.append(" or ".join(g[0] for g in ABLATIONS[key][0]))
            continue
        for b in vals:
            add_backend(b)
        c = _Col(f"{name} ({' / '.join(cells)})", None, _rel((results / files[0]).with_suffix(".md"), link_root))
        for b, per in vals.items():
            c.set(b, None, " / ".join(f"{per[x][0]:.{digits}f}" if x in per else "-" for x in cells))
        cols.append(c)
    cols += [x for x in (vit_time, vit_mem) if x is not None] + lm_cols
    # registry order first, then anything else (hybrids)
    try:
        from ea_zoo.bench.common import default_backends

        order = default_backends(False)
    except Exception:  # noqa: BLE001
        order = []
    backends.sort(key=lambda b: (order.index(b) if b in order else len(order), b))
    headers = ["backend", *[c.header for c in cols]]
    rows = [[b, *[c.render(b) for c in cols]] for b in backends]
    data = [{"backend": b, **{c.header: c.cells.get(b, (None, "-"))[1] for c in cols}} for b in backends]
    return {"headers": headers, "rows": rows, "backends": backends, "missing": missing, "data": data}


def render_markdown(t: Dict[str, Any], results: Path) -> str:
    from ea_zoo.analysis.report import markdown_table

    lines = ["# Which backend?", "",
             "One row per backend, from the result files of the benchmarks (`ea-zoo mqar`, `bench-vit`, `charlm`) "
             "and the Table 3-4 re-runs (`ea-zoo ablate`); each value links to its report. Bold: the best of a "
             "column (higher accuracy; lower loss, time, memory, state). Timing columns are CPU, one thread, "
             "measured by the tools' `--timing-only` mode. Built by `ea-zoo which-backend`.", "",
             markdown_table(t["headers"], t["rows"]), ""]
    if t["missing"]:
        lines += ["Not available yet (columns left out): " + ", ".join(f"`{results.name}/{m}`" for m in t["missing"]), ""]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="benchmarks/results", help="results folder (default benchmarks/results)")
    p.add_argument("--out", default=None, help="output folder (default: --results)")
    p.add_argument("--link-root", default=".", help="links are relative to this folder (default: the repository root, "
                                                    "where the README is)")
    p.add_argument("--recall-threshold", type=float, default=0.9, help="MQAR accuracy for the state-size column")


def run(args: argparse.Namespace) -> int:
    from ea_zoo.analysis.report import text_table, write_csv, write_json

    results = Path(args.results)
    out = Path(args.out) if args.out else results
    out.mkdir(parents=True, exist_ok=True)
    t = build_table(results, Path(args.link_root), args.recall_threshold)
    md = out / "which_backend.md"
    md.write_text(render_markdown(t, results))
    write_json(out / "which_backend.json", {"tool": "ea-zoo which-backend", "sources": SOURCES, "ablations": ABLATIONS,
                                            "missing": t["missing"], "results": t["data"]})
    write_csv(out / "which_backend.csv", t["data"])
    print(text_table(t["headers"], [[c.split("](")[0].lstrip("*[").rstrip("*") if "](" in c else c for c in r]
                                    for r in t["rows"]]))
    if t["missing"]:
        print("missing: " + ", ".join(t["missing"]))
    print(f"wrote {md}, which_backend.json, which_backend.csv")
    return 0
