"""Attention Free Transformer (AFT), Zhai et al. 2021; Feng 2025 eq. 19.

Per channel c (every one of the D channels is independent, so heads do not matter here)::

    y_i = sigmoid(q_i) * sum_j exp(k_j + w_ij) * v_j / sum_j exp(k_j + w_ij)

Feng's eq. 19 writes the ratio only; AFT's ``sigmoid(q_i)`` output gate is included here.
``w`` (L, L) holds learned pairwise position biases shared by all channels (AFT-full;
AFT-local zeroes it outside a band); ``w = 0`` is AFT-simple.

Numerics (all sums accumulate in float32 for half/bfloat16 inputs, float64 stays float64;
autocast is switched off inside :func:`aft`):

* with ``w`` (O(L^2 D) compute, O(LD + L^2) memory): since
  ``exp(k_j + w_ij) = exp(w_ij - max_j w_ij) * exp(k_j - max_j k_j) * exp(max w_i + max k)``
  and the last factor depends only on (i, channel), it cancels in the ratio, leaving two
  matrix products ``exp(w') @ (exp(k') * v)`` and ``exp(w') @ exp(k')`` with all exponents
  <= 0 (no overflow). Causal: the max of k must suit the keys a query sees, or a large
  later key underflows every earlier query to 0/0. So when some causal prefix's max of k is
  more than 40 (float32; 600 in float64) below the global one, queries go in blocks of 64:
  keys before the block by the two matrix products (max over exactly those keys), the
  diagonal block exactly (joint max of k_j + w_ij, (..., 64, 64, D) memory), the partial
  sums merged under their common max. Underflow remains possible only when a key is far
  below the max of k AND its bias far below the row's max of w at the same time (combined
  spread > ~87 in float32), i.e. when its true weight is negligible against some key's but
  not against the dominant one's.
* ``w = None``, non-causal (O(LD)): one sum with a per-channel max, exact and stable.
* ``w = None``, causal (O(LD)): prefix sums in log space with ``torch.logcumsumexp``
  (a running max in effect): ``log den_i = lcse(k)_i`` and, with v split into positive and
  negative parts, ``log num±_i = lcse(k + log v±)_i``; then
  ``ratio_i = exp(log num+_i - log den_i) - exp(log num-_i - log den_i)``. No exponent is
  ever positive, whatever the magnitude of k; k is shifted by its per-channel max first, as
  the log-space rounding error is ~eps * |k - shift| (relative). ``log 0`` and padded keys
  use a large finite negative sentinel instead of -inf (``logcumsumexp`` back-propagates
  NaN through -inf).

Padded keys (``key_padding_mask`` False) get weight 0 and are excluded from every max; a
query with no valid key (all padded, or causal with none before it) outputs 0, never NaN.

Decoding: :func:`aft_step` reads one output from a window of cached keys (with their
biases) plus optional running sums ``(m, num, den)`` of the older keys, which
:func:`aft_state_update` folds in one key at a time (running max ``m`` per channel).
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch

from ea_zoo.functional.checks import check_key_padding_mask

__all__ = ["aft", "aft_step", "aft_state_update", "aft_compute_dtype"]

# stands in for log(0) inside logcumsumexp (finite, so gradients stay finite)
_NEG = -1e30
# causal AFT-full: largest gap (max of k over all keys - max over a query's prefix) for which
# one global k max is used; beyond it, query blocks of _BLOCK (diagonal: (..., B, B, D) memory)
_SAFE_GAP = {torch.float32: 40.0, torch.float64: 600.0}
_BLOCK = 64

Sums = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def aft_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for float16/bfloat16, the dtype itself otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _no_autocast(device: torch.device):
    """Disable autocast around the sums (it would run the matmuls in half precision)."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den > 0, else 0 (queries with no valid key)."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _finite_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Detached max over ``dim`` (keepdim), with 0 where everything was -inf."""
    m = x.detach().amax(dim, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _ratio_simple(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    ek = torch.exp(k - _finite_max(k, -2))
    return _safe_div((ek * v).sum(-2, keepdim=True), ek.sum(-2, keepdim=True))


def _log_part(v: torch.Tensor) -> torch.Tensor:
    pos = v > 0
    return torch.where(pos, torch.log(torch.where(pos, v, torch.ones_like(v))), torch.full_like(v, _NEG))


def _ratio_simple_causal(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    k = k - _finite_max(k, -2)  # log-space rounding error scales with |k|: keep it near 0
    k = k.clamp_min(_NEG)  # padded keys (-inf) -> finite sentinel
    lden = torch.logcumsumexp(k, dim=-2)
    lpos = torch.logcumsumexp(k + _log_part(v), dim=-2)
    lneg = torch.logcumsumexp(k + _log_part(-v), dim=-2)
    has_key = lden > _NEG / 2
    lden = torch.where(has_key, lden, torch.zeros_like(lden))
    ratio = torch.exp(lpos - lden) - torch.exp(lneg - lden)
    return torch.where(has_key, ratio, torch.zeros_like(ratio))


def _matmul_part(w, k, v):
    """Keys seen by every row: w (..., C, S) (-inf = excluded), k, v (..., S, D).

    Returns num, den (..., C, D) and their log-scale (..., C, D): the true sums are
    ``num * exp(scale)``, ``den * exp(scale)`` (two matrix products, exponents <= 0).
    """
    mw, mk = _finite_max(w, -1), _finite_max(k, -2)
    ew, ek = torch.exp(w - mw), torch.exp(k - mk)
    return torch.matmul(ew, ek * v), torch.matmul(ew, ek), mw + mk


def _exact_part(w, k, v):
    """Same as :func:`_matmul_part` with the exact joint max of k_j + w_ij per (row, channel);
    (..., C, S, D) memory, used on the causal diagonal blocks."""
    a = k.unsqueeze(-3) + w.unsqueeze(-1)
    lam = _finite_max(a, -2)
    e = torch.exp(a - lam)
    return (e * v.unsqueeze(-3)).sum(-2), e.sum(-2), lam.squeeze(-2)


def _merge(parts):
    """Sum partial (num, den, log-scale) triples under their common max scale."""
    lams = [torch.where(den > 0, lam, torch.full_like(lam, float("-inf"))) for _, den, lam in parts]
    top = torch.stack(lams).amax(0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    num = sum(n * torch.exp(lam - top) for (n, _, _), lam in zip(parts, lams))
    den = sum(d * torch.exp(lam - top) for (_, d, _), lam in zip(parts, lams))
    return num, den


def _global_k_max_is_safe(k) -> bool:
    """Causal: can one per-channel max of k over ALL keys scale every query's prefix sums?

    Yes while each prefix max is at most ``_SAFE_GAP`` below it: a query's dominant term then
    stays a normal float at full relative precision, and only terms already below ``eps``
    relative to it can underflow. (A host sync: one bool per call.)
    """
    k = k.detach()
    prefix_max = torch.cummax(k, dim=-2).values
    gap = k.amax(-2, keepdim=True) - prefix_max
    gap = torch.where(torch.isfinite(prefix_max), gap, torch.zeros_like(gap))
    return not bool((gap > _SAFE_GAP.get(k.dtype, 40.0)).any())


def _ratio_full(k, v, w, causal, key_padding_mask):
    Lq, Lk = w.shape
    if causal:
        future = torch.ones(Lq, Lk, dtype=torch.bool, device=w.device).triu(1)
        w = w.masked_fill(future, float("-inf"))
    if key_padding_mask is not None:  # per-batch bias so padded keys leave the row max
        B = key_padding_mask.shape[0]
        w = w.masked_fill(~key_padding_mask[:, None, :], float("-inf"))
        w = w.view(B, *([1] * (k.dim() - 3)), Lq, Lk)
    if not causal or _global_k_max_is_safe(k):
        num, den, _ = _matmul_part(w, k, v)
        return _safe_div(num, den)
    # causal with a key far above every earlier one: query block [s, e) sees keys [0, s) in
    # full (one matmul, the k max taken over exactly those keys) plus the diagonal block,
    # summed exactly; so a large later key never underflows an earlier query's sums.
    out = []
    for s in range(0, Lq, _BLOCK):
        e = min(s + _BLOCK, Lq)
        parts = [_exact_part(w[..., s:e, s:e], k[..., s:e, :], v[..., s:e, :])]
        if s:
            parts.append(_matmul_part(w[..., s:e, :s], k[..., :s, :], v[..., :s, :]))
        out.append(_safe_div(*_merge(parts)))
    return torch.cat(out, dim=-2)


def aft(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos_bias: Optional[torch.Tensor] = None,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """AFT mixing (Feng 2025 eq. 19 with AFT's sigmoid(q) gate; Zhai et al. 2021).

    Args:
        q: (..., Lq, D), e.g. (B, H, L, d); gates the output.
        k, v: (..., Lk, D).
        pos_bias: w of shape (Lq, Lk), shared by all channels; None = AFT-simple (w = 0,
            linear cost).
        causal: exclude keys j > i (needs Lq == Lk).
        key_padding_mask: (B, Lk) bool, True = keep; padded keys have no influence.

    Returns:
        (..., Lq, D) in q's dtype.
    """
    if q.dim() < 2 or k.shape != v.shape or q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"aft: expected q (..., Lq, D) and k, v (..., Lk, D) of the same D and batch dims, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    Lq, Lk = q.shape[-2], k.shape[-2]
    if causal and Lq != Lk:
        raise ValueError(f"aft: causal needs as many queries as keys, got Lq={Lq}, Lk={Lk}")
    if pos_bias is not None and tuple(pos_bias.shape) != (Lq, Lk):
        raise ValueError(f"aft: pos_bias must have shape (Lq, Lk) = ({Lq}, {Lk}), got {tuple(pos_bias.shape)}")
    if key_padding_mask is not None:
        key_padding_mask = check_key_padding_mask(key_padding_mask, k.shape[0], Lk)
        if k.dim() < 3:
            raise ValueError("aft: a key_padding_mask needs batched inputs (B, ..., L, D)")
    out_dtype = q.dtype
    ct = aft_compute_dtype(torch.promote_types(q.dtype, k.dtype))
    q, k, v = q.to(ct), k.to(ct), v.to(ct)
    if key_padding_mask is not None:
        keep = key_padding_mask.to(k.device).view(k.shape[0], *([1] * (k.dim() - 3)), Lk, 1)
        k = k.masked_fill(~keep, float("-inf"))
        v = v.masked_fill(~keep, 0.0)  # padded values cannot leak, even if inf/nan
        key_padding_mask = key_padding_mask.to(k.device)
    with _no_autocast(q.device):
        if pos_bias is not None:
            ratio = _ratio_full(k, v, pos_bias.to(ct), causal, key_padding_mask)
        elif causal:
            ratio = _ratio_simple_causal(k, v)
        else:
            ratio = _ratio_simple(k, v)
        return (torch.sigmoid(q) * ratio).to(out_dtype)


def aft_state_update(sums: Sums, k: torch.Tensor, v: torch.Tensor) -> Sums:
    """Fold one key into running sums: (m, num, den) each (..., D), k, v (..., D).

    ``m`` is the running per-channel max of k (-inf when empty); ``num``/``den`` are
    ``sum exp(k_j - m) v_j`` and ``sum exp(k_j - m)`` over the folded keys.
    """
    m, num, den = sums
    m_new = torch.maximum(m, k)
    s_old, s_new = torch.exp(m - m_new), torch.exp(k - m_new)
    return m_new, num * s_old + s_new * v, den * s_old + s_new


def aft_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    sums: Optional[Sums] = None,
) -> torch.Tensor:
    """One decoding output from cached keys plus running sums of older keys.

    Args:
        q: (..., D) current query.
        k, v: (..., T, D) cached keys/values (the current one included); T may be 0.
        bias: (T,) position bias w_tj of each cached key, or None (0).
        sums: (m, num, den) each (..., D) from :func:`aft_state_update` for keys outside the
            cache (bias 0), or None.

    Returns:
        (..., D) in q's dtype: ``sigmoid(q) * sum exp(k_j + w_tj) v_j / sum exp(k_j + w_tj)``.
    """
    ct = aft_compute_dtype(q.dtype if sums is None else torch.promote_types(q.dtype, sums[1].dtype))
    k, v = k.to(ct), v.to(ct)
    a = k if bias is None else k + bias.to(ct)[:, None]
    maxes = [a.amax(-2)] if a.shape[-2] else []
    if sums is not None:
        maxes.append(sums[0].to(ct))
    if not maxes:
        return torch.zeros_like(q)
    M = torch.stack(maxes).amax(0)
    M = torch.where(torch.isfinite(M), M, torch.zeros_like(M))
    num = torch.zeros_like(M)
    den = torch.zeros_like(M)
    if a.shape[-2]:
        e = torch.exp(a - M[..., None, :])
        num, den = (e * v).sum(-2), e.sum(-2)
    if sums is not None:
        s = torch.exp(sums[0].to(ct) - M)
        num, den = num + s * sums[1].to(ct), den + s * sums[2].to(ct)
    return (torch.sigmoid(q.to(ct)) * _safe_div(num, den)).to(q.dtype)
