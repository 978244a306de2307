"""EA-series in PyTorch, the fast path where Triton is absent: O(t L D) time, O(L D) memory.

Feng 2025 eq. 5 (non-causal) and eq. 6 (causal), per channel, with P_t(x) = sum_{n<=t} x^n/n!
and c_n = 2^n / n!:

    y_i = sum_n c_n q_i^n S_{n,i} / sum_n c_n q_i^n Z_{n,i},
    S_{n,i} = sum_{j in J(i)} e^{R_i - k_j^2} k_j^n v_j,   Z_{n,i} = same without v_j,

for any per-row scale R_i (it cancels in the ratio). Both forms are ``torch.autograd.Function``s
with a hand-written backward that recomputes what it needs from q, k, v. Training saves
q, k, v, y and (2 t + 2) x D sums (non-causal); the causal form also saves two (L, D) row
factors (1 / den and dq / g, so the backward rebuilds no sums) and the (2 t + 2) x D chunk
states every ``chunk_size`` tokens: nothing of size (t + 1) x L x D lives from the forward
to the backward. The temporaries of one call are bounded by working on blocks of rows
(``_rows_per_block``, ``_row_blocks``).

Both forms run as ``torch.library`` custom ops (``ea_zoo::ea_series_parallel``,
``ea_zoo::ea_series_causal`` / ``_causal_train`` and their ``_backward`` ops) with fake
(meta) kernels and vmap rules that fold the vmapped dim into the leading dims, tied to their
backward by ``setup_context``-style autograd Functions: the causal scan's choice of the exact
fallback for unsafe chunks (a data-dependent branch) happens inside the op, in eager, so
``torch.compile(fullgraph=True)``, ``torch.func.vmap`` (also of ``grad``) and ``meta`` tensors
see no host sync. Eager results are bit-identical to the plain functions.

Non-causal: every row sees every key, so one scale per channel, R = min_j k_j^2, is exact:
the smallest-k^2 key has e^0 and nothing can underflow that matters.

Causal, prefix-stabilised: row i may use only keys j <= i, also through its scale. Let
m_i = min(ref0, min_{j<=i} k_j^2) be the running minimum (``ref0`` from ``initial_state``).
With R_i = m_i every exponent m_i - k_j^2 <= 0, and the key that attains m_i (the row's
"dominant" key, the one with the largest e^{-k^2}) has weight exactly e^0 P_t(2 q_i k_j)
>= min P_t > 0 (t even). So a row's denominator cannot underflow, whatever the keys after
it hold; a term that underflows is < e^{-87} (float32) of the dominant one (times the ratio
of polynomial values). The sequence is cut into chunks of C tokens, and every scale a row
uses is known at that row (so outputs before i are bit-identical whatever comes after i):

* chunk c is computed at r_c = m at its *first* row. The state carried from chunk c - 1
  (at rho_{c-1}, the running min at that chunk's end) is rescaled by e^{r_c - rho_{c-1}} <= 1,
  and the state handed on is (carried + the chunk's sums) e^{rho_c - r_c}: a loop over
  chunks on (2 t + 2) x D numbers.
* inside the chunk, row i's sums are the carried state plus the chunk's prefix sums, both at
  scale r_c, with key weights e^{r_c - k_j^2}: bounded by e^{tau} (tau = 20 in float32) as
  long as the running minimum has not fallen more than tau below r_c by row i (a "safe"
  row: its scale R_i = r_c is then within tau of its m_i, so nothing of weight that
  matters underflows). Rows past such a drop ("unsafe": the running minimum only falls, by
  at most its first value in all, but with large q, k, as trained models have, a chunk of
  many channels often holds one) are computed exactly at R_i = m_i, forward and backward:
  the chunk is redone as a sequence of sub-chunks of C / 4 rows continuing from the carried
  state, each at its own first-row scale (recursively), and pair by pair (C x C weights
  e^{m_i - k_j^2}, exponents <= 0) once C <= 16. The state totals of such chunks are
  computed pair-free, at rho (exponents <= 0).

Gradients: m is a constant (detached) scale; d y / d ref is 0 in exact arithmetic. No
gradient flows into ``initial_state`` (it is treated as data, as in truncated BPTT).
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Optional

import torch

__all__ = ["ea_series_chunk", "ea_series_parallel", "DEFAULT_CHUNK_SIZE"]

DEFAULT_CHUNK_SIZE = 64
# unsafe chunks of more rows than this are redone in sub-chunks of 1 / _SUB_SPLIT their size
# (each at its own scale); smaller ones pair by pair
_PAIRWISE_MAX = 16
_SUB_SPLIT = 4
# largest drop of the running minimum inside a chunk handled by the factored form
_TAU = {torch.float32: 20.0, torch.float64: 300.0}
# temporaries of one block: about this many elements (or 2 x the sequence's L x D, if larger)
_BLOCK_ELEMENTS = 1 << 23


def _coef(order: int) -> List[float]:
    return [2.0**n / math.factorial(n) for n in range(order + 1)]


def _cd(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _zeros(x):
    return torch.zeros((), dtype=x.dtype, device=x.device)


def _exp_le0(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """e^{a - b} where a and b are finite (callers guarantee a <= b there), else 0."""
    ok = torch.isfinite(b) & torch.isfinite(a)
    return torch.where(ok, torch.exp(torch.where(ok, a - b, _zeros(a))), _zeros(a))


def _masked(k: torch.Tensor, v: torch.Tensor, km: Optional[torch.Tensor]):
    """k^2 with +inf at padded keys; k, v with 0 there (NaN/Inf at padded keys cannot leak)."""
    k2 = k * k
    if km is None:
        return k, v, k2
    zero = _zeros(k)
    return (torch.where(km, k, zero), torch.where(km, v, zero),
            torch.where(km, k2, torch.full((), float("inf"), dtype=k.dtype, device=k.device)))


def _horner_c(coefs, x: torch.Tensor) -> torch.Tensor:
    """sum_n c_n x^n coefs[n], c_n = 2^n / n! (the Taylor coefficients of e^{2 q k}), by Horner:
    acc = coefs[n] + (2 / (n + 1)) acc x, one fused ``addcmul`` per degree. ``coefs`` may be a
    sequence or a stacked tensor (degree first), broadcastable against x."""
    t = len(coefs) - 1
    acc = coefs[t]
    for n in range(t - 1, -1, -1):
        acc = torch.addcmul(coefs[n], acc, x, value=2.0 / (n + 1))
    if acc.shape != x.shape:
        acc = acc.expand(torch.broadcast_shapes(acc.shape, x.shape))
    return acc


def _key_grads(k, v, G):
    """Per key: dv = sum_n c_n k^n GS_n, dk = sum_n c_n (n k^{n-1} - 2 k^{n+1}) (v GS_n + GZ_n).

    G = stack(GS, GZ) (2, t+1, ...): the row-side sums reaching each key with its weight
    e^{R - k^2} included (d/dk of e^{-k^2} k^n = e^{-k^2} (n k^{n-1} - 2 k^{n+1})). The
    derivative polynomial sum_n n c_n k^{n-1} G_n is 2 sum_m c_m k^m G_{m+1}. S and Z go
    through each Horner together (one op per degree on the stacked pair).
    """
    G = G.transpose(0, 1)  # (t+1, 2, ...)
    P = _horner_c(G, k)  # (2, ...): PS, PZ
    Dd = 2.0 * _horner_c(G[1:], k) if G.shape[0] > 1 else torch.zeros_like(P)
    Dd.addcmul_(P, k, value=-2.0)  # D - 2 k P
    dk = torch.addcmul(Dd[1], v, Dd[0])
    return dk, P[0]


def _row_q_grad(q, R, dnum, dden):
    """dq = dnum d num/dq + dden d den/dq with num = sum_n c_n q^n R[0, n] (den: R[1])."""
    if R.shape[1] == 1:
        return torch.zeros_like(q)
    D = _horner_c(R[:, 1:].transpose(0, 1), q)  # (2, ...): num'/2, den'/2
    return torch.addcmul(dnum * D[0], dden, D[1]).mul_(2.0)


def _q_powers_times(q, dnum, dden, order):
    """(2, t+1, ...): q^n dnum and q^n dden."""
    out = torch.empty((2, order + 1) + q.shape, dtype=q.dtype, device=q.device)
    out[0, 0], out[1, 0] = dnum, dden
    for n in range(1, order + 1):
        torch.mul(out[:, n - 1], q, out=out[:, n])
    return out


def _ratio(num, den):
    """num / den where den > 0, else 0 (a query that sees no key; 0/0 there is selected away)."""
    return torch.where(den > 0, num / den, _zeros(num))


def _rows_per_block(L: int, width: int, order: int, chunk: int) -> int:
    """Rows per block so a block's ~6 (t + 1) temporaries stay near max(2^21, 2 L width) elements."""
    budget = max(_BLOCK_ELEMENTS, 2 * L * width)
    rows = budget // max(1, 6 * (order + 1) * width)
    return max(chunk, (rows // chunk) * chunk)


# ============================================================================ non-causal


# rows per block of the non-causal path: ~this many elements per (rows, D) tensor (fits L2)
_PARALLEL_BLOCK_ELEMENTS = 1 << 17


def _row_blocks(L: int, width: int):
    rows = max(1, _PARALLEL_BLOCK_ELEMENTS // max(1, width))
    return [(s, min(L, s + rows)) for s in range(0, L, rows)]


def _parallel_forward(q, k, v, km, order):
    """y (accumulation dtype), the sums SZ (2, t+1, ..., 1, C) and the scale r (..., 1, C)."""
    cd = _cd(q)
    qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)
    if kc.shape[-2] == 0:  # no key: every output is 0 (as for a fully padded row)
        SZ = qc.new_zeros((2, order + 1) + kc.shape[:-2] + (1, kc.shape[-1]))
        return torch.zeros_like(qc), SZ, qc.new_zeros(kc.shape[:-2] + (1, kc.shape[-1]))
    width = int(math.prod(qc.shape[:-2])) * qc.shape[-1]
    k2_all = kc * kc if km is None else torch.where(km, kc * kc, torch.full((), float("inf"), dtype=cd))
    r = k2_all.amin(-2, keepdim=True)
    r = torch.where(torch.isfinite(r), r, torch.zeros_like(r))
    del k2_all
    SZ = None
    for a, b in _row_blocks(kc.shape[-2], width):
        sl = (Ellipsis, slice(a, b), slice(None))
        kz, vz, k2 = _masked(kc[sl], vc[sl], None if km is None else km[sl])
        part = _parallel_sums(kz, vz, k2, r, order)
        SZ = part if SZ is None else SZ + part
    ys = []
    coef = SZ.transpose(0, 1)
    for a, b in _row_blocks(qc.shape[-2], width):
        nd = _horner_c(coef, qc[..., a:b, :])  # (2, ..., rows, C): num, den
        ys.append(_ratio(nd[0], nd[1]))
    y = torch.cat(ys, dim=-2) if len(ys) > 1 else ys[0]
    return y, SZ, r


def _parallel_backward(g, q, k, v, km, y, SZ, r, t):
    """dq, dk, dv of the non-causal form (in q's, k's, v's dtypes) from the forward's y, SZ, r."""
    cd = _cd(q)
    qc, kc, vc, g = q.to(cd), k.to(cd), v.to(cd), g.to(cd)
    width = int(math.prod(qc.shape[:-2])) * qc.shape[-1]
    dq = torch.empty_like(qc)
    # G_n = sum_i q_i^n dnum_i (and dden), accumulated over query blocks
    G = torch.zeros((2, t + 1) + SZ.shape[2:], dtype=cd, device=q.device)
    for a, b in _row_blocks(qc.shape[-2], width):
        qb = qc[..., a:b, :]
        dnum = _ratio(g[..., a:b, :], _horner_c(SZ[1], qb))
        dden = -dnum * y[..., a:b, :]
        dq[..., a:b, :] = _row_q_grad(qb, SZ, dnum, dden)
        pd = torch.stack([dnum, dden])
        for n in range(t + 1):
            G[:, n] += pd.sum(-2, keepdim=True)
            if n < t:
                pd = pd * qb
    dk, dv = torch.empty_like(kc), torch.empty_like(vc)
    for a, b in _row_blocks(kc.shape[-2], width):
        sl = (Ellipsis, slice(a, b), slice(None))
        kz, vz, k2 = _masked(kc[sl], vc[sl], None if km is None else km[sl])
        w = torch.exp(r - k2)  # e^{r - k^2} <= 1 (0 at padded keys)
        dkb, dvb = _key_grads(kz, vz, G)
        dk[sl], dv[sl] = dkb * w, dvb * w
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _parallel_sums(kz, vz, k2, r, order):
    """(2, t+1, ..., 1, C): S_n = sum_j e^{r - k_j^2} k_j^n v_j and Z_n (keys reduced)."""
    a = torch.exp(r - k2)  # r finite, k^2 >= r (+inf at padded keys -> 0)
    av = torch.stack([a * vz, a])
    out = torch.empty((2, order + 1) + r.shape, dtype=kz.dtype, device=kz.device)
    for n in range(order + 1):
        out[:, n] = av.sum(-2, keepdim=True)
        if n < order:
            av = av * kz
    return out


def ea_series_parallel(q, k, v, order: int, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Non-causal EA-series (eq. 5): q (..., Lq, D), k, v (..., Lk, D) -> (..., Lq, D) in v's dtype.

    ``key_padding_mask``: (B, Lk) bool, True = keep. Validation is the caller's. Runs as the
    custom op ``ea_zoo::ea_series_parallel`` (hand-written backward, fake and vmap rules), so
    it works under ``torch.compile(fullgraph=True)``, ``torch.func.vmap`` and on ``meta``.
    """
    km = None
    if key_padding_mask is not None:
        km = key_padding_mask.to(k.device, torch.bool).view(k.shape[0], *([1] * (k.dim() - 3)), k.shape[-2], 1)
    if torch.jit.is_tracing():  # fvcore's FLOP count: trace the plain forward ops
        return _parallel_forward(q, k, v, km, int(order))[0].to(v.dtype)
    return _ParallelFn.apply(q, k, v, km, int(order))[0].to(v.dtype)


# ============================================================================ causal


def _pad_rows(x, pad, value=0.0):
    if not pad:
        return x
    return torch.nn.functional.pad(x, (0, 0, 0, pad), value=value)


class _Block:
    """One block of rows continuing from a state: everything the forward and the backward
    recompute. Layout "chunk-position major": the block's rows, padded to N chunks of C, are
    laid out as (C, ..., N, D) (row c of every chunk together), so the prefix sums inside the
    chunks are C - 1 contiguous adds (torch's cumsum along a strided dim is ~10x slower).
    Per-chunk scales are (1, ..., N, D); stacked sums (2, t+1, C, ..., N, D) (S over v, Z
    without); states (2, t+1, ..., D).

    Scales (all depend on the past only): r = running min at the chunk's first row (the scale
    the carried state is rescaled to, e^{r - rho_prev} <= 1; +inf before the first key),
    rho = running min at the chunk's end (the scale of the state after it), m = running min
    at each row. A row is *safe* when its m is within tau of r (or it has seen no key): its
    sums are the carried state plus the chunk's prefix sums, both at scale r, with key
    weights beta_j = e^{r - k_j^2} <= e^tau. Keys with k_j^2 < r - tau get beta 0: only
    unsafe rows see them. Unsafe rows (and the exact state totals of the chunks that hold
    them) come from :func:`_pairwise`.
    """

    def __init__(self, qc, kc, vc, km, state, ref, order, C, tau, St=None, scales=None):
        """``St``: the chunk-start states the forward computed. The backward passes them back
        and needs no sums: only scales, key weights and the unsafe chunks are rebuilt.
        ``scales``: the forward's (r, rho) of a block without unsafe chunks (the backward then
        needs no running minimum per row at all)."""
        L = qc.shape[-2]
        self.L, self.pad = L, (-L) % C
        kz, vz, k2 = _masked(kc, vc, km)
        k2 = _pad_rows(k2, self.pad, float("inf"))  # padded rows: no key, the running min carries on
        *lead, _, D = qc.shape
        N = (L + self.pad) // C
        self.lead, self.N, self.C, self.D, self.order = lead, N, C, D, order

        def cm(t):  # (..., L, D) -> (C, ..., N, D), zero padded
            return _pad_rows(t, (N * C) - t.shape[-2]).view(*lead, N, C, D).movedim(-2, 0).contiguous()

        self.q, self.k, self.v, self.k2 = cm(qc), cm(kz), cm(vz), cm(k2)
        if scales is None:
            self.m = cm(torch.minimum(torch.cummin(k2, dim=-2).values, ref.unsqueeze(-2)))
            self.r = self.m[:1]  # the chunk's scale: m at its first row (known to every row of it)
            self.rho = self.m[-1:]
            fin_m = self.m < float("inf")  # m >= 0: finite unless no key yet
            fin_r, self.fin_rho = fin_m[:1], fin_m[-1:]
        else:
            self.r, self.rho = scales
            fin_r, self.fin_rho = self.r < float("inf"), self.rho < float("inf")
        prev = torch.cat([ref[None, ..., None, :], self.rho[..., :-1, :]], dim=-2)  # scale of the arriving state
        self.enter = _exp_le0(self.r, prev)[0]  # e^{r - rho_prev} <= 1 (0: empty state), (..., N, D)
        self.leave = _exp_le0(self.rho, self.r)[0]  # e^{rho - r} <= 1
        near = fin_r & (self.k2 >= self.r - tau)
        # exp of a discarded entry may be inf/NaN: selected away, never multiplied
        self.beta = torch.where(near, torch.exp(self.r - self.k2), _zeros(self.q))
        self.idx = None
        self.ref_out = self.rho[0, ..., -1, :]
        if scales is not None:  # backward of a block the forward found all safe
            self.St = St
            return
        self.unsafe_row = fin_m & ~(fin_r & (self.m >= self.r - tau))
        unsafe_blk = self.unsafe_row[-1]  # (..., N, D); m only falls: the last row is the worst
        if unsafe_blk.device.type != "meta" and bool(unsafe_blk.any()):  # meta: shapes only
            self.idx = unsafe_blk.nonzero(as_tuple=True)
            self.cidx = (slice(None),) + self.idx  # rows of the unsafe chunks: (C, U)
            g = lambda t: t[self.cidx].T  # noqa: E731  (U, C)
            self.gq, self.gk, self.gv, self.gk2, self.gm = g(self.q), g(self.k), g(self.v), g(self.k2), g(self.m)
            self.grho, self.gr = self.rho[0][self.idx], self.r[0][self.idx]  # (U,)
        if St is not None:  # backward: the sums are not needed
            self.St = St
            if self.idx is not None:
                self.gSt = St[(slice(None), slice(None)) + self.idx]  # (2, T1, U)
            return
        # X[0, n] = beta k^n v, X[1, n] = beta k^n: (2, T1, C, ..., N, D)
        X = torch.empty((2, order + 1) + self.q.shape, dtype=self.q.dtype, device=self.q.device)
        torch.mul(self.beta, self.v, out=X[0, 0])
        X[1, 0] = self.beta
        for n in range(1, order + 1):
            torch.mul(X[:, n - 1], self.k, out=X[:, n])
        tot = X.sum(2).mul_(self.leave)  # chunk sums at scale rho (exact for safe chunks), (2, T1, ..., N, D)
        if self.idx is not None:
            tot[(slice(None), slice(None)) + self.idx] = _chunk_totals(self.gk, self.gv, self.gk2, self.grho, order)
        St = torch.empty_like(tot)
        cur = state  # (2, T1, ..., D), scale: the running min before the chunk
        for c in range(N):  # carried state at each chunk's start, rescaled to r_c
            torch.mul(cur, self.enter[..., c, :], out=St[..., c, :])
            cur = torch.addcmul(tot[..., c, :], St[..., c, :], self.leave[..., c, :])
        del tot
        self.St, self.final = St, cur
        if self.idx is not None:
            self.gSt = St[(slice(None), slice(None)) + self.idx]  # (2, T1, U)
        # row sums of safe rows: the carried state plus the chunk's prefix sums, scale r
        rows = X.unbind(2)
        rows[0].add_(St)
        for c in range(1, C):
            rows[c].add_(rows[c - 1])
        self.R = X

    def exact_rows(self):
        """num, den (U, C) of the unsafe chunks' rows, each at its own scale m: the gathered
        chunks as (U, C, 1) sequences continuing from their carried state, in sub-chunks of
        C / 4 (each at its own scale, recursively), or pair by pair once C <= _PAIRWISE_MAX:
        a row then meets at most _PAIRWISE_MAX keys pair by pair instead of C."""
        if self.C <= _PAIRWISE_MAX:
            return self.fallback()
        num, den = _chunk_forward(*self._sub_args(), self.order, self.C // _SUB_SPLIT, row_sums=True)
        return num.squeeze(-1), den.squeeze(-1)

    def exact_row_grads(self, g):
        """dq, dk, dv (U, C) of sum_i g_i y_i over the unsafe chunks' rows (g (U, C): the
        output gradient, 0 on safe rows), with their carried state held constant: the sub-chunk
        forward of :meth:`exact_rows` and its hand-written backward."""
        q, k, v, km, s0, ref = self._sub_args()
        Cs = self.C // _SUB_SPLIT
        y, inv, qf, _, _, St, r, rho = _chunk_forward(q, k, v, km, s0, ref, self.order, Cs, with_grad=True)
        grads = _chunk_backward(g.unsqueeze(-1), q, k, v, km, y, inv, qf, St, r, rho, ref, self.order, Cs)
        return tuple(t.squeeze(-1) for t in grads)

    def _sub_args(self):
        """The unsafe chunks as sequences: q, k, v (U, C, 1), keep-mask (U, C, 1), state
        (2, T1, U, 1) at scale r (U, 1): the chunk's first-row scale, so the sub-call's
        running minimum is m."""
        km = torch.isfinite(self.gk2).unsqueeze(-1)  # padded keys and rows: k^2 = +inf
        return (self.gq.unsqueeze(-1), self.gk.unsqueeze(-1), self.gv.unsqueeze(-1), km,
                self.gSt.unsqueeze(-1), self.gr.unsqueeze(-1))

    def fallback(self, q=None, k=None, v=None):
        """Exact num, den (U, C) of the unsafe chunks' rows at each row's own scale m, pair by
        pair (C x C weights)."""
        q = self.gq if q is None else q
        k = self.gk if k is None else k
        v = self.gv if v is None else v
        k2 = self.gk2 if k is self.gk else torch.where(torch.isfinite(self.gk2), k * k, self.gk2)
        return _pairwise(q, k, v, k2, self.gm, self.order, self.gSt, self.gr)

    def unpad(self, x):
        """(C, ..., N, D) -> (..., L, D)."""
        return x.movedim(0, -2).reshape(*self.lead, self.N * self.C, self.D)[..., :self.L, :]

    def chunked(self, x):
        """(..., L, D) -> (C, ..., N, D) (zero padded)."""
        return _pad_rows(x, self.pad).view(*self.lead, self.N, self.C, self.D).movedim(-2, 0)


class _SeqSum(torch.autograd.Function):
    """Sum over the last dim by sequential adds: the rounding of each row's sum then depends
    on that row alone, not on how many gathered chunks share the call (which can depend on
    later keys); prefix invariance stays bit-exact.

    Its backward is the sum's (the gradient broadcast over the summed dim). Autograd through
    the adds themselves would record one ``select`` per term, whose backward allocates and
    zero-fills a tensor of x's full size each: O(C) full-size buffers for a (U, C, C) x. In the
    pairwise backward of the unsafe chunks (:func:`_backward_block`) that was about half of the
    causal step's time at q, k scale 4 (profiled, 2026-12-04)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        acc = x[..., 0].clone()
        for j in range(1, x.shape[-1]):
            acc += x[..., j]
        return acc

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shape = inputs[0].shape

    @staticmethod
    def backward(ctx, g):
        return g.unsqueeze(-1).expand(ctx.shape)


def _seq_sum(x: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (...): :class:`_SeqSum` (sequential adds, a sum's backward)."""
    return _SeqSum.apply(x)


def _chunk_totals(k, v, k2, rho, order):
    """(2, T1, U): sum_j e^{rho - k_j^2} k_j^n [v_j, 1] of gathered chunks (U, C), rho (U,)."""
    w = _exp_le0(rho[:, None].expand_as(k2), k2)
    out = torch.empty((2, order + 1, k.shape[0]), dtype=k.dtype, device=k.device)
    for n in range(order + 1):
        out[0, n] = _seq_sum(w * v)
        out[1, n] = _seq_sum(w)
        w = w * k
    return out


def _pairwise(q, k, v, k2, m, order, St, r):
    """Exact sums of gathered chunks, each row at its own scale m_i: q, k, v, k^2, m (U, C);
    carried state St (2, T1, U) at scale r (U,). Returns num, den (U, C)."""
    C = q.shape[-1]
    zero = _zeros(q)
    tri = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    mi = m.unsqueeze(-1)  # (U, C, 1)
    ok = tri & torch.isfinite(k2).unsqueeze(-2) & torch.isfinite(mi)
    w = torch.where(ok, torch.exp(torch.where(ok, mi - k2.unsqueeze(-2), zero)), zero)
    p = _horner_c([torch.ones_like(w)] * (order + 1), 1.0 * q.unsqueeze(-1) * k.unsqueeze(-2))  # P_t(2 q k)
    a = w * p
    num, den = _seq_sum(a * v.unsqueeze(-2)), _seq_sum(a)
    # the carried state, rescaled from r to each row's m (e^{m - r} <= 1; 0 before any key)
    dec = _exp_le0(m, r[:, None].expand_as(m))
    return num + dec * _horner_c(St[0][..., None], q), den + dec * _horner_c(St[1][..., None], q)


def _chunk_forward(q, k, v, km, s0, ref0, order, chunk, with_grad=False, row_sums=False):
    """The causal forward on blocks of rows: ``(y, final state, final scale)``, y in the
    accumulation dtype. With ``with_grad`` also what the backward needs, ``(y, inv, qf,
    state, ref, St, r, rho)``: two (..., L, D) row factors that let the backward skip
    rebuilding the (2, t+1) sums (dnum = g * inv, dq = g * qf), the chunk-start states St
    (2, t+1, ..., N, D) and the chunk scales r, rho (1, ..., N, D) of all N chunks (the
    blocks' pieces concatenated along the chunk dim, so they do not depend on the blocking).
    With ``row_sums`` (the sub-chunks of :meth:`_Block.exact_rows`) ``(num, den)``, each row's
    at its own scale m (..., L, D)."""
    cd = _cd(q)
    qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)
    *lead, L, D = qc.shape
    tau = _TAU[cd]
    rows = _rows_per_block(L, int(math.prod(lead)) * D, order, chunk)
    state, ref = s0.to(cd), ref0.to(cd)
    ys, invs, qfs, Sts, rs, rhos, nums, dens = [], [], [], [], [], [], [], []
    for b0 in range(0, L, rows):
        sl = (Ellipsis, slice(b0, min(L, b0 + rows)), slice(None))
        blk = _Block(qc[sl], kc[sl], vc[sl], None if km is None else km[sl], state, ref, order, chunk, tau)
        nd = _horner_c(blk.R.transpose(0, 1), blk.q)
        num, den = nd[0], nd[1]
        if blk.idx is not None:
            nb, db = blk.exact_rows()
            sel = blk.unsafe_row[blk.cidx]
            num[blk.cidx] = torch.where(sel, nb.T, num[blk.cidx])
            den[blk.cidx] = torch.where(sel, db.T, den[blk.cidx])
        if row_sums:  # safe rows from their chunk's scale r to their own m (e^{m - r} >= e^-tau)
            f = _exp_le0(blk.m, blk.r.expand_as(blk.m))
            if blk.idx is not None:
                f = torch.where(blk.unsafe_row, torch.ones_like(f), f)
            nums.append(blk.unpad(num * f))
            dens.append(blk.unpad(den * f))
            state, ref = blk.final, blk.ref_out
            del blk
            continue
        inv = torch.where(den > 0, 1.0 / den, _zeros(den))  # 1 / den at the row's scale, 0: no key
        y = num * inv
        if with_grad:
            # the q-side of the backward, from sums the backward would otherwise rebuild:
            # dq_i = g_i * 2 (num'_i - y_i den'_i) / den_i (num' = d num / dq halved, Horner)
            if order > 0:
                Dd = _horner_c(blk.R[:, 1:].transpose(0, 1), blk.q)
                qf = torch.addcmul(Dd[0], y, Dd[1], value=-1.0).mul_(inv).mul_(2.0)
                if blk.idx is not None:  # unsafe rows: dq through the exact pairwise form
                    qf = torch.where(blk.unsafe_row, _zeros(qf), qf)
            else:
                qf = torch.zeros_like(y)
            invs.append(blk.unpad(inv))
            qfs.append(blk.unpad(qf))
            Sts.append(blk.St)
            rs.append(blk.r)
            rhos.append(blk.rho)
        ys.append(blk.unpad(y))
        state, ref = blk.final, blk.ref_out
        del blk
    cat = lambda xs: torch.cat(xs, dim=-2) if len(xs) > 1 else xs[0]  # noqa: E731
    if row_sums:
        return cat(nums), cat(dens)
    if not with_grad:
        return cat(ys), state, ref
    # St, r, rho: always fresh tensors (a custom op's outputs may not alias each other)
    return (cat(ys), cat(invs), cat(qfs), state, ref, torch.cat(Sts, dim=-2), torch.cat(rs, dim=-2),
            torch.cat(rhos, dim=-2))


def _chunk_backward(g, q, k, v, km, y, inv, qf, St, r, rho, ref0, order, chunk):
    """dq, dk, dv of the causal form (in q's, k's, v's dtypes) from what
    :func:`_chunk_forward` saved; the blocks are walked from the last to the first.

    A block without unsafe chunks (read off its saved scales: the running minimum at a
    chunk's end, rho, fell by more than tau below its start, r) needs no running minimum
    per row; one with unsafe chunks rebuilds its rows' minima from the keys and the block's
    start scale (the rho before it, ``ref0`` for the first block)."""
    cd = _cd(q)
    qc, kc, vc, g = q.to(cd), k.to(cd), v.to(cd), g.to(cd)
    *lead, L, D = qc.shape
    tau = _TAU[cd]
    rows = _rows_per_block(L, int(math.prod(lead)) * D, order, chunk)
    nb = -(-L // rows)
    ref0 = ref0.to(cd)
    inf = float("inf")
    dq, dk, dv = torch.empty_like(qc), torch.empty_like(kc), torch.empty_like(vc)
    G = None  # suffix state of the later blocks, at the scale of this block's last row
    for bi in range(nb - 1, -1, -1):
        a, b = bi * rows, min(L, bi * rows + rows)
        sl = (Ellipsis, slice(a, b), slice(None))
        c0, c1 = a // chunk, -(-b // chunk)  # rows is a multiple of chunk
        rb, rhob = r[..., c0:c1, :], rho[..., c0:c1, :]
        unsafe = (rhob < inf) & ~((rb < inf) & (rhob >= rb - tau))
        scales = None if bool(unsafe.any()) else (rb, rhob)
        ref = ref0 if bi == 0 else rho[0, ..., c0 - 1, :]
        blk = _Block(qc[sl], kc[sl], vc[sl], None if km is None else km[sl], None, ref,
                     order, chunk, tau, St=St[..., c0:c1, :], scales=scales)
        G = _backward_block(blk, y[sl], g[sl], inv[sl], qf[sl], G, dq[sl], dk[sl], dv[sl],
                            None if km is None else km[sl])
        del blk
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@contextlib.contextmanager
def _local_autograd():
    """Autograd on, for a local ``torch.autograd.grad`` (the unsafe chunks' exact backward).

    Inside a custom op's kernel the dispatcher excludes the autograd keys (``enable_grad``
    alone records nothing there); they are put back for the block, the rest of the
    dispatch state (autocast stays off) is kept."""
    K = torch._C.DispatchKey
    exc = torch._C._dispatch_tls_local_exclude_set()
    for key in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor"):
        if hasattr(K, key):
            exc = exc.remove(getattr(K, key))
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exc), torch.enable_grad():
        yield


def _backward_block(blk, y, g, inv, qf, G_after, dq_out, dk_out, dv_out, km):
    """Gradients of one block (written into dq/dk/dv_out); returns the suffix state
    (2, T1, ..., D) for the block before, at the scale of its last row.

    Row scale R_i: r_c (safe rows) or m_i (unsafe rows), consistently with the forward:
    dnum_i = g_i / den_i(R_i) (``inv`` = 1 / den from the forward), dden_i = -dnum_i y_i,
    dq_i = g_i * qf_i (``qf`` from the forward; 0 on unsafe rows), and key j receives
    GS_{n,j} = sum_{i >= j} q_i^n dnum_i e^{R_i - k_j^2} (GZ with dden; the c_n go to
    :func:`_key_grads`): from safe rows of its chunk beta_j * (reverse prefix sum), from later
    chunks e^{rho_c - k_j^2} * G_c with the suffix state G_c at scale rho_c, from unsafe rows
    of its chunk through autograd on the exact pairwise form.
    """
    order, C = blk.order, blk.C
    gv = blk.chunked(g)
    dnum = gv * blk.chunked(inv)
    dden = -dnum * blk.chunked(y)
    dq = gv * blk.chunked(qf)
    unsafe = blk.idx is not None
    RS = _q_powers_times(blk.q, dnum, dden, order)  # (2, T1, C, ..., N, D)
    rows = RS.unbind(2)
    if unsafe:  # rows' share for earlier chunks at their chunk's scale r: 1 (safe) or e^{m - r}
        safe = ~blk.unsafe_row
        wrow = torch.where(safe, torch.ones_like(blk.m), _exp_le0(blk.m, blk.r.expand_as(blk.m)))
        loc = (RS * wrow).sum(2)
        RS.masked_fill_(~safe, 0.0)
    else:
        loc = RS.sum(2)  # (2, T1, ..., N, D): each chunk's rows, at its scale r
    Gc = torch.empty_like(loc)
    cur = torch.zeros_like(loc[..., 0, :]) if G_after is None else G_after
    for c in range(blk.N - 1, -1, -1):  # G_c at scale rho_c; the result at the block's start scale
        Gc[..., c, :] = cur
        cur = blk.enter[..., c, :] * torch.addcmul(loc[..., c, :], cur, blk.leave[..., c, :])
    # key j of chunk c: GS_j = beta_j (sum_{safe i >= j in c} RS_i + e^{rho_c - r_c} G_c), as
    # e^{rho - k_j^2} = beta_j e^{rho - r}; the later chunks' share enters the reverse scan at
    # the chunk's last row
    rows[C - 1].addcmul_(Gc, blk.leave)
    for c in range(C - 2, -1, -1):  # reverse prefix sums over the safe rows of each chunk
        rows[c].add_(rows[c + 1])
    RS.mul_(blk.beta)
    if unsafe:  # keys below r - tau (beta 0) still receive the later chunks' share
        far = (blk.beta == 0) & blk.fin_rho
        RS.addcmul_(Gc.unsqueeze(2), torch.where(far, torch.exp(blk.rho - blk.k2), _zeros(blk.k2)))
    dk, dv = _key_grads(blk.k, blk.v, RS)
    del RS
    if unsafe and C > _PAIRWISE_MAX:  # the unsafe rows' share in their own chunk: sub-chunks
        sel = blk.unsafe_row[blk.cidx].T
        grads = blk.exact_row_grads(torch.where(sel, gv[blk.cidx].T, _zeros(gv)))
        for out, gr in zip((dq, dk, dv), grads):
            out[blk.cidx] = out[blk.cidx] + gr.T
    elif unsafe:  # ... or pair by pair
        sel = blk.unsafe_row[blk.cidx].T
        zero = _zeros(dnum)
        with _local_autograd():
            lq, lk, lv = (t.detach().requires_grad_(True) for t in (blk.gq, blk.gk, blk.gv))
            nb_, db_ = blk.fallback(lq, lk, lv)
            grads = torch.autograd.grad(
                (nb_, db_), (lq, lk, lv),
                (torch.where(sel, dnum[blk.cidx].T, zero), torch.where(sel, dden[blk.cidx].T, zero)),
                allow_unused=True)
        for out, gr in zip((dq, dk, dv), grads):
            if gr is not None:
                out[blk.cidx] = out[blk.cidx] + gr.T
    dq_out.copy_(blk.unpad(dq))
    dk_full, dv_full = blk.unpad(dk), blk.unpad(dv)
    if km is not None:
        dk_full, dv_full = torch.where(km, dk_full, _zeros(dk_full)), torch.where(km, dv_full, _zeros(dv_full))
    dk_out.copy_(dk_full)
    dv_out.copy_(dv_full)
    return cur


def ea_series_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    order: int,
    key_padding_mask: Optional[torch.Tensor] = None,
    initial_state: Optional[Dict[str, torch.Tensor]] = None,
    output_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
):
    """Causal EA-series (eq. 6), prefix-stabilised: q, k, v (..., L, D) -> y (..., L, D) in v's
    dtype, or ``(y, final_state)`` with ``output_final_state``.

    States: {"s", "z": (t+1, ..., D), "ref": (..., D)} as
    :func:`ea_zoo.functional.ea_series.ea_series_init_state` builds (the leading dims of q
    without L). ``key_padding_mask``: (B, L) bool, True = keep. Validation is the caller's.
    """
    cd = _cd(q)
    lead = q.shape[:-2]
    D = q.shape[-1]
    T1 = order + 1
    if initial_state is None:
        s0 = torch.zeros((2, T1, *lead, D), dtype=cd, device=q.device)
        ref0 = torch.full((*lead, D), float("inf"), dtype=cd, device=q.device)
    else:
        s0 = torch.stack([initial_state["s"], initial_state["z"]]).to(cd).detach()
        ref0 = initial_state["ref"].to(cd).detach()
    km = None
    if key_padding_mask is not None:
        km = key_padding_mask.to(k.device, torch.bool).view(k.shape[0], *([1] * (k.dim() - 3)), k.shape[-2], 1)
    if q.shape[-2] == 0:
        y = v.new_zeros(v.shape)
        final = (s0, ref0)
    else:
        # a sequence shorter than one chunk is one chunk of its own length: no padded rows (at
        # L = 6 and C = 64 they were 90% of the work); every row's arithmetic is that of the
        # first chunk of any longer sequence, so outputs stay prefix-invariant bit for bit
        chunk_size = min(int(chunk_size), int(q.shape[-2]))
        if torch.jit.is_tracing():  # fvcore's FLOP count: trace the plain forward ops
            y, sfin, rfin = _chunk_forward(q, k, v, km, s0, ref0, int(order), int(chunk_size))
        elif torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            y, _, _, sfin, rfin, _, _, _ = _CausalFn.apply(q, k, v, km, s0, ref0, int(order), int(chunk_size))
        else:  # no gradient wanted: the forward alone (no row factors, no saved states)
            y, sfin, rfin = torch.ops.ea_zoo.ea_series_causal(q, k, v, km, s0, ref0, int(order), int(chunk_size))
        y = y.to(v.dtype)
        final = (sfin, rfin)
    if not output_final_state:
        return y
    sz, ref = final
    return y, {"s": sz[0], "z": sz[1], "ref": ref}


# ============================================================================ custom ops
# The PyTorch paths run as torch.library custom ops: opaque to torch.compile (the causal
# scan picks its exact fallback for "unsafe" chunks with a data-dependent branch, which
# runs in eager inside the op, never as a host sync in a traced graph), with fake (meta)
# kernels for shapes and vmap rules that fold the vmapped dim into the leading (batch)
# dims. The hand-written backward is an op too, tied to the forward by an autograd.Function
# in the ``setup_context`` form (so torch.func transforms compose with it). Eager numerics
# are exactly those of the functions above.

_LIB = "ea_zoo"


def _fold(x, bdim, size, pos=0):
    """Move the vmapped dim of ``x`` to ``pos`` (or insert it there, expanded)."""
    if bdim is None:
        x = x.unsqueeze(pos)
        return x.expand(*x.shape[:pos], size, *x.shape[pos + 1:])
    return x.movedim(bdim, pos)


def _fold_mask(km, bdim):
    """km (B, 1.., L, 1) broadcasts against the folded k (V, B, ..., L, D) as it is; a
    vmapped km gets its vmapped dim first."""
    if km is None or bdim is None:
        return km
    return km.movedim(bdim, 0)


# ---------------------------------------------------------------------------- non-causal
@torch.library.custom_op(f"{_LIB}::ea_series_parallel", mutates_args=(),
                         schema="(Tensor q, Tensor k, Tensor v, Tensor? km, int order) -> (Tensor, Tensor, Tensor)")
def _parallel_op(q, k, v, km, order):
    """(y in the accumulation dtype, the sums SZ (2, t+1, ..., 1, D), the scale r (..., 1, D))."""
    y, SZ, r = _parallel_forward(q, k, v, km, order)
    return y, SZ, r


@_parallel_op.register_fake
def _(q, k, v, km, order):
    cd, lead, D = _cd(q), q.shape[:-2], q.shape[-1]
    return (q.new_empty(q.shape, dtype=cd), q.new_empty((2, order + 1, *lead, 1, D), dtype=cd),
            q.new_empty((*lead, 1, D), dtype=cd))


@torch.library.custom_op(f"{_LIB}::ea_series_parallel_backward", mutates_args=(),
                         schema="(Tensor g, Tensor q, Tensor k, Tensor v, Tensor? km, Tensor y, Tensor SZ, "
                                "Tensor r, int order) -> (Tensor, Tensor, Tensor)")
def _parallel_bwd_op(g, q, k, v, km, y, SZ, r, order):
    return _parallel_backward(g, q, k, v, km, y, SZ, r, order)


@_parallel_bwd_op.register_fake
def _(g, q, k, v, km, y, SZ, r, order):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _ParallelFn(torch.autograd.Function):
    """Autograd of ``ea_zoo::ea_series_parallel``: the hand-written first-order backward.
    ``setup_context`` form with a generated vmap rule, so torch.func transforms
    (``vmap(grad(...))``) compose with it; its forward and backward are the custom ops."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, km, order):
        return _parallel_op(q, k, v, km, order)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, km, order = inputs
        y, SZ, r = output
        ctx.save_for_backward(q, k, v, km, y, SZ, r)
        ctx.order = order
        ctx.mark_non_differentiable(SZ, r)

    @staticmethod
    def backward(ctx, gy, _gsz, _gr):
        q, k, v, km, y, SZ, r = ctx.saved_tensors
        with torch.no_grad():  # first-order only: the gradient carries no graph
            dq, dk, dv = _parallel_bwd_op(gy, q, k, v, km, y, SZ, r, ctx.order)
        return dq, dk, dv, None, None


@_parallel_op.register_vmap
def _(info, in_dims, q, k, v, km, order):
    bq, bk, bv, bm, _ = in_dims
    V = info.batch_size
    y, SZ, r = _parallel_op(_fold(q, bq, V), _fold(k, bk, V), _fold(v, bv, V), _fold_mask(km, bm), order)
    return (y, SZ, r), (0, 2, 0)


@_parallel_bwd_op.register_vmap
def _(info, in_dims, g, q, k, v, km, y, SZ, r, order):
    V = info.batch_size
    bg, bq, bk, bv, bm, by, bs, br, _ = in_dims
    out = _parallel_bwd_op(_fold(g, bg, V), _fold(q, bq, V), _fold(k, bk, V), _fold(v, bv, V),
                           _fold_mask(km, bm), _fold(y, by, V), _fold(SZ, bs, V, 2), _fold(r, br, V), order)
    return out, (0, 0, 0)


# ---------------------------------------------------------------------------- causal
def _causal_fake_shapes(q, order, chunk):
    cd, lead, (L, D) = _cd(q), q.shape[:-2], q.shape[-2:]
    N = (L + chunk - 1) // chunk
    return cd, lead, L, D, N


@torch.library.custom_op(f"{_LIB}::ea_series_causal", mutates_args=(),
                         schema="(Tensor q, Tensor k, Tensor v, Tensor? km, Tensor s0, Tensor ref0, int order, "
                                "int chunk) -> (Tensor, Tensor, Tensor)")
def _causal_op(q, k, v, km, s0, ref0, order, chunk):
    """Inference: (y in the accumulation dtype, final state (2, t+1, ..., D), final ref (..., D))."""
    return _chunk_forward(q, k, v, km, s0, ref0, order, chunk)


@_causal_op.register_fake
def _(q, k, v, km, s0, ref0, order, chunk):
    cd, lead, L, D, N = _causal_fake_shapes(q, order, chunk)
    return (q.new_empty(q.shape, dtype=cd), q.new_empty((2, order + 1, *lead, D), dtype=cd),
            q.new_empty((*lead, D), dtype=cd))


@torch.library.custom_op(f"{_LIB}::ea_series_causal_train", mutates_args=(),
                         schema="(Tensor q, Tensor k, Tensor v, Tensor? km, Tensor s0, Tensor ref0, int order, "
                                "int chunk) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
def _causal_train_op(q, k, v, km, s0, ref0, order, chunk):
    """Training: (y, inv, qf, state, ref, St, r, rho), see :func:`_chunk_forward`."""
    return _chunk_forward(q, k, v, km, s0, ref0, order, chunk, True)


@_causal_train_op.register_fake
def _(q, k, v, km, s0, ref0, order, chunk):
    cd, lead, L, D, N = _causal_fake_shapes(q, order, chunk)
    T1 = order + 1

    def new(*shape):
        return q.new_empty(shape, dtype=cd)

    return (new(*q.shape), new(*q.shape), new(*q.shape), new(2, T1, *lead, D), new(*lead, D),
            new(2, T1, *lead, N, D), new(1, *lead, N, D), new(1, *lead, N, D))


@torch.library.custom_op(f"{_LIB}::ea_series_causal_backward", mutates_args=(),
                         schema="(Tensor g, Tensor q, Tensor k, Tensor v, Tensor? km, Tensor y, Tensor inv, "
                                "Tensor qf, Tensor St, Tensor r, Tensor rho, Tensor ref0, int order, int chunk) "
                                "-> (Tensor, Tensor, Tensor)")
def _causal_bwd_op(g, q, k, v, km, y, inv, qf, St, r, rho, ref0, order, chunk):
    return _chunk_backward(g, q, k, v, km, y, inv, qf, St, r, rho, ref0, order, chunk)


@_causal_bwd_op.register_fake
def _(g, q, k, v, km, y, inv, qf, St, r, rho, ref0, order, chunk):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _CausalFn(torch.autograd.Function):
    """Autograd of ``ea_zoo::ea_series_causal_train`` (see :class:`_ParallelFn`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, km, s0, ref0, order, chunk):
        return _causal_train_op(q, k, v, km, s0, ref0, order, chunk)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, km, s0, ref0, order, chunk = inputs
        y, inv, qf, state, ref, St, r, rho = output
        # saved: q, k, v, y, the row factors 1 / den and dq / g (each (..., L, D)), the
        # chunk-start states (2, t+1, ..., L / C, D) and scales: O(L D), nothing (t+1) x L x D
        ctx.save_for_backward(q, k, v, km, y, inv, qf, St, r, rho, ref0)
        ctx.order, ctx.chunk = order, chunk
        ctx.mark_non_differentiable(inv, qf, state, ref, St, r, rho)

    @staticmethod
    def backward(ctx, gy, *_):
        q, k, v, km, y, inv, qf, St, r, rho, ref0 = ctx.saved_tensors
        with torch.no_grad():  # first-order only: the gradient carries no graph
            dq, dk, dv = _causal_bwd_op(gy, q, k, v, km, y, inv, qf, St, r, rho, ref0, ctx.order, ctx.chunk)
        return dq, dk, dv, None, None, None, None, None


def _fold_causal_inputs(info, in_dims, q, k, v, km, s0, ref0):
    bq, bk, bv, bm, bs, br = in_dims[:6]
    V = info.batch_size
    return (_fold(q, bq, V), _fold(k, bk, V), _fold(v, bv, V), _fold_mask(km, bm),
            _fold(s0, bs, V, 2), _fold(ref0, br, V))


@_causal_op.register_vmap
def _(info, in_dims, q, k, v, km, s0, ref0, order, chunk):
    out = _causal_op(*_fold_causal_inputs(info, in_dims, q, k, v, km, s0, ref0), order, chunk)
    return out, (0, 2, 0)


@_causal_train_op.register_vmap
def _(info, in_dims, q, k, v, km, s0, ref0, order, chunk):
    out = _causal_train_op(*_fold_causal_inputs(info, in_dims, q, k, v, km, s0, ref0), order, chunk)
    return out, (0, 0, 0, 2, 0, 2, 1, 1)


@_causal_bwd_op.register_vmap
def _(info, in_dims, g, q, k, v, km, y, inv, qf, St, r, rho, ref0, order, chunk):
    V = info.batch_size
    bg, bq, bk, bv, bm, by, bi, bf, bS, br, bh, b0 = in_dims[:12]
    out = _causal_bwd_op(_fold(g, bg, V), _fold(q, bq, V), _fold(k, bk, V), _fold(v, bv, V), _fold_mask(km, bm),
                         _fold(y, by, V), _fold(inv, bi, V), _fold(qf, bf, V), _fold(St, bS, V, 2),
                         _fold(r, br, V, 1), _fold(rho, bh, V, 1), _fold(ref0, b0, V), order, chunk)
    return out, (0, 0, 0)
