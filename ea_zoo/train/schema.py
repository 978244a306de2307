"""The typed schema of an experiment config (omegaconf structured configs), checked before any data is read.

Every section of an experiment config except ``model`` and ``attention`` (validated by
:func:`ea_zoo.models.factory.load_config`, against the model's constructor and the attention
registry) is a dataclass below. :func:`validate_experiment` rejects

* an unknown key, naming its full path, the valid keys and the nearest one
  (``unknown key 'data.batch_szie' (did you mean 'data.batch_size'?); valid keys of data
  (kind uea): data.kind, data.dataset, ...``);
* a value of the wrong type (``trainer.max_epochs='x': Value 'x' of type 'str' could not be
  converted to Integer``), outside its choices (``data.val_source='tset'; valid values:
  'train', 'test'``) or its range (``data.batch_size=0: must be >= 1``);

with a one-line :class:`ConfigError` (a ``ValueError``), and fills every key left out with its
default. The ``data`` section's schema is chosen by ``data.kind``: :class:`UEAData`
(``uea``), :class:`ForecastData` (``forecast``), :class:`ImageData` (``image``).

Budget keys (``trainer``, see :mod:`ea_zoo.train.run`): ``min_steps`` / ``max_steps`` are
optimizer steps; with ``max_epochs: -1`` the run is bounded by steps only, so a 40-case
archive and a 30k-window csv both get the same number of updates. Early stopping
(``early_stopping.patience`` validations without improvement) never stops a run before
``trainer.min_steps``.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "ConfigError", "UEAData", "ForecastData", "ImageData", "DATA_SCHEMAS", "OptimConfig", "ModuleConfig",
    "TrainerConfig", "EarlyStoppingConfig", "CheckpointConfig", "DebugConfig", "SECTIONS", "TOP_LEVEL",
    "TASKS", "validate_experiment", "section_defaults",
]

TASKS = ("classification", "forecasting", "image")


class ConfigError(ValueError):
    """An experiment config is invalid; the message is one line (key path, value, what is valid)."""


def _choices(*values: Any, default: Any) -> Any:
    return field(default=default, metadata={"choices": values})


def _ge(lo: float, default: Any, gt: bool = False) -> Any:
    return field(default=default, metadata={"gt" if gt else "ge": lo})


# ----------------------------------------------------------------------------- data
@dataclass
class UEAData:
    """``data`` of ``kind: uea`` (:class:`ea_zoo.train.datamodules.UEADataModule`): any UEA
    archive by name (``JapaneseVowels``, or a Table 3 short name ``JAP``/``SCP1``/``SCP2``/``UWG``)."""

    kind: str = "uea"
    dataset: str = "JapaneseVowels"
    root: Optional[str] = None
    download: bool = False
    #: train: a stratified ``val_fraction`` of TRAIN (protocol 1); test: validation = the TEST file (TSL)
    val_source: str = _choices("train", "test", default="train")
    val_fraction: float = field(default=0.2, metadata={"gt": 0.0, "lt": 1.0})
    val_seed: int = 0
    normalize: str = _choices("per_split", "train", "none", default="per_split")
    max_len: Optional[int] = _ge(1, None)
    batch_size: int = _ge(1, 16)
    eval_batch_size: Optional[int] = _ge(1, None)
    num_workers: int = _ge(0, 0)


@dataclass
class ForecastData:
    """``data`` of ``kind: forecast`` (:class:`ea_zoo.train.datamodules.ForecastDataModule`):
    ``dataset`` is an ETT name (ETTh1/2, ETTm1/2, traffic) or the path of any ETT-style csv
    (``date`` column first, then the variables; ``target`` among them)."""

    kind: str = "forecast"
    dataset: str = "ETTh2"
    #: a csv to read instead of the named dataset's (``dataset`` then only names it)
    path: Optional[str] = None
    #: split rule: ETTh | ETTm (the TSL month borders) | custom (70/10/20); default from the name
    split: Optional[str] = _choices(None, "ETTh", "ETTm", "custom", default=None)
    root: Optional[str] = None
    download: bool = False
    seq_len: int = _ge(1, 6)
    pred_len: int = _ge(1, 6)
    features: str = _choices("S", "M", "MS", default="S")
    target: str = "OT"
    timestamps: str = _choices("hour_of_week", "window", "series", default="hour_of_week")
    #: val: the TSL validation period (protocol 1); test: validate (select) on the test windows
    val_source: str = _choices("val", "test", default="val")
    batch_size: int = _ge(1, 32)
    eval_batch_size: Optional[int] = _ge(1, 256)
    num_workers: int = _ge(0, 0)


@dataclass
class ImageData:
    """``data`` of ``kind: image`` (:class:`ea_zoo.train.datamodules.ImageDataModule`)."""

    kind: str = "image"
    dataset: str = _choices("fashion_mnist", "cifar10", default="fashion_mnist")
    root: Optional[str] = None
    download: bool = False
    val_fraction: float = field(default=1 / 12, metadata={"gt": 0.0, "lt": 1.0})
    val_seed: int = 0
    augment: bool = True
    limit_train: Optional[int] = _ge(1, None)
    batch_size: int = _ge(1, 128)
    eval_batch_size: Optional[int] = _ge(1, 512)
    num_workers: int = _ge(0, 0)


DATA_SCHEMAS: Dict[str, type] = {"uea": UEAData, "forecast": ForecastData, "image": ImageData}


# ----------------------------------------------------------------------------- other sections
@dataclass
class OptimConfig:
    """AdamW and its schedule (:class:`ea_zoo.train.modules.BaseTaskModule`)."""

    lr: float = _ge(0.0, 1e-3, gt=True)
    weight_decay: float = _ge(0.0, 0.01)
    warmup_epochs: float = _ge(0.0, 0.0)
    warmup_steps: int = _ge(0, 0)
    scheduler: str = _choices("cosine", "none", default="cosine")
    min_lr_ratio: float = field(default=0.0, metadata={"ge": 0.0, "le": 1.0})
    #: optimizer steps over which the cosine decays to ``min_lr_ratio * lr`` (then constant);
    #: null: ``trainer.min_steps`` when set, else the whole run
    decay_steps: Optional[int] = _ge(1, None)


@dataclass
class ModuleConfig:
    """Task-module options."""

    label_smoothing: float = field(default=0.0, metadata={"ge": 0.0, "lt": 1.0})
    input_norm: str = _choices("none", "last", "mean_std", default="none")


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` arguments (the ones the zoo supports)."""

    max_epochs: Optional[int] = _ge(-1, 30)
    min_epochs: Optional[int] = _ge(0, None)
    max_steps: int = _ge(-1, -1)
    min_steps: Optional[int] = _ge(0, None)
    max_time: Optional[str] = None
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = _ge(1, 1)
    strategy: str = "auto"
    precision: Optional[Union[str, int]] = "auto"
    deterministic: Optional[Union[bool, str]] = False
    benchmark: Optional[bool] = None
    gradient_clip_val: Optional[float] = _ge(0.0, 1.0)
    accumulate_grad_batches: int = _ge(1, 1)
    limit_train_batches: Optional[Union[int, float]] = _ge(0, None)
    limit_val_batches: Optional[Union[int, float]] = _ge(0, None)
    limit_test_batches: Optional[Union[int, float]] = _ge(0, None)
    val_check_interval: Optional[Union[int, float]] = _ge(0, None, gt=True)
    check_val_every_n_epoch: Optional[int] = _ge(1, 1)
    num_sanity_val_steps: Optional[int] = _ge(-1, None)
    enable_progress_bar: bool = True
    log_every_n_steps: int = _ge(1, 10)
    process_group_backend: Optional[str] = None
    find_unused_parameters: bool = False


@dataclass
class EarlyStoppingConfig:
    """Stop after ``patience`` validations without an improvement of ``min_delta`` (never
    before ``trainer.min_steps``)."""

    enabled: bool = True
    patience: int = _ge(0, 10)
    min_delta: float = _ge(0.0, 0.0)


@dataclass
class CheckpointConfig:
    """The monitored metric of the best checkpoint and of early stopping (null: the task's)."""

    monitor: Optional[str] = None
    mode: Optional[str] = _choices(None, "min", "max", default=None)


@dataclass
class DebugConfig:
    weight_hash: bool = False


#: section name -> schema (``data``: by kind, see DATA_SCHEMAS)
SECTIONS: Dict[str, type] = {
    "optim": OptimConfig, "module": ModuleConfig, "trainer": TrainerConfig,
    "early_stopping": EarlyStoppingConfig, "checkpoint": CheckpointConfig, "debug": DebugConfig,
}

#: top-level keys (``data``, ``model``, ``attention`` and SECTIONS are mappings/specs)
TOP_LEVEL = ("name", "task", "seed", "threads", "cpu_impl", "output_dir", "label", "data", "model", "attention", *SECTIONS)


def section_defaults(cls: type) -> Dict[str, Any]:
    """The defaults of a schema dataclass as a plain dict."""
    return OmegaConf.to_container(OmegaConf.structured(cls), resolve=True)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- validation
def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _unknown(path: str, key: str, valid: List[str], what: str) -> ConfigError:
    full = f"{path}.{key}" if path else key
    near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    hint = f" (did you mean {(path + '.' if path else '') + near[0]!r}?)" if near else ""
    shown = ", ".join((path + "." if path else "") + k for k in valid)
    return ConfigError(f"unknown key {full!r}{hint}; valid keys of {what}: {shown}")


def _check_meta(path: str, f: dataclasses.Field, value: Any) -> None:
    if value is None:
        return
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        valid = ", ".join(repr(c) for c in meta["choices"])
        raise ConfigError(f"{path}={value!r} is not valid; valid values: {valid}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for op, ok, sym in (("ge", value >= meta.get("ge", value), ">="), ("gt", "gt" not in meta or value > meta["gt"], ">"),
                        ("le", value <= meta.get("le", value), "<="), ("lt", "lt" not in meta or value < meta["lt"], "<")):
        if op in meta and not ok:
            raise ConfigError(f"{path}={value!r} is out of range: must be {sym} {meta[op]}")


def _validate_section(path: str, value: Any, cls: type, what: str) -> Dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path} must be a mapping of {what} options, got {value!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    for k in value:
        if k not in names:
            raise _unknown(path, str(k), names, what)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), dict(value))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        bad = value.get(str(key).split(".")[0], None) if isinstance(value, Mapping) else None
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path}.{key}={bad!r}: {_one_line(first)}") from None
    out: Dict[str, Any] = OmegaConf.to_container(merged, resolve=True)  # type: ignore[assignment]
    for f in dataclasses.fields(cls):
        _check_meta(f"{path}.{f.name}", f, out[f.name])
    return out


def _validate_threads(value: Any) -> Any:
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"threads={value!r} is not valid; valid values: null (torch's default), 'auto' "
                          "(a share of the CPUs that does not oversubscribe) or an int >= 1")
    return value


def validate_experiment(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """Check every section but ``model``/``attention`` against its schema; return the config
    with defaults filled in (a plain dict). Raises :class:`ConfigError` (one line)."""
    cfg = dict(cfg)
    for k in cfg:
        if k not in TOP_LEVEL:
            raise _unknown("", str(k), list(TOP_LEVEL), "an experiment config")
    out: Dict[str, Any] = dict(cfg)
    name = cfg.get("name", "experiment")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name={name!r} must be a non-empty string")
    out["name"] = name
    task = cfg.get("task", "classification")
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is not valid; valid values: {', '.join(map(repr, TASKS))}")
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} must be an int")
    out["threads"] = _validate_threads(cfg.get("threads", "auto"))
    from ea_zoo.kernels import CPU_IMPLS

    cpu_impl = cfg.get("cpu_impl", "reference")
    if cpu_impl not in CPU_IMPLS:
        raise ConfigError(f"cpu_impl={cpu_impl!r} is not valid; valid values: {', '.join(map(repr, CPU_IMPLS))}")
    out["cpu_impl"] = cpu_impl
    for key in ("output_dir", "label"):
        v = cfg.get(key)
        if v is not None and not isinstance(v, (str, int)):
            raise ConfigError(f"{key}={v!r} must be a string or null")
        out[key] = None if v is None else str(v)

    data = cfg.get("data") or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"data must be a mapping with 'kind' and 'dataset', got {data!r}")
    kind = data.get("kind")
    if kind not in DATA_SCHEMAS:
        raise ConfigError(f"data.kind={kind!r} is not valid; valid values: {', '.join(map(repr, DATA_SCHEMAS))}")
    out["data"] = _validate_section("data", data, DATA_SCHEMAS[kind], f"data (kind {kind})")
    for sec, cls in SECTIONS.items():
        out[sec] = _validate_section(sec, cfg.get(sec), cls, sec)
    t = out["trainer"]
    if t["max_epochs"] in (None, -1) and t["max_steps"] in (None, -1) and not t["max_time"]:
        raise ConfigError("the run has no bound: set trainer.max_steps (optimizer steps) or trainer.max_epochs "
                          f"(got max_epochs={t['max_epochs']!r}, max_steps={t['max_steps']!r})")
    if t["min_steps"] is not None and t["max_steps"] not in (None, -1) and t["min_steps"] > t["max_steps"]:
        t["min_steps"] = t["max_steps"]  # a short run (max_steps=100) keeps its meaning: the cap wins
    expected = {"classification": ("uea",), "forecasting": ("forecast",), "image": ("image",)}[task]
    if kind not in expected:
        raise ConfigError(f"data.kind={kind!r} does not fit task={task!r}; valid data.kind for it: {expected[0]!r}")
    return out
