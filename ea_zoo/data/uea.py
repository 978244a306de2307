"""UEA multivariate time-series classification archive: the ``.ts`` reader and datasets.

File layout under the data root: ``UEA/<Name>/<Name>_TRAIN.ts`` and ``UEA/<Name>/<Name>_TEST.ts``
(any archive dataset by name; JapaneseVowels, SelfRegulationSCP1/2 and UWaveGestureLibrary are
the paper's Table 3). ``download=True`` fetches ``<Name>.zip`` from timeseriesclassification.com.

Reading (:func:`read_ts`):

* the header (``@problemName``, ``@timeStamps``, ``@missing``, ``@univariate``,
  ``@dimensions``, ``@equalLength``, ``@seriesLength``, ``@classLabel``, ...) is parsed into
  :attr:`TSFile.header`; ``#`` lines are comments;
* each case becomes a float array (L_i, C); series of different lengths are kept as they are
  (cases are padded later, with a mask); a dimension shorter than the case's longest is padded
  with NaN at its end;
* ``?`` (missing) becomes NaN; :func:`fill_missing` then interpolates linearly along time per
  channel, constant beyond the ends (as the Time-Series-Library's ``interpolate_missing``);
  an all-missing channel becomes 0;
* labels are mapped to ints by their order on the ``@classLabel`` line.

Splits and normalisation (:func:`load_uea`), following the Time-Series-Library (TSL)
classification pipeline where it is sound and saying so where we differ:

* **test** = the archive's TEST file (as TSL).
* **validation**: TSL uses the TEST file as its validation set too (model selection on test).
  We default to ``val_source="train"``: a *stratified* ``val_fraction`` (default 20%) of the
  TRAIN file, drawn with ``val_seed`` (default 0), held out from training. ``val_source="test"``
  reproduces TSL exactly.
* **normalisation** ``normalize="per_split"`` (default, as TSL's ``Normalizer``): per-channel
  standardisation, mean and (ddof=1) std over all time steps of all cases *of the file the split
  comes from* (TRAIN-file statistics for train and validation, TEST-file statistics for test).
  ``normalize="train"`` uses the training cases' statistics for every split (no test-file
  statistics at all); ``normalize="none"`` leaves values as they are.
* **padding**: every case is zero-padded (after normalisation) at the end to ``max_len`` =
  the longest case in TRAIN or TEST (as TSL), with a key-padding mask (True = a real step).
* **timestamps**: the sampling times of each step, as float: the archive's timestamps when
  ``@timeStamps true`` (numeric), else the step index 0, 1, 2, ...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ea_zoo.data.download import ensure_dataset

__all__ = [
    "TSFile",
    "read_ts",
    "fill_missing",
    "UEADataset",
    "UEASplits",
    "load_uea",
    "stratified_split",
    "uea_paths",
    "UEA_TABLE3",
]

#: Table 3 datasets: short name -> archive name
UEA_TABLE3 = {
    "JAP": "JapaneseVowels",
    "SCP1": "SelfRegulationSCP1",
    "SCP2": "SelfRegulationSCP2",
    "UWG": "UWaveGestureLibrary",
}

_BOOL = {"true": True, "false": False}


@dataclass
class TSFile:
    """One parsed ``.ts`` file.

    Attributes:
        header: the ``@`` fields, lower-cased keys, values parsed (bools, ints, label list).
        series: one float64 array (L_i, C) per case; NaN where the file has ``?``.
        times: one float64 array (L_i,) per case: the timestamps, or 0..L_i-1.
        labels: one label string per case (empty when the file has no class labels).
        class_labels: the ``@classLabel`` values in their declared order.
    """

    header: Dict[str, Any]
    series: List[np.ndarray]
    times: List[np.ndarray]
    labels: List[str]
    class_labels: List[str] = field(default_factory=list)

    @property
    def num_cases(self) -> int:
        return len(self.series)

    @property
    def num_channels(self) -> int:
        return int(self.series[0].shape[1]) if self.series else int(self.header.get("dimensions", 0))

    @property
    def lengths(self) -> np.ndarray:
        return np.array([s.shape[0] for s in self.series], dtype=np.int64)

    def label_ids(self, class_labels: Optional[Sequence[str]] = None) -> np.ndarray:
        """Labels as ints by the order of ``class_labels`` (default: this file's ``@classLabel``)."""
        order = list(class_labels if class_labels is not None else self.class_labels)
        index = {c: i for i, c in enumerate(order)}
        try:
            return np.array([index[l] for l in self.labels], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"label {e.args[0]!r} not declared on @classLabel ({order})") from None


def _parse_header_line(line: str, header: Dict[str, Any]) -> None:
    parts = line[1:].split()
    key = parts[0].lower()
    vals = parts[1:]
    if key == "classlabel":
        has = _BOOL.get(vals[0].lower(), False) if vals else False
        header["classlabel"] = has
        header["class_labels"] = vals[1:] if has else []
    elif key == "targetlabel":
        header["targetlabel"] = _BOOL.get(vals[0].lower(), False) if vals else False
    elif len(vals) == 1 and vals[0].lower() in _BOOL:
        header[key] = _BOOL[vals[0].lower()]
    elif len(vals) == 1 and vals[0].lstrip("-").isdigit():
        header[key] = int(vals[0])
    else:
        header[key] = " ".join(vals)


def _parse_values(text: str) -> np.ndarray:
    text = text.strip()
    if not text:
        return np.empty(0)
    if "?" in text:
        text = text.replace("?", "nan")
    return np.array(text.split(","), dtype=np.float64)


def _parse_timestamped(text: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(t1,v1),(t2,v2),...`` -> (times, values); timestamps must be numeric."""
    text = text.strip()
    if not text:
        return np.empty(0), np.empty(0)
    pairs = [p.strip(" ,") for p in text.strip("()").split("),(")]
    ts, vs = [], []
    for p in pairs:
        t, v = p.rsplit(",", 1)
        try:
            ts.append(float(t))
        except ValueError:
            raise ValueError(f"non-numeric timestamp {t!r}: only numeric @timeStamps are supported") from None
        vs.append(float("nan") if v.strip() == "?" else float(v))
    return np.array(ts), np.array(vs)


def read_ts(path) -> TSFile:
    """Parse a UEA/sktime ``.ts`` file (see the module docstring)."""
    path = Path(path)
    header: Dict[str, Any] = {}
    series: List[np.ndarray] = []
    times: List[np.ndarray] = []
    labels: List[str] = []
    in_data = False
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if not line.startswith("@"):
                    raise ValueError(f"{path}:{lineno}: expected a header line (@...) before @data")
                if line.lower().startswith("@data"):
                    in_data = True
                    continue
                _parse_header_line(line, header)
                continue
            has_label = header.get("classlabel", False) or header.get("targetlabel", False)
            stamped = header.get("timestamps", False)
            fields = line.split(":")
            if has_label:
                fields, lab = fields[:-1], fields[-1].strip()
                labels.append(lab)
            dims_t, dims_v = [], []
            for fld in fields:
                if stamped:
                    t, v = _parse_timestamped(fld)
                else:
                    v = _parse_values(fld)
                    t = np.arange(len(v), dtype=np.float64)
                dims_t.append(t)
                dims_v.append(v)
            n_dims = header.get("dimensions")
            if isinstance(n_dims, int) and len(dims_v) != n_dims:
                raise ValueError(f"{path}:{lineno}: {len(dims_v)} dimensions, header says {n_dims}")
            L = max(len(v) for v in dims_v)
            arr = np.full((L, len(dims_v)), np.nan)
            for j, v in enumerate(dims_v):
                arr[: len(v), j] = v
            longest = int(np.argmax([len(v) for v in dims_v]))
            series.append(arr)
            times.append(dims_t[longest].astype(np.float64))
    if not in_data:
        raise ValueError(f"{path}: no @data section")
    class_labels = list(header.get("class_labels", []))
    return TSFile(header=header, series=series, times=times, labels=labels, class_labels=class_labels)


def fill_missing(x: np.ndarray) -> np.ndarray:
    """Fill NaNs in a (L, C) series: linear interpolation along time per channel, the nearest
    value beyond the ends, 0 for an all-missing channel. Returns a new array."""
    x = np.array(x, dtype=np.float64, copy=True)
    if not np.isnan(x).any():
        return x
    idx = np.arange(x.shape[0])
    for c in range(x.shape[1]):
        col = x[:, c]
        bad = np.isnan(col)
        if not bad.any():
            continue
        if bad.all():
            col[:] = 0.0
        else:
            col[bad] = np.interp(idx[bad], idx[~bad], col[~bad])
    return x


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of each class held out (at least one case per class
    that has two or more), drawn with ``numpy.random.default_rng(seed)``; both sorted."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = int(round(fraction * len(members)))
        if len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        else:
            n = 0
        held.extend(rng.permutation(members)[:n].tolist())
    held = np.sort(np.array(held, dtype=np.int64))
    keep = np.setdiff1d(np.arange(len(labels)), held)
    return keep, held


def _stats(series: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    allv = np.concatenate(list(series), axis=0)
    mean = allv.mean(axis=0)
    std = allv.std(axis=0, ddof=1) if allv.shape[0] > 1 else np.ones_like(mean)
    return mean, std


class UEADataset(Dataset):
    """Padded cases of one split.

    Each item is a dict: ``x`` (max_len, C) float32 (zeros after the case's end), ``t``
    (max_len,) float32 sampling times (zeros after the end), ``mask`` (max_len,) bool (True =
    real step), ``y`` int64 label, ``length`` int64.
    """

    def __init__(self, series: Sequence[np.ndarray], times: Sequence[np.ndarray], labels: np.ndarray,
                 max_len: int) -> None:
        n = len(series)
        C = series[0].shape[1]
        self.x = torch.zeros(n, max_len, C, dtype=torch.float32)
        self.t = torch.zeros(n, max_len, dtype=torch.float32)
        self.mask = torch.zeros(n, max_len, dtype=torch.bool)
        self.lengths = torch.zeros(n, dtype=torch.long)
        for i, (s, t) in enumerate(zip(series, times)):
            L = min(s.shape[0], max_len)
            self.x[i, :L] = torch.from_numpy(s[:L]).float()
            self.t[i, :L] = torch.from_numpy(t[:L]).float()
            self.mask[i, :L] = True
            self.lengths[i] = L
        self.y = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return {"x": self.x[i], "t": self.t[i], "mask": self.mask[i], "y": self.y[i], "length": self.lengths[i]}


@dataclass
class UEASplits:
    """The three splits of a UEA dataset and what a model needs to know about it."""

    name: str
    train: UEADataset
    val: UEADataset
    test: UEADataset
    num_classes: int
    num_channels: int
    max_len: int
    class_labels: List[str]
    info: Dict[str, Any] = field(default_factory=dict)


def uea_paths(name: str, root=None, download: bool = False) -> Tuple[Path, Path]:
    """(TRAIN, TEST) ``.ts`` paths of archive dataset ``name``; raises DataNotFoundError when
    missing (naming both expected paths) unless ``download=True``."""
    paths = ensure_dataset(name, root=root, download=download)
    return paths[f"UEA/{name}/{name}_TRAIN.ts"], paths[f"UEA/{name}/{name}_TEST.ts"]


def load_uea(name: str, root=None, download: bool = False, val_source: str = "train",
             val_fraction: float = 0.2, val_seed: int = 0, normalize: str = "per_split",
             max_len: Optional[int] = None) -> UEASplits:
    """Read ``name`` (archive name or Table 3 short name) into train/val/test datasets.

    Args:
        name: archive name (``"JapaneseVowels"``) or short name (``"JAP"``, ``"SCP1"``, ...).
        root: data root (see :mod:`ea_zoo.data.paths`).
        download: fetch the archive zip when the files are missing.
        val_source: ``"train"`` (a stratified ``val_fraction`` of TRAIN, seed ``val_seed``)
            or ``"test"`` (TSL: validation = test = the TEST file).
        normalize: ``"per_split"`` (TSL), ``"train"`` or ``"none"`` (module docstring).
        max_len: pad/crop length; default the longest case in TRAIN and TEST.
    """
    name = UEA_TABLE3.get(name, name)
    train_path, test_path = uea_paths(name, root, download)
    tr, te = read_ts(train_path), read_ts(test_path)
    classes = tr.class_labels or sorted(set(tr.labels) | set(te.labels))
    y_tr, y_te = tr.label_ids(classes), te.label_ids(classes)
    x_tr = [fill_missing(s) for s in tr.series]
    x_te = [fill_missing(s) for s in te.series]
    t_tr, t_te = tr.times, te.times
    if val_source == "train":
        keep, held = stratified_split(y_tr, val_fraction, val_seed)
    elif val_source == "test":
        keep, held = np.arange(len(y_tr)), np.empty(0, dtype=np.int64)
    else:
        raise ValueError(f"val_source must be 'train' or 'test', got {val_source!r}")

    if normalize == "per_split":
        m_tr, s_tr = _stats(x_tr)  # the TRAIN file's statistics (train + carved validation)
        m_te, s_te = _stats(x_te)
    elif normalize == "train":
        m_tr, s_tr = _stats([x_tr[i] for i in keep])
        m_te, s_te = m_tr, s_tr
    elif normalize == "none":
        C = x_tr[0].shape[1]
        m_tr = m_te = np.zeros(C)
        s_tr = s_te = np.ones(C)
    else:
        raise ValueError(f"normalize must be 'per_split', 'train' or 'none', got {normalize!r}")
    eps = np.finfo(float).eps
    x_tr = [(s - m_tr) / (s_tr + eps) for s in x_tr]
    x_te = [(s - m_te) / (s_te + eps) for s in x_te]

    L = int(max_len or max(tr.lengths.max(), te.lengths.max()))
    train = UEADataset([x_tr[i] for i in keep], [t_tr[i] for i in keep], y_tr[keep], L)
    test = UEADataset(x_te, t_te, y_te, L)
    val = UEADataset([x_tr[i] for i in held], [t_tr[i] for i in held], y_tr[held], L) if len(held) else test
    info = {
        "train_file": str(train_path), "test_file": str(test_path),
        "val_source": val_source, "val_fraction": val_fraction if val_source == "train" else None,
        "val_seed": val_seed if val_source == "train" else None, "normalize": normalize,
        "n_train": len(train), "n_val": len(val), "n_test": len(test),
        "length_range": [int(min(tr.lengths.min(), te.lengths.min())), int(max(tr.lengths.max(), te.lengths.max()))],
    }
    return UEASplits(name=name, train=train, val=val, test=test, num_classes=len(classes),
                     num_channels=tr.num_channels, max_len=L, class_labels=list(classes), info=info)
