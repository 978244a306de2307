"""The interface contract, checked for every registered attention name (aliases included).

The names are ``list_attentions()`` at collection, after the plugin modules named in
``$EA_ZOO_PLUGINS`` (comma-separated; imported by ``import ea_zoo``), so a backend defined
outside the package is checked with ``EA_ZOO_PLUGINS=my_module pytest
tests/attention/test_conformance.py -k my_backend``.
"""
import pytest
import torch
from omegaconf import OmegaConf

import ea_zoo
from ea_zoo import AttentionBase, StepNotSupportedError, create_attention, list_attentions
from ea_zoo.registry import parse_attention

ea_zoo.load_plugins()  # $EA_ZOO_PLUGINS (already imported by `import ea_zoo`; a no-op then)
NAMES = list_attentions()
D, H = 16, 2


def make(name, causal=False, dtype=torch.float64, length=64, **kw):
    torch.manual_seed(0)  # a length option (AFT's max_len) is filled with `length`
    spec = parse_attention(name).with_length(length)
    m = create_attention(spec, dim=D, num_heads=H, causal=causal, **kw).to(dtype)
    m.eval()
    return m


def test_all_required_names_registered():
    required = {"sa", "la", "aft_full", "aft_simple", "aft_local", "hedgehog", "taylor", "ea",
                "ea_series", "ea2", "ea4", "ea6", "ea8", "la_identity"}
    assert required <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_shape_and_dtype(name, causal):
    m = make(name, causal, dtype=torch.float32)
    x = torch.randn(2, 13, D)
    y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    assert isinstance(m, AttentionBase)


@pytest.mark.parametrize("name", NAMES)
def test_causal_leaks_nothing_from_future(name):
    m = make(name, causal=True)
    x = torch.randn(2, 11, D, dtype=torch.float64)
    y = m(x)
    for i in (0, 4, 9):
        x2 = x.clone()
        x2[:, i + 1:] = torch.randn_like(x2[:, i + 1:]) * 3
        y2 = m(x2)
        torch.testing.assert_close(y2[:, : i + 1], y[:, : i + 1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_is_causal_overrides_constructor(name):
    m = make(name, causal=False)
    x = torch.randn(1, 9, D, dtype=torch.float64)
    mc = make(name, causal=True)
    mc.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x, is_causal=True), mc(x))
    torch.testing.assert_close(mc(x, is_causal=False), m(x))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_padded_keys_change_nothing(name, causal):
    m = make(name, causal)
    B, L = 3, 12
    x = torch.randn(B, L, D, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 8:] = False          # right padding
    mask[1, :3] = False          # left padding
    mask[2, [2, 5, 6]] = False   # holes
    y = m(x, attn_mask=mask)
    x2 = x.clone()
    x2[~mask] = torch.randn_like(x2[~mask]) * 5
    y2 = m(x2, attn_mask=mask)
    keep = mask.unsqueeze(-1).expand_as(y)
    torch.testing.assert_close(y2[keep], y[keep], rtol=1e-10, atol=1e-10)
    assert torch.isfinite(y).all() and torch.isfinite(y2).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_fully_masked_sequence_is_finite(name, causal):
    m = make(name, causal)
    x = torch.randn(2, 7, D, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1] = False
    y = m(x, attn_mask=mask)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", [n for n in NAMES])
def test_step_reproduces_parallel_causal(name):
    m = make(name, causal=True)
    if not m.supports_step:
        pytest.fail(f"{name} has no step; every current backend is expected to decode")
    B, L = 2, 10
    x = torch.randn(B, L, D, dtype=torch.float64)
    y = m(x)
    state = m.init_state(B, device=x.device, dtype=torch.float64)
    ys = []
    for t in range(L):
        yt, state = m.step(x[:, t], state)
        ys.append(yt)
    ys = torch.stack(ys, 1)
    rel = (ys - y).norm() / y.norm()
    assert rel < 1e-9, f"{name}: step vs parallel relative error {rel:.3e}"


@pytest.mark.parametrize("name", NAMES)
def test_state_numel_matches_state_and_recurrence(name):
    m = make(name, causal=True)
    B = 2
    x = torch.randn(B, 12, D, dtype=torch.float64)
    state = m.init_state(B, dtype=torch.float64)
    for t in range(x.shape[1]):
        _, state = m.step(x[:, t], state)
    held = sum(v.numel() for v in state.values() if torch.is_tensor(v)) // B
    assert held <= m.state_numel(12), (held, m.state_numel(12))
    if m.recurrent:
        assert m.state_numel(100) == m.state_numel(10_000)
    else:
        assert m.state_numel(10_000) > m.state_numel(100)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_float64(name, causal):
    m = make(name, causal)
    x = torch.randn(1, 5, D, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False, True, True]])
    assert torch.autograd.gradcheck(lambda inp: m(inp, attn_mask=mask), (x,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_long_sequence_finite(name, dtype):
    m = make(name, causal=name in ("ea", "sa"), dtype=dtype, length=4096)
    x = (torch.randn(1, 4096, D) * 3).to(dtype)
    with torch.no_grad():
        y = m(x)
    assert y.dtype == dtype
    assert torch.isfinite(y.float()).all()
    if m.causal is False:
        with torch.no_grad():
            yc = m(x, is_causal=True)
        assert torch.isfinite(yc.float()).all()


# ------------------------------------------------------------------ trained-model scale

SCALES = [1.0, 3.0, 10.0, 30.0]


def make_scaled(name, scale, offset, dtype=torch.float64, causal=True):
    """A backend whose q, k, v have spread ~``scale`` and keys centred at +-``offset`` per
    channel: weights scaled as a stand-in for a trained layer, the k part of the qkv bias set."""
    m = make(name, causal=causal, dtype=torch.float64, qkv_bias=True)
    g = torch.Generator().manual_seed(int(scale * 7 + offset))
    with torch.no_grad():
        m.qkv.weight.mul_(scale * 3.0)
        m.qkv.bias.zero_()
        sign = torch.where(torch.rand(D, generator=g) < 0.5, -1.0, 1.0).double()
        m.qkv.bias[D:2 * D] = offset * sign
    return m.to(dtype)


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (3.0, 3.0), (10.0, 10.0), (30.0, 30.0)])
def test_future_tokens_change_nothing_at_trained_scale(name, scale, offset):
    """Outputs before position i do not move when tokens >= i change: float64 to rounding,
    fp32 within 1e-6 relative (keys at offsets up to 30, inputs of scale up to 30)."""
    x = torch.randn(2, 40, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        m = make_scaled(name, scale, offset, dtype)
        with torch.no_grad():
            y = m(x.to(dtype))
            assert torch.isfinite(y).all(), f"{name}: non-finite output at scale {scale}"
            for cut in (1, 17, 33):
                x2 = x.clone()
                x2[:, cut:] = -x2[:, cut:] * 2.0
                y2 = m(x2.to(dtype))
                err = rel_err(y2[:, :cut], y[:, :cut])
                assert err <= tol, f"{name} {dtype}: outputs before {cut} moved by {err:.2e} (relative)"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", SCALES)
def test_prefill_in_pieces_equals_forward_and_step(name, scale):
    """forward == prefill in pieces of random sizes with the state passed on == step (float64)."""
    m = make_scaled(name, scale, scale)
    B, L = 2, 23
    x = torch.randn(B, L, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = m(x)
        g = torch.Generator().manual_seed(int(scale))  # pieces of random sizes (1 token included)
        inner = sorted(set(torch.randint(1, L, (5,), generator=g).tolist()) | {1})
        cuts = [0] + inner + [L]
        state, outs = None, []
        for a, b in zip(cuts[:-1], cuts[1:]):
            o, state = m.prefill(x[:, a:b], state)
            outs.append(o)
        err = rel_err(torch.cat(outs, 1), y)
        assert err < 1e-9, f"{name}: prefill in pieces vs forward {err:.2e}"
        st = m.init_state(B)
        ys = []
        for t in range(L):
            o, st = m.step(x[:, t], st)
            ys.append(o)
        err = rel_err(torch.stack(ys, 1), y)
        assert err < 1e-9, f"{name}: step vs forward {err:.2e}"


@pytest.mark.parametrize("name", NAMES)
def test_init_state_follows_the_module(name):
    m = make(name, causal=True, dtype=torch.float64)
    tensors = [v for v in m.init_state().values() if torch.is_tensor(v)]
    assert tensors and all(t.dtype == torch.float64 for t in tensors), name
    m32 = make(name, causal=True, dtype=torch.float32)
    assert all(t.dtype == torch.float32 for t in m32.init_state(3).values() if torch.is_tensor(t))
    mh = make(name, causal=True, dtype=torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in mh.init_state().values() if torch.is_tensor(t))
    with torch.device("meta"):
        mm = create_attention(parse_attention(name).with_length(64), dim=D, num_heads=H, causal=True)
        assert all(t.device.type == "meta" for t in mm.init_state().values() if torch.is_tensor(t)), name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_nan_in_padded_position_has_no_influence(name, causal):
    m = make(name, causal)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 3] = False
    mask[1, 7:] = False
    y = m(x, attn_mask=mask)
    x2 = x.clone()
    x2[0, 3] = float("nan")
    x2[1, 7] = float("inf")
    x2[1, 8] = float("nan")
    y2 = m(x2, attn_mask=mask)
    torch.testing.assert_close(y2[mask], y[mask], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_empty_sequence_gives_an_empty_output(name, causal):
    m = make(name, causal, dtype=torch.float32)
    y = m(torch.randn(2, 0, D))
    assert y.shape == (2, 0, D)
    if causal:
        y, state = m.prefill(torch.randn(2, 0, D))
        assert y.shape == (2, 0, D)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_builds_and_runs_on_the_meta_device(name, causal):
    with torch.device("meta"):
        m = create_attention(parse_attention(name).with_length(64), dim=D, num_heads=H, causal=causal)
        x = torch.randn(2, 9, D)
        for mask in (None, torch.ones(2, 9, dtype=torch.bool)):
            y = m(x, attn_mask=mask)
            assert y.device.type == "meta" and y.shape == x.shape


# ------------------------------------------------------------------ bad input
def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: .*ea6"):
        create_attention("ea7x", dim=D)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['ordr'\].*order"):
        create_attention("ea_series", dim=D, ordr=6)


@pytest.mark.parametrize("order", [3, 5, -2])
def test_odd_or_negative_order_refused(order):
    with pytest.raises(ValueError, match="order"):
        create_attention("ea_series", dim=D, order=order)


def test_odd_order_opt_in():
    m = create_attention("ea_series", dim=D, num_heads=H, order=3, allow_odd=True)
    assert m(torch.randn(1, 4, D)).shape == (1, 4, D)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_last_dimension(name):
    m = make(name, dtype=torch.float32)
    with pytest.raises(ValueError, match=f"D={D}"):
        m(torch.randn(2, 5, D + 1))


@pytest.mark.parametrize("name", NAMES)
def test_mask_of_wrong_shape(name):
    m = make(name, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"\(B, L\) = \(2, 5\)"):
        m(torch.randn(2, 5, D), attn_mask=torch.ones(2, 6, dtype=torch.bool))


def test_config_forms():
    a = create_attention({"name": "ea_series", "order": 4, "causal": True}, dim=D, num_heads=H)
    b = create_attention(OmegaConf.create({"name": "ea4", "causal": True}), dim=D, num_heads=H)
    assert a.order == b.order == 4 and a.causal and b.causal
    with pytest.raises(ValueError, match="'name'"):
        create_attention({"order": 4}, dim=D)
    assert ea_zoo.get_attention_cls("ea6") is ea_zoo.get_attention_cls("ea_series")
    assert create_attention("la_identity", dim=D, num_heads=H).feature_map == "identity"


def test_step_on_backend_without_recurrent_form_is_a_clear_error():
    class NoStep(AttentionBase):
        supports_step = False

        def attend(self, q, k, v, key_padding_mask, causal):
            return v

    m = NoStep(D, num_heads=H)
    with pytest.raises(StepNotSupportedError, match="NoStep"):
        m.init_state(1)
    with pytest.raises(StepNotSupportedError, match="supports_step"):
        m.step(torch.randn(1, D), {})
