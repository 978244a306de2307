"""Softmax self-attention (SA), Feng 2025 eq. 17, through ``F.scaled_dot_product_attention``.

Drop-in for timm's ``Attention`` (same parameter names); decodes with a KV cache whose size
grows with L, so it steps but is not ``recurrent``.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ea_zoo.attention.base import AttentionBase, State
from ea_zoo.attention.masks import NormalizedMask, normalize_attn_mask
from ea_zoo.functional.checks import drop_threshold
from ea_zoo.functional.softmax import init_kv_cache, softmax_attention
from ea_zoo.registry import register_attention

__all__ = ["SoftmaxAttention"]


@register_attention("sa")
class SoftmaxAttention(AttentionBase):
    """Softmax attention: x (B, L, D) -> (B, L, D); heads (B, H, L, d), scale d**-0.5.

    ``forward(x, attn_mask)`` follows the one mask rule (:mod:`ea_zoo.attention.masks`:
    bool True = keep, float additive) and takes, besides the forms every backend takes, any
    mask timm/SDPA accept, broadcastable to (B, H, L, L), passed on to SDPA. A 2-D mask of
    shape (B, L) is always read as key padding (bool: True = keep; float: added to every
    query's scores), so with B == L an (L, L) mask is ambiguous: pass it as (1, 1, L, L).
    Keys that a mask drops for every query have their k, v selected away (NaN-proof).
    ``attn_drop`` acts in training.
    Decoding: a KV cache (B, H, T, d) in the accumulation dtype; ``prefill`` appends L tokens
    in one SDPA call, ``step`` is its L = 1 case.
    """

    recurrent = False
    supports_step = True
    paper_equation = "17"
    description = "softmax attention (timm's ViT attention)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scale = self.head_dim ** -0.5

    def prepare_mask(self, attn_mask: Optional[torch.Tensor], batch: int, seq_len: int) -> NormalizedMask:
        """The one mask rule (:func:`~ea_zoo.attention.masks.normalize_attn_mask`) with general
        masks allowed: bool/integer (B, L) -> key padding; a float (B, L) -> an additive
        (B, 1, 1, L) bias; an (L, L) mask (B != L) -> (1, 1, L, L); any other mask
        broadcastable to (B, H, L, L) goes to SDPA as it is (integer masks as bool)."""
        return normalize_attn_mask(attn_mask, batch, seq_len, backend=self.mask_name(),
                                   num_heads=self.num_heads, general=True)

    def attend(self, q, k, v, key_padding_mask, causal):
        """q, k, v (B, H, L, d) -> (B, H, L, d); ``key_padding_mask`` is (B, L) bool key padding
        or the general SDPA mask of :meth:`prepare_mask` (bool True = keep, float additive)."""
        kpm, mask = None, None
        if key_padding_mask is not None:
            if key_padding_mask.dim() == 2:
                kpm = key_padding_mask
            else:
                mask = key_padding_mask
                # keys the mask drops for every query and head: k, v selected away (NaN-proof;
                # their weight is exactly 0 in every row that keeps any key)
                m4 = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
                keep = m4 if m4.dtype == torch.bool else m4 > drop_threshold(m4.dtype)
                col = keep.any(1).any(1).to(k.device)[:, None, :, None]  # (B or 1, 1, L, 1)
                zero_k = torch.zeros((), dtype=k.dtype, device=k.device)
                k = torch.where(col, k, zero_k)
                v = torch.where(col, v, torch.zeros((), dtype=v.dtype, device=v.device))
        return softmax_attention(
            q, k, v, causal=causal, key_padding_mask=kpm, attn_mask=mask, scale=self.scale,
            dropout_p=self.attn_drop.p if self.training else 0.0,
        )

    def init_state(self, batch_size: int = 1, device=None, dtype=None) -> State:
        """Empty KV cache {'k', 'v'}, each (B, H, 0, d), on the module's device in its
        accumulation dtype unless given (:meth:`~AttentionBase.state_factory`: float64 for a
        float64 module, float32 otherwise)."""
        self._require_step()
        return init_kv_cache(batch_size, self.num_heads, self.head_dim, **self.state_factory(device, dtype))

    def attend_state(self, q, k, v, state: State):
        """q, k, v (B, H, L, d) of L new tokens: appends k, v to the cache and attends in one
        SDPA call, query i (absolute position T + i) seeing keys 0 .. T + i.
        Returns (o (B, H, L, d), the grown cache)."""
        return softmax_attention(
            q, k, v, causal=True, scale=self.scale, initial_state=state, output_final_state=True,
            dropout_p=self.attn_drop.p if self.training else 0.0,
        )

    def step_attend(self, q, k, v, state):
        """q, k, v (B, H, d); appends k, v to the cache and attends over it (the L = 1 case of
        :meth:`attend_state`)."""
        o, state = self.attend_state(q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), state)
        return o.squeeze(2), state

    def state_numel(self, seq_len: int) -> int:
        """KV cache: 2 * L * D numbers."""
        return 2 * seq_len * self.dim
