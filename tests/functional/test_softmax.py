"""ea_zoo.functional.softmax against a naive float64 transcription of eq. 17 (explicit L x L weights)."""
import pytest
import torch

from ea_zoo.functional.softmax import init_kv_cache, softmax_attention, softmax_attention_step
from ea_zoo.testing import SCALES, random_pieces, rel_err


def naive_softmax(q, k, v, causal=False, kpm=None, attn_mask=None, scale=None):
    """y_i = sum_j w_ij v_j, w_ij = exp(s_ij) / sum_j exp(s_ij) over kept keys; 0 if none kept."""
    q, k, v = q.double(), k.double(), v.double()
    Lq, Lk = q.shape[-2], k.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    keep = torch.ones(Lq, Lk, dtype=torch.bool)
    if causal:
        i = torch.arange(Lq)[:, None] + (Lk - Lq)
        keep = keep & (torch.arange(Lk)[None, :] <= i)
    if kpm is not None:
        keep = keep & kpm[:, None, None, :]
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            keep = keep & attn_mask
        else:
            s = s + attn_mask.double()
    keep = keep & torch.isfinite(s)
    s = torch.where(keep, s, -torch.inf)
    m = torch.where(keep.any(-1, keepdim=True), s.amax(-1, keepdim=True), 0.0)
    w = torch.where(keep, torch.exp(s - m), 0.0)
    den = w.sum(-1, keepdim=True)
    w = torch.where(den > 0, w / torch.where(den > 0, den, 1.0), 0.0)
    return w @ v


def qkv(B=2, H=3, L=11, d=8, dtype=torch.float64, Lk=None):
    Lk = L if Lk is None else Lk
    return torch.randn(B, H, L, d, dtype=dtype), torch.randn(B, H, Lk, d, dtype=dtype), torch.randn(B, H, Lk, d, dtype=dtype)


def pad_mask(B, L):
    m = torch.ones(B, L, dtype=torch.bool)
    m[0, L - 4:] = False   # right padding
    m[1, :3] = False       # left padding: with causal, rows 0..2 see no key
    return m


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_matches_naive(causal, padded):
    q, k, v = qkv()
    kpm = pad_mask(2, 11) if padded else None
    out = softmax_attention(q, k, v, causal=causal, key_padding_mask=kpm)
    torch.testing.assert_close(out, naive_softmax(q, k, v, causal, kpm), rtol=1e-10, atol=1e-10)


def test_custom_scale_and_cross_length_causal_is_bottom_right():
    q, k, v = qkv(L=4, Lk=9)
    for causal in (False, True):
        out = softmax_attention(q, k, v, causal=causal, scale=0.3)
        torch.testing.assert_close(out, naive_softmax(q, k, v, causal, scale=0.3), rtol=1e-10, atol=1e-10)


def test_broadcast_bool_mask_combined_with_causal_and_padding():
    q, k, v = qkv()
    am = torch.rand(2, 1, 11, 11) > 0.3
    kpm = pad_mask(2, 11)
    out = softmax_attention(q, k, v, causal=True, key_padding_mask=kpm, attn_mask=am)
    torch.testing.assert_close(out, naive_softmax(q, k, v, True, kpm, am), rtol=1e-10, atol=1e-10)


def test_additive_float_mask_with_dead_rows():
    q, k, v = qkv()
    am = torch.randn(1, 1, 11, 11, dtype=torch.float64)
    am[..., 5, :] = -torch.inf  # row 5 sees nothing
    am[..., 2, :6] = -torch.inf
    kpm = pad_mask(2, 11)
    for causal in (False, True):
        out = softmax_attention(q, k, v, causal=causal, key_padding_mask=kpm, attn_mask=am)
        torch.testing.assert_close(out, naive_softmax(q, k, v, causal, kpm, am), rtol=1e-10, atol=1e-10)
        assert (out[..., 5, :] == 0).all()


def test_rows_without_keys_are_zero_with_finite_grads():
    q, k, v = (t.requires_grad_() for t in qkv())
    kpm = pad_mask(2, 11)
    kpm[0] = False  # a fully padded sequence too
    out = softmax_attention(q, k, v, causal=True, key_padding_mask=kpm)
    assert (out[0] == 0).all() and (out[1, :, :3] == 0).all()
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[1, :, :3] == 0).all() and (q.grad[0] == 0).all()


def test_bad_mask_dtype_raises():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="bool"):
        softmax_attention(q, k, v, attn_mask=torch.ones(11, 11, dtype=torch.int64))


def test_step_matches_parallel_causal():
    B, H, L, d = 2, 3, 9, 8
    q, k, v = qkv(B, H, L, d)
    full = softmax_attention(q, k, v, causal=True)
    state = init_kv_cache(B, H, d, dtype=torch.float64)
    outs = []
    for t in range(L):
        prev = state
        o, state = softmax_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state)
        assert prev["k"].shape[-2] == t  # old state untouched
        outs.append(o)
    assert state["k"].shape == (B, H, L, d) and state["v"].shape == (B, H, L, d)
    torch.testing.assert_close(torch.stack(outs, 2), full, rtol=1e-10, atol=1e-10)
    o, st = softmax_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], None)  # empty state
    torch.testing.assert_close(o, v[:, :, 0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    q, k, v = (3 * t for t in qkv(1, 2, 64, 16, dtype=torch.float32))
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    kpm = torch.ones(1, 64, dtype=torch.bool)
    kpm[0, :5] = False
    out = softmax_attention(q, k, v, causal=True, key_padding_mask=kpm)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = naive_softmax(q, k, v, True, kpm)
    assert (out.double() - ref).abs().max() < 0.1


# ------------------------------------------------------------------ NaN at padded positions
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_attn_mask", [False, True])
def test_nan_at_padded_positions_never_reaches_valid_outputs(causal, with_attn_mask):
    """SDPA gives 0 weight to masked keys, but 0 * NaN = NaN: padded k and v must be replaced
    (torch.where), not multiplied away."""
    q, k, v = qkv()
    kpm = pad_mask(2, 11)
    am = None
    if with_attn_mask:
        am = torch.rand(1, 1, 11, 11) > 0.3
        am[..., 6] = True
    ref = softmax_attention(q, k, v, causal=causal, key_padding_mask=kpm, attn_mask=am)
    pad = ~kpm[:, None, :, None]
    k2, v2 = torch.where(pad, torch.nan, k), torch.where(pad, torch.inf, v)
    k2[0, :, -1] = torch.inf
    out = softmax_attention(q, k2, v2, causal=causal, key_padding_mask=kpm, attn_mask=am)
    valid = kpm[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[valid], ref[valid], rtol=0, atol=0)
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------ KV cache state


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("seed", [0, 1])
def test_cache_pieces_equal_whole(padded, scale, seed):
    B, H, L, d = 2, 3, 27, 8
    q, k, v = (scale * t for t in qkv(B, H, L, d))
    kpm = pad_mask(B, L) if padded else None
    whole = softmax_attention(q, k, v, causal=True, key_padding_mask=kpm)
    state = init_kv_cache(B, H, d, dtype=torch.float64)
    outs, s = [], 0
    for n in random_pieces(L, seed):
        sl = slice(s, s + n)
        prev = state
        o, state = softmax_attention(q[..., sl, :], k[..., sl, :], v[..., sl, :], causal=True,
                                     key_padding_mask=None if kpm is None else kpm[:, sl],
                                     initial_state=state, output_final_state=True)
        assert prev["k"].shape[-2] == s  # the old cache is untouched
        outs.append(o)
        s += n
    assert rel_err(torch.cat(outs, -2), whole) < 1e-9
    assert state["k"].shape == (B, H, L, d) and ("mask" in state) == padded


def test_step_is_the_L1_call_and_cache_errors():
    B, H, d = 2, 3, 8
    q, k, v = qkv(B, H, 3, d)
    state = init_kv_cache(B, H, d, dtype=torch.float64)
    for t in range(3):
        o_step, st_step = softmax_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state)
        o_call, st_call = softmax_attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], causal=True,
                                            initial_state=state, output_final_state=True)
        assert torch.equal(o_step, o_call[:, :, 0])
        assert torch.equal(st_step["k"], st_call["k"]) and torch.equal(st_step["v"], st_call["v"])
        state = st_step
    with pytest.raises(ValueError, match="causal=True"):
        softmax_attention(q, k, v, initial_state=state)
    with pytest.raises(ValueError, match="attn_mask"):
        softmax_attention(q, k, v, causal=True, attn_mask=torch.ones(3, 6, dtype=torch.bool), initial_state=state)
    with pytest.raises(ValueError, match=r"initial_state\['k'\]"):
        softmax_attention(q, k, v, causal=True, initial_state={"k": state["k"][..., :4], "v": state["v"]})


def test_cache_keeps_its_dtype_for_half_inputs():
    state = init_kv_cache(1, 2, 4, dtype=torch.float32)
    q, k, v = (t.to(torch.bfloat16) for t in qkv(1, 2, 5, 4, dtype=torch.float32))
    o, st = softmax_attention(q, k, v, causal=True, initial_state=state, output_final_state=True)
    assert o.dtype == torch.bfloat16 and st["k"].dtype == torch.float32


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", SCALES)
def test_future_keys_never_change_past_outputs(padded, dtype, scale):
    B, H, L, d = 2, 2, 40, 8
    kpm = torch.ones(B, L, dtype=torch.bool) if padded else None
    if padded:
        kpm[1, :3] = False
    for offset in (0.0, 30.0):
        q, k, v = (scale * torch.randn(B, H, L, d, dtype=dtype) for _ in range(3))
        k = k + offset
        out = softmax_attention(q, k, v, causal=True, key_padding_mask=kpm)
        for i in (1, 9, 23, 39):
            k2, v2 = k.clone(), v.clone()
            k2[:, :, i:] = scale * torch.randn_like(k2[:, :, i:]) + offset + 5 * scale
            v2[:, :, i:] = 3 * scale * torch.randn_like(v2[:, :, i:])
            out2 = softmax_attention(q, k2, v2, causal=True, key_padding_mask=kpm)
            if dtype == torch.float64:
                assert torch.equal(out2[:, :, :i], out[:, :, :i])
            else:
                assert rel_err(out2[:, :, :i], out[:, :, :i]) <= 1e-6
