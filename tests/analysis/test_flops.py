"""FLOP counting: every op of every backend is handled, and counts match hand formulas.

Convention (ea_zoo.analysis.flops): a multiply-add is 2 FLOPs (matmul 2*M*N*K), every
element-wise output element 1 FLOP, reductions 1 per input element, softmax 5 per element.
"""
import pytest
import torch

import ea_zoo
from ea_zoo.analysis.complexity import BackendSpec, Mixer, build_backend, count_step_flops
from ea_zoo.analysis.flops import count_callable_flops, count_flops

ALL_BACKENDS = ea_zoo.list_attentions()  # names and aliases


@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_no_unsupported_ops(name):
    """fvcore meets no op without a handle: forward (causal and not), mixing, decoding step."""
    B, L, D, H = 2, 12, 16, 2
    for causal in (False, True):
        m = build_backend(BackendSpec(name, name), D, H, L, causal, "cpu", torch.float32)
        x = torch.randn(B, L, D)
        r = count_flops(m, (x,))
        assert r.unsupported == {}, f"{name} causal={causal}: {r.unsupported}"
        assert r.total > 0
        with torch.no_grad():
            q, k, v = m.project(x)
        r = count_flops(Mixer(m, causal), (q, k, v))
        assert r.unsupported == {}, f"{name} mixing causal={causal}: {r.unsupported}"
        assert r.total > 0, f"{name}: the mixing must not count as free"
    if m.supports_step:
        m = m.eval()
        with torch.no_grad():
            state = m.init_state(B)
            for t in range(3):
                _, state = m.step(x[:, t], state)
        total, unsupported = count_step_flops(m, x[:, 3], state)
        assert unsupported == {}, f"{name} step: {unsupported}"
        assert total > 0


def test_elementwise_ops_are_counted():
    """Ops fvcore skips by default (exp, mul, cumsum, amax, relu, softmax, ...) count here."""
    x = torch.randn(3, 5, 7)
    n = x.numel()

    def fn(x):
        y = torch.exp(x) * x - x.square() / 2.0  # exp, mul, square, div, sub: 5 n
        y = torch.relu(y).cumsum(-1)  # relu n, cumsum n
        return y.softmax(-1) + y.amax(-1, keepdim=True)  # softmax 5 n, amax n, add n

    r = count_callable_flops(fn, (x,))
    assert r.unsupported == {}
    assert r.total == 5 * n + 2 * n + 5 * n + n + n


def test_matmul_convention():
    a, b = torch.randn(4, 6, 8), torch.randn(4, 8, 5)
    assert count_callable_flops(torch.bmm, (a, b)).total == 2 * 4 * 6 * 8 * 5
    assert count_callable_flops(lambda a, b: torch.einsum("bik,bkj->bij", a, b), (a, b)).total == 2 * 4 * 6 * 8 * 5
    lin = torch.nn.Linear(8, 3)
    assert count_flops(lin, (torch.randn(10, 8),)).total == 2 * 10 * 8 * 3 + 10 * 3


def test_sa_flops_formula():
    """SA layer = qkv projection + SDPA + output projection, counted by hand.

    qkv: 2 B L D (3 D) (no bias); SDPA per batch-head: 2 L^2 d (q k^T) + L^2 (scale) +
    5 L^2 (softmax) + 2 L^2 d (weights x v); proj: 2 B L D D + B L D (bias).
    """
    B, L, D, H = 2, 24, 32, 4
    d = D // H
    m = ea_zoo.create_attention("sa", dim=D, num_heads=H)
    r = count_flops(m, (torch.randn(B, L, D),))
    expected = 2 * B * L * D * 3 * D + B * H * (2 * L * L * d + L * L + 5 * L * L + 2 * L * L * d) \
        + 2 * B * L * D * D + B * L * D
    assert r.unsupported == {}
    assert r.total == expected


@pytest.mark.parametrize("order", [2, 4, 6, 8])
def test_ea_series_flops_formula(order):
    """EA-t layer: projections 8 B L D^2 + B L D, and the mixing of eq. 5 at (8 t + c) N FLOPs,
    N = B L D, with exactly 8 N per Taylor order:

    for each extra order n: the running power k^n e^{-k^2} [v, 1] (2 N mul), its sums over
    L (2 N), and one Horner step in q for the numerator and the denominator together
    (an addcmul, 2 FLOPs, on 2 N elements: 4 N). The order-independent rest c N (k^2, the
    stabiliser and exp(-k^2), the first Horner terms, the guarded division) is between 9 N
    and 14 N.
    """
    B, L, D, H = 2, 24, 32, 4
    N = B * L * D
    proj = 2 * B * L * D * 3 * D + 2 * B * L * D * D + B * L * D

    def flops(t):
        r = count_flops(ea_zoo.create_attention("ea_series", dim=D, num_heads=H, order=t), (torch.randn(B, L, D),))
        assert r.unsupported == {}
        assert r.by_operator["linear"] == proj
        return r.total

    f_t, f_next = flops(order), flops(order + 2)
    assert f_next - f_t == 2 * 8 * N  # exactly 8 N per order
    rest = f_t - proj - 8 * order * N
    assert 9 * N <= rest <= 14 * N, rest / N


def test_sa_flops_quadratic_ea_linear_in_L():
    """The FLOPs of the mixing fitted over a tiny L sweep: SA ~ L^2, EA-series ~ L^1."""
    from ea_zoo.analysis.complexity import SweepConfig, fit_results, run_sweeps

    specs = [BackendSpec("sa", "sa"), BackendSpec("ea6", "ea6"), BackendSpec("la", "la")]
    cfg = SweepConfig(batch=1, heads=2, dim=16, lengths=[32, 64, 128, 256], length=64, dims=[8, 16, 32],
                      orders=[], decode_max_len=0, warmup=0, repeat=1, max_seconds=60, timing=False, decode=False)
    rows = run_sweeps(specs, cfg, quiet=True)
    fits = fit_results(rows, specs)
    assert abs(fits["sa"]["measures"]["flops"]["slope_L"] - 2.0) < 0.05
    assert abs(fits["ea6"]["measures"]["flops"]["slope_L"] - 1.0) < 0.05
    assert abs(fits["la"]["measures"]["flops"]["slope_L"] - 1.0) < 0.05
    assert fits["sa"]["measures"]["flops"]["agree_L"] is True
    assert fits["ea6"]["measures"]["flops"]["agree_L"] is True
    # memory is deterministic too: EA-series linear in L
    assert abs(fits["ea6"]["measures"]["act_bytes"]["slope_L"] - 1.0) < 0.1
