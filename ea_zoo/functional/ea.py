"""Full element-wise attention (EA), Feng 2025 section 3.1.

Per channel c (element-wise), with the similarity o_ijc = -(q_ic - k_jc)^2 (eq. 1),

    y_i = sum_j e^{-(q_i - k_j)^2} v_j / sum_j e^{-(q_i - k_j)^2}                      (eq. 2)

i.e. a softmax over keys for every (query, channel) pair. The exact form costs O(L^2 D)
compute; this reference never holds more than one block of the (L, L, D) similarity tensor:
queries are processed in blocks sized so a block of (block, L, D) stays under
``max_block_elements``, and each block is recomputed in the backward pass
(``torch.utils.checkpoint``) instead of being stored, so memory is O(L D + block L D).

It is numerically stable as flash attention is: the per-(query, channel) maximum of o_ijc
over the valid keys is subtracted before exp, so the largest weight is exactly 1.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch.utils.checkpoint import checkpoint

from ea_zoo.functional.checks import check_qkv, expand_key_mask
from ea_zoo.functional.numerics import compute_dtype, safe_ratio

__all__ = ["ea", "ea_init_state", "ea_step", "DEFAULT_MAX_BLOCK_ELEMENTS"]

#: largest number of elements of the (block, L, D) similarity tensor held at once (64 MiB fp32)
DEFAULT_MAX_BLOCK_ELEMENTS = 1 << 24


def _ea_block(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    km: Optional[torch.Tensor],
    q_start: int,
    causal: bool,
) -> torch.Tensor:
    """One query block: q (..., Lq, D), k, v (..., Lk, D) -> (..., Lq, D)."""
    logits = -(q.unsqueeze(-2) - k.unsqueeze(-3)).square()  # (..., Lq, Lk, D), eq. 1
    invalid = None
    if km is not None:  # (B, 1.., Lk, 1) -> (B, 1.., 1, Lk, 1)
        invalid = ~km.unsqueeze(-3)
    if causal:
        Lq, Lk = q.shape[-2], k.shape[-2]
        qi = torch.arange(q_start, q_start + Lq, device=q.device)
        kj = torch.arange(Lk, device=q.device)
        future = (kj[None, :] > qi[:, None]).unsqueeze(-1)  # (Lq, Lk, 1)
        invalid = future if invalid is None else (invalid | future)
    if invalid is not None:
        logits = logits.masked_fill(invalid, float("-inf"))
    m = logits.detach().amax(dim=-2, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(logits - m)  # masked entries -> 0; max entry -> 1
    num = (w * v.unsqueeze(-3)).sum(-2)
    den = w.sum(-2)
    return safe_ratio(num, den)


def ea(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
    impl: str = "auto",
) -> torch.Tensor:
    """Full element-wise attention, eq. 1-2.

    Args:
        q: (B, Lq, D) or (B, H, Lq, d). k, v: same with Lk keys.
        causal: query i sees keys j <= i (needs Lq == Lk).
        key_padding_mask: (B, Lk) bool, True = keep.
        max_block_elements: bound on the elements of one (block, Lk, D) similarity block
            (reference path only; the kernel's tiles are fixed-size).
        impl: "auto" (the flash-style Triton kernel, :mod:`ea_zoo.kernels.ea_flash`, for
            CUDA tensors when triton imports, else the PyTorch reference), "reference", or
            "triton" (forced; CPU tensors only under ``TRITON_INTERPRET=1``, else an error).

    Returns:
        (..., Lq, D) in v's dtype. Accumulates in float32 (float64 for float64 inputs).
    """
    check_qkv(q, k, v, "ea")
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"ea: causal needs as many queries as keys, got {q.shape[-2]} and {k.shape[-2]}")
    expand_key_mask(key_padding_mask, k)  # validates the mask's shape
    from ea_zoo.kernels import select_impl

    unsupported = None
    if impl != "reference" and not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
        unsupported = f"q, k, v must have the same D (last dim), got {q.shape[-1]}, {k.shape[-1]}, {v.shape[-1]}"
    if select_impl(impl, "ea", (q, k, v), unsupported) == "triton":
        from ea_zoo.kernels.ea_flash import ea_flash_triton

        return ea_flash_triton(q, k, v, causal=causal, key_padding_mask=key_padding_mask)
    return _reference(q, k, v, causal, key_padding_mask, max_block_elements)


def _reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """The PyTorch reference of :func:`ea` (blocked, checkpointed), same arguments less ``impl``."""
    check_qkv(q, k, v, "ea")
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"ea: causal needs as many queries as keys, got {q.shape[-2]} and {k.shape[-2]}")
    out_dtype = v.dtype
    cd = compute_dtype(q)
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    km = expand_key_mask(key_padding_mask, k)
    if km is not None:  # padded keys/values are selected away: NaN/Inf there cannot leak
        km = km.to(k.device)
        zero = torch.zeros((), dtype=cd, device=k.device)
        k, v = torch.where(km, k, zero), torch.where(km, v, zero)
    Lq, Lk = q.shape[-2], k.shape[-2]
    per_query = max(1, k[..., :1, :].numel() * Lk)  # elements of one query row of the block
    block = max(1, min(Lq, max_block_elements // per_query))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    outs = []
    for start in range(0, Lq, block):
        qb = q[..., start : start + block, :]
        if needs_grad and block < Lq:
            out = checkpoint(_ea_block, qb, k, v, km, start, causal, use_reentrant=False)
        else:
            out = _ea_block(qb, k, v, km, start, causal)
        outs.append(out)
    y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)
    return y.to(out_dtype)


def ea_init_state(shape: Tuple[int, ...], device=None, dtype=torch.float32) -> Dict[str, torch.Tensor]:
    """Empty decoding cache for heads of shape (B, ..., D): k and v of length 0."""
    B, *rest = shape
    empty = torch.zeros((B, *rest[:-1], 0, rest[-1]), device=device, dtype=dtype)
    return {"k": empty, "v": empty.clone()}


def ea_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: Dict[str, torch.Tensor]
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """One decoding step of causal EA: q, k, v (B, ..., D); the cache grows by one key.

    Full EA has no fixed-size recurrent form (the exp of (q - k)^2 does not factor), so it
    decodes like softmax attention, from a cache of all past keys and values: O(L D).
    """
    cd = state["k"].dtype
    kc = torch.cat([state["k"], k.to(cd).unsqueeze(-2)], dim=-2)
    vc = torch.cat([state["v"], v.to(cd).unsqueeze(-2)], dim=-2)
    y = ea(q.to(cd).unsqueeze(-2), kc, vc)[..., 0, :]
    return y.to(v.dtype), {"k": kc, "v": vc}
