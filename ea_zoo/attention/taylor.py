"""Based / Taylor linear attention (Arora et al. 2024), the 2nd-order Taylor approximation of
softmax attention, Feng 2025 eq. 20: exp(s) ~ 1 + s + s^2 / 2.

Per head, q and k are projected to a small ``feature_dim`` d' (a learned map shared by q and
k), then

    phi(x) = [1, x / d'^(1/4), vec(x x^T) / (sqrt(2) * sqrt(d'))]      (F = 1 + d' + d'^2)

so that phi(q) . phi(k) = 1 + s + s^2 / 2 with s = q . k / sqrt(d') (always >= 1/2), and the
attention is the normalised linear attention of eq. 18 with this phi.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ea_zoo.attention.la import KernelAttention
from ea_zoo.registry import register_attention

__all__ = ["TaylorAttention"]


@register_attention("taylor")
class TaylorAttention(KernelAttention):
    """Based: x (B, L, D) -> (B, L, D); heads (B, H, L, d) -> features (B, H, L, 1 + d' + d'^2).

    Parameter ``feature_proj``: (H, d', d) per-head projection (x -> W x), shared by q and
    k, initialised N(0, 1/d) so it roughly keeps the scale of q and k.

    Options:
        feature_dim: d' (default 16). eps: denominator clamp. chunk_size: causal chunk length.
    """

    paper_equation = "20 (with 18; Arora et al. 2024)"
    description = "Taylor linear attention (2nd-order exp feature map)"

    def __init__(
        self,
        *args: Any,
        feature_dim: int = 16,
        eps: float = 1e-6,
        chunk_size: int = 64,
        **kwargs: Any,
    ) -> None:
        if not isinstance(feature_dim, int) or feature_dim <= 0:
            raise ValueError(f"feature_dim must be a positive int, got {feature_dim!r}")
        super().__init__(*args, eps=eps, chunk_size=chunk_size, **kwargs)
        self.proj_dim = feature_dim
        self.feature_dim = 1 + feature_dim + feature_dim ** 2
        self.feature_proj = nn.Parameter(
            torch.randn(self.num_heads, feature_dim, self.head_dim, **self.factory_kwargs())
            * self.head_dim ** -0.5
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, feature_dim={self.proj_dim}"

    def taylor_features(self, x: torch.Tensor) -> torch.Tensor:
        """phi of already-projected x (..., d') -> (..., 1 + d' + d'^2)."""
        dp = x.shape[-1]
        outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / (math.sqrt(2.0) * math.sqrt(dp))
        return torch.cat([torch.ones_like(x[..., :1]), x * dp ** -0.25, outer], dim=-1)

    def _phi(self, x: torch.Tensor) -> torch.Tensor:
        x = self._acc(x)
        return self.taylor_features(torch.einsum("bhld,hed->bhle", x, self.feature_proj.to(x.dtype)))

    def phi_q(self, q: torch.Tensor) -> torch.Tensor:
        return self._phi(q)

    def phi_k(self, k: torch.Tensor) -> torch.Tensor:
        return self._phi(k)
