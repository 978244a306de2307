"""EA-series (Feng 2025 eq. 5-6) in Triton: forward and backward, causal and non-causal.

Math (per channel c; ``ea_zoo.functional.ea_series_naive`` is the yardstick). With
a_{n,j} = k_j^n, p_{n,i} = c_n q_i^n, c_n = 2^n / n!, and a per-row stabiliser m_i,

    S_{n,i} = sum_{j in J(i)} e^{m_i - k_j^2} a_{n,j} v_j,  Z_{n,i} = sum_{j in J(i)} e^{m_i - k_j^2} a_{n,j}
    num_i = sum_n p_{n,i} S_{n,i},  den_i = sum_n p_{n,i} Z_{n,i},  y_i = num_i / den_i

with J(i) the valid keys (key-padding mask) of the whole sequence (non-causal) or j <= i
(causal); y_i = 0 where den_i <= 0 (safe_ratio). The factor e^{m_i} cancels in the ratio
(it is a constant: no gradient flows through it); it only keeps float32 in range, since
e^{-k^2} underflows for |k| > 9.3.

* Non-causal: m_i = r = min over the valid keys of k_j^2 (0 if none), one number per
  channel: every row sees every key, so the global min is every row's own.
* Causal (prefix stabilisation): m_i = min(ref0, min_{valid j <= i} k_j^2), the running
  minimum (ref0 from ``initial_state``, +inf without one). Every exponent m_i - k_j^2 is
  <= 0, and the key of row i's own past with the smallest k^2 (its dominant key: e^{-k^2}
  is largest there) has weight exactly e^0 = 1. So S_i, Z_i always hold that key's term at
  full size (P_t(2 q_i k_j) > 0 for even t) and den_i cannot underflow to 0, whatever the
  other keys, earlier or later, hold; and m_i is a function of keys j <= i only, so a
  causal row reads nothing of the future, not even through its scale. (The earlier design
  scaled every row by one global e^{r}, r = min over ALL keys of k^2: row i then carried
  the factor e^{r - m_i}, and when a later key's k^2 was smaller than row i's dominant one
  by more than ~87, every term of row i underflowed: 0/0, output 0.) Terms with
  m_i - k_j^2 < -87 still underflow, but they are below 1e-38 of the row's dominant term.

State (causal): S_n, Z_n of the keys so far at the scale ref = their min k^2 (+inf when
empty), the layout of ``ea_series_init_state`` / ``ea_series_step``; ``initial_state``
enters row i as e^{m_i - ref0} S0_n, and ``final_state`` is the state after the last row.
No gradient flows into ``initial_state`` (nor out of ``final_state``): they are data, as in
truncated backpropagation through time; dq, dk, dv are exact given the state.

Within a chunk of BL rows the running sums are a decaying prefix sum: with the exclusive
running min m'_j (= m_{j-1}; the carried scale for the chunk's first row) and
d_j = e^{m_j - m'_j} <= 1,

    S_{n,j} = d_j S_{n,j-1} + e^{m_j - k_j^2} a_{n,j} v_j,

a linear recurrence: ``tl.associative_scan`` over (d, s, z) with the map composition
(d1, x1) o (d2, x2) = (d1 d2, x1 d2 + x2), the carried state folded into row 0 as
d_0 S_carry. (m, m') come from one scan with the (inclusive, exclusive) min combine. No
exponent is positive, padded rows have d = 1 and contribute 0, and nothing is NaN
(e^{+inf - +inf} is selected away: d = 1 where m_j = m'_j, 0 from an empty +inf scale).

Backward, for g_i = dL/dy_i: dnum_i = g_i / den_i, dden_i = -dnum_i y_i (0 where den_i <= 0),
with den_i at the row's own scale m_i;

    dq_i = dnum_i sum_n 2 p_{n-1,i} S_{n,i} + dden_i sum_n 2 p_{n-1,i} Z_{n,i}
           (d p_{n,i} / d q_i = n c_n q_i^{n-1} = 2 p_{n-1,i})
    GS_{n,j} = sum_{i: j in J(i)} p_{n,i} dnum_i e^{m_i - k_j^2} = w_j T^S_{n,j},   w_j = e^{m_j - k_j^2}
    T^S_{n,j} = sum_{i: j in J(i)} p_{n,i} dnum_i e^{m_i - m_j}    (causal: i >= j, m_i <= m_j)
    GZ, T^Z likewise with dden;  h_{n,j} = v_j T^S_{n,j} + T^Z_{n,j}
    dv_j = w_j sum_n k_j^n T^S_{n,j}
    dk_j = w_j (sum_n n k_j^{n-1} h_{n,j} - 2 k_j sum_n k_j^n h_{n,j})

(non-causal: m_i = m_j = r and T is the total over all rows). Causal T is a suffix sum at
the scale of its first row: a reverse ``tl.associative_scan`` over (m, u) with the
rescaling combine (m1, x1) + (m2, x2) = (M, x1 e^{m1 - M} + x2 e^{m2 - M}), M = max(m1, m2):
commutative, so the (direction-dependent) argument order of reverse scans cannot matter.
The state carried between chunks is (m of the first row after, T there), folded into the
chunk's last row; between splits, the first pass sums each split's p_{n,i} dnum_i e^{m_i - R_s}
at the scale R_s of its start, and a reverse scan over the splits gives each split the sum
over all later ones at the scale of the first row after it (all factors <= 1).

Nothing of size (order+1) x L x D is stored: the forward saves the (order+1) x 2 sums and
their scale at every split start (causal) or the totals and r. The causal backward's first
pass recomputes S, Z, m and writes dq, dnum, dden (float32 scratch, 2 x B x L x D) and the
running min at every chunk start (B x H x L/BL x D); its second pass recomputes m from those
(the same min operations, so bit for bit the forward's m) and runs the reverse scan.

Kernels: grid (B*H, channel blocks of BC, NS splits of L). Each program walks its split
in chunks of BL rows with the (order+1) x 2 state of its BC channels in registers (an
(NPOW, BC) tile each for S and Z; row n is read and written with a one-hot select).
Splits give parallelism when B*H*D/BC is small (long sequences, small batch): a first pass
computes each split's sums at the split's own min (rescaling as its running min drops), a
tiny sequential kernel over the splits combines them (the state at the start of split s at
scale R_s = min(ref0, the splits' minima before s), every factor e^{R_s - .} <= 1; or, non-
causal, the total at the global r in torch), and the output pass starts every split from its
state. Launches: causal forward 1 (one split) or 3; non-causal forward 2; backward 2, plus
1 (the suffix combine) with several causal splits.

Memory traffic (in units of one B x L x D tensor): non-causal forward reads k, v then q and
writes o (4, the minimum); causal forward reads k, v in the first pass (several splits),
then q, k, v and writes o (4-6). Non-causal backward reads q, do / k, v and writes dq /
dk, dv (7); causal backward also writes and re-reads dnum, dden and re-reads q, k, v.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import triton.language as tl

from ea_zoo.kernels import MAX_ORDER
from ea_zoo.kernels._triton_utils import (
    LazyKernel,
    as_bhlc,
    cdiv,
    combine_fn,
    cuda_sm_count,
    mask_u8,
    next_pow2,
)

__all__ = ["ea_series_triton", "plan_splits"]


# ----------------------------------------------------------------------------------------
# combine functions
# ----------------------------------------------------------------------------------------

# Reductions and plain scans call tl.reduce / tl.associative_scan with triton's own combine
# functions: the same code tl.sum / tl.cumsum / tl.min compile to, and the Triton interpreter
# maps these combine functions straight to numpy (a call to the @jit wrappers costs ~3 ms
# there, which would dominate the CPU test time).
_SUM = tl.standard._sum_combine
_MIN = tl.standard._elementwise_min
_MAX = tl.standard._elementwise_max


def _min_combine(a, b):
    """Running min (a scan of its own: the interpreter scans tl.standard's only via numpy)."""
    return tl.minimum(a, b)


def _min_excl_combine(i1, e1, i2, e2):
    """(min of a segment, min of the segment without its last element); element (x, +inf)."""
    return tl.minimum(i1, i2), tl.minimum(i1, e2)


def _decay_combine(d1, s1, z1, d2, s2, z2):
    """Compose x -> d x + (s, z) maps, (d1, s1, z1) the earlier segment: decaying prefix sums.

    Not commutative: used in forward (non-reverse) scans only."""
    return d1 * d2, s1 * d2 + s2, z1 * d2 + z2


def _max_rescale_combine(m1, s1, z1, m2, s2, z2):
    """(m, s, z): sums at scale m; the sum of two at scale M = max(m1, m2), factors <= 1.

    Commutative and associative, so safe in reverse scans whatever the argument order.
    A factor e^{lo - hi} is 1 where the scales agree (both +inf included) and 0 from -inf /
    to +inf: no NaN."""
    hi = tl.maximum(m1, m2)
    lo = tl.minimum(m1, m2)
    gap = hi > lo
    f = tl.exp(tl.where(gap, lo, 0.0) - tl.where(gap, hi, 0.0))
    first = m1 >= m2
    s = tl.where(first, s1 + f * s2, f * s1 + s2)
    z = tl.where(first, z1 + f * z2, f * z1 + z2)
    return hi, s, z


_RUN_MIN = combine_fn(_min_combine)
_MIN_EXCL = combine_fn(_min_excl_combine)
_DECAY = combine_fn(_decay_combine)
_MAX_RESCALE = combine_fn(_max_rescale_combine)


# ----------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------


def _series_sums_kernel(
    K, V, MASK, ST, RS,
    H, L, C, CPS, NS,
    skb, skh, skl, skc,
    svb, svh, svl, svc,
    smb, sml,
    ORDER: tl.constexpr, NPOW: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
    HAS_MASK: tl.constexpr,
):
    """Per split: RS = min over valid keys of k^2 (+inf if none); ST = (S_n, Z_n) at scale RS."""
    T1: tl.constexpr = ORDER + 1
    bh = tl.program_id(0).to(tl.int64)
    pc = tl.program_id(1)
    ps = tl.program_id(2)
    b = bh // H
    h = bh % H
    offs_c = pc * BC + tl.arange(0, BC)
    cmask = offs_c < C
    rows = tl.arange(0, NPOW)
    kbase = K + b * skb + h * skh
    vbase = V + b * svb + h * svh
    S = tl.full((NPOW, BC), 0.0, tl.float32)
    Z = tl.full((NPOW, BC), 0.0, tl.float32)
    r = tl.full((BC,), float("inf"), tl.float32)
    for ci in range(0, CPS):
        offs_l = (ps * CPS + ci) * BL + tl.arange(0, BL)
        lmask = offs_l < L
        valid = lmask[:, None] & cmask[None, :]
        if HAS_MASK:
            km = tl.load(MASK + b * smb + offs_l * sml, mask=lmask, other=0)
            valid = valid & (km != 0)[:, None]
        k = tl.load(kbase + offs_l[:, None] * skl + offs_c[None, :] * skc, mask=valid, other=0.0).to(tl.float32)
        k2 = k * k
        r_new = tl.minimum(r, tl.reduce(tl.where(valid, k2, float("inf")), 0, _MIN))
        drop = r_new < r
        scale = tl.exp(tl.where(drop, r_new, 0.0) - tl.where(drop, r, 0.0))  # 0 if r was +inf
        S = S * scale[None, :]
        Z = Z * scale[None, :]
        v = tl.load(vbase + offs_l[:, None] * svl + offs_c[None, :] * svc, mask=valid, other=0.0).to(tl.float32)
        a = tl.exp(tl.where(valid, tl.where(valid, r_new[None, :], 0.0) - k2, float("-inf")))
        for n in tl.static_range(T1):
            sel = rows[:, None] == n
            Z += tl.where(sel, tl.reduce(a, 0, _SUM)[None, :], 0.0)
            S += tl.where(sel, tl.reduce(a * v, 0, _SUM)[None, :], 0.0)
            a = a * k
        r = r_new
    bhs = bh * NS + ps
    tl.store(RS + bhs * C + offs_c, r, mask=cmask)
    st = ST + bhs * 2 * T1 * C + rows[:, None] * C + offs_c[None, :]
    smask = (rows[:, None] < T1) & cmask[None, :]
    tl.store(st, S, mask=smask)
    tl.store(st + T1 * C, Z, mask=smask)


def _split_scan_kernel(
    X, XS, INIT, INIT_S, OUT, OUT_S,
    C, NS, NROW,
    NPOW: tl.constexpr, BC: tl.constexpr, REVERSE: tl.constexpr, HAS_INIT: tl.constexpr,
):
    """Exclusive scan over the NS splits of (scale, NROW x C sums at that scale), in order
    (forward: scale = min, the running min of k^2) or reversed (backward: scale = max, the
    scale of the earliest row). OUT[s] / OUT_S[s]: everything before (after) split s, plus
    INIT, at the combined scale; every factor e^{-|new - old|} <= 1. X: (BH, NS, NROW, C)."""
    bh = tl.program_id(0).to(tl.int64)
    pc = tl.program_id(1)
    offs_c = pc * BC + tl.arange(0, BC)
    cmask = offs_c < C
    rows = tl.arange(0, NPOW)
    smask = (rows[:, None] < NROW) & cmask[None, :]
    tile = rows[:, None] * C + offs_c[None, :]
    if HAS_INIT:
        acc = tl.load(INIT + bh * NROW * C + tile, mask=smask, other=0.0)
        sc = tl.load(INIT_S + bh * C + offs_c, mask=cmask, other=0.0)
    else:
        acc = tl.full((NPOW, BC), 0.0, tl.float32)
        if REVERSE:
            sc = tl.full((BC,), float("-inf"), tl.float32)
        else:
            sc = tl.full((BC,), float("inf"), tl.float32)
    for i in range(0, NS):
        if REVERSE:
            s = NS - 1 - i
        else:
            s = i
        base = bh * NS + s
        tl.store(OUT + base * NROW * C + tile, acc, mask=smask)
        tl.store(OUT_S + base * C + offs_c, sc, mask=cmask)
        x = tl.load(X + base * NROW * C + tile, mask=smask, other=0.0)
        xs = tl.load(XS + base * C + offs_c, mask=cmask, other=0.0)
        if REVERSE:
            new = tl.maximum(sc, xs)
        else:
            new = tl.minimum(sc, xs)
        d_acc = new != sc
        d_x = new != xs
        f_acc = tl.exp(-tl.abs(tl.where(d_acc, new, 0.0) - tl.where(d_acc, sc, 0.0)))
        f_x = tl.exp(-tl.abs(tl.where(d_x, new, 0.0) - tl.where(d_x, xs, 0.0)))
        acc = acc * f_acc[None, :] + x * f_x[None, :]
        sc = new


def _series_out_kernel(
    Q, K, V, MASK, ST, R, O, FST, FR,
    H, L, C, CPS,
    sqb, sqh, sql, sqc,
    skb, skh, skl, skc,
    svb, svh, svl, svc,
    sob, soh, sol, soc,
    smb, sml,
    ORDER: tl.constexpr, NPOW: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, STORE_END: tl.constexpr,
):
    """y = num / den for the split's rows, from the (S, Z) state at the split start (causal:
    one per split, at scale R = the running min there; non-causal: the total, at scale r).
    STORE_END (causal): also store the state after the split (FST, FR: (BH, NS, ...))."""
    T1: tl.constexpr = ORDER + 1
    bh = tl.program_id(0).to(tl.int64)
    pc = tl.program_id(1)
    ps = tl.program_id(2)
    NS = tl.num_programs(2)
    b = bh // H
    h = bh % H
    offs_c = pc * BC + tl.arange(0, BC)
    cmask = offs_c < C
    rows = tl.arange(0, NPOW)
    smask = (rows[:, None] < T1) & cmask[None, :]
    if CAUSAL:
        sidx = bh * NS + ps
    else:
        sidx = bh
    st = ST + sidx * (2 * T1 * C) + rows[:, None] * C + offs_c[None, :]
    S = tl.load(st, mask=smask, other=0.0)
    Z = tl.load(st + T1 * C, mask=smask, other=0.0)
    r = tl.load(R + sidx * C + offs_c, mask=cmask, other=0.0)
    lrow = tl.arange(0, BL)
    first = (lrow == 0)[:, None]
    last = (lrow == BL - 1)[:, None]
    qbase = Q + b * sqb + h * sqh
    kbase = K + b * skb + h * skh
    vbase = V + b * svb + h * svh
    obase = O + b * sob + h * soh
    for ci in range(0, CPS):
        offs_l = (ps * CPS + ci) * BL + lrow
        lmask = offs_l < L
        io_mask = lmask[:, None] & cmask[None, :]
        q = tl.load(qbase + offs_l[:, None] * sql + offs_c[None, :] * sqc, mask=io_mask, other=0.0).to(tl.float32)
        q2 = 2.0 * q
        num = tl.full((BL, BC), 0.0, tl.float32)
        den = tl.full((BL, BC), 0.0, tl.float32)
        pq = tl.full((BL, BC), 1.0, tl.float32)
        if CAUSAL:
            valid = io_mask
            if HAS_MASK:
                km = tl.load(MASK + b * smb + offs_l * sml, mask=lmask, other=0)
                valid = valid & (km != 0)[:, None]
            k = tl.load(kbase + offs_l[:, None] * skl + offs_c[None, :] * skc, mask=valid, other=0.0).to(tl.float32)
            v = tl.load(vbase + offs_l[:, None] * svl + offs_c[None, :] * svc, mask=valid, other=0.0).to(tl.float32)
            kk = k * k
            k2 = tl.where(valid, kk, float("inf"))
            inc, exc = tl.associative_scan((k2, tl.full((BL, BC), float("inf"), tl.float32)), 0, _MIN_EXCL)
            m = tl.minimum(inc, r[None, :])  # the row's own scale: running min of k^2
            mex = tl.minimum(exc, r[None, :])  # the previous row's
            drop = m < mex
            dec = tl.exp(tl.where(drop, m, 0.0) - tl.where(drop, mex, 0.0))  # 1 if equal, 0 from +inf
            a = tl.exp(tl.where(valid, tl.where(valid, m, 0.0) - kk, float("-inf")))  # e^{m_j - k_j^2}
            for n in tl.static_range(T1):
                sel = rows[:, None] == n
                s0 = tl.reduce(tl.where(sel, S, 0.0), 0, _SUM)[None, :]
                z0 = tl.reduce(tl.where(sel, Z, 0.0), 0, _SUM)[None, :]
                xs = a * v + tl.where(first, dec * s0, 0.0)
                xz = a + tl.where(first, dec * z0, 0.0)
                _, s_n, z_n = tl.associative_scan((dec, xs, xz), 0, _DECAY)
                num += pq * s_n
                den += pq * z_n
                S = tl.where(sel, tl.reduce(tl.where(last, s_n, 0.0), 0, _SUM)[None, :], S)
                Z = tl.where(sel, tl.reduce(tl.where(last, z_n, 0.0), 0, _SUM)[None, :], Z)
                a = a * k
                pq = pq * q2 / (n + 1)
            r = tl.minimum(r, tl.reduce(k2, 0, _MIN))
        else:
            for n in tl.static_range(T1):
                sel = rows[:, None] == n
                num += pq * tl.reduce(tl.where(sel, S, 0.0), 0, _SUM)[None, :]
                den += pq * tl.reduce(tl.where(sel, Z, 0.0), 0, _SUM)[None, :]
                pq = pq * q2 / (n + 1)
        ok = den > 0.0
        y = tl.where(ok, num / tl.where(ok, den, 1.0), 0.0)
        tl.store(obase + offs_l[:, None] * sol + offs_c[None, :] * soc, y.to(O.dtype.element_ty), mask=io_mask)
    if STORE_END:
        fst = FST + sidx * (2 * T1 * C) + rows[:, None] * C + offs_c[None, :]
        tl.store(fst, S, mask=smask)
        tl.store(fst + T1 * C, Z, mask=smask)
        tl.store(FR + sidx * C + offs_c, r, mask=cmask)


def _series_bwd_q_kernel(
    Q, K, V, MASK, G, ST, R, DQ, DNUM, DDEN, MC, GST,
    H, L, C, CPS,
    sqb, sqh, sql, sqc,
    skb, skh, skl, skc,
    svb, svh, svl, svc,
    sgb, sgh, sgl, sgc,
    sdb, sdh, sdl, sdc,
    smb, sml,
    ORDER: tl.constexpr, NPOW: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr,
):
    """Forward-direction pass of the backward: recompute S, Z, num, den; write dq (and, causal,
    dnum, dden and MC, the running min at every chunk start); per split,
    GST = (sum_i p_{n,i} dnum_i, sum_i p_{n,i} dden_i), causal: each term times e^{m_i - R_s}
    (R_s: the scale at the split start)."""
    T1: tl.constexpr = ORDER + 1
    bh = tl.program_id(0).to(tl.int64)
    pc = tl.program_id(1)
    ps = tl.program_id(2)
    NS = tl.num_programs(2)
    b = bh // H
    h = bh % H
    offs_c = pc * BC + tl.arange(0, BC)
    cmask = offs_c < C
    rows = tl.arange(0, NPOW)
    smask = (rows[:, None] < T1) & cmask[None, :]
    if CAUSAL:
        sidx = bh * NS + ps
    else:
        sidx = bh
    st = ST + sidx * (2 * T1 * C) + rows[:, None] * C + offs_c[None, :]
    S = tl.load(st, mask=smask, other=0.0)
    Z = tl.load(st + T1 * C, mask=smask, other=0.0)
    r = tl.load(R + sidx * C + offs_c, mask=cmask, other=0.0)
    r0 = r
    lrow = tl.arange(0, BL)
    first = (lrow == 0)[:, None]
    last = (lrow == BL - 1)[:, None]
    GS = tl.full((NPOW, BC), 0.0, tl.float32)
    GZ = tl.full((NPOW, BC), 0.0, tl.float32)
    qbase = Q + b * sqb + h * sqh
    kbase = K + b * skb + h * skh
    vbase = V + b * svb + h * svh
    gbase = G + b * sgb + h * sgh
    dqbase = DQ + b * sdb + h * sdh
    for ci in range(0, CPS):
        offs_l = (ps * CPS + ci) * BL + lrow
        lmask = offs_l < L
        io_mask = lmask[:, None] & cmask[None, :]
        q = tl.load(qbase + offs_l[:, None] * sql + offs_c[None, :] * sqc, mask=io_mask, other=0.0).to(tl.float32)
        g = tl.load(gbase + offs_l[:, None] * sgl + offs_c[None, :] * sgc, mask=io_mask, other=0.0).to(tl.float32)
        q2 = 2.0 * q
        num = tl.full((BL, BC), 0.0, tl.float32)
        den = tl.full((BL, BC), 0.0, tl.float32)
        dnum_acc = tl.full((BL, BC), 0.0, tl.float32)  # sum_n 2 p_{n-1} S_n
        dden_acc = tl.full((BL, BC), 0.0, tl.float32)  # sum_n 2 p_{n-1} Z_n
        pq = tl.full((BL, BC), 1.0, tl.float32)
        pq_prev = tl.full((BL, BC), 0.0, tl.float32)
        if CAUSAL:
            tl.store(MC + (bh * (NS * CPS) + ps * CPS + ci) * C + offs_c, r, mask=cmask)
            valid = io_mask
            if HAS_MASK:
                km = tl.load(MASK + b * smb + offs_l * sml, mask=lmask, other=0)
                valid = valid & (km != 0)[:, None]
            k = tl.load(kbase + offs_l[:, None] * skl + offs_c[None, :] * skc, mask=valid, other=0.0).to(tl.float32)
            v = tl.load(vbase + offs_l[:, None] * svl + offs_c[None, :] * svc, mask=valid, other=0.0).to(tl.float32)
            kk = k * k
            k2 = tl.where(valid, kk, float("inf"))
            inc, exc = tl.associative_scan((k2, tl.full((BL, BC), float("inf"), tl.float32)), 0, _MIN_EXCL)
            m = tl.minimum(inc, r[None, :])
            mex = tl.minimum(exc, r[None, :])
            drop = m < mex
            dec = tl.exp(tl.where(drop, m, 0.0) - tl.where(drop, mex, 0.0))
            a = tl.exp(tl.where(valid, tl.where(valid, m, 0.0) - kk, float("-inf")))
            for n in tl.static_range(T1):
                sel = rows[:, None] == n
                s0 = tl.reduce(tl.where(sel, S, 0.0), 0, _SUM)[None, :]
                z0 = tl.reduce(tl.where(sel, Z, 0.0), 0, _SUM)[None, :]
                xs = a * v + tl.where(first, dec * s0, 0.0)
                xz = a + tl.where(first, dec * z0, 0.0)
                _, s_n, z_n = tl.associative_scan((dec, xs, xz), 0, _DECAY)
                num += pq * s_n
                den += pq * z_n
                dnum_acc += 2.0 * pq_prev * s_n
                dden_acc += 2.0 * pq_prev * z_n
                S = tl.where(sel, tl.reduce(tl.where(last, s_n, 0.0), 0, _SUM)[None, :], S)
                Z = tl.where(sel, tl.reduce(tl.where(last, z_n, 0.0), 0, _SUM)[None, :], Z)
                a = a * k
                pq_prev = pq
                pq = pq * q2 / (n + 1)
            r = tl.minimum(r, tl.reduce(k2, 0, _MIN))
            # this split's suffix sums are kept at the scale r0 of the split start (m <= r0)
            gap = m < r0[None, :]
            ew = tl.exp(tl.where(gap, m, 0.0) - tl.where(gap, r0[None, :], 0.0))
        else:
            for n in tl.static_range(T1):
                sel = rows[:, None] == n
                s_n = tl.reduce(tl.where(sel, S, 0.0), 0, _SUM)[None, :]
                z_n = tl.reduce(tl.where(sel, Z, 0.0), 0, _SUM)[None, :]
                num += pq * s_n
                den += pq * z_n
                dnum_acc += 2.0 * pq_prev * s_n
                dden_acc += 2.0 * pq_prev * z_n
                pq_prev = pq
                pq = pq * q2 / (n + 1)
        ok = den > 0.0
        rden = 1.0 / tl.where(ok, den, 1.0)
        dnum = tl.where(ok, g * rden, 0.0)
        dden = -dnum * (num * rden)
        dq = dnum * dnum_acc + dden * dden_acc
        tl.store(dqbase + offs_l[:, None] * sdl + offs_c[None, :] * sdc, dq.to(DQ.dtype.element_ty), mask=io_mask)
        if CAUSAL:
            sc = (bh * L + offs_l[:, None]) * C + offs_c[None, :]
            tl.store(DNUM + sc, dnum, mask=io_mask)
            tl.store(DDEN + sc, dden, mask=io_mask)
            dnum = dnum * ew
            dden = dden * ew
        pq = tl.full((BL, BC), 1.0, tl.float32)
        for n in tl.static_range(T1):
            sel = rows[:, None] == n
            GS += tl.where(sel, tl.reduce(pq * dnum, 0, _SUM)[None, :], 0.0)
            GZ += tl.where(sel, tl.reduce(pq * dden, 0, _SUM)[None, :], 0.0)
            pq = pq * q2 / (n + 1)
    gst = GST + (bh * NS + ps) * (2 * T1 * C) + rows[:, None] * C + offs_c[None, :]
    tl.store(gst, GS, mask=smask)
    tl.store(gst + T1 * C, GZ, mask=smask)


def _series_bwd_kv_kernel(
    Q, K, V, MASK, DNUM, DDEN, MC, GST, GM, R, DK, DV,
    H, L, C, CPS,
    sqb, sqh, sql, sqc,
    skb, skh, skl, skc,
    svb, svh, svl, svc,
    sdkb, sdkh, sdkl, sdkc,
    sdvb, sdvh, sdvl, sdvc,
    smb, sml,
    ORDER: tl.constexpr, NPOW: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr,
):
    """dk, dv from T^S, T^Z: the totals (non-causal) or a reverse scan over the split from the
    suffix state after it (causal: T at scale GM, the running min of the first row after)."""
    T1: tl.constexpr = ORDER + 1
    bh = tl.program_id(0).to(tl.int64)
    pc = tl.program_id(1)
    ps = tl.program_id(2)
    NS = tl.num_programs(2)
    b = bh // H
    h = bh % H
    offs_c = pc * BC + tl.arange(0, BC)
    cmask = offs_c < C
    rows = tl.arange(0, NPOW)
    smask = (rows[:, None] < T1) & cmask[None, :]
    if CAUSAL:
        sidx = bh * NS + ps
    else:
        sidx = bh
    gst = GST + sidx * (2 * T1 * C) + rows[:, None] * C + offs_c[None, :]
    GS = tl.load(gst, mask=smask, other=0.0)
    GZ = tl.load(gst + T1 * C, mask=smask, other=0.0)
    if CAUSAL:
        mc = tl.load(GM + sidx * C + offs_c, mask=cmask, other=float("-inf"))  # -inf: empty
        r = mc
    else:
        r = tl.load(R + bh * C + offs_c, mask=cmask, other=0.0)
        mc = r
    lrow = tl.arange(0, BL)
    first = (lrow == 0)[:, None]
    last = (lrow == BL - 1)[:, None]
    qbase = Q + b * sqb + h * sqh
    kbase = K + b * skb + h * skh
    vbase = V + b * svb + h * svh
    dkbase = DK + b * sdkb + h * sdkh
    dvbase = DV + b * sdvb + h * sdvh
    for ci in range(0, CPS):
        if CAUSAL:
            chunk = ps * CPS + (CPS - 1 - ci)  # walk the split backwards
        else:
            chunk = ps * CPS + ci
        offs_l = chunk * BL + lrow
        lmask = offs_l < L
        io_mask = lmask[:, None] & cmask[None, :]
        valid = io_mask
        if HAS_MASK:
            km = tl.load(MASK + b * smb + offs_l * sml, mask=lmask, other=0)
            valid = valid & (km != 0)[:, None]
        k = tl.load(kbase + offs_l[:, None] * skl + offs_c[None, :] * skc, mask=valid, other=0.0).to(tl.float32)
        v = tl.load(vbase + offs_l[:, None] * svl + offs_c[None, :] * svc, mask=valid, other=0.0).to(tl.float32)
        kk = k * k
        dv_acc = tl.full((BL, BC), 0.0, tl.float32)  # sum_n k^n T^S_n
        dk1 = tl.full((BL, BC), 0.0, tl.float32)  # sum_n n k^{n-1} h_n
        dk2 = tl.full((BL, BC), 0.0, tl.float32)  # sum_n k^n h_n
        kp = tl.full((BL, BC), 1.0, tl.float32)
        kpm1 = tl.full((BL, BC), 0.0, tl.float32)
        if CAUSAL:
            m0 = tl.load(MC + (bh * (NS * CPS) + chunk) * C + offs_c, mask=cmask, other=float("inf"))
            k2 = tl.where(valid, kk, float("inf"))
            m = tl.minimum(tl.associative_scan(k2, 0, _RUN_MIN), m0[None, :])  # as in the forward
            w = tl.exp(tl.where(valid, tl.where(valid, m, 0.0) - kk, float("-inf")))  # e^{m_j - k_j^2}
            # the carried T (scale mc <= the chunk's last m) enters at the chunk's last row
            m_last = tl.reduce(m, 0, _MIN)
            gap = m_last > mc
            fold = tl.exp(tl.where(gap, mc, 0.0) - tl.where(gap, m_last, 0.0))[None, :]
            q = tl.load(qbase + offs_l[:, None] * sql + offs_c[None, :] * sqc, mask=io_mask, other=0.0).to(tl.float32)
            q2 = 2.0 * q
            sc = (bh * L + offs_l[:, None]) * C + offs_c[None, :]
            dnum = tl.load(DNUM + sc, mask=io_mask, other=0.0)
            dden = tl.load(DDEN + sc, mask=io_mask, other=0.0)
            pq = tl.full((BL, BC), 1.0, tl.float32)
            for n in tl.static_range(T1):
                sel = rows[:, None] == n
                gs0 = tl.reduce(tl.where(sel, GS, 0.0), 0, _SUM)[None, :]
                gz0 = tl.reduce(tl.where(sel, GZ, 0.0), 0, _SUM)[None, :]
                pd = pq * dnum + tl.where(last, fold * gs0, 0.0)
                pz = pq * dden + tl.where(last, fold * gz0, 0.0)
                _, gs, gz = tl.associative_scan((m, pd, pz), 0, _MAX_RESCALE, reverse=True)
                GS = tl.where(sel, tl.reduce(tl.where(first, gs, 0.0), 0, _SUM)[None, :], GS)
                GZ = tl.where(sel, tl.reduce(tl.where(first, gz, 0.0), 0, _SUM)[None, :], GZ)
                hh = v * gs + gz
                dv_acc += kp * gs
                dk1 += n * kpm1 * hh
                dk2 += kp * hh
                kpm1 = kp
                kp = kp * k
                pq = pq * q2 / (n + 1)
            mc = tl.reduce(m, 0, _MAX)  # the scale of the carried T: this chunk's first row
        else:
            w = tl.exp(tl.where(valid, r[None, :] - kk, float("-inf")))
            for n in tl.static_range(T1):
                sel = rows[:, None] == n
                gs = tl.reduce(tl.where(sel, GS, 0.0), 0, _SUM)[None, :]
                gz = tl.reduce(tl.where(sel, GZ, 0.0), 0, _SUM)[None, :]
                hh = v * gs + gz
                dv_acc += kp * gs
                dk1 += n * kpm1 * hh
                dk2 += kp * hh
                kpm1 = kp
                kp = kp * k
        dv = w * dv_acc
        dk = w * (dk1 - 2.0 * k * dk2)
        tl.store(dkbase + offs_l[:, None] * sdkl + offs_c[None, :] * sdkc, dk.to(DK.dtype.element_ty), mask=io_mask)
        tl.store(dvbase + offs_l[:, None] * sdvl + offs_c[None, :] * sdvc, dv.to(DV.dtype.element_ty), mask=io_mask)


_SUMS = LazyKernel(_series_sums_kernel)
_SPLIT_SCAN = LazyKernel(_split_scan_kernel)
_OUT = LazyKernel(_series_out_kernel)
_BWD_Q = LazyKernel(_series_bwd_q_kernel)
_BWD_KV = LazyKernel(_series_bwd_kv_kernel)


# ----------------------------------------------------------------------------------------
# launch planning
# ----------------------------------------------------------------------------------------


def default_blocks(device: torch.device, order: int) -> Tuple[int, int]:
    """(BL, BC): rows of L per chunk and channels per program.

    On CUDA: the largest tiles that compile for sm_90 without register spills (checked with
    cuobjdump --dump-resource-usage on the three causal kernels; not yet timed on a GPU).
    """
    if device.type == "cuda":
        if order <= 6:
            return 64, 32
        if order <= 8:
            return 32, 32
        return 32, 16
    return 32, 32  # interpreter: fewer, larger numpy ops


def plan_splits(BH: int, L: int, C: int, block_l: int, block_c: int, n_split: int) -> Tuple[int, int, int]:
    """(chunks per split CPS, number of splits NS, channel blocks) for a requested split count."""
    nchunks = max(1, cdiv(L, block_l))
    n_split = max(1, min(int(n_split), nchunks))
    cps = cdiv(nchunks, n_split)
    ns = cdiv(nchunks, cps)
    return cps, ns, cdiv(C, block_c)


def default_split(device: torch.device, BH: int, L: int, C: int, block_l: int, block_c: int) -> int:
    """Enough splits of L for about 4 programs per SM (1 when B*H*D/BC already does that)."""
    progs = BH * cdiv(C, block_c)
    if device.type == "cuda":
        target = 4 * cuda_sm_count(device)
        return max(1, min(cdiv(target, progs), cdiv(L, block_l)))
    return min(2, cdiv(L, block_l))


def _num_warps(block_l: int, block_c: int) -> int:
    return 8 if block_l * block_c >= 1024 else 4


# ----------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------


def _split_scan(x, xs, init, init_s, reverse, block_c):
    """Exclusive (reverse: suffix) scan over the splits: x (BH, NS, NROW, C) at scales xs
    (BH, NS, C) -> (out, out_s) of the same shapes; init (BH, NROW, C) at init_s (BH, C)."""
    BH, NS, NROW, C = x.shape
    out = torch.empty_like(x)
    out_s = torch.empty_like(xs)
    has_init = init is not None
    _SPLIT_SCAN[(BH, cdiv(C, block_c))](
        x, xs, init if has_init else x, init_s if has_init else xs, out, out_s, C, NS, NROW,
        NPOW=max(2, next_pow2(NROW)), BC=block_c, REVERSE=bool(reverse), HAS_INIT=has_init, num_warps=4,
    )
    return out, out_s


def _fwd_impl(q, k, v, mask, s0, z0, ref0, order, causal, block_l, block_c, n_split, final):
    """-> o, r, st, fs, fz, fref. Causal: r (BH, NS, C) and st (BH, NS, 2, T1, C) are the scale
    and the sums at every split start; non-causal: r (BH, C), st (BH, 1, 2, T1, C) the total.
    The final state (causal, ``final``): fs, fz (T1, BH, C), fref (BH, C); else empty."""
    B, H, LQ, C = q.shape
    LK = k.shape[2]
    BH = B * H
    T1 = order + 1
    NPOW = max(2, next_pow2(T1))
    cps_k, ns_k, ncb = plan_splits(BH, LK, C, block_l, block_c, n_split)
    cps_q, ns_q, _ = plan_splits(BH, LQ, C, block_l, block_c, n_split)  # == keys' plan if causal
    dev = q.device
    f32 = torch.float32
    o = torch.empty((B, H, LQ, C), device=dev, dtype=v.dtype)
    has_init = s0 is not None
    if causal:
        if has_init:
            init = torch.stack([s0, z0], dim=1).to(f32)  # (BH, 2, T1, C)
            init_r = ref0.to(f32)
        else:
            init = torch.zeros((BH, 2, T1, C), device=dev, dtype=f32)
            init_r = torch.full((BH, C), float("inf"), device=dev, dtype=f32)
    if BH * C == 0 or LQ == 0:  # nothing to launch
        if causal:
            st = init[:, None].repeat(1, ns_q, 1, 1, 1)  # fresh tensors: outputs alias nothing
            r = init_r[:, None].repeat(1, ns_q, 1)
            fs, fz, fref = _final(init, init_r, final)
        else:
            st = torch.zeros((BH, 1, 2, T1, C), device=dev, dtype=f32)
            r = torch.zeros((BH, C), device=dev, dtype=f32)
            fs, fz, fref = _final(None, None, False, dev)
        return o, r, st, fs, fz, fref
    has_mask = mask is not None
    smb, sml = (mask.stride(0), mask.stride(1)) if has_mask else (0, 0)
    nw = _num_warps(block_l, block_c)
    meta = dict(ORDER=order, NPOW=NPOW, BL=block_l, BC=block_c, HAS_MASK=has_mask, num_warps=nw)
    if not causal or ns_k > 1:
        rs = torch.empty((BH, ns_k, C), device=dev, dtype=f32)
        st_split = torch.empty((BH, ns_k, 2, T1, C), device=dev, dtype=f32)
        m = mask if has_mask else rs  # dummy pointer, never read
        _SUMS[(BH, ncb, ns_k)](
            k, v, m, st_split, rs, H, LK, C, cps_k, ns_k, *k.stride(), *v.stride(), smb, sml, **meta,
        )
    if causal:
        if ns_k > 1:  # the state at every split start, at the running min there
            st, r = _split_scan(st_split.view(BH, ns_k, 2 * T1, C), rs, init.view(BH, 2 * T1, C), init_r,
                                reverse=False, block_c=block_c)
            st = st.view(BH, ns_k, 2, T1, C)
        else:
            st, r = init[:, None].clone(), init_r[:, None].clone()
        fst = torch.empty((BH, ns_q, 2, T1, C), device=dev, dtype=f32) if final else st
        fr = torch.empty((BH, ns_q, C), device=dev, dtype=f32) if final else r
    else:  # global r (reference: min over valid keys, 0 if none); the total at that scale
        r_all = rs.amin(dim=1)
        r = torch.where(torch.isfinite(r_all), r_all, torch.zeros_like(r_all))
        scale = torch.exp(r[:, None, :] - rs)  # (BH, ns, C); 0 for splits without a valid key
        st = (st_split * scale[:, :, None, None, :]).sum(dim=1, keepdim=True).contiguous()
        fst, fr = st, r  # dummies, never written
    m = mask if has_mask else r
    _OUT[(BH, ncb, ns_q)](
        q, k, v, m, st, r, o, fst, fr, H, LQ, C, cps_q,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), smb, sml,
        CAUSAL=causal, STORE_END=bool(causal and final), **meta,
    )
    if causal and final:
        fs, fz, fref = _final(fst[:, -1], fr[:, -1], True)
    else:
        fs, fz, fref = _final(None, None, False, dev)
    return o, r, st, fs, fz, fref


def _final(st, r, final, dev=None):
    """(BH, 2, T1, C), (BH, C) -> s, z (T1, BH, C), ref (BH, C); empty tensors if not final."""
    if not final:
        e = torch.empty((0,), device=dev if st is None else st.device, dtype=torch.float32)
        return e, e.clone(), e.clone()
    fmt = torch.contiguous_format
    return st[:, 0].transpose(0, 1).clone(memory_format=fmt), st[:, 1].transpose(0, 1).clone(memory_format=fmt), \
        r.clone(memory_format=fmt)


def _bwd_impl(g, q, k, v, mask, r, st, order, causal, block_l, block_c, n_split):
    B, H, LQ, C = q.shape
    LK = k.shape[2]
    BH = B * H
    T1 = order + 1
    NPOW = max(2, next_pow2(T1))
    cps_k, ns_k, ncb = plan_splits(BH, LK, C, block_l, block_c, n_split)
    cps_q, ns_q, _ = plan_splits(BH, LQ, C, block_l, block_c, n_split)
    dev = q.device
    f32 = torch.float32
    dq = torch.empty((B, H, LQ, C), device=dev, dtype=q.dtype)
    dk = torch.empty((B, H, LK, C), device=dev, dtype=k.dtype)
    dv = torch.empty((B, H, LK, C), device=dev, dtype=v.dtype)
    if BH * C == 0 or LQ == 0:
        return dq, dk.zero_(), dv.zero_()
    if causal:
        if st.shape[1] != ns_q or r.shape[1] != ns_q:
            raise RuntimeError("ea_series backward: saved split states do not match the split plan")
        dnum = torch.empty((BH, LQ, C), device=dev, dtype=f32)
        dden = torch.empty((BH, LQ, C), device=dev, dtype=f32)
        mc = torch.empty((BH, ns_q * cps_q, C), device=dev, dtype=f32)
    else:
        dnum = dden = mc = r  # dummies, never read
    gst = torch.empty((BH, ns_q, 2, T1, C), device=dev, dtype=f32)
    has_mask = mask is not None
    m = mask if has_mask else r
    smb, sml = (mask.stride(0), mask.stride(1)) if has_mask else (0, 0)
    nw = _num_warps(block_l, block_c)
    meta = dict(ORDER=order, NPOW=NPOW, BL=block_l, BC=block_c, HAS_MASK=has_mask, CAUSAL=causal, num_warps=nw)
    _BWD_Q[(BH, ncb, ns_q)](
        q, k, v, m, g, st, r, dq, dnum, dden, mc, gst, H, LQ, C, cps_q,
        *q.stride(), *k.stride(), *v.stride(), *g.stride(), *dq.stride(), smb, sml, **meta,
    )
    if causal:  # exclusive suffix over splits, at the scale of the first row after each split
        if ns_q > 1:
            gsuf, gm = _split_scan(gst.view(BH, ns_q, 2 * T1, C), r, None, None, reverse=True, block_c=block_c)
            gsuf = gsuf.view(BH, ns_q, 2, T1, C)
        else:
            gsuf = torch.zeros_like(gst)
            gm = torch.full((BH, 1, C), float("-inf"), device=dev, dtype=f32)
    else:
        gsuf = gst.sum(dim=1, keepdim=True).contiguous()
        gm = r  # dummy
    _BWD_KV[(BH, ncb, ns_k)](
        q, k, v, m, dnum, dden, mc, gsuf, gm, r, dk, dv, H, LK, C, cps_k,
        *q.stride(), *k.stride(), *v.stride(), *dk.stride(), *dv.stride(), smb, sml, **meta,
    )
    return dq, dk, dv


# ----------------------------------------------------------------------------------------
# custom ops (torch.compile-safe) and autograd
# ----------------------------------------------------------------------------------------


@torch.library.custom_op("ea_zoo::ea_series_fwd", mutates_args=())
def _ea_series_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
    s0: Optional[torch.Tensor], z0: Optional[torch.Tensor], ref0: Optional[torch.Tensor],
    order: int, causal: bool, block_l: int, block_c: int, n_split: int, output_final_state: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B, H, L, C); s0, z0 (B*H, order+1, C) and ref0 (B*H, C) float32 or None.
    -> (o, r, st, final s (order+1, B*H, C), final z, final ref (B*H, C)); the final state
    is empty (shape (0,)) unless ``output_final_state``."""
    return _fwd_impl(q, k, v, mask, s0, z0, ref0, order, causal, block_l, block_c, n_split, output_final_state)


@_ea_series_fwd_op.register_fake
def _(q, k, v, mask, s0, z0, ref0, order, causal, block_l, block_c, n_split, output_final_state):
    B, H, L, C = q.shape
    BH = B * H
    _, ns, _ = plan_splits(BH, L, C, block_l, block_c, n_split)
    f32 = torch.float32
    o = q.new_empty((B, H, L, C), dtype=v.dtype)
    if causal:
        r = q.new_empty((BH, ns, C), dtype=f32)
        st = q.new_empty((BH, ns, 2, order + 1, C), dtype=f32)
    else:
        r = q.new_empty((BH, C), dtype=f32)
        st = q.new_empty((BH, 1, 2, order + 1, C), dtype=f32)
    if causal and output_final_state:
        fs = q.new_empty((order + 1, BH, C), dtype=f32)
        fz = q.new_empty((order + 1, BH, C), dtype=f32)
        fref = q.new_empty((BH, C), dtype=f32)
    else:
        fs, fz, fref = (q.new_empty((0,), dtype=f32) for _ in range(3))
    return o, r, st, fs, fz, fref


@torch.library.custom_op("ea_zoo::ea_series_bwd", mutates_args=())
def _ea_series_bwd_op(
    g: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
    r: torch.Tensor, st: torch.Tensor, order: int, causal: bool, block_l: int, block_c: int, n_split: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(g, q, k, v, mask, r, st, order, causal, block_l, block_c, n_split)


@_ea_series_bwd_op.register_fake
def _(g, q, k, v, mask, r, st, order, causal, block_l, block_c, n_split):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, mask, s0, z0, ref0, order, causal, block_l, block_c, n_split, _ = inputs
    _, r, st, fs, fz, fref = output
    ctx.save_for_backward(q, k, v, mask, r, st)  # st, r include the initial state
    ctx.args = (order, causal, block_l, block_c, n_split)
    ctx.mark_non_differentiable(r, st, fs, fz, fref)


def _backward(ctx, grad_o, grad_r, grad_st, grad_fs, grad_fz, grad_fref):
    q, k, v, mask, r, st = ctx.saved_tensors
    if grad_o is None:
        grad_o = torch.zeros_like(v)
    dq, dk, dv = _ea_series_bwd_op(grad_o, q, k, v, mask, r, st, *ctx.args)
    # no gradient into the initial state (it is data, as in truncated BPTT)
    return dq, dk, dv, None, None, None, None, None, None, None, None, None, None


_ea_series_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _state_to_bhc(state, batch: Tuple[int, ...], D: int, BH: int, order: int):
    """{"s", "z": (order+1, *batch, D), "ref": (*batch, D)} -> (BH, T1, C) x 2, (BH, C) float32."""
    if not isinstance(state, dict) or not {"s", "z", "ref"} <= set(state):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"ea_series (triton): initial_state must be a dict with keys 's', 'z', 'ref', got {got}")
    want = {"s": (order + 1, *batch, D), "z": (order + 1, *batch, D), "ref": (*batch, D)}
    for name, shape in want.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(f"ea_series (triton): initial_state[{name!r}] has shape "
                             f"{tuple(state[name].shape)}, expected {shape} (order={order})")
    T1 = order + 1
    s = state["s"].detach().to(torch.float32).reshape(T1, BH, D).transpose(0, 1).contiguous()
    z = state["z"].detach().to(torch.float32).reshape(T1, BH, D).transpose(0, 1).contiguous()
    ref = state["ref"].detach().to(torch.float32).reshape(BH, D).contiguous()
    return s, z, ref


def ea_series_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    order: int = 6,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    initial_state: Optional[Dict[str, torch.Tensor]] = None,
    output_final_state: bool = False,
    block_l: Optional[int] = None,
    block_c: Optional[int] = None,
    n_split: Optional[int] = None,
):
    """EA-series through the Triton kernels (differentiable in q, k, v).

    Takes what ``ea_zoo.functional.ea_series`` takes (q (..., Lq, D), k, v (..., Lk, D),
    float32/float16/bfloat16, ``key_padding_mask`` (B, L) True = keep) and returns the same
    result to float32 rounding. Validation of order is the caller's (the dispatcher's);
    ``block_l``, ``block_c`` (powers of 2) and ``n_split`` (splits of L) tune the launch.

    Causal only: ``initial_state`` = {"s", "z": (order+1, *q.shape[:-2], D), "ref":
    (*q.shape[:-2], D)} (the layout of ``ea_series_init_state`` / ``ea_series_step``: sums
    of earlier keys at scale ref = their min k^2, +inf if none) continues an earlier
    sequence; ``output_final_state=True`` returns ``(o, final_state)`` with the state after
    the last token (float32, same layout), so processing a sequence in pieces, passing the
    final state on, equals one call on the whole. No gradient flows into ``initial_state``
    or out of ``final_state`` (dq, dk, dv are exact given the state). Returns ``o`` (v's
    dtype, q's shape with v's last dim) otherwise.
    """
    if q.shape[:-2] != k.shape[:-2] or k.shape != v.shape or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"ea_series (triton): q (..., Lq, D), k and v (..., Lk, D) must agree, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"ea_series (triton): causal needs Lq == Lk, got {q.shape[-2]} and {k.shape[-2]}")
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"ea_series (triton): order must be in [0, {MAX_ORDER}], got {order}")
    if (initial_state is not None or output_final_state) and not causal:
        raise ValueError("ea_series (triton): initial_state / output_final_state need causal=True "
                         "(a non-causal output depends on every key, so it has no running state)")
    shape = q.shape[:-1] + (v.shape[-1],)
    batch = tuple(q.shape[:-2])
    q4, k4, v4 = as_bhlc(q), as_bhlc(k), as_bhlc(v)
    B, H, L, C = q4.shape
    s0 = z0 = ref0 = None
    if initial_state is not None:
        s0, z0, ref0 = _state_to_bhc(initial_state, batch, C, B * H, order)
        s0, z0, ref0 = s0.to(q.device), z0.to(q.device), ref0.to(q.device)
    mask = mask_u8(key_padding_mask, B, k4.shape[2])
    dbl, dbc = default_blocks(q.device, order)
    block_l = block_l or dbl
    block_c = block_c or dbc
    for name, val in (("block_l", block_l), ("block_c", block_c)):
        if val < 2 or val & (val - 1):
            raise ValueError(f"ea_series (triton): {name} must be a power of 2 >= 2, got {val}")
    if n_split is None:
        n_split = default_split(q.device, B * H, max(L, k4.shape[2]), C, block_l, block_c)
    o, _, _, fs, fz, fref = _ea_series_fwd_op(
        q4, k4, v4, mask, s0, z0, ref0, int(order), bool(causal), int(block_l), int(block_c), int(n_split),
        bool(output_final_state),
    )
    o = o.reshape(shape)
    if not output_final_state:
        return o
    T1 = order + 1
    final = {"s": fs.reshape(T1, *batch, C), "z": fz.reshape(T1, *batch, C), "ref": fref.reshape(*batch, C)}
    return o, final
