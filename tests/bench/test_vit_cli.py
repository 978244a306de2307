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
