"""Memory measures: saved activations (any device), CUDA peak, tensor/state/parameter bytes.

* :func:`saved_activation_bytes` -- the bytes autograd keeps between forward and backward,
  the activation memory that dominates training. Measured with
  ``torch.autograd.graph.saved_tensors_hooks``: every tensor saved for backward is recorded
  once per storage (views and tensors saved twice are not double-counted), parameters are
  excluded. Deterministic, works on CPU. It does not see transient buffers freed inside
  one op, nor tensors recomputed by activation checkpointing (which are not kept).
* :func:`peak_live_bytes` -- the peak of live tensor bytes created during a call (forward +
  backward), on any device: every op's outputs are seen through a ``TorchDispatchMode`` and
  their storages tracked until freed (``weakref.finalize``). Unlike the saved bytes it sees
  temporaries and activation-checkpoint recomputation; like them it is deterministic. Buffers
  a fused kernel allocates and frees internally (e.g. inside SDPA) are not seen.
* :func:`cuda_peak_bytes` -- ``torch.cuda.max_memory_allocated`` over a call, minus what
  was allocated before it: the true peak of forward + backward on a GPU.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = [
    "saved_activation_bytes",
    "cuda_peak_bytes",
    "peak_live_bytes",
    "LiveTensorTracker",
    "tensor_bytes",
    "tensor_numel",
    "param_bytes",
    "is_oom",
]


def _storage_key(t: torch.Tensor):
    try:
        st = t.untyped_storage()
        return (t.device.type, st.data_ptr()), st.nbytes()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        return (t.device.type, id(t)), t.numel() * t.element_size()


def saved_activation_bytes(
    fn: Callable[[], Any],
    exclude: Iterable[torch.Tensor] = (),
    backward: bool = True,
) -> int:
    """Bytes of the distinct storages autograd saves while running ``fn()``.

    Args:
        fn: runs a forward pass and returns its output(s).
        exclude: tensors (e.g. ``module.parameters()``) whose storages are not activations.
        backward: also run backward on the output (with a ones gradient) so the graph is
            exercised end to end, and the saved tensors freed.
    """
    skip = {_storage_key(t)[0] for t in exclude}
    seen = {}
    keep = []  # hold every packed tensor so no storage address is reused while counting

    def pack(t: torch.Tensor):
        key, nbytes = _storage_key(t)
        if key not in skip and key not in seen:
            seen[key] = nbytes
        keep.append(t)
        return t

    def unpack(t: torch.Tensor):
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = fn()
    total = int(sum(seen.values()))
    if backward:
        outs = [o for o in tree_leaves(out) if isinstance(o, torch.Tensor) and o.requires_grad]
        if outs:
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    del keep, out
    return total


class LiveTensorTracker(TorchDispatchMode):
    """Tracks bytes of tensor storages created by ops while active: ``current`` and ``peak``.

    Tensors that existed before (inputs, parameters) are not counted; a storage is counted
    once however many views of it are returned, and subtracted when it is freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.current -= nbytes
        self._live.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            try:
                st = t.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            key = id(st)
            if key in self._live:
                continue
            nbytes = st.nbytes()
            self._live.add(key)
            self.current += nbytes
            if self.current > self.peak:
                self.peak = self.current
            weakref.finalize(st, self._free, key, nbytes)
        return out


def peak_live_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of tensors created and alive at once while ``fn()`` runs (any device).

    ``fn`` should run forward and backward and return nothing large: its return value is
    dropped inside the measurement.
    """
    tracker = LiveTensorTracker()
    with tracker:
        out = fn()
        del out
    return int(tracker.peak)


def cuda_peak_bytes(fn: Callable[[], Any], device: Optional[torch.device] = None) -> int:
    """Peak bytes allocated on ``device`` while ``fn()`` runs, above what was allocated before."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return int(peak - base)


def tensor_numel(obj: Any) -> int:
    """Numbers held in all tensors of a (nested) container (e.g. a decoding state)."""
    return int(sum(t.numel() for t in tree_leaves(obj) if isinstance(t, torch.Tensor)))


def tensor_bytes(obj: Any) -> int:
    """Bytes held in all tensors of a (nested) container, counting each storage once."""
    seen = {}
    for t in tree_leaves(obj):
        if isinstance(t, torch.Tensor):
            key, _ = _storage_key(t)
            seen[key] = max(seen.get(key, 0), t.numel() * t.element_size())
    return int(sum(seen.values()))


def param_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return tensor_bytes(list(module.parameters()) + list(module.buffers()))


def is_oom(err: BaseException) -> bool:
    """True for an out-of-memory error from any device (CUDA, MPS, or the CPU allocator)."""
    if isinstance(err, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    if isinstance(err, MemoryError):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg
                                              or "not enough memory" in msg)
