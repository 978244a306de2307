"""Full EA (Feng 2025 eq. 1-2) against a naive float64 softmax over eq. 1."""
import pytest
import torch

from ea_zoo.functional import ea, ea_init_state, ea_step


def naive(q, k, v, causal=False, mask=None):
    o = -(q[:, :, None, :] - k[:, None, :, :]) ** 2  # (B, Lq, Lk, D), eq. 1
    L = q.shape[1]
    if causal:
        o = o.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1)[None, :, :, None], float("-inf"))
    if mask is not None:
        o = o.masked_fill(~mask[:, None, :, None], float("-inf"))
    w = torch.softmax(o, dim=2)
    return (w * v[:, None]).sum(2)


@pytest.mark.parametrize("causal", [False, True])
def test_matches_naive_softmax(causal):
    q, k, v = (torch.randn(2, 10, 6, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 7:] = False
    torch.testing.assert_close(ea(q, k, v, causal), naive(q, k, v, causal), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        ea(q, k, v, causal, key_padding_mask=mask), naive(q, k, v, causal, mask), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("causal", [False, True])
def test_blocked_path_equals_single_block_with_gradients(causal):
    q, k, v = (torch.randn(2, 2, 37, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    y1 = ea(q, k, v, causal)
    g1 = torch.autograd.grad(y1.square().sum(), (q, k, v))
    y2 = ea(q, k, v, causal, max_block_elements=2 * 2 * 37 * 3 * 5)  # 5 queries per block
    g2 = torch.autograd.grad(y2.square().sum(), (q, k, v))
    torch.testing.assert_close(y1, y2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_stable_at_large_magnitude():
    q = torch.randn(1, 8, 4) * 50
    k = torch.randn(1, 8, 4) * 50
    v = torch.randn(1, 8, 4)
    y = ea(q, k, v)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), naive(q.double(), k.double(), v.double()), rtol=1e-4, atol=1e-4)


def test_no_valid_key_gives_zero():
    q, k, v = (torch.randn(1, 4, 3) for _ in range(3))
    mask = torch.zeros(1, 4, dtype=torch.bool)
    y = ea(q, k, v, key_padding_mask=mask)
    assert (y == 0).all()


@pytest.mark.parametrize("scale", [1.0, 10.0, 30.0])
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_autograd_of_the_naive_softmax(causal, scale):
    """The hand-written backward (p, s = p g (v - y), dq, dk, dv) against autograd through the
    naive float64 softmax, in query blocks, with padded keys, at the scales trained models reach."""
    torch.manual_seed(int(scale))
    q, k, v = (scale * torch.randn(2, 13, 4, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[1, 9:] = False
    g = torch.randn(2, 13, 4, dtype=torch.float64)
    grads = []
    for f in (lambda a, b, c: ea(a, b, c, causal, key_padding_mask=mask, max_block_elements=2 * 13 * 4 * 3),
              lambda a, b, c: naive(a, b, c, causal, mask)):
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        y = f(*x)
        grads.append([y, *torch.autograd.grad(y, x, g)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * scale)
    # padded keys get no gradient
    assert (grads[0][2][1, 9:] == 0).all() and (grads[0][3][1, 9:] == 0).all()


def test_gradients_finite_and_zero_where_no_key_is_visible():
    q, k, v = (torch.randn(2, 4, 3, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[False] * 4, [True, True, False, False]])
    y = ea(q, k, v, key_padding_mask=mask)
    gq, gk, gv = torch.autograd.grad(y.sum(), (q, k, v))
    assert all(torch.isfinite(t).all() for t in (gq, gk, gv))
    assert (gq[0] == 0).all() and (gk[0] == 0).all() and (gv[0] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_have_finite_gradients(dtype):
    q, k, v = ((10 * torch.randn(2, 16, 8)).to(dtype).requires_grad_() for _ in range(3))
    y = ea(q, k, v, causal=True)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert all(torch.isfinite(t).all() for t in torch.autograd.grad(y.float().sum(), (q, k, v)))


def test_gradcheck():
    q, k, v = (torch.randn(1, 5, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda a, b, c: ea(a, b, c, causal=True, max_block_elements=30), (q, k, v))


def test_step_cache():
    q, k, v = (torch.randn(2, 6, 4, dtype=torch.float64) for _ in range(3))
    y = ea(q, k, v, causal=True)
    state = ea_init_state((2, 4), dtype=torch.float64)
    for t in range(6):
        yt, state = ea_step(q[:, t], k[:, t], v[:, t], state)
        torch.testing.assert_close(yt, y[:, t])
    assert state["k"].shape == (2, 6, 4)


def test_causal_needs_square():
    q = torch.randn(1, 3, 2)
    k = torch.randn(1, 5, 2)
    with pytest.raises(ValueError, match="causal"):
        ea(q, k, k, causal=True)


@pytest.mark.parametrize("causal", [False, True])
def test_nan_at_padded_key_does_not_reach_valid_outputs(causal):
    q, k, v = (torch.randn(2, 9, 4, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 3] = False
    clean = ea(q, k, v, causal=causal, key_padding_mask=mask)
    k[0, 3], v[0, 3] = float("nan"), float("inf")
    torch.testing.assert_close(ea(q, k, v, causal=causal, key_padding_mask=mask), clean, rtol=0, atol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_plain_op_path_has_the_same_gradients(causal):
    """Under torch.jit.trace (fvcore) the block runs as plain ops through autograd; its gradients
    equal the hand-written backward's."""
    from ea_zoo.functional.ea import _EABlock

    q, k, v = (10 * torch.randn(2, 7, 3, dtype=torch.float64) for _ in range(3))
    g = torch.randn(2, 7, 3, dtype=torch.float64)
    grads = []
    for fn in (_EABlock.apply, _EABlock.forward):
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        y = fn(*x, None, 0, causal)[0]
        grads.append([y, *torch.autograd.grad(y, x, g)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
