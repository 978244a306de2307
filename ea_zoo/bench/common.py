"""Shared pieces of the benchmark tools (``ea-zoo mqar``, ``bench-vit``, ``charlm``).

* **Backends**: :func:`default_backends` lists every registered backend
  (``ea_zoo.list_attentions()``), an alias that only restates a backend's defaults dropped
  (``ea_series`` = ``ea6``); :func:`parse_backends` reads ``--backends`` (comma-separated; each
  entry goes to ``attention=`` unchanged, so a hybrid spec such as ``ea6+sa@1`` is one more
  backend, labelled ``parse_attention(spec).label``).
* **Runs**: every run of a grid is a :class:`ea_zoo.train.runs.RunStore` entry keyed by its
  fully resolved config, so a grid resumes where it stopped and a changed setting is a new
  run. :func:`run_jobs` runs the missing ones, in this process or ``--jobs N`` single-thread
  worker processes side by side, with a progress bar; each result records the final train
  loss (where there is one), wall time, device, torch/timm versions, date and git commit.
  ``--cpu-impl compiled`` runs full EA's torch.compile-fused CPU path
  (:func:`ea_zoo.kernels.set_cpu_impl`); the math is the same, so it is recorded in each
  result (``cpu_impl``) but is not part of a run's key, and :func:`cpu_impl_note` names the
  runs that used it in a report.
* **Training helpers**: AdamW with weight decay on matrices only, linear warm-up + cosine
  schedule, mean ± sample std.
* **Outputs**: JSON (environment, config, rows), CSV (rows), markdown (tables) and PNG
  (matplotlib, Agg) in ``--out``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as _dt
import importlib
import inspect
import math
import multiprocessing
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = [
    "DEFAULT_THREADS", "Job", "default_backends", "parse_backends", "backend_label", "parse_seeds",
    "add_grid_arguments", "run_record", "environment", "run_jobs", "make_adamw", "lr_at", "mean_std",
    "write_outputs", "fmt_pm", "plt", "cpu_impl_note",
]

#: torch threads of one run (``--threads``): one keeps two side-by-side runs off each other's core
DEFAULT_THREADS = 1


# ----------------------------------------------------------------------------- backends
def _defaults_of(cls: type) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.name in ("self", "dim") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is not inspect.Parameter.empty:
                out.setdefault(p.name, p.default)
    return out


def default_backends(causal: bool = False) -> List[str]:
    """Every backend of ``ea_zoo.list_attentions()`` that applies (``causal``: those with a
    causal form), sorted as the registry lists them; a name whose resolved class and options
    (defaults filled in) equal another entry's is dropped in favour of the alias that names
    them (``ea_series`` = ``ea6``)."""
    from ea_zoo import registry  # importing ea_zoo registers the backends
    list_attentions, resolve_attention = registry.list_attentions, registry.resolve_attention

    names = list_attentions()
    keyed: Dict[str, Tuple[type, Tuple]] = {}
    for n in names:
        cls, opts = resolve_attention(n)
        if causal and getattr(cls, "supports_causal", True) is False:
            continue
        full = {**_defaults_of(cls), **opts}
        keyed[n] = (cls, tuple(sorted((k, repr(v)) for k, v in full.items())))
    aliases = set(list_attentions()) - set(list_attentions(include_aliases=False))
    out = []
    for n, key in keyed.items():
        twins = [m for m, k2 in keyed.items() if m != n and k2 == key]
        if twins and n not in aliases and any(m in aliases for m in twins):
            continue  # a base name restating an alias
        out.append(n)
    return out


def _parse_attention():
    try:
        from ea_zoo.registry import parse_attention
    except ImportError:
        return None
    return parse_attention


def backend_label(spec: Any) -> str:
    """``parse_attention(spec).label`` where the registry has it, else the spec itself."""
    pa = _parse_attention()
    if pa is not None:
        try:
            return str(pa(spec).label)
        except Exception:  # noqa: BLE001
            pass
    return str(spec)


def check_backend(spec: str) -> None:
    """Raise a ValueError naming the valid backends if ``spec`` is not a backend spec."""
    from ea_zoo import registry  # importing ea_zoo registers the backends
    list_attentions, resolve_attention = registry.list_attentions, registry.resolve_attention

    pa = _parse_attention()
    try:
        if pa is not None:
            pa(spec)
        else:
            resolve_attention(spec)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"--backends: {spec!r} is not a backend spec ({e}); valid names: "
                         f"{', '.join(list_attentions())}") from None


def parse_backends(text: Optional[str], causal: bool = False) -> List[str]:
    """``--backends``: comma-separated specs (``None``/``all``: :func:`default_backends`).

    Each entry is passed to ``attention=`` unchanged; specs with commas inside are kept whole:
    a hybrid's layer list (``ea6+sa@1,3``) and a JSON config (``{"name": "aft_local", "window": 16}``).
    """
    if text is None or text.strip() in ("", "all"):
        return default_backends(causal)
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += (ch in "{[") - (ch in "}]")
        if ch == "," and depth <= 0:  # commas inside a JSON config do not split
            pieces.append(text[start:i].strip())
            start = i + 1
    out: List[str] = []
    for p in filter(None, pieces):
        if out and p[0].isdigit():  # "ea6+sa@1,3": layer list continues
            out[-1] = out[-1] + "," + p
        else:
            out.append(p)
    for s in out:
        check_backend(s)
    if len(set(out)) != len(out):
        raise ValueError(f"--backends lists a backend twice: {text!r}")
    return out


def parse_seeds(text: Any) -> List[int]:
    """``--seeds``: ``N`` = seeds 0..N-1; ``a,b,c`` = those seeds."""
    if isinstance(text, int):
        return list(range(text))
    s = str(text).strip()
    if "," in s:
        seeds = [int(v) for v in s.split(",") if v.strip()]
    else:
        n = int(s)
        if n < 1:
            raise ValueError(f"--seeds must be a count >= 1 or a comma-separated list, got {text!r}")
        seeds = list(range(n))
    if not seeds or any(v < 0 for v in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: need distinct seeds >= 0, got {text!r}")
    return seeds


# ----------------------------------------------------------------------------- CLI
def add_grid_arguments(p: argparse.ArgumentParser, presets: Mapping[str, Any], default_preset: str,
                       default_out: str, timing: bool = True) -> None:
    """The options every benchmark tool shares."""
    p.add_argument("--preset", choices=sorted(presets), default=default_preset,
                   help=f"sizes of the grid (default {default_preset}); " +
                        "; ".join(f"{k}: {v.get('about', '')}" for k, v in presets.items()))
    p.add_argument("--backends", default=None,
                   help="comma-separated attention specs passed to attention= unchanged (default: every "
                        "registered backend that applies; a hybrid such as ea6+sa@1 is one more entry)")
    p.add_argument("--seeds", default=None, help="N (seeds 0..N-1) or a comma-separated list (default: the preset's)")
    p.add_argument("--out", default=default_out, help=f"results folder (default {default_out})")
    p.add_argument("--runs-dir", default=None,
                   help="RunStore folder of the per-run config/result JSON (default: <out>/runs)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs side by side in worker processes, --threads torch threads each (default 1)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"torch intra-op threads per run (default {DEFAULT_THREADS})")
    from ea_zoo.kernels import CPU_IMPLS

    p.add_argument("--cpu-impl", choices=CPU_IMPLS, default="reference",
                   help="how full EA (ea) runs on CPU: reference (eager PyTorch) or compiled (torch.compile-fused, "
                        "same math, ~3x faster after a compile per shape); recorded per run, not part of its key "
                        "(default reference)")
    p.add_argument("--max-runs", type=int, default=None, help="run at most this many missing runs, then report")
    p.add_argument("--dry-run", action="store_true", help="list the runs (done / to do) and exit")
    p.add_argument("--report-only", action="store_true", help="write the report from the stored runs; train nothing")
    if timing:
        p.add_argument("--timing-only", action="store_true",
                       help="measure only the timing columns (one run at a time; use an otherwise idle machine)")
    p.add_argument("--force", action="store_true", help="redo runs that already have a stored result")
    p.add_argument("--restore-from", action="append", default=[], metavar="REPORT_JSON",
                   help="re-create finished runs from a committed report (its JSON or folder) before running: "
                        "runs whose resolved config matches are not rerun (repeatable; tools with per-run rows)")
    p.add_argument("--data-root", default=None, help="data root (default: $EA_ZOO_DATA, else ../shared/data)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# ----------------------------------------------------------------------------- environment
def environment(device: Any = "cpu", **extra: Any) -> Dict[str, Any]:
    """Device, versions, date and git commit (ea_zoo.analysis.report's record plus timm)."""
    from ea_zoo.analysis import report

    env = report.environment(device, torch.float32)
    env["timm"] = report.package_version("timm")
    env.update(extra)
    return env


def run_record(device: Any, wall_s: float) -> Dict[str, Any]:
    """What every stored result carries besides its metrics."""
    from ea_zoo.analysis import report
    from ea_zoo.kernels import cpu_impl

    dev = torch.device(device)
    return {
        "wall_s": float(wall_s),
        "device": str(dev),
        "device_name": report.device_name(dev),
        "torch_threads": torch.get_num_threads(),
        "cpu_impl": cpu_impl(),
        "torch": torch.__version__,
        "timm": report.package_version("timm"),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": report.git_commit(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# ----------------------------------------------------------------------------- running a grid
@dataclass
class Job:
    """One run: its resolved config (the RunStore key) and a folder label."""

    cfg: Dict[str, Any]
    label: str
    meta: Dict[str, Any] = field(default_factory=dict)


def _call(fn_path: str, cfg: Dict[str, Any], run_dir: Path, progress: bool) -> Dict[str, Any]:
    mod, _, name = fn_path.partition(":")
    fn = getattr(importlib.import_module(mod), name)
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn(cfg, run_dir, progress)
    rec = run_record(cfg.get("device", "cpu"), time.perf_counter() - t0)
    rec["cpu_s"] = time.process_time() - c0  # CPU seconds of this process (the budget's unit)
    return {**rec, **result}


def _worker_init(threads: int, cpu_impl: str = "reference") -> None:
    from ea_zoo.kernels import set_cpu_impl

    torch.set_num_threads(max(1, int(threads)))
    set_cpu_impl(cpu_impl)


def _worker(fn_path: str, cfg: Dict[str, Any], label: str, store_root: str) -> Tuple[str, Optional[Dict], str]:
    from ea_zoo.train.runs import RunStore

    store = RunStore(store_root)
    try:
        run_dir = store.start(cfg, label)
        result = _call(fn_path, cfg, run_dir, False)
        store.save(cfg, result, label)
        return label, result, ""
    except Exception:  # noqa: BLE001
        return label, None, traceback.format_exc()


def run_jobs(jobs: Sequence[Job], fn_path: str, store_root: os.PathLike, n_jobs: int = 1,
             threads: int = DEFAULT_THREADS, desc: str = "runs", quiet: bool = False, force: bool = False,
             max_runs: Optional[int] = None, log: Callable[[str], None] = print,
             cpu_impl: str = "reference") -> Dict[str, List[str]]:
    """Run every job without a stored result (all with ``force``) through ``fn_path``
    (``"module:function"``, called as ``fn(cfg, run_dir, progress) -> result dict``), saving
    each result in ``RunStore(store_root)``. A failing run is reported and left without a
    result (rerun retries it). ``cpu_impl``: :func:`ea_zoo.kernels.set_cpu_impl` for the runs
    (restored afterwards in this process). Returns ``{"done", "ran", "failed"}`` label lists."""
    from tqdm.auto import tqdm

    from ea_zoo import kernels
    from ea_zoo.train.runs import RunStore

    if cpu_impl not in kernels.CPU_IMPLS:
        raise ValueError(f"cpu_impl must be one of {kernels.CPU_IMPLS}, got {cpu_impl!r}")

    store = RunStore(store_root)
    status: Dict[str, List[str]] = {"done": [], "ran": [], "failed": []}
    todo = []
    for j in jobs:
        if not force and store.load(j.cfg) is not None:
            status["done"].append(j.label)
        else:
            todo.append(j)
    if max_runs is not None:
        todo = todo[:max(0, max_runs)]
    if not todo:
        return status
    log(f"{desc}: {len(status['done'])} stored, {len(todo)} to run"
        + (f" ({n_jobs} side by side, {threads} thread(s) each)" if n_jobs > 1 else f" ({threads} thread(s))"))
    bar = tqdm(total=len(todo), desc=desc, disable=quiet, dynamic_ncols=True)

    def finish(label: str, result: Optional[Dict], err: str) -> None:
        if result is None:
            status["failed"].append(label)
            tqdm.write(f"{desc}: run {label} FAILED:\n{err}", file=sys.stderr)
        else:
            status["ran"].append(label)
            bar.set_postfix_str(f"{label} {result.get('wall_s', 0):.0f}s", refresh=False)
        bar.update(1)

    try:
        if n_jobs <= 1:
            old, old_impl = torch.get_num_threads(), kernels.cpu_impl()
            torch.set_num_threads(max(1, threads))
            kernels.set_cpu_impl(cpu_impl)
            try:
                for j in todo:
                    try:
                        d = store.start(j.cfg, j.label)
                        res = _call(fn_path, j.cfg, d, not quiet)
                        store.save(j.cfg, res, j.label)
                        finish(j.label, res, "")
                    except KeyboardInterrupt:
                        raise
                    except Exception:  # noqa: BLE001
                        finish(j.label, None, traceback.format_exc())
            finally:
                torch.set_num_threads(old)
                kernels.set_cpu_impl(old_impl)
        else:
            old_env = os.environ.get("OMP_NUM_THREADS")
            os.environ["OMP_NUM_THREADS"] = str(max(1, threads))
            ctx = multiprocessing.get_context("spawn")
            pool = cf.ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx, initializer=_worker_init,
                                          initargs=(threads, cpu_impl))
            try:
                futs = [pool.submit(_worker, fn_path, j.cfg, j.label, str(store_root)) for j in todo]
                for f in cf.as_completed(futs):
                    finish(*f.result())
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            finally:
                pool.shutdown(wait=True)
                if old_env is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = old_env
    finally:
        bar.close()
    return status


#: fields of a report's per-run row that name the run rather than hold its result
_ROW_IDENTITY = ("kind", "backend", "spec", "width", "lr", "seed", "status")


def _result_from_row(row: Mapping[str, Any]) -> Dict[str, Any]:
    """A report's per-run row back in the ``result.json`` layout (``test_<segment>`` columns
    -> ``test_segments``)."""
    if isinstance(row.get("result"), Mapping):  # a record of :func:`run_records`: the stored result as it was
        return dict(row["result"])
    res = {k: v for k, v in row.items() if k not in _ROW_IDENTITY}
    segs = {k[len("test_"):]: res.pop(k) for k in list(res) if k.startswith("test_L")}
    if segs:
        res["test_segments"] = segs
    return res


def restore_runs(jobs: Sequence[Job], store_root: os.PathLike, reports: Sequence[os.PathLike], tool: str,
                 rebuild: Optional[Callable[[Mapping[str, Any], Mapping[str, Any]], Optional[Dict[str, Any]]]] = None
                 ) -> Dict[str, int]:
    """Re-create finished runs of ``jobs`` in the store from committed reports (``<tool>.json``).

    A report row is matched to a planned job by config hash: the row's ``config_hash`` where it
    has one, else (reports written before rows carried it) the hash of the config that
    ``rebuild(report, row)`` reconstructs from the report's own ``config`` block and the row's
    identity (backend spec, width, lr, seed). Only a job whose resolved config is identical is
    restored; a run already stored is kept. The restored ``result.json`` carries
    ``restored_from``. Raises ValueError naming the file if it is unreadable or another tool's.
    Returns counts: restored, present (already stored), rows (finished runs read)."""
    from ea_zoo.train.runs import RunStore, config_hash, read_report

    by_hash = {config_hash(j.cfg): j for j in jobs}
    store = RunStore(store_root)
    restored = present = n_rows = 0
    for path in reports:
        path = Path(path)
        if path.is_dir():
            path = path / f"{tool}.json"
        report = read_report(path, f"the {tool}.json of a committed {tool} report (e.g. benchmarks/results/{tool}_cpu)")
        if report.get("tool") != f"ea-zoo {tool}" or not isinstance(report.get("results"), list):
            raise ValueError(f"--restore-from {path}: not a {tool} report (tool {report.get('tool')!r}); give the "
                             f"{tool}.json written by ea-zoo {tool}")
        for row in [*report["results"], *(report.get("runs") or [])]:
            if not isinstance(row, dict) or row.get("kind") != "run" or row.get("status") != "ok":
                continue
            n_rows += 1
            h = row.get("config_hash")
            if h is None and rebuild is not None:
                cfg = rebuild(report, row)
                h = config_hash(cfg) if cfg is not None else None
            job = by_hash.get(h)
            if job is None:
                continue
            if store.restore(job.cfg, _result_from_row(row), str(path), job.label):
                restored += 1
            else:
                present += 1
    return {"restored": restored, "present": present, "rows": n_rows}


def run_records(jobs: Sequence[Job], store: Any) -> List[Dict[str, Any]]:
    """Every stored run of ``jobs`` as ``{"kind": "run", "label", <meta>, "config_hash", "status",
    "result"}`` (the ``runs`` list of a report's JSON, from which :func:`restore_runs` re-creates
    the store on a fresh clone)."""
    from ea_zoo.train.runs import config_hash

    out = []
    for j in jobs:
        r = store.load(j.cfg)
        if r is not None:
            out.append({"kind": "run", "label": j.label, **j.meta, "spec": j.meta.get("backend"),
                        "config_hash": config_hash(j.cfg), "status": "ok", "result": r})
    return out


def cpu_impl_note(results: Iterable[Tuple[str, Optional[Mapping[str, Any]]]]) -> str:
    """A report sentence naming the runs (``(label, stored result)``) that ran full EA with
    ``cpu_impl`` other than the reference ("" when none did)."""
    by_impl: Dict[str, List[str]] = {}
    for label, r in results:
        impl = (r or {}).get("cpu_impl", "reference")
        if impl != "reference":
            by_impl.setdefault(impl, []).append(label)
    return " ".join(f"Run with `--cpu-impl {impl}` (it changes only how full EA executes on CPU: its "
                    f"torch.compile-fused path, the same math): {', '.join(labels)}."
                    for impl, labels in sorted(by_impl.items()))


def store_root_of(args: argparse.Namespace) -> Path:
    """The RunStore folder of a bench CLI: ``--runs-dir``, else ``<--out>/runs``."""
    return Path(args.runs_dir) if args.runs_dir else Path(args.out) / "runs"


def run_grid(args: argparse.Namespace, name: str, jobs: Sequence[Job], report: Callable[..., Sequence[Path]],
             timing_jobs: Sequence[Job] = (), before: Optional[Callable[[], None]] = None,
             desc: Optional[str] = None,
             rebuild: Optional[Callable[[Mapping[str, Any], Mapping[str, Any]], Optional[Dict[str, Any]]]] = None
             ) -> int:
    """The shared body of the bench CLIs (``mqar``, ``bench-vit``, ``charlm``).

    ``--dry-run`` lists the runs and stops; otherwise ``before()`` (a check that fails before
    any run, e.g. a missing corpus) and the missing runs through ``ea_zoo.bench.<name>:train_run``
    (``--jobs`` side by side), or with ``--timing-only`` the timing runs through
    ``ea_zoo.bench.<name>:timing_run`` one at a time; ``--report-only`` runs nothing. Then
    ``report(env, status)`` writes the outputs and returns their paths. Exit code 1 if a run failed.
    """
    timing = bool(getattr(args, "timing_only", False))
    desc = desc or name
    chosen = timing_jobs if timing else jobs
    store_root = store_root_of(args)
    if getattr(args, "restore_from", None):
        n = restore_runs([*jobs, *timing_jobs], store_root, args.restore_from, name, rebuild=rebuild)
        print(f"{desc}: restored {n['restored']} finished runs from {', '.join(map(str, args.restore_from))} "
              f"({n['present']} already stored; {n['rows']} finished runs read)")
    if args.dry_run:
        print(dry_run_listing(chosen, store_root))
        return 0
    status = None
    if not args.report_only:
        if before is not None:
            before()
        status = run_jobs(chosen, f"ea_zoo.bench.{name}:{'timing_run' if timing else 'train_run'}", store_root,
                          n_jobs=1 if timing else args.jobs, threads=args.threads,
                          desc=f"{desc} timing" if timing else desc, quiet=args.quiet, force=args.force,
                          max_runs=args.max_runs, cpu_impl=getattr(args, "cpu_impl", "reference"))
    paths = report(environment(args.device), status)
    print(f"wrote {', '.join(str(x) for x in paths)}")
    return 1 if status and status["failed"] else 0


def dry_run_listing(jobs: Sequence[Job], store_root: os.PathLike) -> str:
    from ea_zoo.train.runs import RunStore

    store = RunStore(store_root)
    lines = []
    n_done = 0
    for j in jobs:
        done = store.load(j.cfg) is not None
        n_done += done
        lines.append(f"  [{'done' if done else 'todo'}] {j.label}  ({store.run_dir(j.cfg, j.label).name})")
    return "\n".join([f"{len(jobs)} runs, {n_done} stored, {len(jobs) - n_done} to run:"] + lines)


# ----------------------------------------------------------------------------- training helpers
def make_adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of >= 2 dims (matrices, embeddings) only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if total <= warmup:
        return lr
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def mean_std(xs: Iterable[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
    """Mean, sample std (0 for one value) and n of the finite values."""
    v = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not v:
        return None, None, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def fmt_pm(mean: Optional[float], std: Optional[float], n: int, digits: int = 3, scale: float = 1.0) -> str:
    if mean is None:
        return "-"
    s = f"{mean * scale:.{digits}f}"
    if n > 1:
        s += f" ± {std * scale:.{digits}f}"
    return s


def params_of(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- outputs
def plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as _plt

    return _plt


def write_outputs(out: os.PathLike, name: str, title: str, env: Mapping[str, Any], config: Mapping[str, Any],
                  rows: Sequence[Mapping[str, Any]], sections: Sequence[Tuple[str, str]],
                  plot: Optional[Callable[[Path], Any]] = None, extra: Optional[Mapping[str, Any]] = None) -> List[Path]:
    """``<out>/<name>.json`` (tool, environment, config, rows), ``.csv`` (rows), ``.md``
    (title, environment line, sections) and ``.png`` (``plot(path)``); returns the paths."""
    from ea_zoo.analysis import report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [report.write_json(out / f"{name}.json", {"tool": f"ea-zoo {name}", "title": title,
                                                       "environment": dict(env), "config": dict(config),
                                                       "results": list(rows), **dict(extra or {})}),
             report.write_csv(out / f"{name}.csv", list(rows))]
    head = [f"# {title}", "",
            f"Device: {env.get('device_name')} ({env.get('device')}); torch {env.get('torch')}; timm {env.get('timm')}; "
            f"date {env.get('date')}" + (f"; commit {env['git_commit']}" if env.get("git_commit") else ""), ""]
    body = []
    for heading, text in sections:
        if heading:
            body += [f"## {heading}", ""]
        body += [text.rstrip(), ""]
    md = out / f"{name}.md"
    md.write_text("\n".join(head + body))
    paths.append(md)
    if plot is not None:
        png = out / f"{name}.png"
        try:
            plot(png)
            plt().close("all")
            paths.append(png)
        except Exception as e:  # noqa: BLE001  a figure never fails the tool
            print(f"{name}: no figure ({type(e).__name__}: {e})", file=sys.stderr)
    return paths


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    from ea_zoo.analysis import report

    return report.markdown_table(headers, rows)


def text_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    from ea_zoo.analysis import report

    return report.text_table(headers, rows)


def fmt_bytes(n: Any) -> str:
    from ea_zoo.analysis import report

    return report.fmt_bytes(n)
