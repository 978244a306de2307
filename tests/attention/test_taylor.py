"""The "taylor" backend (Based, Arora et al. 2024; Feng 2025 eq. 20): weights 1 + s + s^2/2 with
s = q'.k'/sqrt(d') on projected q', k', normalised as in eq. 18."""
import math

import pytest
import torch

from ea_zoo import create_attention
from ea_zoo.attention.taylor import TaylorAttention

D, H = 16, 2
d = D // H


def make(causal=False, **kw):
    return create_attention("taylor", dim=D, num_heads=H, causal=causal, **kw).double().eval()


def naive(m, x, mask=None, causal=False):
    """Explicit weights w_ij = 1 + s_ij + s_ij^2 / 2 from the projected q', k' (no feature map)."""
    q, k, v = m.project(x)
    W = m.feature_proj  # (H, d', d)
    qp = torch.einsum("bhld,hed->bhle", q, W)
    kp = torch.einsum("bhld,hed->bhle", k, W)
    s = qp @ kp.transpose(-1, -2) / math.sqrt(W.shape[1])
    w = 1 + s + s ** 2 / 2
    L = x.shape[1]
    keep = torch.ones(L, L, dtype=torch.bool)
    if causal:
        keep = keep.tril()
    if mask is not None:
        keep = keep & mask[:, None, None, :]
    w = torch.where(keep, w, 0.0)
    return m.merge_heads((w @ v) / w.sum(-1, keepdim=True).clamp_min(1e-6))


def test_registered_and_sizes():
    m = make(feature_dim=4)
    assert isinstance(m, TaylorAttention) and m.recurrent and m.supports_step
    assert "20" in m.paper_equation
    assert m.feature_proj.shape == (H, 4, d)
    F = 1 + 4 + 16
    assert m.feature_dim == F
    assert m.state_numel(5) == m.state_numel(5000) == H * (F * d + F)
    st = m.init_state(3)
    assert st["S"].shape == (3, H, F, d) and st["z"].shape == (3, H, F)
    assert make().proj_dim == 16
    with pytest.raises(ValueError, match="feature_dim"):
        create_attention("taylor", dim=D, num_heads=H, feature_dim=0)


def test_feature_dot_product_is_second_order_taylor():
    m = make(feature_dim=5)
    a, b = torch.randn(3, 5, dtype=torch.float64) * 2, torch.randn(3, 5, dtype=torch.float64) * 2
    fa, fb = m.taylor_features(a), m.taylor_features(b)
    assert fa.shape == (3, 1 + 5 + 25)
    s = (a * b).sum(-1) / math.sqrt(5)
    torch.testing.assert_close((fa * fb).sum(-1), 1 + s + s ** 2 / 2)
    assert ((fa * fb).sum(-1) >= 0.5 - 1e-12).all()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_matches_naive(causal, padded):
    m = make(causal, feature_dim=6, chunk_size=4)
    x = torch.randn(2, 11, D, dtype=torch.float64)
    mask = None
    if padded:
        mask = torch.ones(2, 11, dtype=torch.bool)
        mask[0, 8:] = False
        mask[1, :3] = False
    torch.testing.assert_close(m(x, attn_mask=mask), naive(m, x, mask, causal), rtol=1e-10, atol=1e-10)


def test_step_matches_parallel_and_z_is_sum_of_phi_k():
    m = make(causal=True, feature_dim=4, chunk_size=3)
    B, L = 2, 10
    x = torch.randn(B, L, D, dtype=torch.float64)
    y = m(x)
    _, k, _ = m.project(x)
    fk = m.phi_k(k)
    state = m.init_state(B)
    ys = []
    for t in range(L):
        yt, state = m.step(x[:, t], state)
        ys.append(yt)
        torch.testing.assert_close(state["z"], fk[:, :, : t + 1].sum(2))
    rel = (torch.stack(ys, 1) - y).norm() / y.norm()
    assert rel < 1e-9


def test_padding_grads_and_gradcheck():
    m = make(causal=True, feature_dim=4)
    x = torch.randn(2, 6, D, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :2] = False
    y = m(x, attn_mask=mask)
    torch.testing.assert_close(y[1, :2], m.proj.bias.expand(2, D))  # no key seen: output 0
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and m.feature_proj.grad.abs().sum() > 0
    xs = torch.randn(1, 4, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t, attn_mask=mask[1:, 2:]), (xs,), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_long(dtype):
    m = create_attention("taylor", dim=D, num_heads=H).to(dtype).eval()
    x = (3 * torch.randn(1, 4096, D)).to(dtype)
    with torch.no_grad():
        for causal in (False, True):
            y = m(x, is_causal=causal)
            assert y.dtype == dtype and torch.isfinite(y).all()


# ------------------------------------------------------------------ state contract
from ea_zoo.testing import SCALES, check_future_invariance, check_init_state, check_prefill_and_step  # noqa: E402


def test_init_state_follows_the_module():
    check_init_state(lambda: create_attention("taylor", dim=D, num_heads=H, feature_dim=4))


def test_prefill_in_pieces_and_step_is_the_L1_call():
    check_prefill_and_step(make(causal=True, feature_dim=4, chunk_size=4), D)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", SCALES)
def test_future_keys_never_change_past_outputs(dtype, scale):
    m = make(feature_dim=4, chunk_size=8).to(dtype)
    check_future_invariance(lambda q, k, v: m.attend(q, k, v, None, True), H, d, dtype, scale)
