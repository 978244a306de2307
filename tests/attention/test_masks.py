"""The one attention-mask rule (ea_zoo.attention.masks), checked on every backend: bool True =
keep, float additive (0 keep, -inf / <= finfo.min / 2 drop), timm's key-only (B, 1, 1, L) and
padding-derived (B, 1, L, L) forms, clear errors for general masks, and masks on ``meta``."""
import re

import pytest
import torch

from ea_zoo import create_attention, list_attentions

NAMES = list_attentions()
NON_SOFTMAX = [n for n in NAMES if n != "sa"]
D, H, B, L = 16, 2, 2, 9
F64_MIN = torch.finfo(torch.float64).min


def make(name, causal=False, dtype=torch.float64, **kw):
    if name in ("aft_full", "aft_local"):
        kw.setdefault("max_len", 32)
    torch.manual_seed(0)
    return create_attention(name, dim=D, num_heads=H, causal=causal, **kw).to(dtype).eval()


def valid_mask():
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[0, 6:] = False  # right padding
    valid[1, [2, 5]] = False  # holes
    return valid


def additive(keep, fill=float("-inf"), dtype=torch.float64):
    return torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, fill)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_all_zero_additive_mask_keeps_every_key(name, causal):
    """A float mask is additive: all zeros is no mask (it used to drop every key of 'sa')."""
    m = make(name, causal)
    x = torch.randn(B, L, D, dtype=torch.float64)
    ref = m(x)
    for mask in (torch.zeros(B, L, dtype=torch.float64), torch.zeros(B, 1, 1, L),
                 torch.zeros(B, L, dtype=torch.float32)):
        torch.testing.assert_close(m(x, attn_mask=mask), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_key_padding_forms_agree(name):
    """(B, L) bool, (B, L) / (B, 1, 1, L) additive (-inf or timm's finfo.min), (B, 1, 1, L)
    bool and integer 0/1 masks are the same key padding."""
    m = make(name)
    x = torch.randn(B, L, D, dtype=torch.float64)
    valid = valid_mask()
    ref = m(x, attn_mask=valid)
    forms = [
        additive(valid), additive(valid, F64_MIN), additive(valid, torch.finfo(torch.float32).min, torch.float32),
        valid[:, None, None, :], additive(valid)[:, None, None, :], additive(valid, F64_MIN)[:, None, None, :],
        valid.long(), valid.to(torch.uint8)[:, None, None, :],
    ]
    for mask in forms:
        torch.testing.assert_close(m(x, attn_mask=mask), ref, rtol=1e-12, atol=1e-12, msg=str(mask.shape))
    x2 = x.clone()
    x2[~valid] = torch.randn_like(x2[~valid]) * 10  # padded tokens have no influence on valid ones
    y2 = m(x2, attn_mask=additive(valid, F64_MIN)[:, None, None, :])
    torch.testing.assert_close(y2[valid], ref[valid], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_padding_derived_square_mask(name, causal):
    """timm NaFlexViT's symmetric (B, 1, L, L) mask (query i sees key j iff both are valid):
    valid queries get the key-padding output; padded queries, which see no key, output 0
    before ``proj`` (not checked for 'sa', which hands the mask to SDPA as it is)."""
    m = make(name, causal)
    x = torch.randn(B, L, D, dtype=torch.float64)
    valid = valid_mask()
    ref = m(x, attn_mask=valid)
    sym = (valid[:, :, None] & valid[:, None, :])[:, None]
    key_only = valid[:, None, None, :].expand(B, 1, L, L)
    empty = m.proj(m.norm(torch.zeros(D, dtype=torch.float64)))  # what a query that sees no key gives
    for mask, rows_empty in ((sym, True), (additive(sym, F64_MIN), True), (additive(sym), True),
                             (key_only, False)):
        y = m(x, attn_mask=mask)
        torch.testing.assert_close(y[valid], ref[valid], rtol=1e-12, atol=1e-12)
        if rows_empty and name != "sa":
            torch.testing.assert_close(y[~valid], empty.expand_as(y[~valid]), rtol=1e-12, atol=1e-12)
    # one sequence's mask for the whole batch: (1, 1, L, L), and (L, L)
    one = sym[:1]
    ref0 = m(x, attn_mask=valid[:1].expand(B, L))
    for mask in (one, one[0, 0]):
        torch.testing.assert_close(m(x, attn_mask=mask)[:, valid[0]], ref0[:, valid[0]], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NON_SOFTMAX)
def test_general_mask_is_a_clear_error(name):
    m = make(name)
    x = torch.randn(B, L, D, dtype=torch.float64)
    tril = torch.ones(L, L, dtype=torch.bool).tril()
    for mask in (tril, tril[None, None], additive(tril)[None, None].expand(B, 1, L, L)):
        shape = re.escape(str(tuple(mask.shape)))
        with pytest.raises(ValueError, match=rf"'{m.attention_name}'.*shape {shape}.*accepts.*\(B, 1, 1, L\)"):
            m(x, attn_mask=mask)
    with pytest.raises(ValueError, match=rf"'{m.attention_name}'.*shape \(2, 2, 1, 9\)"):  # per-head masks
        m(x, attn_mask=torch.ones(B, H, 1, L, dtype=torch.bool))
    with pytest.raises(ValueError, match=rf"'{m.attention_name}'.*shape \(2, 9, 9\)"):  # 3-D: ambiguous
        m(x, attn_mask=torch.ones(B, L, L, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, L\) = \(2, 9\)"):
        m(x, attn_mask=torch.ones(B, L + 1, dtype=torch.bool))


@pytest.mark.parametrize("name", NON_SOFTMAX)
def test_finite_bias_is_a_clear_error_for_non_softmax(name):
    """A float mask can only keep (0) or drop (-inf / very negative) outside softmax attention."""
    m = make(name)
    x = torch.randn(B, L, D, dtype=torch.float64)
    bias = torch.zeros(B, L, dtype=torch.float64)
    bias[0, 3] = -1.5
    for mask in (bias, bias[:, None, None, :], torch.ones(B, L), torch.full((B, L), float("nan"))):
        with pytest.raises(ValueError, match=rf"'{m.attention_name}'.*additive.*softmax attention"):
            m(x, attn_mask=mask)
    with pytest.raises(ValueError, match="0 and 1"):
        m(x, attn_mask=torch.full((B, L), 2))
    with pytest.raises(TypeError, match="bool"):
        m(x, attn_mask=torch.ones(B, L, dtype=torch.complex64))


def test_softmax_applies_general_masks_and_biases():
    m = make("sa")
    x = torch.randn(B, L, D, dtype=torch.float64)
    tril = torch.ones(L, L, dtype=torch.bool).tril()
    torch.testing.assert_close(m(x, attn_mask=tril), m(x, is_causal=True))
    torch.testing.assert_close(m(x, attn_mask=additive(tril)[None, None]), m(x, is_causal=True))
    bias = torch.randn(B, L, dtype=torch.float64)
    torch.testing.assert_close(m(x, attn_mask=bias), m(x, attn_mask=bias[:, None, None, :].expand(B, 1, L, L)))
    assert not torch.allclose(m(x, attn_mask=bias), m(x))
    with pytest.raises(ValueError, match=r"'sa'.*\(B, H, L, L\)"):
        m(x, attn_mask=torch.ones(B, 3, L, L, dtype=torch.bool))


def test_softmax_general_mask_selects_dropped_keys_away():
    """Keys a general mask drops for every query cannot leak NaN/Inf into valid outputs."""
    m = make("sa")
    x = torch.randn(B, L, D, dtype=torch.float64)
    valid = valid_mask()
    sym = additive((valid[:, :, None] & valid[:, None, :])[:, None], F64_MIN)
    y = m(x, attn_mask=sym)
    x2 = x.clone()
    x2[~valid] = float("nan")
    y2 = m(x2, attn_mask=sym)
    torch.testing.assert_close(y2[valid], y[valid], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_masks_on_meta(name):
    """Every mask form builds and runs on ``meta`` (no value is read: 'sa' with a non-bool
    mask used Tensor.item() there)."""
    kw = {"max_len": 32} if name in ("aft_full", "aft_local") else {}
    with torch.device("meta"):
        m = create_attention(name, dim=D, num_heads=H, **kw)
        x = torch.randn(B, L, D)
        for mask in (torch.zeros(B, L), torch.ones(B, L, dtype=torch.long), torch.ones(B, L, dtype=torch.bool),
                     torch.zeros(B, 1, 1, L), torch.zeros(B, 1, L, L)):
            y = m(x, attn_mask=mask)
            assert y.shape == (B, L, D) and y.device.type == "meta"
