"""The error raised for bad data files (and lengths/windows that do not fit them).

:class:`DataError` is a :class:`ValueError` whose message is always **one line**::

    <file>[:<line>][, <column>]: <problem>: got <value>; expected <expected>

e.g. ``/data/UEA/Toy/Toy_TEST.ts:12, dimension 3, value 5: not a finite number: got 'inf';
expected a finite number or '?' (missing)``. The parts are also attributes (``file``, ``line``,
``column``, ``value``, ``expected``, ``problem``) so callers can report them as they like.
The loaders raise it while reading, before any model or trainer is built; a CLI can catch
it and print ``str(e)``.

A missing file is :class:`ea_zoo.data.paths.DataNotFoundError` (a :class:`FileNotFoundError`,
several lines: every expected path, the data root used and how it was chosen).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

__all__ = ["DataError"]

_UNSET: Any = object()
_MAX_VALUE = 60


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        s = repr(bytes(value[:_MAX_VALUE]))
    elif isinstance(value, str):
        s = repr(value if len(value) <= _MAX_VALUE else value[:_MAX_VALUE] + "...")
    else:
        s = str(value)
    return _one_line(s)


class DataError(ValueError):
    """A data file (or a length asked of it) is unusable; the message is one line.

    Args:
        file: the file concerned (None only when no file is involved).
        problem: what is wrong, e.g. ``"not a number"``.
        line: 1-based line number in ``file``, where relevant.
        column: where in the line, free text (``"column 3 (OT)"``, ``"dimension 2, value 7"``).
        value: the offending value (shown with ``repr`` for strings); omitted when not given.
        expected: what was expected instead.
    """

    def __init__(self, file: Optional[Union[str, Path]], problem: str, *, line: Optional[int] = None,
                 column: Optional[str] = None, value: Any = _UNSET, expected: Optional[str] = None) -> None:
        self.file = None if file is None else Path(file)
        self.problem = problem
        self.line = line
        self.column = column
        self.value = None if value is _UNSET else value
        self.expected = expected
        where = str(self.file) if self.file is not None else ""
        if line is not None:
            where += f":{line}"
        if column:
            where += f", {column}" if where else column
        msg = f"{where}: {problem}" if where else problem
        if value is not _UNSET:
            msg += f": got {_show(value)}"
        if expected:
            msg += ("; " if value is not _UNSET else ": ") + f"expected {expected}"
        super().__init__(_one_line(msg))


def check_positive_int(what: str, value: Any, file: Optional[Union[str, Path]] = None) -> int:
    """``value`` as an int >= 1, else :class:`DataError` (``what`` names it, e.g. ``"pred_len"``)."""
    ok = not isinstance(value, bool)
    try:
        n = int(value)
        ok = ok and n == value and n >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DataError(file, f"{what} must be a positive integer", value=value, expected=f"{what} >= 1")
    return n
