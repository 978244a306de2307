"""``ea-zoo ablate``: accuracy ablations over datasets, backends, seeds and selection protocols.

    ea-zoo ablate --datasets JapaneseVowels,Epilepsy --backends sa,ea2,ea6 --seeds 3
    ea-zoo ablate --datasets ETTh2,path/to/my.csv --horizons 6,12 --backends sa,ea6 --protocols val,test
    ea-zoo ablate --suite table3 --backends sa,ea2,ea6 --seeds 5 --jobs 2     # the paper's Table 3 cells

**Cells.** A cell is one column: a dataset (and, for forecasting, a horizon L'), trained from
an experiment config. ``--datasets`` takes any UEA archive name (config ``uea`` with
``data.dataset=<name>``), the paper's Table 3 names (``JAP``/``JapaneseVowels``, ``SCP1``,
``SCP2``, ``UWG``: their ``table3_*`` configs), an ETT name (``ETTh1``, ``ETTh2``, ``ETTm1``,
``ETTm2``, ``traffic``: ``table4_*`` where one exists, else ``ett``) or the path of any
ETT-style csv (config ``ett``, one cell per ``--horizons`` value). Columns are titled by the
dataset of the resolved config (``--suite table3 --cells JAP data.dataset=Foo`` is titled
"Foo"), and the paper's numbers appear only beside the paper's own cells (JAP, SCP1, SCP2,
UWG classification; ETTh2, ETTm2, Traffic at L = 6, L' = 6 or 12, univariate OT).

**Protocols** (``--protocols``): ``val`` (P1) selects the checkpoint and stops early on a
validation split held out from TRAIN (UEA: a stratified 20%; ETT: the TSL validation period)
and reports TEST; ``test`` (P2) is the Time-Series-Library protocol the paper follows: the
epoch is selected on TEST (UEA: validation = the TEST file, monitor test accuracy, as TSL's
classification; ETT: validation = the test windows). P2 numbers are optimistic by design.

**Runs are keyed by their resolved config.** Each (cell, protocol, backend, seed) resolves to a
full experiment config (every override applied); its hash (:func:`ea_zoo.train.run.run_key`)
names the run folder under ``--runs-dir`` (default ``runs/ablate``) and is the resume check: a
finished config is never retrained, and a changed override (budget, model, data) is a new run,
never a stale result. Interrupt and rerun the same command to resume.

**Report** (``--out``, default ``runs/ablate/report``; never a committed folder unless named):
``results.md`` (tables per task and protocol: mean ± sample std over seeds, the paper's number
beside the paper's cells; the paired "A >= B" verdicts; per cell the dataset, protocol, config,
overrides and config hash; per backend the final train loss/accuracy of the best checkpoint,
best epoch, steps and wall time per run; the machine), ``results.csv`` (one row per cell x
protocol x backend x metric, with the seeds, values and run hashes), ``results.json``
(everything, per run) and ``results.png`` (bars with std, paper markers on paper cells only).

**Extending a committed grid on a fresh clone** (``--restore-from``): the run store is
git-ignored, so a new machine starts with none. ``--restore-from benchmarks/results/<x>/results.json``
re-creates every finished run of the plan from that report's per-run records whose config hash
equals the planned run's (a changed config or code default is a miss and trains), marks them
``restored_from`` in their ``result.json``, and then trains only what is left.

**Paired verdict** (``--compare ea6:sa``): per cell, protocol and metric, the differences
a - b over the seeds both ran (sign flipped for errors, so > 0 means a is better), their mean
and 95% Student-t interval, and a verdict: ahead (interval above 0), tied (contains 0),
behind (below 0).

**Threads and jobs.** ``--jobs N`` trains N runs side by side in separate processes; each run
uses ``--threads`` torch threads (default ``auto`` = min(4, CPUs // N), so 1 per run with
``--jobs 2`` on 2 cores) and loads data in its own process (``data.num_workers=0``): the CPUs
are never oversubscribed.

Extra positional arguments are dotlist overrides applied to every run (``trainer.max_steps=500``).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["restore_runs", "Suite", "SUITES", "PAPER", "PAPER_CELLS", "Cell", "PROTOCOLS", "RunSpec", "resolve_datasets",
           "plan_runs", "execute", "collect_runs", "run_grid", "collect", "write_report", "add_arguments", "run",
           "dataset_label", "paper_cell", "protocol_of", "split_specs", "TASK_METRICS"]


# ----------------------------------------------------------------------------- paper and suites
@dataclass(frozen=True)
class Suite:
    """A named set of the paper's cells (cell key -> experiment config) and its metrics."""

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

#: paper cell -> (backend, metric) -> the paper's value
PAPER_CELLS: Dict[str, Dict[Tuple[str, str], float]] = {}
for _suite in PAPER.values():
    for (_cell, _b, _m), _v in _suite.items():
        PAPER_CELLS.setdefault(_cell, {})[(_b, _m)] = _v

#: task -> reported metric -> results key (the first is the headline); and whether higher is better
TASK_METRICS: Dict[str, Dict[str, str]] = {
    "classification": {"acc": "test/acc"},
    "forecasting": {"MAE": "test/orig_mae", "RMSE": "test/orig_rmse"},
    "image": {"acc": "test/acc"},
}
TASK_EXTRA_METRICS: Dict[str, Dict[str, str]] = {"forecasting": {"MAE_scaled": "test/mae", "RMSE_scaled": "test/rmse"}}
HIGHER_IS_BETTER = {"classification": True, "forecasting": False, "image": True}
TASK_TITLES = {
    "classification": "Classification: test accuracy (non-causal encoder)",
    "forecasting": "Forecasting: test MAE / RMSE in original units of the target (causal decoder)",
    "image": "Images: test accuracy (ViT)",
}

#: selection protocols
PROTOCOLS: Dict[str, str] = {
    "val": "P1: checkpoint and early stopping on a validation split held out from TRAIN (UEA: stratified 20% "
           "of TRAIN; ETT: the TSL validation period); TEST reported",
    "test": "P2: the Time-Series-Library protocol the paper follows: the epoch is selected on TEST "
            "(UEA: validation = the TEST file, monitor accuracy; ETT: validation = the test windows); optimistic",
}
PROTOCOL_SHORT = {"val": "P1 val", "test": "P2 test-selected"}

DATA_MISSING = "data not present"
_TABLE3_ARCHIVES = {"JAP": "JapaneseVowels", "SCP1": "SelfRegulationSCP1", "SCP2": "SelfRegulationSCP2",
                    "UWG": "UWaveGestureLibrary"}
_FORECAST_NAMES = ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "traffic")
_PAPER_FORECAST = {"etth2": "ETTh2", "ettm2": "ETTm2", "traffic": "Traffic"}


def _log(msg: str) -> None:
    print(f"[ablate {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _one_line(e: Any) -> str:
    return " ".join(str(e).split())


# ----------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class Cell:
    """A column: an experiment config plus the overrides that select its dataset/horizon."""

    name: str
    config: str
    overrides: Tuple[str, ...] = ()


def _config_exists(name: str) -> bool:
    from ea_zoo.configs import config_dir

    return (config_dir() / "experiment" / f"{name}.yaml").is_file()


def _is_csv(name: str) -> bool:
    from ea_zoo.train.datamodules import is_csv_path

    return is_csv_path(name)


def resolve_datasets(names: Sequence[str], horizons: Sequence[int] = (6, 12)) -> List[Cell]:
    """``--datasets`` entries -> cells (see the module docstring)."""
    cells: List[Cell] = []
    for raw in names:
        name, extra = _dataset_overrides(raw.strip())
        if not name:
            continue
        before = len(cells)
        _resolve_one(name, horizons, cells)
        if extra:
            cells[before:] = [Cell(c.name, c.config, (*c.overrides, *extra)) for c in cells[before:]]
    return cells


def _dataset_overrides(entry: str) -> Tuple[str, Tuple[str, ...]]:
    """``SCP1[trainer.min_steps=400,trainer.max_steps=800]`` -> (``SCP1``, its overrides)."""
    m = re.fullmatch(r"(.*?)\[(.*)\]", entry, flags=re.S)
    if not m:
        return entry, ()
    ovs = tuple(o.strip() for o in split_specs(m.group(2)))
    bad = [o for o in ovs if "=" not in o]
    if bad:
        raise ValueError(f"--datasets entry {entry!r}: overrides in [...] must look like key=value, got {bad[0]!r}")
    return m.group(1).strip(), ovs


def _resolve_one(name: str, horizons: Sequence[int], cells: List[Cell]) -> None:
    low = name.lower()
    short = next((k for k, v in _TABLE3_ARCHIVES.items() if low in (k.lower(), v.lower())), None)
    fc = next((n for n in _FORECAST_NAMES if n.lower() == low), None)
    if short is not None:
        cfg = f"table3_{short.lower()}"
        if _config_exists(cfg):
            cells.append(Cell(short, cfg))
        else:
            cells.append(Cell(short, "uea", (f"data.dataset={_TABLE3_ARCHIVES[short]}",)))
    elif fc is not None or _is_csv(name):
        for h in horizons:
            cfg = f"table4_{low}_{h}" if fc is not None else ""
            if cfg and _config_exists(cfg):
                cells.append(Cell(f"{fc}-{h}", cfg))
            else:
                cells.append(Cell(f"{Path(name).stem if fc is None else fc}-{h}", "ett",
                                  (f"data.dataset={name}", f"data.pred_len={h}")))
    elif low in ("fashion_mnist", "fashionmnist", "fashion-mnist"):
        cells.append(Cell("FashionMNIST", "vit_fmnist"))
    else:  # any UEA archive by name
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"--datasets entry {name!r} is neither a UEA archive name (letters, digits, '_', "
                             "'-', '.'), an ETT name (" + ", ".join(_FORECAST_NAMES) + ") nor a csv path")
        cells.append(Cell(name, "uea", (f"data.dataset={name}",)))


def suite_cells(suite: Suite, cells: Optional[Sequence[str]] = None) -> List[Cell]:
    """The cells of a paper suite (``--suite``), optionally a subset (``--cells``)."""
    names = list(cells or suite.cells)
    out = []
    for c in names:
        if c not in suite.cells:
            raise ValueError(f"unknown cell {c!r} for suite {suite.name}; valid cells: {', '.join(suite.cells)} "
                             f"(any other dataset: --datasets {c})")
        out.append(Cell(c, suite.cells[c]))
    return out


def dataset_label(cfg: Any) -> str:
    """Column title of a resolved config: the UEA archive name, ``<ETT name or csv stem>-<L'>``,
    or the image dataset."""
    d = cfg["data"]
    if d["kind"] == "uea":
        return _TABLE3_ARCHIVES.get(str(d["dataset"]), str(d["dataset"]))
    if d["kind"] == "forecast":
        src = d.get("path") or d["dataset"]
        name = Path(str(src)).stem if (d.get("path") or _is_csv(str(d["dataset"]))) else str(d["dataset"])
        return f"{name}-{d['pred_len']}"
    return str(d["dataset"])


def paper_cell(cfg: Any) -> Optional[str]:
    """The paper's cell a resolved config reproduces (``JAP``, ``ETTh2-6``, ...), or None."""
    d, task = cfg["data"], cfg["task"]
    if task == "classification" and d["kind"] == "uea":
        name = _TABLE3_ARCHIVES.get(str(d["dataset"]), str(d["dataset"]))
        return next((k for k, v in _TABLE3_ARCHIVES.items() if v == name), None)
    if task == "forecasting" and d["kind"] == "forecast" and not d.get("path") and not _is_csv(str(d["dataset"])):
        key = _PAPER_FORECAST.get(str(d["dataset"]).lower())
        if key and d["seq_len"] == 6 and d["features"] == "S" and d["target"] == "OT" and d["pred_len"] in (6, 12):
            return f"{key}-{d['pred_len']}"
    return None


def protocol_overrides(protocol: str, kind: str) -> List[str]:
    """The overrides that put a config of data ``kind`` under ``protocol``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    if kind == "uea":
        return ["data.val_source=train"] if protocol == "val" else [
            "data.val_source=test", "checkpoint.monitor=val/acc", "checkpoint.mode=max"]
    if kind == "forecast":
        return ["data.val_source=val"] if protocol == "val" else ["data.val_source=test"]
    if protocol == "test":
        raise ValueError(f"protocol 'test' (selection on TEST) is defined for uea and forecast data, not {kind!r}")
    return []


def protocol_of(cfg: Any) -> str:
    """``test`` when the resolved config selects on the test data, else ``val``."""
    return "test" if cfg["data"].get("val_source") == "test" else "val"


def split_specs(text: str) -> List[str]:
    """Comma-separated attention specs, commas inside {...} / [...] kept (``sa,{name: ea_series, order: 4}``)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [s for s in out if s]


def _spec_value(spec: str) -> Any:
    from omegaconf import OmegaConf

    from ea_zoo.train.run import _plain

    return _plain(OmegaConf.from_dotlist([f"v={spec}"]).v)


# ----------------------------------------------------------------------------- plan
@dataclass
class RunSpec:
    """One planned run: where it sits in the report and its resolved config."""

    cell: str
    protocol: str
    backend: str
    seed: int
    cfg: Dict[str, Any]
    key: Dict[str, Any]
    hash: str
    group_hash: str
    run_name: str
    cell_config: str
    cell_overrides: Tuple[str, ...]


@dataclass
class Group:
    """Backends trained with the same seeds and protocols (``--backends`` or an ``--also`` group)."""

    backends: List[str]
    seeds: List[int]
    protocols: List[str]


def plan_runs(cells: Sequence[Cell], groups: Sequence[Group], overrides: Sequence[str] = (),
              threads: Any = "auto") -> List[RunSpec]:
    """Resolve every run's config (no data is read): raises ValueError/FileNotFoundError for a bad
    backend, override, config or protocol before anything trains."""
    from ea_zoo.train.run import load_experiment, run_key
    from ea_zoo.train.runs import config_hash

    plan: List[RunSpec] = []
    seen = set()
    for cell in cells:
        template = load_experiment(cell.config, [*cell.overrides, *overrides])
        kind = template.data.kind
        for g in groups:
            for protocol in g.protocols:
                pov = protocol_overrides(protocol, kind)
                for backend in g.backends:
                    ov = [*cell.overrides, *overrides, *pov, f"attention={backend}", f"seed={g.seeds[0]}",
                          "trainer.enable_progress_bar=false", f"threads={threads if threads is not None else 'null'}"]
                    first = _container(load_experiment(cell.config, ov))
                    for seed in g.seeds:  # the seed is a plain int: the other seeds' configs are copies
                        plain = {**first, "seed": int(seed)}
                        key = run_key(plain)
                        h = config_hash(key)
                        if h in seen:
                            continue
                        seen.add(h)
                        label = dataset_label(plain)
                        proto = protocol_of(plain)
                        blabel = plain["label"]
                        plan.append(RunSpec(
                            cell=label, protocol=proto, backend=blabel, seed=int(seed), cfg=plain, key=key, hash=h,
                            group_hash=config_hash(run_key(plain, drop=("attention", "seed"))),
                            run_name=f"{label}-{proto}-{blabel}-seed{seed}", cell_config=cell.config,
                            cell_overrides=tuple([*cell.overrides, *overrides, *pov])))
    return plan


def _container(cfg: Any) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def data_missing(cfg: Dict[str, Any]) -> Optional[str]:
    """None when a config's data files are there (or will be downloaded), else the one-line reason."""
    d = cfg["data"]
    if d.get("download") or d["kind"] == "image":
        return None
    try:
        if d["kind"] == "uea":
            from ea_zoo.data.uea import uea_paths

            uea_paths(str(d["dataset"]), root=d.get("root"), download=False)
        elif d.get("path") or _is_csv(str(d["dataset"])):
            from ea_zoo.data import ett

            src = d.get("path") or d["dataset"]
            if hasattr(ett, "resolve_csv"):
                ett.resolve_csv(src, d.get("root"))
            elif not Path(str(src)).expanduser().is_file():
                return f"file not found: {src}"
        else:
            from ea_zoo.data.ett import forecast_path

            forecast_path(str(d["dataset"]), root=d.get("root"), download=False)
    except FileNotFoundError as e:
        return _one_line(e)
    return None


# ----------------------------------------------------------------------------- execution
def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _summary(res: Dict[str, Any]) -> Dict[str, Any]:
    return {"test": res.get("test", {}), "train": (res.get("train") or {}).get("eval_best", {}),
            "best_epoch": res.get("best_epoch"), "steps": res.get("global_steps"),
            "wall_seconds": res.get("wall_seconds"), "stopped_by": res.get("stopped_by")}


def _execute_one(cfg: Dict[str, Any], store_root: str, run_name: str) -> Dict[str, Any]:
    """Train one run into its store folder, Lightning's output in ``train.log`` there; never raises."""
    from omegaconf import OmegaConf

    from ea_zoo.data.paths import DataNotFoundError
    from ea_zoo.train.run import run_key, train
    from ea_zoo.train.runs import RunStore

    store = RunStore(store_root)
    key = run_key(cfg)
    d = store._find(key) or store.run_dir(key, run_name)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _quiet_lightning()
    with open(d / "train.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = train(OmegaConf.create(cfg), store=store)
        except DataNotFoundError as e:
            return {"status": "missing", "error": _one_line(e), "dir": str(d)}
        except Exception as e:  # noqa: BLE001 - the grid goes on; the run shows as failed
            traceback.print_exc()
            return {"status": "failed", "error": f"{type(e).__name__}: {_one_line(e)}", "dir": str(d),
                    "seconds": time.time() - t0}
    return {"status": "ok", "dir": str(d), "seconds": time.time() - t0, **_summary(res)}


def _worker_init(threads: Optional[int]) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # pragma: no cover - already set
            pass


def _fmt_done(spec: RunSpec, out: Dict[str, Any]) -> str:
    t = out.get("test", {})
    metric = next(iter(TASK_METRICS[spec.cfg["task"]].values()))
    tr = out.get("train", {})
    fit = ", ".join(f"train {k} {v:.3f}" for k, v in tr.items() if k in ("acc", "loss", "mae"))
    return (f"done {spec.run_name} in {out.get('seconds', 0):.0f}s: {metric.split('/')[-1]} "
            f"{t.get(metric, float('nan')):.4f} ({fit}; best epoch {out.get('best_epoch')}, {out.get('steps')} steps, "
            f"stopped by {out.get('stopped_by')})")


def _result_from_record(rec: Dict[str, Any]) -> Dict[str, Any]:
    """A run record of a report (see :func:`collect_runs`) back in the ``result.json`` layout."""
    return {"test": rec.get("test") or {},
            "train": {"eval_best": rec.get("train") or {}, "last_epoch": rec.get("train_last_epoch") or {}},
            "best_epoch": rec.get("best_epoch"), "best_step": rec.get("best_step"), "epochs_run": rec.get("epochs_run"),
            "global_steps": rec.get("steps"), "steps_per_epoch": rec.get("steps_per_epoch"),
            "stopped_by": rec.get("stopped_by"), "best_val": rec.get("best_val"),
            "wall_seconds": rec.get("wall_seconds"), "fit_seconds": rec.get("fit_seconds"),
            "params": rec.get("params"), "machine": rec.get("machine")}


def restore_runs(plan: Sequence[RunSpec], runs_dir: Path, reports: Sequence[Any]) -> Dict[str, int]:
    """Re-create finished runs of ``plan`` in ``runs_dir`` from ablation reports' ``results.json``.

    A planned run is restored when a report holds a run record with the same config hash
    (:attr:`RunSpec.hash`, the hash of the fully resolved config), so only identical configs are
    carried over; a run already in the store is left as it is. Raises ValueError naming the file
    when a report is missing or is not an ablation report. Returns counts: restored, present
    (already in the store), records (read from the reports)."""
    from ea_zoo.train.runs import RunStore, read_report

    what = "the results.json of an ablation report (e.g. benchmarks/results/ablation_tables34)"
    records: Dict[str, Tuple[Dict[str, Any], str]] = {}
    for path in reports:
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        runs = read_report(path, what).get("runs")
        if not isinstance(runs, list) or not all(isinstance(r, dict) and "config_hash" in r for r in runs):
            raise ValueError(f"--restore-from {path}: not an ablation report (no 'runs' list of records with "
                             "'config_hash'); give the results.json written by ea-zoo ablate")
        for rec in runs:
            records.setdefault(str(rec["config_hash"]), (rec, str(path)))
    store = RunStore(runs_dir)
    restored = present = 0
    for spec in plan:
        hit = records.get(spec.hash)
        if hit is None:
            continue
        if store.restore(spec.key, _result_from_record(hit[0]), hit[1], label=spec.run_name):
            restored += 1
        else:
            present += 1
    return {"restored": restored, "present": present, "records": len(records)}


def execute(plan: Sequence[RunSpec], runs_dir: Path, jobs: int = 1, threads: Optional[int] = None,
            dry_run: bool = False) -> Dict[str, List[Any]]:
    """Train every planned run not yet finished in ``runs_dir`` (``jobs`` in parallel processes).

    Returns ``{"ran", "skipped", "missing", "failed"}``: lists of (cell, protocol, backend, seed),
    plus ``"errors"``: one-line reasons by cell.
    """
    from ea_zoo.train.runs import RunStore

    store = RunStore(runs_dir)
    status: Dict[str, List[Any]] = {"ran": [], "skipped": [], "missing": [], "failed": [], "errors": []}
    todo: List[RunSpec] = []
    missing_cells: Dict[str, str] = {}
    for spec in plan:
        tag = (spec.cell, spec.protocol, spec.backend, spec.seed)
        if store.load(spec.key) is not None:
            status["skipped"].append(tag)
            continue
        if spec.cell not in missing_cells:
            reason = data_missing(spec.cfg)
            if reason:
                missing_cells[spec.cell] = reason
                _log(f"{spec.cell}: {DATA_MISSING}: {reason}")
                status["errors"].append((spec.cell, reason))
        if spec.cell in missing_cells and missing_cells[spec.cell]:
            status["missing"].append(tag)
            continue
        missing_cells.setdefault(spec.cell, "")
        todo.append(spec)
    if dry_run:
        for spec in todo:
            _log(f"would run {spec.run_name} -> {store.run_dir(spec.key, spec.run_name)}")
            status["ran"].append((spec.cell, spec.protocol, spec.backend, spec.seed))
        return status
    total = len(todo)

    def record(i: int, spec: RunSpec, out: Dict[str, Any]) -> None:
        tag = (spec.cell, spec.protocol, spec.backend, spec.seed)
        if out["status"] == "ok":
            status["ran"].append(tag)
            _log(f"[{i}/{total}] " + _fmt_done(spec, out))
        elif out["status"] == "missing":
            status["missing"].append(tag)
            status["errors"].append((spec.cell, out["error"]))
            _log(f"[{i}/{total}] {spec.run_name}: {DATA_MISSING}: {out['error']}")
        else:
            status["failed"].append(tag)
            status["errors"].append((spec.cell, out["error"]))
            _log(f"[{i}/{total}] {spec.run_name} FAILED: {out['error']} (log: {out['dir']}/train.log)")

    if jobs <= 1 or total <= 1:
        for i, spec in enumerate(todo, 1):
            _log(f"[{i}/{total}] run {spec.run_name} -> {store.run_dir(spec.key, spec.run_name)}")
            record(i, spec, _execute_one(spec.cfg, str(runs_dir), spec.run_name))
        return status
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    _log(f"{total} runs, {jobs} at a time, {threads or 'default'} torch thread(s) each")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_execute_one, spec.cfg, str(runs_dir), spec.run_name): spec for spec in todo}
        for i, fut in enumerate(as_completed(futures), 1):
            spec = futures[fut]
            try:
                out = fut.result()
            except Exception as e:  # noqa: BLE001 - a worker died
                out = {"status": "failed", "error": f"{type(e).__name__}: {_one_line(e)}", "dir": "?"}
            record(i, spec, out)
    return status


# ----------------------------------------------------------------------------- collect
def collect_runs(plan: Sequence[RunSpec], runs_dir: Path, compare: Optional[Tuple[str, str]] = ("ea6", "sa"),
                 missing: Optional[Dict[str, str]] = None, failed: Sequence[Tuple] = ()) -> Dict[str, Any]:
    """Read the finished runs of ``plan`` from ``runs_dir`` into per-cell statistics (see
    :func:`ea_zoo.train.report.write_report` for the layout)."""
    from ea_zoo.train.runs import RunStore
    from ea_zoo.train.stats import mean_std, paired_verdict

    store = RunStore(runs_dir)
    missing = dict(missing or {})
    failed_set = {tuple(f) for f in failed}
    cells: Dict[str, Dict[str, Any]] = {}
    backends: List[str] = []
    protocols: List[str] = []
    runs: List[Dict[str, Any]] = []
    per: Dict[Tuple[str, str, str], Dict[int, Dict[str, Any]]] = {}
    planned: Dict[Tuple[str, str, str], List[int]] = {}
    for spec in plan:
        if spec.backend not in backends:
            backends.append(spec.backend)
        if spec.protocol not in protocols:
            protocols.append(spec.protocol)
        c = cells.setdefault(spec.cell, {"cell": spec.cell, "dataset": spec.cfg["data"]["dataset"],
                                         "task": spec.cfg["task"], "paper": paper_cell(spec.cfg), "protocols": {}})
        pc = c["protocols"].setdefault(spec.protocol, {
            "config": spec.cell_config, "overrides": list(spec.cell_overrides), "config_hash": spec.group_hash,
            "budget": _budget(spec.cfg)})
        if pc["config_hash"] != spec.group_hash:  # e.g. a per-backend override: list every hash
            pc["config_hash"] = ",".join(sorted(set(pc["config_hash"].split(",")) | {spec.group_hash}))
        planned.setdefault((spec.cell, spec.protocol, spec.backend), []).append(spec.seed)
        res = store.load(spec.key)
        if res is None:
            continue
        rec = {"cell": spec.cell, "dataset": c["dataset"], "task": c["task"], "protocol": spec.protocol,
               "backend": spec.backend, "seed": spec.seed, "config_hash": spec.hash, "test": res.get("test", {}),
               "train": (res.get("train") or {}).get("eval_best", {}),
               "train_last_epoch": (res.get("train") or {}).get("last_epoch", {}),
               "best_epoch": res.get("best_epoch"), "best_step": res.get("best_step"),
               "epochs_run": res.get("epochs_run"), "steps": res.get("global_steps"),
               "steps_per_epoch": res.get("steps_per_epoch"), "stopped_by": res.get("stopped_by"),
               "best_val": res.get("best_val"), "wall_seconds": res.get("wall_seconds", res.get("total_seconds")),
               "fit_seconds": res.get("fit_seconds"), "params": res.get("params"), "machine": res.get("machine"),
               "dir": str(store._find(spec.key))}
        if res.get("restored_from"):
            rec["restored_from"] = res["restored_from"]
        runs.append(rec)
        per.setdefault((spec.cell, spec.protocol, spec.backend), {})[spec.seed] = rec

    rows: List[Dict[str, Any]] = []
    for (cell, protocol, backend), seeds in planned.items():
        c = cells[cell]
        task = c["task"]
        got = per.get((cell, protocol, backend), {})
        metrics = {**TASK_METRICS[task], **TASK_EXTRA_METRICS.get(task, {})}
        for m, key in metrics.items():
            vals = [(s, float(got[s]["test"][key])) for s in sorted(got) if key in got[s]["test"]]
            paper = PAPER_CELLS.get(c["paper"] or "", {}).get((backend, m)) if m in TASK_METRICS[task] else None
            if vals:
                st = "ok"
            elif cell in missing:
                st = DATA_MISSING
            elif any((cell, protocol, backend, s) in failed_set for s in seeds):
                st = "failed"
            else:
                st = "not run"
            row = {"cell": cell, "dataset": c["dataset"], "task": task, "protocol": protocol, "backend": backend,
                   "metric": m, "n": len(vals), "n_planned": len(seeds), "mean": None, "std": None, "paper": paper,
                   "status": st, "seeds": [s for s, _ in vals], "values": [v for _, v in vals],
                   "config_hash": c["protocols"][protocol]["config_hash"],
                   "run_hashes": [got[s]["config_hash"] for s, _ in vals],
                   "overrides": c["protocols"][protocol]["overrides"], "paper_cell": c["paper"]}
            if vals:
                row["mean"], row["std"] = mean_std([v for _, v in vals])
                rs = [got[s] for s, _ in vals]
                row["wall_seconds_mean"] = _avg([r["wall_seconds"] for r in rs])
                row["steps_mean"] = _avg([r["steps"] for r in rs])
                row["best_epoch_mean"] = _avg([r["best_epoch"] for r in rs])
                for tk in ("loss", "acc", "mae", "orig_mae"):
                    row[f"train_{tk}_mean"] = _avg([r["train"].get(tk) for r in rs])
                row["params"] = rs[0]["params"]
            rows.append(row)

    verdicts: List[Dict[str, Any]] = []
    if compare:
        a, b = compare
        for cell, c in cells.items():
            for protocol in c["protocols"]:
                ga, gb = per.get((cell, protocol, a), {}), per.get((cell, protocol, b), {})
                if not (cell, protocol, a) in planned or not (cell, protocol, b) in planned:
                    continue
                common = sorted(set(ga) & set(gb))
                for m, key in TASK_METRICS[c["task"]].items():
                    xs = [float(ga[s]["test"][key]) for s in common if key in ga[s]["test"] and key in gb[s]["test"]]
                    ys = [float(gb[s]["test"][key]) for s in common if key in ga[s]["test"] and key in gb[s]["test"]]
                    v = paired_verdict(xs, ys, higher_is_better=HIGHER_IS_BETTER[c["task"]])
                    verdicts.append({"cell": cell, "dataset": c["dataset"], "protocol": protocol, "metric": m,
                                     "a": a, "b": b, "seeds": common, **v})
    machines = []
    for r in runs:
        m = r.get("machine") or {}
        sig = {k: m.get(k) for k in ("platform", "cpu", "cpu_count", "torch", "torch_threads")}
        if m.get("cpu_impl", "reference") != "reference":  # runs before the key existed ran the reference
            sig["cpu_impl"] = m["cpu_impl"]
        if sig not in machines:
            machines.append(sig)
    return {"cells": list(cells.values()), "backends": backends, "protocols": protocols, "rows": rows,
            "runs": runs, "verdicts": verdicts, "compare": list(compare) if compare else None,
            "machines": machines, "missing": missing,
            "wall_seconds_total": sum(r["wall_seconds"] or 0 for r in runs)}


def _avg(xs: Sequence[Any]) -> Optional[float]:
    xs = [float(x) for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _budget(cfg: Dict[str, Any]) -> str:
    t, o, e = cfg["trainer"], cfg["optim"], cfg["early_stopping"]
    parts = []
    if t.get("min_steps"):
        parts.append(f"min {t['min_steps']} steps")
    if t.get("max_steps") not in (None, -1):
        parts.append(f"max {t['max_steps']} steps")
    if t.get("max_epochs") not in (None, -1):
        parts.append(f"max {t['max_epochs']} epochs")
    if t.get("val_check_interval"):
        parts.append(f"validate every {t['val_check_interval']} steps")
    if e.get("enabled"):
        parts.append(f"early stopping patience {e['patience']}")
    parts.append(f"batch {cfg['data']['batch_size']}, lr {o['lr']:g}" + (
        f" cosine to {o['min_lr_ratio']:g}x" if o["scheduler"] == "cosine" else ""))
    return ", ".join(parts)


# ----------------------------------------------------------------------------- old API
def run_grid(suite: Suite, backends: Sequence[str], seeds: Sequence[int], runs_dir: Path,
             cells: Optional[Sequence[str]] = None, overrides: Sequence[str] = (), threads: Any = None,
             dry_run: bool = False, protocols: Sequence[str] = ("val",), jobs: int = 1) -> Dict[str, List[Any]]:
    """Train every missing run of a paper suite's cells; see :func:`execute`."""
    plan = plan_runs(suite_cells(suite, cells), [Group(list(backends), list(seeds), list(protocols))], overrides,
                     threads=threads if threads is not None else "auto")
    from ea_zoo.train.run import resolve_threads

    return execute(plan, Path(runs_dir), jobs=jobs, threads=resolve_threads(threads or "auto", jobs), dry_run=dry_run)


def missing_data(plan: Sequence[Any]) -> Dict[str, str]:
    """cell -> why its data is missing, for the cells of ``plan`` whose files are not there."""
    missing: Dict[str, str] = {}
    for spec in plan:
        if spec.cell not in missing:
            reason = data_missing(spec.cfg)
            if reason:
                missing[spec.cell] = reason
    return missing


def collect(suite: Suite, backends: Sequence[str], seeds: Sequence[int], runs_dir: Path,
            cells: Optional[Sequence[str]] = None, overrides: Sequence[str] = (), protocols: Sequence[str] = ("val",),
            compare: Optional[Tuple[str, str]] = ("ea6", "sa")) -> Dict[str, Any]:
    """Statistics of a paper suite's runs in ``runs_dir`` (see :func:`collect_runs`)."""
    plan = plan_runs(suite_cells(suite, cells), [Group(list(backends), list(seeds), list(protocols))], overrides)
    missing = missing_data(plan)
    stats = collect_runs(plan, Path(runs_dir), compare=compare, missing=missing)
    stats["title"] = suite.title
    return stats


def write_report(stats: Dict[str, Any], suite_or_out: Any, out_dir: Optional[Path] = None, budget: str = "",
                 plot: bool = True, title: str = "", command: str = "") -> Dict[str, Path]:
    """Write results.md / .csv / .json / .png (``write_report(stats, out_dir)``; the old
    ``write_report(stats, suite, out_dir)`` still works)."""
    from ea_zoo.train.report import write_report as _write

    if isinstance(suite_or_out, Suite):
        title = title or suite_or_out.title
        out = Path(out_dir) if out_dir is not None else Path("runs") / "ablate" / f"report_{suite_or_out.name}"
    else:
        out = Path(suite_or_out)
    return _write(stats, out, budget=budget, plot=plot, title=title or stats.get("title", ""), command=command)


# ----------------------------------------------------------------------------- CLI
def _int_list(text: str, what: str) -> List[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise ValueError(f"{what} must be integers >= 1, got {text!r}")
    return vals


def _protocol_list(text: str) -> List[str]:
    ps = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in ps if p not in PROTOCOLS]
    if bad or not ps:
        raise ValueError(f"unknown protocol(s) {bad or text!r}; valid protocols: {', '.join(PROTOCOLS)} "
                         "(val = validation held out from TRAIN, test = selection on TEST as TSL)")
    return ps


def _parse_also(text: str, seeds: int, offset: int, protocols: List[str]) -> Group:
    parts = re.split(r":(?=(?:seeds|protocols|seed-offset)=)", text)
    backends = split_specs(parts[0])
    n, off, prot = seeds, offset, protocols
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k == "seeds":
            n = _int_list(v, "--also seeds=")[0]
        elif k == "seed-offset":
            off = int(v)
        else:
            prot = _protocol_list(v)
    if not backends:
        raise ValueError(f"--also {text!r} names no backend (expected BACKENDS[:seeds=N][:protocols=val,test])")
    return Group(backends, list(range(off, off + n)), prot)


def _command_line(args: argparse.Namespace) -> str:
    """The ``ea-zoo ablate`` command that reproduces this grid (from the parsed arguments)."""
    import shlex

    parts = ["ea-zoo", "ablate"]
    for flag, val in (("--suite", args.suite), ("--cells", args.cells), ("--datasets", args.datasets),
                      ("--horizons", args.horizons if args.datasets else None), ("--backends", args.backends),
                      ("--seeds", args.seeds), ("--seed-offset", args.seed_offset or None),
                      ("--protocols", args.protocols), ("--compare", args.compare), ("--jobs", args.jobs),
                      ("--threads", args.threads), ("--runs-dir", args.runs_dir), ("--out", args.out)):
        if val is not None:
            parts += [flag, str(val)]
    for a in args.also:
        parts += ["--also", a]
    parts += list(args.overrides)
    return " ".join(shlex.quote(p) for p in parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Ablations over datasets, attention backends, seeds and selection protocols (resumable)."
    parser.epilog = ("Runs are keyed by the hash of their resolved config (a changed override is a new run; a "
                     "finished one is never retrained). Threads: --jobs N runs N trainings side by side, each with "
                     "--threads torch threads (default auto = min(4, CPUs // N)) and data loading in its own "
                     "process (data.num_workers=0), so the CPUs are not oversubscribed.")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated datasets: any UEA archive name (e.g. JapaneseVowels, Epilepsy), the "
                             "paper's JAP/SCP1/SCP2/UWG, an ETT name (ETTh1, ETTh2, ETTm1, ETTm2, traffic) or the path "
                             "of an ETT-style csv (date column, then the variables); NAME[key=value,...] adds "
                             "overrides for that dataset only, e.g. 'SCP1[trainer.min_steps=400]'")
    parser.add_argument("--horizons", default="6,12", help="forecasting horizons L' for forecasting datasets (default 6,12)")
    parser.add_argument("--suite", default=None, choices=sorted(SUITES), help="the paper's cells of a table (instead of "
                        "or besides --datasets)")
    parser.add_argument("--cells", default=None, help="subset of the suite's cells "
                        "(table3: JAP,SCP1,SCP2,UWG; table4: ETTh2-6,ETTh2-12,ETTm2-6,ETTm2-12,Traffic-6,Traffic-12)")
    parser.add_argument("--backends", default="sa,ea2,ea6",
                        help="comma-separated attention specs: names (sa, ea2, ea6, la, aft_simple, hedgehog, taylor, "
                             "...), hybrids such as ea6+sa@1, or {name: ..., option: ...} mappings")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (seed-offset .. seed-offset+N-1)")
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--protocols", default="val",
                        help="selection protocols: val (P1, validation held out from TRAIN), test (P2, the epoch "
                             "selected on TEST as the Time-Series-Library); e.g. val,test")
    parser.add_argument("--also", action="append", default=[], metavar="BACKENDS[:seeds=N][:protocols=P]",
                        help="another backend group with its own seeds/protocols (repeatable), e.g. "
                             "'la,taylor:seeds=3:protocols=val'")
    parser.add_argument("--compare", default="ea6:sa",
                        help="paired verdict A:B per cell (default ea6:sa: is EA-6 >= SA?); 'none' to skip")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained side by side (separate processes)")
    parser.add_argument("--threads", default="auto",
                        help="torch threads per run: auto (min(4, CPUs // jobs)), an int, or 'none' (torch's default)")
    parser.add_argument("--runs-dir", default=None, help="run store (default runs/ablate, git-ignored)")
    parser.add_argument("--out", default=None, help="report folder (default runs/ablate/report[_<suite>])")
    parser.add_argument("--budget", default="", help="a note written into the report")
    parser.add_argument("--restore-from", action="append", default=[], metavar="RESULTS_JSON",
                        help="re-create finished runs from a committed report's results.json (or its folder) "
                             "before training: runs whose config hash matches are not retrained (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="only aggregate finished runs")
    parser.add_argument("--dry-run", action="store_true", help="list the runs that would be trained")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides applied to every run (e.g. "
                        "trainer.max_steps=2000; cpu_impl=compiled runs full EA's torch.compile-fused CPU path, "
                        "not part of the run hash)")


def run(args: argparse.Namespace) -> int:
    from ea_zoo.train.run import resolve_threads

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    threads_arg: Any = args.threads
    if str(threads_arg).lower() in ("none", "null"):
        threads_arg = None
    elif threads_arg != "auto":
        try:
            threads_arg = int(threads_arg)
        except ValueError:
            raise ValueError(f"--threads must be 'auto', 'none' or an int >= 1, got {args.threads!r}") from None
        if threads_arg < 1:
            raise ValueError(f"--threads must be 'auto', 'none' or an int >= 1, got {args.threads!r}")
    threads = resolve_threads(threads_arg, args.jobs)
    horizons = _int_list(args.horizons, "--horizons")
    cells: List[Cell] = []
    if args.suite:
        cells += suite_cells(SUITES[args.suite], [c.strip() for c in args.cells.split(",")] if args.cells else None)
    elif args.cells:
        raise ValueError("--cells selects cells of a --suite (table3, table4, vit); for any dataset use --datasets")
    if args.datasets:
        cells += resolve_datasets(split_specs(args.datasets), horizons)
    if not cells:
        raise ValueError("nothing to run: give --datasets (any UEA archive name, ETT name or csv path) or "
                         f"--suite ({', '.join(sorted(SUITES))})")
    protocols = _protocol_list(args.protocols)
    groups = [Group(split_specs(args.backends), list(range(args.seed_offset, args.seed_offset + args.seeds)), protocols)]
    if not groups[0].backends:
        raise ValueError("--backends names no backend")
    groups += [_parse_also(a, args.seeds, args.seed_offset, protocols) for a in args.also]
    compare = None
    if args.compare and args.compare.lower() != "none":
        a, sep, b = args.compare.partition(":")
        if not sep or not a or not b:
            raise ValueError(f"--compare must look like A:B (e.g. ea6:sa), got {args.compare!r}")
        from ea_zoo.train.run import backend_label

        compare = (backend_label(_spec_value(a)), backend_label(_spec_value(b)))

    plan = plan_runs(cells, groups, args.overrides, threads=threads if threads is not None else None)
    runs_dir = Path(args.runs_dir or Path("runs") / "ablate")
    out = Path(args.out or Path("runs") / "ablate" / (f"report_{args.suite}" if args.suite and not args.datasets
                                                       else "report"))
    status: Dict[str, List[Any]] = {"failed": [], "missing": [], "errors": []}
    if args.restore_from:
        n = restore_runs(plan, runs_dir, args.restore_from)
        _log(f"restored {n['restored']} finished runs from {', '.join(args.restore_from)} "
             f"({n['present']} already in {runs_dir}; {n['records']} records read)")
    if not args.report_only:
        _log(f"{len(plan)} runs planned ({len({s.cell for s in plan})} cells); run store {runs_dir}")
        status = execute(plan, runs_dir, jobs=args.jobs, threads=threads, dry_run=args.dry_run)
        _log("grid: " + ", ".join(f"{k} {len(v)}" for k, v in status.items() if k != "errors"))
        if args.dry_run:
            return 0
    missing = missing_data(plan)
    stats = collect_runs(plan, runs_dir, compare=compare, missing=missing, failed=status.get("failed", []))
    stats["threads_per_run"], stats["jobs"] = threads, args.jobs
    title = SUITES[args.suite].title if args.suite and not args.datasets else "Ablation: attention backends"
    command = _command_line(args)
    paths = write_report(stats, out, budget=args.budget, plot=not args.no_plot, title=title, command=command)
    print(paths["md"].read_text())
    _log("report: " + ", ".join(str(p) for p in paths.values()))
    if missing and len(missing) == len({s.cell for s in plan}) and not stats["runs"]:
        print(f"ea-zoo ablate: error: no data for any cell: {'; '.join(missing.values())}", file=sys.stderr)
        return 3
    return 1 if status.get("failed") else 0
