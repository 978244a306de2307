"""ea-zoo bench-vit end to end at the smoke preset on a tiny fake Fashion-MNIST."""
import json

from ea_zoo.cli import main


def test_bench_vit_smoke(tmp_path, fake_fmnist_root):
    out = tmp_path / "vit"
    base = ["bench-vit", "--preset", "smoke", "--backends", "sa,aft_full", "--out", str(out), "--quiet",
            "--data-root", str(fake_fmnist_root)]
    assert main(base) == 0
    assert main(base + ["--timing-only", "--no-plot"]) == 0
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"vit_fmnist.{ext}").is_file()
    rows = json.loads((out / "vit_fmnist.json").read_text())["results"]
    assert [r["backend"] for r in rows] == ["sa", "aft_full"]
    for r in rows:
        assert 0.0 <= r["test_acc_mean"] <= 1.0 and r["n_seeds"] == 1
        assert r["epoch_s"] > 0 and r["peak_memory_bytes"] > 0
    assert "| sa |" in (out / "vit_fmnist.md").read_text()


def test_bench_vit_restores_training_and_timing_runs_from_its_report(tmp_path, fake_fmnist_root, capsys):
    base = ["bench-vit", "--preset", "smoke", "--backends", "sa", "--quiet", "--no-plot",
            "--data-root", str(fake_fmnist_root)]
    out = tmp_path / "vit"
    assert main(base + ["--out", str(out)]) == 0 and main(base + ["--out", str(out), "--timing-only"]) == 0
    before = json.loads((out / "vit_fmnist.json").read_text())
    assert [r["label"] for r in before["runs"]] == ["sa_s0", "timing_sa"]
    capsys.readouterr()
    fresh = tmp_path / "fresh"
    assert main(base + ["--out", str(fresh), "--restore-from", str(out)]) == 0
    log = capsys.readouterr().out
    assert "restored 2 finished runs" in log and "to run" not in log
    after = json.loads((fresh / "vit_fmnist.json").read_text())
    assert after["results"] == before["results"]


def test_bench_vit_records_the_learning_curve_per_epoch(tmp_path, fake_fmnist_root):
    """Every run stores its validation accuracy after each epoch; the report has one
    learning-curve row per backend (mean over seeds) with one column per epoch, and the last
    epoch's value is the run's final validation accuracy."""
    out = tmp_path / "vit"
    assert main(["bench-vit", "--preset", "smoke", "--backends", "sa", "--epochs", "3", "--seeds", "2",
                 "--out", str(out), "--quiet", "--no-plot", "--data-root", str(fake_fmnist_root)]) == 0
    res = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("sa_*/result.json"))]
    assert len(res) == 2
    for r in res:
        assert len(r["epoch_val_acc"]) == 3 and all(0.0 <= a <= 1.0 for a in r["epoch_val_acc"])
        assert r["epoch_val_acc"][-1] == r["val_acc"]
    row = json.loads((out / "vit_fmnist.json").read_text())["results"][0]
    assert row["epoch_val_acc_mean"] == [sum(v) / 2 for v in zip(*(r["epoch_val_acc"] for r in res))]
    md = (out / "vit_fmnist.md").read_text()
    assert "## Learning curves" in md and "| backend | epoch 1 | epoch 2 | epoch 3 |" in md


def test_curve_table_skips_runs_without_a_curve():
    from ea_zoo.bench.vit_fmnist import _mean_curve, curve_table

    assert _mean_curve([[0.5, 0.7], None]) is None and _mean_curve([[0.5, 0.7], [0.7, 0.9]]) == [0.6, 0.8]
    assert curve_table([{"backend": "sa", "epoch_val_acc_mean": None}]) is None
    t = curve_table([{"backend": "sa", "epoch_val_acc_mean": [0.5, 0.75], "epoch_train_loss_mean": [1.0, 0.5]},
                     {"backend": "la", "epoch_val_acc_mean": None}])
    assert "| sa | 0.5000 (1.000) | 0.7500 (0.500) |" in t and "| la |" not in t
