"""Training (Lightning + omegaconf): task modules, data modules, ``ea-zoo train`` and ``ea-zoo ablate``.

* :mod:`ea_zoo.train.modules` -- LightningModules (classification, forecasting, images).
* :mod:`ea_zoo.train.datamodules` -- LightningDataModules over :mod:`ea_zoo.data`.
* :mod:`ea_zoo.train.schema` -- the typed schema of an experiment config (checked before any data is read).
* :mod:`ea_zoo.train.run` -- experiment configs (``ea_zoo/configs/experiment``), :func:`train`.
* :mod:`ea_zoo.train.runs` -- runs keyed by the hash of their resolved config (resume, never stale).
* :mod:`ea_zoo.train.ablate` -- ``ea-zoo ablate``: any dataset x backends x seeds x selection protocols.
* :mod:`ea_zoo.train.report`, :mod:`ea_zoo.train.stats` -- its report and the paired t-interval verdicts.

Imports are lazy so that ``import ea_zoo.train`` does not load Lightning.
"""
__all__ = ["train", "load_experiment"]


def __getattr__(name):
    if name in ("train", "load_experiment"):
        from ea_zoo.train import run as _run

        return getattr(_run, name)
    raise AttributeError(name)
