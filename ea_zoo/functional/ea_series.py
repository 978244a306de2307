"""EA-series: element-wise attention with exp(2 q k) replaced by its Taylor polynomial.

Feng 2025, section 3.2-3.3. Per channel c (all operations element-wise),

    y_i = sum_j e^{-k_j^2} P_t(2 q_i k_j) v_j / sum_j e^{-k_j^2} P_t(2 q_i k_j)       (eq. 3-5)

with P_t(x) = sum_{n=0}^{t} x^n / n! the Taylor polynomial of highest degree t ("EA-t" has
t + 1 terms; this project's reading of the paper). Pulling q out of the sums gives

    y_i = sum_n c_n q_i^n S_n / sum_n c_n q_i^n Z_n,   c_n = 2^n / n!,
    S_n = sum_j k_j^n e^{-k_j^2} v_j,   Z_n = sum_j k_j^n e^{-k_j^2}                   (eq. 5)

which costs O(t L D). The causal form replaces the sums over j by prefix sums over j <= i
(eq. 6); the recurrent form carries S_n and Z_n, (t + 1) x D numbers each (eq. 7-16).

An even t keeps P_t(x) > 0 for every real x, so every weight is positive and the output is
a convex combination of the values. Odd t can make weights negative; it is refused unless
``allow_odd=True``.

Numerics (all paths accumulate in float32, or float64 for float64 inputs):

* e^{-k^2} underflows for |k| > 9.3 in float32, so weights are scaled per channel and the
  scale cancels in the ratio. Non-causal: one scale, the smallest k_j^2 of the channel over
  the valid keys. Causal: every output i uses only keys j <= i, also through its scale, the
  running minimum m_i = min_{j <= i} k_j^2 (prefix stabilisation): every exponent is <= 0
  and the key attaining m_i has weight e^0 P_t(2 q_i k_j) >= min P_t > 0, so no output can
  underflow to 0/0 because of a later key. Parallel (:mod:`ea_zoo.functional.ea_series_chunk`),
  chunked-with-state, step and Triton paths compute the same function.
* A query with no valid key (all masked) outputs 0 (``safe_ratio``), with finite gradients.
  Padded keys and values are selected away (``torch.where``), so NaN/Inf there cannot leak.
* Finite range: P_t(2 q k) grows like |2 q k|^t / t!. In float32 outputs are finite while
  |2 q k|^t / t! * L * max|v| stays below ~1e38, e.g. for EA-8 |q|, |k| <= 100 at L = 10^4
  (tested); beyond that the polynomial overflows (inf / inf = NaN). Use float64 inputs there.
* The polynomial is accurate only while |2 q k| is small (see ``taylor_remainder_bound``).

State contract (flash-linear-attention style): ``ea_series(..., causal=True,
initial_state=state, output_final_state=True)`` returns ``(y, final_state)``; the state is
{"s", "z": (t+1, B, ..., D), "ref": (B, ..., D)}: S_n = sum_j e^{ref - k_j^2} k_j^n v_j, Z_n
likewise without v, at scale ``ref`` = the smallest k^2 so far (+inf: no key yet). Feeding a
sequence in pieces with the state passed on equals one call; :func:`ea_series_step` is the
L = 1 case. No gradient flows into ``initial_state``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch

from ea_zoo.functional.checks import check_qkv, expand_key_mask
from ea_zoo.functional.ea_series_chunk import DEFAULT_CHUNK_SIZE, ea_series_chunk, ea_series_parallel
from ea_zoo.functional.numerics import safe_ratio

__all__ = [
    "check_order",
    "check_state",
    "taylor_coefficients",
    "ea_series",
    "ea_series_init_state",
    "ea_series_step",
    "taylor_remainder_bound",
]


def check_order(order: int, allow_odd: bool = False) -> int:
    """Validate the Taylor order t (highest degree). Even and >= 0 unless ``allow_odd``."""
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f"order must be an int (the highest Taylor degree t), got {order!r}")
    if order < 0:
        raise ValueError(f"order must be a non-negative even int (e.g. 2, 4, 6, 8), got {order}")
    if order % 2 == 1 and not allow_odd:
        raise ValueError(
            f"order={order} is odd: a Taylor polynomial of odd highest degree of exp(x) has a "
            "real root, so some attention weights e^(-k^2) P_t(2qk) become negative and the "
            "output is no longer a convex combination of the values. Use an even order "
            f"({order - 1} or {order + 1}), or pass allow_odd=True to accept this."
        )
    return order


def taylor_coefficients(order: int) -> List[float]:
    """c_n = 2^n / n! for n = 0..order: the coefficients of P_t(2 q k) in powers of q k (eq. 7)."""
    return [2.0**n / math.factorial(n) for n in range(order + 1)]


def taylor_remainder_bound(x: float, order: int) -> float:
    """Relative error |e^x - P_t(x)| / e^x of the order-t Taylor polynomial at x (for tables)."""
    p = sum(x**n / math.factorial(n) for n in range(order + 1))
    return abs(math.exp(x) - p) / math.exp(x)


def _powers(x: torch.Tensor, order: int, first: Optional[torch.Tensor] = None) -> torch.Tensor:
    """stack([first * x^0, first * x^1, ..., first * x^order]) along a new leading dim."""
    cur = torch.ones_like(x) if first is None else first
    out = [cur]
    for _ in range(order):
        cur = cur * x
        out.append(cur)
    return torch.stack(out, 0)


def _query_polynomial(q: torch.Tensor, order: int) -> torch.Tensor:
    """(order+1, ..., L, D): c_n q^n."""
    coef = torch.tensor(taylor_coefficients(order), dtype=q.dtype, device=q.device)
    return _powers(q, order) * coef.view(-1, *([1] * q.dim()))


def _kernel_unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, order: int) -> Optional[str]:
    """Why the Triton kernels cannot take these arguments (None if they can)."""
    from ea_zoo.kernels import MAX_ORDER

    if not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
        return f"q, k, v must have the same D (last dim), got {q.shape[-1]}, {k.shape[-1]}, {v.shape[-1]}"
    if order > MAX_ORDER:
        return f"the kernels unroll orders up to {MAX_ORDER}, got order={order}"
    return None


def ea_series(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    order: int = 6,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    allow_odd: bool = False,
    impl: str = "auto",
    initial_state: Optional[Dict[str, torch.Tensor]] = None,
    output_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
):
    """EA-series attention, eq. 5 (non-causal) and eq. 6 (causal, prefix-stabilised).

    Args:
        q, k, v: (B, L, D) or (B, H, L, d); every channel is independent.
        order: highest Taylor degree t (even; ``allow_odd`` to accept odd).
        causal: token i attends to j <= i only (eq. 6).
        key_padding_mask: (B, L) bool, True = keep; padded keys get weight 0.
        impl: "auto" (the Triton kernel, :mod:`ea_zoo.kernels.ea_series`, for CUDA tensors
            when triton imports, else the PyTorch path), "reference" (the PyTorch path:
            :func:`~ea_zoo.functional.ea_series_chunk.ea_series_chunk` /
            :func:`~ea_zoo.functional.ea_series_chunk.ea_series_parallel`), or "triton"
            (forced; CPU tensors only under ``TRITON_INTERPRET=1``, else an error).
        initial_state: causal only: the state after earlier tokens (see the module
            docstring), e.g. the ``final_state`` of a previous call or of
            :func:`ea_series_step`; None = no earlier tokens.
        output_final_state: causal only: also return the state after the last token.
        chunk_size: tokens per chunk of the causal PyTorch path.

    Returns:
        y (same shape as v, in v's dtype), or ``(y, final_state)`` with ``output_final_state``.
    """
    check_order(order, allow_odd)
    check_qkv(q, k, v, "ea_series")
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"ea_series: causal needs as many queries as keys, got {q.shape[-2]} and {k.shape[-2]}")
    if (initial_state is not None or output_final_state) and not causal:
        raise ValueError("ea_series: initial_state / output_final_state need causal=True "
                         "(a non-causal output depends on every key, so it has no running state)")
    if initial_state is not None:
        check_state(initial_state, q.shape[:-2] + (q.shape[-1],), order, "ea_series")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"ea_series: chunk_size must be a positive int, got {chunk_size!r}")
    expand_key_mask(key_padding_mask, k)  # validates the mask's shape
    from ea_zoo.kernels import select_impl

    unsupported = None if impl == "reference" else _kernel_unsupported(q, k, v, order)
    if select_impl(impl, "ea_series", (q, k, v), unsupported) == "triton":
        from ea_zoo.kernels.ea_series import ea_series_triton

        return ea_series_triton(q, k, v, order=order, causal=causal, key_padding_mask=key_padding_mask,
                                initial_state=initial_state, output_final_state=output_final_state)
    return _reference(q, k, v, order, causal, key_padding_mask, allow_odd, initial_state, output_final_state,
                      chunk_size)


def check_state(state, shape: Tuple[int, ...], order: int, name: str) -> None:
    """A recurrent EA-series state must be {"s", "z": (order+1, *shape), "ref": shape}."""
    if not isinstance(state, dict) or not {"s", "z", "ref"} <= set(state):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{name}: a state is a dict with keys 's', 'z', 'ref' (ea_series_init_state), got {got}")
    want = {"s": (order + 1, *shape), "z": (order + 1, *shape), "ref": tuple(shape)}
    for key, sh in want.items():
        if tuple(state[key].shape) != sh:
            raise ValueError(f"{name}: state[{key!r}] has shape {tuple(state[key].shape)}, expected {sh} "
                             f"(order={order}, heads {tuple(shape)})")


def _reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    order: int = 6,
    causal: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    allow_odd: bool = False,
    initial_state: Optional[Dict[str, torch.Tensor]] = None,
    output_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
):
    """The PyTorch path of :func:`ea_series` (eq. 5-6), same arguments less ``impl``."""
    check_order(order, allow_odd)
    check_qkv(q, k, v, "ea_series")
    if causal:
        return ea_series_chunk(q, k, v, order, key_padding_mask, initial_state, output_final_state, chunk_size)
    return ea_series_parallel(q, k, v, order, key_padding_mask)


def ea_series_init_state(
    shape: Tuple[int, ...], order: int, device=None, dtype=torch.float32
) -> Dict[str, torch.Tensor]:
    """Empty recurrent state for heads of shape ``shape`` = (B, ..., D) (eq. 8-9).

    s, z: (order+1, B, ..., D) zeros; ref: (B, ..., D) running min of k^2 (+inf: no key yet).
    """
    return {
        "s": torch.zeros((order + 1, *shape), device=device, dtype=dtype),
        "z": torch.zeros((order + 1, *shape), device=device, dtype=dtype),
        "ref": torch.full(shape, float("inf"), device=device, dtype=dtype),
    }


def ea_series_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: Dict[str, torch.Tensor],
    order: int = 6,
    allow_odd: bool = False,
    impl: str = "auto",
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """One recurrent step, eq. 10-16: q, k, v (B, ..., D) -> y (B, ..., D), new state.

    The state's ``ref`` is the running min of k^2; when it drops, s and z are rescaled by
    e^{new - old} so the stored sums never underflow.

    ``impl``: "auto" uses the fused Triton step (:mod:`ea_zoo.kernels.decode`) for CUDA
    tensors with a contiguous float32 state when no gradient is wanted, else the reference;
    "reference"; "triton" (forced). The kernel updates the state's tensors in place (the
    returned dict holds the same tensors); the reference returns new tensors.
    """
    check_order(order, allow_odd)
    if state["s"].shape[0] != order + 1:
        raise ValueError(
            f"state holds {state['s'].shape[0] - 1}th-order sums but order={order} was given"
        )
    from ea_zoo.kernels import MAX_ORDER, select_impl

    unsupported = None
    if impl != "reference":
        st = (state["s"], state["z"], state["ref"])
        if not (q.shape == k.shape == v.shape == state["ref"].shape):
            unsupported = (
                f"q, k, v and state['ref'] must share a shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                f"{tuple(v.shape)}, {tuple(state['ref'].shape)}"
            )
        elif any(t.dtype != torch.float32 or not t.is_contiguous() for t in st):
            unsupported = "the fused step needs a contiguous float32 state (it is updated in place)"
        elif order > MAX_ORDER:
            unsupported = f"the fused step unrolls orders up to {MAX_ORDER}, got order={order}"
        elif torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *st)):
            unsupported = "the fused step has no backward; gradients need impl='reference'"
    if select_impl(impl, "ea_series_step", (q, k, v, state["s"], state["z"], state["ref"]), unsupported) == "triton":
        from ea_zoo.kernels.decode import ea_series_decode_step

        return ea_series_decode_step(q, k, v, state, order)
    return _step_reference(q, k, v, state, order, allow_odd)


def _step_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: Dict[str, torch.Tensor],
    order: int = 6,
    allow_odd: bool = False,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The PyTorch reference of :func:`ea_series_step` (returns new state tensors)."""
    check_order(order, allow_odd)
    if state["s"].shape[0] != order + 1:
        raise ValueError(
            f"state holds {state['s'].shape[0] - 1}th-order sums but order={order} was given"
        )
    out_dtype = v.dtype
    cd = state["s"].dtype
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    k2 = k * k
    ref_old = state["ref"]
    ref = torch.minimum(ref_old, k2)
    decay = torch.exp(ref - ref_old)  # 0 when ref_old is +inf (empty state)
    w = torch.exp(ref - k2)
    kpow = _powers(k, order, first=w)  # (t+1, B, ..., D)
    s = state["s"] * decay + kpow * v
    z = state["z"] * decay + kpow
    qpoly = _query_polynomial(q, order)
    y = safe_ratio((qpoly * s).sum(0), (qpoly * z).sum(0))
    return y.to(out_dtype), {"s": s, "z": z, "ref": ref}
