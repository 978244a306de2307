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
