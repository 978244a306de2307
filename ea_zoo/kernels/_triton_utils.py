"""Shared plumbing of the kernel modules: lazy ``triton.jit`` per interpreter mode, layouts.

Triton decides at decoration time whether ``@triton.jit`` builds a compiled kernel or an
interpreted one (``TRITON_INTERPRET``). The kernels here are plain Python functions wrapped
in :class:`LazyKernel`, which decorates them on first launch for the mode then in force, so
importing a kernel module before setting ``TRITON_INTERPRET=1`` does no harm. A kernel
body therefore calls no other ``@triton.jit`` helper (it is self-contained).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import triton

from ea_zoo.kernels import interpret_mode as _env_interpret


def interpreting() -> bool:
    """Interpreter on, by the environment or by ``triton.knobs`` set in code."""
    if _env_interpret():
        return True
    knobs = getattr(triton, "knobs", None)
    try:
        return bool(knobs.runtime.interpret) if knobs is not None else False
    except Exception:  # pragma: no cover - older triton without knobs
        return False


class LazyKernel:
    """``triton.jit(fn)`` built on first launch, once per interpreter mode.

    ``configs`` (compiled mode only) wraps the kernel in ``triton.autotune`` keyed on
    ``key``; in interpreter mode the launcher passes the meta-parameters itself.
    """

    def __init__(self, fn: Callable, configs: Optional[List["triton.Config"]] = None, key: Sequence[str] = ()):
        self.fn = fn
        self.configs = configs
        self.key = list(key)
        self._built: Dict[bool, object] = {}

    @property
    def autotuned(self) -> bool:
        return self.configs is not None and not interpreting()

    def get(self):
        mode = interpreting()
        k = self._built.get(mode)
        if k is None:
            prev = os.environ.get("TRITON_INTERPRET")
            # triton.jit reads the interpret knob now; make it agree with `mode`
            if mode:
                os.environ["TRITON_INTERPRET"] = "1"
            try:
                k = triton.jit(self.fn)
            finally:
                if mode:
                    if prev is None:
                        os.environ.pop("TRITON_INTERPRET", None)
                    else:
                        os.environ["TRITON_INTERPRET"] = prev
            if self.configs is not None and not mode:
                k = triton.autotune(configs=self.configs, key=self.key)(k)
            self._built[mode] = k
        return k

    def __getitem__(self, grid):
        return self.get()[grid]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def as_bhlc(x: torch.Tensor) -> torch.Tensor:
    """(L, D) | (B, L, D) | (B, H, L, d) | (B, ..., L, d) -> a (B, H, L, C) view where possible."""
    if x.dim() == 2:
        return x.unsqueeze(0).unsqueeze(0)
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4:
        return x
    return x.reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])


def strides4(x: torch.Tensor) -> Tuple[int, int, int, int]:
    return tuple(int(s) for s in x.stride())  # type: ignore[return-value]


def mask_u8(mask: Optional[torch.Tensor], batch: int, seq_len: int) -> Optional[torch.Tensor]:
    """(B, L) key-padding mask (True/1 = keep) -> contiguous uint8, validated."""
    if mask is None:
        return None
    if tuple(mask.shape) != (batch, seq_len):
        raise ValueError(
            f"key-padding mask must have shape (B, L) = ({batch}, {seq_len}), got {tuple(mask.shape)}"
        )
    return (mask != 0).to(torch.uint8).contiguous()


def cuda_sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 1
