"""The three cost tools and the demo run end to end at tiny sizes and write their files."""
import argparse
import json

import pytest

from ea_zoo.analysis import complexity, infer_cost, train_cost


def _run(module, argv):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return module.run(p.parse_args(argv))


def _check_outputs(out, stem, pngs):
    data = json.loads((out / f"{stem}.json").read_text())
    env = data["environment"]
    for key in ("device", "device_name", "torch", "dtype", "date"):
        assert env.get(key), key
    assert (out / f"{stem}.csv").read_text().count("\n") >= 2
    assert (out / f"{stem}.md").read_text().startswith("# ")
    for png in pngs:
        assert (out / png).stat().st_size > 1000
    return data


def test_complexity_tiny(tmp_path, capsys):
    out = tmp_path / "cx"
    rc = _run(complexity, ["--preset", "tiny", "--backends", "sa,sa[math],la,aft_simple,ea,ea2,ea6",
                           "--out", str(out), "--quiet"])
    assert rc == 0
    data = _check_outputs(out, "complexity", ["complexity.png", "complexity_t.png"])
    assert data["unsupported_ops"] == []
    assert data["fits"]["ea6"]["measures"]["flops"]["agree_L"] is True
    assert data["fits"]["sa"]["measures"]["flops"]["agree_L"] is True
    assert data["order_fit"]["flops"]["linear_in_t"] is True
    assert data["order_fit"]["state_numel"]["linear_in_t"] is True
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "EA-series" in printed


def test_complexity_default_backends_cover_every_backend():
    import ea_zoo

    labels = {s.base_name for s in complexity.default_backends()}
    assert labels == set(ea_zoo.list_attentions(include_aliases=False))


def test_train_cost_tiny(tmp_path):
    out = tmp_path / "tc"
    rc = _run(train_cost, ["--preset", "tiny", "--backends", "sa,ea2", "--out", str(out), "--quiet"])
    assert rc == 0
    data = _check_outputs(out, "train_cost", ["train_cost.png"])
    mem = {(r["backend"], r["L"]): r["memory_bytes"] for r in data["memory"]}
    assert all(v and v > 0 for v in mem.values())
    assert mem[("ea2", 128)] > mem[("ea2", 32)]
    curve = [r for r in data["bs_l_curve"] if r["backend"] == "ea2"]
    lens = [r["max_L"] for r in sorted(curve, key=lambda r: r["batch_size"])]
    assert all(L is not None for L in lens) and lens == sorted(lens, reverse=True)


def test_infer_cost_tiny(tmp_path):
    out = tmp_path / "ic"
    rc = _run(infer_cost, ["--preset", "tiny", "--backends", "sa,ea2,la", "--out", str(out), "--quiet"])
    assert rc == 0
    data = _check_outputs(out, "infer_cost", ["infer_cost.png"])
    state = {(r["backend"], r["batch_size"], r["length"]): r["state_bytes"] for r in data["results"]}
    assert state[("sa", 1, 32)] > state[("sa", 1, 8)]  # the KV cache grows with L
    assert state[("ea2", 1, 32)] == state[("ea2", 1, 8)]  # the EA-series state does not
    assert state[("la", 2, 32)] == state[("la", 2, 8)]


def test_demo_tiny(tmp_path):
    from ea_zoo import demo

    out = tmp_path / "demo"
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    args = p.parse_args(["--preset", "tiny", "--out", str(out), "--quiet", "--lengths", "8"])
    assert demo.run(args) == 0
    data = json.loads((out / "demo.json").read_text())
    import ea_zoo

    assert {r["backend"] for r in data["backend_check"]} == set(ea_zoo.list_attentions())
    assert all(r["finite"] for r in data["backend_check"])
    assert all(r["out_err"] < 1e-3 for r in data["backend_check"])
    assert (out / "complexity" / "complexity.json").exists()
