"""Input validation shared by the functional ops and the attention modules.

Errors name the bad value and what would have been valid, so nothing fails deep inside a
kernel or a broadcast.
"""
from __future__ import annotations

from typing import Optional

import torch


def values_visible(*tensors: Optional[torch.Tensor]) -> bool:
    """True when the values of ``tensors`` may be read on the host (eager data checks).

    False while ``torch.compile`` / ``torch.export`` trace, under ``torch.jit`` tracing,
    inside a functorch transform (``vmap``, ``grad``, ...) of any of them, and for ``meta``
    or fake tensors: there a data-dependent check would be a host sync, a graph break or
    an error, so checks of values run in plain eager mode only (shapes are always checked).
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "meta" or _is_wrapped(t):
            return False
        if _is_fake(t):
            return False
    return True


def _is_wrapped(t: torch.Tensor) -> bool:
    """A functorch wrapper (vmap's batched tensor, grad's tracking tensor, ...)."""
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check(t)) if check is not None else False


def _is_fake(t: torch.Tensor) -> bool:
    try:
        from torch._subclasses.fake_tensor import is_fake
    except ImportError:  # pragma: no cover - very old torch
        return False
    return bool(is_fake(t))


def drop_threshold(dtype: torch.dtype) -> float:
    """Additive mask values at or below this (``finfo(dtype).min / 2``; -inf included) drop a key."""
    return torch.finfo(dtype).min / 2


def mask_to_keep(mask: torch.Tensor, what: str, additive_ok: bool = False) -> torch.Tensor:
    """The one mask rule, as a bool tensor of the same shape (True = keep).

    * bool: True = keep;
    * integer: 0/1 only, 1 = keep (read as bool);
    * float: **additive**, as torch SDPA and timm: 0 keeps, -inf or anything
      <= ``finfo(dtype).min / 2`` (timm writes ``finfo.min``) drops. Other values are a
      bias only softmax attention can apply: a ValueError here (eager mode) unless
      ``additive_ok`` (the caller applies the bias itself and only wants the dropped entries).

    ``what`` names the caller in errors. Value checks run in eager mode only
    (:func:`values_visible`); the conversion itself is branch-free.
    """
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():
        thr = drop_threshold(mask.dtype)
        if not additive_ok and values_visible(mask):
            bad = ~((mask == 0) | (mask <= thr))
            if bool(bad.any()):
                example = mask[bad].flatten()[0].item()
                raise ValueError(
                    f"{what}: a float mask is additive (as torch SDPA and timm): 0 = keep, -inf (or "
                    f"<= torch.finfo({mask.dtype}).min / 2) = drop; any other value is a bias that only "
                    f"softmax attention ('sa') can apply, got {example!r}. Pass a bool mask (True = keep) "
                    f"for key padding"
                )
        return mask > thr
    if mask.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        if values_visible(mask) and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{what}: an integer mask may only hold 0 and 1 (1 = keep); "
                             f"use bool (True = keep) or an additive float mask")
        return mask != 0
    raise TypeError(f"{what}: mask must be bool (True = keep) or float (additive: 0 keep, -inf drop), "
                    f"got dtype {mask.dtype}")


def check_key_padding_mask(
    mask: Optional[torch.Tensor], batch: int, seq_len: int
) -> Optional[torch.Tensor]:
    """Validate a key-padding mask of shape (B, L); returns it as bool (True = keep).

    The one mask rule of :func:`mask_to_keep`: bool True = keep, integer 0/1 (1 = keep),
    float additive (0 = keep, -inf / <= finfo.min / 2 = drop). Value checks run in eager
    mode only, so this adds no host sync under ``torch.compile`` or ``vmap``.
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
    return mask_to_keep(mask, "key-padding mask")


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
