"""Fits, memory measures and report writers (deterministic; no timing assertions)."""
import json
import math

import pytest
import torch

from ea_zoo.analysis import report
from ea_zoo.analysis.fit import linear_fit, loglog_slope, tail_slope
from ea_zoo.analysis.memory import peak_live_bytes, saved_activation_bytes, tensor_bytes, tensor_numel
from ea_zoo.analysis.train_cost import largest_length


def test_loglog_and_tail_slope():
    xs = [16, 32, 64, 128, 256]
    assert loglog_slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)
    # a lower-order term bends the small sizes; the tail fit sees the leading exponent
    ys = [x**2 + 200 * x for x in xs]
    assert tail_slope(xs, ys) > loglog_slope(xs, ys)
    assert tail_slope(xs, [7] * len(xs)) == pytest.approx(0.0)
    assert tail_slope(xs, [0] * len(xs)) == 0.0
    assert loglog_slope([1], [1]) is None


def test_linear_fit():
    f = linear_fit([2, 4, 6, 8], [5, 9, 13, 17])
    assert f["slope"] == pytest.approx(2.0) and f["intercept"] == pytest.approx(1.0) and f["r2"] == pytest.approx(1.0)


def test_saved_activation_bytes_counts_each_storage_once():
    x = torch.randn(100, 50, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(50, 50))

    def fn():
        y = x @ w  # saves x (input, 20000 B) and w (a parameter, excluded)
        return torch.exp(y)  # saves its output (20000 B)

    assert saved_activation_bytes(fn, exclude=[w]) == 2 * 100 * 50 * 4


def test_peak_live_bytes_sees_temporaries():
    x = torch.randn(1000, requires_grad=True)

    def fn():
        y = (x * 2).exp()  # x*2 (4 kB, freed after exp) and exp (4 kB) alive at once: 8 kB
        y.sum().backward()  # gradients: ones (4 kB), grad of x*2 etc.

    peak = peak_live_bytes(fn)
    assert peak >= 8000
    assert peak < 10 * 8000


def test_tensor_bytes_and_numel_of_state():
    s = {"k": torch.zeros(2, 3, 4), "v": torch.zeros(2, 3, 4, dtype=torch.float64), "t": 5, "l": [torch.ones(7)]}
    assert tensor_numel(s) == 24 + 24 + 7
    assert tensor_bytes(s) == 24 * 4 + 24 * 8 + 7 * 4


def test_largest_length_bisection():
    for limit in (17, 64, 100, 1000, 4095):
        calls = []

        def fits(L, limit=limit):
            calls.append(L)
            return L <= limit

        got = largest_length(fits, 16, 4096)
        assert got == (limit // 16 * 16 if limit >= 16 else None)
        assert len(calls) <= 20
        assert largest_length(fits, 16, 4096, guess=512) == got
    assert largest_length(lambda L: False, 16, 4096) is None
    assert largest_length(lambda L: True, 16, 4096) == 4096
    assert largest_length(lambda L: True, 16, 4096, upper=320) == 304


def test_report_writers(tmp_path):
    env = report.environment("cpu", torch.float32)
    for key in ("device_name", "torch", "dtype", "date", "fvcore"):
        assert env[key]
    report.write_json(tmp_path / "a.json", {"x": float("nan"), "d": torch.float32, "env": env})
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["x"] is None and data["d"] == "torch.float32"
    report.write_csv(tmp_path / "a.csv", [{"a": 1, "b": 2.5}, {"a": 2, "c": {"k": 1}}])
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert lines[0] == "a,b,c" and len(lines) == 3
    md = report.markdown_table(["x", "y"], [[1, "a|b"]])
    assert md.splitlines()[2] == "| 1 | a\\|b |"
    assert report.fmt_bytes(3 * 2**20) == "3.0 MiB"
    assert not math.isnan(float(report.fmt_num(12345678).replace("e+", "e")))
