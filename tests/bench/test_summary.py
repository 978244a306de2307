"""ea-zoo which-backend: the table from result files (missing files leave '-')."""
import json

from ea_zoo.cli import main


def test_which_backend_table(tmp_path):
    res = tmp_path / "results"
    (res / "vit_fmnist_cpu").mkdir(parents=True)
    (res / "vit_fmnist_cpu" / "vit_fmnist.json").write_text(json.dumps({"results": [
        {"backend": "sa", "test_acc_mean": 0.88, "test_acc_std": 0.01, "n_seeds": 3, "epoch_s": 10.0,
         "peak_memory_bytes": 2 ** 20},
        {"backend": "ea6", "test_acc_mean": 0.87, "test_acc_std": 0.02, "n_seeds": 3, "epoch_s": 12.0,
         "peak_memory_bytes": 2 ** 21}]}))
    (res / "ablation_table3").mkdir()
    (res / "ablation_table3" / "results.json").write_text(json.dumps({"rows": [
        {"suite": "table3", "cell": "JAP", "backend": "ea6", "metric": "acc", "mean": 0.95, "std": 0.01, "n": 3}]}))
    assert main(["which-backend", "--results", str(res), "--link-root", str(tmp_path)]) == 0
    md = (res / "which_backend.md").read_text()
    assert "**[0.8800 ± 0.0100](results/vit_fmnist_cpu/vit_fmnist.md)**" in md
    assert "[0.950](results/ablation_table3/results.md)" in md
    assert "mqar_cpu/mqar.json" in md  # listed as not available
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert [ln.split(" | ")[0] for ln in lines[1:]] == ["| ea6", "| sa"]
    assert (res / "which_backend.json").is_file() and (res / "which_backend.csv").is_file()
