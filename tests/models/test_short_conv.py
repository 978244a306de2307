"""The short causal convolution in front of the attention (``short_conv=K``): the depthwise
convolution against a float64 loop, its three forms (parallel == prefill in pieces == step),
causality and padding, the models' three forms with it for several backends, the decoding
state's size, the config key, and bad values named before any work."""
import re

import pytest
import torch

import ea_zoo
from ea_zoo.models import SequenceTransformer
from ea_zoo.models.short_conv import ShortConv
from ea_zoo.testing import check_model_decoding


def _loop_reference(conv: ShortConv, x: torch.Tensor) -> torch.Tensor:
    """y_i = b + sum_s w[:, 0, K-1-s] * x_{i-s}, x_{<0} = 0, as a float64 loop."""
    K = conv.kernel_size
    w, b = conv.weight.double()[:, 0], conv.bias.double()
    x = x.double()
    y = torch.zeros_like(x)
    for i in range(x.shape[1]):
        y[:, i] = b
        for s in range(K):
            if i - s >= 0:
                y[:, i] += w[:, K - 1 - s] * x[:, i - s]
    return y


@pytest.mark.parametrize("K", [2, 4, 7])
def test_short_conv_matches_a_float64_loop_at_scale(K):
    torch.manual_seed(K)
    conv = ShortConv(8, K)
    x = 20 * torch.randn(3, 13, 8)  # the scale trained models' activations reach
    torch.testing.assert_close(conv(x).double(), _loop_reference(conv, x), rtol=1e-5, atol=1e-4)


def test_short_conv_parallel_equals_prefill_in_pieces_equals_steps():
    torch.manual_seed(0)
    conv = ShortConv(6, 4).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    full = conv(x)
    st = conv.init_state(2, dtype=torch.float64)
    assert st.shape == (2, 3, 6) and conv.state_numel(1000) == 18
    a, st = conv.prefill(x[:, :2], st)  # shorter than the kernel
    b, st = conv.prefill(x[:, 2:7], st)
    outs = [a, b]
    for t in range(7, 11):
        y, st = conv.step(x[:, t], st)
        outs.append(y[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=0, atol=1e-12)
    torch.testing.assert_close(st, x[:, -3:])


def test_short_conv_is_causal_and_padding_never_reaches_valid_positions():
    torch.manual_seed(0)
    conv = ShortConv(5, 4).double()
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 6:] = 1e3 * torch.randn(2, 3, 5, dtype=torch.float64)
    assert torch.equal(conv(x)[:, :6], conv(x2)[:, :6])
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 2:4] = False  # padded positions inside a sequence
    x3 = x.clone()
    x3[0, 2:4] = float("1e30")
    y, y3 = conv(x, mask), conv(x3, mask)
    assert torch.isfinite(y3).all()
    torch.testing.assert_close(y3[mask], y[mask], rtol=0, atol=0)


def test_short_conv_gradients():
    torch.manual_seed(0)
    conv = ShortConv(3, 3).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: conv(t), (x,))


def _lm(attention, K=4, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    m = SequenceTransformer(attention, task="lm", vocab_size=17, causal=True, depth=2, embed_dim=16, num_heads=2,
                            dropout=0.0, pos_embed="learned", max_len=32, short_conv=K, **kw)
    return m.to(dtype).eval()


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])
@pytest.mark.parametrize("attention", ["sa", "ea6", "ea", "la", "aft_full", "aft_simple", "ea6+sa@1"])
def test_model_with_short_conv_parallel_equals_steps_equals_prefill(attention, norm_first):
    m = _lm(attention, norm_first=norm_first)
    ids = torch.randint(0, 17, (2, 12))
    check_model_decoding(m, ids, 2, 9)  # the first piece shorter than the kernel
    assert torch.equal(m.generate(ids[:, :3], 4), m.generate(ids[:, :3], 4, use_cache=False))


def test_model_short_conv_changes_the_model_and_is_causal():
    ids = torch.randint(0, 17, (2, 10))
    with_conv, without = _lm("ea6", K=4), _lm("ea6", K=0)
    assert all(b.short_conv is not None for b in with_conv.blocks)
    assert all(b.short_conv is None for b in without.blocks)
    with torch.no_grad():
        y = with_conv(ids)
        ids2 = ids.clone()
        ids2[:, 7:] = (ids2[:, 7:] + 1) % 17
        assert torch.equal(with_conv(ids2)[:, :7], y[:, :7])
        assert not torch.allclose(y, without(ids))


def test_state_numel_adds_the_convolution_inputs_per_layer():
    K, D, depth = 4, 16, 2
    for attention in ("ea6", "sa"):
        m, m0 = _lm(attention, K=K), _lm(attention, K=0)
        for L in (1, 64):
            assert m.state_numel(L) == m0.state_numel(L) + depth * (K - 1) * D
        st = m.init_state(3)
        assert [set(s) for s in st["layers"]] == [{"attn", "conv"}] * depth
        assert st["layers"][0]["conv"].shape == (3, K - 1, D)


def test_short_conv_is_a_config_key_and_recorded():
    m = ea_zoo.build_model("lm", overrides=["model.short_conv=3", "model.depth=1", "attention=ea2"])
    assert m.blocks[0].short_conv.kernel_size == 3
    assert m.config["model"]["short_conv"] == 3


@pytest.mark.parametrize("value", [1, -2, True, 2.5, "4"])
def test_bad_short_conv_names_the_value(value):
    with pytest.raises(ValueError, match="short_conv.*got " + re.escape(repr(value))):
        SequenceTransformer("ea6", task="lm", vocab_size=17, causal=True, depth=1, embed_dim=8, num_heads=1,
                            short_conv=value)


def test_short_conv_needs_a_causal_model():
    with pytest.raises(ValueError, match="short_conv=4.*causal=True"):
        SequenceTransformer("ea6", task="classify", in_chans=3, num_classes=2, causal=False, depth=1, embed_dim=8,
                            num_heads=1, short_conv=4)


def test_a_state_without_the_convolution_is_rejected():
    m = _lm("ea6")
    blk = m.blocks[0]
    with pytest.raises(ValueError, match="short_conv"):
        blk.step(torch.randn(2, 16, dtype=torch.float64), blk.attn.init_state(2, dtype=torch.float64))
