"""The "sa" backend (softmax attention, Feng 2025 eq. 17): naive float64 reference, timm
compatibility (weights, broadcast masks, Block), dropout, KV-cache decoding."""
import pytest
import torch
from timm.layers import Attention as TimmAttention
from timm.models.vision_transformer import Block

from ea_zoo import create_attention
from ea_zoo.attention.sa import SoftmaxAttention

D, H = 16, 2


def make(causal=False, **kw):
    return create_attention("sa", dim=D, num_heads=H, causal=causal, **kw).double().eval()


def naive(m, x, mask=None, causal=False):
    """Projection by the module, then explicit L x L softmax weights; rows with no key -> 0."""
    q, k, v = m.project(x)
    L = x.shape[1]
    s = q @ k.transpose(-1, -2) / m.head_dim ** 0.5
    keep = torch.ones(L, L, dtype=torch.bool)
    if causal:
        keep = keep.tril()
    if mask is not None:
        keep = keep & mask[:, None, None, :]
    w = torch.where(keep, torch.exp(s - s.amax(-1, keepdim=True)), 0.0)
    den = w.sum(-1, keepdim=True)
    w = torch.where(den > 0, w / torch.where(den > 0, den, 1.0), 0.0)
    return m.merge_heads(w @ v)


def test_registered():
    m = make()
    assert isinstance(m, SoftmaxAttention) and m.attention_name == "sa"
    assert not m.recurrent and m.supports_step and m.paper_equation == "17"
    assert m.state_numel(10) == 2 * 10 * D and m.state_numel(20) == 2 * 20 * D


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_matches_naive(causal, padded):
    m = make(causal)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    mask = None
    if padded:
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[0, 6:] = False
        mask[1, :3] = False  # left padding: causal rows 0..2 see nothing -> 0 before proj
    torch.testing.assert_close(m(x, attn_mask=mask), naive(m, x, mask, causal), rtol=1e-10, atol=1e-10)


def test_same_weights_and_masks_as_timm_attention():
    m = make()
    ref = TimmAttention(D, num_heads=H).double().eval()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 7, D, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref(x))
    bool_mask = torch.rand(2, 1, 7, 7) > 0.3
    bool_mask[..., 0] = True  # every row keeps a key (timm/SDPA rows with none are undefined)
    torch.testing.assert_close(m(x, attn_mask=bool_mask), ref(x, attn_mask=bool_mask))
    float_mask = torch.randn(1, H, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(m(x, attn_mask=float_mask), ref(x, attn_mask=float_mask))
    sq = torch.rand(7, 7) > 0.5
    sq[:, 0] = True
    torch.testing.assert_close(m(x, attn_mask=sq), ref(x, attn_mask=sq))
    torch.testing.assert_close(m(x, is_causal=True), ref(x, is_causal=True))


def test_key_padding_mask_form():
    m = make()
    x = torch.randn(2, 7, D, dtype=torch.float64)
    kpm = torch.ones(2, 7, dtype=torch.bool)
    kpm[1, 4:] = False
    as_sdpa = kpm[:, None, None, :]
    torch.testing.assert_close(m(x, attn_mask=kpm), m(x, attn_mask=as_sdpa))
    torch.testing.assert_close(m(x, attn_mask=kpm.long()), m(x, attn_mask=as_sdpa))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        m(x, attn_mask=torch.ones(2, 5, dtype=torch.bool))


def test_in_timm_block():
    blk = Block(D, num_heads=H, attn_layer=SoftmaxAttention)
    assert isinstance(blk.attn, SoftmaxAttention)
    assert blk(torch.randn(2, 5, D)).shape == (2, 5, D)


def test_attn_drop_only_in_training():
    m = create_attention("sa", dim=D, num_heads=H, attn_drop=0.5)
    x = torch.randn(2, 8, D)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    m.train()
    assert not torch.allclose(m(x), m.eval()(x))


def test_step_matches_parallel_causal():
    m = make(causal=True)
    x = torch.randn(2, 10, D, dtype=torch.float64)
    y = m(x)
    state = m.init_state(2)
    assert state["k"].shape == (2, H, 0, D // H) and state["k"].dtype == torch.float64
    ys = []
    for t in range(10):
        yt, state = m.step(x[:, t], state)
        ys.append(yt)
    assert state["k"].shape == (2, H, 10, D // H)
    rel = (torch.stack(ys, 1) - y).norm() / y.norm()
    assert rel < 1e-9


def test_dead_rows_finite_grads_and_gradcheck():
    m = make(causal=True)
    x = torch.randn(2, 6, D, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :2] = False
    y = m(x, attn_mask=mask)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    xs = torch.randn(1, 4, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t, attn_mask=mask[1:, :4]), (xs,), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_long(dtype):
    m = create_attention("sa", dim=D, num_heads=H, causal=True).to(dtype).eval()
    x = (3 * torch.randn(1, 2048, D)).to(dtype)
    with torch.no_grad():
        y = m(x)
    assert y.dtype == dtype and torch.isfinite(y).all()


# ------------------------------------------------------------------ state contract
from ea_zoo.testing import SCALES, check_future_invariance, check_init_state, check_prefill_and_step  # noqa: E402


def test_init_state_follows_the_module():
    check_init_state(lambda: create_attention("sa", dim=D, num_heads=H))


def test_prefill_in_pieces_and_step_is_the_L1_call():
    check_prefill_and_step(make(causal=True), D)
    st = make().init_state(2)
    assert set(st) == {"k", "v"} and st["k"].shape == (2, H, 0, D // H)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", SCALES)
def test_future_keys_never_change_past_outputs(dtype, scale):
    m = make().to(dtype)
    check_future_invariance(lambda q, k, v: m.attend(q, k, v, None, True), H, D // H, dtype, scale)
