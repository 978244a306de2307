"""Datasets of the paper's experiments: UEA classification, ETT/Traffic forecasting, images.

* :mod:`ea_zoo.data.uea` -- ``.ts`` reader, :func:`load_uea` (Table 3).
* :mod:`ea_zoo.data.ett` -- csv reader, TSL splits and windows, :func:`load_forecast` (Table 4).
* :mod:`ea_zoo.data.images` -- Fashion-MNIST / CIFAR-10 through torchvision (ViT zoo).
* :mod:`ea_zoo.data.paths` -- the data root (``data.root`` / ``$EA_ZOO_DATA`` / ``../shared/data``).
* :mod:`ea_zoo.data.download` -- opt-in downloads with SHA-256 checks.
* :mod:`ea_zoo.data.errors` -- :class:`DataError` (a ``ValueError`` with a one-line message
  naming the file, line/column, bad value and what was expected), raised by the loaders for
  bad files before any training; missing files raise :class:`DataNotFoundError`.

:func:`describe_uea` / :func:`describe_forecast` read and validate a dataset's files and
return its sizes (channels, classes, lengths, rows) for building a model.
"""
from ea_zoo.data.download import ChecksumError, download_url, ensure_dataset, sha256sum
from ea_zoo.data.errors import DataError
from ea_zoo.data.ett import (ForecastSplits, StandardScaler, describe_forecast, load_forecast, read_series_csv,
                             tsl_borders)
from ea_zoo.data.paths import ENV_VAR, DataNotFoundError, data_root
from ea_zoo.data.uea import UEA_TABLE3, UEASplits, describe_uea, load_uea, read_ts

__all__ = [
    "ChecksumError", "DataError", "DataNotFoundError", "ENV_VAR", "ForecastSplits", "StandardScaler", "UEASplits",
    "UEA_TABLE3", "data_root", "describe_forecast", "describe_uea", "download_url", "ensure_dataset",
    "load_forecast", "load_uea", "read_series_csv", "read_ts", "sha256sum", "tsl_borders", "load_images",
]


def load_images(*args, **kwargs):
    """See :func:`ea_zoo.data.images.load_images` (imports torchvision lazily)."""
    from ea_zoo.data.images import load_images as _load

    return _load(*args, **kwargs)
