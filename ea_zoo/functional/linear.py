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
normaliser z, so memory is O(L * (C + F*d/C)) per head instead of O(L^2). Nothing in it is
scaled by later keys, so outputs at positions < i do not change, bit for bit, when keys or
values at positions >= i do.

Recurrent state (causal only), flash-linear-attention's contract: ``initial_state`` =
``{"S": (B, H, F, d), "z": (B, H, F)}`` (z only when normalised; :func:`init_linear_state`)
holds S and z of the keys before this call, and ``output_final_state=True`` returns
``(o, final_state)`` instead of ``o``. Feeding a sequence in pieces with the state passed on
equals one call on the whole sequence; :func:`linear_attention_step` is the L = 1 call.
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


def _causal_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    normalize: bool,
    chunk_size: int,
    S0: Optional[torch.Tensor] = None,
    z0: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
    """Causal numerator (..., L, d), denominator (..., L) (None if not normalize) and the
    final S (..., F, d) and z (..., F) (None if not normalize), continuing from S0, z0."""
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
    S_all = (kc.transpose(-1, -2) @ vc).cumsum(-3)  # (..., N, F, d) state after each chunk
    S_prev = torch.cat([torch.zeros_like(S_all[..., :1, :, :]), S_all[..., :-1, :, :]], dim=-3)
    S_fin = S_all[..., -1, :, :]
    if S0 is not None:  # the initial state phi(q_i) S0 reaches every query
        S_prev = S_prev + S0.unsqueeze(-3)
        S_fin = S_fin + S0
    num = A @ vc + qc @ S_prev
    den = z_fin = None
    if normalize:
        z_all = kc.sum(-2).cumsum(-2)  # (..., N, F)
        z_prev = torch.cat([torch.zeros_like(z_all[..., :1, :]), z_all[..., :-1, :]], dim=-2)
        z_fin = z_all[..., -1, :]
        if z0 is not None:
            z_prev = z_prev + z0.unsqueeze(-2)
            z_fin = z_fin + z0
        den = A.sum(-1) + (qc @ z_prev.unsqueeze(-1)).squeeze(-1)
        den = den.reshape(*lead, N * C)[..., :L]
    return num.reshape(*lead, N * C, d)[..., :L, :], den, S_fin, z_fin


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    normalize: bool = True,
    eps: float = 1e-6,
    chunk_size: int = 64,
    initial_state: Optional[Dict[str, torch.Tensor]] = None,
    output_final_state: bool = False,
):
    """Linear attention (eq. 18) on feature-mapped q (B, H, Lq, F), k (B, H, Lk, F) and
    v (B, H, Lk, d) -> (B, H, Lq, d) in v's dtype.

    Args:
        causal: query i sees keys j <= i (needs Lq == Lk); computed chunk by chunk.
        key_padding_mask: (B, Lk) bool, True = keep; padded keys add nothing to S and z
            (nor to the final state), even when they hold inf/NaN.
        normalize: divide by phi(q_i) z (features must then be non-negative); False gives
            the unnormalised phi(q_i) S.
        eps: the denominator is clamped to >= eps, so a query that sees no key outputs 0.
        chunk_size: chunk length C of the causal form.
        initial_state: causal only: {"S": (B, H, F, d), "z": (B, H, F)} (z when normalize)
            of the keys before this call, as :func:`init_linear_state` gives; query i adds
            phi(q_i) S0 to its numerator and phi(q_i) z0 to its denominator.
        output_final_state: causal only: also return the state after the last key.

    Returns:
        o, or ``(o, {"S", "z"})`` when ``output_final_state`` (state in the accumulation
        dtype; the input state is not modified).
    """
    if q.shape[-1] != k.shape[-1] or q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"linear_attention: expected q (..., Lq, F), k (..., Lk, F), v (..., Lk, d); "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal linear_attention needs Lq == Lk, got {q.shape[-2]} and {k.shape[-2]}")
    if (initial_state is not None or output_final_state) and not causal:
        raise ValueError(
            "linear_attention: initial_state / output_final_state need causal=True (a recurrent "
            "state carries only the past), got causal=False"
        )
    out_dtype = v.dtype
    dtypes = [q.dtype, k.dtype, v.dtype]
    S0 = z0 = None
    if initial_state is not None:
        S0, z0 = _check_linear_state(initial_state, q, v, normalize)
        dtypes.append(S0.dtype)
    acc = accumulation_dtype(*dtypes)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    if S0 is not None:
        S0 = S0.to(acc)
        z0 = None if z0 is None else z0.to(acc)
    if key_padding_mask is not None:
        m = check_key_padding_mask(key_padding_mask, k.shape[0], k.shape[-2]).to(k.device)
        m = expand_key_mask(m, k)
        k, v = torch.where(m, k, 0.0), torch.where(m, v, 0.0)

    if causal:
        num, den, S_fin, z_fin = _causal_chunked(q, k, v, normalize, chunk_size, S0, z0)
    else:
        num = q @ (k.transpose(-1, -2) @ v)
        den = (q @ k.sum(-2).unsqueeze(-1)).squeeze(-1) if normalize else None
    if normalize:
        num = num / den.clamp_min(eps).unsqueeze(-1)
    out = num.to(out_dtype)
    if not output_final_state:
        return out
    state = {"S": S_fin}
    if normalize:
        state["z"] = z_fin
    return out, state


def _check_linear_state(state, q, v, normalize):
    """Validate an initial state against q (..., L, F), v (..., L, d); returns S0, z0."""
    if not isinstance(state, dict) or "S" not in state or (normalize and "z" not in state):
        need = "'S' and 'z'" if normalize else "'S'"
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"linear_attention: initial_state must be a dict with {need} "
                         f"(init_linear_state), got {got}")
    lead, Fd, d = tuple(q.shape[:-2]), q.shape[-1], v.shape[-1]
    S0 = state["S"]
    if tuple(S0.shape) != lead + (Fd, d):
        raise ValueError(f"linear_attention: initial_state['S'] must have shape {lead + (Fd, d)}, "
                         f"got {tuple(S0.shape)}")
    z0 = None
    if normalize:
        z0 = state["z"]
        if tuple(z0.shape) != lead + (Fd,):
            raise ValueError(f"linear_attention: initial_state['z'] must have shape {lead + (Fd,)}, "
                             f"got {tuple(z0.shape)}")
    return S0, z0


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
    Exactly the L = 1 call of :func:`linear_attention` with ``initial_state``.
    """
    o, new = linear_attention(
        q_t.unsqueeze(-2), k_t.unsqueeze(-2), v_t.unsqueeze(-2), causal=True, normalize=normalize,
        eps=eps, initial_state=state, output_final_state=True,
    )
    return o.squeeze(-2), new
