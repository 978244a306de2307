"""Linear attention (LA), Feng 2025 eq. 18: softmax's exp(q k^T) replaced by phi(q) phi(k)^T.

``KernelAttention`` is the shared machinery of every feature-map attention (LA here,
Hedgehog and Based/Taylor in their own files): subclasses only define the feature maps.
"""
from __future__ import annotations

from typing import Any

import torch

from ea_zoo.attention.base import AttentionBase, State
from ea_zoo.functional.linear import (
    FEATURE_MAPS,
    accumulation_dtype,
    init_linear_state,
    linear_attention,
    linear_attention_step,
)
from ea_zoo.registry import register_alias, register_attention

__all__ = ["KernelAttention", "LinearAttention"]


class KernelAttention(AttentionBase):
    """Linear attention with a feature map: x (B, L, D) -> (B, L, D).

    Subclasses set ``feature_dim`` (F), ``normalize`` and implement ``phi_q`` / ``phi_k``:
    (B, H, L, d) -> (B, H, L, F), computed in the accumulation dtype (float32 for half
    inputs). Causal mode uses the chunked form; decoding keeps S (B, H, F, d) and, when
    normalised, z (B, H, F): a fixed-size state. ``attend_state`` / ``prefill`` run L tokens
    in one chunked call from a state; ``step`` is its L = 1 case.
    """

    recurrent = True
    supports_step = True
    feature_dim: int
    normalize: bool = True

    def __init__(self, *args, causal: bool = False, eps: float = 1e-6, chunk_size: int = 64, **kwargs) -> None:
        super().__init__(*args, causal=causal, **kwargs)
        self.eps = float(eps)
        self.chunk_size = int(chunk_size)

    def phi_q(self, q: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def phi_k(self, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _acc(x: torch.Tensor) -> torch.Tensor:
        return x.to(accumulation_dtype(x.dtype))

    def attend(self, q, k, v, key_padding_mask, causal):
        """q, k, v (B, H, L, d) -> (B, H, L, d)."""
        return linear_attention(
            self.phi_q(q), self.phi_k(k), v, causal=causal, key_padding_mask=key_padding_mask,
            normalize=self.normalize, eps=self.eps, chunk_size=self.chunk_size,
        )

    def init_state(self, batch_size: int = 1, device=None, dtype=None) -> State:
        """Zero S (B, H, F, d) and, when normalised, z (B, H, F), on the module's device in
        its accumulation dtype unless given (:meth:`~AttentionBase.state_factory`)."""
        self._require_step()
        return init_linear_state(
            batch_size, self.num_heads, self.feature_dim, self.head_dim, normalize=self.normalize,
            **self.state_factory(device, dtype),
        )

    def attend_state(self, q, k, v, state: State):
        """Causal mixing of L new tokens' heads q, k, v (B, H, L, d) continuing from
        ``state``: one chunked :func:`linear_attention` call with ``initial_state``.
        Returns (o (B, H, L, d), final state)."""
        return linear_attention(
            self.phi_q(q), self.phi_k(k), v, causal=True, normalize=self.normalize, eps=self.eps,
            chunk_size=self.chunk_size, initial_state=state, output_final_state=True,
        )

    def step_attend(self, q, k, v, state):
        """q, k, v (B, H, d) -> (B, H, d), new state: the L = 1 case of :meth:`attend_state`."""
        fq = self.phi_q(q.unsqueeze(2)).squeeze(2)
        fk = self.phi_k(k.unsqueeze(2)).squeeze(2)
        return linear_attention_step(fq, fk, v, state, normalize=self.normalize, eps=self.eps)

    def state_numel(self, seq_len: int) -> int:
        """H * (F * d + F) numbers (H * F * d without the normaliser), independent of L."""
        per_head = self.feature_dim * self.head_dim + (self.feature_dim if self.normalize else 0)
        return self.num_heads * per_head


@register_attention("la")
class LinearAttention(KernelAttention):
    """Linear attention (eq. 18) with a fixed feature map, F = d.

    Options:
        feature_map: "elu1" (elu(x) + 1, Katharopoulos et al. 2020; default), "relu", or
            "identity" (de Brébisson & Vincent 2016: no normaliser, y_i = (q_i / sqrt(d)) S
            with S = sum_j k_j^T v_j; its output grows with L).
        eps: denominator clamp. chunk_size: chunk length of the causal form.
    """

    paper_equation = "18"
    description = "linear attention, kernel feature map phi(q) phi(k)^T"

    def __init__(
        self,
        *args: Any,
        feature_map: str = "elu1",
        eps: float = 1e-6,
        chunk_size: int = 64,
        **kwargs: Any,
    ) -> None:
        if feature_map not in FEATURE_MAPS:
            raise ValueError(
                f"unknown feature_map {feature_map!r} for 'la'; valid: {', '.join(sorted(FEATURE_MAPS))}"
            )
        super().__init__(*args, eps=eps, chunk_size=chunk_size, **kwargs)
        self.feature_map = feature_map
        self._phi = FEATURE_MAPS[feature_map]
        self.feature_dim = self.head_dim
        self.normalize = feature_map != "identity"
        self.q_scale = 1.0 if self.normalize else self.head_dim ** -0.5

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, feature_map={self.feature_map!r}"

    def phi_q(self, q: torch.Tensor) -> torch.Tensor:
        out = self._phi(self._acc(q))
        return out * self.q_scale if self.q_scale != 1.0 else out

    def phi_k(self, k: torch.Tensor) -> torch.Tensor:
        return self._phi(self._acc(k))


register_alias("la_identity", "la", feature_map="identity")
