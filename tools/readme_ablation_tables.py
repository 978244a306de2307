#!/usr/bin/env python3
"""Rebuild the README's Tables 3-4 (the re-run with step budgets) from an ablation report.

    python tools/readme_ablation_tables.py [--results benchmarks/results/ablation_tables34/results.json]
        [--readme README.md] [--check]

Each table is the first block of ``|`` lines after its marker line in the README (see MARKERS);
the tool replaces those blocks in place (``--check``: print them and exit 1 if the README differs).
Cells: ``mean ± std`` over seeds, ``(k/n seeds)`` when fewer than planned finished, the best
per column in bold (highest accuracy, lowest error, compared as printed), the paper's number
beside the paper's own cells, ``not run`` where no seed finished.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
MARKERS = {
    "table3": "Table 3, test accuracy (non-causal encoder), 5 seeds",
    "table4_val": "Table 4, P1 (selection on the TSL validation period)",
    "table4_test": "Table 4, P2 (the epoch selected on the test windows",
}
UEA_CELLS = ("JAP", "UWG", "SCP1")
ETT_CELLS = ("ETTh2-6", "ETTh2-12", "ETTm2-6", "ETTm2-12")
PROTOCOL_NAMES = {"val": "P1", "test": "P2"}


def _cell_text(row: Optional[dict]) -> Tuple[str, Optional[str]]:
    """(mean ± std [k/n seeds], paper suffix) of one row; ('not run', None) without a finished seed."""
    if row is None or not row.get("n"):
        return "not run", None
    s = f"{row['mean']:.3f}" + (f" ± {row['std']:.3f}" if row.get("std") is not None and row["n"] > 1 else "")
    if row["n"] < row.get("n_planned", row["n"]):
        s += f" ({row['n']}/{row['n_planned']} seeds)"
    paper = f" (paper {row['paper']:g})" if row.get("paper") is not None else None
    return s, paper


def _table(rows: Dict[Tuple[str, str, str, str], dict], backends: Sequence[str],
           columns: Sequence[Tuple[str, str, str, str]], higher_is_better: bool) -> List[str]:
    """Markdown lines: one row per backend, one column per (paper cell, protocol, metric, title)."""
    best: Dict[int, float] = {}
    for j, (cell, protocol, metric, _) in enumerate(columns):
        vals = [round(r["mean"], 3) for b in backends if (r := rows.get((cell, protocol, metric, b))) and r.get("n")]
        if vals:
            best[j] = max(vals) if higher_is_better else min(vals)
    out = ["| backend | " + " | ".join(c[3] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for b in backends:
        cells = []
        for j, (cell, protocol, metric, _) in enumerate(columns):
            r = rows.get((cell, protocol, metric, b))
            text, paper = _cell_text(r)
            if r is not None and r.get("n") and round(r["mean"], 3) == best.get(j):
                text = f"**{text}**"
            cells.append(text + (paper or ""))
        out.append(f"| {b} | " + " | ".join(cells) + " |")
    return out


def build_tables(report: dict) -> Dict[str, List[str]]:
    rows = {(r["paper_cell"] or r["cell"], r["protocol"], r["metric"], r["backend"]): r for r in report["rows"]}
    backends = list(report["backends"])
    t3 = [(c, p, "acc", f"{c}, {PROTOCOL_NAMES[p]}") for c in UEA_CELLS for p in ("val", "test")]

    def ett(protocol):
        return [(c, protocol, m, f"{c} {m}") for c in ETT_CELLS for m in ("MAE", "RMSE")]

    ran_test = [b for b in backends if any(rows.get((c, "test", "MAE", b), {}).get("n") for c in ETT_CELLS)]
    return {"table3": _table(rows, backends, t3, True),
            "table4_val": _table(rows, backends, ett("val"), False),
            "table4_test": _table(rows, ran_test, ett("test"), False)}


def replace_tables(readme: str, tables: Dict[str, List[str]]) -> str:
    lines = readme.split("\n")
    for key, marker in MARKERS.items():
        at = next((i for i, line in enumerate(lines) if line.startswith(marker)), None)
        if at is None:
            raise SystemExit(f"readme_ablation_tables: marker {marker!r} not found in the README")
        start = next(i for i in range(at, len(lines)) if lines[i].startswith("|"))
        end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
        lines[start:end] = tables[key]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(ROOT / "benchmarks/results/ablation_tables34/results.json"))
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--check", action="store_true", help="print the tables; exit 1 if the README differs")
    a = p.parse_args(argv)
    tables = build_tables(json.loads(Path(a.results).read_text()))
    old = Path(a.readme).read_text()
    new = replace_tables(old, tables)
    if a.check:
        print("\n\n".join("\n".join(t) for t in tables.values()))
        return int(new != old)
    Path(a.readme).write_text(new)
    print(f"{a.readme}: {'updated' if new != old else 'unchanged'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
