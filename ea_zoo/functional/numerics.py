"""Small numerical helpers shared by the functional ops."""
from __future__ import annotations

import torch

__all__ = ["safe_ratio", "compute_dtype"]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den > 0, else 0, with finite gradients on both branches.

    Attention denominators are sums of non-negative weights; they are 0 only when a query
    sees no valid key, and such a query outputs 0 rather than NaN.
    """
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))
