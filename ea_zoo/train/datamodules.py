"""LightningDataModules over :mod:`ea_zoo.data`, built from an experiment config's ``data`` section.

``data.kind`` selects the module:

* ``uea`` -> :class:`UEADataModule` (keys: ``dataset``, ``val_source``, ``val_fraction``,
  ``val_seed``, ``normalize``, ``max_len``; see :func:`ea_zoo.data.uea.load_uea`);
* ``forecast`` -> :class:`ForecastDataModule` (``dataset`` = an ETT name or the path of any
  ETT-style csv, ``seq_len``, ``pred_len``, ``features``, ``target``, ``timestamps``, ``path``,
  ``split``, ``val_source``; see :func:`ea_zoo.data.ett.load_forecast`);
* ``image`` -> :class:`ImageDataModule` (``dataset``, ``val_fraction``, ``val_seed``,
  ``augment``, ``limit_train``; see :func:`ea_zoo.data.images.load_images`).

Common keys: ``root`` (data root; None = ``$EA_ZOO_DATA`` / ``../shared/data`` / cache),
``download`` (opt-in), ``batch_size``, ``eval_batch_size``, ``num_workers`` (data-loader
processes; default 0 = load in the training process, which never oversubscribes the CPUs the
run's torch threads use).

Model selection (``val_source``): UEA ``train`` (a stratified part of TRAIN, protocol 1) or
``test`` (the TEST file, the Time-Series-Library's classification protocol); forecasting
``val`` (the TSL validation period, protocol 1) or ``test`` (validate on the test windows).

Data are loaded once per process in :meth:`setup` (every DDP process reads the files itself;
Lightning adds the ``DistributedSampler``). :meth:`model_kwargs` gives the model arguments
the data fix (channels, classes, horizon, image size).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

import lightning as L
from torch.utils.data import DataLoader

__all__ = ["UEADataModule", "ForecastDataModule", "ImageDataModule", "build_datamodule", "DATAMODULES", "is_csv_path"]


class _Base(L.LightningDataModule):
    def __init__(self, root: Optional[str] = None, download: bool = False, batch_size: int = 32,
                 eval_batch_size: Optional[int] = None, num_workers: int = 0, **kw: Any) -> None:
        super().__init__()
        self.root, self.download = root, bool(download)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.options = kw
        self.splits = None

    def _load(self):
        raise NotImplementedError

    def prepare_data(self) -> None:
        # downloads (opt-in) happen here once per node; loading itself is in setup
        if self.download:
            self._load()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits is None:
            self.splits = self._load()

    def _loader(self, ds, train: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
                          drop_last=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        self.setup()
        return self._loader(self.splits.train, True)

    def val_dataloader(self):
        self.setup()
        return self._loader(self.splits.val, False)

    def test_dataloader(self):
        self.setup()
        return self._loader(self.splits.test, False)

    def train_eval_dataloader(self):
        """The training split in order, at the evaluation batch size (to measure the fit)."""
        self.setup()
        return DataLoader(self.splits.train, batch_size=self.eval_batch_size, shuffle=False, drop_last=False,
                          num_workers=self.num_workers)

    def model_kwargs(self) -> Dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        self.setup()
        return dict(self.splits.info)


class UEADataModule(_Base):
    """UEA classification (Table 3). Options: see :func:`ea_zoo.data.uea.load_uea`."""

    def __init__(self, dataset: str = "JapaneseVowels", val_source: str = "train", val_fraction: float = 0.2,
                 val_seed: int = 0, normalize: str = "per_split", max_len: Optional[int] = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.dataset = dataset
        self.load_kw = dict(val_source=val_source, val_fraction=val_fraction, val_seed=val_seed,
                            normalize=normalize, max_len=max_len)

    def _load(self):
        from ea_zoo.data.uea import load_uea

        return load_uea(self.dataset, root=self.root, download=self.download, **self.load_kw)

    def model_kwargs(self) -> Dict[str, Any]:
        self.setup()
        return {"in_chans": self.splits.num_channels, "num_classes": self.splits.num_classes}


class ForecastDataModule(_Base):
    """ETT / Traffic forecasting (Table 4). Options: see :func:`ea_zoo.data.ett.load_forecast`."""

    def __init__(self, dataset: str = "ETTh2", seq_len: int = 6, pred_len: int = 6, features: str = "S",
                 target: str = "OT", path: Optional[str] = None, kind: Optional[str] = None,
                 timestamps: str = "hour_of_week", val_source: str = "val", split: Optional[str] = None,
                 **kw: Any) -> None:
        super().__init__(**kw)
        if val_source not in ("val", "test"):
            raise ValueError(f"data.val_source={val_source!r} is not valid for forecasting; valid values: 'val', 'test'")
        self.dataset = dataset
        self.val_source = val_source
        self.load_kw = dict(seq_len=int(seq_len), pred_len=int(pred_len), features=features, target=target,
                            path=path, kind=split or kind, timestamps=timestamps)

    def _load(self):
        from ea_zoo.data.ett import load_forecast

        splits = load_forecast(self.dataset, root=self.root, download=self.download, **self.load_kw)
        if self.val_source == "test":  # selection on the test windows
            splits.info["val_source"] = "test"
            splits.val = splits.test
        return splits

    def model_kwargs(self) -> Dict[str, Any]:
        self.setup()
        s = self.splits
        return {"in_chans": s.num_inputs, "out_chans": s.num_outputs, "pred_len": s.pred_len}

    def module_kwargs(self) -> Dict[str, Any]:
        self.setup()
        s = self.splits
        out_index = None if s.features in ("S", "M") else [s.in_columns.index(c) for c in s.out_columns]
        return {"out_mean": s.out_mean.tolist(), "out_std": s.out_std.tolist(), "out_index": out_index}


class ImageDataModule(_Base):
    """Fashion-MNIST / CIFAR-10. Options: see :func:`ea_zoo.data.images.load_images`."""

    def __init__(self, dataset: str = "fashion_mnist", val_fraction: float = 1 / 12, val_seed: int = 0,
                 augment: bool = True, limit_train: Optional[int] = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.dataset = dataset
        self.load_kw = dict(val_fraction=val_fraction, val_seed=val_seed, augment=augment, limit_train=limit_train)

    def _load(self):
        from ea_zoo.data.images import load_images

        return load_images(self.dataset, root=self.root, download=self.download, **self.load_kw)

    def model_kwargs(self) -> Dict[str, Any]:
        self.setup()
        s = self.splits
        return {"num_classes": s.num_classes, "in_chans": s.in_chans, "img_size": s.img_size}


DATAMODULES = {"uea": UEADataModule, "forecast": ForecastDataModule, "image": ImageDataModule}


def is_csv_path(dataset: Any) -> bool:
    """Whether a ``data.dataset`` value names a csv file (``*.csv`` or a path with a folder)."""
    if not isinstance(dataset, str):
        return False
    return dataset.lower().endswith(".csv") or "/" in dataset or os.sep in dataset


def build_datamodule(data_cfg: Mapping[str, Any]) -> _Base:
    """``data`` config section -> DataModule (``kind`` selects the class; other keys are its options)."""
    cfg = dict(data_cfg)
    kind = cfg.pop("kind", None)
    if kind not in DATAMODULES:
        raise ValueError(f"data.kind must be one of {', '.join(DATAMODULES)}, got {kind!r}")
    return DATAMODULES[kind](**cfg)
