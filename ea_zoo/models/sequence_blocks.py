"""Layers of the sequence Transformer: position embeddings and the Transformer block.

* :class:`SinusoidalTimeEmbedding`: sinusoidal embedding of real-valued timestamps;
* :class:`LearnedPositionEmbedding`: a learned table of integer positions;
* :class:`SequenceBlock`: attention + FFN in residual branches, post-LN or pre-LN, with the
  three forms every layer has: parallel ``forward``, ``prefill`` (L tokens continuing from a
  decoding state) and ``step`` (one token), and an optional short causal convolution
  (:class:`~ea_zoo.models.short_conv.ShortConv`) in front of the attention.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
from timm.layers import Mlp, trunc_normal_

from ea_zoo.functional.checks import values_visible
from ea_zoo.models.sequence_args import pos_float, pos_int
from ea_zoo.models.short_conv import ShortConv, check_short_conv
from ea_zoo.registry import create_attention

__all__ = ["SinusoidalTimeEmbedding", "LearnedPositionEmbedding", "SequenceBlock"]


class SinusoidalTimeEmbedding(nn.Module):
    """Absolute sinusoidal embedding of real-valued timestamps: t (...,) -> (..., D).

    ``pe(t)[2i] = sin(s t w_i)``, ``pe(t)[2i+1] = cos(s t w_i)``, ``w_i = max_period^(-2i/D)``
    (Vaswani et al. 2017 at integer t), ``s = time_scale``. No parameters.
    """

    def __init__(self, dim: int, max_period: float = 10000.0, time_scale: float = 1.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"sinusoidal position embedding needs an even embed_dim, got {dim}")
        self.dim = dim
        self.max_period = pos_float("max_period", max_period, 1.0, open_lo=True)
        self.time_scale = pos_float("time_scale", time_scale, 0.0, open_lo=True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}, time_scale={self.time_scale}"

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        dt = t.dtype if t.is_floating_point() else torch.float32
        t = t.to(dt)
        i = torch.arange(0, self.dim, 2, device=t.device, dtype=dt)
        freqs = torch.exp(i * (-math.log(self.max_period) / self.dim))
        ang = (t * self.time_scale).unsqueeze(-1) * freqs
        return torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(-2)


class LearnedPositionEmbedding(nn.Module):
    """Learned embedding of integer positions 0..max_len-1: p (...,) -> (..., D)."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.max_len = pos_int("max_len", max_len)
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        trunc_normal_(self.weight, std=0.02)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        check = values_visible(p)  # value checks in eager only (compile / vmap / meta trace through)
        if p.is_floating_point():
            if check and not bool((p == p.round()).all()):
                raise ValueError("pos_embed='learned' needs integer positions; use pos_embed='sinusoidal' "
                                 "for real-valued timestamps")
            p = p.long()
        if check and p.numel() and (int(p.min()) < 0 or int(p.max()) >= self.max_len):
            raise ValueError(f"positions must lie in [0, max_len={self.max_len}), got [{int(p.min())}, "
                             f"{int(p.max())}]; build the model with a larger max_len")
        return self.weight[p]


class SequenceBlock(nn.Module):
    """Transformer block: attention + FFN, post-LN (default) or pre-LN (``norm_first``).

    * post-LN: ``x = LN(x + Attn(C(x))); x = LN(x + FFN(x))``;
    * pre-LN: ``x = x + Attn(C(LN(x))); x = x + FFN(LN(x))``;

    where C is the short causal convolution when ``short_conv`` = K > 0, else the identity.

    Args:
        dim, num_heads: width D and heads H.
        attention: the layer's attention module (built by the backbone from its
            :class:`~ea_zoo.registry.AttentionSpec`), or a spec (name / config / spec object),
            which is then built here with ``causal``, ``qkv_bias``, ``attn_drop``,
            ``proj_drop=dropout`` and ``attn_options``.
        mlp_ratio, dropout, norm_first, norm_eps: FFN width / D, dropout of the FFN (and of
            the attention output when built here), pre-LN, LayerNorm epsilon.
        short_conv: kernel size K of a depthwise causal convolution on the attention's input
            (0 = none; needs a causal attention).

    Decoding state of the block (:meth:`init_state`): the attention's state, or with a short
    convolution ``{"attn": the attention's state, "conv": the last K - 1 inputs (B, K-1, D)}``.

    Parameter names follow timm's ViT block (``attn.qkv``, ``attn.proj``, ``norm1``,
    ``mlp.fc1``, ``mlp.fc2``, ``norm2``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attention: Any,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_drop: float = 0.0,
        norm_first: bool = False,
        causal: bool = False,
        qkv_bias: bool = True,
        norm_eps: float = 1e-5,
        attn_options: Optional[Dict[str, Any]] = None,
        short_conv: int = 0,
    ) -> None:
        super().__init__()
        self.norm_first = bool(norm_first)
        if isinstance(attention, nn.Module):
            if attn_options:
                raise ValueError("attn_options apply to an attention spec, not to a built attention module")
            self.attn = attention
        else:
            self.attn = create_attention(attention, dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                         proj_drop=dropout, causal=causal, **(attn_options or {}))
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        short_conv = check_short_conv(short_conv, getattr(self.attn, "causal", False))
        self.short_conv: Optional[ShortConv] = ShortConv(dim, short_conv) if short_conv else None

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D)."""
        conv = (lambda h: h) if self.short_conv is None else (lambda h: self.short_conv(h, padding_mask))
        if self.norm_first:
            x = x + self.attn(conv(self.norm1(x)), attn_mask=padding_mask)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(conv(x), attn_mask=padding_mask))
        return self.norm2(x + self.mlp(x))

    # ------------------------------------------------------------------ decoding
    def init_state(self, batch_size: int, device=None, dtype=None) -> Any:
        """The block's empty decoding state (see the class docstring)."""
        st = self.attn.init_state(batch_size, device=device, dtype=dtype)
        if self.short_conv is None:
            return st
        return {"attn": st, "conv": self.short_conv.init_state(batch_size, device=device, dtype=dtype)}

    def state_numel(self, seq_len: int) -> int:
        """Numbers one sequence keeps in this block to decode token ``seq_len + 1``."""
        conv = 0 if self.short_conv is None else self.short_conv.state_numel(seq_len)
        return self.attn.state_numel(seq_len) + conv

    def _mix(self, h: torch.Tensor, state: Any, one: bool) -> Tuple[torch.Tensor, Any]:
        """Attention (after the short convolution, if any) of the attention input h, with state."""
        if self.short_conv is None:
            return (self.attn.step if one else self.attn.prefill)(h, state)
        if not isinstance(state, dict) or set(state) != {"attn", "conv"}:
            raise ValueError("a block with short_conv decodes from {'attn', 'conv'} states; use model.init_state(B)")
        h, conv = (self.short_conv.step if one else self.short_conv.prefill)(h, state["conv"])
        a, st = (self.attn.step if one else self.attn.prefill)(h, state["attn"])
        return a, {"attn": st, "conv": conv}

    def prefill(self, x: torch.Tensor, state: Any) -> Tuple[torch.Tensor, Any]:
        """Causal tokens x (B, L, D) through the block continuing from its state (one parallel
        call: :meth:`AttentionBase.prefill`)."""
        if self.norm_first:
            a, state = self._mix(self.norm1(x), state, one=False)
            x = x + a
            return x + self.mlp(self.norm2(x)), state
        a, state = self._mix(x, state, one=False)
        x = self.norm1(x + a)
        return self.norm2(x + self.mlp(x)), state

    def step(self, x_t: torch.Tensor, state: Any) -> Tuple[torch.Tensor, Any]:
        """One token x_t (B, D) through the block with its decoding state."""
        if self.norm_first:
            a, state = self._mix(self.norm1(x_t), state, one=True)
            x_t = x_t + a
            return x_t + self.mlp(self.norm2(x_t)), state
        a, state = self._mix(x_t, state, one=True)
        x_t = self.norm1(x_t + a)
        return self.norm2(x_t + self.mlp(x_t)), state
