"""Fused EA-series decoding step (ea_zoo.kernels.decode) against the reference step."""
import pytest
import torch

from ea_zoo.functional import ea_series, ea_series_init_state, ea_series_step
from ea_zoo.functional.ea_series import _step_reference


def clone_state(st):
    return {k: v.clone() for k, v in st.items()}


@pytest.mark.parametrize("order", [2, 6, 8])
def test_step_matches_reference_step(order, device):
    from ea_zoo.kernels.decode import ea_series_decode_step

    B, H, d, T = 2, 3, 5, 9
    # keys shrink over time so the running min drops and the state is rescaled
    k = torch.linspace(9.8, 0.2, T).view(T, 1, 1, 1) * torch.sign(torch.randn(T, B, H, d))
    k = k + 0.05 * torch.randn(T, B, H, d)
    q = torch.randn(T, B, H, d) * 0.5
    v = torch.randn(T, B, H, d)
    st_ref = ea_series_init_state((B, H, d), order)
    st_k = {n: t.to(device) for n, t in ea_series_init_state((B, H, d), order).items()}
    for t in range(T):
        y_ref, st_ref = _step_reference(q[t], k[t], v[t], st_ref, order=order)
        s_before = st_k["s"]
        y_k, st_k = ea_series_decode_step(q[t].to(device), k[t].to(device), v[t].to(device), st_k, order)
        assert st_k["s"] is s_before  # updated in place
        torch.testing.assert_close(y_k.cpu(), y_ref, rtol=1e-5, atol=1e-6)
        for name in ("s", "z", "ref"):
            torch.testing.assert_close(st_k[name].cpu(), st_ref[name], rtol=1e-5, atol=1e-30)


def test_decoding_equals_the_causal_sequence(device):
    B, L, D = 2, 12, 6
    q, k, v = (torch.randn(B, L, D, device=device) * 0.6 for _ in range(3))
    full = ea_series(q, k, v, order=4, causal=True, impl="triton")
    state = {n: t.to(device) for n, t in ea_series_init_state((B, D), 4).items()}
    for t in range(L):
        y, state = ea_series_step(q[:, t], k[:, t], v[:, t], state, order=4, impl="triton")
        torch.testing.assert_close(y, full[:, t], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_float32_state(dtype, device):
    from ea_zoo.kernels.decode import ea_series_decode_step

    q, k, v = (torch.randn(3, 4, 7).to(device, dtype) for _ in range(3))
    st = {n: t.to(device) for n, t in ea_series_init_state((3, 4, 7), 6).items()}
    st_ref = clone_state(st)
    y, st = ea_series_decode_step(q, k, v, st, 6)
    y_ref, st_ref = _step_reference(q, k, v, st_ref, order=6)
    assert y.dtype == dtype
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(st["s"], st_ref["s"])


def test_step_dispatch(device, monkeypatch):
    q, k, v = (torch.randn(2, 4, device=device) for _ in range(3))
    st = {n: t.to(device) for n, t in ea_series_init_state((2, 4), 2).items()}
    s0 = st["s"]
    y, new = ea_series_step(q, k, v, st, order=2, impl="triton")
    assert new["s"] is s0 and (s0 != 0).any()  # the kernel updates in place

    from ea_zoo.kernels import _triton_utils

    def boom(self, grid):
        raise AssertionError("a kernel was launched")

    monkeypatch.setattr(_triton_utils.LazyKernel, "__getitem__", boom)
    qc, kc, vc = (t.cpu() for t in (q, k, v))
    stc = ea_series_init_state((2, 4), 2)
    y, new = ea_series_step(qc, kc, vc, stc, order=2)  # auto on CPU: reference, new tensors
    assert new["s"] is not stc["s"] and (stc["s"] == 0).all()
    st64 = ea_series_init_state((2, 4), 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        ea_series_step(qc, kc, vc, st64, order=2, impl="triton")
    with pytest.raises(ValueError, match="odd"):
        ea_series_step(qc, kc, vc, ea_series_init_state((2, 4), 3), order=3, impl="triton")
    with pytest.raises(ValueError, match="no backward"):
        ea_series_step(qc.requires_grad_(), kc, vc, stc, order=2, impl="triton")
    with pytest.raises(ValueError, match="share a shape"):
        ea_series_step(qc[:, :3], kc[:, :3], vc[:, :3], stc, order=2, impl="triton")
    with pytest.raises(ValueError, match="order=6"):
        ea_series_step(qc, kc, vc, stc, order=6, impl="triton")


def test_custom_op_registration(device):
    from ea_zoo.kernels import decode as kd

    q, k, v = (torch.randn(2, 3, device=device) for _ in range(3))
    st = {n: t.to(device) for n, t in ea_series_init_state((2, 3), 2).items()}
    torch.library.opcheck(kd._decode_op, (q, k, v, st["s"], st["z"], st["ref"], 2),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("scale, offset", [(1.0, 0.0), (3.0, 10.0)])
def test_decoding_continues_the_parallel_final_state(scale, offset, device):
    """The parallel kernel's final state has the fused step's layout: a prefix through
    ea_series_triton(..., output_final_state=True), then decoding steps, equals the whole
    sequence (float64 naive form); offsets make the running min drop during decoding."""
    from ea_zoo.functional.ea_series_naive import ea_series_naive
    from ea_zoo.kernels.decode import ea_series_decode_step
    from ea_zoo.kernels.ea_series import ea_series_triton

    B, H, L, L0, d = 2, 2, 11, 6, 3
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, L, d, generator=g) * scale
    k = torch.randn(B, H, L, d, generator=g) * scale + offset
    k[:, :, L0 + 2] = 0.05  # a dominant key during decoding
    v = torch.randn(B, H, L, d, generator=g) * scale
    y_ref = ea_series_naive(q.double(), k.double(), v.double(), order=6, causal=True)
    q, k, v = q.to(device), k.to(device), v.to(device)
    y0, st = ea_series_triton(q[:, :, :L0], k[:, :, :L0], v[:, :, :L0], order=6, causal=True,
                              output_final_state=True, block_l=4, block_c=2, n_split=2)
    ys = [y0]
    for t in range(L0, L):
        y, st = ea_series_decode_step(q[:, :, t], k[:, :, t], v[:, :, t], st, 6)
        ys.append(y[:, :, None])
    y = torch.cat(ys, dim=2).cpu().double()
    assert ((y - y_ref).abs().max() / y_ref.abs().max()).item() < 1e-5
