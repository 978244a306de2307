"""``ea-zoo train``: train and test one experiment config with Lightning.

    ea-zoo train --config table3_jap attention=ea2 seed=1
    ea-zoo train --config uea data.dataset=Epilepsy attention=ea6            # any UEA archive by name
    ea-zoo train --config ett data.dataset=path/to/my.csv data.pred_len=12    # any ETT-style csv
    ea-zoo train --config table4_etth2_6 trainer.strategy=ddp trainer.devices=2 trainer.accelerator=cpu

An experiment config (omegaconf YAML, ``ea_zoo/configs/experiment/``) has these sections; every
section but ``model``/``attention`` is checked against its schema (:mod:`ea_zoo.train.schema`)
before any data is read (unknown keys and wrong types are errors naming the key path and the
valid keys), and anything left out takes the schema's default:

* ``defaults``: list of other config files merged first, relative to the config folder
  (``[data/jap]`` -> ``configs/data/jap.yaml``); the experiment's own keys win.
* ``name``, ``task`` (``classification`` | ``forecasting`` | ``image``), ``seed``, ``threads``
  (torch intra-op threads: ``auto`` (default) = a share of the CPUs that does not
  oversubscribe, :func:`resolve_threads`; an int; or null for torch's own default), ``cpu_impl``
  (``reference`` (default) | ``compiled``: how full EA runs on CPU, :func:`ea_zoo.kernels.set_cpu_impl`;
  the same math, so like ``threads`` it is not part of the run's hash), ``label``
  (the run's display name; default: the attention backend).
* ``data``: the DataModule (:mod:`ea_zoo.train.datamodules`; ``kind`` = uea | forecast | image;
  ``dataset`` = any UEA archive name / an ETT name or csv path; ``num_workers`` data-loader
  processes, default 0 = in the training process).
* ``model`` and ``attention``: what :func:`ea_zoo.build_model` takes; overrides go through
  :func:`ea_zoo.models.factory.load_config` exactly as for a model config
  (``attention=ea6``, ``attention.order=4``, ``model.depth=3``); the data fill in
  ``in_chans``/``num_classes``/``pred_len``/``out_chans``/``img_size`` unless set.
* ``optim`` (lr, weight_decay, warmup_steps, warmup_epochs, scheduler, min_lr_ratio,
  decay_steps), ``module`` (label_smoothing; input_norm none | last | mean_std for forecasting).
* ``trainer``: Lightning ``Trainer`` arguments. **Budgets are optimizer steps**:
  ``max_epochs: -1`` with ``max_steps`` (cap) and ``min_steps`` (early stopping cannot stop
  before it; the cosine learning-rate decay ends there, ``optim.decay_steps``), so small and
  large datasets both get enough updates. ``precision: auto`` = ``bf16-mixed`` on CUDA,
  ``32-true`` otherwise. ``strategy: ddp`` / ``ddp_spawn`` with ``devices: N`` trains on N
  processes; on CPU (or with ``process_group_backend: gloo``) the process group uses gloo.
* ``early_stopping`` (enabled, patience in validations, min_delta; never before
  ``trainer.min_steps``) and ``checkpoint`` (monitor, mode): the best-on-validation checkpoint
  (default monitor: ``val/acc`` max for classification, ``val/loss`` min = scaled MSE for
  forecasting) is kept and used for the test.
* ``output_dir``: default ``runs/<name>/<label>-seed<seed>-<hash>``, the hash of the resolved
  config (:func:`run_key`), so a changed override is a new run; a finished run is reported,
  not retrained (``--force`` retrains). It receives ``best.ckpt``, the results (test metrics,
  final train loss/accuracy of the best checkpoint, best epoch, steps, wall time, machine,
  resolved config), ``config.yaml`` and the CSV logs (``logs/``).
* ``debug.weight_hash``: each process writes the SHA-256 of its final ``state_dict`` to
  ``weights_rank<r>.sha256`` (used by the DDP test to check all ranks agree).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from ea_zoo.analysis.report import git_commit
from ea_zoo.configs import config_dir
from ea_zoo.train.runs import RunStore, config_hash
from ea_zoo.train.schema import SECTIONS, ConfigError, section_defaults, validate_experiment

__all__ = ["DEFAULTS", "load_experiment", "train", "add_arguments", "run", "state_dict_hash", "CONFIG_DIR",
           "run_key", "run_label", "backend_label", "output_dir_of", "resolve_threads", "machine_info",
           "NOT_HASHED", "ConfigError"]

#: keys that do not change what a run computes: left out of its hash (:func:`run_key`)
NOT_HASHED = ("output_dir", "threads", "cpu_impl", "label", "name", "debug", "trainer.enable_progress_bar",
              "trainer.log_every_n_steps", "data.num_workers", "data.eval_batch_size")

DEFAULTS: Dict[str, Any] = {
    "name": "experiment",
    "task": "classification",
    "seed": 0,
    "threads": "auto",
    "cpu_impl": "reference",
    "output_dir": None,
    "label": None,
    "data": {},
    "model": {},
    "attention": "ea6",
    **{sec: section_defaults(cls) for sec, cls in SECTIONS.items()},
}


def __getattr__(name: str) -> Any:
    if name == "CONFIG_DIR":  # kept for old callers; evaluated now ($EA_ZOO_CONFIG_DIR at call time)
        return config_dir()
    raise AttributeError(name)


# ----------------------------------------------------------------------------- config
def _config_path(path_or_name: Union[str, Path], group: str = "experiment") -> Path:
    p = Path(path_or_name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    root = config_dir()
    for cand in (root / group / f"{path_or_name}.yaml", root / f"{path_or_name}.yaml"):
        if cand.is_file():
            return cand
    known = sorted(q.stem for q in (root / group).glob("*.yaml"))
    raise FileNotFoundError(f"experiment config {str(path_or_name)!r} not found (a YAML path, or one of: "
                            f"{', '.join(known)})")


def _load_with_defaults(path: Path, seen: Optional[set] = None) -> DictConfig:
    seen = set() if seen is None else seen
    if path.resolve() in seen:
        raise ValueError(f"config defaults loop at {path}")
    seen.add(path.resolve())
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig):
        raise ValueError(f"{path}: an experiment config must be a mapping, got {type(node).__name__}")
    base = OmegaConf.create({})
    refs = node.pop("defaults", []) or []
    if isinstance(refs, str):
        refs = [refs]
    for ref in refs:
        ref_path = config_dir() / f"{ref}.yaml"
        if not ref_path.is_file():
            ref_path = path.parent / f"{ref}.yaml"
        if not ref_path.is_file():
            known = ", ".join(f"{k}/{n}" for k in ("data", "model") for n in
                              sorted(q.stem for q in (config_dir() / k).glob("*.yaml")))
            raise FileNotFoundError(f"{path}: defaults entry {ref!r} not found as {config_dir() / ref}.yaml; "
                                    f"valid entries: {known}")
        base = OmegaConf.merge(base, _load_with_defaults(ref_path, seen))
    return OmegaConf.merge(base, node)


def _plain(x: Any) -> Any:
    if isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    return copy.deepcopy(x)


def _merge(base: Dict[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and k != "attention":
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = _plain(v)
    return out


def backend_label(spec: Any) -> str:
    """Display label of an attention spec (a name, a mapping or a hybrid such as ``ea6+sa@1``):
    its canonical label (``{name: ea_series, order: 4, temperature: 1.0}`` -> ``ea4``; see
    :meth:`ea_zoo.registry.AttentionSpec.canonical`)."""
    from ea_zoo.registry import parse_attention

    return parse_attention(_plain(spec)).canonical().label


def _given_attention(base: Mapping[str, Any], overrides: Sequence[str]) -> Any:
    """The attention spec as the user wrote it (for the label): the last ``attention=``
    override, else the config's; None when ``attention.<x>=`` overrides changed it after."""
    spec = base.get("attention")
    for item in overrides:
        key = str(item).partition("=")[0].strip()
        if key == "attention":
            raw = str(item).partition("=")[2]
            spec = OmegaConf.from_dotlist([f"v={raw}"]).v if raw.strip() else None
            spec = _plain(spec)
        elif key.startswith("attention."):
            spec = None
    return spec


def load_experiment(config: Union[str, Path, Mapping[str, Any], DictConfig],
                    overrides: Sequence[str] = ()) -> DictConfig:
    """Experiment config (path, name under configs/experiment, dict) + dotlist overrides.

    The config's ``defaults`` are merged first, then :data:`DEFAULTS`; the whole config and the
    overrides go through :func:`ea_zoo.models.factory.load_config` (the same override rules as
    model configs: ``attention=<spec>``, ``attention.<option>=``, ``model.<arg>=``, existing
    top-level keys), then every other section is validated against its schema
    (:func:`ea_zoo.train.schema.validate_experiment`). Nothing is read from the data.
    Raises ValueError / FileNotFoundError with a one-line message.
    """
    from ea_zoo.models.factory import load_config

    if isinstance(config, (str, Path)):
        node = OmegaConf.to_container(_load_with_defaults(_config_path(config)), resolve=True)
    elif isinstance(config, (Mapping, DictConfig)):
        node = _plain(config) if isinstance(config, DictConfig) else copy.deepcopy(dict(config))
        node.pop("defaults", None)
    else:
        raise TypeError(f"config must be a path, a config name or a mapping, got {type(config).__name__}")
    base = _merge(copy.deepcopy(DEFAULTS), node)
    overrides = [str(o) for o in overrides]
    given = _given_attention(base, overrides)
    for item in overrides:  # same message as the model factory, before it runs
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. attention=ea6, seed=1, "
                             "trainer.max_steps=500)")
    cfg = _plain(load_config(base, overrides))
    cfg = validate_experiment(cfg)
    if cfg.get("label") is None:
        cfg["label"] = backend_label(given if given is not None else cfg["attention"])
    return OmegaConf.create(cfg)


def _drop(d: Dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head not in d:
        return
    if rest:
        if isinstance(d[head], dict):
            _drop(d[head], rest)
    else:
        d.pop(head)


def run_key(cfg: Union[DictConfig, Mapping[str, Any]], drop: Sequence[str] = ()) -> Dict[str, Any]:
    """The part of a resolved experiment config that defines what a run computes (its
    :func:`~ea_zoo.train.runs.config_hash` names the run): everything but :data:`NOT_HASHED`
    (and ``drop``)."""
    d = _plain(cfg) if isinstance(cfg, DictConfig) else copy.deepcopy(dict(cfg))
    for k in (*NOT_HASHED, *drop):
        _drop(d, k)
    return d


def run_label(cfg: Union[DictConfig, Mapping[str, Any]]) -> str:
    """``<label>-seed<seed>`` (the run folder's readable prefix)."""
    label = cfg.get("label") or backend_label(cfg.get("attention"))
    return f"{label}-seed{cfg.get('seed', 0)}"


def attention_tag(attention: Any) -> str:
    """Old name of :func:`backend_label`."""
    return backend_label(attention)


def default_runs_root(cfg: Union[DictConfig, Mapping[str, Any]]) -> Path:
    """``runs/<name>`` under the working directory."""
    return Path("runs") / str(cfg.get("name") or "experiment")


def output_dir_of(cfg: Union[DictConfig, Mapping[str, Any]], store: Optional[RunStore] = None) -> Path:
    """``cfg.output_dir`` if set, else the run folder of ``store`` (default ``runs/<name>``)."""
    if cfg.get("output_dir"):
        return Path(cfg["output_dir"])
    store = store or RunStore(default_runs_root(cfg))
    return store._find(run_key(cfg)) or store.run_dir(run_key(cfg), run_label(cfg))


# ----------------------------------------------------------------------------- helpers
def resolve_threads(threads: Any = "auto", jobs: int = 1) -> Optional[int]:
    """torch intra-op threads of one run: ``auto`` = ``min(4, usable CPUs // jobs)`` (at least 1;
    ``jobs`` runs side by side), an int as given, None = leave torch's default."""
    if threads is None:
        return None
    if threads == "auto":
        try:
            ncpu = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
            ncpu = os.cpu_count() or 1
        return max(1, min(4, ncpu // max(1, int(jobs))))
    return int(threads)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> Dict[str, Any]:
    """Where a run ran: platform, CPU model and count, torch/lightning/python versions, threads,
    the CPU execution of full EA (``cpu_impl``), commit."""
    import torch

    from ea_zoo.kernels import cpu_impl

    try:
        import lightning

        lv = lightning.__version__
    except ImportError:  # pragma: no cover
        lv = None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover
        usable = os.cpu_count()
    return {
        "platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
        "torch": torch.__version__, "lightning": lv, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(), "cpu_impl": cpu_impl(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "commit": git_commit(),
    }


def state_dict_hash(module) -> str:
    """SHA-256 over a module's state_dict (sorted keys, names, dtypes, shapes, raw bytes)."""
    import torch

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _precision(tcfg: Dict[str, Any]) -> Any:
    import torch

    p = tcfg.get("precision", "auto")
    if p not in (None, "auto"):
        return p
    acc = str(tcfg.get("accelerator", "auto"))
    cuda = torch.cuda.is_available() and acc in ("auto", "gpu", "cuda")
    return "bf16-mixed" if cuda else "32-true"


def _strategy(tcfg: Dict[str, Any]) -> Any:
    import torch

    strategy = tcfg.get("strategy", "auto")
    backend = tcfg.get("process_group_backend")
    find_unused = bool(tcfg.get("find_unused_parameters", False))
    if isinstance(strategy, str) and strategy in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        from lightning.pytorch.strategies import DDPStrategy

        acc = str(tcfg.get("accelerator", "auto"))
        on_cpu = acc == "cpu" or not torch.cuda.is_available()
        if backend is None and on_cpu:
            backend = "gloo"
        start = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}[strategy]
        return DDPStrategy(process_group_backend=backend, start_method=start, find_unused_parameters=find_unused)
    return strategy


def build_model_for(cfg: DictConfig, dm) -> Any:
    """The experiment's model (through :func:`ea_zoo.build_model`), with data-determined
    arguments filled in."""
    import ea_zoo

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    for k, v in dm.model_kwargs().items():
        model_cfg.setdefault(k, v)
    return ea_zoo.build_model({"model": model_cfg, "attention": _plain(cfg.attention)})


def build_module(cfg: DictConfig, model, dm):
    from ea_zoo.train.modules import MODULES

    cls = MODULES[cfg.task]
    kw = dict(OmegaConf.to_container(cfg.optim, resolve=True))
    kw["max_epochs"] = int(cfg.trainer.max_epochs) if cfg.trainer.max_epochs is not None else 1
    if kw.get("decay_steps") is None and cfg.trainer.min_steps:
        kw["decay_steps"] = int(cfg.trainer.min_steps)
    mod = OmegaConf.to_container(cfg.module, resolve=True)
    if cfg.task in ("classification", "image"):
        kw["label_smoothing"] = mod.get("label_smoothing", 0.0)
    if cfg.task == "forecasting":
        kw.update(dm.module_kwargs())
        kw["input_norm"] = mod.get("input_norm", "none")
    return cls(model, **kw)


def _callbacks():
    """EarlyStopping that never stops before ``min_steps``, and a per-validation history."""
    from lightning.pytorch.callbacks import Callback, EarlyStopping

    class StepAwareEarlyStopping(EarlyStopping):
        def __init__(self, *args: Any, min_steps: int = 0, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.min_steps = int(min_steps or 0)

        def _run_early_stopping_check(self, trainer) -> None:
            logs = trainer.callback_metrics
            if trainer.global_step >= self.min_steps or trainer.fast_dev_run \
                    or not self._validate_condition_metric(logs):
                return super()._run_early_stopping_check(trainer)
            current = logs[self.monitor].squeeze()
            if not bool(current.isfinite()):
                return super()._run_early_stopping_check(trainer)
            # before min_steps: keep the best score and the wait count, never stop
            if self.monitor_op(current - self.min_delta, self.best_score.to(current.device)):
                self.best_score, self.wait_count = current, 0
            else:
                self.wait_count += 1

    class History(Callback):
        """One record per validation: epoch, step, the monitored value, last train loss."""

        def __init__(self, monitor: str, mode: str) -> None:
            self.monitor, self.mode = monitor, mode
            self.records: List[Dict[str, Any]] = []

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            m = trainer.callback_metrics
            rec = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)}
            for k in (self.monitor, "val/loss", "val/acc", "val/mae", "train/loss_epoch", "train/acc"):
                if k in m:
                    rec[k] = float(m[k])
            self.records.append(rec)

        def best(self) -> Optional[Dict[str, Any]]:
            recs = [r for r in self.records if self.monitor in r and math.isfinite(r[self.monitor])]
            if not recs:
                return None
            pick = min if self.mode == "min" else max
            return pick(recs, key=lambda r: r[self.monitor])  # first of equals = the saved checkpoint

    return StepAwareEarlyStopping, History


def _evaluate_split(module, loader) -> Dict[str, float]:
    """Exact metrics of ``module`` (eval mode, no grad) over ``loader`` (the training split)."""
    import torch

    was_training = module.training
    module.eval()
    acc = module._acc("train_eval")
    acc.reset()
    dev = module.device

    def move(b):
        if isinstance(b, torch.Tensor):
            return b.to(dev)
        if isinstance(b, dict):
            return {k: move(v) for k, v in b.items()}
        if isinstance(b, (list, tuple)):
            return type(b)(move(v) for v in b)
        return b

    with torch.no_grad():
        for batch in loader:
            module._eval_step(move(batch), "train_eval")
    vals = acc.values
    n = {k: float(v) for k, v in vals.items()}
    module.train(was_training)
    return {k: float(v) for k, v in module.epoch_metrics(n).items() if k != "n"}


def _jsonable(x: Any) -> Any:
    """Plain JSON types; arrays -> lists, non-finite floats -> None, other objects -> str."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, (str, int)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    return str(x)


# ----------------------------------------------------------------------------- train
def train(cfg: DictConfig, store: Optional[RunStore] = None) -> Dict[str, Any]:
    """Fit on train, keep the best-on-validation checkpoint, test it; return the results dict.

    The run folder is ``cfg.output_dir`` when set (results in ``results.json``), else the run
    folder of ``store`` (default ``RunStore("runs/<name>")``) keyed by :func:`run_key`
    (``config.json`` + ``result.json``, written atomically by global rank 0 at the end).
    """
    import torch
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from ea_zoo.train.datamodules import build_datamodule

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(_plain(cfg))
    threads = resolve_threads(cfg.get("threads", "auto"))
    if threads:
        torch.set_num_threads(threads)
    from ea_zoo.kernels import set_cpu_impl

    set_cpu_impl(cfg.get("cpu_impl", "reference"))
    key = run_key(cfg)
    explicit = bool(cfg.output_dir)
    if not explicit:
        store = store or RunStore(default_runs_root(cfg))
    out = Path(cfg.output_dir) if explicit else output_dir_of(cfg, store)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    t0 = time.time()

    dm = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    dm.prepare_data()
    dm.setup("fit")
    model = build_model_for(cfg, dm)
    module = build_module(cfg, model, dm)

    monitor = cfg.checkpoint.monitor or module.monitor
    mode = cfg.checkpoint.mode or module.monitor_mode
    ckpt = ModelCheckpoint(dirpath=str(out), filename="best", monitor=monitor, mode=mode, save_top_k=1,
                           save_last=False, enable_version_counter=False, auto_insert_metric_name=False)
    EarlyStop, History = _callbacks()
    history = History(monitor, mode)
    callbacks: List[Any] = [ckpt, history]
    tcfg = dict(OmegaConf.to_container(cfg.trainer, resolve=True))
    early = None
    if cfg.early_stopping.enabled:
        # checked after each validation (patience counts validations); a run that ends before its
        # first validation (a smoke run) has nothing to stop on
        early = EarlyStop(monitor=monitor, mode=mode, patience=int(cfg.early_stopping.patience),
                          min_delta=float(cfg.early_stopping.min_delta), min_steps=int(tcfg.get("min_steps") or 0),
                          check_on_train_epoch_end=False, strict=False)
        callbacks.append(early)
    if tcfg.get("enable_progress_bar", True):
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, int(tcfg.get("log_every_n_steps") or 10))))
    strategy = _strategy(tcfg)
    precision = _precision(tcfg)
    for k in ("precision", "strategy", "process_group_backend", "find_unused_parameters"):
        tcfg.pop(k, None)
    tcfg = {k: v for k, v in tcfg.items() if v is not None}
    if tcfg.get("val_check_interval") is not None and "check_val_every_n_epoch" in tcfg \
            and isinstance(tcfg["val_check_interval"], int):
        tcfg["check_val_every_n_epoch"] = None  # an int interval counts steps across epochs
    trainer = L.Trainer(default_root_dir=str(out), logger=CSVLogger(str(out), name="logs", version=""),
                        callbacks=callbacks, strategy=strategy, precision=precision, **tcfg)
    if trainer.is_global_zero:
        OmegaConf.save(cfg, out / "config.yaml")
        if not explicit:
            store.start(key, run_label(cfg))
    trainer.fit(module, datamodule=dm)
    fit_time = time.time() - t0
    # read before the test: restoring best.ckpt also restores the callbacks' state
    last = dict(trainer.callback_metrics)
    train_last = {k.split("/")[1].replace("_epoch", ""): float(last[k]) for k in ("train/loss_epoch", "train/acc")
                  if k in last}
    max_steps = int(tcfg.get("max_steps", -1) or -1)
    if early is not None and early.stopped_epoch > 0:
        stopped = "early_stopping"
    elif max_steps > 0 and trainer.global_step >= max_steps:
        stopped = "max_steps"
    else:
        stopped = "max_epochs"
    epochs_run, global_steps = int(trainer.current_epoch), int(trainer.global_step)

    if cfg.debug.weight_hash:
        (out / f"weights_rank{trainer.global_rank}.sha256").write_text(state_dict_hash(module.model) + "\n")

    best_path = ckpt.best_model_path or None
    test_out = trainer.test(module, datamodule=dm, ckpt_path=best_path if best_path else None, verbose=False)
    metrics = {k: float(v) for k, v in (test_out[0] if test_out else {}).items()}
    score = ckpt.best_model_score
    # the fit: the best checkpoint (now loaded) on the whole training split, eval mode
    train_eval = _evaluate_split(module, dm.train_eval_dataloader())
    best_rec = history.best() or {}
    steps_per_epoch = trainer.num_training_batches
    results = {
        "name": cfg.name, "task": cfg.task, "label": cfg.label, "attention": cfg.label,
        "attention_config": _plain(cfg.attention),
        "seed": int(cfg.seed), "config_hash": config_hash(key),
        "test": metrics,
        "best_val": {"monitor": monitor, "mode": mode, "value": float(score) if score is not None else None},
        "best_epoch": best_rec.get("epoch"), "best_step": best_rec.get("step"),
        "train": {"eval_best": train_eval, "last_epoch": train_last},
        "best_checkpoint": best_path, "epochs_run": epochs_run, "global_steps": global_steps,
        "steps_per_epoch": int(steps_per_epoch) if isinstance(steps_per_epoch, (int, float)) and
        math.isfinite(steps_per_epoch) else None,
        "stopped_by": stopped,
        "params": int(sum(p.numel() for p in module.model.parameters())),
        "fit_seconds": round(fit_time, 2), "wall_seconds": round(time.time() - t0, 2),
        "total_seconds": round(time.time() - t0, 2),
        "world_size": int(trainer.world_size), "precision": str(precision),
        "data": _jsonable(dm.describe()),
        "history": history.records,
        "machine": machine_info(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": {"torch": torch.__version__, "lightning": L.__version__},
        "output_dir": str(out),
    }
    results = _jsonable(results)
    if trainer.is_global_zero:
        if explicit:
            tmp = out / "results.json.tmp"
            tmp.write_text(json.dumps(results, indent=2))
            os.replace(tmp, out / "results.json")
        else:
            store.save(key, results, run_label(cfg))
    return results


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train and test one experiment config. Runs are keyed by the hash of their resolved config: "
        "the default output folder is runs/<name>/<label>-seed<seed>-<hash> under the working directory, "
        "and a config that already finished there is reported, not retrained (--force retrains).")
    parser.add_argument("--config", required=True,
                        help="experiment YAML (path, or a name under ea_zoo/configs/experiment: table3_jap, "
                             "uea (any UEA archive: data.dataset=<name>), ett (any ETT-style csv: "
                             "data.dataset=<name or path>, data.pred_len=<L'>), ...)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. attention=ea2 seed=1 trainer.max_steps=500 "
                        "attention.order=4 model.depth=3 cpu_impl=compiled (full EA's torch.compile-fused CPU path; not hashed)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved (validated) config and exit")
    parser.add_argument("--threads", default=None,
                        help="torch intra-op threads (same as the override threads=N; excluded from the run's "
                             "hash). Default 'auto': min(4, usable CPUs), which does not oversubscribe the machine; "
                             "use 1 when other runs share it (as ea-zoo ablate --jobs does). Data loading runs in "
                             "the training process (data.num_workers=0) unless data.num_workers is set")
    parser.add_argument("--runs-dir", default=None, help="run store folder (default runs/<name>)")
    parser.add_argument("--force", action="store_true", help="retrain even if this config already finished")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    cfg = load_experiment(args.config, overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    store = None if cfg.output_dir else RunStore(args.runs_dir or default_runs_root(cfg))
    if store is not None and not args.force:
        done = store.load(run_key(cfg))
        if done is not None:
            print(json.dumps({"output_dir": str(output_dir_of(cfg, store)), "test": done.get("test"),
                              "reused": True}, indent=2))
            print(f"ea-zoo train: this config already finished (hash {config_hash(run_key(cfg))}); "
                  "reported its stored result (--force retrains)", file=sys.stderr)
            return 0
    results = train(cfg, store=store)
    if results.get("world_size", 1) == 1 or os.environ.get("LOCAL_RANK", "0") == "0":
        print(json.dumps({"output_dir": results["output_dir"], "test": results["test"],
                          "train": results["train"]["eval_best"], "best_epoch": results["best_epoch"],
                          "steps": results["global_steps"], "wall_seconds": results["wall_seconds"]}, indent=2))
    return 0
