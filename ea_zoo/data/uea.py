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

Validation: a bad file raises :class:`~ea_zoo.data.errors.DataError` (a ``ValueError`` with a
one-line message naming the file, line, dimension/value position, the bad value and what was
expected) while reading, before any dataset is built: a non-numeric or non-finite value
(``inf``, ``nan``; ``?`` is the missing-value marker and stays allowed), a case whose number of
dimensions differs from ``@dimensions`` or from the file's first case, TRAIN and TEST files
with different channel counts, a file with no cases (header only), a case with no values or
without its label, a label not among the classes, an unlabelled file. Variable-length cases
(``@equalLength false``) and dimensions of different lengths within a case stay allowed.
:func:`describe_uea` returns a dataset's sizes (channels, classes, lengths, cases).

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

from ea_zoo.data.download import ensure_dataset, uea_source
from ea_zoo.data.errors import DataError, check_positive_int

__all__ = [
    "TSFile",
    "read_ts",
    "fill_missing",
    "UEADataset",
    "UEASplits",
    "load_uea",
    "stratified_split",
    "uea_paths",
    "describe_uea",
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
    path: Optional[Path] = None
    case_lines: List[int] = field(default_factory=list)

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
        """Labels as ints by the order of ``class_labels`` (default: this file's ``@classLabel``).

        Raises :class:`DataError` (file and line) for a label not in ``class_labels``."""
        order = list(class_labels if class_labels is not None else self.class_labels)
        index = {c: i for i, c in enumerate(order)}
        out = np.empty(len(self.labels), dtype=np.int64)
        for k, lab in enumerate(self.labels):
            i = index.get(lab)
            if i is None:
                line = self.case_lines[k] if k < len(self.case_lines) else None
                raise DataError(self.path or "<.ts file>", "undeclared class label", line=line, column="label",
                                value=lab, expected=f"one of {_list(order)}")
            out[k] = i
        return out


def _list(items: Sequence[Any], n: int = 10) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _parse_header_line(line: str, header: Dict[str, Any], path: Path, lineno: int) -> None:
    parts = line[1:].split()
    if not parts:
        raise DataError(path, "empty header keyword", line=lineno, value=line,
                        expected="'@<keyword> <value>' such as '@dimensions 3'")
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


_EXPECT_VALUE = "a finite number or '?' (missing)"


def _bad_value(path: Path, lineno: int, dim: int, pos: int, token: str, problem: str) -> DataError:
    return DataError(path, problem, line=lineno, column=f"dimension {dim}, value {pos}", value=token.strip(),
                     expected=_EXPECT_VALUE)


def _parse_values(text: str, path: Path, lineno: int, dim: int) -> np.ndarray:
    """Comma-separated values of one dimension; ``?`` -> NaN; anything else non-finite or
    non-numeric raises :class:`DataError` (``dim`` is 1-based, for the message)."""
    text = text.strip()
    if not text:
        return np.empty(0)
    tokens = text.split(",")
    try:
        v = np.array([t if t.strip() != "?" else "nan" for t in tokens] if "?" in text else tokens, dtype=np.float64)
    except ValueError:  # find the culprit (and accept what Python's float() reads)
        v = np.empty(len(tokens))
        for i, t in enumerate(tokens):
            if t.strip() == "?":
                v[i] = np.nan
                continue
            try:
                v[i] = float(t)
            except ValueError:
                raise _bad_value(path, lineno, dim, i + 1, t, "not a number") from None
    if not np.isfinite(v).all():
        for i in np.flatnonzero(~np.isfinite(v)):
            if tokens[i].strip() != "?":
                raise _bad_value(path, lineno, dim, int(i) + 1, tokens[i], "not a finite number")
    return v


def _parse_timestamped(text: str, path: Path, lineno: int, dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(t1,v1),(t2,v2),...`` -> (times, values); timestamps must be numeric and finite."""
    text = text.strip()
    if not text:
        return np.empty(0), np.empty(0)
    pairs = [p.strip(" ,") for p in text.strip("()").split("),(")]
    ts, vs = [], []
    for pos, p in enumerate(pairs, 1):
        if "," not in p:
            raise DataError(path, "malformed timestamped value", line=lineno, column=f"dimension {dim}, value {pos}",
                            value=p, expected="'(timestamp,value)'")
        t, v = p.rsplit(",", 1)
        try:
            tf = float(t)
        except ValueError:
            raise DataError(path, "non-numeric timestamp", line=lineno, column=f"dimension {dim}, value {pos}",
                            value=t.strip(), expected="a numeric timestamp (only numeric @timeStamps are supported)"
                            ) from None
        if not np.isfinite(tf):
            raise DataError(path, "not a finite timestamp", line=lineno, column=f"dimension {dim}, value {pos}",
                            value=t.strip(), expected="a finite numeric timestamp")
        ts.append(tf)
        if v.strip() == "?":
            vs.append(float("nan"))
            continue
        try:
            vf = float(v)
        except ValueError:
            raise _bad_value(path, lineno, dim, pos, v, "not a number") from None
        if not np.isfinite(vf):
            raise _bad_value(path, lineno, dim, pos, v, "not a finite number")
        vs.append(vf)
    return np.array(ts), np.array(vs)


def read_ts(path) -> TSFile:
    """Parse a UEA/sktime ``.ts`` file (see the module docstring).

    Raises :class:`DataError` (file, line, dimension and value) for a non-numeric or
    non-finite value (``?`` is the only missing-value marker), a case whose number of
    dimensions differs from ``@dimensions`` or from the file's first case, a case with no
    values or no label where labels are declared, a missing ``@data`` section, and a file with
    no cases.
    """
    path = Path(path)
    header: Dict[str, Any] = {}
    series: List[np.ndarray] = []
    times: List[np.ndarray] = []
    labels: List[str] = []
    case_lines: List[int] = []
    in_data = False
    first_dims: Optional[Tuple[int, int]] = None  # (n_dims, line) of the first case
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if not line.startswith("@"):
                    raise DataError(path, "data before @data", line=lineno, value=line,
                                    expected="a header line (@...) or @data")
                if line.lower().startswith("@data"):
                    in_data = True
                    continue
                _parse_header_line(line, header, path, lineno)
                continue
            has_label = header.get("classlabel", False) or header.get("targetlabel", False)
            stamped = header.get("timestamps", False)
            fields = line.split(":")
            if has_label:
                if len(fields) < 2:
                    raise DataError(path, "case without a label", line=lineno, value=line,
                                    expected="'<dim 1>:<dim 2>:...:<label>' (the header declares class labels)")
                fields, lab = fields[:-1], fields[-1].strip()
                labels.append(lab)
            dims_t, dims_v = [], []
            for d, fld in enumerate(fields, 1):
                if stamped:
                    t, v = _parse_timestamped(fld, path, lineno, d)
                else:
                    v = _parse_values(fld, path, lineno, d)
                    t = np.arange(len(v), dtype=np.float64)
                dims_t.append(t)
                dims_v.append(v)
            n_dims = header.get("dimensions")
            if isinstance(n_dims, int) and len(dims_v) != n_dims:
                raise DataError(path, "wrong number of dimensions (channels) in a case", line=lineno,
                                value=len(dims_v), expected=f"{n_dims} as declared by @dimensions")
            if first_dims is None:
                first_dims = (len(dims_v), lineno)
            elif len(dims_v) != first_dims[0]:
                raise DataError(path, "inconsistent number of dimensions (channels) between cases", line=lineno,
                                value=len(dims_v), expected=f"{first_dims[0]} as the first case (line {first_dims[1]})")
            L = max(len(v) for v in dims_v)
            if L == 0:
                raise DataError(path, "case with no values", line=lineno, value=line,
                                expected="at least one value per case")
            arr = np.full((L, len(dims_v)), np.nan)
            for j, v in enumerate(dims_v):
                arr[: len(v), j] = v
            longest = int(np.argmax([len(v) for v in dims_v]))
            series.append(arr)
            times.append(dims_t[longest].astype(np.float64))
            case_lines.append(lineno)
    if not in_data:
        raise DataError(path, "no @data section", expected="a header ending in '@data', then one line per case")
    if not series:
        raise DataError(path, "no cases after @data (header only)",
                        expected="at least one case line after @data")
    class_labels = list(header.get("class_labels", []))
    return TSFile(header=header, series=series, times=times, labels=labels, class_labels=class_labels,
                  path=path, case_lines=case_lines)


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
    """(TRAIN, TEST) ``.ts`` paths of archive dataset ``name`` (any archive name, or a Table 3
    short name); raises DataNotFoundError when missing (naming both expected paths and the data
    root used) unless ``download=True``."""
    name = UEA_TABLE3.get(name, name)
    paths = ensure_dataset(name, root=root, download=download, source=uea_source(name))
    return paths[f"UEA/{name}/{name}_TRAIN.ts"], paths[f"UEA/{name}/{name}_TEST.ts"]


def _check_labelled(f: TSFile) -> None:
    if len(f.labels) != f.num_cases:
        raise DataError(f.path, "no class labels", value=f"@classLabel {f.header.get('classlabel', 'missing')}",
                        expected="'@classLabel true <labels...>' and a label ending each case")


def _read_pair(name: str, root=None, download: bool = False):
    """Read and cross-check the TRAIN and TEST files: (name, tr, te, classes)."""
    name = UEA_TABLE3.get(name, name)
    train_path, test_path = uea_paths(name, root, download)
    tr, te = read_ts(train_path), read_ts(test_path)
    _check_labelled(tr)
    _check_labelled(te)
    if te.num_channels != tr.num_channels:
        raise DataError(test_path, "channel count differs between TRAIN and TEST", line=te.case_lines[0],
                        value=te.num_channels, expected=f"{tr.num_channels} channels as in {train_path}")
    classes = tr.class_labels or sorted(set(tr.labels) | set(te.labels))
    return name, tr, te, classes


def describe_uea(name: str, root=None, download: bool = False) -> Dict[str, Any]:
    """What a model needs to know about a UEA dataset, read (and validated) from its files.

    Returns ``dict(name, n_channels, n_classes, class_labels, max_len, min_len, n_train, n_test,
    train_file, test_file)`` (``max_len``: the longest case of TRAIN and TEST, the default
    padding length of :func:`load_uea`). Raises DataNotFoundError / :class:`DataError` as
    :func:`load_uea`.
    """
    name, tr, te, classes = _read_pair(name, root, download)
    tr.label_ids(classes)
    te.label_ids(classes)
    return {
        "name": name, "n_channels": tr.num_channels, "n_classes": len(classes), "class_labels": list(classes),
        "max_len": int(max(tr.lengths.max(), te.lengths.max())),
        "min_len": int(min(tr.lengths.min(), te.lengths.min())),
        "n_train": tr.num_cases, "n_test": te.num_cases, "train_file": str(tr.path), "test_file": str(te.path),
    }


def load_uea(name: str, root=None, download: bool = False, val_source: str = "train",
             val_fraction: float = 0.2, val_seed: int = 0, normalize: str = "per_split",
             max_len: Optional[int] = None) -> UEASplits:
    """Read ``name`` (any archive name, or a Table 3 short name) into train/val/test datasets.

    The number of channels and classes comes from the files (``num_channels``,
    ``num_classes``). Bad files raise :class:`DataError` before anything is built: see
    :func:`read_ts`, plus TRAIN and TEST with different channel counts, a TEST label not
    among the classes, and unlabelled files.

    Args:
        name: archive name (``"JapaneseVowels"``) or short name (``"JAP"``, ``"SCP1"``, ...).
        root: data root (see :mod:`ea_zoo.data.paths`).
        download: fetch the archive zip when the files are missing.
        val_source: ``"train"`` (a stratified ``val_fraction`` of TRAIN, seed ``val_seed``)
            or ``"test"`` (TSL: validation = test = the TEST file).
        normalize: ``"per_split"`` (TSL), ``"train"`` or ``"none"`` (module docstring).
        max_len: pad/crop length (>= 1); default the longest case in TRAIN and TEST.
    """
    if val_source not in ("train", "test"):
        raise ValueError(f"val_source must be 'train' or 'test', got {val_source!r}")
    if normalize not in ("per_split", "train", "none"):
        raise ValueError(f"normalize must be 'per_split', 'train' or 'none', got {normalize!r}")
    name, tr, te, classes = _read_pair(name, root, download)
    train_path, test_path = tr.path, te.path
    if max_len is not None:
        max_len = check_positive_int("max_len", max_len, train_path)
    y_tr, y_te = tr.label_ids(classes), te.label_ids(classes)
    x_tr = [fill_missing(s) for s in tr.series]
    x_te = [fill_missing(s) for s in te.series]
    t_tr, t_te = tr.times, te.times
    if val_source == "train":
        keep, held = stratified_split(y_tr, val_fraction, val_seed)
    else:  # "test"
        keep, held = np.arange(len(y_tr)), np.empty(0, dtype=np.int64)

    if normalize == "per_split":
        m_tr, s_tr = _stats(x_tr)  # the TRAIN file's statistics (train + carved validation)
        m_te, s_te = _stats(x_te)
    elif normalize == "train":
        m_tr, s_tr = _stats([x_tr[i] for i in keep])
        m_te, s_te = m_tr, s_tr
    else:  # "none"
        C = x_tr[0].shape[1]
        m_tr = m_te = np.zeros(C)
        s_tr = s_te = np.ones(C)
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
