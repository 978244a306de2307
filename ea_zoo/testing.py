"""Checks of the attention state contract, for tests of a backend (yours included).

Every :class:`~ea_zoo.attention.base.AttentionBase` backend promises (see its module
docstring): ``init_state()`` follows the module (device; float64 -> float64, float32/half ->
float32; meta -> meta); ``prefill`` in pieces of any size with the state passed on equals
the causal ``forward``; ``step`` equals ``attend_state``'s L = 1 call exactly; states are
never modified in place; and keys/values at positions >= i never change the outputs before
i. The functions below assert exactly that, so a new backend's test file can call them::

    from ea_zoo.testing import check_init_state, check_prefill_and_step
    check_init_state(lambda: create_attention("my_attn", dim=16, num_heads=2))
"""
import torch

__all__ = ["SCALES", "random_pieces", "rel_err", "tensors", "check_init_state", "check_prefill_and_step",
           "check_future_invariance", "check_model_decoding"]

#: input scales the contract is checked at (trained models reach 10-30)
SCALES = [1.0, 3.0, 10.0, 30.0]


def random_pieces(L, seed):
    """Random piece sizes (>= 1) summing to L."""
    g = torch.Generator().manual_seed(seed)
    sizes, left = [], L
    while left:
        n = int(torch.randint(1, min(left, 9) + 1, (1,), generator=g))
        sizes.append(n)
        left -= n
    return sizes


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def tensors(state):
    return {n: t for n, t in state.items() if torch.is_tensor(t)}


def check_init_state(build):
    """init_state() follows the module: float64 -> float64, float32/bf16 -> float32, meta -> meta."""
    for dtype, expect in [(torch.float64, torch.float64), (torch.float32, torch.float32),
                          (torch.bfloat16, torch.float32)]:
        st = tensors(build().to(dtype).init_state())
        assert st and all(t.dtype == expect and t.device.type == "cpu" and t.shape[0] == 1 for t in st.values())
    st = tensors(build().double().init_state(3, dtype=torch.float32))
    assert all(t.dtype == torch.float32 and t.shape[0] == 3 for t in st.values())
    with torch.device("meta"):
        m = build()
    st = tensors(m.init_state(2))
    assert all(t.device.type == "meta" and t.dtype == torch.float32 for t in st.values())


def check_prefill_and_step(m, D, L=23, seeds=(0, 1), scale=2.0):
    """prefill in random pieces == causal forward; step == attend_state's L = 1 call, exactly;
    states are not modified."""
    B = 2
    x = scale * torch.randn(B, L, D, dtype=torch.float64)
    y = m(x, is_causal=True)
    y0, _ = m.prefill(x)
    assert rel_err(y0, y) < 1e-9
    for seed in seeds:
        state, outs, s = m.init_state(B), [], 0
        for n in random_pieces(L, seed):
            prev = state
            before = {n: t.clone() for n, t in tensors(prev).items()}
            o, state = m.prefill(x[:, s:s + n], prev)
            assert all(torch.equal(prev[n], t) for n, t in before.items())  # not modified in place
            outs.append(o)
            s += n
        assert rel_err(torch.cat(outs, 1), y) < 1e-9
    state = m.init_state(B)
    for t in range(4):
        q, k, v = m.project(x[:, t:t + 1])
        before = {n: c.clone() for n, c in tensors(state).items()}
        o_step, st_step = m.step_attend(q[:, :, 0], k[:, :, 0], v[:, :, 0], state)
        o_call, st_call = m.attend_state(q, k, v, state)
        assert torch.equal(o_step, o_call[:, :, 0])
        assert tensors(st_step).keys() == tensors(st_call).keys()
        assert all(torch.equal(st_step[n], st_call[n]) for n in tensors(st_step))
        assert all(torch.equal(state[n], c) for n, c in before.items())  # not modified in place
        state = st_step


def check_future_invariance(attend, H, d, dtype, scale, L=24, cuts=(1, 7, 16, 23)):
    """attend(q, k, v) on heads (B, H, L, d): keys/values at positions >= i (i in ``cuts``)
    never change the outputs < i (exactly in float64, to 1e-6 relative in float32), with key
    offsets up to 30."""
    B = 2
    for offset in (0.0, 30.0):
        q, k, v = (scale * torch.randn(B, H, L, d, dtype=dtype) for _ in range(3))
        k = k + offset
        out = attend(q, k, v)
        for i in cuts:
            k2, v2 = k.clone(), v.clone()
            k2[:, :, i:] = scale * torch.randn_like(k2[:, :, i:]) + offset + 5 * scale
            v2[:, :, i:] = 3 * scale * torch.randn_like(v2[:, :, i:])
            out2 = attend(q, k2, v2)
            if dtype == torch.float64:
                assert torch.equal(out2[:, :, :i], out[:, :, :i]), (offset, i)
            else:
                assert rel_err(out2[:, :, :i], out[:, :, :i]) <= 1e-6, (offset, i)


def check_model_decoding(m, ids, cut_a, cut_b, rtol=1e-9, atol=1e-10):
    """A causal model's three forms agree on token ids (B, L): the parallel forward == ``step``
    token by token == ``prefill(ids[:, :cut_a])``, ``prefill(ids[:, cut_a:cut_b], state)``, then
    ``step`` to the end. Returns the parallel output."""
    L = ids.shape[1]
    with torch.no_grad():
        full = m(ids)
        state = m.init_state(ids.shape[0])
        steps = []
        for t in range(L):
            y, state = m.step(ids[:, t], state)
            steps.append(y)
        a, st = m.prefill(ids[:, :cut_a])
        b, st = m.prefill(ids[:, cut_a:cut_b], st)
        outs = [a, b]
        for t in range(cut_b, L):
            y, st = m.step(ids[:, t], st)
            outs.append(y[:, None])
    assert state["t"] == st["t"] == L
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=rtol, atol=atol)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=rtol, atol=atol)
    return full
