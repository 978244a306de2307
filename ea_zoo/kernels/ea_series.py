"""EA-series (Feng 2025 eq. 5-6) in Triton: forward and backward, causal and non-causal.

Math (per channel c; ``ea_zoo.functional.ea_series`` is the reference). With
w_j = m_j e^{r - k_j^2} (m the key mask, r = min over valid keys of k_j^2 per channel, a
constant: no gradient flows through it), a_{n,j} = k_j^n w_j and p_{n,i} = c_n q_i^n,
c_n = 2^n / n!:

    S_{n,i} = sum_{j in J(i)} a_{n,j} v_j,  Z_{n,i} = sum_{j in J(i)} a_{n,j}
    num_i = sum_n p_{n,i} S_{n,i},  den_i = sum_n p_{n,i} Z_{n,i},  y_i = num_i / den_i

with J(i) all keys (non-causal) or j <= i (causal); y_i = 0 where den_i <= 0 (safe_ratio).

Backward, for g_i = dL/dy_i: dnum_i = g_i / den_i, dden_i = -dnum_i y_i (0 where den_i <= 0);

    dq_i = dnum_i sum_n 2 p_{n-1,i} S_{n,i} + dden_i sum_n 2 p_{n-1,i} Z_{n,i}
           (d p_{n,i} / d q_i = n c_n q_i^{n-1} = 2 p_{n-1,i})
    GS_{n,j} = sum_{i: j in J(i)} p_{n,i} dnum_i,  GZ_{n,j} = sum_{i: j in J(i)} p_{n,i} dden_i
    h_{n,j} = v_j GS_{n,j} + GZ_{n,j}
    dv_j = w_j sum_n k_j^n GS_{n,j}
    dk_j = w_j (sum_n n k_j^{n-1} h_{n,j} - 2 k_j sum_n k_j^n h_{n,j})

(causal: GS, GZ are suffix sums over i >= j). Nothing of size (order+1) x L x D is stored:
the forward saves only r (B*H, D) and the (order+1) x 2 running sums at split starts;
the backward recomputes S, Z, num and den.

Kernels: grid (B*H, channel blocks of BC, NS splits of L). Each program walks its split
in chunks of BL rows with the (order+1) x 2 state of its BC channels in registers
(an (NPOW, BC) tile each for S and Z; row n is read and written with a one-hot select).
Within a chunk the causal prefix sums are ``tl.cumsum`` along L. Splits give parallelism
when B*H*D/BC is small (long sequences, small batch): a first pass computes each split's
sums (with a running per-split min of k^2, rescaling when it drops), PyTorch combines
them (global r, exclusive prefix over splits or the total), and the output pass starts
every split from its prefix. Launches: forward 2, backward 2 (+ tiny torch glue).

Memory traffic (in units of one B x L x D tensor): non-causal forward reads k, v then q and
writes o (4, the minimum); causal forward reads k (v too when split) in the first pass, then
q, k, v and writes o (5-6). Non-causal backward reads q, do / k, v and writes dq / dk, dv (7);
causal backward also writes and re-reads dnum, dden (float32 scratch, 2 x B x L x D) and
re-reads q, k, v for the reverse scan.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton.language as tl

from ea_zoo.kernels import MAX_ORDER
from ea_zoo.kernels._triton_utils import (
    LazyKernel,
    as_bhlc,
    cdiv,
    cuda_sm_count,
    mask_u8,
    next_pow2,
)

__all__ = ["ea_series_triton", "plan_splits"]


# ----------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------

# Reductions and scans call tl.reduce / tl.associative_scan with triton's own combine
# functions: the same code tl.sum / tl.cumsum / tl.min compile to, and the Triton interpreter
# maps these combine functions straight to numpy (a call to the @jit wrappers costs ~3 ms
# there, which would dominate the CPU test time).
_SUM = tl.standard._sum_combine
_MIN = tl.standard._elementwise_min


def _series_sums_kernel(
    K, V, MASK, ST, RS,
    H, L, C, CPS, NS,
    skb, skh, skl, skc,
    svb, svh, svl, svc,
    smb, sml,
    ORDER: tl.constexpr, NPOW: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
    HAS_MASK: tl.constexpr, SUMS: tl.constexpr,
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
        if SUMS:
            drop = r_new < r
            scale = tl.exp(tl.where(drop, r_new, 0.0) - tl.where(drop, r, 0.0))  # 0 if r was +inf
            S = S * scale[None, :]
            Z = Z * scale[None, :]
            v = tl.load(vbase + offs_l[:, None] * svl + offs_c[None, :] * svc, mask=valid, other=0.0).to(tl.float32)
            a = tl.exp(tl.where(valid, r_new[None, :] - k2, float("-inf")))
            for n in tl.static_range(T1):
                sel = rows[:, None] == n
                Z += tl.where(sel, tl.reduce(a, 0, _SUM)[None, :], 0.0)
                S += tl.where(sel, tl.reduce(a * v, 0, _SUM)[None, :], 0.0)
                a = a * k
        r = r_new
    bhs = bh * NS + ps
    tl.store(RS + bhs * C + offs_c, r, mask=cmask)
    if SUMS:
        st = ST + bhs * 2 * T1 * C + rows[:, None] * C + offs_c[None, :]
        smask = (rows[:, None] < T1) & cmask[None, :]
        tl.store(st, S, mask=smask)
        tl.store(st + T1 * C, Z, mask=smask)


def _series_out_kernel(
    Q, K, V, MASK, ST, R, O,
    H, L, C, CPS,
    sqb, sqh, sql, sqc,
    skb, skh, skl, skc,
    svb, svh, svl, svc,
    sob, soh, sol, soc,
    smb, sml,
    ORDER: tl.constexpr, NPOW: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, ST_SPLIT: tl.constexpr,
):
    """y = num / den for the split's rows, from the (S, Z) state at the split start."""
    T1: tl.constexpr = ORDER + 1
    bh = tl.program_id(0).to(tl.int64)
    pc = tl.program_id(1)
    ps = tl.program_id(2)
    b = bh // H
    h = bh % H
    offs_c = pc * BC + tl.arange(0, BC)
    cmask = offs_c < C
    rows = tl.arange(0, NPOW)
    smask = (rows[:, None] < T1) & cmask[None, :]
    if ST_SPLIT:  # one state per split (causal prefix) or one per sequence (non-causal total)
        st = ST + (bh * tl.num_programs(2) + ps) * (2 * T1 * C)
    else:
        st = ST + bh * (2 * T1 * C)
    st = st + rows[:, None] * C + offs_c[None, :]
    S = tl.load(st, mask=smask, other=0.0)
    Z = tl.load(st + T1 * C, mask=smask, other=0.0)
    r = tl.load(R + bh * C + offs_c, mask=cmask, other=0.0)
    qbase = Q + b * sqb + h * sqh
    kbase = K + b * skb + h * skh
    vbase = V + b * svb + h * svh
    obase = O + b * sob + h * soh
    for ci in range(0, CPS):
        offs_l = (ps * CPS + ci) * BL + tl.arange(0, BL)
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
            a = tl.exp(tl.where(valid, r[None, :] - k * k, float("-inf")))
            dS = tl.full((NPOW, BC), 0.0, tl.float32)
            dZ = tl.full((NPOW, BC), 0.0, tl.float32)
            for n in tl.static_range(T1):
                sel = rows[:, None] == n
                av = a * v
                s_n = tl.reduce(tl.where(sel, S, 0.0), 0, _SUM)[None, :] + tl.associative_scan(av, 0, _SUM)
                z_n = tl.reduce(tl.where(sel, Z, 0.0), 0, _SUM)[None, :] + tl.associative_scan(a, 0, _SUM)
                num += pq * s_n
                den += pq * z_n
                dS += tl.where(sel, tl.reduce(av, 0, _SUM)[None, :], 0.0)
                dZ += tl.where(sel, tl.reduce(a, 0, _SUM)[None, :], 0.0)
                a = a * k
                pq = pq * q2 / (n + 1)
            S += dS
            Z += dZ
        else:
            for n in tl.static_range(T1):
                sel = rows[:, None] == n
                num += pq * tl.reduce(tl.where(sel, S, 0.0), 0, _SUM)[None, :]
                den += pq * tl.reduce(tl.where(sel, Z, 0.0), 0, _SUM)[None, :]
                pq = pq * q2 / (n + 1)
        ok = den > 0.0
        y = tl.where(ok, num / tl.where(ok, den, 1.0), 0.0)
        tl.store(obase + offs_l[:, None] * sol + offs_c[None, :] * soc, y.to(O.dtype.element_ty), mask=io_mask)


def _series_bwd_q_kernel(
    Q, K, V, MASK, G, ST, R, DQ, DNUM, DDEN, GST,
    H, L, C, CPS,
    sqb, sqh, sql, sqc,
    skb, skh, skl, skc,
    svb, svh, svl, svc,
    sgb, sgh, sgl, sgc,
    sdb, sdh, sdl, sdc,
    smb, sml,
    ORDER: tl.constexpr, NPOW: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, ST_SPLIT: tl.constexpr,
):
    """Forward-direction pass of the backward: recompute S, Z, num, den; write dq (and, causal,
    dnum, dden); per split, GST = (sum_i p_{n,i} dnum_i, sum_i p_{n,i} dden_i)."""
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
    if ST_SPLIT:  # one state per split (causal prefix) or one per sequence (non-causal total)
        st = ST + (bh * tl.num_programs(2) + ps) * (2 * T1 * C)
    else:
        st = ST + bh * (2 * T1 * C)
    st = st + rows[:, None] * C + offs_c[None, :]
    S = tl.load(st, mask=smask, other=0.0)
    Z = tl.load(st + T1 * C, mask=smask, other=0.0)
    r = tl.load(R + bh * C + offs_c, mask=cmask, other=0.0)
    GS = tl.full((NPOW, BC), 0.0, tl.float32)
    GZ = tl.full((NPOW, BC), 0.0, tl.float32)
    qbase = Q + b * sqb + h * sqh
    kbase = K + b * skb + h * skh
    vbase = V + b * svb + h * svh
    gbase = G + b * sgb + h * sgh
    dqbase = DQ + b * sdb + h * sdh
    for ci in range(0, CPS):
        offs_l = (ps * CPS + ci) * BL + tl.arange(0, BL)
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
            valid = io_mask
            if HAS_MASK:
                km = tl.load(MASK + b * smb + offs_l * sml, mask=lmask, other=0)
                valid = valid & (km != 0)[:, None]
            k = tl.load(kbase + offs_l[:, None] * skl + offs_c[None, :] * skc, mask=valid, other=0.0).to(tl.float32)
            v = tl.load(vbase + offs_l[:, None] * svl + offs_c[None, :] * svc, mask=valid, other=0.0).to(tl.float32)
            a = tl.exp(tl.where(valid, r[None, :] - k * k, float("-inf")))
            dS = tl.full((NPOW, BC), 0.0, tl.float32)
            dZ = tl.full((NPOW, BC), 0.0, tl.float32)
            for n in tl.static_range(T1):
                sel = rows[:, None] == n
                av = a * v
                s_n = tl.reduce(tl.where(sel, S, 0.0), 0, _SUM)[None, :] + tl.associative_scan(av, 0, _SUM)
                z_n = tl.reduce(tl.where(sel, Z, 0.0), 0, _SUM)[None, :] + tl.associative_scan(a, 0, _SUM)
                num += pq * s_n
                den += pq * z_n
                dnum_acc += 2.0 * pq_prev * s_n
                dden_acc += 2.0 * pq_prev * z_n
                dS += tl.where(sel, tl.reduce(av, 0, _SUM)[None, :], 0.0)
                dZ += tl.where(sel, tl.reduce(a, 0, _SUM)[None, :], 0.0)
                a = a * k
                pq_prev = pq
                pq = pq * q2 / (n + 1)
            S += dS
            Z += dZ
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
    Q, K, V, MASK, DNUM, DDEN, GST, R, DK, DV,
    H, L, C, CPS,
    sqb, sqh, sql, sqc,
    skb, skh, skl, skc,
    svb, svh, svl, svc,
    sdkb, sdkh, sdkl, sdkc,
    sdvb, sdvh, sdvl, sdvc,
    smb, sml,
    ORDER: tl.constexpr, NPOW: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, ST_SPLIT: tl.constexpr,
):
    """dk, dv from GS, GZ: the totals (non-causal) or a reverse scan over the split from the
    suffix state after it (causal)."""
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
    if ST_SPLIT:  # suffix state per split (causal) or the total (non-causal)
        gst = GST + (bh * NS + ps) * (2 * T1 * C)
    else:
        gst = GST + bh * (2 * T1 * C)
    gst = gst + rows[:, None] * C + offs_c[None, :]
    GS = tl.load(gst, mask=smask, other=0.0)
    GZ = tl.load(gst + T1 * C, mask=smask, other=0.0)
    r = tl.load(R + bh * C + offs_c, mask=cmask, other=0.0)
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
        offs_l = chunk * BL + tl.arange(0, BL)
        lmask = offs_l < L
        io_mask = lmask[:, None] & cmask[None, :]
        valid = io_mask
        if HAS_MASK:
            km = tl.load(MASK + b * smb + offs_l * sml, mask=lmask, other=0)
            valid = valid & (km != 0)[:, None]
        k = tl.load(kbase + offs_l[:, None] * skl + offs_c[None, :] * skc, mask=valid, other=0.0).to(tl.float32)
        v = tl.load(vbase + offs_l[:, None] * svl + offs_c[None, :] * svc, mask=valid, other=0.0).to(tl.float32)
        w = tl.exp(tl.where(valid, r[None, :] - k * k, float("-inf")))
        dv_acc = tl.full((BL, BC), 0.0, tl.float32)  # sum_n k^n GS_n
        dk1 = tl.full((BL, BC), 0.0, tl.float32)  # sum_n n k^{n-1} h_n
        dk2 = tl.full((BL, BC), 0.0, tl.float32)  # sum_n k^n h_n
        kp = tl.full((BL, BC), 1.0, tl.float32)
        kpm1 = tl.full((BL, BC), 0.0, tl.float32)
        if CAUSAL:
            q = tl.load(qbase + offs_l[:, None] * sql + offs_c[None, :] * sqc, mask=io_mask, other=0.0).to(tl.float32)
            q2 = 2.0 * q
            sc = (bh * L + offs_l[:, None]) * C + offs_c[None, :]
            dnum = tl.load(DNUM + sc, mask=io_mask, other=0.0)
            dden = tl.load(DDEN + sc, mask=io_mask, other=0.0)
            pq = tl.full((BL, BC), 1.0, tl.float32)
            dGS = tl.full((NPOW, BC), 0.0, tl.float32)
            dGZ = tl.full((NPOW, BC), 0.0, tl.float32)
            for n in tl.static_range(T1):
                sel = rows[:, None] == n
                pd = pq * dnum
                pz = pq * dden
                gs = tl.reduce(tl.where(sel, GS, 0.0), 0, _SUM)[None, :] + tl.associative_scan(pd, 0, _SUM, reverse=True)
                gz = tl.reduce(tl.where(sel, GZ, 0.0), 0, _SUM)[None, :] + tl.associative_scan(pz, 0, _SUM, reverse=True)
                dGS += tl.where(sel, tl.reduce(pd, 0, _SUM)[None, :], 0.0)
                dGZ += tl.where(sel, tl.reduce(pz, 0, _SUM)[None, :], 0.0)
                hh = v * gs + gz
                dv_acc += kp * gs
                dk1 += n * kpm1 * hh
                dk2 += kp * hh
                kpm1 = kp
                kp = kp * k
                pq = pq * q2 / (n + 1)
            GS += dGS
            GZ += dGZ
        else:
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


def _fwd_impl(q, k, v, mask, order, causal, block_l, block_c, n_split):
    B, H, LQ, C = q.shape
    LK = k.shape[2]
    BH = B * H
    T1 = order + 1
    NPOW = max(2, next_pow2(T1))
    cps_k, ns_k, ncb = plan_splits(BH, LK, C, block_l, block_c, n_split)
    cps_q, ns_q, _ = plan_splits(BH, LQ, C, block_l, block_c, n_split)  # == keys' plan if causal
    dev = q.device
    o = torch.empty((B, H, LQ, C), device=dev, dtype=v.dtype)
    rs = torch.empty((BH, ns_k, C), device=dev, dtype=torch.float32)
    need_sums = (not causal) or ns_k > 1
    if BH * C == 0 or LQ == 0:  # nothing to launch
        st = torch.zeros((BH, ns_q if causal else 1, 2, T1, C), device=dev, dtype=torch.float32)
        return o, torch.zeros((BH, C), device=dev, dtype=torch.float32), st
    st_split = torch.empty((BH, ns_k, 2, T1, C) if need_sums else (1,), device=dev, dtype=torch.float32)
    has_mask = mask is not None
    m = mask if has_mask else rs  # dummy pointer, never read
    smb, sml = (mask.stride(0), mask.stride(1)) if has_mask else (0, 0)
    nw = _num_warps(block_l, block_c)
    meta = dict(ORDER=order, NPOW=NPOW, BL=block_l, BC=block_c, HAS_MASK=has_mask, num_warps=nw)
    _SUMS[(BH, ncb, ns_k)](
        k, v, m, st_split, rs, H, LK, C, cps_k, ns_k, *k.stride(), *v.stride(), smb, sml, SUMS=need_sums, **meta,
    )
    # combine the splits: global r (reference: min over valid keys, 0 if none), rescale
    r_all = rs.amin(dim=1)
    r = torch.where(torch.isfinite(r_all), r_all, torch.zeros_like(r_all))
    if need_sums:
        scale = torch.exp(r[:, None, :] - rs)  # (BH, ns, C); 0 for splits without a valid key
        st_split = st_split * scale[:, :, None, None, :]
        if causal:  # exclusive prefix over splits
            st = torch.cat([torch.zeros_like(st_split[:, :1]), st_split[:, :-1].cumsum(dim=1)], dim=1)
        else:
            st = st_split.sum(dim=1, keepdim=True)
    else:
        st = torch.zeros((BH, 1, 2, T1, C), device=dev, dtype=torch.float32)
    st = st.contiguous()
    _OUT[(BH, ncb, ns_q)](
        q, k, v, m, st, r, o, H, LQ, C, cps_q,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), smb, sml,
        CAUSAL=causal, ST_SPLIT=st.shape[1] > 1, **meta,
    )
    return o, r, st


def _bwd_impl(g, q, k, v, mask, r, st, order, causal, block_l, block_c, n_split):
    B, H, LQ, C = q.shape
    LK = k.shape[2]
    BH = B * H
    T1 = order + 1
    NPOW = max(2, next_pow2(T1))
    cps_k, ns_k, ncb = plan_splits(BH, LK, C, block_l, block_c, n_split)
    cps_q, ns_q, _ = plan_splits(BH, LQ, C, block_l, block_c, n_split)
    dev = q.device
    dq = torch.empty((B, H, LQ, C), device=dev, dtype=q.dtype)
    dk = torch.empty((B, H, LK, C), device=dev, dtype=k.dtype)
    dv = torch.empty((B, H, LK, C), device=dev, dtype=v.dtype)
    if causal:
        dnum = torch.empty((BH, LQ, C), device=dev, dtype=torch.float32)
        dden = torch.empty((BH, LQ, C), device=dev, dtype=torch.float32)
    else:
        dnum = dden = r  # dummies, never read
    if BH * C == 0 or LQ == 0:
        return dq, dk.zero_(), dv.zero_()
    gst = torch.empty((BH, ns_q, 2, T1, C), device=dev, dtype=torch.float32)
    has_mask = mask is not None
    m = mask if has_mask else r
    smb, sml = (mask.stride(0), mask.stride(1)) if has_mask else (0, 0)
    nw = _num_warps(block_l, block_c)
    meta = dict(ORDER=order, NPOW=NPOW, BL=block_l, BC=block_c, HAS_MASK=has_mask, CAUSAL=causal, num_warps=nw)
    st_split = st.shape[1] > 1
    if st_split and st.shape[1] != ns_q:
        raise RuntimeError("ea_series backward: saved split states do not match the split plan")
    _BWD_Q[(BH, ncb, ns_q)](
        q, k, v, m, g, st, r, dq, dnum, dden, gst, H, LQ, C, cps_q,
        *q.stride(), *k.stride(), *v.stride(), *g.stride(), *dq.stride(), smb, sml,
        ST_SPLIT=st_split, **meta,
    )
    if causal:  # exclusive suffix over splits: the queries after each split
        rev = gst.flip(1)
        gsuf = torch.cat([torch.zeros_like(rev[:, :1]), rev[:, :-1].cumsum(dim=1)], dim=1).flip(1)
    else:
        gsuf = gst.sum(dim=1, keepdim=True)
    gsuf = gsuf.contiguous()
    _BWD_KV[(BH, ncb, ns_k)](
        q, k, v, m, dnum, dden, gsuf, r, dk, dv, H, LK, C, cps_k,
        *q.stride(), *k.stride(), *v.stride(), *dk.stride(), *dv.stride(), smb, sml,
        ST_SPLIT=gsuf.shape[1] > 1, **meta,
    )
    return dq, dk, dv


# ----------------------------------------------------------------------------------------
# custom ops (torch.compile-safe) and autograd
# ----------------------------------------------------------------------------------------


@torch.library.custom_op("ea_zoo::ea_series_fwd", mutates_args=())
def _ea_series_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
    order: int, causal: bool, block_l: int, block_c: int, n_split: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd_impl(q, k, v, mask, order, causal, block_l, block_c, n_split)


@_ea_series_fwd_op.register_fake
def _(q, k, v, mask, order, causal, block_l, block_c, n_split):
    B, H, L, C = q.shape
    _, ns, _ = plan_splits(B * H, L, C, block_l, block_c, n_split)
    o = q.new_empty((B, H, L, C), dtype=v.dtype)
    r = q.new_empty((B * H, C), dtype=torch.float32)
    st = q.new_empty((B * H, ns if causal else 1, 2, order + 1, C), dtype=torch.float32)
    return o, r, st


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
    q, k, v, mask, order, causal, block_l, block_c, n_split = inputs
    _, r, st = output
    ctx.save_for_backward(q, k, v, mask, r, st)
    ctx.args = (order, causal, block_l, block_c, n_split)
    ctx.mark_non_differentiable(r, st)


def _backward(ctx, grad_o, grad_r, grad_st):
    q, k, v, mask, r, st = ctx.saved_tensors
    if grad_o is None:
        grad_o = torch.zeros_like(v)
    dq, dk, dv = _ea_series_bwd_op(grad_o, q, k, v, mask, r, st, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


_ea_series_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def ea_series_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    order: int = 6,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    block_l: Optional[int] = None,
    block_c: Optional[int] = None,
    n_split: Optional[int] = None,
) -> torch.Tensor:
    """EA-series through the Triton kernels (differentiable in q, k, v).

    Takes what ``ea_zoo.functional.ea_series`` takes (q (..., Lq, D), k, v (..., Lk, D),
    float32/float16/bfloat16, ``key_padding_mask`` (B, L) True = keep) and returns the same
    result to float32 rounding. Validation of order/shapes is the caller's (the dispatcher's);
    ``block_l``, ``block_c`` (powers of 2) and ``n_split`` (splits of L) tune the launch.
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
    shape = q.shape[:-1] + (v.shape[-1],)
    q4, k4, v4 = as_bhlc(q), as_bhlc(k), as_bhlc(v)
    B, H, L, C = q4.shape
    mask = mask_u8(key_padding_mask, B, k4.shape[2])
    dbl, dbc = default_blocks(q.device, order)
    block_l = block_l or dbl
    block_c = block_c or dbc
    for name, val in (("block_l", block_l), ("block_c", block_c)):
        if val < 2 or val & (val - 1):
            raise ValueError(f"ea_series (triton): {name} must be a power of 2 >= 2, got {val}")
    if n_split is None:
        n_split = default_split(q.device, B * H, max(L, k4.shape[2]), C, block_l, block_c)
    o, _, _ = _ea_series_fwd_op(q4, k4, v4, mask, int(order), bool(causal), int(block_l), int(block_c), int(n_split))
    return o.reshape(shape)
