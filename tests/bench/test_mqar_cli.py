"""ea-zoo mqar end to end at the smoke preset: outputs, config-keyed resume."""
import json

from ea_zoo.cli import main


def test_mqar_smoke_writes_outputs_and_resumes(tmp_path, capsys):
    out = tmp_path / "mqar"
    args = ["mqar", "--preset", "smoke", "--backends", "sa,ea6", "--out", str(out), "--quiet", "--no-plot"]
    assert main(args[:-1]) == 0
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"mqar.{ext}").is_file()
    d = json.loads((out / "mqar.json").read_text())
    assert "git_commit" in d["environment"]
    assert "Test accuracy, per width (decode state, best lr)" in (out / "mqar.md").read_text()
    best = [r for r in d["results"] if r["kind"] == "best"]
    assert {r["backend"] for r in best} == {"sa", "ea6"}
    assert all(0.0 <= r["test_acc"] <= 1.0 and r["state_bytes"] > 0 for r in best)
    sa, ea6 = (next(r for r in best if r["backend"] == b) for b in ("sa", "ea6"))
    assert sa["state_bytes"] > ea6["state_bytes"]  # KV cache vs fixed state at this size
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 2
    res = json.loads(next((out / "runs").glob("sa_*/result.json")).read_text())
    for key in ("final_train_loss", "wall_s", "device", "torch", "timm", "date", "git_commit", "config_hash"):
        assert key in res
    capsys.readouterr()
    # resume: nothing reruns; a changed setting is a new run
    assert main(args) == 0
    assert "to run" not in capsys.readouterr().out
    assert main(args + ["--steps", "6"]) == 0
    assert len(list((out / "runs").iterdir())) == 4


def testheadline_metric_accuracy_is_the_trained_segment_when_it_is_tested():
    """Trained on one (length, pairs) segment that is also tested (the cpu preset): the headline is
    the accuracy there; trained on a mixture (smoke): over the whole test set."""
    from ea_zoo.bench.mqar import PRESETS, headline_metric

    assert headline_metric(PRESETS["cpu"]) == ("test_L64_P4", "test accuracy at the trained L64 P4")
    assert headline_metric(PRESETS["smoke"]) == ("test_acc", "test accuracy")


def test_restore_from_a_committed_report_needs_no_rerun_and_matches_only_identical_configs(tmp_path, capsys):
    out = tmp_path / "mqar"
    base = ["mqar", "--preset", "smoke", "--backends", "sa,ea6", "--quiet", "--no-plot"]
    assert main(base + ["--out", str(out)]) == 0
    committed = json.loads((out / "mqar.json").read_text())
    runs_before = [r for r in committed["results"] if r["kind"] == "run"]
    assert all(r["config_hash"] for r in runs_before)
    capsys.readouterr()
    # a fresh clone: only the report; both runs are restored, none reruns, the report is unchanged
    fresh = tmp_path / "fresh"
    assert main(base + ["--out", str(fresh), "--restore-from", str(out / "mqar.json")]) == 0
    log = capsys.readouterr().out
    assert "restored 2 finished runs" in log and "to run" not in log
    again = [r for r in json.loads((fresh / "mqar.json").read_text())["results"] if r["kind"] == "run"]
    assert [(r["backend"], r["test_acc"], r["config_hash"]) for r in again] == \
        [(r["backend"], r["test_acc"], r["config_hash"]) for r in runs_before]
    # a report written before rows carried their hash: matched through its preset block
    legacy = dict(committed, results=[{k: v for k, v in r.items() if k != "config_hash"} for r in committed["results"]])
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    assert main(base + ["--out", str(tmp_path / "l"), "--restore-from", str(tmp_path / "legacy.json")]) == 0
    assert "restored 2 finished runs" in capsys.readouterr().out
    # another budget is another config: nothing is restored, both train
    assert main(base + ["--steps", "6", "--out", str(tmp_path / "s"), "--restore-from", str(tmp_path / "legacy.json")]) == 0
    log = capsys.readouterr().out
    assert "restored 0 finished runs" in log and "2 to run" in log


def test_restore_from_another_tools_report_is_one_line(tmp_path, capsys):
    (tmp_path / "vit.json").write_text(json.dumps({"tool": "ea-zoo bench-vit", "results": []}))
    rc = main(["mqar", "--preset", "smoke", "--backends", "sa", "--out", str(tmp_path / "o"), "--dry-run",
               "--restore-from", str(tmp_path / "vit.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "not a mqar report" in err and "bench-vit" in err and "Traceback" not in err


def test_cpu_impl_is_recorded_not_keyed_and_named_in_the_report(tmp_path, capsys):
    """--cpu-impl compiled changes how full EA executes, not what a run computes: the run is
    stored under the same key (a rerun without the flag trains nothing), its result says
    which path ran, and the report names it. A bad value is one argparse error."""
    import pytest

    out = tmp_path / "m"
    base = ["mqar", "--preset", "smoke", "--backends", "sa", "--out", str(out), "--quiet", "--no-plot"]
    assert main(base + ["--cpu-impl", "compiled"]) == 0
    res = json.loads(next((out / "runs").glob("sa_*/result.json")).read_text())
    assert res["cpu_impl"] == "compiled"
    assert "Run with `--cpu-impl compiled`" in (out / "mqar.md").read_text()
    capsys.readouterr()
    assert main(base) == 0
    assert "to run" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(base + ["--cpu-impl", "fast"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'fast'" in err and "reference" in err and "compiled" in err
