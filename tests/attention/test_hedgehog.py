"""The "hedgehog" backend (Zhang et al. 2024): phi(x) = [softmax(Wx), softmax(-Wx)] per head,
normalised linear attention (Feng 2025 eq. 18), against explicit L x L weights."""
import pytest
import torch

from ea_zoo import create_attention
from ea_zoo.attention.hedgehog import HedgehogAttention

D, H = 16, 2
d = D // H


def make(causal=False, perturb=True, **kw):
    m = create_attention("hedgehog", dim=D, num_heads=H, causal=causal, **kw).double().eval()
    if perturb:  # move W away from the identity so q and k maps differ
        with torch.no_grad():
            m.feature_map_q.add_(0.5 * torch.randn_like(m.feature_map_q))
            m.feature_map_k.add_(0.5 * torch.randn_like(m.feature_map_k))
    return m


def phi(x, W, single):
    """x (B, H, L, d), W (H, d, d) -> (B, H, L, 2d), written out per head."""
    out = []
    for h in range(x.shape[1]):
        y = x[:, h] @ W[h].T
        if single:
            out.append(torch.softmax(torch.cat([y, -y], -1), -1))
        else:
            out.append(torch.cat([torch.softmax(y, -1), torch.softmax(-y, -1)], -1))
    return torch.stack(out, 1)


def naive(m, x, mask=None, causal=False):
    q, k, v = m.project(x)
    fq = phi(q, m.feature_map_q, m.single_softmax)
    fk = phi(k, m.feature_map_k, m.single_softmax)
    w = fq @ fk.transpose(-1, -2)
    L = x.shape[1]
    keep = torch.ones(L, L, dtype=torch.bool)
    if causal:
        keep = keep.tril()
    if mask is not None:
        keep = keep & mask[:, None, None, :]
    w = torch.where(keep, w, 0.0)
    return m.merge_heads((w @ v) / w.sum(-1, keepdim=True).clamp_min(1e-6))


def test_registered_init_and_state():
    m = make(perturb=False)
    assert isinstance(m, HedgehogAttention) and m.recurrent and m.supports_step
    eye = torch.eye(d, dtype=torch.float64).expand(H, d, d)
    torch.testing.assert_close(m.feature_map_q.data, eye)
    torch.testing.assert_close(m.feature_map_k.data, eye)
    assert m.feature_map_q is not m.feature_map_k
    assert m.feature_dim == 2 * d
    assert m.state_numel(7) == m.state_numel(7000) == H * (2 * d * d + 2 * d)


@pytest.mark.parametrize("single", [False, True])
def test_feature_map_values(single):
    m = make(perturb=False, single_softmax=single)
    x = torch.randn(2, H, 5, d, dtype=torch.float64)
    f = m.phi_q(x)
    assert f.shape == (2, H, 5, 2 * d) and (f > 0).all()
    if single:
        torch.testing.assert_close(f, torch.softmax(torch.cat([x, -x], -1), -1))
        torch.testing.assert_close(f.sum(-1), torch.ones(2, H, 5, dtype=torch.float64))
    else:
        torch.testing.assert_close(f, torch.cat([torch.softmax(x, -1), torch.softmax(-x, -1)], -1))
        torch.testing.assert_close(f.sum(-1), 2 * torch.ones(2, H, 5, dtype=torch.float64))


@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_matches_naive(single, causal, padded):
    m = make(causal, single_softmax=single, chunk_size=4)
    x = torch.randn(2, 11, D, dtype=torch.float64)
    mask = None
    if padded:
        mask = torch.ones(2, 11, dtype=torch.bool)
        mask[0, 8:] = False
        mask[1, :3] = False
    torch.testing.assert_close(m(x, attn_mask=mask), naive(m, x, mask, causal), rtol=1e-10, atol=1e-10)


def test_step_matches_parallel_and_z_is_sum_of_phi_k():
    m = make(causal=True, chunk_size=4)
    B, L = 2, 10
    x = torch.randn(B, L, D, dtype=torch.float64)
    y = m(x)
    _, k, _ = m.project(x)
    fk = phi(k, m.feature_map_k, False)
    state = m.init_state(B)
    ys = []
    for t in range(L):
        yt, state = m.step(x[:, t], state)
        ys.append(yt)
        torch.testing.assert_close(state["z"], fk[:, :, : t + 1].sum(2))
    rel = (torch.stack(ys, 1) - y).norm() / y.norm()
    assert rel < 1e-9


def test_both_maps_learn_and_gradcheck():
    m = make(causal=True)
    x = torch.randn(2, 6, D, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :2] = False
    m(x, attn_mask=mask).square().sum().backward()
    for p in (m.feature_map_q, m.feature_map_k):
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert torch.isfinite(x.grad).all()
    xs = torch.randn(1, 4, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t, attn_mask=mask[1:, 2:]), (xs,), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_long(dtype):
    m = create_attention("hedgehog", dim=D, num_heads=H).to(dtype).eval()
    x = (3 * torch.randn(1, 4096, D)).to(dtype)
    with torch.no_grad():
        for causal in (False, True):
            y = m(x, is_causal=causal)
            assert y.dtype == dtype and torch.isfinite(y).all()


# ------------------------------------------------------------------ state contract
from ea_zoo.testing import SCALES, check_future_invariance, check_init_state, check_prefill_and_step  # noqa: E402


def test_init_state_follows_the_module():
    check_init_state(lambda: create_attention("hedgehog", dim=D, num_heads=H))


@pytest.mark.parametrize("single", [False, True])
def test_prefill_in_pieces_and_step_is_the_L1_call(single):
    check_prefill_and_step(make(causal=True, single_softmax=single, chunk_size=4), D)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", SCALES)
def test_future_keys_never_change_past_outputs(dtype, scale):
    m = make(chunk_size=8).to(dtype)
    check_future_invariance(lambda q, k, v: m.attend(q, k, v, None, True), H, d, dtype, scale)
