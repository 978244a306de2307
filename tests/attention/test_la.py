"""The "la" backend (linear attention, Feng 2025 eq. 18) against explicit L x L weights."""
import pytest
import torch
import torch.nn.functional as F

from ea_zoo import create_attention
from ea_zoo.attention.la import LinearAttention

D, H = 16, 2
d = D // H
PHI = {
    "elu1": lambda x: F.elu(x) + 1,
    "relu": F.relu,
    "identity": lambda x: x,
}


def make(feature_map="elu1", causal=False, **kw):
    return create_attention("la", dim=D, num_heads=H, causal=causal, feature_map=feature_map, **kw).double().eval()


def naive(m, x, mask=None, causal=False):
    """w_ij = phi(q_i) . phi(k_j) over kept keys; y_i = sum_j w_ij v_j / max(sum_j w_ij, eps)
    (identity map: q scaled by d^-1/2, no denominator)."""
    q, k, v = m.project(x)
    phi = PHI[m.feature_map]
    identity = m.feature_map == "identity"
    w = (phi(q) * (d ** -0.5 if identity else 1.0)) @ phi(k).transpose(-1, -2)
    L = x.shape[1]
    keep = torch.ones(L, L, dtype=torch.bool)
    if causal:
        keep = keep.tril()
    if mask is not None:
        keep = keep & mask[:, None, None, :]
    w = torch.where(keep, w, 0.0)
    o = w @ v
    if not identity:
        o = o / w.sum(-1, keepdim=True).clamp_min(1e-6)
    return m.merge_heads(o)


def pad_mask(B, L):
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, L - 3:] = False
    mask[1, :2] = False
    mask[1, 5] = False
    return mask


def test_registered_and_options():
    m = make()
    assert isinstance(m, LinearAttention) and m.recurrent and m.supports_step
    assert m.paper_equation == "18" and m.feature_map == "elu1" and m.normalize
    a = create_attention("la_identity", dim=D, num_heads=H)
    assert isinstance(a, LinearAttention) and a.feature_map == "identity" and not a.normalize
    with pytest.raises(ValueError, match="elu1, identity, relu"):
        create_attention("la", dim=D, num_heads=H, feature_map="softmax")


def test_state_numel():
    for fm, expect in [("elu1", H * (d * d + d)), ("relu", H * (d * d + d)), ("identity", H * d * d)]:
        m = make(fm)
        assert m.state_numel(10) == m.state_numel(10_000) == expect
        st = m.init_state(3)
        assert sum(t.numel() for t in st.values()) == 3 * expect


@pytest.mark.parametrize("feature_map", ["elu1", "relu", "identity"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_matches_naive(feature_map, causal, padded):
    m = make(feature_map, causal, chunk_size=4)  # L = 11: not a multiple of the chunk
    x = torch.randn(2, 11, D, dtype=torch.float64)
    mask = pad_mask(2, 11) if padded else None
    torch.testing.assert_close(m(x, attn_mask=mask), naive(m, x, mask, causal), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("feature_map", ["elu1", "relu", "identity"])
def test_step_matches_parallel_and_z_is_sum_of_phi_k(feature_map):
    m = make(feature_map, causal=True, chunk_size=3)
    B, L = 2, 10
    x = torch.randn(B, L, D, dtype=torch.float64)
    y = m(x)
    _, k, _ = m.project(x)
    state = m.init_state(B)
    assert ("z" in state) == (feature_map != "identity")
    ys = []
    for t in range(L):
        yt, state = m.step(x[:, t], state)
        ys.append(yt)
        if "z" in state:
            torch.testing.assert_close(state["z"], PHI[feature_map](k[:, :, : t + 1]).sum(2))
    rel = (torch.stack(ys, 1) - y).norm() / y.norm()
    assert rel < 1e-9


def test_fully_padded_rows_and_gradcheck():
    m = make(causal=True)
    x = torch.randn(2, 6, D, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :3] = False
    y = m(x, attn_mask=mask)
    # rows that see no key mix nothing: the attention output is 0, so y is proj's bias
    torch.testing.assert_close(y[1, :3], m.proj.bias.expand(3, D))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    xs = torch.randn(1, 5, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t, attn_mask=mask[1:, 1:]), (xs,), fast_mode=True)


@pytest.mark.parametrize("feature_map", ["elu1", "identity"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_long(feature_map, dtype):
    m = create_attention("la", dim=D, num_heads=H, feature_map=feature_map).to(dtype).eval()
    x = (3 * torch.randn(1, 4096, D)).to(dtype)
    with torch.no_grad():
        for causal in (False, True):
            y = m(x, is_causal=causal)
            assert y.dtype == dtype and torch.isfinite(y).all()


# ------------------------------------------------------------------ state contract
from ea_zoo.testing import SCALES, check_future_invariance, check_init_state, check_prefill_and_step  # noqa: E402


@pytest.mark.parametrize("feature_map", ["elu1", "identity"])
def test_init_state_follows_the_module(feature_map):
    check_init_state(lambda: create_attention("la", dim=D, num_heads=H, feature_map=feature_map))


@pytest.mark.parametrize("feature_map", ["elu1", "relu", "identity"])
def test_prefill_in_pieces_and_step_is_the_L1_call(feature_map):
    check_prefill_and_step(make(feature_map, causal=True, chunk_size=4), D)


@pytest.mark.parametrize("feature_map", ["elu1", "identity"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", SCALES)
def test_future_keys_never_change_past_outputs(feature_map, dtype, scale):
    m = make(feature_map, chunk_size=8).to(dtype)
    check_future_invariance(lambda q, k, v: m.attend(q, k, v, None, True), H, d, dtype, scale)
