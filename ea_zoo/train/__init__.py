"""Training (Lightning + omegaconf): task modules, data modules, ``ea-zoo train`` and ``ea-zoo ablate``.

* :mod:`ea_zoo.train.modules` -- LightningModules (classification, forecasting, images).
* :mod:`ea_zoo.train.datamodules` -- LightningDataModules over :mod:`ea_zoo.data`.
* :mod:`ea_zoo.train.run` -- experiment configs (``configs/experiment``), :func:`train`.
* :mod:`ea_zoo.train.ablate` -- the Table 3 / Table 4 / ViT grids and their reports.

Imports are lazy so that ``import ea_zoo.train`` does not load Lightning.
"""
__all__ = ["train", "load_experiment"]


def __getattr__(name):
    if name in ("train", "load_experiment"):
        from ea_zoo.train import run as _run

        return getattr(_run, name)
    raise AttributeError(name)
