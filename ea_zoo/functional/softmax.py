"""Softmax (dot-product) attention, Feng 2025 eq. 17:

    y_i = sum_j exp(q_i k_j^T / sqrt(d)) v_j / sum_j exp(q_i k_j^T / sqrt(d))

computed with ``F.scaled_dot_product_attention`` (SDPA). Shapes: q (..., Lq, d), k and v
(..., Lk, d), usually (B, H, L, d). Masks follow SDPA: a bool mask is True = keep, a float
mask is added to the scores.

Key padding: padded keys and values are replaced by 0 (``torch.where``) before SDPA, so an
inf/NaN at a padded position never reaches a valid output (0 * NaN would).

KV cache (causal only): ``initial_state`` = ``{"k", "v"}`` (B, H, T, d) of the T tokens
seen (plus ``"mask"`` (B, T) bool once padding was used; :func:`init_kv_cache` gives an
empty one) and ``output_final_state=True`` returns ``(o, cache with this call's keys
appended)``; query i of the call sits at absolute position T + i and sees keys 0 .. T + i.
:func:`softmax_attention_step` is the L = 1 call.
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
    initial_state: Optional[Dict[str, torch.Tensor]] = None,
    output_final_state: bool = False,
):
    """Softmax attention (eq. 17): q (B, H, Lq, d), k, v (B, H, Lk, d) -> (B, H, Lq, d).

    Args:
        causal: query i sees keys j <= i (bottom-right aligned when Lq != Lk).
        key_padding_mask: (B, Lk) bool, True = keep; padded keys get zero weight and their
            (possibly non-finite) k, v are never read.
        attn_mask: any mask SDPA accepts, broadcastable to (B, H, Lq, Lk): bool (True =
            keep) or float (added to the scores). Combined with ``causal`` and
            ``key_padding_mask`` (SDPA itself refuses ``attn_mask`` with ``is_causal``).
        scale: score scale, 1/sqrt(d) when None.
        dropout_p: dropout on the attention weights (pass 0 in eval).
        initial_state: causal only: KV cache ``{"k", "v"}`` (B, H, T, d) (and ``"mask"``
            (B, T)) of the tokens before this call; k, v are appended to it (in its dtype)
            and ``key_padding_mask`` is then this call's (B, Lk) mask. No ``attn_mask``.
        output_final_state: causal only: also return the cache after this call.

    Returns:
        o in v's dtype, or ``(o, cache)`` when ``output_final_state``. A query row that sees
        no key at all (e.g. causal with left padding) outputs 0, and its gradients are 0,
        never NaN.
    """
    check_qkv(q, k, v, "softmax_attention")
    if initial_state is not None or output_final_state:
        return _softmax_with_cache(q, k, v, key_padding_mask, attn_mask, scale, dropout_p,
                                   causal, initial_state, output_final_state)
    lq, lk = q.shape[-2], k.shape[-2]
    kpm = None
    if key_padding_mask is not None:
        kpm = check_key_padding_mask(key_padding_mask, k.shape[0], lk).to(q.device)
        zero = kpm.view(k.shape[0], *([1] * (k.dim() - 3)), lk, 1)  # padded k, v -> 0 (NaN-proof)
        kpm = kpm.view(k.shape[0], *([1] * (q.dim() - 2)), lk)
        k = torch.where(zero, k, torch.zeros((), dtype=k.dtype, device=k.device))
        v = torch.where(zero, v, torch.zeros((), dtype=v.dtype, device=v.device))
    if kpm is None and attn_mask is None:
        if not causal or lq == lk:  # fast path: no row can be empty
            return F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale
            )
        if lq < lk:  # bottom-right causal: every row sees >= Lk - Lq + 1 keys (all when Lq = 1)
            mask = None if lq == 1 else _causal_keep(lq, lk, q.device)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)

    keep: Optional[torch.Tensor] = None  # bool, True = keep
    bias: Optional[torch.Tensor] = None  # float, added to the scores
    if causal:
        keep = _causal_keep(lq, lk, q.device)
    if kpm is not None:
        keep = kpm if keep is None else keep & kpm
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            keep = attn_mask if keep is None else keep & attn_mask
        elif attn_mask.is_floating_point():
            bias = attn_mask.to(q.dtype)
        else:
            raise TypeError(f"attn_mask must be bool (True = keep) or float (additive), got {attn_mask.dtype}")

    # rows that see no key attend anywhere (finite: padded k, v are 0), then are zeroed;
    # done unconditionally, so no host sync decides whether any row is empty
    if bias is None:
        dead = ~keep.any(-1, keepdim=True)
        mask = keep | dead
    else:
        mask = bias if keep is None else torch.where(keep, bias, float("-inf"))
        dead = torch.isneginf(mask).all(-1, keepdim=True)
        mask = mask.masked_fill(dead, 0.0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out.masked_fill(dead, 0.0)


def _softmax_with_cache(q, k, v, key_padding_mask, attn_mask, scale, dropout_p, causal,
                        initial_state, output_final_state):
    """softmax_attention with a KV cache (see :func:`softmax_attention`)."""
    if not causal:
        raise ValueError(
            "softmax_attention: initial_state / output_final_state need causal=True (a KV cache "
            "carries only the past), got causal=False"
        )
    if attn_mask is not None:
        raise ValueError("softmax_attention: attn_mask cannot be combined with initial_state / "
                         "output_final_state; pass key_padding_mask (B, Lk) instead")
    B, lk = k.shape[0], k.shape[-2]
    out_dtype = v.dtype
    kpm = None
    if key_padding_mask is not None:
        kpm = check_key_padding_mask(key_padding_mask, B, lk).to(k.device)
    if initial_state and initial_state.get("k") is not None:
        kc, vc = initial_state["k"], initial_state["v"]
        if kc.shape[:-2] != k.shape[:-2] or kc.shape[-1] != k.shape[-1] or vc.shape[:-1] != kc.shape[:-1] \
                or vc.shape[-1] != v.shape[-1]:
            raise ValueError(
                f"softmax_attention: initial_state['k'], ['v'] must have shape {tuple(k.shape[:-2])} + "
                f"(T, {k.shape[-1]}) and (T, {v.shape[-1]}), got {tuple(kc.shape)} and {tuple(vc.shape)}"
            )
        cache_mask = initial_state.get("mask")
        T = kc.shape[-2]
        if kpm is not None or cache_mask is not None:
            old = cache_mask if cache_mask is not None else torch.ones(B, T, dtype=torch.bool, device=k.device)
            new = kpm if kpm is not None else torch.ones(B, lk, dtype=torch.bool, device=k.device)
            kpm = torch.cat([old.to(device=k.device, dtype=torch.bool), new], dim=-1)
        k = torch.cat([kc, k.to(kc.dtype)], dim=-2)
        v = torch.cat([vc, v.to(vc.dtype)], dim=-2)
    if kpm is not None:  # the cache stores zeros at padded positions (NaN-proof)
        zero = kpm.view(B, *([1] * (k.dim() - 3)), kpm.shape[-1], 1)
        k = torch.where(zero, k, torch.zeros((), dtype=k.dtype, device=k.device))
        v = torch.where(zero, v, torch.zeros((), dtype=v.dtype, device=v.device))
    out = softmax_attention(q.to(k.dtype), k, v, causal=True, key_padding_mask=kpm, scale=scale,
                            dropout_p=dropout_p).to(out_dtype)
    if not output_final_state:
        return out
    cache = {"k": k, "v": v}
    if kpm is not None:
        cache["mask"] = kpm
    return out, cache


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
    """One causal decoding step with a KV cache: the L = 1 call of :func:`softmax_attention`.

    q_t, k_t, v_t: (B, H, d). state: {'k': (B, H, n, d), 'v': (B, H, n, d)} for the n tokens
    seen so far (None or {} = empty). Returns y_t (B, H, d) and the new state with n + 1
    tokens (the old state is not modified).
    """
    o, new = softmax_attention(
        q_t.unsqueeze(-2), k_t.unsqueeze(-2), v_t.unsqueeze(-2), causal=True, scale=scale,
        initial_state=state or None, output_final_state=True,
    )
    return o.squeeze(-2), new
