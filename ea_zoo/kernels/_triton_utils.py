"""Shared plumbing of the kernel modules: lazy ``triton.jit`` per interpreter mode, layouts.

Triton decides at decoration time whether ``@triton.jit`` builds a compiled kernel or an
interpreted one (``TRITON_INTERPRET``). The kernels here are plain Python functions wrapped
in :class:`LazyKernel`, which decorates them on first launch for the mode then in force, so
importing a kernel module before setting ``TRITON_INTERPRET=1`` does no harm. A kernel
body therefore calls no other ``@triton.jit`` helper (it is self-contained); the only
functions it passes around are scan/reduce combine functions, built with :func:`combine_fn`
(a plain ``JITFunction``: the compiler inlines it, and the interpreter calls its ``.fn``).

Under the interpreter, :func:`install_fast_interpreter_scan` (done by :class:`LazyKernel` on
the first interpreted launch) replaces the interpreter's scalar-by-scalar fallback for scans
with custom combine functions by the same left fold done one position of the scan axis at a
time, on whole slices across the other axes. The source of a combine function made with
:func:`combine_fn` runs there on numpy arrays (its ``tl`` replaced by a numpy namespace:
``minimum``, ``maximum``, ``where``, ``exp``, ``abs``); any other runs on interpreter
tensors. The same code in the same order, so the same float32 results (a test checks this
against the interpreter's own path), thousands of times faster.
"""
from __future__ import annotations

import os
import types
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


def combine_fn(fn: Callable):
    """A combine function for ``tl.associative_scan`` / ``tl.reduce`` (compiled-mode
    ``JITFunction`` whatever ``TRITON_INTERPRET`` says; the interpreter calls ``.fn``)."""
    from triton.runtime.jit import JITFunction

    jf = JITFunction(fn)
    jf._ea_zoo_numpy_twin = True  # the interpreter's fast scan may run its source on numpy
    return jf


_FAST_SCAN_INSTALLED = False
_TWINS: Dict[int, Optional[Callable]] = {}


class _NoNumpyTwin(Exception):
    pass


class _NumpyTL:
    """The few ``triton.language`` functions a combine function may use, on numpy arrays."""

    def __init__(self):
        import numpy as np

        self.minimum = np.minimum
        self.maximum = np.maximum
        self.where = np.where
        self.exp = np.exp
        self.abs = np.abs

    def __getattr__(self, name):
        raise _NoNumpyTwin(name)


def _numpy_twin(fn) -> Optional[Callable]:
    """The combine function's Python source bound to a numpy ``tl`` (None: not applicable)."""
    key = id(fn)
    if key not in _TWINS:
        py = getattr(fn, "fn", None)
        twin = None
        if getattr(fn, "_ea_zoo_numpy_twin", False) and isinstance(py, types.FunctionType) and py.__closure__ is None:
            glb = dict(py.__globals__)
            glb["tl"] = _NumpyTL()
            twin = types.FunctionType(py.__code__, glb, py.__name__, py.__defaults__)
        _TWINS[key] = twin
    return _TWINS[key]


def install_fast_interpreter_scan() -> bool:
    """Make the interpreter's generic scan (custom combine functions) fold whole slices.

    The interpreter (triton.runtime.interpreter.ScanOps.generic_scan) folds a scan element
    by element, calling the combine function on scalars: ~10^4 Python calls per (64, 32)
    tile. This folds the same way (acc = combine(acc, x_t), t along the axis, acc first) but
    on (..., other axes) slices, so the combine function is called once per position along
    the axis. Elementwise min / max scans use numpy's accumulate. Returns whether the patch
    is in place (False if this triton's interpreter lacks the hook: the slow path stays).
    """
    global _FAST_SCAN_INSTALLED
    if _FAST_SCAN_INSTALLED:
        return True
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter as interp
    except Exception:  # pragma: no cover - no interpreter in this triton
        return False
    ops = getattr(interp, "ScanOps", None)
    orig = getattr(ops, "generic_scan", None)
    if ops is None or orig is None or not hasattr(ops, "to_tensor"):
        return False
    if getattr(orig, "_ea_zoo_fast", False):
        _FAST_SCAN_INSTALLED = True
        return True
    accumulate = {
        getattr(tl.standard, "_elementwise_min", None): np.minimum,
        getattr(tl.standard, "_elementwise_max", None): np.maximum,
    }
    accumulate.pop(None, None)

    def generic_scan(self, input):
        datas = [arg.handle.data for arg in input]
        shape = datas[0].shape
        axis = self.axis
        if len(shape) < 2 or any(d.shape != shape for d in datas):
            return orig(self, input)
        ufunc = accumulate.get(self.combine_fn) if len(input) == 1 else None
        if ufunc is not None:
            return [self.to_tensor(ufunc.accumulate(datas[0], axis=axis), input[0].dtype)]
        outs = [np.empty_like(d) for d in datas]
        twin = _numpy_twin(self.combine_fn)
        if twin is not None:
            try:
                acc = None
                for t in range(shape[axis]):
                    idx = (slice(None),) * axis + (t,)
                    cur = tuple(d[idx] for d in datas)
                    if acc is None:
                        acc = cur
                    else:
                        ret = twin(*acc, *cur)
                        acc = ret if isinstance(ret, tuple) else (ret,)
                    for o, a in zip(outs, acc):
                        o[idx] = a
                return [self.to_tensor(o, arg.dtype) for o, arg in zip(outs, input)]
            except Exception:  # e.g. a tl function the numpy namespace lacks: the general path
                _TWINS[id(self.combine_fn)] = None
        acc = None
        for t in range(shape[axis]):
            idx = (slice(None),) * axis + (t,)
            cur = tuple(self.to_tensor(d[idx], arg.dtype) for d, arg in zip(datas, input))
            if acc is None:
                acc = cur
            else:
                ret = self.combine_fn.fn(*acc, *cur)
                acc = ret if isinstance(ret, tuple) else (ret,)
            for o, a in zip(outs, acc):
                o[idx] = a.handle.data if isinstance(a, tl.core.tensor) else a
        return [self.to_tensor(o, arg.dtype) for o, arg in zip(outs, input)]

    generic_scan._ea_zoo_fast = True
    generic_scan._ea_zoo_orig = orig
    ops.generic_scan = generic_scan
    _FAST_SCAN_INSTALLED = True
    return True


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
        if mode and not _FAST_SCAN_INSTALLED:
            install_fast_interpreter_scan()
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
