"""Full element-wise attention (EA), Feng 2025 section 3.1.

Per channel c (element-wise), with the similarity o_ijc = -(q_ic - k_jc)^2 (eq. 1),

    y_i = sum_j e^{-(q_i - k_j)^2} v_j / sum_j e^{-(q_i - k_j)^2}                      (eq. 2)

i.e. a softmax over keys for every (query, channel) pair. The exact form costs O(L^2 D)
compute; this reference never holds more than one block of the (L, L, D) similarity tensor:
queries are processed in blocks sized so a block of (block, L, D) stays under
``max_block_elements``. Each block is an autograd function with a hand-written backward that
saves only q, k, v, the output and the per-(query, channel) max and denominator (O(L D)) and
recomputes the block's weights p_ijc = e^{o_ijc - m_ic} / den_ic, so memory is
O(L D + block L D) and no forward is run twice. With g = dLoss/dy:

    dv_j = sum_i p_ij g_i,   s_ij = p_ij g_i (v_j - y_i) = dLoss/do_ij,
    dq_i = -2 sum_j s_ij (q_i - k_j),   dk_j = 2 sum_i s_ij (q_i - k_j)   (per channel).

It is numerically stable as flash attention is: the per-(query, channel) maximum of o_ijc
over the valid keys is subtracted before exp, so the largest weight is exactly 1.

Two executions of the same block math: eager PyTorch (``impl="reference"``,
:func:`_block_forward` and :func:`_block_backward`: a dozen passes over each (block, L, D)
tensor), and ``impl="compiled"``, where each of the six reductions above (the max m, den and
the numerator of eq. 2; dq, dk and dv) is its own ``torch.compile``'d function that recomputes
o_ijc from q and k inside one fused C++ loop, so no (block, L, D) tensor is ever written.
dk and dv reduce over queries, so their functions take the key-major layout (.., Lk, Lq, D)
and reduce over its -2 dim like the others. One reduction per function is deliberate:
inductor's code for two reductions in one graph measured 2-3x slower on CPU than the two run
apart (B 16, L 315, D 64, one thread, a training run beside it: den with num 0.35 s against
0.06 + 0.07 s; dk with dv 0.41 s against 0.11 + 0.09 s). The op's idle timings are in
``benchmarks/results/ea_compiled_cpu/``.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from ea_zoo.functional.checks import check_qkv, expand_key_mask
from ea_zoo.functional.numerics import compute_dtype, safe_ratio

__all__ = ["ea", "ea_init_state", "ea_step", "DEFAULT_MAX_BLOCK_ELEMENTS"]

#: largest number of elements of the (block, L, D) similarity tensor held at once (64 MiB fp32)
DEFAULT_MAX_BLOCK_ELEMENTS = 1 << 24


def _invalid_keys(Lq: int, Lk: int, q_start: int, causal: bool, km: Optional[torch.Tensor], device,
                  key_major: bool = False):
    """Bool (.., Lq, Lk, 1) of the keys a query block may not see, (.., Lk, Lq, 1) when
    ``key_major`` (None: all visible)."""
    invalid = None
    if km is not None:  # (B, 1.., Lk, 1) -> (B, 1.., 1, Lk, 1), or (B, 1.., Lk, 1, 1)
        invalid = ~(km.unsqueeze(-2) if key_major else km.unsqueeze(-3))
    if causal:
        qi = torch.arange(q_start, q_start + Lq, device=device)
        kj = torch.arange(Lk, device=device)
        future = (kj[:, None] > qi[None, :]) if key_major else (kj[None, :] > qi[:, None])
        future = future.unsqueeze(-1)  # (Lq, Lk, 1) or (Lk, Lq, 1)
        invalid = future if invalid is None else (invalid | future)
    return invalid


def _similarity(q, k, invalid):
    """(q_i - k_j) and o_ij = -(q_i - k_j)^2 (eq. 1), -inf at invalid keys: two (.., Lq, Lk, D) tensors."""
    diff = q.unsqueeze(-2) - k.unsqueeze(-3)
    o = diff.square().neg_()
    if invalid is not None:
        o.masked_fill_(invalid, float("-inf"))
    return diff, o


def _block_forward(q, k, v, km, q_start: int, causal: bool):
    """One query block, eq. 2: q (..., Lq, D), k, v (..., Lk, D) -> y (..., Lq, D), with the
    per-(query, channel) max m (..., Lq, 1, D) and denominator den (..., Lq, D) the backward needs."""
    invalid = _invalid_keys(q.shape[-2], k.shape[-2], q_start, causal, km, q.device)
    _, w = _similarity(q, k, invalid)
    m = w.detach().amax(dim=-2, keepdim=True)  # a constant shift (also when traced as plain ops)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w.sub_(m).exp_()  # masked entries -> 0; max entry -> 1
    den = w.sum(-2)
    num = (w * v.unsqueeze(-3)).sum(-2)
    return safe_ratio(num, den), m, den


def _inverse_den(den):
    """1 / den, and 0 for a query that sees no key (den = 0)."""
    ok = den > 0
    return torch.where(ok, 1.0 / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))


def _block_backward(q, k, v, y, m, den, km, q_start: int, causal: bool, g):
    """dLoss/d(q, k, v) of one query block from g = dLoss/dy (module docstring), recomputing p."""
    invalid = _invalid_keys(q.shape[-2], k.shape[-2], q_start, causal, km, q.device)
    diff, p = _similarity(q, k, invalid)
    inv_den = _inverse_den(den)
    p.sub_(m).exp_().mul_(inv_den.unsqueeze(-2))  # p_ijc; 0 for a query that sees no key
    gi = g.unsqueeze(-2)
    dv = (p * gi).sum(-3)
    s = v.unsqueeze(-3) - y.unsqueeze(-2)
    s.mul_(p).mul_(gi).mul_(diff)  # dLoss/do_ij * (q_i - k_j)
    return s.sum(-2).mul_(-2.0), s.sum(-3).mul_(2.0), dv


def _masked_similarity(q, k, km, q_start: int, causal: bool, key_major: bool):
    """Out-of-place :func:`_similarity` for the fused reductions: o_ijc (-inf at invalid keys) and
    (q_i - k_j), (.., Lq, Lk, D), or (.., Lk, Lq, D) when ``key_major`` (reductions over queries)."""
    diff = q.unsqueeze(-3) - k.unsqueeze(-2) if key_major else q.unsqueeze(-2) - k.unsqueeze(-3)
    o = -(diff * diff)
    invalid = _invalid_keys(q.shape[-2], k.shape[-2], q_start, causal, km, q.device, key_major)
    if invalid is not None:
        o = o.masked_fill(invalid, float("-inf"))
    return o, diff


def _fused_max(q, k, km, q_start: int, causal: bool):
    """m_ic = max_j o_ijc over the valid keys (0 where none): (.., Lq, 1, D)."""
    o, _ = _masked_similarity(q, k, km, q_start, causal, key_major=False)
    m = o.amax(dim=-2, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _fused_den(q, k, m, km, q_start: int, causal: bool):
    """den_ic = sum_j e^{o_ijc - m_ic}: (.., Lq, D)."""
    o, _ = _masked_similarity(q, k, km, q_start, causal, key_major=False)
    return torch.exp(o - m).sum(-2)


def _fused_num(q, k, v, m, km, q_start: int, causal: bool):
    """sum_j e^{o_ijc - m_ic} v_jc: (.., Lq, D)."""
    o, _ = _masked_similarity(q, k, km, q_start, causal, key_major=False)
    return (torch.exp(o - m) * v.unsqueeze(-3)).sum(-2)


def _fused_dq(q, k, v, y, m, inv_den, km, q_start: int, causal: bool, g):
    """dq_i = -2 sum_j p_ij g_i (v_j - y_i) (q_i - k_j): (.., Lq, D)."""
    o, diff = _masked_similarity(q, k, km, q_start, causal, key_major=False)
    p = torch.exp(o - m) * inv_den.unsqueeze(-2)
    return (p * g.unsqueeze(-2) * (v.unsqueeze(-3) - y.unsqueeze(-2)) * diff).sum(-2) * -2.0


def _fused_dk(q, k, v, y, m_t, inv_den_t, km, q_start: int, causal: bool, g):
    """dk_j = 2 sum_i p_ij g_i (v_j - y_i) (q_i - k_j) in the key-major layout; m_t, inv_den_t
    are (.., 1, Lq, D): (.., Lk, D)."""
    o, diff = _masked_similarity(q, k, km, q_start, causal, key_major=True)
    p = torch.exp(o - m_t) * inv_den_t
    return (p * g.unsqueeze(-3) * (v.unsqueeze(-2) - y.unsqueeze(-3)) * diff).sum(-2) * 2.0


def _fused_dv(q, k, m_t, inv_den_t, km, q_start: int, causal: bool, g):
    """dv_j = sum_i p_ij g_i in the key-major layout: (.., Lk, D)."""
    o, _ = _masked_similarity(q, k, km, q_start, causal, key_major=True)
    return (torch.exp(o - m_t) * inv_den_t * g.unsqueeze(-3)).sum(-2)


#: the six torch.compile'd reductions (_fused_max .. _fused_dv), built on first use of impl="compiled"
_COMPILED = None


def _compiled_fns():
    """The fused reductions of the compiled path, each through torch.compile (inductor: C++ loops on CPU)."""
    global _COMPILED
    if _COMPILED is None:
        fns = (_fused_max, _fused_den, _fused_num, _fused_dq, _fused_dk, _fused_dv)
        _COMPILED = tuple(torch.compile(f) for f in fns)
    return _COMPILED


def _compiled_block_forward(q, k, v, km, q_start: int, causal: bool):
    """:func:`_block_forward`'s (y, m, den) from the fused reductions."""
    fmax, fden, fnum = _compiled_fns()[:3]
    m = fmax(q, k, km, q_start, causal)
    den = fden(q, k, m, km, q_start, causal)
    return safe_ratio(fnum(q, k, v, m, km, q_start, causal), den), m, den


def _compiled_block_backward(q, k, v, y, m, den, km, q_start: int, causal: bool, g):
    """:func:`_block_backward`'s (dq, dk, dv) from the fused reductions."""
    fdq, fdk, fdv = _compiled_fns()[3:]
    inv_den = _inverse_den(den)
    m_t = m.transpose(-2, -3).contiguous()  # (.., 1, Lq, D)
    inv_den_t = inv_den.unsqueeze(-3)
    return (fdq(q, k, v, y, m, inv_den, km, q_start, causal, g),
            fdk(q, k, v, y, m_t, inv_den_t, km, q_start, causal, g),
            fdv(q, k, m_t, inv_den_t, km, q_start, causal, g))


class _EABlock(torch.autograd.Function):
    """One query block with the hand-written backward: the eager PyTorch execution."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, km, q_start: int, causal: bool):
        return _block_forward(q, k, v, km, q_start, causal)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, km, q_start, causal = inputs
        y, m, den = output
        ctx.has_mask = km is not None
        ctx.q_start, ctx.causal = q_start, causal
        ctx.save_for_backward(q, k, v, y, m, den, km if km is not None else q.new_empty(0, dtype=torch.bool))
        ctx.mark_non_differentiable(m, den)

    @staticmethod
    def backward(ctx, g, _grad_m, _grad_den):
        q, k, v, y, m, den, km = ctx.saved_tensors
        grads = _block_backward(q, k, v, y, m, den, km if ctx.has_mask else None, ctx.q_start, ctx.causal, g)
        return (*grads, None, None, None)


class _EABlockCompiled(_EABlock):
    """The same block, its forward and backward from the fused reductions (:func:`_compiled_fns`)."""

    @staticmethod
    def forward(q, k, v, km, q_start: int, causal: bool):
        return _compiled_block_forward(q, k, v, km, q_start, causal)

    @staticmethod
    def backward(ctx, g, _grad_m, _grad_den):
        q, k, v, y, m, den, km = ctx.saved_tensors
        grads = _compiled_block_backward(q, k, v, y, m, den, km if ctx.has_mask else None,
                                         ctx.q_start, ctx.causal, g.contiguous())
        return (*grads, None, None, None)


def ea(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
    impl: str = "auto",
) -> torch.Tensor:
    """Full element-wise attention, eq. 1-2.

    Args:
        q: (B, Lq, D) or (B, H, Lq, d). k, v: same with Lk keys.
        causal: query i sees keys j <= i (needs Lq == Lk).
        key_padding_mask: (B, Lk) bool, True = keep.
        max_block_elements: bound on the elements of one (block, Lk, D) similarity block
            (reference path only; the kernel's tiles are fixed-size).
        impl: "auto" (the flash-style Triton kernel, :mod:`ea_zoo.kernels.ea_flash`, for
            CUDA tensors when triton imports; on CPU the process default of
            :func:`ea_zoo.kernels.set_cpu_impl`, "reference" unless changed), "reference",
            "compiled" (the reference's blocks with their forward and backward fused by
            ``torch.compile``: the same math, several times faster on CPU, the first call of
            each shape compiles for seconds), or "triton" (forced; CPU tensors only under
            ``TRITON_INTERPRET=1``, else an error).

    Returns:
        (..., Lq, D) in v's dtype. Accumulates in float32 (float64 for float64 inputs).
    """
    check_qkv(q, k, v, "ea")
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"ea: causal needs as many queries as keys, got {q.shape[-2]} and {k.shape[-2]}")
    expand_key_mask(key_padding_mask, k)  # validates the mask's shape
    from ea_zoo.kernels import select_impl

    unsupported = None
    if impl != "reference" and not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
        unsupported = f"q, k, v must have the same D (last dim), got {q.shape[-1]}, {k.shape[-1]}, {v.shape[-1]}"
    chosen = select_impl(impl, "ea", (q, k, v), unsupported)
    if chosen == "triton":
        from ea_zoo.kernels.ea_flash import ea_flash_triton

        return ea_flash_triton(q, k, v, causal=causal, key_padding_mask=key_padding_mask)
    return _reference(q, k, v, causal, key_padding_mask, max_block_elements, compiled=chosen == "compiled")


def _reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
    compiled: bool = False,
) -> torch.Tensor:
    """The PyTorch reference of :func:`ea` (query blocks, each with its own backward), same arguments less
    ``impl``; ``compiled`` runs each block through the fused reductions of :func:`_compiled_fns`
    (not under torch.jit.trace)."""
    check_qkv(q, k, v, "ea")
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"ea: causal needs as many queries as keys, got {q.shape[-2]} and {k.shape[-2]}")
    out_dtype = v.dtype
    cd = compute_dtype(q)
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    km = expand_key_mask(key_padding_mask, k)
    if km is not None:  # padded keys/values are selected away: NaN/Inf there cannot leak
        km = km.to(k.device)
        zero = torch.zeros((), dtype=cd, device=k.device)
        k, v = torch.where(km, k, zero), torch.where(km, v, zero)
    Lq, Lk = q.shape[-2], k.shape[-2]
    per_query = max(1, k[..., :1, :].numel() * Lk)  # elements of one query row of the block
    block = max(1, min(Lq, max_block_elements // per_query))
    # the hand-written backward when a gradient is wanted; plain ops otherwise, and under
    # torch.jit.trace (fvcore's FLOP counting sees the ops, not one opaque PythonOp)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if torch.jit.is_tracing():
        block_fn = _block_forward
    elif compiled:
        block_fn = _EABlockCompiled.apply if needs_grad else _compiled_block_forward
    else:
        block_fn = _EABlock.apply if needs_grad else _block_forward
    outs = [block_fn(q[..., start : start + block, :], k, v, km, start, causal)[0]
            for start in range(0, Lq, block)]
    y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)
    return y.to(out_dtype)


def ea_init_state(shape: Tuple[int, ...], device=None, dtype=torch.float32) -> Dict[str, torch.Tensor]:
    """Empty decoding cache for heads of shape (B, ..., D): k and v of length 0."""
    B, *rest = shape
    empty = torch.zeros((B, *rest[:-1], 0, rest[-1]), device=device, dtype=dtype)
    return {"k": empty, "v": empty.clone()}


def ea_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: Dict[str, torch.Tensor]
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """One decoding step of causal EA: q, k, v (B, ..., D); the cache grows by one key.

    Full EA has no fixed-size recurrent form (the exp of (q - k)^2 does not factor), so it
    decodes like softmax attention, from a cache of all past keys and values: O(L D).
    """
    cd = state["k"].dtype
    kc = torch.cat([state["k"], k.to(cd).unsqueeze(-2)], dim=-2)
    vc = torch.cat([state["v"], v.to(cd).unsqueeze(-2)], dim=-2)
    y = ea(q.to(cd).unsqueeze(-2), kc, vc)[..., 0, :]
    return y.to(v.dtype), {"k": kc, "v": vc}
