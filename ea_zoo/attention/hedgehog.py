"""Hedgehog attention (Zhang et al. 2024, "The Hedgehog & the Porcupine"): linear attention
(Feng 2025 eq. 18) whose feature map is learned to mimic softmax's spiky weights:

    phi(x) = [softmax(W x), softmax(-W x)]   (softmax over the feature dim, F = 2d)

with one W (d x d) per head, initialised to the identity, and separate maps for q and k.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ea_zoo.attention.la import KernelAttention
from ea_zoo.registry import register_attention

__all__ = ["HedgehogAttention"]


@register_attention("hedgehog")
class HedgehogAttention(KernelAttention):
    """Hedgehog: x (B, L, D) -> (B, L, D), normalised linear attention with phi above.

    Parameters ``feature_map_q`` and ``feature_map_k``: (H, d, d), W x = W @ x per head.

    Options:
        single_softmax: False (default): two softmaxes, one over W x and one over -W x;
            True: one softmax over the concatenation [W x, -W x].
        eps: denominator clamp. chunk_size: chunk length of the causal form.
    """

    paper_equation = "18 (Hedgehog feature map, Zhang et al. 2024)"
    description = "Hedgehog linear attention (learned feature maps)"

    def __init__(
        self,
        *args: Any,
        single_softmax: bool = False,
        eps: float = 1e-6,
        chunk_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, eps=eps, chunk_size=chunk_size, **kwargs)
        self.single_softmax = bool(single_softmax)
        self.feature_dim = 2 * self.head_dim
        eye = torch.eye(self.head_dim, **self.factory_kwargs())
        self.feature_map_q = nn.Parameter(eye.expand(self.num_heads, -1, -1).clone())
        self.feature_map_k = nn.Parameter(eye.expand(self.num_heads, -1, -1).clone())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, single_softmax={self.single_softmax}"

    def _phi(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(B, H, L, d) -> (B, H, L, 2d), in the accumulation dtype."""
        x = self._acc(x)
        y = torch.einsum("bhld,hed->bhle", x, weight.to(x.dtype))
        if self.single_softmax:
            return torch.cat([y, -y], dim=-1).softmax(dim=-1)
        return torch.cat([y.softmax(dim=-1), (-y).softmax(dim=-1)], dim=-1)

    def phi_q(self, q: torch.Tensor) -> torch.Tensor:
        return self._phi(q, self.feature_map_q)

    def phi_k(self, k: torch.Tensor) -> torch.Tensor:
        return self._phi(k, self.feature_map_k)
