"""EA-series (Feng 2025 eq. 5-6, 7-16) against direct float64 transcriptions."""
import math

import pytest
import torch

from ea_zoo.functional import ea, ea_series, ea_series_init_state, ea_series_step
from ea_zoo.functional.ea_series import check_order, taylor_coefficients


def eq5_eq6_direct(q, k, v, order, causal=False, mask=None):
    """Literal double loop: y_ic = sum_j e^{-k_jc^2} P_t(2 q_ic k_jc) v_jc / sum_j (same)."""
    B, L, D = q.shape
    y = torch.zeros(B, L, D, dtype=torch.float64)
    for b in range(B):
        for i in range(L):
            num = torch.zeros(D, dtype=torch.float64)
            den = torch.zeros(D, dtype=torch.float64)
            for j in range(L):
                if causal and j > i:
                    continue
                if mask is not None and not mask[b, j]:
                    continue
                x = 2 * q[b, i] * k[b, j]
                poly = sum(x**n / math.factorial(n) for n in range(order + 1))
                w = torch.exp(-k[b, j] ** 2) * poly
                num += w * v[b, j]
                den += w
            y[b, i] = num / den
    return y


@pytest.mark.parametrize("order", [0, 2, 4, 6, 8])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_direct_transcription(order, causal):
    B, L, D = 2, 9, 5
    q, k, v = (torch.randn(B, L, D, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 0] = False
    mask[1, 6:] = False
    y = ea_series(q, k, v, order=order, causal=causal, key_padding_mask=mask)
    ref = eq5_eq6_direct(q, k, v, order, causal, mask)
    valid = torch.ones_like(ref, dtype=torch.bool)
    if causal:  # query 0 of batch 1 sees no valid key -> defined as 0
        valid[1, 0] = False
        assert (y[1, 0] == 0).all()
    torch.testing.assert_close(y[valid], ref[valid], rtol=1e-12, atol=1e-12)


def test_multihead_layout_is_per_channel():
    q, k, v = (torch.randn(2, 3, 7, 4, dtype=torch.float64) for _ in range(3))
    y = ea_series(q, k, v, order=4, causal=True)
    flat = lambda t: t.permute(0, 2, 1, 3).reshape(2, 7, 12)
    y2 = ea_series(flat(q), flat(k), flat(v), order=4, causal=True)
    torch.testing.assert_close(flat(y), y2)


def test_error_against_full_ea_falls_with_order():
    torch.manual_seed(1)
    q, k, v = (torch.rand(2, 32, 8, dtype=torch.float64) * 2 - 1 for _ in range(3))
    full = ea(q, k, v)
    errs = [(ea_series(q, k, v, order=t) - full).abs().max().item() for t in (2, 4, 6, 8)]
    assert errs[0] > errs[1] > errs[2] > errs[3], errs
    assert (ea_series(q, k, v, order=24) - full).abs().max().item() < 1e-4
    # causal too
    fullc = ea(q, k, v, causal=True)
    errs_c = [(ea_series(q, k, v, order=t, causal=True) - fullc).abs().max().item() for t in (2, 4, 6, 8)]
    assert errs_c[0] > errs_c[1] > errs_c[2] > errs_c[3], errs_c


def test_large_keys_do_not_underflow():
    # e^{-k^2} underflows in float32 for |k| > 9.3; the per-channel shift keeps it exact
    q = torch.randn(1, 6, 3) * 0.1
    k = torch.full((1, 6, 3), 11.0) + torch.randn(1, 6, 3) * 0.1
    v = torch.randn(1, 6, 3)
    y32 = ea_series(q, k, v, order=6)
    y64 = eq5_eq6_direct(q.double(), k.double(), v.double(), 6)
    assert torch.isfinite(y32).all()
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-5)


def test_recurrent_rescales_state_when_running_min_drops():
    L, D = 12, 4
    k = torch.linspace(9.5, 0.1, L, dtype=torch.float64).view(1, L, 1).expand(1, L, D).clone()
    q = torch.randn(1, L, D, dtype=torch.float64) * 0.3
    v = torch.randn(1, L, D, dtype=torch.float64)
    y = ea_series(q, k, v, order=6, causal=True)
    state = ea_series_init_state((1, D), 6, dtype=torch.float64)
    outs = []
    for t in range(L):
        yt, state = ea_series_step(q[:, t], k[:, t], v[:, t], state, order=6)
        outs.append(yt)
    torch.testing.assert_close(torch.stack(outs, 1), y, rtol=1e-10, atol=1e-12)
    # float32 state at the same scale stays finite (no e^{-k^2} underflow to 0/0)
    state = ea_series_init_state((1, D), 6)
    for t in range(L):
        yt, state = ea_series_step(q[:, t].float() , k[:, t].float() * 1.2, v[:, t].float(), state)
        assert torch.isfinite(yt).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(dtype):
    q, k, v = (torch.randn(1, 2048, 8) * 3 for _ in range(3))
    y = ea_series(q.to(dtype), k.to(dtype), v.to(dtype), order=6, causal=True)
    assert y.dtype == dtype and torch.isfinite(y.float()).all()
    ref = ea_series(q.to(dtype).float(), k.to(dtype).float(), v.to(dtype).float(), order=6, causal=True)
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2)


def test_gradcheck():
    q, k, v = (torch.randn(1, 6, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    for causal in (False, True):
        assert torch.autograd.gradcheck(lambda a, b, c: ea_series(a, b, c, order=4, causal=causal), (q, k, v))


def test_order_validation():
    assert check_order(6) == 6
    for bad in (1, 3, 7):
        with pytest.raises(ValueError, match="odd"):
            check_order(bad)
    assert check_order(3, allow_odd=True) == 3
    with pytest.raises(ValueError, match="non-negative"):
        check_order(-2)
    with pytest.raises(TypeError, match="int"):
        check_order(2.0)
    with pytest.raises(ValueError, match="odd"):
        ea_series(*(torch.randn(1, 3, 2) for _ in range(3)), order=5)
    assert taylor_coefficients(3) == [1.0, 2.0, 2.0, 8.0 / 6.0]


def test_step_rejects_mismatched_order():
    state = ea_series_init_state((1, 4), 2)
    with pytest.raises(ValueError, match="order=6"):
        ea_series_step(*(torch.randn(1, 4) for _ in range(3)), state, order=6)
