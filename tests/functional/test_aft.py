"""ea_zoo.functional.aft against a naive float64 transcription of AFT (Feng 2025 eq. 19)."""
import importlib

import pytest
import torch

from ea_zoo.functional.aft import aft, aft_state_update, aft_step

# the submodule (``ea_zoo.functional.aft`` as an attribute is the function, star-imported)
aft_mod = importlib.import_module("ea_zoo.functional.aft")


def naive_aft(q, k, v, w=None, causal=False, mask=None):
    """y_i = sigmoid(q_i) * sum_j exp(k_j + w_ij) v_j / sum_j exp(k_j + w_ij), in float64."""
    q, k, v = q.double(), k.double(), v.double()
    L = k.shape[-2]
    w = torch.zeros(L, L, dtype=torch.float64) if w is None else w.double()
    e = torch.exp(k[..., None, :, :] + w[:, :, None])  # (..., i, j, D)
    keep = torch.ones(*k.shape[:-2], L, L, dtype=torch.bool)
    if causal:
        keep = keep & torch.ones(L, L, dtype=torch.bool).tril()
    if mask is not None:
        keep = keep & mask.view(mask.shape[0], *([1] * (k.dim() - 3)), 1, L)
    e = e * keep[..., None]
    num, den = (e * v[..., None, :, :]).sum(-2), e.sum(-2)
    ratio = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
    return torch.sigmoid(q) * ratio


def rand_qkv(*shape, dtype=torch.float64, kscale=1.0):
    q, k, v = (torch.randn(*shape, dtype=dtype) for _ in range(3))
    return q, k * kscale, v


def padding_mask(B, L):
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, L - 3:] = False
    if B > 1:
        mask[1, :2] = False
    return mask


def force_blocked_causal_path(monkeypatch, block=64):
    """Make causal AFT-full take its blocked path (normally only for keys far above earlier ones)."""
    monkeypatch.setattr(aft_mod, "_SAFE_GAP", {torch.float32: -1.0, torch.float64: -1.0})
    monkeypatch.setattr(aft_mod, "_BLOCK", block)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("L", [9, 150])
def test_matches_naive_float64(causal, with_bias, with_mask, L):
    B, H, d = 2, 3, 4
    q, k, v = rand_qkv(B, H, L, d, kscale=2.0)
    w = torch.randn(L, L, dtype=torch.float64) * 2 if with_bias else None
    mask = padding_mask(B, L) if with_mask else None
    y = aft(q, k, v, pos_bias=w, causal=causal, key_padding_mask=mask)
    torch.testing.assert_close(y, naive_aft(q, k, v, w, causal, mask), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("with_bias", [False, True])
def test_three_dim_inputs(with_bias):
    q, k, v = rand_qkv(2, 7, 5)
    w = torch.randn(7, 7, dtype=torch.float64) if with_bias else None
    mask = padding_mask(2, 7)
    for causal in (False, True):
        y = aft(q, k, v, w, causal, mask)
        torch.testing.assert_close(y, naive_aft(q, k, v, w, causal, mask), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("L", [150])  # several causal AFT-full query blocks
@pytest.mark.parametrize("with_mask", [False, True])
def test_blocked_causal_full_path_matches_naive(monkeypatch, L, with_mask):
    force_blocked_causal_path(monkeypatch, block=64)
    q, k, v = rand_qkv(2, 3, L, 4, kscale=2.0)
    w = torch.randn(L, L, dtype=torch.float64) * 2
    mask = padding_mask(2, L) if with_mask else None
    y = aft(q, k, v, w, True, mask)
    torch.testing.assert_close(y, naive_aft(q, k, v, w, True, mask), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_large_keys_float32_finite_and_correct(causal, with_bias):
    B, H, L, d = 2, 2, 100, 8
    q, k, v = rand_qkv(B, H, L, d, dtype=torch.float32, kscale=80.0)
    w = torch.randn(L, L) * 3 if with_bias else None
    y = aft(q, k, v, w, causal)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), naive_aft(q, k, v, w, causal), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_invariant_to_huge_key_shift(causal, with_bias):
    # exp(k + 1000) overflows any dtype; the per-channel max makes it cancel exactly
    q, k, v = rand_qkv(1, 2, 10, 4, dtype=torch.float32)
    w = torch.randn(10, 10) if with_bias else None
    y = aft(q, k, v, w, causal)
    for shift in (1000.0, -1000.0):
        ys = aft(q, k + shift, v, w, causal)
        assert torch.isfinite(ys).all()
        torch.testing.assert_close(ys, y, rtol=1e-4, atol=1e-4)


def test_causal_running_max_with_steeply_rising_keys():
    # k_j = 200 j: a single global max would underflow every earlier prefix to 0/0
    L, d = 12, 3
    k = (200.0 * torch.arange(L, dtype=torch.float32))[:, None].expand(L, d).contiguous()
    v = torch.randn(L, d)
    q = torch.zeros(L, d)
    y = aft(q[None], k[None], v[None], causal=True)[0]
    assert torch.isfinite(y).all()
    # log-space prefix sums in float32: relative error ~ eps * (spread of k) = 1e-7 * 2200
    torch.testing.assert_close(y, 0.5 * v, rtol=1e-3, atol=1e-5)  # key i dominates prefix i


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_padded_keys_have_no_influence_and_empty_rows_are_zero(causal, with_bias):
    B, H, L, d = 3, 2, 8, 4
    q, k, v = rand_qkv(B, H, L, d)
    w = torch.randn(L, L, dtype=torch.float64) if with_bias else None
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 5:] = False
    mask[1, :3] = False  # causal: queries 0..2 see no key
    mask[2] = False      # nothing to attend to
    y = aft(q, k, v, w, causal, mask)
    k2, v2 = k.clone(), v.clone()
    pad = ~mask[:, None, :, None].expand_as(k)
    k2[pad], v2[pad] = 500.0, float("nan")
    y2 = aft(q, k2, v2, w, causal, mask)
    assert torch.isfinite(y).all() and torch.isfinite(y2).all()
    torch.testing.assert_close(y2, y, rtol=1e-12, atol=1e-12)
    assert (y[2] == 0).all()
    if causal:
        assert (y[1, :, :3] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_half_inputs_accumulate_in_float32(dtype, with_bias):
    L = 256
    q, k, v = rand_qkv(1, 2, L, 8, dtype=torch.float32, kscale=3.0)
    w = torch.randn(L, L) if with_bias else None
    for causal in (False, True):
        ref = aft(q, k, v, w, causal)
        y = aft(q.to(dtype), k.to(dtype), v.to(dtype), None if w is None else w.to(dtype), causal)
        assert y.dtype == dtype and torch.isfinite(y.float()).all()
        assert (y.float() - ref).abs().max() < 0.1


@pytest.mark.parametrize("case", ["simple", "simple_causal", "full_causal"])
def test_gradcheck(case, monkeypatch):
    force_blocked_causal_path(monkeypatch, block=2)
    q, k, v = (t.requires_grad_() for t in rand_qkv(2, 1, 5, 3))
    mask = torch.tensor([[True, True, False, True, True], [False, True, True, True, True]])
    if case == "full_causal":
        w = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
        fn = lambda q, k, v, w: aft(q, k, v, w, True, mask)  # noqa: E731
        inputs = (q, k, v, w)
    else:
        fn = lambda q, k, v: aft(q, k, v, None, case == "simple_causal", mask)  # noqa: E731
        inputs = (q, k, v)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_step_functions_reproduce_causal_forward():
    B, H, L, d = 2, 2, 10, 3
    q, k, v = rand_qkv(B, H, L, d, kscale=30.0)
    w = torch.randn(L, L, dtype=torch.float64)
    y_simple, y_full = aft(q, k, v, None, True), aft(q, k, v, w, True)
    sums = (torch.full((B, H, d), float("-inf"), dtype=torch.float64),
            torch.zeros(B, H, d, dtype=torch.float64), torch.zeros(B, H, d, dtype=torch.float64))
    for t in range(L):
        sums = aft_state_update(sums, k[:, :, t], v[:, :, t])
        empty = k[:, :, :0]
        torch.testing.assert_close(aft_step(q[:, :, t], empty, empty, sums=sums), y_simple[:, :, t],
                                   rtol=1e-10, atol=1e-12)
        full = aft_step(q[:, :, t], k[:, :, : t + 1], v[:, :, : t + 1], bias=w[t, : t + 1])
        torch.testing.assert_close(full, y_full[:, :, t], rtol=1e-10, atol=1e-12)


def test_bad_shapes_are_named():
    q, k, v = rand_qkv(1, 4, 3)
    with pytest.raises(ValueError, match=r"pos_bias must have shape \(Lq, Lk\) = \(4, 4\)"):
        aft(q, k, v, pos_bias=torch.zeros(5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="Lq=2, Lk=4"):
        aft(q[:, :2], k, v, causal=True)
    with pytest.raises(ValueError, match="same D"):
        aft(q, k, v[..., :2])


def test_autocast_does_not_lower_the_accumulation():
    q, k, v = rand_qkv(1, 2, 70, 4, dtype=torch.float32)
    w = torch.randn(70, 70)
    ref = aft(q, k, v, w, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = aft(q, k, v, w, True)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref)
