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


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("module", [complexity, train_cost, infer_cost], ids=lambda m: m.__name__.split(".")[-1])
@pytest.mark.parametrize("argv, match", [
    (["--lengths", "abc"], r"^--lengths 'abc': expected comma-separated positive integers"),
    (["--lengths", "0,16"], r"^--lengths '0,16': expected comma-separated positive integers"),
    (["--dim", "30", "--heads", "4"], r"^--dim 30 --heads 4: the width must be divisible by the number of heads"),
    (["--device", "tpu"], r"^--device 'tpu': valid choices: cpu, cuda, cuda:<index>$"),
    (["--backends", "nosuch"], r"^--backends 'nosuch': unknown attention 'nosuch'; valid names: .*ea6"),
    (["--backends", "sa,ea6+sa@5", "--depth", "2"], r"index 5 is out of range for a model of depth 2"),
])
def test_bad_arguments_are_one_line_value_errors_before_any_work(module, argv, match, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match) as e:
        _run(module, ["--preset", "tiny", "--out", str(out), "--quiet"] + argv)
    assert "\n" not in str(e.value) and not out.exists()


def test_backend_lists_keep_hybrid_labels_whole():
    from ea_zoo.analysis.common import parse_backend, split_backends

    assert split_backends("ea6,sa, ea6+sa@1,3 ,la[math]") == ["ea6", "sa", "ea6+sa@1,3", "la[math]"]
    s = parse_backend("ea6+sa@1,3[math]")
    assert s.hybrid and s.sdpa == "math" and s.min_depth() == 4 and s.label == "ea6+sa@1,3[math]"
    assert [x.label for x in s.layers()] == ["ea6", "sa", "ea6", "sa"]
    s = parse_backend("ea_series:order=4;learn_temperature=true")
    assert s.attention.options == {"order": 4, "learn_temperature": True} and s.base_name == "ea_series"
    with pytest.raises(ValueError, match=r"option causal='no' must be bool"):
        parse_backend("sa:causal=no")


def test_hybrid_is_one_more_backend_in_complexity_and_infer_cost(tmp_path):
    """The decoding state of a hybrid is the sum of its layers' (KV cache in SA layers, fixed
    state elsewhere)."""
    out = tmp_path / "cx"
    rc = _run(complexity, ["--preset", "tiny", "--backends", "ea6,sa,ea6+sa@1", "--lengths", "16,32",
                           "--dims", "8,16", "--orders", "2,4", "--no-time", "--no-plot", "--out", str(out), "--quiet"])
    assert rc == 0
    rows = json.loads((out / "complexity.json").read_text())["results"]
    state = {(r["backend"], r["decode_L"]): r["state_numel"] for r in rows if r.get("sweep") == "L" and "decode_L" in r}
    flops = {(r["backend"], r["L"]): r["flops"] for r in rows if r.get("sweep") == "L"}
    for L in (16, 32):
        assert state[("ea6+sa@1", L)] == state[("ea6", L)] + state[("sa", L)]
        assert flops[("ea6+sa@1", L)] == flops[("ea6", L)] + flops[("sa", L)]
    out = tmp_path / "ic"
    rc = _run(infer_cost, ["--preset", "tiny", "--backends", "ea2,sa,ea2+sa@1", "--depth", "2", "--lengths", "4,8",
                           "--batch-sizes", "1", "--no-plot", "--out", str(out), "--quiet"])
    assert rc == 0
    st = {(r["backend"], r["length"]): r["state_numel_per_seq"] for r in json.loads((out / "infer_cost.json")
                                                                                   .read_text())["results"]}
    for L in (4, 8):  # one layer of each in the hybrid, two of each in the others
        assert 2 * st[("ea2+sa@1", L)] == st[("ea2", L)] + st[("sa", L)]
