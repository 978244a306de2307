"""Input validation shared by the functional ops and the attention modules.

Errors name the bad value and what would have been valid, so nothing fails deep inside a
kernel or a broadcast.
"""
from __future__ import annotations

from typing import Optional

import torch


def check_key_padding_mask(
    mask: Optional[torch.Tensor], batch: int, seq_len: int
) -> Optional[torch.Tensor]:
    """Validate a key-padding mask of shape (B, L), True = keep; returns it as bool.

    Integer or float masks holding only 0/1 are accepted and converted.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"key-padding mask must be a torch.Tensor of shape (B, L), got {type(mask).__name__}")
    if tuple(mask.shape) != (batch, seq_len):
        raise ValueError(
            f"key-padding mask must have shape (B, L) = ({batch}, {seq_len}) with True = keep, "
            f"got shape {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("a non-bool key-padding mask may only hold 0 and 1 (1 = keep)")
            mask = mask != 0
        else:
            raise TypeError(f"key-padding mask must be bool (True = keep), got dtype {mask.dtype}")
    return mask


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, name: str) -> None:
    """q, k, v must share shape (..., L, D) (k may differ from q only in L)."""
    if q.dim() < 2:
        raise ValueError(f"{name}: q must have shape (..., L, D), got {tuple(q.shape)}")
    if k.shape != v.shape[:-1] + (k.shape[-1],) or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"{name}: k {tuple(k.shape)} and v {tuple(v.shape)} must agree in (..., L)")
    if q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"{name}: q {tuple(q.shape)} and k {tuple(k.shape)} must share the batch dims")


def expand_key_mask(mask: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    """Broadcast a (B, L) key mask against ``like`` of shape (B, ..., L, D) -> (B, 1.., L, 1)."""
    if mask is None:
        return None
    B, L = mask.shape
    if like.shape[0] != B or like.shape[-2] != L:
        raise ValueError(
            f"key-padding mask of shape {tuple(mask.shape)} does not match keys of shape "
            f"{tuple(like.shape)}: expected (B, L) = ({like.shape[0]}, {like.shape[-2]})"
        )
    return mask.view(B, *([1] * (like.dim() - 3)), L, 1)
