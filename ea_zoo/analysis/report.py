"""Writers shared by the cost tools: environment record, JSON, CSV, markdown, console tables.

Every tool writes into its ``--out`` folder:

* ``<name>.json`` -- ``{"tool", "environment", "config", "results", ...}``; the environment
  holds the device name, library versions, dtype and the date.
* ``<name>.csv`` -- one row per measurement (flat).
* ``<name>.md`` -- the printed tables, in markdown.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch

__all__ = [
    "environment",
    "device_name",
    "git_commit",
    "package_version",
    "write_json",
    "write_csv",
    "write_markdown",
    "markdown_table",
    "text_table",
    "fmt_num",
    "fmt_bytes",
    "prepare_out",
]


def device_name(device: torch.device | str) -> str:
    """A readable name: the GPU model on CUDA, the CPU model (and cores) on CPU."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


def package_version(mod: str) -> Optional[str]:
    """The installed version of distribution ``mod`` (None if it is not installed)."""
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001
        return None


def git_commit() -> Optional[str]:
    """The commit of the code that runs: ``$EA_ZOO_GIT_COMMIT`` if set (for runs from a copy of
    the package outside the checkout), else ``git rev-parse --short HEAD`` of the checkout
    holding this file, with ``+dirty`` when its tracked files under ``ea_zoo/`` differ from
    HEAD; None outside a git checkout."""
    pinned = os.environ.get("EA_ZOO_GIT_COMMIT")
    if pinned:
        return pinned
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "ea_zoo"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:  # noqa: BLE001
        return None


def environment(device: torch.device | str, dtype: Any = None, **extra: Any) -> Dict[str, Any]:
    """Device, versions, dtype and date of a run, for the JSON output."""
    dev = torch.device(device)
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(dev),
        "device_name": device_name(dev),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "ea_zoo": package_version("ea-zoo"),
        "fvcore": package_version("fvcore"),
        "numpy": package_version("numpy"),
        "matplotlib": package_version("matplotlib"),
        "git_commit": git_commit(),
        "torch_threads": torch.get_num_threads(),
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(dev)
        env["gpu_memory_bytes"] = int(props.total_memory)
    env.update(extra)
    return env


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except Exception:  # noqa: BLE001
            pass
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def prepare_out(path: str | os.PathLike) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: str | os.PathLike, payload: Dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (NaN/inf become null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(payload), indent=1) + "\n")
    return path


def write_csv(path: str | os.PathLike, rows: Sequence[Dict[str, Any]], columns: Optional[List[str]] = None) -> Path:
    """Write dict rows as CSV; columns are the union of keys in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = []
        for r in rows:
            for k in r:
                if k not in columns:
                    columns.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_cell(r.get(k)) for k in columns})
    return path


def _csv_cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(v)
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(_jsonable(v))
    return "" if v is None else v


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-markdown table."""
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(esc(c) for c in r) + " |")
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A fixed-width console table."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [len(str(h)) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), sep] + [fmt(r) for r in rows])


def write_markdown(path: str | os.PathLike, title: str, sections: Sequence[tuple], env: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``# title``, an environment line, then ``(heading, body)`` sections."""
    path = Path(path)
    parts = [f"# {title}", ""]
    if env:
        parts += [
            f"Device: {env.get('device_name')} ({env.get('device')}); dtype {env.get('dtype')}; "
            f"torch {env.get('torch')}; fvcore {env.get('fvcore')}; date {env.get('date')}"
            + (f"; commit {env['git_commit']}" if env.get("git_commit") else ""),
            "",
        ]
    for heading, body in sections:
        if heading:
            parts += [f"## {heading}", ""]
        parts += [body.rstrip(), ""]
    path.write_text("\n".join(parts))
    return path


def fmt_num(x: Any, digits: int = 3) -> str:
    """Compact number: 1.23e+09 style for big/small values, '-' for missing."""
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "-"
    if isinstance(x, int) and abs(x) < 100000:
        return str(x)
    x = float(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-2):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def fmt_bytes(n: Any) -> str:
    """Bytes as B / KiB / MiB / GiB."""
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
