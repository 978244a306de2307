"""Attention Free Transformer (AFT), Zhai et al. 2021; Feng 2025 eq. 19.

Per channel c (every one of the D channels is independent, so heads do not matter here)::

    y_i = sigmoid(q_i) * sum_j exp(k_j + w_ij) * v_j / sum_j exp(k_j + w_ij)

Feng's eq. 19 writes the ratio only; AFT's ``sigmoid(q_i)`` output gate is included here.
``w`` (L, L) holds learned pairwise position biases shared by all channels (AFT-full;
AFT-local zeroes it outside a band); ``w = 0`` is AFT-simple.

Functions: :func:`aft` (any ``w``, and AFT-simple with a recurrent state), :func:`aft_local`
(the banded ``w`` of AFT-local, with a state), :func:`aft_full` (AFT-full's (max_len,
max_len) table, with a KV cache as its state).

Numerics (all sums accumulate in float32 for half/bfloat16 inputs, float64 stays float64;
autocast is switched off inside the ops). Causal forms only ever scale a query's sums by
quantities of the keys it sees, so changing keys/values at positions >= i leaves the
outputs at positions < i bit for bit unchanged (no stabiliser is taken over future keys).

* with ``w``, non-causal (O(L^2 D) compute, O(LD + L^2) memory): since
  ``exp(k_j + w_ij) = exp(w_ij - max_j w_ij) * exp(k_j - max_j k_j) * exp(max w_i + max k)``
  and the last factor depends only on (i, channel), it cancels in the ratio, leaving two
  matrix products ``exp(w') @ (exp(k') * v)`` and ``exp(w') @ exp(k')`` with all exponents
  <= 0 (no overflow).
* with ``w``, causal: queries go in blocks of 64: keys before the block by the two matrix
  products (max of k over exactly those keys), the diagonal block exactly (joint max of
  k_j + w_ij, (..., 64, 64, D) memory), the partial sums merged under their common max.
  Underflow remains possible only when a key is far below the max of k AND its bias far
  below the row's max of w at the same time (combined spread > ~87 in float32), i.e. when
  its true weight is negligible against some key's but not against the dominant one's.
* ``w = None``, non-causal (O(LD)): one sum with a per-channel max, exact and stable.
* ``w = None``, causal (O(LD)): the prefix-weighted average
  ``P(k, u)_i = sum_{j<=i} exp(k_j - lden_i) u_j`` with ``lden_i = logcumsumexp(k)_i``
  (a running max in effect). Its forward splits u into positive and negative parts,
  ``P = exp(lcse(k + log u+) - lden) - exp(lcse(k + log u-) - lden)``: no exponent is
  ever positive, whatever the magnitude of k; k is shifted by its first valid key per
  channel first (log-space rounding error is ~eps * |k - shift|, relative; the first key
  is a past key for every query that sees any). ``P`` and its transpose
  ``T(k, h)_j = sum_{i>=j} h_i exp(k_j - lden_i)`` are custom autograd functions whose
  backward passes are written with ``P`` and ``T`` again (grad_u P = T(g), grad_k P =
  u T(g) - T(g P), grad_h T = P(g), grad_k T = g T - T(h P(g))), so every derivative
  order is finite: torch's own ``logcumsumexp`` backward takes ``log|grad|`` and its
  double backward is NaN wherever a gradient is exactly 0.
* AFT-local (:func:`aft_local`, causal): the keys out of a query's band (bias 0) by the
  prefix form above, the band (``window`` keys) exactly with its joint max of k_j + w_ij
  ((..., L, D, window) memory), merged under the common max.

Padded keys (``key_padding_mask`` False) get weight 0 and are excluded from every max; a
query with no valid key (all padded, or causal with none before it) outputs 0, never NaN.

Recurrent state (causal only; the ``initial_state`` / ``output_final_state`` contract:
the op returns ``o``, or ``(o, final_state)`` when ``output_final_state``; feeding a
sequence in pieces with the state passed on equals one call on the whole sequence):

* AFT-simple: ``{"m", "num", "den"}`` each (..., D): running max ``m`` of k (-inf when
  empty), ``num = sum exp(k_j - m) v_j`` and ``den = sum exp(k_j - m)``
  (:func:`aft_state_update` folds in one key). A call merges them as a virtual key before
  position 0 with log-weight ``m + log den`` and value ``num / den``.
* AFT-local: the last ``window`` keys/values ``"k"``, ``"v"`` (..., T, D), the sums
  ``m, num, den`` of the keys that left the window, and the token count ``"t"`` (int).
* AFT-full: the cache ``"k"``, ``"v"`` (..., T, D) of every past key (T = tokens seen),
  plus ``"mask"`` (B, T) once a key padding mask was used.

State tensors are never modified in place. :func:`aft_step` (one output from a cache plus
sums) is kept for reference.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional, Tuple

import torch

from ea_zoo.functional.checks import check_key_padding_mask

__all__ = [
    "aft",
    "aft_local",
    "aft_local_dense_bias",
    "aft_full",
    "init_aft_state",
    "aft_step",
    "aft_state_update",
    "aft_compute_dtype",
]

# causal AFT-full: query blocks of _BLOCK (diagonal: (..., B, B, D) memory)
_BLOCK = 64
_NEG_INF = float("-inf")

Sums = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
State = Dict[str, object]


def aft_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for float16/bfloat16, the dtype itself otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _no_autocast(device: torch.device):
    """Disable autocast around the sums (it would run the matmuls in half precision).
    Devices without autocast (``meta``) need nothing."""
    if device.type == "meta":
        return contextlib.nullcontext()
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


# ---------------------------------------------------------------------- causal prefix sums
def _lcse(x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """logcumsumexp along -2 (from the end when ``reverse``); never differentiated."""
    if reverse:
        return torch.logcumsumexp(x.flip(-2), dim=-2).flip(-2)
    return torch.logcumsumexp(x, dim=-2)


def _log_pos(x: torch.Tensor) -> torch.Tensor:
    """log(max(x, 0)): -inf where x <= 0 (forward only, never differentiated)."""
    return torch.log(x.clamp_min(0.0))


def _prefix_avg_forward(k: torch.Tensor, u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """P(k, u)_i = sum_{j<=i} exp(k_j - lden_i) u_j, 0 for rows without a key (k = -inf).
    Returns P and lden."""
    lden = _lcse(k)
    has = ~torch.isneginf(lden)
    ld = torch.where(has, lden, torch.zeros_like(lden))
    r = torch.exp(_lcse(k + _log_pos(u)) - ld) - torch.exp(_lcse(k + _log_pos(-u)) - ld)
    return torch.where(has, r, torch.zeros_like(r)), lden


def _suffix_apply_forward(k: torch.Tensor, h: torch.Tensor, lden: torch.Tensor) -> torch.Tensor:
    """T(k, h)_j = sum_{i>=j} h_i exp(k_j - lden_i) (the transpose of P), rows i without a
    key excluded. Exponents: k_j - lden_i <= 0 for i >= j, so k_j + rlcse(-lden)_j <= log L."""
    a = torch.where(torch.isneginf(lden), lden, -lden)
    hi = k + _lcse(a + _log_pos(h), reverse=True)
    lo = k + _lcse(a + _log_pos(-h), reverse=True)
    return torch.exp(hi) - torch.exp(lo)


def _prefix_avg(k: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """P(k, u) through :class:`_PrefixAvg`; under ``torch.jit`` tracing (fvcore's FLOP count)
    the plain forward ops instead, so every op is seen and counted."""
    if torch.jit.is_tracing():
        return _prefix_avg_forward(k, u)[0]
    return _PrefixAvg.apply(k, u)[0]


def _log_cumsumexp(x: torch.Tensor) -> torch.Tensor:
    """logcumsumexp along -2 through :class:`_LogCumSumExp` (plain ops when tracing)."""
    if torch.jit.is_tracing():
        return _lcse(x)
    return _LogCumSumExp.apply(x)


# The three functions below are written in the ``setup_context`` form with
# ``generate_vmap_rule``: their forwards are plain tensor ops, so torch.func.vmap (and
# torch.compile, which traces them) run them as they are.


class _PrefixAvg(torch.autograd.Function):
    """P(k, u) with a backward written in P and T (differentiable to any order). Returns
    ``(P, lden)``, lden = logcumsumexp(k) (non-differentiable, kept for the backward)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(k, u):
        return _prefix_avg_forward(k, u)

    @staticmethod
    def setup_context(ctx, inputs, output):
        k, u = inputs
        r, lden = output
        ctx.save_for_backward(k, u, r, lden)
        ctx.mark_non_differentiable(lden)

    @staticmethod
    def backward(ctx, g, _glden):
        k, u, r, lden = ctx.saved_tensors
        tg = _SuffixApply.apply(k, g, lden)
        gk = u * tg - _SuffixApply.apply(k, g * r, lden) if ctx.needs_input_grad[0] else None
        return gk, tg


class _SuffixApply(torch.autograd.Function):
    """T(k, h) with a backward written in P and T. ``lden`` = logcumsumexp(k), passed in so
    it is not recomputed; it gets no gradient (T's backward differentiates through k)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(k, h, lden):
        return _suffix_apply_forward(k, h, lden)

    @staticmethod
    def setup_context(ctx, inputs, output):
        k, h, lden = inputs
        ctx.save_for_backward(k, h, output, lden)

    @staticmethod
    def backward(ctx, g):
        k, h, t, lden = ctx.saved_tensors
        pg = _PrefixAvg.apply(k, g)[0]
        gk = g * t - _SuffixApply.apply(k, h * pg, lden) if ctx.needs_input_grad[0] else None
        return gk, pg, None


class _LogCumSumExp(torch.autograd.Function):
    """logcumsumexp along -2 whose backward is T(x, g) (differentiable to any order)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return _lcse(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return _SuffixApply.apply(x, g, y.detach())


def _causal_shift(k: torch.Tensor) -> torch.Tensor:
    """Detached per-channel shift (..., 1, D): the first finite key along L (0 if none).

    A past key of every query that sees a key, so the rounding of a query's output never
    depends on later keys."""
    kd = k.detach()
    idx = torch.isfinite(kd).to(torch.int32).argmax(-2, keepdim=True)
    c = kd.gather(-2, idx)
    return torch.where(torch.isfinite(c), c, torch.zeros_like(c))


def _empty_sums(like: torch.Tensor) -> Sums:
    """(m, num, den) of no keys, shaped as ``like`` (..., D)."""
    return torch.full_like(like, _NEG_INF), torch.zeros_like(like), torch.zeros_like(like)


def _virtual_key(sums: Sums) -> Tuple[torch.Tensor, torch.Tensor]:
    """Running sums as one key (..., 1, D): log-weight m + log den, value num / den
    (-inf and 0 when empty)."""
    m, num, den = sums
    ok = den > 0
    safe = torch.where(ok, den, torch.ones_like(den))
    lw = torch.where(ok, m + torch.log(safe), torch.full_like(m, _NEG_INF))
    u = torch.where(ok, num / safe, torch.zeros_like(num))
    return lw.unsqueeze(-2), u.unsqueeze(-2)


def _fold(sums: Sums, k: torch.Tensor, v: torch.Tensor) -> Sums:
    """Merge keys k, v (..., n, D) (-inf = no key) into running sums (m, num, den).

    ``m`` is detached (a scale: the sums at scale m carry the gradients)."""
    m0, num0, den0 = sums
    if k.shape[-2] == 0:
        return m0, num0, den0
    m = torch.maximum(m0.detach(), k.detach().amax(-2))
    ms = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s0 = torch.exp(m0.detach() - ms)
    e = torch.exp(k - ms.unsqueeze(-2))
    return m, num0 * s0 + (e * v).sum(-2), den0 * s0 + e.sum(-2)


def _ratio_simple_causal(k: torch.Tensor, v: torch.Tensor, sums: Optional[Sums]) -> torch.Tensor:
    """AFT-simple causal ratio (..., L, D), continuing from ``sums`` when given."""
    if sums is not None:
        lw, u = _virtual_key(sums)
        k, v = torch.cat([lw, k], dim=-2), torch.cat([u, v], dim=-2)
    r = _prefix_avg(k - _causal_shift(k), v)
    return r[..., 1:, :] if sums is not None else r


# ---------------------------------------------------------------------- biased (AFT-full)
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
    lams = [torch.where(den > 0, lam, torch.full_like(lam, _NEG_INF)) for _, den, lam in parts]
    top = torch.stack(lams).amax(0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    num = sum(n * torch.exp(lam - top) for (n, _, _), lam in zip(parts, lams))
    den = sum(d * torch.exp(lam - top) for (_, d, _), lam in zip(parts, lams))
    return num, den


def _ratio_full(k, v, w, causal, key_padding_mask, offset: int = 0):
    """Ratio with biases w (Lq, Lk). Causal: query i sees keys j <= i + offset."""
    Lq, Lk = w.shape
    if causal:
        future = torch.ones(Lq, Lk, dtype=torch.bool, device=w.device).triu(1 + offset)
        w = w.masked_fill(future, _NEG_INF)
    if key_padding_mask is not None:  # per-batch bias so padded keys leave the row max
        B = key_padding_mask.shape[0]
        w = w.masked_fill(~key_padding_mask[:, None, :], _NEG_INF)
        w = w.view(B, *([1] * (k.dim() - 3)), Lq, Lk)
    if not causal:
        num, den, _ = _matmul_part(w, k, v)
        return _safe_div(num, den)
    # query block [s, e) sees keys [0, s + offset) in full (one matmul, the k max taken over
    # exactly those keys) plus the diagonal block, summed exactly; every scale is a past one
    out = []
    for s in range(0, Lq, _BLOCK):
        e = min(s + _BLOCK, Lq)
        ds, de = s + offset, e + offset
        parts = [_exact_part(w[..., s:e, ds:de], k[..., ds:de, :], v[..., ds:de, :])]
        if ds:
            parts.append(_matmul_part(w[..., s:e, :ds], k[..., :ds, :], v[..., :ds, :]))
        out.append(_safe_div(*_merge(parts)))
    return torch.cat(out, dim=-2)


# ---------------------------------------------------------------------- validation helpers
def _check_qkv(name, q, k, v):
    if q.dim() < 2 or k.shape != v.shape or q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"{name}: expected q (..., Lq, D) and k, v (..., Lk, D) of the same D and batch dims, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def _check_stateful(name: str, causal: bool, initial_state, output_final_state: bool) -> bool:
    stateful = initial_state is not None or bool(output_final_state)
    if stateful and not causal:
        raise ValueError(
            f"{name}: initial_state / output_final_state need causal=True (a recurrent state "
            f"carries only the past), got causal=False"
        )
    if initial_state is not None and not isinstance(initial_state, dict):
        raise TypeError(f"{name}: initial_state must be a dict of tensors, got {type(initial_state).__name__}")
    return stateful


def _check_state_keys(name: str, state: dict, keys, hint: str) -> None:
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"{name}: initial_state lacks {missing}; expected keys {list(keys)} ({hint})")


def _state_tensor(name: str, state: dict, key: str, shape, ct) -> torch.Tensor:
    t = state[key]
    if not torch.is_tensor(t) or tuple(t.shape) != tuple(shape):
        got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
        raise ValueError(f"{name}: initial_state[{key!r}] must have shape {tuple(shape)}, got {got}")
    return t.to(ct)


def _state_dtype(q: torch.Tensor, k: torch.Tensor, state: Optional[dict], key: str) -> torch.dtype:
    dt = torch.promote_types(q.dtype, k.dtype)
    if state is not None and torch.is_tensor(state.get(key)):
        dt = torch.promote_types(dt, state[key].dtype)
    return aft_compute_dtype(dt)


def _mask_keys(k, v, key_padding_mask, name):
    """k -> -inf and v -> 0 at padded keys; returns k, v and the (B, L) bool mask (or None)."""
    if key_padding_mask is None:
        return k, v, None
    if k.dim() < 3:
        raise ValueError(f"{name}: a key_padding_mask needs batched inputs (B, ..., L, D)")
    mask = check_key_padding_mask(key_padding_mask, k.shape[0], k.shape[-2]).to(k.device)
    keep = mask.view(k.shape[0], *([1] * (k.dim() - 3)), k.shape[-2], 1)
    k = k.masked_fill(~keep, _NEG_INF)
    v = v.masked_fill(~keep, 0.0)  # padded values cannot leak, even if inf/nan
    return k, v, mask


def _check_position(name: str, last: int, max_len: int) -> None:
    if last > max_len:
        raise ValueError(
            f"{name}: sequence position {last} exceeds max_len={max_len} of {name}'s position "
            f"biases; build it with max_len >= {last}"
        )


# ---------------------------------------------------------------------- public ops
def aft(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos_bias: Optional[torch.Tensor] = None,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    initial_state: Optional[Dict[str, torch.Tensor]] = None,
    output_final_state: bool = False,
):
    """AFT mixing (Feng 2025 eq. 19 with AFT's sigmoid(q) gate; Zhai et al. 2021).

    Args:
        q: (..., Lq, D), e.g. (B, H, L, d); gates the output.
        k, v: (..., Lk, D).
        pos_bias: w of shape (Lq, Lk), shared by all channels; None = AFT-simple (w = 0,
            linear cost).
        causal: exclude keys j > i (needs Lq == Lk).
        key_padding_mask: (B, Lk) bool, True = keep; padded keys have no influence.
        initial_state: AFT-simple only (``pos_bias=None``, ``causal=True``): running sums
            ``{"m", "num", "den"}`` each (..., D) of the keys before this call
            (:func:`init_aft_state` ``kind="simple"`` gives empty ones).
        output_final_state: also return the sums after the last key.

    Returns:
        (..., Lq, D) in q's dtype, or ``(out, final_state)`` when ``output_final_state``
        (state tensors in the accumulation dtype).
    """
    _check_qkv("aft", q, k, v)
    Lq, Lk = q.shape[-2], k.shape[-2]
    if causal and Lq != Lk:
        raise ValueError(f"aft: causal needs as many queries as keys, got Lq={Lq}, Lk={Lk}")
    if pos_bias is not None and tuple(pos_bias.shape) != (Lq, Lk):
        raise ValueError(f"aft: pos_bias must have shape (Lq, Lk) = ({Lq}, {Lk}), got {tuple(pos_bias.shape)}")
    stateful = _check_stateful("aft", causal, initial_state, output_final_state)
    if stateful and pos_bias is not None:
        raise ValueError(
            "aft: initial_state / output_final_state need pos_bias=None (AFT-simple); "
            "use aft_local or aft_full for biased AFT with a state"
        )
    out_dtype = q.dtype
    ct = _state_dtype(q, k, initial_state, "num")
    D = q.shape[-1]
    sums = None
    if initial_state is not None:
        _check_state_keys("aft", initial_state, ("m", "num", "den"), "from init_aft_state(kind='simple')")
        shape = q.shape[:-2] + (D,)
        sums = tuple(_state_tensor("aft", initial_state, key, shape, ct) for key in ("m", "num", "den"))
    q, k, v = q.to(ct), k.to(ct), v.to(ct)
    k, v, mask = _mask_keys(k, v, key_padding_mask, "aft")
    with _no_autocast(q.device):
        if pos_bias is not None:
            ratio = _ratio_full(k, v, pos_bias.to(ct), causal, mask)
        elif causal:
            ratio = _ratio_simple_causal(k, v, sums)
        else:
            ratio = _ratio_simple(k, v)
        out = (torch.sigmoid(q) * ratio).to(out_dtype)
        if not output_final_state:
            return out
        if sums is None:
            sums = _empty_sums(q.new_empty(q.shape[:-2] + (D,)))
        m, num, den = _fold(sums, k, v)
    return out, {"m": m, "num": num, "den": den}


def aft_local_dense_bias(band_bias: torch.Tensor, window: int, L: int) -> torch.Tensor:
    """Dense w (L, L) of AFT-local's band table (max_len >= L, 2 window - 1):
    w_ij = band_bias[i, j - i + window - 1] for |i - j| < window, 0 outside."""
    idx = torch.arange(L, device=band_bias.device)
    r = idx[None, :] - idx[:, None] + (window - 1)
    inside = (r >= 0) & (r < 2 * window - 1)
    w = band_bias[:L].gather(1, r.clamp(0, 2 * window - 2))
    return w.masked_fill(~inside, 0.0)


def aft_local(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    band_bias: torch.Tensor,
    window: int,
    causal: bool = True,
    key_padding_mask: Optional[torch.Tensor] = None,
    initial_state: Optional[State] = None,
    output_final_state: bool = False,
):
    """AFT-local (eq. 19 with a banded w; Zhai et al. 2021): ``w_ij = band_bias[i, j - i +
    window - 1]`` for |i - j| < window and 0 outside (keys out of the band still count, with
    bias 0). i, j are absolute positions: a call continuing from a state of ``t`` tokens
    reads rows t .. t + L - 1.

    Args:
        q, k, v: (..., L, D), e.g. (B, H, L, d).
        band_bias: (max_len, 2 window - 1), shared by all channels; row = query position.
        window: band half-width (keys with |i - j| < window get a bias).
        causal: keys j <= i only (the band's columns 0 .. window - 1). Non-causal takes no
            state and uses the dense (L, L) form of :func:`aft`.
        key_padding_mask: (B, L) bool, True = keep (for this call's keys).
        initial_state: ``{"k", "v"}`` (..., T, D) the last T <= window keys/values (their
            positions t - T .. t - 1), ``{"m", "num", "den"}`` (..., D) the running sums of
            the keys before them, ``"t"`` (int) the tokens seen; :func:`init_aft_state`
            ``kind="local"`` gives an empty one.
        output_final_state: also return the state after the last token.

    Returns:
        (..., L, D) in q's dtype, or ``(out, final_state)``.

    Raises ValueError (before any work) when a position t + L exceeds max_len. Causal cost:
    O(L window D) compute and memory.
    """
    _check_qkv("aft_local", q, k, v)
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        raise ValueError(f"aft_local: window must be a positive int, got {window!r}")
    if band_bias.dim() != 2 or band_bias.shape[1] != 2 * window - 1:
        raise ValueError(
            f"aft_local: band_bias must have shape (max_len, 2 * window - 1) = (max_len, {2 * window - 1}), "
            f"got {tuple(band_bias.shape)}"
        )
    _check_stateful("aft_local", causal, initial_state, output_final_state)
    L, Lk = q.shape[-2], k.shape[-2]
    if L != Lk:
        raise ValueError(f"aft_local: needs as many queries as keys, got Lq={L}, Lk={Lk}")
    max_len = band_bias.shape[0]
    t = 0
    if initial_state is not None:
        _check_state_keys("aft_local", initial_state, ("k", "v", "m", "num", "den", "t"),
                          "from init_aft_state(kind='local')")
        t = int(initial_state["t"])
    _check_position("aft_local", t + L, max_len)
    if not causal:
        return aft(q, k, v, pos_bias=aft_local_dense_bias(band_bias, window, L), causal=False,
                   key_padding_mask=key_padding_mask)

    out_dtype = q.dtype
    ct = _state_dtype(q, k, initial_state, "num")
    D = q.shape[-1]
    lead = q.shape[:-2]
    q, k, v = q.to(ct), k.to(ct), v.to(ct)
    k, v, _ = _mask_keys(k, v, key_padding_mask, "aft_local")
    if initial_state is not None:
        kc, vc = initial_state["k"], initial_state["v"]
        if not torch.is_tensor(kc) or kc.shape[:-2] != lead or kc.shape[-1] != D or kc.shape[-2] > window \
                or kc.shape != vc.shape:
            raise ValueError(
                f"aft_local: initial_state['k'], ['v'] must have shape {tuple(lead)} + (T, {D}) with "
                f"T <= window={window}, got {tuple(kc.shape)} and {tuple(vc.shape)}"
            )
        sums = tuple(_state_tensor("aft_local", initial_state, key, lead + (D,), ct) for key in ("m", "num", "den"))
        kc, vc = kc.to(ct), vc.to(ct)
    else:
        kc = k.new_zeros(lead + (0, D))
        vc = kc
        sums = _empty_sums(k.new_empty(lead + (D,)))
    T = kc.shape[-2]
    K, V = torch.cat([kc, k], dim=-2), torch.cat([vc, v], dim=-2)  # positions t - T .. t + L - 1

    with _no_autocast(q.device):
        # keys out of query i's band (bias 0): the folded sums, then K[..., : i + T - window + 1]
        lw, u = _virtual_key(sums)
        Kp, Vp = torch.cat([lw, K], dim=-2), torch.cat([u, V], dim=-2)
        c = _causal_shift(Kp)
        Kp = Kp - c
        lden = _log_cumsumexp(Kp)
        r = _prefix_avg(Kp, Vp)
        idx = (torch.arange(L, device=q.device) + (T - window + 1)).clamp_min(0)
        lp, rp = lden.index_select(-2, idx), r.index_select(-2, idx)
        # the band: K[..., i + T - We + 1 : i + T + 1] with biases band_bias[t + i, window - We:]
        We = min(window, T + L)
        npad = max(0, We - 1 - T)
        Kb, Vb = K - c, V
        if npad:
            Kb = torch.cat([Kb.new_full(lead + (npad, D), _NEG_INF), Kb], dim=-2)
            Vb = torch.cat([Vb.new_zeros(lead + (npad, D)), Vb], dim=-2)
        s0 = T + npad - We + 1
        kw = Kb.unfold(-2, We, 1)[..., s0: s0 + L, :, :]  # (..., L, D, We)
        vw = Vb.unfold(-2, We, 1)[..., s0: s0 + L, :, :]
        bias = band_bias[t: t + L, window - We: window].to(device=q.device, dtype=ct)
        a = kw + bias[:, None, :]
        lam = _finite_max(a, -1)
        e = torch.exp(a - lam)
        num_b, den_b = (e * vw).sum(-1), e.sum(-1)
        lam = torch.where(den_b > 0, lam.squeeze(-1), torch.full_like(den_b, _NEG_INF))
        top = torch.maximum(lp.detach(), lam)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        sp, sb = torch.exp(lp - top), torch.exp(lam - top)
        ratio = _safe_div(sp * rp + sb * num_b, sp + sb * den_b)
        out = (torch.sigmoid(q) * ratio).to(out_dtype)
        if not output_final_state:
            return out
        n_fold = max(0, T + L - window)
        m, num, den = _fold(sums, K[..., :n_fold, :], V[..., :n_fold, :])
    return out, {"k": K[..., n_fold:, :], "v": V[..., n_fold:, :], "m": m, "num": num, "den": den, "t": t + L}


def aft_full(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos_bias: torch.Tensor,
    causal: bool = True,
    key_padding_mask: Optional[torch.Tensor] = None,
    initial_state: Optional[State] = None,
    output_final_state: bool = False,
):
    """AFT-full (eq. 19; Zhai et al. 2021) with its learned (max_len, max_len) table
    ``pos_bias``: w_ij = pos_bias[i, j] for absolute positions i, j (a call continuing from
    a cache of T tokens reads rows T .. T + L - 1, columns 0 .. T + L - 1).

    Args:
        q, k, v: (..., L, D), e.g. (B, H, L, d).
        pos_bias: (max_len, max_len) (rows = query positions, columns = key positions).
        causal: keys j <= i only; non-causal takes no state.
        key_padding_mask: (B, L) bool, True = keep (for this call's keys).
        initial_state: KV cache ``{"k", "v"}`` (..., T, D) of the T tokens seen, and
            ``"mask"`` (B, T) bool once padding was used; :func:`init_aft_state`
            ``kind="full"`` gives an empty one.
        output_final_state: also return the cache with this call's keys appended.

    Returns:
        (..., L, D) in q's dtype, or ``(out, final_state)``. O(L (T + L) D) compute.

    Raises ValueError (before any work) when a position T + L exceeds max_len.
    """
    _check_qkv("aft_full", q, k, v)
    if pos_bias.dim() != 2:
        raise ValueError(f"aft_full: pos_bias must have shape (max_len, max_len), got {tuple(pos_bias.shape)}")
    stateful = _check_stateful("aft_full", causal, initial_state, output_final_state)
    L, Lk = q.shape[-2], k.shape[-2]
    if L != Lk:
        raise ValueError(f"aft_full: needs as many queries as keys, got Lq={L}, Lk={Lk}")
    T = 0
    if initial_state is not None:
        _check_state_keys("aft_full", initial_state, ("k", "v"), "from init_aft_state(kind='full')")
        T = initial_state["k"].shape[-2]
    _check_position("aft_full", T + L, min(pos_bias.shape))
    if not stateful:
        return aft(q, k, v, pos_bias=pos_bias[:L, :L], causal=causal, key_padding_mask=key_padding_mask)

    out_dtype = q.dtype
    ct = _state_dtype(q, k, initial_state, "k")
    D = q.shape[-1]
    lead = q.shape[:-2]
    q, k, v = q.to(ct), k.to(ct), v.to(ct)
    k, v, mask = _mask_keys(k, v, key_padding_mask, "aft_full")
    cache_mask = None
    if initial_state is not None:
        kc, vc = initial_state["k"], initial_state["v"]
        if kc.shape[:-2] != lead or kc.shape[-1] != D or kc.shape != vc.shape:
            raise ValueError(
                f"aft_full: initial_state['k'], ['v'] must have shape {tuple(lead)} + (T, {D}), "
                f"got {tuple(kc.shape)} and {tuple(vc.shape)}"
            )
        kc, vc = kc.to(ct), vc.to(ct)
        cache_mask = initial_state.get("mask")
    else:
        kc = k.new_zeros(lead + (0, D))
        vc = kc
    K, V = torch.cat([kc, k], dim=-2), torch.cat([vc, v], dim=-2)
    full_mask = None
    if cache_mask is not None or mask is not None:
        B = K.shape[0]
        if cache_mask is None:
            cache_mask = torch.ones(B, T, dtype=torch.bool, device=K.device)
        if mask is None:
            mask = torch.ones(B, L, dtype=torch.bool, device=K.device)
        full_mask = torch.cat([cache_mask.to(device=K.device, dtype=torch.bool), mask], dim=-1)
    w = pos_bias[T: T + L, : T + L].to(device=q.device, dtype=ct)
    with _no_autocast(q.device):
        ratio = _ratio_full(K, V, w, True, full_mask, offset=T)
        out = (torch.sigmoid(q) * ratio).to(out_dtype)
    if not output_final_state:
        return out
    state = {"k": K, "v": V}
    if full_mask is not None:
        state["mask"] = full_mask
    return out, state


def init_aft_state(
    batch_shape: Tuple[int, ...],
    dim: int,
    kind: str = "simple",
    device=None,
    dtype=None,
) -> State:
    """Empty AFT state for inputs (*batch_shape, L, dim), e.g. batch_shape = (B, H).

    kind: "simple" -> {"m" (-inf), "num", "den"} each (*batch_shape, dim) (:func:`aft`);
    "local" -> those plus an empty cache {"k", "v"} (*batch_shape, 0, dim) and "t" = 0
    (:func:`aft_local`); "full" -> the empty cache {"k", "v"} (:func:`aft_full`).
    Kept in float32 for half dtypes.
    """
    if kind not in ("simple", "local", "full"):
        raise ValueError(f"init_aft_state: unknown kind {kind!r}; valid: 'simple', 'local', 'full'")
    dd = {"device": device, "dtype": aft_compute_dtype(dtype or torch.get_default_dtype())}
    shape = tuple(batch_shape) + (dim,)
    state: State = {}
    if kind in ("simple", "local"):
        state.update(m=torch.full(shape, _NEG_INF, **dd), num=torch.zeros(shape, **dd),
                     den=torch.zeros(shape, **dd))
    if kind in ("local", "full"):
        cache = torch.zeros(tuple(batch_shape) + (0, dim), **dd)
        state.update(k=cache, v=cache.clone())
    if kind == "local":
        state["t"] = 0
    return state


def aft_state_update(sums: Sums, k: torch.Tensor, v: torch.Tensor) -> Sums:
    """Fold one key into running sums: (m, num, den) each (..., D), k, v (..., D).

    ``m`` is the running per-channel max of k (-inf when empty); ``num``/``den`` are
    ``sum exp(k_j - m) v_j`` and ``sum exp(k_j - m)`` over the folded keys. A key of -inf
    (padding) changes nothing.
    """
    m, num, den = sums
    m_new = torch.maximum(m, k)
    ms = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
    s_old, s_new = torch.exp(m - ms), torch.exp(k - ms)
    return m_new, num * s_old + s_new * v, den * s_old + s_new


def aft_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    sums: Optional[Sums] = None,
) -> torch.Tensor:
    """One decoding output from cached keys plus running sums of older keys (reference).

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
