"""Image datasets for the ViT zoo: Fashion-MNIST (offline, from the raw gz files) and CIFAR-10.

Fashion-MNIST goes through torchvision's :class:`~torchvision.datasets.FashionMNIST` class and
transforms. torchvision expects the decompressed IDX files under
``<root>/FashionMNIST/raw/``; :class:`LocalFashionMNIST` (a subclass) instead reads the
four gzipped files where they are, ``<data root>/fashion-mnist/*-ubyte.gz`` (the staged
layout; decompressed files are accepted too), without copying or decompressing them to disk.
With ``download=True`` and no local files, torchvision's own download (and md5 check) is used
into ``<data root>/fashion-mnist``.

CIFAR-10 is torchvision's :class:`~torchvision.datasets.CIFAR10` with root
``<data root>/cifar10`` (``cifar-10-batches-py/`` inside); ``download=True`` uses torchvision's
download. It is not staged offline here.

Splits: the official train/test sets; validation is a fixed ``val_fraction`` (default 1/12 =
5000 images for Fashion-MNIST) of the official train set, drawn with ``val_seed`` (stratified).
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ea_zoo.data.paths import DataNotFoundError, data_root

__all__ = ["LocalFashionMNIST", "ImageSplits", "load_images", "read_idx", "IMAGE_STATS"]

#: name -> (mean, std, num_classes, channels, size)
IMAGE_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,), 10, 1, 28),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10, 3, 32),
}

_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


_IDX_CACHE: Dict[Tuple[str, float], torch.Tensor] = {}


def read_idx(path) -> torch.Tensor:
    """Read an IDX file (gzipped or not) into a uint8 tensor (magic 2049/2051 = uint8 data).

    Results are cached per (path, mtime) in memory, so train/val views decompress once."""
    path = Path(path)
    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _IDX_CACHE:
        if len(_IDX_CACHE) >= 8:
            _IDX_CACHE.clear()
        _IDX_CACHE[key] = _read_idx(path)
    return _IDX_CACHE[key]


def _read_idx(path: Path) -> torch.Tensor:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (magic {magic})")
    nd = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * nd)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {np.prod(dims)} values, found {arr.size}")
    return torch.from_numpy(arr.reshape(dims).copy())


def _fmnist_file(folder: Path, stem: str) -> Optional[Path]:
    for cand in (folder / (stem + ".gz"), folder / stem):
        if cand.is_file():
            return cand
    return None


def _fashion_mnist_cls():
    from torchvision.datasets import FashionMNIST

    class LocalFashionMNIST(FashionMNIST):
        """torchvision's FashionMNIST reading ``<folder>/*-ubyte[.gz]`` in place.

        ``folder`` is the directory holding the four files (e.g. ``<data root>/fashion-mnist``).
        Everything else (``__getitem__`` returning PIL images through ``transform``,
        ``classes``, ``targets``) is torchvision's.
        """

        def __init__(self, folder, train: bool = True, transform=None, target_transform=None,
                     download: bool = False) -> None:
            self._folder = Path(folder)
            super().__init__(str(self._folder), train=train, transform=transform,
                             target_transform=target_transform, download=download)

        @property
        def raw_folder(self) -> str:  # torchvision: <root>/FashionMNIST/raw
            return str(self._folder)

        @property
        def processed_folder(self) -> str:
            return str(self._folder / "processed")

        def _check_exists(self) -> bool:
            return all(_fmnist_file(self._folder, s) is not None for pair in _FMNIST_FILES.values() for s in pair)

        def _load_data(self):
            img, lab = _FMNIST_FILES["train" if self.train else "test"]
            return read_idx(_fmnist_file(self._folder, img)), read_idx(_fmnist_file(self._folder, lab)).long()

    return LocalFashionMNIST


def __getattr__(name: str):  # lazy: importing torchvision only when used
    if name == "LocalFashionMNIST":
        return _fashion_mnist_cls()
    raise AttributeError(name)


@dataclass
class ImageSplits:
    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    img_size: int
    classes: List[str] = field(default_factory=list)
    info: Dict[str, Any] = field(default_factory=dict)


def _transforms(name: str, train: bool, augment: bool):
    from torchvision import transforms as T

    mean, std, _, _, size = IMAGE_STATS[name]
    ops = []
    if train and augment:
        ops += [T.RandomCrop(size, padding=2 if size <= 28 else 4)]
        if name == "cifar10":
            ops += [T.RandomHorizontalFlip()]
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def _stratified_indices(targets: np.ndarray, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    from ea_zoo.data.uea import stratified_split

    return stratified_split(targets, fraction, seed)


def load_images(name: str = "fashion_mnist", root=None, download: bool = False, val_fraction: float = 1 / 12,
                val_seed: int = 0, augment: bool = True, limit_train: Optional[int] = None) -> ImageSplits:
    """Train/val/test datasets of ``fashion_mnist`` or ``cifar10`` (module docstring)."""
    key = name.lower().replace("-", "_")
    if key in ("fashionmnist", "fmnist"):
        key = "fashion_mnist"
    if key in ("cifar_10",):
        key = "cifar10"
    if key not in IMAGE_STATS:
        raise ValueError(f"unknown image dataset {name!r}; known: {', '.join(IMAGE_STATS)}")
    base = data_root(root)
    if key == "fashion_mnist":
        folder = base / "fashion-mnist"
        cls = _fashion_mnist_cls()
        expected = [folder / (s + ".gz") for pair in _FMNIST_FILES.values() for s in pair]
        if not download and not all(_fmnist_file(folder, s) for pair in _FMNIST_FILES.values() for s in pair):
            raise DataNotFoundError("fashion_mnist", [p for p in expected if _fmnist_file(p.parent, p.stem) is None],
                                    base, hint="Pass download=True to use torchvision's Fashion-MNIST download.")
        make = lambda train, tf: cls(folder, train=train, transform=tf, download=download)  # noqa: E731
    else:
        from torchvision.datasets import CIFAR10

        folder = base / "cifar10"
        if not download and not (folder / "cifar-10-batches-py").is_dir():
            raise DataNotFoundError("cifar10", [folder / "cifar-10-batches-py"], base,
                                    hint="Pass download=True to use torchvision's CIFAR-10 download.")
        make = lambda train, tf: CIFAR10(str(folder), train=train, transform=tf, download=download)  # noqa: E731
    train_full = make(True, _transforms(key, True, augment))
    train_eval = make(True, _transforms(key, False, augment))
    test = make(False, _transforms(key, False, augment))
    targets = np.asarray(train_full.targets)
    keep, held = _stratified_indices(targets, val_fraction, val_seed)
    if limit_train is not None:
        keep = keep[:limit_train]
    _, _, ncls, chans, size = IMAGE_STATS[key]
    return ImageSplits(
        name=key, train=Subset(train_full, keep.tolist()), val=Subset(train_eval, held.tolist()), test=test,
        num_classes=ncls, in_chans=chans, img_size=size, classes=list(getattr(train_full, "classes", [])),
        info={"folder": str(folder), "n_train": len(keep), "n_val": len(held), "n_test": len(test),
              "val_fraction": val_fraction, "val_seed": val_seed},
    )
