"""The PyTorch EA-series paths (ea_zoo.functional.ea_series_chunk) against the naive O(L^2)
reference, at the scales trained models reach: prefix stabilisation, the state contract,
gradients, memory, padding and the finite range."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ea_zoo.functional import ea_series, ea_series_init_state, ea_series_step
from ea_zoo.functional.ea_series_chunk import ea_series_chunk, ea_series_parallel
from ea_zoo.functional.ea_series_naive import ea_series_naive

SCALES = [1.0, 3.0, 10.0, 30.0]


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def qkv(shape, scale, offset=0.0, dtype=torch.float64, seed=0):
    """q, k, v as a trained layer gives them: spread ``scale``, keys around +-``offset``."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape, generator=g, dtype=torch.float64) * 0.1 * scale
    sign = torch.where(torch.rand(shape[-1], generator=g) < 0.5, -1.0, 1.0).double()
    k = torch.randn(*shape, generator=g, dtype=torch.float64) * 0.3 * scale + offset * sign
    v = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
    return q.to(dtype), k.to(dtype), v.to(dtype)


def test_issue_repro_last_key_changes_nothing_before_it():
    torch.manual_seed(0)
    q = torch.randn(1, 8, 4) * .1
    k = torch.randn(1, 8, 4) * .1 + 12
    v = torch.randn(1, 8, 4)
    k2 = k.clone()
    k2[:, -1] = 0.01
    a = ea_series(q, k, v, causal=True)
    b = ea_series(q, k2, v, causal=True)
    assert (a[:, :-1] - b[:, :-1]).abs().max().item() == 0.0
    assert rel(a, ea_series_naive(q.double(), k.double(), v.double(), causal=True)) < 1e-5


@pytest.mark.parametrize("offset", [9.0, 10.0, 11.0, 20.0, 30.0])
def test_large_key_offsets_match_float64(offset):
    q, k, v = qkv((2, 3, 40, 4), 1.0, offset, dtype=torch.float32)
    k[:, :, 25:] = k[:, :, 25:].sign() * 0.05  # late keys far below the early ones' k^2
    y = ea_series(q, k, v, order=6, causal=True, chunk_size=16)
    y64 = ea_series_naive(q.double(), k.double(), v.double(), order=6, causal=True)
    assert rel(y, y64) < 1e-5


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale=st.sampled_from(SCALES), offset=st.floats(0.0, 30.0), cut=st.integers(1, 47),
       chunk=st.sampled_from([4, 16, 64]), order=st.sampled_from([2, 6]), seed=st.integers(0, 10_000))
def test_future_invariance_property(scale, offset, cut, chunk, order, seed):
    """Changing keys/values at positions >= cut leaves outputs before cut unchanged: bit for
    bit, in float64 and in float32 (every quantity a row uses depends on earlier rows only)."""
    q, k, v = qkv((2, 2, 48, 3), scale, offset, seed=seed)
    k2, v2 = k.clone(), v.clone()
    g = torch.Generator().manual_seed(seed + 1)
    k2[..., cut:, :] = torch.randn(k2[..., cut:, :].shape, generator=g, dtype=k.dtype) * 0.05  # tiny k^2
    v2[..., cut:, :] = torch.randn(v2[..., cut:, :].shape, generator=g, dtype=k.dtype) * 100
    for dtype, tol in ((torch.float64, 0.0), (torch.float32, 0.0)):
        a = ea_series(q.to(dtype), k.to(dtype), v.to(dtype), order=order, causal=True, chunk_size=chunk)
        b = ea_series(q.to(dtype), k2.to(dtype), v2.to(dtype), order=order, causal=True, chunk_size=chunk)
        assert rel(b[..., :cut, :], a[..., :cut, :]) <= tol, (dtype, scale, offset)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (3.0, 1.0), (10.0, 3.0), (30.0, 30.0)])
@pytest.mark.parametrize("order", [0, 2, 6, 8])
def test_outputs_and_gradients_match_naive_float64(causal, scale, offset, order):
    q, k, v = qkv((2, 2, 70, 5), scale, offset, seed=order)
    mask = torch.ones(2, 70, dtype=torch.bool)
    mask[1, :5] = False
    mask[0, -9:] = False
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    if causal:
        y = ea_series_chunk(*xs, order, mask, chunk_size=16)
    else:
        y = ea_series_parallel(*xs, order, mask)
    x2 = [t.clone().requires_grad_() for t in (q, k, v)]
    y2 = ea_series_naive(*x2, order, causal, mask)
    assert rel(y, y2) < 1e-9
    g = torch.randn_like(y)
    g1 = torch.autograd.grad(y, xs, g, allow_unused=True)
    g2 = torch.autograd.grad(y2, x2, g, allow_unused=True)
    for name, a, b in zip("qkv", g1, g2):
        if b is None:  # order 0: q unused
            assert a is None or a.abs().max() == 0
            continue
        assert rel(a, b) < 1e-8, name


def test_fallback_blocks_are_exercised_and_exact():
    """A running minimum that drops by hundreds inside one chunk takes the pairwise path."""
    q, k, v = qkv((1, 1, 32, 2), 1.0, 0.0)
    k[..., :20, :] += 25.0  # k^2 ~ 625 early, ~0 late: a drop far above tau inside chunk 0
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    y = ea_series_chunk(*xs, 6, chunk_size=32)
    x2 = [t.clone().requires_grad_() for t in (q, k, v)]
    y2 = ea_series_naive(*x2, 6, True)
    assert rel(y, y2) < 1e-12
    for a, b in zip(torch.autograd.grad(y.sum(), xs), torch.autograd.grad(y2.sum(), x2)):
        assert rel(a, b) < 1e-9
    y32 = ea_series_chunk(q.float(), k.float(), v.float(), 6, chunk_size=32)
    assert rel(y32, y2) < 1e-5


@pytest.mark.parametrize("chunk", [64, 256])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unsafe_chunks_are_redone_in_sub_chunks_not_pairs(monkeypatch, chunk, dtype):
    """Keys whose running minimum drops by more than tau inside a chunk (q, k at scale 4-30,
    as MQAR's width-128 EA-8 reached) made every such chunk an exact C x C pairwise problem,
    forward and backward: 60x the step at scale 1. They are redone as sub-chunks of C / 4
    (recursively: 256 -> 64 -> 16), so pairs are formed only in chunks of <= 16 rows; the
    result and the gradients stay those of the float64 reference, padding included."""
    import ea_zoo.functional.ea_series_chunk as esc

    sizes = []
    real = esc._pairwise
    monkeypatch.setattr(esc, "_pairwise", lambda q, *a: sizes.append(q.shape[-1]) or real(q, *a))
    L = 300
    q, k, v = qkv((2, 3, L, 4), 20.0, 0.0, seed=chunk)
    k[..., ::37, :] *= 3.0  # a few far keys: the running minimum keeps dropping in steps
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[1, -40:] = False
    xs = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    y = ea_series_chunk(*xs, 6, mask, chunk_size=chunk)
    g = torch.randn(y.shape, dtype=torch.float64)
    grads = torch.autograd.grad(y, xs, g.to(dtype))
    assert sizes and max(sizes) <= esc._PAIRWISE_MAX  # the fallback ran, on small chunks only
    x2 = [t.clone().requires_grad_() for t in (q, k, v)]
    y2 = ea_series_naive(*x2, 6, True, mask)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert rel(y, y2) < tol
    for name, a, b in zip("qkv", grads, torch.autograd.grad(y2, x2, g)):
        assert rel(a, b) < 10 * tol, name


def test_sequential_sum_backward_is_one_node():
    """The unsafe chunks' exact backward runs autograd through ``_seq_sum`` on (U, C, C)
    tensors. Recorded add by add, each term's ``select`` backward allocated and zero-filled a
    full-size buffer (O(C) of them: about half of the step at q, k scale 4); it is
    one node whose backward broadcasts the gradient, and its forward is the sequential adds."""
    from ea_zoo.functional.ea_series_chunk import _seq_sum

    x = torch.randn(3, 5, 64, dtype=torch.float64, requires_grad=True)
    y = _seq_sum(x)
    acc = x.detach()[..., 0].clone()
    for j in range(1, 64):
        acc += x.detach()[..., j]
    assert torch.equal(y.detach(), acc)  # bit for bit: the rounding of the sequential adds
    assert y.grad_fn.next_functions[0][0] is not None and "Select" not in type(y.grad_fn).__name__
    assert all("Select" not in type(f).__name__ for f, _ in y.grad_fn.next_functions if f is not None)
    g = torch.randn(3, 5, dtype=torch.float64)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, g.unsqueeze(-1).expand_as(x))


def test_gradcheck_chunk_and_parallel():
    q, k, v = (t.requires_grad_() for t in qkv((1, 2, 11, 2), 3.0, 2.0))
    mask = torch.tensor([[True] * 9 + [False] * 2])
    assert torch.autograd.gradcheck(lambda a, b, c: ea_series_chunk(a, b, c, 4, mask, chunk_size=4), (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: ea_series_parallel(a, b, c, 4, mask), (q, k, v))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_pieces_with_state_equal_one_call(scale, with_mask):
    q, k, v = qkv((2, 3, 57, 4), scale, scale, seed=int(scale))
    mask = None
    if with_mask:
        mask = torch.rand(2, 57, generator=torch.Generator().manual_seed(3)) > 0.3
    whole, final = ea_series(q, k, v, order=6, causal=True, key_padding_mask=mask, output_final_state=True)
    assert rel(whole, ea_series_naive(q, k, v, 6, True, mask)) < 1e-9
    cuts = [0, 1, 9, 10, 33, 57]
    state, outs = None, []
    for a, b in zip(cuts[:-1], cuts[1:]):
        m = None if mask is None else mask[:, a:b]
        o, state = ea_series(q[..., a:b, :], k[..., a:b, :], v[..., a:b, :], order=6, causal=True,
                             key_padding_mask=m, initial_state=state, output_final_state=True, chunk_size=8)
        outs.append(o)
    assert rel(torch.cat(outs, dim=-2), whole) < 1e-9
    for key in ("s", "z"):
        assert rel(state[key], final[key]) < 1e-9
    torch.testing.assert_close(state["ref"], final["ref"], rtol=0, atol=0)
    _, naive_final = ea_series_naive(q, k, v, 6, True, mask, output_final_state=True)
    for key in ("s", "z"):
        assert rel(final[key], naive_final[key]) < 1e-9


@pytest.mark.parametrize("scale", SCALES)
def test_step_is_the_single_token_call(scale):
    q, k, v = qkv((2, 3, 12, 4), scale, scale)
    state_a = ea_series_init_state((2, 3, 4), 6, dtype=torch.float64)
    state_b = ea_series_init_state((2, 3, 4), 6, dtype=torch.float64)
    for i in range(12):
        ya, state_a = ea_series_step(q[..., i, :], k[..., i, :], v[..., i, :], state_a, order=6)
        yb, state_b = ea_series(q[..., i:i + 1, :], k[..., i:i + 1, :], v[..., i:i + 1, :], order=6, causal=True,
                                initial_state=state_b, output_final_state=True)
        assert rel(yb[..., 0, :], ya) < 1e-12
    for key in state_a:
        assert rel(state_b[key], state_a[key]) < 1e-12


@pytest.mark.parametrize("order", [2, 6])
def test_fp32_matches_float64_at_scale_30(order):
    q, k, v = qkv((2, 4, 512, 8), 30.0, 10.0, dtype=torch.float32, seed=5)
    y = ea_series(q, k, v, order=order, causal=True)
    y64 = ea_series_naive(q.double(), k.double(), v.double(), order, True)
    assert rel(y, y64) < 1e-3


def test_nan_in_padded_position_does_not_reach_valid_outputs():
    q, k, v = qkv((2, 9, 4), 3.0)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 4] = False
    mask[1, 0] = False
    clean = [ea_series(q, k, v, causal=c, key_padding_mask=mask) for c in (False, True)]
    for t in (k, v):
        t[0, 4] = float("nan")
        t[1, 0] = float("inf")
    for causal, ref in zip((False, True), clean):
        xs = [x.clone().requires_grad_() for x in (q, k, v)]
        y = ea_series(*xs, causal=causal, key_padding_mask=mask)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y, ref, rtol=0, atol=0)
        grads = torch.autograd.grad(y.sum(), xs)
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("causal", [False, True])
def test_ea8_finite_range_in_fp32(causal):
    """The documented range: |q|, |k| <= 100 (|2 q k| <= 2e4) stays finite at L = 10^4."""
    g = torch.Generator().manual_seed(0)
    L = 10_000
    q = (torch.rand(1, L, 4, generator=g) * 2 - 1) * 100
    k = (torch.rand(1, L, 4, generator=g) * 2 - 1) * 100
    v = torch.randn(1, L, 4, generator=g) * 30
    y = ea_series(q, k, v, order=8, causal=causal)
    assert torch.isfinite(y).all()
    assert y.abs().max() <= v.abs().max() * (1 + 1e-5)  # a convex combination of the values


@pytest.mark.parametrize("causal", [False, True])
def test_training_saves_only_qkv_y_and_small_states(causal):
    """Nothing of size (t + 1) x L x D lives from the forward to the backward: non-causal saves
    q, k, v, y (+ (t + 1) D sums); causal also two (L, D) row factors and the states every
    chunk and its two scales (2 (t + 1) D + 2 D per 64 tokens)."""
    B, L, D, order = 1, 4096, 16, 6
    q, k, v = (torch.randn(B, L, D, requires_grad=True) for _ in range(3))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = ea_series(q, k, v, order=order, causal=causal)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved if t is not None}
    LD = B * L * D * 4
    bound = (6 if causal else 4) * LD + (2 * (order + 1) + 2) * LD // 64 + 4096
    assert sum(storages.values()) <= bound, sorted(storages.values())
    y.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_state_errors_are_clear():
    q = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="need causal=True"):
        ea_series(q, q, q, causal=False, output_final_state=True)
    bad = ea_series_init_state((2, 4), 4)
    with pytest.raises(ValueError, match=r"state\['s'\] has shape"):
        ea_series(q, q, q, order=6, causal=True, initial_state=bad)
    with pytest.raises(ValueError, match="chunk_size"):
        ea_series(q, q, q, causal=True, chunk_size=0)


def test_empty_sequence_gives_empty_output():
    q = torch.randn(2, 0, 4)
    y, state = ea_series(q, q, q, causal=True, output_final_state=True)
    assert y.shape == (2, 0, 4)
    assert torch.isinf(state["ref"]).all()


@pytest.mark.parametrize("causal", [False, True])
def test_second_order_gradients_raise_a_clear_error(causal):
    """The hand-written backward is first-order only: double backward refuses, never silently 0."""
    q, k, v = (t.requires_grad_() for t in qkv((1, 6, 2), 1.0))
    y = ea_series(q, k, v, order=2, causal=causal)
    (gq,) = torch.autograd.grad(y.sum(), q, create_graph=True)
    assert not gq.requires_grad  # no graph through the first-order gradient
    with pytest.raises(RuntimeError, match="does not require grad|once_differentiable"):
        torch.autograd.grad(gq.sum(), k)


@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (10.0, 3.0), (30.0, 30.0)])
@pytest.mark.parametrize("L", [1, 6, 13])
def test_sequence_shorter_than_a_chunk(L, scale, offset):
    """L < chunk_size (the forecasting models run L = 6 with the default chunk of 64) is one chunk
    of length L: the same outputs, gradients and state as the float64 reference, and rows
    bit-identical to the first L rows of a sequence longer than a chunk (the first chunk of any
    sequence does the same arithmetic)."""
    q, k, v = qkv((2, 3, 80, 4), scale, offset, seed=L)
    mask = torch.ones(2, 80, dtype=torch.bool)
    mask[1, 0] = False
    for dtype in (torch.float64, torch.float32):
        xs = [t[..., :L, :].to(dtype).clone().requires_grad_() for t in (q, k, v)]
        y, st = ea_series_chunk(*xs, 6, mask[:, :L], output_final_state=True, chunk_size=64)
        long_ = ea_series_chunk(*(t.to(dtype) for t in (q, k, v)), 6, mask, chunk_size=64)
        assert torch.equal(y.detach(), long_[..., :L, :]), dtype
        if dtype is torch.float64:
            x2 = [t[..., :L, :].clone().requires_grad_() for t in (q, k, v)]
            y2 = ea_series_naive(*x2, 6, True, mask[:, :L])
            assert rel(y, y2) < 1e-9
            g = torch.randn_like(y)
            g1, g2 = torch.autograd.grad(y, xs, g), torch.autograd.grad(y2, x2, g)
            # dq can be ~0 exactly (one key, or one dominant key): errors relative to the largest gradient
            top = max(b.abs().max() for b in g2)
            for name, a, b in zip("qkv", g1, g2):
                assert ((a - b).abs().max() / top).item() < 1e-9, name
            # the state after L tokens is the state of L steps
            s = ea_series_init_state(q.shape[:-2] + (q.shape[-1],), 6, dtype=torch.float64)
            for i in range(L):
                keep = mask[:, i].view(2, 1, 1)
                _, s2 = ea_series_step(q[..., i, :], k[..., i, :], v[..., i, :], s, order=6)
                s = {key: torch.where(keep, s2[key], s[key]) for key in s}
            for key in ("s", "z", "ref"):  # ref is +inf where no key was seen yet
                torch.testing.assert_close(st[key], s[key], rtol=1e-9, atol=1e-12 * s[key][s[key].isfinite()].abs().max().item())
