"""ea_zoo.functional.linear against a naive float64 transcription of eq. 18 (explicit L x L weights)."""
import time

import pytest
import torch
import torch.nn.functional as F

from ea_zoo.functional.linear import (
    FEATURE_MAPS,
    elu1_feature_map,
    identity_feature_map,
    init_linear_state,
    linear_attention,
    linear_attention_step,
    relu_feature_map,
)
from ea_zoo.testing import SCALES, random_pieces


def naive_linear(q, k, v, causal=False, kpm=None, normalize=True, eps=1e-6):
    """y_i = sum_j w_ij v_j / max(sum_j w_ij, eps), w_ij = q_i . k_j over kept keys (q, k feature-mapped)."""
    q, k, v = q.double(), k.double(), v.double()
    w = q @ k.transpose(-1, -2)
    L = k.shape[-2]
    keep = torch.ones(q.shape[-2], L, dtype=torch.bool)
    if causal:
        keep = keep & torch.ones(L, L, dtype=torch.bool).tril()
    if kpm is not None:
        keep = keep & kpm[:, None, None, :]
    w = torch.where(keep, w, 0.0)
    out = w @ v
    return out / w.sum(-1, keepdim=True).clamp_min(eps) if normalize else out


def feats(B=2, H=3, L=37, Fd=6, d=5, dtype=torch.float64, fmap=elu1_feature_map):
    q, k = fmap(torch.randn(B, H, L, Fd, dtype=dtype)), fmap(torch.randn(B, H, L, Fd, dtype=dtype))
    return q, k, torch.randn(B, H, L, d, dtype=dtype)


def pad_mask(B, L):
    m = torch.ones(B, L, dtype=torch.bool)
    m[0, L - 5:] = False   # right padding
    m[1, :4] = False       # left padding: with causal, rows 0..3 see no key
    m[1, [10, 11]] = False
    return m


def test_feature_maps():
    x = torch.randn(4, 7, dtype=torch.float64) * 3
    torch.testing.assert_close(elu1_feature_map(x), F.elu(x) + 1)
    assert (elu1_feature_map(x) > 0).all()
    torch.testing.assert_close(relu_feature_map(x), x.clamp_min(0))
    assert identity_feature_map(x) is x
    assert set(FEATURE_MAPS) == {"elu1", "relu", "identity"}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_naive(causal, padded, normalize):
    q, k, v = feats(fmap=elu1_feature_map if normalize else identity_feature_map)
    kpm = pad_mask(2, 37) if padded else None
    out = linear_attention(q, k, v, causal=causal, key_padding_mask=kpm, normalize=normalize, chunk_size=8)
    torch.testing.assert_close(out, naive_linear(q, k, v, causal, kpm, normalize), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 36, 37, 64, 100])
def test_chunked_causal_any_chunk_size(chunk_size):
    q, k, v = feats(L=37, fmap=relu_feature_map)
    kpm = pad_mask(2, 37)
    out = linear_attention(q, k, v, causal=True, key_padding_mask=kpm, chunk_size=chunk_size)
    torch.testing.assert_close(out, naive_linear(q, k, v, True, kpm), rtol=1e-10, atol=1e-10)


def test_cross_length_noncausal_and_causal_needs_equal_lengths():
    q = elu1_feature_map(torch.randn(2, 3, 4, 6, dtype=torch.float64))
    _, k, v = feats(L=9)
    torch.testing.assert_close(linear_attention(q, k, v), naive_linear(q, k, v), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="Lq == Lk"):
        linear_attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="expected q"):
        linear_attention(q, k[..., :5], v)


@pytest.mark.parametrize("normalize", [True, False])
def test_step_matches_parallel_and_state_is_the_running_sum(normalize):
    B, H, L, Fd, d = 2, 3, 23, 6, 5
    q, k, v = feats(B, H, L, Fd, d)
    full = linear_attention(q, k, v, causal=True, normalize=normalize, chunk_size=4)
    state = init_linear_state(B, H, Fd, d, normalize=normalize, dtype=torch.float64)
    assert ("z" in state) == normalize and state["S"].shape == (B, H, Fd, d)
    outs = []
    for t in range(L):
        prev = state
        o, state = linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state, normalize=normalize)
        assert prev is not state
        outs.append(o)
        if normalize:  # the normaliser z is the sum of phi(k) over the keys seen so far
            torch.testing.assert_close(state["z"], k[:, :, : t + 1].sum(2), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            state["S"], k[:, :, : t + 1].transpose(-1, -2) @ v[:, :, : t + 1], rtol=1e-12, atol=1e-12
        )
    steps = torch.stack(outs, 2)
    rel = (steps - full).norm() / full.norm()
    assert rel < 1e-9


def test_state_dtype_for_half():
    st = init_linear_state(1, 2, 4, 3, dtype=torch.bfloat16)
    assert st["S"].dtype == torch.float32 and st["z"].dtype == torch.float32
    q, k, v = (t.to(torch.bfloat16) for t in feats(1, 2, 1, 4, 3))
    o, st2 = linear_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], st)
    assert o.dtype == torch.bfloat16 and st2["S"].dtype == torch.float32


@pytest.mark.parametrize("causal", [False, True])
def test_rows_without_keys_are_zero_with_finite_grads(causal):
    q, k, v = (t.requires_grad_() for t in feats())
    kpm = pad_mask(2, 37)
    kpm[0] = False  # a fully padded sequence
    v_bad = v.detach().clone()
    v_bad[0] = torch.inf  # padded values must not leak, even non-finite ones
    out = linear_attention(q, k, v, causal=causal, key_padding_mask=kpm, chunk_size=8)
    assert (out[0] == 0).all()
    if causal:
        assert (out[1, :, :4] == 0).all()
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    out_inf = linear_attention(q.detach(), k.detach(), v_bad, causal=causal, key_padding_mask=kpm)
    assert torch.isfinite(out_inf).all()


def test_dtypes():
    q, k, v = feats()
    assert linear_attention(q, k, v).dtype == torch.float64
    out32 = linear_attention(q.float(), k.float(), v.float(), causal=True)
    assert out32.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_long_causal(dtype):
    B, H, L, d = 1, 8, 4096, 64
    x = [(3 * torch.randn(B, H, L, d)).to(dtype) for _ in range(3)]
    q, k, v = elu1_feature_map(x[0]), elu1_feature_map(x[1]), x[2]
    t0 = time.perf_counter()
    out = linear_attention(q, k, v, causal=True)
    assert time.perf_counter() - t0 < 10
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = linear_attention(q.double(), k.double(), v.double(), causal=True)
    assert ((out.double() - ref).norm() / ref.norm()) < 2e-2
    un = linear_attention(x[0] * d ** -0.5, x[1], v, causal=True, normalize=False)
    assert un.dtype == dtype


# ------------------------------------------------------------------ state contract


def run_in_pieces(q, k, v, sizes, kpm=None, state=None, **kw):
    outs, s = [], 0
    for n in sizes:
        sl = slice(s, s + n)
        o, state = linear_attention(q[..., sl, :], k[..., sl, :], v[..., sl, :], causal=True,
                                    key_padding_mask=None if kpm is None else kpm[:, sl],
                                    initial_state=state, output_final_state=True, **kw)
        outs.append(o)
        s += n
    return torch.cat(outs, -2), state


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("seed", [0, 1])
def test_pieces_equal_whole(normalize, padded, scale, seed):
    fmap = elu1_feature_map if normalize else identity_feature_map
    B, H, L, Fd, d = 2, 3, 37, 6, 5
    q, k = (fmap(scale * torch.randn(B, H, L, Fd, dtype=torch.float64)) for _ in range(2))
    v = scale * torch.randn(B, H, L, d, dtype=torch.float64)
    kpm = pad_mask(B, L) if padded else None
    whole, st_whole = linear_attention(q, k, v, causal=True, key_padding_mask=kpm, normalize=normalize,
                                       chunk_size=8, initial_state=None, output_final_state=True)
    torch.testing.assert_close(whole, linear_attention(q, k, v, causal=True, key_padding_mask=kpm,
                                                       normalize=normalize, chunk_size=8))
    st0 = init_linear_state(B, H, Fd, d, normalize=normalize, dtype=torch.float64)
    pieces, st = run_in_pieces(q, k, v, random_pieces(L, seed), kpm, st0, normalize=normalize, chunk_size=4)
    assert rel_err(pieces, whole) < 1e-9
    assert set(st) == ({"S", "z"} if normalize else {"S"})
    for key in st:
        assert rel_err(st[key], st_whole[key]) < 1e-9
    # the final state is the sum over the kept keys
    keep = torch.ones(B, L, dtype=torch.bool) if kpm is None else kpm
    kk = torch.where(keep[:, None, :, None], k, 0.0)
    torch.testing.assert_close(st["S"], kk.transpose(-1, -2) @ torch.where(keep[:, None, :, None], v, 0.0))
    assert (st0["S"] == 0).all()  # the initial state is not modified


@pytest.mark.parametrize("normalize", [True, False])
def test_initial_state_adds_phi_q_S0(normalize):
    B, H, L, Fd, d = 1, 2, 9, 4, 3
    q, k, v = feats(B, H, L, Fd, d)
    S0 = torch.rand(B, H, Fd, d, dtype=torch.float64)
    z0 = torch.rand(B, H, Fd, dtype=torch.float64)
    st = {"S": S0, "z": z0} if normalize else {"S": S0}
    out = linear_attention(q, k, v, causal=True, normalize=normalize, initial_state=st, chunk_size=4)
    w = torch.where(torch.ones(L, L, dtype=torch.bool).tril(), q @ k.transpose(-1, -2), 0.0)
    num = w @ v + q @ S0
    ref = num / (w.sum(-1) + (q @ z0.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1) if normalize else num
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
def test_step_is_the_L1_call(normalize):
    B, H, Fd, d = 2, 3, 6, 5
    q, k, v = feats(B, H, 4, Fd, d)
    state = init_linear_state(B, H, Fd, d, normalize=normalize, dtype=torch.float64)
    for t in range(4):
        o_step, st_step = linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state, normalize=normalize)
        o_call, st_call = linear_attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], causal=True,
                                           normalize=normalize, initial_state=state, output_final_state=True)
        assert torch.equal(o_step, o_call[:, :, 0])
        assert st_step.keys() == st_call.keys()
        for key in st_step:
            assert torch.equal(st_step[key], st_call[key])
        state = st_step


def test_state_needs_causal_and_the_right_shapes():
    q, k, v = feats(1, 2, 5, 4, 3)
    st = init_linear_state(1, 2, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="causal=True"):
        linear_attention(q, k, v, initial_state=st)
    with pytest.raises(ValueError, match="causal=True"):
        linear_attention(q, k, v, output_final_state=True)
    with pytest.raises(ValueError, match=r"initial_state\['S'\] must have shape \(1, 2, 4, 3\)"):
        linear_attention(q, k, v, causal=True, initial_state={"S": torch.zeros(1, 2, 3, 3), "z": st["z"]})
    with pytest.raises(ValueError, match="'S' and 'z'"):
        linear_attention(q, k, v, causal=True, initial_state={"S": st["S"]})


@pytest.mark.parametrize("fmap", ["elu1", "identity"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", SCALES)
def test_future_keys_never_change_past_outputs(fmap, dtype, scale):
    """Changing keys/values at positions >= i leaves outputs < i unchanged (exactly in
    float64, to 1e-6 relative in float32), at trained-model scales with key offsets."""
    phi = FEATURE_MAPS[fmap]
    B, H, L, d = 2, 2, 40, 8
    for offset in (0.0, 30.0):
        q, k, v = (scale * torch.randn(B, H, L, d, dtype=dtype) for _ in range(3))
        k = k + offset
        args = dict(causal=True, normalize=fmap != "identity", chunk_size=8)
        out = linear_attention(phi(q), phi(k), v, **args)
        for i in (1, 8, 21, 39):
            k2, v2 = k.clone(), v.clone()
            k2[:, :, i:] = scale * torch.randn_like(k2[:, :, i:]) + offset + 5 * scale
            v2[:, :, i:] = 3 * scale * torch.randn_like(v2[:, :, i:])
            out2 = linear_attention(phi(q), phi(k2), v2, **args)
            if dtype == torch.float64:
                assert torch.equal(out2[:, :, :i], out[:, :, :i])
            else:
                assert rel_err(out2[:, :, :i], out[:, :, :i]) <= 1e-6


@pytest.mark.parametrize("causal", [False, True])
def test_nan_at_padded_positions_never_reaches_valid_outputs(causal):
    q, k, v = feats()
    kpm = pad_mask(2, 37)
    ref = linear_attention(q, k, v, causal=causal, key_padding_mask=kpm, chunk_size=8)
    pad = ~kpm[:, None, :, None]
    k2 = torch.where(pad, torch.nan, k)
    v2 = torch.where(pad, torch.nan, v)
    q2 = torch.where(pad, torch.nan, q)  # a padded query only spoils its own row
    out = linear_attention(q2, k2, v2, causal=causal, key_padding_mask=kpm, chunk_size=8)
    valid = kpm[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[valid], ref[valid], rtol=0, atol=0)
    if causal:  # and through a state
        st = init_linear_state(2, 3, 6, 5, dtype=torch.float64)
        o1, st = linear_attention(q2[..., :20, :], k2[..., :20, :], v2[..., :20, :], causal=True,
                                  key_padding_mask=kpm[:, :20], initial_state=st, output_final_state=True)
        assert all(torch.isfinite(t).all() for t in st.values())
        o2 = linear_attention(q2[..., 20:, :], k2[..., 20:, :], v2[..., 20:, :], causal=True,
                              key_padding_mask=kpm[:, 20:], initial_state=st)
        pieces = torch.cat([o1, o2], -2)
        assert rel_err(pieces[valid], ref[valid]) < 1e-12
