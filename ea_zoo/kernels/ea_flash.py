"""Full EA (Feng 2025 eq. 1-2) in Triton, flash-attention style: O(L D) memory.

Per channel c, y_i = sum_j e^{s_ij} v_j / sum_j e^{s_ij} with s_ij = -(q_i - k_j)^2: a softmax
over keys for every (query, channel) pair. ``ea_zoo.functional.ea`` is the reference.

Forward: grid (query blocks of BM, B*H, channel blocks of BC). A program holds a (BM, BC)
tile of queries and walks the keys in tiles of BN, forming the (BM, BN, BC) logits in
registers, with an online max m_i and normaliser l_i per (query, channel) (flash attention
with the softmax per channel instead of per row). It stores y and, for the backward, the
per-(query, channel) log-sum-exp lse_i = m_i + log l_i (base 2 internally; +inf where a
query sees no valid key, so its weights recompute as 0 and y = 0 as in ``safe_ratio``).
Causal programs stop at the diagonal tile.

Backward (flash-attention-2, per channel): with P_ij = e^{s_ij - lse_i}, g_i = dL/dy_i and
Delta_i = g_i y_i (= sum_j P_ij g_i v_j), dS_ij = P_ij (g_i v_j - Delta_i) and

    dv_j = sum_i P_ij g_i,   dk_j = sum_i dS_ij 2 (q_i - k_j),   dq_i = -sum_j dS_ij 2 (q_i - k_j).

One kernel per key tile accumulates dk, dv over query tiles (grid (key blocks, B*H, channel
blocks)); one kernel per query tile accumulates dq over key tiles. Both recompute P from
q, k and lse; nothing of size L x L is stored.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ea_zoo.kernels._triton_utils import LazyKernel, as_bhlc, cdiv, mask_u8

__all__ = ["ea_flash_triton"]

LOG2E = 1.4426950408889634

_SUM = tl.standard._sum_combine  # see ea_zoo.kernels.ea_series: tl.reduce with triton's combiners
_MAX = tl.standard._elementwise_max


def _ea_fwd_kernel(
    Q, K, V, MASK, O, LSE,
    H, LQ, LK, C,
    sqb, sqh, sql, sqc,
    skb, skh, skl, skc,
    svb, svh, svl, svc,
    sob, soh, sol, soc,
    smb, sml,
    BM: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr,
):
    pm = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    pc = tl.program_id(2)
    b = bh // H
    h = bh % H
    offs_m = pm * BM + tl.arange(0, BM)
    offs_c = pc * BC + tl.arange(0, BC)
    mmask = offs_m < LQ
    cmask = offs_c < C
    io_mask = mmask[:, None] & cmask[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sql + offs_c[None, :] * sqc, mask=io_mask, other=0.0)
    q = q.to(tl.float32)
    m_i = tl.full((BM, BC), float("-inf"), tl.float32)
    l_i = tl.full((BM, BC), 0.0, tl.float32)
    acc = tl.full((BM, BC), 0.0, tl.float32)
    kbase = K + b * skb + h * skh
    vbase = V + b * svb + h * svh
    if CAUSAL:
        hi = tl.minimum((pm + 1) * BM, LK)
    else:
        hi = LK
    for start_n in range(0, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        nmask = offs_n < LK
        if HAS_MASK:
            km = tl.load(MASK + b * smb + offs_n * sml, mask=nmask, other=0)
            nmask = nmask & (km != 0)
        kv_mask = nmask[:, None] & cmask[None, :]
        k = tl.load(kbase + offs_n[:, None] * skl + offs_c[None, :] * skc, mask=kv_mask, other=0.0).to(tl.float32)
        v = tl.load(vbase + offs_n[:, None] * svl + offs_c[None, :] * svc, mask=kv_mask, other=0.0).to(tl.float32)
        d = q[:, None, :] - k[None, :, :]
        s = -(d * d) * 1.4426950408889634  # log2 units
        valid = nmask[None, :, None]
        if CAUSAL:
            valid = valid & (offs_n[None, :, None] <= offs_m[:, None, None])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(s, 1, _MAX))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None, :])
        l_i = l_i * alpha + tl.reduce(p, 1, _SUM)
        acc = acc * alpha + tl.reduce(p * v[None, :, :], 1, _SUM)
        m_i = m_new
    ok = l_i > 0.0
    y = tl.where(ok, acc / tl.where(ok, l_i, 1.0), 0.0)
    lse = tl.where(ok, m_i + tl.log2(tl.where(ok, l_i, 1.0)), float("inf"))
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sol + offs_c[None, :] * soc,
             y.to(O.dtype.element_ty), mask=io_mask)
    tl.store(LSE + (bh * LQ + offs_m[:, None]) * C + offs_c[None, :], lse, mask=io_mask)


def _ea_bwd_dkdv_kernel(
    Q, K, V, MASK, G, LSE, DELTA, DK, DV,
    H, LQ, LK, C,
    sqb, sqh, sql, sqc,
    skb, skh, skl, skc,
    svb, svh, svl, svc,
    sgb, sgh, sgl, sgc,
    sdkb, sdkh, sdkl, sdkc,
    sdvb, sdvh, sdvl, sdvc,
    smb, sml,
    BM: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr,
):
    pn = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    pc = tl.program_id(2)
    b = bh // H
    h = bh % H
    offs_n = pn * BN + tl.arange(0, BN)
    offs_c = pc * BC + tl.arange(0, BC)
    cmask = offs_c < C
    nmask = offs_n < LK
    io_mask = nmask[:, None] & cmask[None, :]
    if HAS_MASK:
        km = tl.load(MASK + b * smb + offs_n * sml, mask=nmask, other=0)
        nmask = nmask & (km != 0)
    k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skl + offs_c[None, :] * skc, mask=io_mask, other=0.0)
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svl + offs_c[None, :] * svc, mask=io_mask, other=0.0)
    k = k.to(tl.float32)
    v = v.to(tl.float32)
    dk = tl.full((BN, BC), 0.0, tl.float32)
    dv = tl.full((BN, BC), 0.0, tl.float32)
    qbase = Q + b * sqb + h * sqh
    gbase = G + b * sgb + h * sgh
    if CAUSAL:
        lo = (pn * BN // BM) * BM
    else:
        lo = 0
    for start_m in range(lo, LQ, BM):
        offs_m = start_m + tl.arange(0, BM)
        mmask = offs_m < LQ
        q_mask = mmask[:, None] & cmask[None, :]
        q = tl.load(qbase + offs_m[:, None] * sql + offs_c[None, :] * sqc, mask=q_mask, other=0.0).to(tl.float32)
        g = tl.load(gbase + offs_m[:, None] * sgl + offs_c[None, :] * sgc, mask=q_mask, other=0.0).to(tl.float32)
        sc = (bh * LQ + offs_m[:, None]) * C + offs_c[None, :]
        lse = tl.load(LSE + sc, mask=q_mask, other=float("inf"))
        delta = tl.load(DELTA + sc, mask=q_mask, other=0.0)
        d = q[:, None, :] - k[None, :, :]
        valid = nmask[None, :, None]
        if CAUSAL:
            valid = valid & (offs_n[None, :, None] <= offs_m[:, None, None])
        p = tl.where(valid, tl.exp2(-(d * d) * 1.4426950408889634 - lse[:, None, :]), 0.0)
        dv += tl.reduce(p * g[:, None, :], 0, _SUM)
        ds = p * (g[:, None, :] * v[None, :, :] - delta[:, None, :])
        dk += tl.reduce(ds * d, 0, _SUM)
    dk = 2.0 * dk
    tl.store(DK + b * sdkb + h * sdkh + offs_n[:, None] * sdkl + offs_c[None, :] * sdkc,
             dk.to(DK.dtype.element_ty), mask=io_mask)
    tl.store(DV + b * sdvb + h * sdvh + offs_n[:, None] * sdvl + offs_c[None, :] * sdvc,
             dv.to(DV.dtype.element_ty), mask=io_mask)


def _ea_bwd_dq_kernel(
    Q, K, V, MASK, G, LSE, DELTA, DQ,
    H, LQ, LK, C,
    sqb, sqh, sql, sqc,
    skb, skh, skl, skc,
    svb, svh, svl, svc,
    sgb, sgh, sgl, sgc,
    sdb, sdh, sdl, sdc,
    smb, sml,
    BM: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr,
):
    pm = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    pc = tl.program_id(2)
    b = bh // H
    h = bh % H
    offs_m = pm * BM + tl.arange(0, BM)
    offs_c = pc * BC + tl.arange(0, BC)
    mmask = offs_m < LQ
    cmask = offs_c < C
    io_mask = mmask[:, None] & cmask[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sql + offs_c[None, :] * sqc, mask=io_mask, other=0.0)
    g = tl.load(G + b * sgb + h * sgh + offs_m[:, None] * sgl + offs_c[None, :] * sgc, mask=io_mask, other=0.0)
    q = q.to(tl.float32)
    g = g.to(tl.float32)
    sc = (bh * LQ + offs_m[:, None]) * C + offs_c[None, :]
    lse = tl.load(LSE + sc, mask=io_mask, other=float("inf"))
    delta = tl.load(DELTA + sc, mask=io_mask, other=0.0)
    dq = tl.full((BM, BC), 0.0, tl.float32)
    kbase = K + b * skb + h * skh
    vbase = V + b * svb + h * svh
    if CAUSAL:
        hi = tl.minimum((pm + 1) * BM, LK)
    else:
        hi = LK
    for start_n in range(0, hi, BN):
        offs_n = start_n + tl.arange(0, BN)
        nmask = offs_n < LK
        if HAS_MASK:
            km = tl.load(MASK + b * smb + offs_n * sml, mask=nmask, other=0)
            nmask = nmask & (km != 0)
        kv_mask = nmask[:, None] & cmask[None, :]
        k = tl.load(kbase + offs_n[:, None] * skl + offs_c[None, :] * skc, mask=kv_mask, other=0.0).to(tl.float32)
        v = tl.load(vbase + offs_n[:, None] * svl + offs_c[None, :] * svc, mask=kv_mask, other=0.0).to(tl.float32)
        d = q[:, None, :] - k[None, :, :]
        valid = nmask[None, :, None]
        if CAUSAL:
            valid = valid & (offs_n[None, :, None] <= offs_m[:, None, None])
        p = tl.where(valid, tl.exp2(-(d * d) * 1.4426950408889634 - lse[:, None, :]), 0.0)
        ds = p * (g[:, None, :] * v[None, :, :] - delta[:, None, :])
        dq += tl.reduce(ds * d, 1, _SUM)
    dq = -2.0 * dq
    tl.store(DQ + b * sdb + h * sdh + offs_m[:, None] * sdl + offs_c[None, :] * sdc,
             dq.to(DQ.dtype.element_ty), mask=io_mask)


def _configs():
    # (BM, BN, BC, warps) that compile for sm_90 without (or with < 16 bytes of) register spills
    # on all three kernels (cuobjdump --dump-resource-usage); the autotuner picks among them.
    cfgs = []
    for bm, bn, bc, nw in ((16, 16, 32, 4), (16, 32, 32, 4), (32, 16, 32, 8), (32, 32, 16, 8), (16, 16, 16, 4)):
        cfgs.append(triton.Config({"BM": bm, "BN": bn, "BC": bc}, num_warps=nw, num_stages=2))
    return cfgs


_KEY = ["LQ", "LK", "C", "HAS_MASK", "CAUSAL"]
_FWD = LazyKernel(_ea_fwd_kernel, configs=_configs(), key=_KEY)
_DKDV = LazyKernel(_ea_bwd_dkdv_kernel, configs=_configs(), key=_KEY)
_DQ = LazyKernel(_ea_bwd_dq_kernel, configs=_configs(), key=_KEY)

#: tile sizes used when not autotuning (the interpreter); tests may override
INTERPRET_BLOCKS = {"BM": 16, "BN": 16, "BC": 16}


def _launch(kern: LazyKernel, nblocks_len: int, BH: int, C: int, blocks: Optional[dict], args, kwargs):
    if kern.autotuned and blocks is None:
        grid = lambda meta: (cdiv(nblocks_len, meta["BM" if kern is not _DKDV else "BN"]), BH, cdiv(C, meta["BC"]))
        kern[grid](*args, **kwargs)
    else:
        bl = dict(INTERPRET_BLOCKS if blocks is None else blocks)
        tile = bl["BN"] if kern is _DKDV else bl["BM"]
        grid = (cdiv(nblocks_len, tile), BH, cdiv(C, bl["BC"]))
        if kern.autotuned:  # explicit blocks on a compiled build: bypass the autotuner
            kern.get().fn[grid](*args, **kwargs, **bl, num_warps=4)
        else:
            kern[grid](*args, **kwargs, **bl)


def _blocks_arg(blocks: Sequence[int]) -> Optional[dict]:
    if blocks[0] <= 0:
        return None
    return {"BM": int(blocks[0]), "BN": int(blocks[1]), "BC": int(blocks[2])}


def _fwd_impl(q, k, v, mask, causal, blocks):
    B, H, LQ, C = q.shape
    LK = k.shape[2]
    dev = q.device
    o = torch.empty((B, H, LQ, C), device=dev, dtype=v.dtype)
    lse = torch.empty((B * H, LQ, C), device=dev, dtype=torch.float32)
    if B * H * C * LQ == 0:
        return o, lse
    has_mask = mask is not None
    m = mask if has_mask else lse
    smb, sml = (mask.stride(0), mask.stride(1)) if has_mask else (0, 0)
    args = (q, k, v, m, o, lse, H, LQ, LK, C, *q.stride(), *k.stride(), *v.stride(), *o.stride(), smb, sml)
    _launch(_FWD, LQ, B * H, C, _blocks_arg(blocks), args, dict(HAS_MASK=has_mask, CAUSAL=causal))
    return o, lse


def _bwd_impl(g, q, k, v, mask, o, lse, causal, blocks):
    B, H, LQ, C = q.shape
    LK = k.shape[2]
    dev = q.device
    delta = (g.float() * o.float()).reshape(B * H, LQ, C).contiguous()  # Delta_i = g_i y_i
    dq = torch.empty((B, H, LQ, C), device=dev, dtype=q.dtype)
    dk = torch.empty((B, H, LK, C), device=dev, dtype=k.dtype)
    dv = torch.empty((B, H, LK, C), device=dev, dtype=v.dtype)
    if B * H * C * LQ == 0:
        return dq, dk.zero_(), dv.zero_()
    if LK == 0:
        return dq.zero_(), dk, dv
    has_mask = mask is not None
    m = mask if has_mask else lse
    smb, sml = (mask.stride(0), mask.stride(1)) if has_mask else (0, 0)
    bl = _blocks_arg(blocks)
    kw = dict(HAS_MASK=has_mask, CAUSAL=causal)
    _launch(_DKDV, LK, B * H, C, bl, (q, k, v, m, g, lse, delta, dk, dv, H, LQ, LK, C, *q.stride(), *k.stride(),
                                       *v.stride(), *g.stride(), *dk.stride(), *dv.stride(), smb, sml), kw)
    _launch(_DQ, LQ, B * H, C, bl, (q, k, v, m, g, lse, delta, dq, H, LQ, LK, C, *q.stride(), *k.stride(),
                                     *v.stride(), *g.stride(), *dq.stride(), smb, sml), kw)
    return dq, dk, dv


@torch.library.custom_op("ea_zoo::ea_flash_fwd", mutates_args=())
def _ea_flash_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], causal: bool,
    blocks: List[int],
) -> Tuple[torch.Tensor, torch.Tensor]:
    return _fwd_impl(q, k, v, mask, causal, blocks)


@_ea_flash_fwd_op.register_fake
def _(q, k, v, mask, causal, blocks):
    B, H, LQ, C = q.shape
    return q.new_empty((B, H, LQ, C), dtype=v.dtype), q.new_empty((B * H, LQ, C), dtype=torch.float32)


@torch.library.custom_op("ea_zoo::ea_flash_bwd", mutates_args=())
def _ea_flash_bwd_op(
    g: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
    o: torch.Tensor, lse: torch.Tensor, causal: bool, blocks: List[int],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(g, q, k, v, mask, o, lse, causal, blocks)


@_ea_flash_bwd_op.register_fake
def _(g, q, k, v, mask, o, lse, causal, blocks):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, mask, causal, blocks = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, mask, o, lse)
    ctx.args = (causal, blocks)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_o, grad_lse):
    q, k, v, mask, o, lse = ctx.saved_tensors
    if grad_o is None:
        grad_o = torch.zeros_like(o)
    dq, dk, dv = _ea_flash_bwd_op(grad_o, q, k, v, mask, o, lse, *ctx.args)
    return dq, dk, dv, None, None, None


_ea_flash_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def ea_flash_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    blocks: Optional[Tuple[int, int, int]] = None,
) -> torch.Tensor:
    """Full EA through the flash kernels (differentiable in q, k, v).

    q (..., Lq, D), k and v (..., Lk, D) (float32/float16/bfloat16, same D); causal needs
    Lq == Lk. ``key_padding_mask`` (B, Lk), True = keep. ``blocks`` = (BM, BN, BC) fixes the
    tiles (powers of 2); by default they are autotuned on CUDA and 16 under the interpreter.
    """
    if q.shape[:-2] != k.shape[:-2] or k.shape != v.shape or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"ea (triton): q (..., Lq, D), k and v (..., Lk, D) must agree, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"ea (triton): causal needs as many queries as keys, got {q.shape[-2]} and {k.shape[-2]}")
    out_shape = q.shape[:-1] + (v.shape[-1],)
    q4, k4, v4 = as_bhlc(q), as_bhlc(k), as_bhlc(v)
    B, H, LQ, C = q4.shape
    mask = mask_u8(key_padding_mask, B, k4.shape[2])
    if blocks is None:
        blk = [0, 0, 0]
    else:
        blk = [int(b) for b in blocks]
        if len(blk) != 3 or any(b < 2 or b & (b - 1) for b in blk):
            raise ValueError(f"ea (triton): blocks must be three powers of 2 >= 2 (BM, BN, BC), got {blocks}")
    o, _ = _ea_flash_fwd_op(q4, k4, v4, mask, bool(causal), blk)
    return o.reshape(out_shape)
