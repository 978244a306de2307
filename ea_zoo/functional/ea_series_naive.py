"""EA-series, the naive O(L^2) reference: every (query, key) weight formed explicitly.

The yardstick the fast paths (:mod:`ea_zoo.functional.ea_series_chunk`, the Triton kernels in
:mod:`ea_zoo.kernels.ea_series`) are tested against, in float64. Per channel (Feng 2025
eq. 5-6, P_t(x) = sum_{n<=t} x^n / n!):

    y_i = sum_{j in J(i)} e^{-k_j^2} P_t(2 q_i k_j) v_j / sum_{j in J(i)} e^{-k_j^2} P_t(2 q_i k_j)

J(i) is every valid key (non-causal) or the valid keys j <= i (causal). Every weight of row i
is formed as e^{m_i - k_j^2} P_t(2 q_i k_j) with m_i the smallest k_j^2 over J(i) (the
row's own stabiliser, so exponents are <= 0 and the row's smallest-k^2 key has e^0): a
causal row never sees a future key, not even through its scale. A row with no valid key
outputs 0.

With a state (causal only): ``initial_state`` = {"s", "z": (t+1, B, ..., D), "ref": (B, ..., D)}
holds S_n = sum_j e^{ref - k_j^2} k_j^n v_j and Z_n (same without v) of earlier keys at
scale ``ref`` (their smallest k^2; +inf when there were none), exactly the state of
:func:`ea_zoo.functional.ea_series.ea_series_step`. It enters row i as
e^{m_i - ref} sum_n c_n q_i^n S_n (c_n = 2^n / n!), with m_i also taking ``ref`` into the min.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

__all__ = ["ea_series_naive"]


def _exp_shift(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """e^{a - b} for a <= b, 0 where b is +inf (an empty sum's scale)."""
    ok = torch.isfinite(b)
    return torch.where(ok, torch.exp(torch.where(ok, a - b, torch.zeros_like(a))), torch.zeros_like(a))


def ea_series_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    order: int = 6,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    initial_state: Optional[Dict[str, torch.Tensor]] = None,
    output_final_state: bool = False,
    block: int = 256,
):
    """q (..., Lq, D), k, v (..., Lk, D) -> y (..., Lq, D) in v's dtype (accumulated in float64
    for float64 inputs, float32 otherwise); with ``output_final_state``, ``(y, final_state)``.

    O(Lq Lk D) compute, (block, Lk, D) memory per query block. No validation beyond shapes.
    """
    if (initial_state is not None or output_final_state) and not causal:
        raise ValueError("ea_series_naive: initial_state / output_final_state need causal=True")
    out_dtype = v.dtype
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    Lq, Lk = q.shape[-2], k.shape[-2]
    inf = torch.tensor(float("inf"), dtype=cd, device=k.device)
    k2 = k * k
    valid = torch.ones_like(k2, dtype=torch.bool)
    if key_padding_mask is not None:
        km = key_padding_mask.to(k.device).view(k.shape[0], *([1] * (k.dim() - 3)), Lk, 1)
        valid = valid & km
    k2v = torch.where(valid, k2, inf)
    kz = torch.where(valid, k, torch.zeros_like(k))
    vz = torch.where(valid, v, torch.zeros_like(v))
    r0 = None if initial_state is None else initial_state["ref"].to(cd).unsqueeze(-2)  # (..., 1, D)
    if causal:
        m = torch.cummin(k2v, dim=-2).values
        if r0 is not None:
            m = torch.minimum(m, r0)
    else:
        m = k2v.amin(dim=-2, keepdim=True).expand(*q.shape[:-2], Lq, k.shape[-1])
    coef = [2.0**n / math.factorial(n) for n in range(order + 1)]
    ys = []
    for s in range(0, Lq, block):
        e = min(s + block, Lq)
        mi = m[..., s:e, :].unsqueeze(-2)  # (..., b, 1, D)
        # w_ij = e^{m_i - k_j^2}; 0 for padded keys, future keys (causal) and rows with no
        # key yet (m_i = +inf). Excluded pairs are selected away, never multiplied by 0.
        ok = valid.unsqueeze(-3) & torch.isfinite(mi)
        if causal:
            rows = torch.arange(s, e, device=q.device)[:, None]
            cols = torch.arange(Lk, device=q.device)[None, :]
            ok = ok & (cols <= rows)[..., None]
        w = torch.where(ok, torch.exp(torch.where(ok, mi - k2v.unsqueeze(-3), torch.zeros((), dtype=cd))),
                        torch.zeros((), dtype=cd))
        x = 2.0 * q[..., s:e, :].unsqueeze(-2) * kz.unsqueeze(-3)  # (..., b, Lk, D)
        p = torch.full_like(x, 1.0 / math.factorial(order))
        for n in range(order - 1, -1, -1):  # Horner: P_t(x)
            p = p * x + 1.0 / math.factorial(n)
        a = w * p
        num = (a * vz.unsqueeze(-3)).sum(-2)
        den = a.sum(-2)
        if initial_state is not None:
            qi = q[..., s:e, :]
            dec = _exp_shift(m[..., s:e, :], r0.expand_as(qi))
            pq = torch.ones_like(qi)
            for n in range(order + 1):
                num = num + dec * coef[n] * pq * initial_state["s"][n].to(cd).unsqueeze(-2)
                den = den + dec * coef[n] * pq * initial_state["z"][n].to(cd).unsqueeze(-2)
                pq = pq * qi
        ok = den > 0
        ys.append(torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num)))
    y = torch.cat(ys, dim=-2).to(out_dtype) if ys else torch.zeros_like(q).to(out_dtype)
    if not output_final_state:
        return y
    ref = k2v.amin(dim=-2)
    if r0 is not None:
        ref = torch.minimum(ref, r0.squeeze(-2))
    w = _exp_shift(ref.unsqueeze(-2).expand_as(k2v), k2v)  # e^{ref - k_j^2}; padded keys (+inf) -> 0
    w = torch.where(valid, w, torch.zeros_like(w))
    s_list, z_list = [], []
    kp = w
    dec = None if r0 is None else _exp_shift(ref, r0.squeeze(-2))
    for n in range(order + 1):
        sn, zn = (kp * vz).sum(-2), kp.sum(-2)
        if initial_state is not None:
            sn = sn + dec * initial_state["s"][n].to(cd)
            zn = zn + dec * initial_state["z"][n].to(cd)
        s_list.append(sn)
        z_list.append(zn)
        kp = kp * kz
    return y, {"s": torch.stack(s_list), "z": torch.stack(z_list), "ref": ref}
