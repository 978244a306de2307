"""Linear attention, Feng 2025 eq. 18 (Katharopoulos et al. 2020):

    y_i = phi(q_i) sum_j phi(k_j)^T v_j / phi(q_i) sum_j phi(k_j)^T
        = phi(q_i) S / phi(q_i) z,     S = sum_j phi(k_j)^T v_j (F x d),  z = sum_j phi(k_j) (F)

The functions here take q and k ALREADY feature-mapped: q (..., Lq, F), k (..., Lk, F) and
v (..., Lk, d), usually (B, H, L, F) / (B, H, L, d). ``normalize=False`` drops the
denominator (y_i = phi(q_i) S), the softmax-free attention of de Brébisson & Vincent 2016
with the identity map. Half-precision inputs are accumulated in float32 (float64 stays
float64); the result has v's dtype.

The causal form is chunked (as flash-linear-attention's "chunk" kernels): inside a chunk of
``chunk_size`` tokens a masked quadratic product, across chunks the running state S and
normaliser z, so memory is O(L * (C + F*d/C)) per head instead of O(L^2).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ea_zoo.functional.checks import check_key_padding_mask, expand_key_mask

__all__ = [
    "elu1_feature_map",
    "relu_feature_map",
    "identity_feature_map",
    "FEATURE_MAPS",
    "linear_attention",
    "linear_attention_step",
    "init_linear_state",
]


def elu1_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020). Same shape as x."""
    return F.elu(x) + 1.0


def relu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = max(x, 0). Same shape as x."""
    return F.relu(x)


def identity_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = x (de Brébisson & Vincent 2016; use with ``normalize=False``)."""
    return x


FEATURE_MAPS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "elu1": elu1_feature_map,
    "relu": relu_feature_map,
    "identity": identity_feature_map,
}


def accumulation_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16 (or mixed) inputs, otherwise the promoted dtype."""
    dt = dtypes[0]
    for other in dtypes[1:]:
        dt = torch.promote_types(dt, other)
    return torch.float32 if dt in (torch.float16, torch.bfloat16) else dt


def _exclusive_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """sum of the entries strictly before each index along ``dim`` (exact, no subtraction)."""
    c = x.cumsum(dim)
    first = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat([first, c.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)


def _causal_chunked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, normalize: bool, chunk_size: int
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Causal numerator (..., L, d) and denominator (..., L) (None if not normalize)."""
    *lead, L, Fd = q.shape
    d = v.shape[-1]
    C = max(1, min(int(chunk_size), L))
    pad = (-L) % C
    if pad:  # zero keys/values at the end contribute nothing and only see the past
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    N = (L + pad) // C
    qc = q.reshape(*lead, N, C, Fd)
    kc = k.reshape(*lead, N, C, Fd)
    vc = v.reshape(*lead, N, C, d)

    tri = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    A = torch.where(tri, qc @ kc.transpose(-1, -2), 0.0)  # (..., N, C, C) intra-chunk weights
    S_prev = _exclusive_cumsum(kc.transpose(-1, -2) @ vc, dim=-3)  # (..., N, F, d) state before chunk
    num = A @ vc + qc @ S_prev
    den = None
    if normalize:
        z_prev = _exclusive_cumsum(kc.sum(-2), dim=-2)  # (..., N, F)
        den = A.sum(-1) + (qc @ z_prev.unsqueeze(-1)).squeeze(-1)
        den = den.reshape(*lead, N * C)[..., :L]
    return num.reshape(*lead, N * C, d)[..., :L, :], den


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    normalize: bool = True,
    eps: float = 1e-6,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Linear attention (eq. 18) on feature-mapped q (B, H, Lq, F), k (B, H, Lk, F) and
    v (B, H, Lk, d) -> (B, H, Lq, d) in v's dtype.

    Args:
        causal: query i sees keys j <= i (needs Lq == Lk); computed chunk by chunk.
        key_padding_mask: (B, Lk) bool, True = keep; padded keys add nothing to S and z.
        normalize: divide by phi(q_i) z (features must then be non-negative); False gives
            the unnormalised phi(q_i) S.
        eps: the denominator is clamped to >= eps, so a query that sees no key outputs 0.
        chunk_size: chunk length C of the causal form.
    """
    if q.shape[-1] != k.shape[-1] or q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"linear_attention: expected q (..., Lq, F), k (..., Lk, F), v (..., Lk, d); "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal linear_attention needs Lq == Lk, got {q.shape[-2]} and {k.shape[-2]}")
    out_dtype = v.dtype
    acc = accumulation_dtype(q.dtype, k.dtype, v.dtype)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    if key_padding_mask is not None:
        m = check_key_padding_mask(key_padding_mask, k.shape[0], k.shape[-2]).to(k.device)
        m = expand_key_mask(m, k)
        k, v = torch.where(m, k, 0.0), torch.where(m, v, 0.0)

    if causal:
        num, den = _causal_chunked(q, k, v, normalize, chunk_size)
    else:
        num = q @ (k.transpose(-1, -2) @ v)
        den = (q @ k.sum(-2).unsqueeze(-1)).squeeze(-1) if normalize else None
    if normalize:
        num = num / den.clamp_min(eps).unsqueeze(-1)
    return num.to(out_dtype)


def init_linear_state(
    batch_size: int,
    num_heads: int,
    feature_dim: int,
    head_dim: int,
    normalize: bool = True,
    device=None,
    dtype=None,
) -> Dict[str, torch.Tensor]:
    """Zero recurrent state: 'S' (B, H, F, d) and, if ``normalize``, 'z' (B, H, F).

    Kept in float32 for half dtypes (see :func:`accumulation_dtype`).
    """
    acc = accumulation_dtype(dtype or torch.get_default_dtype())
    state = {"S": torch.zeros(batch_size, num_heads, feature_dim, head_dim, device=device, dtype=acc)}
    if normalize:
        state["z"] = torch.zeros(batch_size, num_heads, feature_dim, device=device, dtype=acc)
    return state


def linear_attention_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state: Dict[str, torch.Tensor],
    normalize: bool = True,
    eps: float = 1e-6,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """One causal step of eq. 18 on feature-mapped q_t, k_t (B, H, F) and v_t (B, H, d).

    S <- S + phi(k_t)^T v_t, z <- z + phi(k_t); y_t = phi(q_t) S / max(phi(q_t) z, eps).
    Returns y_t (B, H, d) in v_t's dtype and the new state (the old one is not modified).
    """
    S = state["S"]
    acc = accumulation_dtype(S.dtype, q_t.dtype, v_t.dtype)
    q, k, v = q_t.to(acc), k_t.to(acc), v_t.to(acc)
    S = S.to(acc) + k.unsqueeze(-1) * v.unsqueeze(-2)
    out = (q.unsqueeze(-2) @ S).squeeze(-2)
    new = {"S": S}
    if normalize:
        z = state["z"].to(acc) + k
        out = out / (q * z).sum(-1, keepdim=True).clamp_min(eps)
        new["z"] = z
    return out.to(v_t.dtype), new
