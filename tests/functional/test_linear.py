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
