"""Softmax self-attention (SA), Feng 2025 eq. 17, through ``F.scaled_dot_product_attention``.

Drop-in for timm's ``Attention`` (same parameter names); decodes with a KV cache whose size
grows with L, so it steps but is not ``recurrent``.
"""
from __future__ import annotations

from typing import Optional, Type

import torch
from torch import nn

from ea_zoo.attention.base import AttentionBase, State
from ea_zoo.functional.checks import check_key_padding_mask
from ea_zoo.functional.softmax import init_kv_cache, softmax_attention
from ea_zoo.registry import register_attention

__all__ = ["SoftmaxAttention"]


@register_attention("sa")
class SoftmaxAttention(AttentionBase):
    """Softmax attention: x (B, L, D) -> (B, L, D); heads (B, H, L, d), scale d**-0.5.

    ``forward(x, attn_mask)`` takes either a (B, L) key-padding mask (True = keep) or any
    mask timm/SDPA accept, broadcastable to (B, H, L, L) (bool True = keep, or additive
    float). A 2-D mask of shape (B, L) is always read as key padding (so with B == L an
    (L, L) mask is ambiguous: pass it as (1, 1, L, L)). ``attn_drop`` acts in training.
    Decoding: a KV cache (B, H, T, d) in the accumulation dtype; ``prefill`` appends L tokens
    in one SDPA call, ``step`` is its L = 1 case.
    """

    recurrent = False
    supports_step = True
    paper_equation = "17"

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Optional[Type[nn.Module]] = None,
        device=None,
        dtype=None,
        *,
        causal: bool = False,
    ) -> None:
        super().__init__(
            dim, num_heads, qkv_bias, qk_norm, scale_norm, proj_bias, attn_drop, proj_drop,
            norm_layer, device, dtype, causal=causal,
        )
        self.scale = self.head_dim ** -0.5

    def prepare_mask(self, attn_mask: Optional[torch.Tensor], batch: int, seq_len: int):
        """(B, L) -> validated bool key-padding mask; masks of 3+ dims pass through to SDPA
        unchecked. A 2-D (L, L) mask (when B != L) is lifted to (1, 1, L, L) so ``attend``
        can tell it apart; any other 2-D mask is validated as (B, L) key padding."""
        if attn_mask is None:
            return None
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a torch.Tensor, got {type(attn_mask).__name__}")
        if attn_mask.dim() == 2:
            if tuple(attn_mask.shape) == (seq_len, seq_len) and batch != seq_len:
                return attn_mask[None, None]
            return check_key_padding_mask(attn_mask, batch, seq_len)
        return attn_mask

    def attend(self, q, k, v, key_padding_mask, causal):
        """q, k, v (B, H, L, d) -> (B, H, L, d); ``key_padding_mask`` is whatever
        :meth:`prepare_mask` returned: (B, L) key padding or a broadcastable SDPA mask."""
        kpm, mask = None, None
        if key_padding_mask is not None:
            if key_padding_mask.dim() == 2:
                kpm = key_padding_mask
            else:
                mask = key_padding_mask
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
