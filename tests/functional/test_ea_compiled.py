"""Full EA with impl="compiled": the reference's block functions through torch.compile.

The compiled blocks must compute eq. 2 as the eager ones do (float64 against the naive softmax,
float32 against the eager float32 path at the input scales trained models reach), with the same
hand-written gradients, masks and query blocking; ``impl="auto"`` picks them on CPU only after
:func:`ea_zoo.kernels.set_cpu_impl`. Each distinct (dtype, mask, causal) combination compiles
once per process, so the tests share shapes and combinations.
"""
import pytest
import torch

from ea_zoo import create_attention
from ea_zoo.functional import ea
from ea_zoo.kernels import cpu_impl, select_impl, set_cpu_impl

from tests.functional.test_ea import naive


@pytest.fixture
def compiled_default():
    old = cpu_impl()
    set_cpu_impl("compiled")
    yield
    set_cpu_impl(old)


def _inputs(dtype, scale, B=2, L=37, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, L, D, generator=g, dtype=dtype) for _ in range(3))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 29:] = False
    return (q * scale).requires_grad_(), (k * scale).requires_grad_(), v.requires_grad_(), mask


def _grads(y, ins):
    return torch.autograd.grad((y * torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)).sum(), ins)


@pytest.mark.parametrize("causal", [False, True])
def test_compiled_float64_matches_naive_softmax_with_gradients(causal):
    """Exact math: padded keys, several query blocks (5 queries each), scale 10."""
    q, k, v, mask = _inputs(torch.float64, 10.0)
    y = ea(q, k, v, causal, key_padding_mask=mask, max_block_elements=2 * 37 * 6 * 5, impl="compiled")
    y0 = naive(q, k, v, causal, mask)
    torch.testing.assert_close(y, y0, rtol=1e-10, atol=1e-10)
    for a, b in zip(_grads(y, (q, k, v)), _grads(y0, (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_compiled_heads_layout_long_sequence_float64_matches_naive():
    """(B, H, L, d) heads (the modules' layout; the key mask broadcasts over heads), L = 144 keys at
    scale 20 with causal masking and padding, in blocks of 16 queries: the key-major dk / dv
    reductions must see the same masks and per-query max as the query-major ones."""
    g = torch.Generator().manual_seed(4)
    B, H, L, d = 2, 3, 144, 4
    q4, k4, v4 = (torch.randn(B, H, L, d, generator=g, dtype=torch.float64) for _ in range(3))
    q4, k4 = q4 * 20.0, k4 * 20.0
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 97:] = False
    ins = tuple(t.requires_grad_() for t in (q4, k4, v4))
    y4 = ea(*ins, causal=True, key_padding_mask=mask, max_block_elements=B * H * L * d * 16, impl="compiled")
    flat = tuple(t.transpose(1, 2).reshape(B, L, H * d) for t in ins)  # channels are independent
    y0 = naive(*flat, True, mask).reshape(B, L, H, d).transpose(1, 2)
    torch.testing.assert_close(y4, y0, rtol=1e-10, atol=1e-10)
    for a, b in zip(_grads(y4, ins), _grads(y0, ins)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_compiled_float32_matches_eager_float32(scale):
    q, k, v, mask = _inputs(torch.float32, scale, seed=1)
    y = ea(q, k, v, key_padding_mask=mask, impl="compiled")
    y0 = ea(q, k, v, key_padding_mask=mask, impl="reference")
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(y, (q, k, v)), _grads(y0, (q, k, v))):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_half_inputs_finite_and_padding_inert(dtype):
    q, k, v, mask = (t.detach() for t in _inputs(torch.float32, 10.0, seed=2))
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    y = ea(q, k, v, key_padding_mask=mask, impl="compiled")
    assert y.dtype == dtype and torch.isfinite(y.float()).all()
    k2, v2 = k.clone(), v.clone()
    k2[0, 29:], v2[0, 29:] = 1e4, float("nan")  # padded keys/values never reach a valid output
    torch.testing.assert_close(ea(q, k2, v2, key_padding_mask=mask, impl="compiled"), y, rtol=0, atol=0)


def test_auto_runs_compiled_on_cpu_only_after_set_cpu_impl(compiled_default):
    x = torch.ones(1, 2, 3)
    assert select_impl("auto", "ea", (x,)) == "compiled"
    assert select_impl("auto", "ea_series", (x,)) == "reference"  # no compiled path there
    set_cpu_impl("reference")
    assert select_impl("auto", "ea", (x,)) == "reference"


def test_attention_module_follows_the_cpu_default(compiled_default):
    torch.manual_seed(0)
    attn = create_attention("ea", dim=6, num_heads=2)
    x, mask = (t.detach() for t in _inputs(torch.float32, 3.0, seed=3)[0::3])
    y = attn(x, attn_mask=mask)
    set_cpu_impl("reference")
    torch.testing.assert_close(y, attn(x, attn_mask=mask), rtol=1e-5, atol=1e-5)


def test_bad_impl_values_name_the_choices():
    with pytest.raises(ValueError, match=r"cpu_impl must be one of \('reference', 'compiled'\), got 'fast'"):
        set_cpu_impl("fast")
    x = torch.ones(1, 2, 3)
    with pytest.raises(ValueError, match="impl='compiled' exists for ea only"):
        select_impl("compiled", "ea_series", (x,))
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'reference', 'compiled', 'triton'\)"):
        ea(x, x, x, impl="fused")
