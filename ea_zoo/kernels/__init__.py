"""Triton kernels for EA (Feng 2025 eq. 2) and EA-series (eq. 5-6, recurrent eq. 7-16).

Nothing here is imported by the package at import time, and this ``__init__`` never imports
triton: ``ea_zoo.functional.ea_series`` / ``ea_zoo.functional.ea`` call :func:`select_impl`
and import the kernel modules only when a kernel is chosen. The package therefore imports
and runs (on the PyTorch reference path) where triton is not installed.

Modules (each imports triton):

* :mod:`ea_zoo.kernels.ea_series`: EA-series forward/backward, causal and non-causal.
* :mod:`ea_zoo.kernels.ea_flash`: full EA, flash-style tiles with an online max.
* :mod:`ea_zoo.kernels.decode`: one fused recurrent EA-series decoding step.
* :mod:`ea_zoo.kernels.compile_check`: ``python -m ea_zoo.kernels.compile_check`` builds
  every kernel for sm_90 without a GPU and reports registers and spills.

Kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1``, used by the CPU tests).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

__all__ = [
    "CPU_IMPLS",
    "COMPILED_OPS",
    "IMPLS",
    "KERNEL_DTYPES",
    "MAX_ORDER",
    "cpu_impl",
    "interpret_mode",
    "select_impl",
    "set_cpu_impl",
    "triton_available",
    "triton_import_error",
]

#: accepted values of the ``impl`` argument of the dispatching functional ops
IMPLS = ("auto", "reference", "compiled", "triton")
#: ops with an ``impl="compiled"`` path (their PyTorch blocks fused by torch.compile)
COMPILED_OPS = ("ea",)
#: what ``impl="auto"`` runs on CPU tensors (:func:`set_cpu_impl`)
CPU_IMPLS = ("reference", "compiled")
_CPU_IMPL = "reference"

#: input dtypes the kernels take (they accumulate in float32)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: highest Taylor degree the EA-series kernels unroll
MAX_ORDER = 16


def set_cpu_impl(name: str) -> None:
    """Process-wide choice of what ``impl="auto"`` runs on CPU for the ops in :data:`COMPILED_OPS`:
    "reference" (eager PyTorch, the default) or "compiled" (torch.compile-fused blocks; same
    math, faster after a compile of seconds per shape). Other ops keep their reference."""
    global _CPU_IMPL
    if name not in CPU_IMPLS:
        raise ValueError(f"cpu_impl must be one of {CPU_IMPLS}, got {name!r}")
    _CPU_IMPL = name


def cpu_impl() -> str:
    """The current :func:`set_cpu_impl` choice."""
    return _CPU_IMPL


_UNSET = object()
_TRITON_IMPORT_ERROR = _UNSET


def triton_import_error() -> Optional[str]:
    """None when ``import triton`` works, else the reason it does not (cached after the first call;
    a plain global rather than functools.lru_cache so torch.compile traces it quietly)."""
    global _TRITON_IMPORT_ERROR
    if _TRITON_IMPORT_ERROR is _UNSET:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _TRITON_IMPORT_ERROR = None
        except Exception as e:  # ImportError, or a broken install raising anything else
            _TRITON_IMPORT_ERROR = f"{type(e).__name__}: {e}"
    return _TRITON_IMPORT_ERROR


def triton_available() -> bool:
    return triton_import_error() is None


def interpret_mode() -> bool:
    """True when the Triton interpreter is on (``TRITON_INTERPRET=1``): kernels take CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def select_impl(
    impl: str,
    op: str,
    tensors: Sequence[torch.Tensor],
    unsupported: Optional[str] = None,
) -> str:
    """Resolve ``impl`` ('auto' | 'reference' | 'compiled' | 'triton') to the one that runs.

    'auto' picks the kernel when every tensor is on a CUDA device, triton imports, the dtypes
    are kernel dtypes and ``unsupported`` (a reason the op's arguments rule the kernel out,
    or None) is None; otherwise :func:`cpu_impl` for CPU tensors of an op in
    :data:`COMPILED_OPS` (not under torch.jit.trace), else the reference. 'compiled' is the
    op's torch.compile-fused reference (ops in :data:`COMPILED_OPS` only, any device).
    'triton' forces the kernel and raises a clear
    error, before any launch, when it cannot run: CPU tensors without ``TRITON_INTERPRET=1``,
    mixed devices, an unsupported dtype, no triton, or ``unsupported``.
    """
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "reference":
        return "reference"
    if impl == "compiled":
        if op not in COMPILED_OPS:
            raise ValueError(f"{op}: impl='compiled' exists for {', '.join(COMPILED_OPS)} only; "
                             f"valid impl values for {op}: 'auto', 'reference', 'triton'")
        return "compiled"
    devices = {t.device for t in tensors}
    dtypes_ok = all(t.dtype in KERNEL_DTYPES for t in tensors)
    if impl == "auto":
        if (
            unsupported is None
            and dtypes_ok
            and len(devices) == 1
            and next(iter(devices)).type == "cuda"
            and triton_available()
        ):
            return "triton"
        on_cpu = all(d.type == "cpu" for d in devices)
        if on_cpu and op in COMPILED_OPS and _CPU_IMPL == "compiled" and not torch.jit.is_tracing():
            return "compiled"
        return "reference"
    # impl == "triton": explain exactly why not, if not
    err = triton_import_error()
    if err is not None:
        raise RuntimeError(f"{op}: impl='triton' needs triton, which does not import ({err})")
    if len(devices) != 1:
        raise ValueError(f"{op}: impl='triton' needs all tensors on one device, got {sorted(map(str, devices))}")
    dev = next(iter(devices))
    if dev.type == "cpu":
        if not interpret_mode():
            raise RuntimeError(
                f"{op}: impl='triton' got CPU tensors; the kernels run on CUDA tensors, or on CPU "
                "only under the Triton interpreter (set TRITON_INTERPRET=1 before the kernels are "
                "first used). Use impl='reference' or impl='auto' for the PyTorch path."
            )
    elif dev.type != "cuda":
        raise RuntimeError(f"{op}: impl='triton' needs CUDA tensors (or CPU with TRITON_INTERPRET=1), got {dev}")
    if not dtypes_ok:
        bad = sorted({str(t.dtype) for t in tensors if t.dtype not in KERNEL_DTYPES})
        raise TypeError(
            f"{op}: impl='triton' supports float32, float16 and bfloat16 inputs, got {', '.join(bad)}; "
            "use impl='reference' (float64 runs there)"
        )
    if unsupported is not None:
        raise ValueError(f"{op}: impl='triton' cannot run this call: {unsupported}")
    return "triton"
