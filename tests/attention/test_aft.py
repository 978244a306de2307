"""AFT backends (aft_full, aft_simple, aft_local) against a naive float64 transcription."""
import pytest
import torch

from ea_zoo import create_attention

D, H = 12, 3
NAMES = ["aft_full", "aft_simple", "aft_local"]


def naive_aft(q, k, v, w, causal=False, mask=None):
    """sigmoid(q_i) * sum_j exp(k_j + w_ij) v_j / sum_j exp(k_j + w_ij) with explicit loops over i."""
    L = k.shape[-2]
    out = torch.zeros_like(q)
    for i in range(L):
        keep = torch.ones(L, dtype=torch.bool) if not causal else torch.arange(L) <= i
        e = torch.exp(k + w[i][:, None])  # (B, H, L, d)
        if mask is not None:
            e = e * mask[:, None, :, None]
        e = e * keep[:, None]
        den = e.sum(-2)
        ratio = torch.where(den > 0, (e * v).sum(-2) / torch.where(den > 0, den, 1.0), 0.0)
        out[..., i, :] = torch.sigmoid(q[..., i, :]) * ratio
    return out


def dense_bias(m, L):
    """w (L, L) of a backend, built independently of its own ``position_bias``."""
    if m.attention_name == "aft_simple":
        return torch.zeros(L, L, dtype=torch.float64)
    if m.attention_name == "aft_full":
        return m.pos_bias[:L, :L].detach().clone()
    w = torch.zeros(L, L, dtype=torch.float64)
    for i in range(L):
        for j in range(L):
            if abs(i - j) < m.window:
                w[i, j] = m.pos_bias[i, j - i + m.window - 1]
    return w


def make(name, causal=False, **kw):
    if name != "aft_simple":
        kw.setdefault("max_len", 32)
    if name == "aft_local":
        kw.setdefault("window", 3)
    m = create_attention(name, dim=D, num_heads=H, causal=causal, **kw).double().eval()
    if hasattr(m, "pos_bias"):
        with torch.no_grad():
            m.pos_bias.normal_(0, 2)
    return m


def test_flags_and_registration():
    full, simple, local = (make(n) for n in NAMES)
    assert not full.recurrent and full.supports_step
    assert simple.recurrent and simple.supports_step and local.recurrent and local.supports_step
    for m in (full, simple, local):
        assert "19" in m.paper_equation
    assert full.state_numel(10) == 2 * 10 * D and full.state_numel(20) == 2 * 20 * D
    assert simple.state_numel(10) == simple.state_numel(10_000) == 3 * D
    assert local.state_numel(10) == local.state_numel(10_000) == 3 * D + 2 * 3 * D


def test_biases_init_zero_and_shapes():
    full = create_attention("aft_full", dim=D, num_heads=H, max_len=16)
    local = create_attention("aft_local", dim=D, num_heads=H, max_len=16, window=4)
    assert full.pos_bias.shape == (16, 16) and (full.pos_bias == 0).all()
    assert local.pos_bias.shape == (16, 7) and (local.pos_bias == 0).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_attend_matches_naive(name, causal):
    m = make(name, causal)
    B, L = 2, 9
    x = torch.randn(B, L, D, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, [1, 4]] = False
    q, k, v = m.project(x)
    if name != "aft_simple":
        torch.testing.assert_close(m.position_bias(L), dense_bias(m, L))
    y = m.attend(q, k, v, mask, causal)
    torch.testing.assert_close(y, naive_aft(q, k, v, dense_bias(m, L), causal, mask), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m(x, attn_mask=mask), m.merge_heads(y))


@pytest.mark.parametrize("name", NAMES)
def test_large_keys_stay_finite_and_correct(name):
    m = make(name, causal=True).float()
    B, L = 2, 20
    q, k, v = torch.randn(3, B, H, L, D // H).unbind(0)
    k = k * 80
    for causal in (False, True):
        y = m.attend(q, k, v, None, causal)
        assert torch.isfinite(y).all()
        ref = naive_aft(q.double(), k.double(), v.double(), dense_bias(m, L).double(), causal)
        torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("L", [1, 10])
def test_step_equals_parallel_causal(name, L):
    m = make(name, causal=True)  # aft_local: window 3 < L, so keys leave the cache
    B = 2
    x = torch.randn(B, L, D, dtype=torch.float64) * 2
    y = m(x)
    state = m.init_state(B, dtype=torch.float64)
    ys = []
    for t in range(L):
        yt, state = m.step(x[:, t], state)
        ys.append(yt)
    ys = torch.stack(ys, 1)
    assert ((ys - y).norm() / y.norm()) < 1e-9
    held = sum(s.numel() for s in state.values() if torch.is_tensor(s)) // B
    assert held <= m.state_numel(L)
    if name == "aft_local":
        assert state["k"].shape[-2] == min(L, m.window)


def test_step_attend_does_not_modify_state():
    m = make("aft_local", causal=True)
    state = m.init_state(1, dtype=torch.float64)
    for _ in range(4):
        _, state = m.step(torch.randn(1, D, dtype=torch.float64), state)
    before = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}
    m.step(torch.randn(1, D, dtype=torch.float64), state)
    for key, val in before.items():
        assert torch.equal(state[key], val) if torch.is_tensor(val) else state[key] == val


@pytest.mark.parametrize("causal", [False, True])
def test_aft_local_is_global_outside_the_window(causal):
    m = make("aft_local", causal, window=2)
    L = 8
    w = m.position_bias(L)
    far = (torch.arange(L)[None] - torch.arange(L)[:, None]).abs() >= 2
    assert (w[far] == 0).all() and torch.isfinite(w).all()
    # the last query still depends on the first key/value, 7 positions away
    q, k, v = torch.randn(3, 1, H, L, D // H, dtype=torch.float64).unbind(0)
    v2 = v.clone()
    v2[..., 0, :] += 5.0
    y, y2 = m.attend(q, k, v, None, causal), m.attend(q, k, v2, None, causal)
    assert (y2[..., L - 1, :] - y[..., L - 1, :]).abs().min() > 1e-6


@pytest.mark.parametrize("name", ["aft_full", "aft_local"])
def test_longer_than_max_len_is_a_clear_error(name):
    m = make(name, max_len=6)
    with pytest.raises(ValueError, match=r"L=7 exceeds max_len=6"):
        m(torch.randn(1, 7, D, dtype=torch.float64))
    m(torch.randn(1, 6, D, dtype=torch.float64))  # L == max_len is fine
    assert m.max_decode_len == 6
    state = m.init_state(1, dtype=torch.float64)
    for _ in range(6):
        _, state = m.step(torch.randn(1, D, dtype=torch.float64), state)
    msg = rf"sequence position 7 exceeds max_len=6 of {name}'s position biases; build it with max_len >= 7"
    with pytest.raises(ValueError, match=msg):
        m.step(torch.randn(1, D, dtype=torch.float64), state)
    _, state = m.prefill(torch.randn(1, 4, D, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"sequence position 7 exceeds max_len=6"):
        m.prefill(torch.randn(1, 3, D, dtype=torch.float64), state)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_module(name, causal):
    m = make(name, causal, max_len=8) if name != "aft_simple" else make(name, causal)
    x = torch.randn(1, 5, D, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True, True, True]])
    inputs = (x,)
    if hasattr(m, "pos_bias"):  # the learned biases too
        inputs += (m.pos_bias.detach().clone().requires_grad_(),)

    def fn(x, *w):
        params = {"pos_bias": w[0]} if w else {}
        return torch.func.functional_call(m, params, (x,), {"attn_mask": mask})

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_module_long_sequence(name):
    kw = {"max_len": 1024} if name != "aft_simple" else {}
    m = create_attention(name, dim=16, num_heads=2, **kw).to(torch.bfloat16)
    x = (torch.randn(1, 1024, 16) * 3).to(torch.bfloat16)
    with torch.no_grad():
        for causal in (False, True):
            y = m(x, is_causal=causal)
            assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


# ------------------------------------------------------------------ state contract
from ea_zoo.testing import SCALES, check_future_invariance, check_init_state, check_prefill_and_step  # noqa: E402


@pytest.mark.parametrize("name", NAMES)
def test_init_state_follows_the_module(name):
    kw = {} if name == "aft_simple" else {"max_len": 16}
    check_init_state(lambda: create_attention(name, dim=D, num_heads=H, **kw))
    st = make(name).init_state(2)
    expect = {"aft_simple": {"m", "num", "den"}, "aft_local": {"k", "v", "m", "num", "den", "t"},
              "aft_full": {"k", "v"}}[name]
    assert set(st) == expect


@pytest.mark.parametrize("name,kw", [("aft_simple", {}), ("aft_full", {}), ("aft_local", {"window": 1}),
                                     ("aft_local", {"window": 3}), ("aft_local", {"window": 40})])
def test_prefill_in_pieces_and_step_is_the_L1_call(name, kw):
    check_prefill_and_step(make(name, causal=True, **kw), D, L=23)


def test_max_decode_len_is_the_bias_table():
    assert make("aft_local", max_len=12).max_decode_len == 12
    assert make("aft_full", max_len=9).max_decode_len == 9


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", SCALES)
def test_future_keys_never_change_past_outputs(name, dtype, scale):
    m = make(name).to(dtype)
    check_future_invariance(lambda q, k, v: m.attend(q, k, v, None, True), H, D // H, dtype, scale)


@pytest.mark.parametrize("causal", [False, True])
def test_aft_local_with_a_window_covering_the_sequence_is_aft_full(causal):
    """window >= L puts every (i, j) inside the band, so AFT-local is AFT-full with the same
    biases: the benchmarks' AFT-local rows (window 64, contexts <= 64) equal AFT-full's."""
    L = 10
    local = make("aft_local", causal, window=L, max_len=L)
    full = make("aft_full", causal, max_len=L)
    missing, unexpected = full.load_state_dict(
        {k: v for k, v in local.state_dict().items() if k != "pos_bias"}, strict=False)
    assert missing == ["pos_bias"] and not unexpected
    with torch.no_grad():
        full.pos_bias.copy_(local.position_bias(L))
    x = torch.randn(2, L, D, dtype=torch.float64) * 10
    torch.testing.assert_close(local(x), full(x))
