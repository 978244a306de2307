"""The ea_series backend's chunk_size option: one declaration, passed to every causal call."""
import pytest
import torch

from ea_zoo import create_attention
from ea_zoo.testing import SCALES, check_future_invariance

D, H = 16, 2
d = D // H


def make(**kw):
    return create_attention("ea6", dim=D, num_heads=H, **kw).double().eval()


def test_chunk_size_from_a_spec_and_bad_values():
    m = create_attention({"name": "ea6", "chunk_size": 16}, dim=D, num_heads=H)
    assert m.chunk_size == 16 and m.order == 6
    assert create_attention("ea6", dim=D, num_heads=H).chunk_size == 64
    for bad in (0, -3, 2.5, True, "16"):
        with pytest.raises(ValueError, match=rf"chunk_size.*{bad!r}".replace(".5", r"\.5")):
            create_attention("ea6", dim=D, num_heads=H, chunk_size=bad)


@pytest.mark.parametrize("scale", [1.0, 4.0, 20.0])
def test_every_chunk_size_gives_the_same_causal_outputs_and_gradients(scale):
    """float64, inputs at the scales trained models reach (many rows take the pairwise path
    at chunk 64 there); chunk 1, 5, 16 and 64 agree."""
    g = torch.Generator().manual_seed(0)
    x = scale * torch.randn(2, 70, D, dtype=torch.float64, generator=g)
    outs = []
    for cs in (64, 16, 5, 1):
        torch.manual_seed(0)  # the same weights for every chunk size
        m = make(chunk_size=cs)
        xi = x.clone().requires_grad_()
        y = m(xi, is_causal=True)
        y.pow(2).sum().backward()
        outs.append((y.detach(), xi.grad))
    for y, gx in outs[1:]:
        assert torch.isfinite(y).all() and torch.isfinite(gx).all()
        assert torch.allclose(y, outs[0][0], rtol=1e-9, atol=1e-9)
        assert torch.allclose(gx, outs[0][1], rtol=1e-7, atol=1e-7)


def test_prefill_in_pieces_and_steps_equal_the_parallel_call_with_a_small_chunk():
    torch.manual_seed(0)
    m = make(chunk_size=4)
    x = 10.0 * torch.randn(2, 23, D, dtype=torch.float64)
    y = m(x, is_causal=True)
    state, outs = m.init_state(2), []
    for a, b in ((0, 9), (9, 10), (10, 23)):
        o, state = m.prefill(x[:, a:b], state)
        outs.append(o)
    assert torch.allclose(torch.cat(outs, 1), y, rtol=1e-9, atol=1e-9)
    state, steps = m.init_state(2), []
    for t in range(23):
        o, state = m.step(x[:, t], state)
        steps.append(o)
    assert torch.allclose(torch.stack(steps, 1), y, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scale", SCALES)
def test_future_keys_never_change_past_outputs_with_a_small_chunk(scale):
    m = make(chunk_size=8)
    check_future_invariance(lambda q, k, v: m.attend(q, k, v, None, True), H, d, torch.float64, scale)
