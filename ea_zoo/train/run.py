"""``ea-zoo train``: train and test one experiment config with Lightning.

    ea-zoo train --config configs/experiment/table3_jap.yaml attention=ea2 seed=1 trainer.max_epochs=50
    ea-zoo train --config table4_etth2_6 trainer.strategy=ddp trainer.devices=2 trainer.accelerator=cpu

An experiment config (omegaconf YAML, ``configs/experiment/``) has these sections; anything
left out takes the value of :data:`DEFAULTS`:

* ``defaults``: list of other config files merged first, relative to ``configs/``
  (``[data/jap]`` -> ``configs/data/jap.yaml``); the experiment's own keys win.
* ``name``, ``task`` (``classification`` | ``forecasting`` | ``image``), ``seed``, ``threads``.
* ``data``: the DataModule (:mod:`ea_zoo.train.datamodules`; ``kind`` = uea | forecast | image).
* ``model`` and ``attention``: what :func:`ea_zoo.build_model` takes; the data fill in
  ``in_chans``/``num_classes``/``pred_len``/``out_chans``/``img_size`` unless set.
* ``optim`` (lr, weight_decay, warmup_epochs, scheduler, min_lr_ratio), ``module``
  (label_smoothing for classification; input_norm none | last | mean_std for forecasting, see
  :class:`~ea_zoo.train.modules.ForecastingModule`).
* ``trainer``: Lightning ``Trainer`` arguments (max_epochs, accelerator, devices, strategy,
  precision, deterministic, gradient_clip_val, limit_*_batches, enable_progress_bar, ...).
  ``precision: auto`` = ``bf16-mixed`` on CUDA, ``32-true`` otherwise.
  ``strategy: ddp`` / ``ddp_spawn`` with ``devices: N`` trains on N processes; on CPU (or with
  ``process_group_backend: gloo``) the process group uses gloo.
* ``early_stopping`` (enabled, patience, min_delta) and ``checkpoint`` (monitor, mode): the
  best-on-validation checkpoint (default monitor: ``val/acc`` max for classification,
  ``val/loss`` min = scaled MSE for forecasting) is kept and used for the test.
* ``output_dir``: default ``runs/<name>/<attention>/seed<seed>``. It receives ``best.ckpt``,
  ``results.json`` (test metrics, best validation score, sizes, timings, data description,
  resolved config) beside it, ``config.yaml`` and the CSV logs (``logs/``).
* ``debug.weight_hash``: each process writes the SHA-256 of its final ``state_dict`` to
  ``weights_rank<r>.sha256`` (used by the DDP test to check all ranks agree).

Overrides are omegaconf dotlist strings (``key=value``); ``attention=<name>`` switches the
backend (its ``configs/attention/<name>.yaml``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf

from ea_zoo.configs import config_dir

__all__ = ["DEFAULTS", "load_experiment", "train", "add_arguments", "run", "state_dict_hash", "CONFIG_DIR"]

CONFIG_DIR = config_dir()

DEFAULTS: Dict[str, Any] = {
    "name": "experiment",
    "task": "classification",
    "seed": 0,
    "threads": None,
    "output_dir": None,
    "data": {},
    "model": {},
    "attention": "ea6",
    "optim": {"lr": 1e-3, "weight_decay": 0.01, "warmup_epochs": 0.0, "scheduler": "cosine", "min_lr_ratio": 0.0},
    "module": {"label_smoothing": 0.0, "input_norm": "none"},
    "trainer": {
        "max_epochs": 30, "accelerator": "auto", "devices": 1, "num_nodes": 1, "strategy": "auto",
        "precision": "auto", "deterministic": False, "gradient_clip_val": 1.0, "accumulate_grad_batches": 1,
        "limit_train_batches": None, "limit_val_batches": None, "limit_test_batches": None,
        "enable_progress_bar": True, "log_every_n_steps": 10, "process_group_backend": None,
        "find_unused_parameters": False, "check_val_every_n_epoch": 1,
    },
    "early_stopping": {"enabled": True, "patience": 10, "min_delta": 0.0},
    "checkpoint": {"monitor": None, "mode": None},
    "debug": {"weight_hash": False},
}


# ----------------------------------------------------------------------------- config
def _config_path(path_or_name: Union[str, Path], group: str = "experiment") -> Path:
    p = Path(path_or_name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    for cand in (p, CONFIG_DIR / group / f"{path_or_name}.yaml", CONFIG_DIR / f"{path_or_name}.yaml"):
        if cand.is_file():
            return cand
    known = sorted(q.stem for q in (CONFIG_DIR / group).glob("*.yaml"))
    raise FileNotFoundError(f"experiment config {str(path_or_name)!r} not found (a YAML path, or one of: "
                            f"{', '.join(known)})")


def _load_with_defaults(path: Path, seen: Optional[set] = None) -> DictConfig:
    seen = set() if seen is None else seen
    if path.resolve() in seen:
        raise ValueError(f"config defaults loop at {path}")
    seen.add(path.resolve())
    node = OmegaConf.load(path)
    base = OmegaConf.create({})
    for ref in node.pop("defaults", []) or []:
        ref_path = CONFIG_DIR / f"{ref}.yaml"
        if not ref_path.is_file():
            ref_path = (path.parent / f"{ref}.yaml")
        if not ref_path.is_file():
            raise FileNotFoundError(f"{path}: defaults entry {ref!r} not found as configs/{ref}.yaml")
        base = OmegaConf.merge(base, _load_with_defaults(ref_path, seen))
    return OmegaConf.merge(base, node)


def load_experiment(config: Union[str, Path, Dict[str, Any], DictConfig],
                    overrides: Sequence[str] = ()) -> DictConfig:
    """Experiment config (path, name under configs/experiment, dict) + dotlist overrides,
    merged over :data:`DEFAULTS`."""
    if isinstance(config, (str, Path)):
        node = _load_with_defaults(_config_path(config))
    else:
        node = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(config)) if isinstance(config, DictConfig)
                                else config)
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), node)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, _, raw = item.partition("=")
        value = OmegaConf.from_dotlist([f"v={raw}"]).v if raw != "" else None
        if key.split(".")[0] not in cfg:
            raise ValueError(f"unknown key {key!r}; top-level keys: {', '.join(sorted(cfg.keys()))}")
        OmegaConf.update(cfg, key, value, merge=key != "attention")
    if cfg.task not in ("classification", "forecasting", "image"):
        raise ValueError(f"task must be classification, forecasting or image, got {cfg.task!r}")
    return cfg


def attention_tag(attention: Any) -> str:
    if isinstance(attention, str):
        return attention
    try:
        from ea_zoo.models.binding import attention_label

        return attention_label(OmegaConf.to_container(attention) if isinstance(attention, DictConfig) else attention)
    except Exception:  # pragma: no cover
        return "attention"


def output_dir_of(cfg: DictConfig) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    return Path("runs") / str(cfg.name) / attention_tag(cfg.attention) / f"seed{cfg.seed}"


# ----------------------------------------------------------------------------- helpers
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
    """The experiment's model, with data-determined arguments filled in."""
    import ea_zoo.models  # noqa: F401  (registers models)
    from ea_zoo.models import build_model

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    for k, v in dm.model_kwargs().items():
        model_cfg.setdefault(k, v)
    attention = cfg.attention
    attention = OmegaConf.to_container(attention, resolve=True) if isinstance(attention, DictConfig) else attention
    return build_model({"model": model_cfg, "attention": attention})


def build_module(cfg: DictConfig, model, dm):
    from ea_zoo.train.modules import MODULES

    cls = MODULES[cfg.task]
    kw = dict(OmegaConf.to_container(cfg.optim, resolve=True))
    kw["max_epochs"] = int(cfg.trainer.max_epochs)
    mod = OmegaConf.to_container(cfg.module, resolve=True)
    if cfg.task in ("classification", "image"):
        kw["label_smoothing"] = mod.get("label_smoothing", 0.0)
    if cfg.task == "forecasting":
        kw.update(dm.module_kwargs())
        kw["input_norm"] = mod.get("input_norm", "none")
    return cls(model, **kw)


# ----------------------------------------------------------------------------- train
def train(cfg: DictConfig) -> Dict[str, Any]:
    """Fit on train, keep the best-on-validation checkpoint, test it; return the results dict
    (also written to ``<output_dir>/results.json`` by global rank 0)."""
    import torch
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from ea_zoo.train.datamodules import build_datamodule

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = output_dir_of(cfg)
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
    callbacks: List[Any] = [ckpt]
    tcfg = dict(OmegaConf.to_container(cfg.trainer, resolve=True))
    if cfg.early_stopping.enabled:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=int(cfg.early_stopping.patience),
                                       min_delta=float(cfg.early_stopping.min_delta)))
    if tcfg.get("enable_progress_bar", True):
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, int(tcfg.get("log_every_n_steps") or 10))))
    strategy = _strategy(tcfg)
    precision = _precision(tcfg)
    for k in ("precision", "strategy", "process_group_backend", "find_unused_parameters"):
        tcfg.pop(k, None)
    tcfg = {k: v for k, v in tcfg.items() if v is not None}
    trainer = L.Trainer(default_root_dir=str(out), logger=CSVLogger(str(out), name="logs", version=""),
                        callbacks=callbacks, strategy=strategy, precision=precision, **tcfg)
    if trainer.is_global_zero:
        OmegaConf.save(cfg, out / "config.yaml")
    trainer.fit(module, datamodule=dm)
    fit_time = time.time() - t0

    if cfg.debug.weight_hash:
        (out / f"weights_rank{trainer.global_rank}.sha256").write_text(state_dict_hash(module.model) + "\n")

    best = ckpt.best_model_path or None
    test_out = trainer.test(module, datamodule=dm, ckpt_path=best if best else None, verbose=False)
    metrics = {k: float(v) for k, v in (test_out[0] if test_out else {}).items()}
    score = ckpt.best_model_score
    results = {
        "name": cfg.name, "task": cfg.task, "attention": attention_tag(cfg.attention), "seed": int(cfg.seed),
        "test": metrics,
        "best_val": {"monitor": monitor, "mode": mode, "value": float(score) if score is not None else None},
        "best_checkpoint": best, "epochs_run": int(trainer.current_epoch), "global_steps": int(trainer.global_step),
        "params": int(sum(p.numel() for p in module.model.parameters())),
        "fit_seconds": round(fit_time, 2), "total_seconds": round(time.time() - t0, 2),
        "world_size": int(trainer.world_size), "precision": str(precision),
        "data": _jsonable(dm.describe()),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": {"torch": torch.__version__, "lightning": L.__version__},
    }
    if trainer.is_global_zero:
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, out / "results.json")
    return results


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="experiment YAML (path, or a name under configs/experiment, e.g. table3_jap)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. attention=ea2 seed=1 trainer.max_epochs=5")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    cfg = load_experiment(args.config, args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from ea_zoo.data.paths import DataNotFoundError

    try:
        results = train(cfg)
    except DataNotFoundError as e:
        print(f"ea-zoo train: {e}", file=sys.stderr)
        return 3
    if results.get("world_size", 1) == 1 or os.environ.get("LOCAL_RANK", "0") == "0":
        print(json.dumps({"output_dir": str(output_dir_of(cfg)), "test": results["test"]}, indent=2))
    return 0
