"""Flash-style full EA kernels (ea_zoo.kernels.ea_flash) against the float64 reference.

Run under the Triton interpreter on CPU (tests/kernels/conftest.py); float32 outputs and
dq, dk, dv must match to a relative error below 1e-4.
"""
import pytest
import torch

from ea_zoo.functional import ea
from ea_zoo.functional.ea import _reference as ea_ref

TOL32 = 1e-4


def rel_err(actual, ref, floor=1e-4):
    a = actual.detach().to("cpu", torch.float64)
    r = ref.detach().to("cpu", torch.float64)
    assert a.shape == r.shape, (a.shape, r.shape)
    assert torch.isfinite(a).all(), "non-finite values"
    return (a - r).abs().max().item() / max(r.abs().max().item(), floor)


def check(q, k, v, causal=False, mask=None, blocks=(16, 16, 16), tol=TOL32):
    from ea_zoo.kernels.ea_flash import ea_flash_triton

    xs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    y = ea_flash_triton(*xs, causal=causal, key_padding_mask=mask, blocks=blocks)
    x64 = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    y64 = ea_ref(*x64, causal=causal, key_padding_mask=None if mask is None else mask.cpu())
    assert y.dtype == v.dtype and y.shape == y64.shape
    e = rel_err(y, y64)
    assert e < tol, f"output: relative error {e:.2e}"
    g = torch.randn_like(y64)
    gk = torch.autograd.grad(y, xs, g.to(y.device, y.dtype))
    gr = torch.autograd.grad(y64, x64, g)
    floor = 1e-2 * max(d.abs().max().item() for d in gr)
    for name, a, b in zip("qkv", gk, gr):
        e = rel_err(a, b, floor=max(floor, 1e-4))
        assert e < tol, f"d{name}: relative error {e:.2e}"
    return y


def rand(*shape, scale=1.0, device="cpu", dtype=torch.float32):
    return (torch.randn(*shape) * scale).to(device=device, dtype=dtype)


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_reference(causal, with_mask, device):
    # L = 37 no multiple of the 16-tiles, D = 20 no multiple of BC = 16
    B, L, D = 2, 37, 20
    q, k, v = (rand(B, L, D, scale=1.5, device=device) for _ in range(3))
    mask = None
    if with_mask:
        mask = torch.ones(B, L, dtype=torch.bool)
        mask[1, :3] = False  # causal: queries 0-2 of batch 1 see no key -> 0
        mask[1, 30:] = False
        mask[0, 10:12] = False
        mask = mask.to(device)
    y = check(q, k, v, causal, mask)
    if causal and with_mask:
        assert (y[1, :3] == 0).all()


def test_cross_lengths_multihead_and_rectangular_tiles(device):
    q = rand(2, 3, 13, 12, device=device)
    k, v = rand(2, 3, 29, 12, device=device), rand(2, 3, 29, 12, device=device)
    mask = torch.ones(2, 29, dtype=torch.bool, device=device)
    mask[0, 20:] = False
    check(q, k, v, False, mask, blocks=(8, 16, 8))


def test_causal_rectangular_tiles(device):
    q, k, v = (rand(1, 2, 23, 6, device=device) for _ in range(3))
    check(q, k, v, True, None, blocks=(16, 8, 8))
    check(q, k, v, True, None, blocks=(8, 16, 8))


def test_large_magnitude_is_stable(device):
    # logits down to -(100)^2: the online max keeps the largest weight at 1
    q, k = rand(1, 19, 4, scale=50.0, device=device), rand(1, 19, 4, scale=50.0, device=device)
    v = rand(1, 19, 4, device=device)
    from ea_zoo.kernels.ea_flash import ea_flash_triton

    y = ea_flash_triton(q, k, v)
    assert rel_err(y, ea_ref(q.double().cpu(), k.double().cpu(), v.double().cpu())) < TOL32


def test_all_keys_masked_gives_zero_and_zero_grads(device):
    from ea_zoo.kernels.ea_flash import ea_flash_triton

    q, k, v = (rand(2, 9, 3, device=device).requires_grad_() for _ in range(3))
    mask = torch.ones(2, 9, dtype=torch.bool, device=device)
    mask[1] = False
    y = ea_flash_triton(q, k, v, key_padding_mask=mask)
    assert (y[1] == 0).all()
    y.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all() and (t.grad[1] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype, device):
    q, k, v = (rand(2, 21, 8, device=device, dtype=dtype) for _ in range(3))
    check(q, k, v, True, None, tol=1e-2 if dtype == torch.bfloat16 else 2e-3)


def test_dispatch(device, monkeypatch):
    q, k, v = (rand(2, 14, 5, device=device) for _ in range(3))
    for causal in (False, True):
        y = ea(q, k, v, causal=causal, impl="triton")
        assert rel_err(y, ea(q.double(), k.double(), v.double(), causal=causal, impl="reference")) < TOL32
    from ea_zoo.kernels import _triton_utils

    def boom(self, grid):
        raise AssertionError("a kernel was launched")

    monkeypatch.setattr(_triton_utils.LazyKernel, "__getitem__", boom)
    cpu = [t.cpu() for t in (q, k, v)]
    torch.testing.assert_close(ea(*cpu), ea_ref(*cpu))  # auto on CPU: the reference
    with pytest.raises(ValueError, match="impl must be one of"):
        ea(*cpu, impl="flash")
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        ea(*(t.double() for t in cpu), impl="triton")
    with pytest.raises(ValueError, match="same D"):
        ea(cpu[0], cpu[1][..., :3], cpu[2][..., :3], impl="triton")
    with pytest.raises(ValueError, match="causal"):
        ea(cpu[0], cpu[1][:, :5], cpu[2][:, :5], causal=True, impl="triton")


def test_custom_op_registration(device):
    from ea_zoo.kernels import ea_flash as kf

    q, k, v = (rand(1, 2, 9, 4, device=device).requires_grad_() for _ in range(3))
    torch.library.opcheck(kf._ea_flash_fwd_op, (q, k, v, None, True, [8, 8, 4]),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
