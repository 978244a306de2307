"""EA-series in PyTorch, the fast path where Triton is absent: O(t L D) time, O(L D) memory.

Feng 2025 eq. 5 (non-causal) and eq. 6 (causal), per channel, with P_t(x) = sum_{n<=t} x^n/n!
and c_n = 2^n / n!:

    y_i = sum_n c_n q_i^n S_{n,i} / sum_n c_n q_i^n Z_{n,i},
    S_{n,i} = sum_{j in J(i)} e^{R_i - k_j^2} k_j^n v_j,   Z_{n,i} = same without v_j,

for any per-row scale R_i (it cancels in the ratio). Both forms are ``torch.autograd.Function``s
with a hand-written backward that recomputes what it needs from q, k, v, so training saves
only q, k, v, y and (causal) the (2 t + 2) x D chunk states every ``chunk_size`` tokens:
nothing of size (t + 1) x L x D lives from the forward to the backward. The temporaries of
one call are bounded by working on blocks of rows (``_rows_per_block``).

Non-causal: every row sees every key, so one scale per channel, R = min_j k_j^2, is exact:
the smallest-k^2 key has e^0 and nothing can underflow that matters.

Causal, prefix-stabilised: row i may use only keys j <= i, also through its scale. R_i is the
running minimum m_i = min(ref0, min_{j<=i} k_j^2) (``ref0`` from ``initial_state``). Then
every exponent m_i - k_j^2 <= 0, and the key that attains m_i (the row's "dominant" key, the
one with the largest e^{-k^2}) has weight exactly e^0 P_t(2 q_i k_j) >= min P_t > 0 (t even).
So a row's denominator never underflows, whatever the keys after it hold; a term that
underflows is < e^{-87} (float32) of the dominant one (times the ratio of polynomial values).
The sequence is cut into chunks of C tokens:

* across chunks, the carried state (S_n, Z_n) at the scale r_c = m at the end of chunk c - 1
  is rescaled by e^{rho_c - r_c} <= 1 (rho_c = m at the end of chunk c) when chunk c's sums,
  taken at scale rho_c (every e^{rho_c - k_j^2} <= 1), are added: a loop over chunks on
  (2 t + 2) x D numbers, exact.
* inside a chunk, row i's sums are e^{m_i - r_c} (carried state) + e^{m_i - rho_c} (prefix
  sum of the chunk at scale rho_c). The second factor is >= 1 and stays below e^{tau}
  (tau = 20 in float32) unless the running minimum drops by more than tau inside the chunk
  after row i; then the chunk's terms at scale rho_c could underflow. Such (chunk, channel)
  blocks are rare (the running minimum only falls, by at most its first value in all) and
  are recomputed exactly, pair by pair (C x C weights e^{m_i - k_j^2}, exponents <= 0),
  forward and backward.

Gradients: m is a constant (detached) scale; d y / d ref is 0 in exact arithmetic. No
gradient flows into ``initial_state`` (it is treated as data, as in truncated BPTT).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch

__all__ = ["ea_series_chunk", "ea_series_parallel", "DEFAULT_CHUNK_SIZE"]

DEFAULT_CHUNK_SIZE = 64
# largest drop of the running minimum inside a chunk handled by the factored form
_TAU = {torch.float32: 20.0, torch.float64: 300.0}
# temporaries of one block: about this many elements (or 2 x the sequence's L x D, if larger)
_BLOCK_ELEMENTS = 1 << 23


def _coef(order: int) -> List[float]:
    return [2.0**n / math.factorial(n) for n in range(order + 1)]


def _cd(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _exp_le0(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """e^{a - b} where b is finite (callers guarantee a <= b there), else 0."""
    ok = torch.isfinite(b) & torch.isfinite(a)
    return torch.where(ok, torch.exp(torch.where(ok, a - b, torch.zeros((), dtype=a.dtype, device=a.device))),
                       torch.zeros((), dtype=a.dtype, device=a.device))


def _masked(k: torch.Tensor, v: torch.Tensor, km: Optional[torch.Tensor]):
    """k^2 with +inf at padded keys; k, v with 0 there (NaN/Inf at padded keys cannot leak)."""
    k2 = k * k
    if km is None:
        return k, v, k2
    zero = torch.zeros((), dtype=k.dtype, device=k.device)
    return (torch.where(km, k, zero), torch.where(km, v, zero),
            torch.where(km, k2, torch.full((), float("inf"), dtype=k.dtype, device=k.device)))


def _powers(first: torch.Tensor, x: torch.Tensor, n: int) -> torch.Tensor:
    """(n + 1, *x.shape): first * x^0, first * x^1, ..., first * x^n."""
    out = torch.empty((n + 1,) + torch.broadcast_shapes(first.shape, x.shape), dtype=x.dtype, device=x.device)
    out[0] = first
    for i in range(1, n + 1):
        torch.mul(out[i - 1], x, out=out[i])
    return out


def _rows_per_block(L: int, width: int, order: int, chunk: int) -> int:
    """Rows per block so a block's ~6 (t + 1) temporaries stay near max(2^21, 2 L width) elements."""
    budget = max(_BLOCK_ELEMENTS, 2 * L * width)
    rows = budget // max(1, 6 * (order + 1) * width)
    return max(chunk, (rows // chunk) * chunk)


# ============================================================================ non-causal


class _ParallelFn(torch.autograd.Function):
    """Non-causal EA-series (eq. 5) with a global per-channel scale; see module docstring."""

    @staticmethod
    def forward(ctx, q, k, v, km, order):
        cd = _cd(q)
        qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)
        kz, vz, k2 = _masked(kc, vc, km)
        r = k2.amin(-2, keepdim=True)
        r = torch.where(torch.isfinite(r), r, torch.zeros_like(r))
        SZ = _parallel_sums(kz, vz, k2, r, order)  # (2, t+1, ..., 1, C)
        num, den = _horner_q(qc, SZ, order)
        ok = den > 0
        y = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))
        ctx.save_for_backward(q, k, v, km, y, SZ, r)
        ctx.order = order
        return y.to(v.dtype)

    @staticmethod
    def backward(ctx, g):
        q, k, v, km, y, SZ, r = ctx.saved_tensors
        t = ctx.order
        cd = _cd(q)
        qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)
        kz, vz, k2 = _masked(kc, vc, km)
        g = g.to(cd)
        coef = _coef(t)
        _, den = _horner_q(qc, SZ, t, need_num=False)
        ok = den > 0
        dnum = torch.where(ok, g / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(g))
        dden = -dnum * y
        # dq = dnum * num'(q) + dden * den'(q)
        dq = _horner_q_deriv(qc, SZ, t, dnum, dden) if t > 0 else torch.zeros_like(qc)
        # GS_n = sum_i c_n q_i^n dnum_i, GZ_n = sum_i c_n q_i^n dden_i
        G = torch.empty((2, t + 1) + SZ.shape[2:], dtype=cd, device=q.device)
        pd, pz = dnum, dden
        for n in range(t + 1):
            G[0, n] = pd.sum(-2, keepdim=True) * coef[n]
            G[1, n] = pz.sum(-2, keepdim=True) * coef[n]
            if n < t:
                pd, pz = pd * qc, pz * qc
        w = _exp_le0(r.expand_as(k2), k2)  # e^{r - k^2}
        dk, dv = _key_grads(kz, vz, w, G[0], G[1], t)
        if km is not None:
            zero = torch.zeros((), dtype=dk.dtype, device=dk.device)
            dk, dv = torch.where(km, dk, zero), torch.where(km, dv, zero)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def _parallel_sums(kz, vz, k2, r, order):
    """(2, t+1, ..., 1, C): S_n = sum_j e^{r - k_j^2} k_j^n v_j and Z_n (keys reduced)."""
    w = _exp_le0(r.expand_as(k2), k2)
    out = torch.empty((2, order + 1) + r.shape, dtype=kz.dtype, device=kz.device)
    a = w
    for n in range(order + 1):
        out[0, n] = (a * vz).sum(-2, keepdim=True)
        out[1, n] = a.sum(-2, keepdim=True)
        if n < order:
            a = a * kz
    return out


def _horner_q(q, SZ, order, need_num=True):
    """num = sum_n c_n q^n S_n, den = sum_n c_n q^n Z_n (S, Z broadcast against q)."""
    c = _coef(order)
    num = (SZ[0, order] * c[order]).expand_as(q) if need_num else None
    den = (SZ[1, order] * c[order]).expand_as(q)
    for n in range(order - 1, -1, -1):
        if need_num:
            num = torch.addcmul(SZ[0, n] * c[n], num, q)
        den = torch.addcmul(SZ[1, n] * c[n], den, q)
    return num, den


def _horner_q_deriv(q, SZ, order, dnum, dden):
    """dnum * d num / dq + dden * d den / dq for num, den of :func:`_horner_q`."""
    c = _coef(order)
    # coefficients of the derivative: n c_n S_n q^{n-1}; combine S and Z first (per row)
    acc = None
    for n in range(order, 0, -1):
        term = dnum * (SZ[0, n] * (n * c[n])) + dden * (SZ[1, n] * (n * c[n]))
        acc = term if acc is None else torch.addcmul(term, acc, q)
    return acc


def _key_grads(kz, vz, w, GS, GZ, order):
    """dv = w sum_n k^n GS_n, dk = w sum_n (n k^{n-1} - 2 k^{n+1}) (v GS_n + GZ_n).

    GS, GZ: (t+1, ...) broadcastable against k (per-key or per-channel coefficients).
    """
    PS = None  # sum_n GS_n k^n, Horner
    PZ = None
    DS = None  # sum_n n GS_n k^{n-1}
    DZ = None
    for n in range(order, -1, -1):
        PS = GS[n].expand_as(kz) if PS is None else torch.addcmul(GS[n], PS, kz)
        PZ = GZ[n].expand_as(kz) if PZ is None else torch.addcmul(GZ[n], PZ, kz)
        if n >= 1:
            DS = (GS[n] * n).expand_as(kz) if DS is None else torch.addcmul(GS[n] * n, DS, kz)
            DZ = (GZ[n] * n).expand_as(kz) if DZ is None else torch.addcmul(GZ[n] * n, DZ, kz)
    if DS is None:
        DS = torch.zeros_like(kz)
        DZ = torch.zeros_like(kz)
    dv = w * PS
    dk = w * (vz * (DS - 2 * kz * PS) + (DZ - 2 * kz * PZ))
    return dk, dv


def ea_series_parallel(q, k, v, order: int, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Non-causal EA-series (eq. 5): q (..., Lq, D), k, v (..., Lk, D) -> (..., Lq, D) in v's dtype.

    ``key_padding_mask``: (B, Lk) bool, True = keep. Validation is the caller's.
    """
    km = None
    if key_padding_mask is not None:
        km = key_padding_mask.to(k.device, torch.bool).view(k.shape[0], *([1] * (k.dim() - 3)), k.shape[-2], 1)
    return _ParallelFn.apply(q, k, v, km, int(order))


# ============================================================================ causal


def _pad_rows(x, pad, value=0.0):
    if not pad:
        return x
    return torch.nn.functional.pad(x, (0, 0, 0, pad), value=value)


def _zeros(x):
    return torch.zeros((), dtype=x.dtype, device=x.device)


class _Block:
    """One block of rows (padded to N chunks of C) continuing from a state; everything the
    forward and the backward recompute. Shapes: chunked tensors (..., N, C, D); per-chunk
    scales (..., N, 1, D); stacked sums (2, t+1, ..., N, {1|C}, D) (S over v, Z without).

    Scales (all depend on the past only): r = running min at the chunk's start (the carried
    state's scale; +inf before the first key), rho = running min at the chunk's end (the
    scale of the state after it), m = running min at each row. A row is *safe* when its m is
    within tau of r (or it has seen no key): its sums are the carried state plus the chunk's
    prefix sums, both at scale r, with key weights beta_j = e^{r - k_j^2} <= e^tau. Keys with
    k_j^2 < r - tau get beta 0: only unsafe rows see them. Unsafe rows (and the exact
    state totals of chunks that hold them) come from :func:`_pairwise`.
    """

    def __init__(self, qc, kc, vc, km, state, ref, order, C, tau):
        T1 = order + 1
        L = qc.shape[-2]
        self.L, self.pad = L, (-L) % C
        kz, vz, k2 = _masked(kc, vc, km)
        q, kz, vz = _pad_rows(qc, self.pad), _pad_rows(kz, self.pad), _pad_rows(vz, self.pad)
        k2 = _pad_rows(k2, self.pad, float("inf"))
        *lead, Lp, D = q.shape
        N = Lp // C
        self.lead, self.N, self.C, self.D, self.order = lead, N, C, D, order
        view = lambda t: t.view(*lead, N, C, D)  # noqa: E731
        self.q, self.k, self.v, self.k2 = view(q), view(kz), view(vz), view(k2)
        m = torch.minimum(torch.cummin(k2, dim=-2).values, ref.unsqueeze(-2))
        self.m = view(m)
        self.rho = self.m[..., -1:, :]
        self.r = torch.cat([ref[..., None, None, :], self.rho[..., :-1, :, :]], dim=-3)
        fin_r = torch.isfinite(self.r)
        near = fin_r & (self.k2 >= self.r - tau)
        self.beta = torch.where(near, torch.exp(torch.where(near, self.r - self.k2, _zeros(q))), _zeros(q))
        self.unsafe_row = torch.isfinite(self.m) & ~(fin_r & (self.m >= self.r - tau))
        self.unsafe_blk = self.unsafe_row[..., -1, :]  # m only falls: the last row is the worst
        kp = _powers(self.beta, self.k, order)  # (T1, ..., N, C, D)
        X = torch.empty((2,) + kp.shape, dtype=kp.dtype, device=kp.device)
        torch.mul(kp, self.v, out=X[0])
        X[1] = kp
        del kp
        X.cumsum_(dim=-2)  # prefix sums inside each chunk, scale r
        self.X = X
        dec = _exp_le0(self.rho, self.r)  # e^{rho - r} <= 1
        tot = X[..., -1:, :] * dec  # chunk sums at scale rho (exact for safe chunks)
        self.idx = None
        if bool(self.unsafe_blk.any()):
            self.idx = self.unsafe_blk.nonzero(as_tuple=True)
            self.pos = self.idx[:-1] + (slice(None),) + self.idx[-1:]
            g = lambda t: t[self.pos]  # noqa: E731  (U, C)
            self.gq, self.gk, self.gv, self.gk2, self.gm = g(self.q), g(self.k), g(self.v), g(self.k2), g(self.m)
            self.grho = self.rho[..., 0, :][self.idx]  # (U,)
            self.gr = self.r[..., 0, :][self.idx]
            tot[(slice(None), slice(None)) + self.pos[:-2] + (slice(None),) + self.pos[-1:]] = \
                _chunk_totals(self.gk, self.gv, self.gk2, self.grho, order).permute(2, 0, 1)[..., None]
        St = torch.empty_like(tot)
        cur = state
        for c in range(N):  # carried state at each chunk's start, scale r_c
            St[..., c:c + 1, :, :] = cur
            cur = torch.addcmul(tot[..., c:c + 1, :, :], cur, dec[..., c:c + 1, :, :])
        self.St, self.final, self.ref_out = St, cur, self.rho[..., -1, 0, :]
        if self.idx is not None:
            self.gSt = St[(slice(None), slice(None)) + self.idx[:-1] + (slice(None),) + self.idx[-1:]][..., 0]
            self.gSt = self.gSt.permute(1, 2, 0)  # (2, T1, U)

    def row_sums(self):
        """(2, T1, ..., N, C, D): safe rows' S, Z at scale r (carried state + chunk prefix)."""
        return self.X.add_(self.St)

    def fallback(self, q=None, k=None, v=None):
        """Exact num, den (U, C) of the unsafe chunks' rows at each row's own scale m."""
        q = self.gq if q is None else q
        k = self.gk if k is None else k
        v = self.gv if v is None else v
        k2 = self.gk2 if k is self.gk else torch.where(torch.isfinite(self.gk2), k * k, self.gk2)
        return _pairwise(q, k, v, k2, self.gm, self.order, self.gSt, self.gr)

    def unpad(self, x):
        return x.reshape(*self.lead, self.N * self.C, self.D)[..., :self.L, :]


def _chunk_totals(k, v, k2, rho, order):
    """(2, T1, U): sum_j e^{rho - k_j^2} k_j^n [v_j, 1] of gathered chunks (U, C), rho (U,)."""
    w = _exp_le0(rho[:, None].expand_as(k2), k2)
    out = torch.empty((2, order + 1, k.shape[0]), dtype=k.dtype, device=k.device)
    for n in range(order + 1):
        out[0, n] = (w * v).sum(-1)
        out[1, n] = w.sum(-1)
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
    x = 2.0 * q.unsqueeze(-1) * k.unsqueeze(-2)
    p = torch.full_like(x, 1.0 / math.factorial(order))
    for n in range(order - 1, -1, -1):
        p = p * x + 1.0 / math.factorial(n)
    a = w * p
    num, den = (a * v.unsqueeze(-2)).sum(-1), a.sum(-1)
    # the carried state, rescaled from r to each row's m (e^{m - r} <= 1; 0 before any key)
    dec = _exp_le0(m, r[:, None].expand_as(m))
    c = _coef(order)
    ps = pz = None
    for n in range(order, -1, -1):
        s_n, z_n = St[0, n][:, None] * c[n], St[1, n][:, None] * c[n]
        ps = s_n.expand_as(q) if ps is None else ps * q + s_n
        pz = z_n.expand_as(q) if pz is None else pz * q + z_n
    return num + dec * ps, den + dec * pz


def _poly_rows(qv, R, order):
    """num, den (..., N, C, D) = sum_n c_n q^n R[0|1, n] (Horner in q)."""
    c = _coef(order)
    num, den = R[0, order] * c[order], R[1, order] * c[order]
    for n in range(order - 1, -1, -1):
        num = torch.addcmul(R[0, n] * c[n], num, qv)
        den = torch.addcmul(R[1, n] * c[n], den, qv)
    return num, den


def _ratio(num, den):
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


class _ChunkFn(torch.autograd.Function):
    """Causal EA-series (eq. 6), prefix-stabilised chunked scan; see the module docstring."""

    @staticmethod
    def forward(ctx, q, k, v, km, s0, ref0, order, chunk):
        cd = _cd(q)
        qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)
        *lead, L, D = qc.shape
        tau = _TAU[cd]
        rows = _rows_per_block(L, int(math.prod(lead)) * D, order, chunk)
        state, ref = s0.to(cd), ref0.to(cd)
        ys, starts = [], []
        for b0 in range(0, L, rows):
            sl = (Ellipsis, slice(b0, min(L, b0 + rows)), slice(None))
            starts.append((state, ref))
            blk = _Block(qc[sl], kc[sl], vc[sl], None if km is None else km[sl], state, ref, order, chunk, tau)
            num, den = _poly_rows(blk.q, blk.row_sums(), order)
            y = _ratio(num, den)
            if blk.idx is not None:
                nb, db = blk.fallback()
                y[blk.pos] = torch.where(blk.unsafe_row[blk.pos], _ratio(nb, db), y[blk.pos])
            ys.append(blk.unpad(y))
            state, ref = blk.final, blk.ref_out
            del blk
        y = torch.cat(ys, dim=-2) if len(ys) > 1 else ys[0]
        ctx.save_for_backward(q, k, v, km, y, *[s for s, _ in starts], *[r for _, r in starts])
        ctx.meta = (order, chunk, rows, len(starts))
        ctx.mark_non_differentiable(state, ref)
        return y.to(v.dtype), state, ref

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, _gs, _gr):
        q, k, v, km, y, *st = ctx.saved_tensors
        order, chunk, rows, nb = ctx.meta
        cd = _cd(q)
        qc, kc, vc, g = q.to(cd), k.to(cd), v.to(cd), g.to(cd)
        L = qc.shape[-2]
        tau = _TAU[cd]
        dq, dk, dv = torch.empty_like(qc), torch.empty_like(kc), torch.empty_like(vc)
        G = None  # suffix state of the later blocks, at the scale of this block's last row
        for bi in range(nb - 1, -1, -1):
            sl = (Ellipsis, slice(bi * rows, min(L, bi * rows + rows)), slice(None))
            blk = _Block(qc[sl], kc[sl], vc[sl], None if km is None else km[sl], st[bi], st[nb + bi],
                         order, chunk, tau)
            G = _backward_block(blk, y[sl], g[sl], G, dq[sl], dk[sl], dv[sl], None if km is None else km[sl])
            del blk
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None


def _backward_block(blk, y, g, G_after, dq_out, dk_out, dv_out, km):
    """Gradients of one block (written into dq/dk/dv_out); returns the suffix state
    (2, T1, ..., 1, 1, D) for the block before, at the scale of its last row.

    Row scale R_i: r_c (safe rows) or m_i (unsafe rows), consistently with the forward:
    dnum_i = g_i / den_i(R_i), dden_i = -dnum_i y_i, and key j receives
    GS_{n,j} = sum_{i >= j} c_n q_i^n dnum_i e^{R_i - k_j^2} (GZ with dden):
    from safe rows of its chunk beta_j * (reverse prefix sum), from later chunks
    e^{rho_c - k_j^2} * G_c with the suffix state G_c at scale rho_c, from unsafe rows of its
    chunk through autograd on the exact pairwise form.
    """
    order, T1, coef = blk.order, blk.order + 1, _coef(blk.order)
    yv = _pad_rows(y, blk.pad).view_as(blk.q)
    gv = _pad_rows(g, blk.pad).view_as(blk.q)
    R = blk.row_sums()
    _, den = _poly_rows(blk.q, R, order)
    if blk.idx is not None:
        with torch.no_grad():
            _, db = blk.fallback()
        den[blk.pos] = torch.where(blk.unsafe_row[blk.pos], db, den[blk.pos])
    dnum = _ratio(gv, den)
    dden = -dnum * yv
    safe = ~blk.unsafe_row
    dq = None
    for n in range(order, 0, -1):
        term = dnum * R[0, n] * (n * coef[n]) + dden * R[1, n] * (n * coef[n])
        dq = term if dq is None else torch.addcmul(term, dq, blk.q)
    dq = torch.zeros_like(blk.q) if dq is None else torch.where(safe, dq, _zeros(dq))
    del R, blk.X
    RS = torch.empty((2, T1) + blk.q.shape, dtype=blk.q.dtype, device=blk.q.device)
    pd, pz = dnum, dden
    for n in range(T1):
        torch.mul(pd, coef[n], out=RS[0, n])
        torch.mul(pz, coef[n], out=RS[1, n])
        if n < order:
            pd, pz = pd * blk.q, pz * blk.q
    # rows' share for earlier chunks, at their chunk-start scale r: 1 (safe) or e^{m - r}
    wrow = torch.where(safe, torch.ones_like(blk.m), _exp_le0(blk.m, blk.r.expand_as(blk.m)))
    loc = (RS * wrow).sum(-2, keepdim=True)  # (2, T1, ..., N, 1, D)
    Gc = torch.empty_like(loc)
    cur = torch.zeros_like(loc[..., :1, :, :]) if G_after is None else G_after
    for c in range(blk.N - 1, -1, -1):
        Gc[..., c:c + 1, :, :] = cur
        cur = loc[..., c:c + 1, :, :] + cur * _exp_le0(blk.rho[..., c:c + 1, :, :], blk.r[..., c:c + 1, :, :])
    # safe rows of the same chunk: reverse prefix sums at scale r, times beta_j
    RS = torch.where(safe, RS, _zeros(RS)).flip(-2).cumsum(-2).flip(-2)
    RS.mul_(blk.beta)
    RS.add_(Gc * _exp_le0(blk.rho.expand_as(blk.k2), blk.k2))
    dk, dv = _key_grads(blk.k, blk.v, torch.ones_like(blk.k), RS[0], RS[1], order)
    del RS
    if blk.idx is not None:
        sel = blk.unsafe_row[blk.pos]
        zero = _zeros(dnum)
        with torch.enable_grad():
            lq, lk, lv = (t.detach().requires_grad_(True) for t in (blk.gq, blk.gk, blk.gv))
            nb_, db_ = blk.fallback(lq, lk, lv)
            grads = torch.autograd.grad((nb_, db_), (lq, lk, lv),
                                        (torch.where(sel, dnum[blk.pos], zero), torch.where(sel, dden[blk.pos], zero)),
                                        allow_unused=True)
        for out, gr in zip((dq, dk, dv), grads):
            if gr is not None:
                out[blk.pos] = out[blk.pos] + gr
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
        s0 = torch.zeros((2, T1, *lead, 1, 1, D), dtype=cd, device=q.device)
        ref0 = torch.full((*lead, D), float("inf"), dtype=cd, device=q.device)
    else:
        s0 = torch.stack([initial_state["s"], initial_state["z"]]).to(cd)[..., None, None, :].detach()
        ref0 = initial_state["ref"].to(cd).detach()
    km = None
    if key_padding_mask is not None:
        km = key_padding_mask.to(k.device, torch.bool).view(k.shape[0], *([1] * (k.dim() - 3)), k.shape[-2], 1)
    if q.shape[-2] == 0:
        y = v.new_zeros(v.shape)
        final = (s0, ref0)
    else:
        y, sfin, rfin = _ChunkFn.apply(q, k, v, km, s0, ref0, int(order), int(chunk_size))
        final = (sfin, rfin)
    if not output_final_state:
        return y
    sz, ref = final
    return y, {"s": sz[0, ..., 0, 0, :], "z": sz[1, ..., 0, 0, :], "ref": ref}
