"""Datasets of the paper's experiments: UEA classification, ETT/Traffic forecasting, images.

* :mod:`ea_zoo.data.uea` -- ``.ts`` reader, :func:`load_uea` (Table 3).
* :mod:`ea_zoo.data.ett` -- csv reader, TSL splits and windows, :func:`load_forecast` (Table 4).
* :mod:`ea_zoo.data.images` -- Fashion-MNIST / CIFAR-10 through torchvision (ViT zoo).
* :mod:`ea_zoo.data.paths` -- the data root (``data.root`` / ``$EA_ZOO_DATA`` / ``../shared/data``).
* :mod:`ea_zoo.data.download` -- opt-in downloads with SHA-256 checks.
"""
from ea_zoo.data.download import ChecksumError, download_url, ensure_dataset, sha256sum
from ea_zoo.data.ett import ForecastSplits, StandardScaler, load_forecast, read_series_csv, tsl_borders
from ea_zoo.data.paths import ENV_VAR, DataNotFoundError, data_root
from ea_zoo.data.uea import UEA_TABLE3, UEASplits, load_uea, read_ts

__all__ = [
    "ChecksumError", "DataNotFoundError", "ENV_VAR", "ForecastSplits", "StandardScaler", "UEASplits",
    "UEA_TABLE3", "data_root", "download_url", "ensure_dataset", "load_forecast", "load_uea",
    "read_series_csv", "read_ts", "sha256sum", "tsl_borders", "load_images",
]


def load_images(*args, **kwargs):
    """See :func:`ea_zoo.data.images.load_images` (imports torchvision lazily)."""
    from ea_zoo.data.images import load_images as _load

    return _load(*args, **kwargs)
