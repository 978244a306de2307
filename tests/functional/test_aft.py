"""ea_zoo.functional.aft against a naive float64 transcription of AFT (Feng 2025 eq. 19)."""
import importlib

import pytest
import torch

from ea_zoo.functional.aft import (
    aft,
    aft_full,
    aft_local,
    aft_local_dense_bias,
    aft_state_update,
    aft_step,
    init_aft_state,
)
from ea_zoo.testing import SCALES, check_future_invariance, random_pieces

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
    """Causal AFT-full always goes in query blocks; make them small so several are used."""
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


# ------------------------------------------------------------------ second derivatives
@pytest.mark.parametrize("shape,scale", [((1, 1, 3, 1), 1.0), ((2, 2, 7, 3), 3.0)])
@pytest.mark.parametrize("with_mask", [False, True])
def test_gradgradcheck_causal_simple(shape, scale, with_mask):
    """torch's logcumsumexp backward takes log|grad|; where a gradient is exactly 0 (e.g. the
    empty positive/negative part of v) its double backward was NaN."""
    q, k, v = (scale * torch.randn(*shape, dtype=torch.float64) for _ in range(3))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    mask = None
    if with_mask:
        mask = torch.ones(shape[0], shape[2], dtype=torch.bool)
        mask[0, 1] = False
        if shape[0] > 1:
            mask[1, :2] = False
    fn = lambda q, k, v: aft(q, k, v, causal=True, key_padding_mask=mask)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (q, k, v), fast_mode=with_mask)


def test_gradgradcheck_simple_with_state():
    q, k, v = (torch.randn(1, 2, 5, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    st = {n: t.detach().requires_grad_() for n, t in
          aft(*(torch.randn(1, 2, 3, 2, dtype=torch.float64) for _ in range(3)), causal=True,
              output_final_state=True)[1].items()}

    def fn(q, k, v, num, den):
        return aft(q, k, v, causal=True, initial_state={"m": st["m"], "num": num, "den": den})

    assert torch.autograd.gradgradcheck(fn, (q, k, v, st["num"], st["den"]))


def test_gradgradcheck_local():
    q, k, v = (torch.randn(1, 2, 5, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    band = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True, True, True]])
    fn = lambda q, k, v, b: aft_local(q, k, v, b, 2, key_padding_mask=mask)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (q, k, v, band))


# ------------------------------------------------------------------ state contract


def run_in_pieces(op, q, k, v, sizes, mask=None, state=None):
    outs, s = [], 0
    for n in sizes:
        sl = slice(s, s + n)
        o, state = op(q[..., sl, :], k[..., sl, :], v[..., sl, :],
                      key_padding_mask=None if mask is None else mask[:, sl],
                      initial_state=state, output_final_state=True)
        outs.append(o)
        s += n
    return torch.cat(outs, -2), state


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


W, MAXLEN = 4, 48
BAND = torch.randn(MAXLEN, 2 * W - 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
FULL = torch.randn(MAXLEN, MAXLEN, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2
OPS = {
    "simple": (lambda q, k, v, **kw: aft(q, k, v, causal=True, **kw), "simple"),
    "local": (lambda q, k, v, **kw: aft_local(q, k, v, BAND.to(q.dtype), W, **kw), "local"),
    "full": (lambda q, k, v, **kw: aft_full(q, k, v, FULL.to(q.dtype), **kw), "full"),
}


@pytest.mark.parametrize("kind", list(OPS))
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("seed", [0, 1])
def test_pieces_equal_whole(kind, with_mask, scale, seed):
    op, state_kind = OPS[kind]
    B, H, L, d = 2, 3, 29, 4
    q, k, v = rand_qkv(B, H, L, d, kscale=scale)
    q, v = q * scale, v * scale
    mask = padding_mask(B, L) if with_mask else None
    whole, st_whole = op(q, k, v, key_padding_mask=mask, output_final_state=True)
    torch.testing.assert_close(whole, op(q, k, v, key_padding_mask=mask), rtol=0, atol=0)
    st0 = init_aft_state((B, H), d, kind=state_kind, dtype=torch.float64)
    before = {n: t.clone() for n, t in st0.items() if torch.is_tensor(t)}
    pieces, st = run_in_pieces(op, q, k, v, random_pieces(L, seed), mask, st0)
    assert rel_err(pieces, whole) < 1e-9
    for n, t in before.items():  # the initial state is not modified
        assert torch.equal(st0[n], t)
    # the final states describe the same sums: continuing from either gives the same output
    q2, k2, v2 = rand_qkv(B, H, 5, d, kscale=scale)
    cont_whole = op(q2, k2, v2, initial_state=st_whole)
    cont_pieces = op(q2, k2, v2, initial_state=st)
    assert rel_err(cont_pieces, cont_whole) < 1e-9
    if kind == "local":
        assert st["k"].shape == (B, H, W, d) and st["t"] == L


@pytest.mark.parametrize("kind", ["local", "full"])
@pytest.mark.parametrize("causal", [False, True])
def test_banded_and_table_forms_match_naive(kind, causal):
    B, H, L, d = 2, 2, 11, 3
    q, k, v = rand_qkv(B, H, L, d, kscale=3.0)
    mask = padding_mask(B, L)
    if kind == "local":
        w = aft_local_dense_bias(BAND, W, L)
        y = aft_local(q, k, v, BAND, W, causal=causal, key_padding_mask=mask)
        for i in range(L):  # the band, written out
            for j in range(L):
                expect = BAND[i, j - i + W - 1] if abs(i - j) < W else 0.0
                assert float(w[i, j]) == float(expect)
    else:
        w = FULL[:L, :L]
        y = aft_full(q, k, v, FULL, causal=causal, key_padding_mask=mask)
    torch.testing.assert_close(y, naive_aft(q, k, v, w, causal, mask), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("window", [1, 3, 20])
def test_aft_local_windows_wider_or_narrower_than_the_pieces(window):
    B, H, L, d = 1, 2, 13, 3
    band = torch.randn(16, 2 * window - 1, dtype=torch.float64)
    q, k, v = rand_qkv(B, H, L, d, kscale=2.0)
    ref = naive_aft(q, k, v, aft_local_dense_bias(band, window, L), causal=True)
    op = lambda q, k, v, **kw: aft_local(q, k, v, band, window, **kw)  # noqa: E731
    torch.testing.assert_close(op(q, k, v), ref, rtol=1e-10, atol=1e-12)
    pieces, st = run_in_pieces(op, q, k, v, [1, 1, 5, 2, 4])
    torch.testing.assert_close(pieces, ref, rtol=1e-10, atol=1e-12)
    assert st["k"].shape[-2] == min(window, L) and st["t"] == L


def test_simple_state_is_the_running_sums_and_step_reference():
    B, H, L, d = 2, 2, 10, 3
    q, k, v = rand_qkv(B, H, L, d, kscale=30.0)
    _, st = aft(q, k, v, causal=True, output_final_state=True)
    sums = (torch.full((B, H, d), float("-inf"), dtype=torch.float64),
            torch.zeros(B, H, d, dtype=torch.float64), torch.zeros(B, H, d, dtype=torch.float64))
    for t in range(L):
        sums = aft_state_update(sums, k[:, :, t], v[:, :, t])
    torch.testing.assert_close(st["m"], sums[0])
    torch.testing.assert_close(st["num"], sums[1], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(st["den"], sums[2], rtol=1e-12, atol=1e-14)
    # the L = 1 call equals the reference step from the sums
    q1, k1, v1 = rand_qkv(B, H, 1, d)
    o = aft(q1, k1, v1, causal=True, initial_state=st)
    ref = aft_step(q1[:, :, 0], k1, v1, sums=(st["m"], st["num"], st["den"]))
    torch.testing.assert_close(o[:, :, 0], ref, rtol=1e-12, atol=1e-14)


def test_state_update_ignores_padded_keys():
    sums = (torch.full((2,), float("-inf")), torch.zeros(2), torch.zeros(2))
    m, num, den = aft_state_update(sums, torch.full((2,), float("-inf")), torch.zeros(2))
    assert torch.isneginf(m).all() and (num == 0).all() and (den == 0).all()


def test_aft_local_past_max_len_is_a_clear_error_before_any_work(monkeypatch):
    B, H, d = 1, 2, 3
    st = init_aft_state((B, H), d, kind="local", dtype=torch.float64)
    q, k, v = rand_qkv(B, H, MAXLEN - 1, d)
    _, st = aft_local(q, k, v, BAND, W, initial_state=st, output_final_state=True)
    assert st["t"] == MAXLEN - 1

    def no_work(*a, **kw):
        raise AssertionError("aft_local did work before checking max_len")

    monkeypatch.setattr(aft_mod, "_mask_keys", no_work)
    q, k, v = rand_qkv(B, H, 2, d)
    msg = (rf"sequence position {MAXLEN + 1} exceeds max_len={MAXLEN} of aft_local's position biases; "
           rf"build it with max_len >= {MAXLEN + 1}")
    with pytest.raises(ValueError, match=msg):
        aft_local(q, k, v, BAND, W, initial_state=st)
    with pytest.raises(ValueError, match=rf"exceeds max_len={MAXLEN}"):
        aft_local(*rand_qkv(B, H, MAXLEN + 1, d), BAND, W)
    with pytest.raises(ValueError, match=rf"exceeds max_len={MAXLEN} of aft_full"):
        aft_full(*rand_qkv(B, H, MAXLEN + 1, d), FULL)


def test_state_needs_causal_and_simple_for_aft():
    q, k, v = rand_qkv(1, 2, 4, 3)
    st = init_aft_state((1, 2), 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="causal=True"):
        aft(q, k, v, initial_state=st)
    with pytest.raises(ValueError, match="causal=True"):
        aft_local(q, k, v, BAND, W, causal=False, output_final_state=True)
    with pytest.raises(ValueError, match="pos_bias=None"):
        aft(q, k, v, pos_bias=FULL[:4, :4], causal=True, initial_state=st)
    with pytest.raises(ValueError, match=r"initial_state\['num'\] must have shape \(1, 2, 3\)"):
        aft(q, k, v, causal=True, initial_state={**st, "num": torch.zeros(1, 3)})
    with pytest.raises(ValueError, match="valid: 'simple', 'local', 'full'"):
        init_aft_state((1,), 3, kind="window")


def test_state_dtypes_for_half_inputs():
    st = init_aft_state((1, 2), 3, kind="local", dtype=torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in st.values() if torch.is_tensor(t))
    q, k, v = (t.to(torch.bfloat16) for t in rand_qkv(1, 2, 5, 3, dtype=torch.float32))
    o, st2 = aft_local(q, k, v, BAND.float(), W, initial_state=st, output_final_state=True)
    assert o.dtype == torch.bfloat16 and st2["k"].dtype == torch.float32 and st2["num"].dtype == torch.float32


@pytest.mark.parametrize("kind", list(OPS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", SCALES)
def test_future_keys_never_change_past_outputs(kind, dtype, scale):
    """Changing keys/values at positions >= i leaves outputs < i unchanged: exactly in
    float64, to 1e-6 relative in float32, with key offsets up to 30. (The old causal AFT-simple
    shifted k by its max over ALL keys and AFT-full scaled by the global max of k.)"""
    check_future_invariance(OPS[kind][0], 2, 4, dtype, scale, L=40, cuts=(1, 9, 23, 39))


@pytest.mark.parametrize("kind", list(OPS))
def test_nan_at_padded_positions_never_reaches_valid_outputs(kind):
    op = OPS[kind][0]
    B, H, L, d = 2, 2, 12, 3
    q, k, v = rand_qkv(B, H, L, d)
    mask = padding_mask(B, L)
    ref = op(q, k, v, key_padding_mask=mask)
    pad = ~mask[:, None, :, None]
    out, st = run_in_pieces(op, torch.where(pad, torch.nan, q), torch.where(pad, torch.nan, k),
                            torch.where(pad, torch.nan, v), [5, 7], mask)
    valid = mask[:, None, :, None].expand_as(out)
    assert rel_err(out[valid], ref[valid]) < 1e-12
    assert not any(torch.isnan(t).any() for t in st.values() if torch.is_tensor(t) and t.is_floating_point())
