"""Softmax (dot-product) attention, Feng 2025 eq. 17:

    y_i = sum_j exp(q_i k_j^T / sqrt(d)) v_j / sum_j exp(q_i k_j^T / sqrt(d))

computed with ``F.scaled_dot_product_attention`` (SDPA). Shapes: q (..., Lq, d), k and v
(..., Lk, d), usually (B, H, L, d). Masks follow SDPA: a bool mask is True = keep, a float
mask is added to the scores.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ea_zoo.functional.checks import check_key_padding_mask, check_qkv

__all__ = ["softmax_attention", "softmax_attention_step", "init_kv_cache"]


def _causal_keep(lq: int, lk: int, device) -> torch.Tensor:
    """(Lq, Lk) bool, True = keep. Bottom-right aligned: query i is key position i + Lk - Lq."""
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(lk - lq)


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    attn_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Softmax attention (eq. 17): q (B, H, Lq, d), k, v (B, H, Lk, d) -> (B, H, Lq, d).

    Args:
        causal: query i sees keys j <= i (bottom-right aligned when Lq != Lk).
        key_padding_mask: (B, Lk) bool, True = keep; padded keys get zero weight.
        attn_mask: any mask SDPA accepts, broadcastable to (B, H, Lq, Lk): bool (True =
            keep) or float (added to the scores). Combined with ``causal`` and
            ``key_padding_mask`` (SDPA itself refuses ``attn_mask`` with ``is_causal``).
        scale: score scale, 1/sqrt(d) when None.
        dropout_p: dropout on the attention weights (pass 0 in eval).

    A query row that sees no key at all (e.g. causal with left padding) outputs 0, and its
    gradients are 0, never NaN.
    """
    check_qkv(q, k, v, "softmax_attention")
    lq, lk = q.shape[-2], k.shape[-2]
    if key_padding_mask is None and attn_mask is None:
        if not causal or lq == lk:  # fast path: no row can be empty
            return F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale
            )

    keep: Optional[torch.Tensor] = None  # bool, True = keep
    bias: Optional[torch.Tensor] = None  # float, added to the scores
    if causal:
        keep = _causal_keep(lq, lk, q.device)
    if key_padding_mask is not None:
        kpm = check_key_padding_mask(key_padding_mask, k.shape[0], lk).to(q.device)
        kpm = kpm.view(k.shape[0], *([1] * (q.dim() - 2)), lk)
        keep = kpm if keep is None else keep & kpm
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            keep = attn_mask if keep is None else keep & attn_mask
        elif attn_mask.is_floating_point():
            bias = attn_mask.to(q.dtype)
        else:
            raise TypeError(f"attn_mask must be bool (True = keep) or float (additive), got {attn_mask.dtype}")

    if bias is None:
        mask = keep
        dead = ~keep.any(-1, keepdim=True)
        has_dead = bool(dead.any())
        if has_dead:
            mask = keep | dead  # let empty rows attend anywhere, then zero them below
    else:
        mask = bias if keep is None else torch.where(keep, bias, float("-inf"))
        dead = torch.isneginf(mask).all(-1, keepdim=True)
        has_dead = bool(dead.any())
        if has_dead:
            mask = mask.masked_fill(dead, 0.0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    if has_dead:
        out = out.masked_fill(dead, 0.0)
    return out


def init_kv_cache(
    batch_size: int, num_heads: int, head_dim: int, device=None, dtype=None
) -> Dict[str, torch.Tensor]:
    """Empty KV cache {'k', 'v'}: each (B, H, 0, d)."""
    shape = (batch_size, num_heads, 0, head_dim)
    return {"k": torch.zeros(shape, device=device, dtype=dtype), "v": torch.zeros(shape, device=device, dtype=dtype)}


def softmax_attention_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state: Optional[Dict[str, torch.Tensor]],
    scale: Optional[float] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """One causal decoding step with a KV cache.

    q_t, k_t, v_t: (B, H, d). state: {'k': (B, H, n, d), 'v': (B, H, n, d)} for the n tokens
    seen so far (None or {} = empty). Returns y_t (B, H, d) and the new state with n + 1
    tokens (the old state is not modified).
    """
    k_new, v_new = k_t.unsqueeze(-2), v_t.unsqueeze(-2)
    if state and state.get("k") is not None:
        k_new = torch.cat([state["k"], k_new.to(state["k"].dtype)], dim=-2)
        v_new = torch.cat([state["v"], v_new.to(state["v"].dtype)], dim=-2)
    q = q_t.unsqueeze(-2).to(k_new.dtype)
    out = F.scaled_dot_product_attention(q, k_new, v_new, scale=scale).squeeze(-2)
    return out.to(v_t.dtype), {"k": k_new, "v": v_new}
