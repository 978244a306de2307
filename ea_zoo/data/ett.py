"""Forecasting series (ETTh1/2, ETTm1/2, Traffic, any TSL-style csv): reader, splits, windows.

Files under the data root: ``ETT-small/<ETTh1|ETTh2|ETTm1|ETTm2>.csv`` and
``traffic/traffic.csv`` (Traffic is not staged offline here; ``download=True`` fetches the
Time-Series-Library copy). A csv has a ``date`` column first, then the variables; the target
is ``OT``. Any other TSL-style csv loads by path: ``load_forecast("/path/to/my.csv")`` (or a
path relative to the data root, or ``load_forecast("label", path=...)``), with the 70/10/20
split; its number of channels comes from the file (:func:`describe_forecast` reports it).

Validation (:func:`read_series_csv`, :func:`load_forecast`): a bad file raises
:class:`~ea_zoo.data.errors.DataError`, a ``ValueError`` with a one-line message naming the
file, line and column, the bad value and what was expected, before any window is built: an
empty or header-only file, a non-UTF-8 (binary) file, a header not starting with ``date`` or
with no value columns, no numeric columns, a row with the wrong number of fields, a date
that is not ISO 8601, a non-numeric or non-finite (``nan``, ``inf``) cell, a missing target
column, a non-positive ``seq_len`` / ``pred_len``, a window ``seq_len + pred_len`` longer than a
split, too few rows for the ETTh/ETTm split. A missing file raises
:class:`~ea_zoo.data.paths.DataNotFoundError`.

Splits, exactly as the Time-Series-Library (TSL) ``Dataset_ETT_hour`` / ``Dataset_ETT_minute`` /
``Dataset_Custom`` (see :func:`tsl_borders`):

* ETTh: 12/4/4 months of 30 days = rows [0, 8640), [8640, 11520), [11520, 14400); the
  validation and test row ranges start ``seq_len`` rows earlier, so that their first window's
  *targets* begin right at the split boundary. Rows after 14400 are unused (as TSL).
* ETTm: the same in 15-minute steps (x4): [0, 34560), [34560, 46080), [46080, 57600).
* other csv (Traffic): 70% / 10% / 20% (train = int(0.7 n), test = int(0.2 n), validation the
  rest), validation/test again starting ``seq_len`` earlier.

Scaling: a :class:`StandardScaler` (mean, population std as scikit-learn) fitted on the
training rows only, applied to all rows. The loss and the "scaled" metrics are on this scale;
:meth:`StandardScaler.inverse_transform` returns to the original units.

Windows (:class:`ForecastWindows`): input rows [s, s+L), targets [s+L, s+L+L') for every start
s in the split range, ``len = n_rows - L - L' + 1`` (the paper: L = 6, L' = 6 or 12).

Modes (TSL's ``features``): ``"S"`` univariate, the target column in and out (the paper's
Table 4 setting, univariate OT); ``"M"`` all columns in and out; ``"MS"`` all in, target out.
For non-ETT csv files the target is moved to the last column, as TSL does.

Timestamps (``timestamps=``), the sampling times given to the model's positional embedding,
``t_x`` (L,) for the inputs and ``t_y`` (L',) for the targets, float hours:

* ``"hour_of_week"`` (default): hours since the start of the week (Monday 00:00), in
  [0, 168): the calendar position of each step (hour of day and day of week), shared by all
  splits. On ETTh2 (EA-6, 4 epochs) this gave a test MSE of 0.054 against 0.100 for
  ``"window"`` and 0.67 for ``"series"``.
* ``"window"``: hours since the window's first input step (ETTh: 0, 1, ..., 5;
  ETTm: 0, 0.25, ..., 1.25). Every window sees the same positions, so nothing ties a position
  to a part of the series.
* ``"series"``: hours since the first row of the file (ETTh: 0, 1, 2, ...; ETTm: 0, 0.25, ...).
  An absolute-time embedding of these lets a model memorise the training period: the
  validation/test periods have times never seen in training (see the numbers above).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ea_zoo.data.download import ensure_dataset
from ea_zoo.data.errors import DataError, check_positive_int
from ea_zoo.data.paths import DataNotFoundError, data_root

__all__ = [
    "read_series_csv",
    "tsl_borders",
    "StandardScaler",
    "ForecastWindows",
    "ForecastSplits",
    "load_forecast",
    "forecast_path",
    "describe_forecast",
    "resolve_csv",
    "FORECAST_FILES",
]

#: dataset name -> path under the data root
FORECAST_FILES = {
    "ETTh1": "ETT-small/ETTh1.csv",
    "ETTh2": "ETT-small/ETTh2.csv",
    "ETTm1": "ETT-small/ETTm1.csv",
    "ETTm2": "ETT-small/ETTm2.csv",
    "traffic": "traffic/traffic.csv",
}


def _canonical(name: str) -> str:
    for k in FORECAST_FILES:
        if k.lower() == name.lower():
            return k
    raise ValueError(f"unknown forecasting dataset {name!r}; known: {', '.join(FORECAST_FILES)} "
                     "(or a path to a TSL-style csv: dataset='/path/to/my.csv', or path=...)")


def _is_named(name: str) -> bool:
    return any(k.lower() == str(name).lower() for k in FORECAST_FILES)


def _looks_like_path(name: str) -> bool:
    name = str(name)
    return name.lower().endswith(".csv") or "/" in name or "\\" in name


def resolve_csv(path, root=None) -> Path:
    """The csv ``path``: as given (``~`` expanded), else relative to the data root; raises
    DataNotFoundError naming the candidates (and the data root used) when neither exists."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_file():
        return p.resolve()
    if p.is_absolute():
        raise DataNotFoundError(p.stem, [p], None)
    base = data_root(root)
    if (base / p).is_file():
        return (base / p).resolve()
    raise DataNotFoundError(p.stem, [p.resolve(), base / p], base)


_EXPECT_CELL = "a finite number"


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(path, "not a UTF-8 text file (binary?)", line=line, column=f"byte {e.start}",
                        value=raw[e.start:e.start + 8], expected="a UTF-8 csv 'date,<col>,...'") from None
    nul = text.find("\0")
    if nul >= 0:
        raise DataError(path, "not a text file (NUL byte)", line=text.count("\n", 0, nul) + 1, value="\0",
                        expected="a UTF-8 csv 'date,<col>,...'")
    return text


def _cell_column(j: int, header: Sequence[str]) -> str:
    """Message text for 0-based field ``j`` (reported 1-based, with the header name)."""
    name = header[j] if j < len(header) else "?"
    return f"column {j + 1} ({name})"


def read_series_csv(path) -> Tuple[np.ndarray, List[str], np.ndarray]:
    """Read a ``date,col1,...`` csv: (dates datetime64[s] (N,), column names, values float64 (N, C)).

    The file must be UTF-8 text with a header whose first field is ``date``, at least one value
    column, and at least one data row; every row must have the header's number of fields,
    dates must be ISO 8601 (``2016-07-01 00:00:00``) and every value a finite number. Anything
    else raises :class:`DataError` naming the file, line, column and value.
    """
    path = Path(path)
    text = _decode(path, path.read_bytes())
    lines = text.splitlines()
    first = next((i for i, l in enumerate(lines) if l.strip()), None)
    if first is None:
        raise DataError(path, "empty file", expected="a header line 'date,<col>,...' and data rows")
    header = [h.strip() for h in lines[first].split(",")]
    hline = first + 1
    if header[0].lower() != "date":
        raise DataError(path, "first header field is not 'date'", line=hline, column="column 1", value=header[0],
                        expected="a header 'date,<col>,...' (TSL layout)")
    if len(header) < 2:
        raise DataError(path, "no value columns", line=hline, value=lines[first].strip(),
                        expected="numeric columns after 'date' ('date,<col>,...')")
    numbers = [i + 1 for i in range(first + 1, len(lines)) if lines[i].strip()]  # 1-based line numbers
    body = [lines[n - 1] for n in numbers]
    if not body:
        raise DataError(path, "no data rows (header only)", line=hline, expected="at least one data row")
    width = len(header)
    commas = width - 1
    for n, l in zip(numbers, body):
        if l.count(",") != commas:
            raise DataError(path, "wrong number of fields", line=n, value=l.count(",") + 1,
                            expected=f"{width} fields as the header (line {hline})")
    date_cells = [l.split(",", 1)[0].strip() for l in body]
    try:
        dates = np.array(date_cells, dtype="datetime64[s]")
    except ValueError:
        dates = None
    if dates is None or np.isnat(dates).any():
        for n, c in zip(numbers, date_cells):
            try:
                ok = not np.isnat(np.datetime64(c, "s"))
            except ValueError:
                ok = False
            if not ok:
                raise DataError(path, "not a date", line=n, column=_cell_column(0, header), value=c,
                                expected="an ISO 8601 date such as '2016-07-01 00:00:00'")
    try:
        values = np.loadtxt(body, delimiter=",", usecols=range(1, width), dtype=np.float64, ndmin=2,
                            comments=None)
    except ValueError:
        values = None
    if values is None:
        numeric_cols = []
        first_fields = body[0].split(",")
        for j in range(1, width):
            try:
                float(first_fields[j])
                numeric_cols.append(j)
            except ValueError:
                pass
        if not numeric_cols:
            raise DataError(path, "no numeric columns", line=numbers[0], value=_short_row(first_fields[1:]),
                            expected=f"numbers in the value columns {', '.join(header[1:][:10])}")
        values = np.empty((len(body), width - 1))
        for r, (n, l) in enumerate(zip(numbers, body)):
            for j, c in enumerate(l.split(",")[1:], 1):
                try:
                    values[r, j - 1] = float(c)
                except ValueError:
                    raise DataError(path, "not a number", line=n, column=_cell_column(j, header), value=c.strip(),
                                    expected=_EXPECT_CELL) from None
        # every cell is a Python float after all (numpy's reader is stricter): keep those values
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        cell = body[r].split(",")[c + 1].strip()
        raise DataError(path, "not a finite number", line=numbers[r], column=_cell_column(c + 1, header), value=cell,
                        expected=_EXPECT_CELL + " (missing / infinite values are not supported)")
    return dates, header[1:], values


def _short_row(cells: Sequence[str], n: int = 5) -> str:
    cells = [c.strip() for c in cells]
    return ",".join(cells[:n]) + (",..." if len(cells) > n else "")


def tsl_borders(n_rows: int, seq_len: int, kind: str) -> Tuple[List[int], List[int]]:
    """TSL's ``(border1s, border2s)``: the [start, end) rows of train/val/test.

    ``kind``: ``"ETTh"``, ``"ETTm"`` or ``"custom"`` (70/10/20). ``start`` of val/test is the
    boundary minus ``seq_len`` (their windows' inputs reach back into the previous split).
    """
    if kind in ("ETTh", "ETTm"):
        m = 30 * 24 * (4 if kind == "ETTm" else 1)
        b2 = [12 * m, 16 * m, 20 * m]
        b1 = [0, 12 * m - seq_len, 16 * m - seq_len]
        if b2[-1] > n_rows:
            raise ValueError(f"{kind} split needs {b2[-1]} rows, the file has {n_rows}")
    elif kind == "custom":
        n_train = int(n_rows * 0.7)
        n_test = int(n_rows * 0.2)
        n_val = n_rows - n_train - n_test
        b1 = [0, n_train - seq_len, n_rows - n_test - seq_len]
        b2 = [n_train, n_train + n_val, n_rows]
    else:
        raise ValueError(f"kind must be 'ETTh', 'ETTm' or 'custom', got {kind!r}")
    return b1, b2


class StandardScaler:
    """Per-column standardisation (mean, population std; std 0 -> 1), fitted on train rows only."""

    def __init__(self) -> None:
        self.mean: Optional[np.ndarray] = None
        self.std: Optional[np.ndarray] = None

    def fit(self, x: np.ndarray) -> "StandardScaler":
        x = np.asarray(x, dtype=np.float64)
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)
        return self

    def transform(self, x):
        return (x - self._like(self.mean, x)) / self._like(self.std, x)

    def inverse_transform(self, x, columns: Optional[Sequence[int]] = None):
        """Back to original units; ``columns`` selects which fitted columns ``x``'s last axis holds."""
        mean, std = self.mean, self.std
        if columns is not None:
            mean, std = mean[list(columns)], std[list(columns)]
        return x * self._like(std, x) + self._like(mean, x)

    @staticmethod
    def _like(v: np.ndarray, x):
        if v is None:
            raise RuntimeError("StandardScaler is not fitted")
        if isinstance(x, torch.Tensor):
            return torch.as_tensor(v, dtype=x.dtype, device=x.device)
        return v


class ForecastWindows(Dataset):
    """Sliding windows over rows [start, end) of a scaled series.

    Items are dicts: ``x`` (L, C_in) float32, ``y`` (L', C_out) float32 (scaled), ``t_x`` (L,)
    and ``t_y`` (L',) float32 hours since the series start.
    """

    def __init__(self, data: np.ndarray, times: np.ndarray, start: int, end: int, seq_len: int,
                 pred_len: int, out_columns: Optional[Sequence[int]] = None, relative_time: bool = False) -> None:
        if seq_len < 1 or pred_len < 1:
            raise ValueError(f"seq_len and pred_len must be >= 1, got seq_len={seq_len}, pred_len={pred_len}")
        if start < 0 or end - start < seq_len + pred_len:
            raise ValueError(f"rows [{start}, {end}) are too few for L={seq_len}, L'={pred_len} "
                             f"(need at least L + L' = {seq_len + pred_len} rows starting at row >= 0)")
        self.data = torch.as_tensor(np.ascontiguousarray(data[start:end]), dtype=torch.float32)
        self.times = torch.as_tensor(times[start:end], dtype=torch.float32)
        self.start, self.end = start, end
        self.seq_len, self.pred_len = seq_len, pred_len
        self.out_columns = list(out_columns) if out_columns is not None else None
        self.relative_time = bool(relative_time)

    def __len__(self) -> int:
        return max(0, self.data.shape[0] - self.seq_len - self.pred_len + 1)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        if i < 0:
            i += len(self)
        s, e = i, i + self.seq_len
        y = self.data[e: e + self.pred_len]
        if self.out_columns is not None:
            y = y[:, self.out_columns]
        t_x, t_y = self.times[s:e], self.times[e: e + self.pred_len]
        if self.relative_time:
            t0 = t_x[0]
            t_x, t_y = t_x - t0, t_y - t0
        return {"x": self.data[s:e], "y": y, "t_x": t_x, "t_y": t_y}


@dataclass
class ForecastSplits:
    """Train/val/test windows of a forecasting dataset, with the scaler for the outputs."""

    name: str
    train: ForecastWindows
    val: ForecastWindows
    test: ForecastWindows
    scaler: StandardScaler
    columns: List[str]
    in_columns: List[str]
    out_columns: List[str]
    seq_len: int
    pred_len: int
    features: str
    borders: Tuple[List[int], List[int]]
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_inputs(self) -> int:
        return len(self.in_columns)

    @property
    def num_outputs(self) -> int:
        return len(self.out_columns)

    @property
    def out_mean(self) -> np.ndarray:
        """Scaler mean of the output columns (original units)."""
        return self.scaler.mean[[self.in_columns.index(c) for c in self.out_columns]]

    @property
    def out_std(self) -> np.ndarray:
        return self.scaler.std[[self.in_columns.index(c) for c in self.out_columns]]


def forecast_path(name: str, root=None, download: bool = False) -> Path:
    """Path of a named forecasting csv; DataNotFoundError (naming it) when missing."""
    key = _canonical(name)
    paths = ensure_dataset(key, root=root, download=download)
    return paths[FORECAST_FILES[key]]


_KINDS = ("ETTh", "ETTm", "custom")
_SPLITS = ("train", "val", "test")


def _resolve(name: str, root=None, download: bool = False, path=None, kind: Optional[str] = None):
    """(key, csv path, split kind) of a named dataset, a path given as ``name``, or ``path``."""
    if kind is not None and kind not in _KINDS:
        raise ValueError(f"kind must be 'ETTh', 'ETTm' or 'custom', got {kind!r}")
    if path is None and name is not None and not _is_named(name) and _looks_like_path(name):
        path, name = name, None
    if path is None:
        key = _canonical(name)
        path = forecast_path(key, root, download)
        kind = kind or ("ETTh" if key.startswith("ETTh") else "ETTm" if key.startswith("ETTm") else "custom")
    else:
        path = resolve_csv(path, root)
        key = name if name else path.stem
        kind = kind or "custom"
    return key, path, kind


def _split_rows_needed(kind: str) -> int:
    return 20 * 30 * 24 * (4 if kind == "ETTm" else 1)


def _borders(path: Path, n_rows: int, seq_len: int, kind: str) -> Tuple[List[int], List[int]]:
    """:func:`tsl_borders`, with :class:`DataError` (naming ``path``) for a file too short."""
    if kind in ("ETTh", "ETTm") and n_rows < _split_rows_needed(kind):
        raise DataError(path, f"too few rows for the {kind} split (12/4/4 months)", value=n_rows,
                        expected=f"at least {_split_rows_needed(kind)} data rows (or kind='custom': 70/10/20%)")
    return tsl_borders(n_rows, seq_len, kind)


def _check_windows(path: Path, b1: Sequence[int], b2: Sequence[int], seq_len: int, pred_len: int) -> None:
    """Every split must hold at least one window of seq_len + pred_len rows."""
    need = seq_len + pred_len
    for i, split in enumerate(_SPLITS):
        rows = b2[i] - b1[i]
        if b1[i] < 0 or rows < need:
            lookback = "" if i == 0 else f", of which seq_len = {seq_len} look back before the split"
            raise DataError(
                path, f"window of seq_len + pred_len = {seq_len} + {pred_len} rows longer than the {split} split",
                value=need, expected=f"at most {rows} rows (the {split} split's rows [{b1[i]}, {b2[i]}){lookback})")


def describe_forecast(name: str, root=None, download: bool = False, path=None, kind: Optional[str] = None,
                      target: str = "OT", features: str = "S") -> Dict[str, Any]:
    """What a model needs to know about a forecasting csv, read (and validated) from the file.

    ``name`` as :func:`load_forecast` (a known name, or a csv path; or ``path=``). Returns
    ``dict(name, file, kind, n_rows, columns, n_columns, target, n_inputs, n_outputs,
    split_rows, max_window, max_pred_len, start, end)``: ``split_rows`` are the train/val/test
    rows (without look-back), ``max_window`` the largest ``seq_len + pred_len`` the train split
    holds and ``max_pred_len`` the largest horizon the val/test splits hold.
    """
    if features not in ("S", "M", "MS"):
        raise ValueError(f"features must be 'S', 'M' or 'MS', got {features!r}")
    key, path, kind = _resolve(name, root, download, path, kind)
    dates, cols, values = read_series_csv(path)
    _check_target(path, target, cols)
    b1, b2 = _borders(path, len(values), 0, kind)
    rows = [b - a for a, b in zip(b1, b2)]
    return {
        "name": key, "file": str(path), "kind": kind, "n_rows": int(len(values)), "columns": list(cols),
        "n_columns": len(cols), "target": target, "n_inputs": 1 if features == "S" else len(cols),
        "n_outputs": len(cols) if features == "M" else 1, "split_rows": rows, "max_window": rows[0],
        "max_pred_len": min(rows[1], rows[2], rows[0] - 1), "start": str(dates[0]), "end": str(dates[-1]),
    }


def _check_target(path: Path, target: str, cols: Sequence[str]) -> None:
    if target not in cols:
        shown = ", ".join(cols[:10]) + (", ..." if len(cols) > 10 else "")
        raise DataError(path, "target column not in the header", column="header", value=target,
                        expected=f"one of the columns {shown}")


def load_forecast(name: str, seq_len: int = 6, pred_len: int = 6, features: str = "S", target: str = "OT",
                  root=None, download: bool = False, path=None, kind: Optional[str] = None,
                  timestamps: str = "hour_of_week") -> ForecastSplits:
    """Load ``name`` into TSL-split, train-scaled windows.

    ``name``: ``ETTh1|ETTh2|ETTm1|ETTm2|traffic`` (files under the data root), or the path of
    any TSL-style csv (``"/path/to/my.csv"``; relative paths are tried as given, then under
    the data root), or any label with ``path=``. The number of channels comes from the file.

    Bad files and lengths raise :class:`DataError` (one line naming the file) before anything
    is built: see :func:`read_series_csv`, plus a target column not in the file, non-positive
    ``seq_len`` / ``pred_len``, a window ``seq_len + pred_len`` longer than a split, and an
    ETTh/ETTm split on a file with too few rows. A missing file raises DataNotFoundError.

    Args:
        seq_len, pred_len: input length L and horizon L' (>= 1).
        features: ``"S"``, ``"M"`` or ``"MS"`` (module docstring).
        target: target column (``OT``).
        path: read this csv instead of a named one (``kind`` then defaults to ``"custom"``).
        kind: split rule ``"ETTh"``, ``"ETTm"`` or ``"custom"``; default from the name
            (``"custom"`` for a csv given by path).
        timestamps: ``"hour_of_week"``, ``"window"`` or ``"series"`` (module docstring).
    """
    if features not in ("S", "M", "MS"):
        raise ValueError(f"features must be 'S', 'M' or 'MS', got {features!r}")
    if timestamps not in ("window", "series", "hour_of_week"):
        raise ValueError(f"timestamps must be 'window', 'series' or 'hour_of_week', got {timestamps!r}")
    key, path, kind = _resolve(name, root, download, path, kind)
    seq_len = check_positive_int("seq_len", seq_len, path)
    pred_len = check_positive_int("pred_len", pred_len, path)
    dates, cols, values = read_series_csv(path)
    _check_target(path, target, cols)
    if kind == "custom":  # TSL Dataset_Custom: [other columns..., target]
        order = [i for i, c in enumerate(cols) if c != target] + [cols.index(target)]
        cols = [cols[i] for i in order]
        values = values[:, order]
    if features == "S":
        in_cols = [target]
        values = values[:, [cols.index(target)]]
        out_cols = [target]
    else:  # "M" / "MS"
        in_cols = list(cols)
        out_cols = list(cols) if features == "M" else [target]
    b1, b2 = _borders(path, len(values), seq_len, kind)
    _check_windows(path, b1, b2, seq_len, pred_len)
    scaler = StandardScaler().fit(values[b1[0]:b2[0]])
    data = scaler.transform(values)
    if timestamps in ("window", "series"):
        hours = (dates - dates[0]).astype("timedelta64[s]").astype(np.float64) / 3600.0
    else:  # "hour_of_week"
        # 1970-01-01 was a Thursday: shift so that Monday 00:00 is 0
        since_epoch = dates.astype("datetime64[s]").astype(np.int64) / 3600.0
        hours = np.mod(since_epoch + 3 * 24, 168.0)
    out_idx = None if features in ("S", "M") else [in_cols.index(target)]
    sets = [ForecastWindows(data, hours, b1[i], b2[i], seq_len, pred_len, out_idx, relative_time=timestamps == "window")
            for i in range(3)]
    info = {
        "file": str(path), "rows": int(len(values)), "kind": kind, "borders": [b1, b2],
        "windows": [len(s) for s in sets], "features": features, "target": target,
        "start": str(dates[0]), "timestamps": timestamps,
    }
    return ForecastSplits(name=key, train=sets[0], val=sets[1], test=sets[2], scaler=scaler, columns=cols,
                          in_columns=in_cols, out_columns=out_cols, seq_len=seq_len, pred_len=pred_len,
                          features=features, borders=(b1, b2), info=info)
