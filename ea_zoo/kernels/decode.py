"""One fused recurrent EA-series decoding step (Feng 2025 eq. 10-16) in Triton.

Matches ``ea_zoo.functional.ea_series.ea_series_step``: for every element (batch, head,
channel) of q, k, v (B, ..., D), with the state s, z (order+1, B, ..., D) and ref (B, ..., D)
(running min of k^2):

    ref' = min(ref, k^2);  decay = e^{ref' - ref} (0 from the empty state, ref = +inf)
    s'_n = s_n decay + k^n e^{ref' - k^2} v;  z'_n = z_n decay + k^n e^{ref' - k^2}
    y = sum_n c_n q^n s'_n / sum_n c_n q^n z'_n  (0 where the denominator is <= 0)

One launch per layer step, grid over blocks of the B*...*D elements; s, z and ref are
updated in place (the state must be contiguous float32) and y is written in v's dtype.
Inference only: no backward. The state is the one ``ea_series_triton(..., causal=True,
output_final_state=True)`` returns after a prompt (same layout and scale: sums at the
running min of k^2), so decoding continues a parallel prefill exactly.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import triton.language as tl

from ea_zoo.kernels._triton_utils import LazyKernel, cdiv

__all__ = ["ea_series_decode_step"]


def _decode_kernel(
    Q, K, V, S, Z, REF, Y, M,
    ORDER: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    msk = offs < M
    q = tl.load(Q + offs, mask=msk, other=0.0).to(tl.float32)
    k = tl.load(K + offs, mask=msk, other=0.0).to(tl.float32)
    v = tl.load(V + offs, mask=msk, other=0.0).to(tl.float32)
    ref_old = tl.load(REF + offs, mask=msk, other=0.0)
    k2 = k * k
    ref = tl.minimum(ref_old, k2)
    decay = tl.exp(ref - ref_old)
    a = tl.exp(ref - k2)
    q2 = 2.0 * q
    pq = tl.full((BLOCK,), 1.0, tl.float32)
    num = tl.full((BLOCK,), 0.0, tl.float32)
    den = tl.full((BLOCK,), 0.0, tl.float32)
    for n in tl.static_range(ORDER + 1):
        s = tl.load(S + n * M + offs, mask=msk, other=0.0) * decay + a * v
        z = tl.load(Z + n * M + offs, mask=msk, other=0.0) * decay + a
        tl.store(S + n * M + offs, s, mask=msk)
        tl.store(Z + n * M + offs, z, mask=msk)
        num += pq * s
        den += pq * z
        a = a * k
        pq = pq * q2 / (n + 1)
    ok = den > 0.0
    y = tl.where(ok, num / tl.where(ok, den, 1.0), 0.0)
    tl.store(REF + offs, ref, mask=msk)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=msk)


_DECODE = LazyKernel(_decode_kernel)
BLOCK = 256


@torch.library.custom_op("ea_zoo::ea_series_decode", mutates_args=("s", "z", "ref"))
def _decode_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: torch.Tensor, z: torch.Tensor, ref: torch.Tensor,
    order: int,
) -> torch.Tensor:
    M = q.numel()
    y = torch.empty_like(v)
    if M:
        _DECODE[(cdiv(M, BLOCK),)](q, k, v, s, z, ref, y, M, ORDER=order, BLOCK=BLOCK)
    return y


@_decode_op.register_fake
def _(q, k, v, s, z, ref, order):
    return torch.empty_like(v)


def check_decode_state(q: torch.Tensor, state: Dict[str, torch.Tensor], order: int) -> None:
    """The fused step's requirements on the state, checked before any launch."""
    shape = tuple(q.shape)
    for name, want in (("s", (order + 1, *shape)), ("z", (order + 1, *shape)), ("ref", shape)):
        t = state[name]
        if tuple(t.shape) != want:
            raise ValueError(f"ea_series_step (triton): state[{name!r}] has shape {tuple(t.shape)}, expected {want}")
        if t.dtype != torch.float32:
            raise TypeError(f"ea_series_step (triton): the state must be float32, got {name}: {t.dtype}")
        if not t.is_contiguous():
            raise ValueError(f"ea_series_step (triton): state[{name!r}] must be contiguous (it is updated in place)")
        if t.device != q.device:
            raise ValueError(f"ea_series_step (triton): state[{name!r}] is on {t.device}, q on {q.device}")


def ea_series_decode_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: Dict[str, torch.Tensor], order: int
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Fused ``ea_series_step``: q, k, v (B, ..., D) -> y; the state's tensors are updated in
    place and returned in a new dict (the same tensors)."""
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"ea_series_step (triton): q, k, v must share a shape, got {q.shape}, {k.shape}, {v.shape}")
    check_decode_state(q, state, order)
    y = _decode_op(q.contiguous(), k.contiguous(), v.contiguous(), state["s"], state["z"], state["ref"], int(order))
    return y, {"s": state["s"], "z": state["z"], "ref": state["ref"]}
