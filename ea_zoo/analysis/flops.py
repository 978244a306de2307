"""FLOP counting with fvcore's ``FlopCountAnalysis``, with a handle for every op we use.

fvcore by default counts only matmul-like ops (one multiply-add = one "flop") and silently
skips most element-wise ops, which would make element-wise attention look free. Here every
handle is replaced by the ones below, under one convention:

**Convention (FLOP = one scalar floating-point operation; a multiply-add is 2 FLOPs).**

* matmul-like (``mm``, ``bmm``, ``matmul``, ``linear``, ``addmm``, ``baddbmm``, ``einsum``):
  ``2 * M * N * K`` for an (M, K) x (K, N) product (batched: times the batch); a bias or
  the ``beta * C`` term adds 1 per output element. ``einsum``: ``2 * P`` where P is the
  product of the sizes of all distinct indices when an index is summed, ``(n_operands - 1)
  * P`` when none is.
* element-wise (``add``, ``sub``, ``mul``, ``div``, ``pow``, ``square``, ``exp``, ``neg``,
  ``sigmoid``, ``elu``, ``relu``, ``where``, ``masked_fill``, ``clamp`` ... and their in-place
  ``op_`` forms): 1 per output element (``addcmul``/``addcdiv``: 2). Transcendentals count
  as 1, like an add.
* reductions and scans (``sum``, ``mean``, ``amax``, ``amin``, ``max``, ``min``, ``prod``,
  ``cumsum``, ``cumprod``): 1 per input element; ``logsumexp``/``logcumsumexp`` 4, ``linalg_vector_norm`` 2,
  ``var``/``std`` 3 per input element.
* ``softmax``/``log_softmax``: 5 per element (max, subtract, exp, sum, divide).
* ``layer_norm``/``group_norm``/``batch_norm``: 5 per element, +2 with an affine weight.
* scaled dot-product attention (``aten::scaled_dot_product_attention`` and every
  ``aten::_scaled_dot_product_*`` kernel): per batch x head,
  ``2 Lq Lk d`` (scores) + ``Lq Lk`` (scale) + ``5 Lq Lk`` (softmax) + ``2 Lq Lk dv``
  (weights x values), + ``Lq Lk`` when an explicit mask is added. Causal attention is counted
  dense, as the reference (math) kernel computes it; fused kernels may skip masked blocks.
* Dropout counts 0: FLOPs are traced in eval mode, where it is the identity.
* An op whose tensor inputs are all non-floating (bool masks, int indices) counts 0, and so
  do pure data movement/creation ops (view, reshape, cat, stack, expand, copy, ``to``,
  ``zeros_like``, ``arange`` ...).

Only the forward pass is counted (fvcore traces the forward); backward is typically ~2x it
and scales the same way.

Any op that is neither handled nor known data movement shows up in
:meth:`FlopResult.unsupported` (and the test suite checks that is empty for every backend).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "FLOP_CONVENTION",
    "FlopResult",
    "flop_handles",
    "zero_flop_ops",
    "count_flops",
    "count_callable_flops",
]

FLOP_CONVENTION = (
    "FLOP = one scalar floating-point op; multiply-add = 2 FLOPs (matmul 2*M*N*K); "
    "1 FLOP per element-wise output element; reductions 1 per input element; softmax 5 per "
    "element; SDPA counted dense; forward pass only (fvcore trace)"
)

Handle = Callable[[List[Any], List[Any]], int]


# ---------------------------------------------------------------------------- jit value utils
def _shape(val) -> Optional[List[int]]:
    try:
        if val.isCompleteTensor():
            return list(val.type().sizes())
    except RuntimeError:
        pass
    return None


def _is_tensor(val) -> bool:
    return isinstance(val.type(), torch._C.TensorType)


def _is_float_tensor(val) -> bool:
    if not _is_tensor(val):
        return False
    st = val.type().scalarType()
    if st is None:  # unknown dtype: count it
        return True
    return st in ("Float", "Double", "Half", "BFloat16", "ComplexFloat", "ComplexDouble",
                  "Float8_e4m3fn", "Float8_e5m2")


def _numel(shape: Optional[Sequence[int]]) -> int:
    if shape is None:
        return 0
    return int(math.prod(shape)) if len(shape) else 1


def _any_float_input(inputs) -> bool:
    return any(_is_float_tensor(v) for v in inputs)


def _ivalue(val):
    try:
        return val.toIValue()
    except RuntimeError:
        return None


# ---------------------------------------------------------------------------- handles
def elementwise(per_element: int = 1) -> Handle:
    """``per_element`` FLOPs per element of the first output (0 without floating inputs)."""

    def handle(inputs, outputs) -> int:
        if not _any_float_input(inputs):
            return 0
        return per_element * _numel(_shape(outputs[0]))

    return handle


def reduction(per_element: int = 1) -> Handle:
    """``per_element`` FLOPs per input element (the largest tensor input, so binary forms of
    ``max``/``min`` count per output element as an element-wise op)."""

    def handle(inputs, outputs) -> int:
        if not _any_float_input(inputs):
            return 0
        n_in = max((_numel(_shape(v)) for v in inputs if _is_tensor(v)), default=0)
        n_out = _numel(_shape(outputs[0]))
        return per_element * max(n_in, n_out)

    return handle


def norm_handle(weight_index: int) -> Handle:
    """5 FLOPs per element, +2 when the affine weight (input ``weight_index``) is given."""

    def handle(inputs, outputs) -> int:
        n = _numel(_shape(inputs[0]))
        affine = weight_index < len(inputs) and _is_tensor(inputs[weight_index])
        return (7 if affine else 5) * n

    return handle


def matmul_handle(inputs, outputs) -> int:
    """mm / bmm / matmul: 2 * numel(out) * K (K = contracted size)."""
    a, b = _shape(inputs[0]), _shape(inputs[1])
    out = _shape(outputs[0])
    if a is None or b is None or out is None:
        return 0
    k = a[-1]
    if len(a) == 1 and len(b) == 1:  # dot
        return 2 * k
    return 2 * _numel(out) * k


def addmm_handle(inputs, outputs) -> int:
    """addmm(C, A, B) / baddbmm(C, A, B): 2 M N K (+ M N for adding C)."""
    a = _shape(inputs[1])
    out = _shape(outputs[0])
    if a is None or out is None:
        return 0
    return 2 * _numel(out) * a[-1] + _numel(out)


def linear_handle(inputs, outputs) -> int:
    """linear(x, W (out, in), b): 2 * numel(x) * out (+ numel(y) with a bias)."""
    x, w = _shape(inputs[0]), _shape(inputs[1])
    out = _shape(outputs[0])
    if x is None or w is None:
        return 0
    n_out = w[0] if len(w) == 2 else 1
    flops = 2 * _numel(x) * n_out
    if len(inputs) > 2 and _is_tensor(inputs[2]):
        flops += _numel(out)
    return flops


def einsum_handle(inputs, outputs) -> int:
    """einsum(eq, [operands]): 2 * P with a summed index, (n - 1) * P without."""
    eq = _ivalue(inputs[0])
    ops_node = inputs[1].node()
    operands = list(ops_node.inputs()) if ops_node.kind() == "prim::ListConstruct" else []
    shapes = [_shape(v) for v in operands]
    if not isinstance(eq, str) or not shapes or any(s is None for s in shapes):
        return 0
    eq = eq.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    sizes: Dict[str, int] = {}
    batch_ell: List[int] = []
    for term, shape in zip(terms, shapes):
        letters = term.replace("...", "")
        n_ell = len(shape) - len(letters)
        if "..." in term:
            pre = term.index("...")
            ell = shape[pre: pre + n_ell]
            if len(ell) > len(batch_ell):
                batch_ell = list(ell)
            named = term[:pre] + term[pre + 3:]
            named_shape = shape[:pre] + shape[pre + n_ell:]
        else:
            named, named_shape = term, shape
        for ch, n in zip(named, named_shape):
            sizes[ch] = max(sizes.get(ch, 1), n)
    if "->" not in eq:  # implicit output: letters appearing once
        rhs = "".join(sorted(c for c in sizes if lhs.count(c) == 1))
    points = _numel(list(sizes.values())) * _numel(batch_ell)
    summed = any(c not in rhs for c in sizes)
    n_ops = len(shapes)
    return 2 * points if summed else max(1, n_ops - 1) * points


def sdpa_handle(inputs, outputs) -> int:
    """Scaled dot-product attention, counted dense (see module docstring)."""
    q, k, v = _shape(inputs[0]), _shape(inputs[1]), _shape(inputs[2])
    if q is None or k is None or v is None:
        return 0
    lq, d = q[-2], q[-1]
    lk, dv = k[-2], v[-1]
    batch = _numel(q[:-2])
    per = 2 * lq * lk * d + lq * lk + 5 * lq * lk + 2 * lq * lk * dv
    flops = batch * per
    if len(inputs) > 3 and _is_tensor(inputs[3]) and _is_float_tensor(inputs[3]):
        flops += batch * lq * lk  # additive float mask
    return flops


# ---------------------------------------------------------------------------- op tables
_ELEMENTWISE_1 = [
    "add", "sub", "rsub", "mul", "div", "true_divide", "neg", "pow", "square", "sqrt", "rsqrt",
    "exp", "exp2", "expm1", "log", "log2", "log1p", "reciprocal", "abs", "sign", "sgn",
    "sigmoid", "tanh", "relu", "relu6", "gelu", "silu", "elu", "celu", "selu", "leaky_relu",
    "softplus", "hardtanh", "hardsigmoid", "hardswish", "mish", "erf", "sin", "cos",
    "clamp", "clamp_min", "clamp_max", "clip", "minimum", "maximum", "fmin", "fmax",
    "where", "masked_fill", "masked_scatter", "isfinite", "isnan", "isinf", "isneginf",
    "isposinf", "nan_to_num", "lt", "le", "gt", "ge", "eq", "ne", "tril", "triu",
    "floor", "ceil", "round", "trunc", "frac", "fmod", "remainder", "lerp", "xlogy",
    "logaddexp", "copysign", "heaviside", "threshold", "hypot", "atan", "atan2", "sinh", "cosh", "asinh", "softshrink",
]
_ELEMENTWISE_2 = ["addcmul", "addcdiv"]
_REDUCTIONS_1 = ["sum", "mean", "amax", "amin", "max", "min", "prod", "cumsum", "cumprod",
                 "cummax", "cummin", "nansum", "aminmax", "argmax", "argmin"]
_REDUCTIONS_OTHER = {"logsumexp": 4, "logcumsumexp": 4, "linalg_vector_norm": 2, "norm": 2, "frobenius_norm": 2,
                     "var": 3, "std": 3, "var_mean": 3, "std_mean": 3}
_SDPA = [
    "scaled_dot_product_attention",
    "_scaled_dot_product_attention",
    "_scaled_dot_product_attention_math",
    "_scaled_dot_product_attention_math_for_mps",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
    "_flash_attention_forward",
    "_efficient_attention_forward",
]

#: ops that move, view or create data but compute nothing (0 FLOPs), beyond fvcore's own list
_ZERO = [
    "ones_like", "zeros_like", "empty_like", "full_like", "rand_like", "randn_like",
    "ones", "zeros", "empty", "full", "arange", "linspace", "tensor", "scalar_tensor",
    "lift_fresh", "lift_fresh_copy", "clone", "contiguous", "expand", "expand_as", "repeat",
    "repeat_interleave", "tile", "flip", "roll", "movedim", "moveaxis", "swapaxes", "view_as",
    "reshape_as", "unflatten", "flatten", "narrow", "select", "slice", "index_select",
    "gather", "index", "take_along_dim", "chunk", "split", "unsafe_split", "tensor_split",
    "split_with_sizes", "unbind", "stack", "cat", "concat", "hstack", "vstack", "pad",
    "constant_pad_nd", "to", "type_as", "copy_", "detach", "detach_", "alias", "t",
    "transpose", "permute", "view", "reshape", "squeeze", "unsqueeze", "unsqueeze_",
    "squeeze_", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "fill_",
    "zero_", "embedding", "one_hot", "diag_embed", "diagonal", "as_strided", "unfold",
    "logical_not", "logical_and", "logical_or", "logical_xor", "bitwise_not", "bitwise_and",
    "bitwise_or", "__and__", "__or__", "__not__", "__xor__", "any", "all", "size", "numel",
    "dim", "Int", "Float", "Bool", "ScalarImplicit", "item", "is_floating_point", "result_type",
    "resolve_conj", "resolve_neg", "_unsafe_view", "_reshape_alias", "masked_select",
    "nonzero", "scatter", "index_put", "index_put_", "index_copy", "masked_fill_mask_only",
    "broadcast_tensors", "meshgrid", "atleast_1d", "atleast_2d", "atleast_3d",
    "requires_grad_", "set_", "random_", "uniform_", "normal_", "bernoulli", "bernoulli_",
    "native_dropout_mask", "dropout", "feature_dropout", "alpha_dropout", "cartesian_prod", "triu_indices", "tril_indices", "sort",
    "topk", "searchsorted", "bucketize", "_assert_async", "sym_size", "sym_numel",
]


def _with_inplace(names: Sequence[str]) -> List[str]:
    out = []
    for n in names:
        out += [f"aten::{n}", f"aten::{n}_"]
    return out


def flop_handles() -> Dict[str, Handle]:
    """op name (``aten::...``) -> FLOP handle, under :data:`FLOP_CONVENTION`."""
    h: Dict[str, Handle] = {}
    for name in _with_inplace(_ELEMENTWISE_1):
        h[name] = elementwise(1)
    for name in _with_inplace(_ELEMENTWISE_2):
        h[name] = elementwise(2)
    for name in _REDUCTIONS_1:
        h[f"aten::{name}"] = reduction(1)
    for name, per in _REDUCTIONS_OTHER.items():
        h[f"aten::{name}"] = reduction(per)
    h["aten::cumsum_"] = reduction(1)
    h["aten::softmax"] = elementwise(5)
    h["aten::_softmax"] = elementwise(5)
    h["aten::log_softmax"] = elementwise(5)
    h["aten::_log_softmax"] = elementwise(5)
    h["aten::layer_norm"] = norm_handle(2)
    h["aten::native_layer_norm"] = norm_handle(2)
    h["aten::rms_norm"] = norm_handle(2)
    h["aten::group_norm"] = norm_handle(2)
    h["aten::batch_norm"] = norm_handle(1)
    h["aten::instance_norm"] = norm_handle(1)
    for name in ("mm", "bmm", "matmul", "dot", "mv", "vdot"):
        h[f"aten::{name}"] = matmul_handle
    h["aten::addmm"] = addmm_handle
    h["aten::baddbmm"] = addmm_handle
    h["aten::linear"] = linear_handle
    h["aten::einsum"] = einsum_handle
    for name in _SDPA:
        h[f"aten::{name}"] = sdpa_handle
    return h


def zero_flop_ops() -> List[str]:
    """Ops counted as 0 FLOPs (data movement/creation, bool/int bookkeeping)."""
    names = [f"aten::{n}" for n in _ZERO] + ["aten::dropout_", "prim::PythonOp.Identity"]
    return [n for n in names if n not in flop_handles()]


# ---------------------------------------------------------------------------- analysis
@dataclass
class FlopResult:
    """Forward FLOPs of one traced call."""

    total: int
    by_operator: Dict[str, int] = field(default_factory=dict)
    unsupported: Dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return {"total": self.total, "by_operator": dict(self.by_operator),
                "unsupported": dict(self.unsupported)}


class _Call(nn.Module):
    """Wrap ``fn(*inputs)`` so fvcore can trace it; ``owner`` registers its parameters."""

    def __init__(self, fn: Callable, owner: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.fn = fn
        self.owner = owner

    def forward(self, *inputs):
        return self.fn(*inputs)


def analysis(module: nn.Module, inputs: Tuple[Any, ...]):
    """A ``FlopCountAnalysis`` on ``module(*inputs)`` with our handles only."""
    from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(module, inputs)
    fca.clear_op_handles()
    fca.set_op_handle(**flop_handles())
    for name in zero_flop_ops():
        fca.set_op_handle(name, None)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    fca.tracer_warnings("none")
    return fca


def count_flops(module: nn.Module, inputs: Tuple[Any, ...]) -> FlopResult:
    """Forward FLOPs of ``module(*inputs)`` (traced under ``no_grad``, in eval mode)."""
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fca = analysis(module, inputs)
            total = int(fca.total())
            by_op = {k: int(v) for k, v in fca.by_operator().items() if v}
            unsupported = {k: int(v) for k, v in fca.unsupported_ops().items()}
    finally:
        module.train(was_training)
    return FlopResult(total, by_op, unsupported)


def count_callable_flops(fn: Callable, inputs: Tuple[Any, ...], owner: Optional[nn.Module] = None) -> FlopResult:
    """Forward FLOPs of ``fn(*inputs)``; ``owner`` is the module whose parameters ``fn`` uses."""
    return count_flops(_Call(fn, owner), inputs)
