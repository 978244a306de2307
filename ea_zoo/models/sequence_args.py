"""Argument checks shared by the sequence model's parts (backbone, blocks, heads).

Each raises a ValueError that names the argument, the value and what is allowed, so a bad
``model.<key>=...`` override reads as such.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

__all__ = ["choice", "pos_int", "pos_float"]


def choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """``value`` if it is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid; allowed values: {', '.join(map(repr, allowed))}")
    return value


def pos_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def pos_float(name: str, value: Any, lo: float = 0.0, hi: Optional[float] = None, open_lo: bool = False) -> float:
    """``float(value)`` if it is a number in ``[lo, hi)`` (``(lo, hi)`` with ``open_lo``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo or (open_lo and value == lo) \
            or (hi is not None and value >= hi):
        rng = f"{'>' if open_lo else '>='} {lo}" + (f" and < {hi}" if hi is not None else "")
        raise ValueError(f"{name} must be a number {rng}, got {value!r}")
    return float(value)
