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


def test_which_backend_mqar_columns_use_the_trained_segment(tmp_path):
    """The MQAR columns read the accuracy on the trained (length, pairs) segment, at the largest
    finished width, and the smallest state where it reaches the threshold."""
    res = tmp_path / "results"
    (res / "mqar_cpu").mkdir(parents=True)
    best = [
        {"kind": "best", "backend": "sa", "width": 32, "test_acc": 0.5, "test_L64_P4": 0.95, "state_bytes": 2 ** 15},
        {"kind": "best", "backend": "sa", "width": 64, "test_acc": 0.8, "test_L64_P4": 0.99, "state_bytes": 2 ** 16},
        {"kind": "best", "backend": "ea6", "width": 32, "test_acc": 0.1, "test_L64_P4": 0.2, "state_bytes": 2 ** 10},
        {"kind": "best", "backend": "ea6", "width": 64, "test_acc": 0.3, "test_L64_P4": 0.77, "state_bytes": 2 ** 11},
        {"kind": "best", "backend": "la", "width": 128, "status": "not run"},
    ]
    (res / "mqar_cpu" / "mqar.json").write_text(json.dumps({
        "config": {"train": [[64, 4, 100]], "test": [[64, 4, 10], [64, 16, 10]]}, "results": best}))
    assert main(["which-backend", "--results", str(res), "--link-root", str(tmp_path)]) == 0
    md = (res / "which_backend.md").read_text()
    assert "MQAR acc at the trained L64 P4 @ width 64 (state)" in md
    rows = {ln.split(" | ")[0][2:]: ln for ln in md.splitlines() if ln.startswith("| ") and " | " in ln}
    assert "0.990 (64.0 KiB)" in rows["sa"] and "32.0 KiB (w32)" in rows["sa"]
    assert "0.770 (2.0 KiB)" in rows["ea6"] and "not reached" in rows["ea6"]


def test_which_backend_mqar_reads_the_fixed_width_and_marks_a_partial_lr_sweep(tmp_path):
    """A width finished for only some backends does not move the headline column off the report's
    fixed width, and a cell whose lr sweep is not finished says how many lrs it is the best of."""
    res = tmp_path / "results"
    (res / "mqar_cpu").mkdir(parents=True)
    best = [
        {"kind": "best", "backend": "sa", "width": 64, "test_acc": 0.8, "test_L64_P4": 0.99, "state_bytes": 2 ** 16,
         "lrs_done": 3, "lrs": 3},
        {"kind": "best", "backend": "ea6", "width": 64, "test_acc": 0.3, "test_L64_P4": 0.77, "state_bytes": 2 ** 11,
         "lrs_done": 1, "lrs": 3},
        {"kind": "best", "backend": "sa", "width": 128, "test_acc": 0.9, "test_L64_P4": 1.0, "state_bytes": 2 ** 17,
         "lrs_done": 1, "lrs": 3},
    ]
    (res / "mqar_cpu" / "mqar.json").write_text(json.dumps({
        "config": {"train": [[64, 4, 100]], "test": [[64, 4, 10]], "fixed_width": 64}, "results": best}))
    assert main(["which-backend", "--results", str(res), "--link-root", str(tmp_path)]) == 0
    md = (res / "which_backend.md").read_text()
    assert "MQAR acc at the trained L64 P4 @ width 64 (state)" in md
    rows = {ln.split(" | ")[0][2:]: ln for ln in md.splitlines() if ln.startswith("| ") and " | " in ln}
    assert "0.990 (64.0 KiB)" in rows["sa"] and "64.0 KiB (w64)" in rows["sa"]
    assert "0.770 (2.0 KiB; 1/3 lrs)" in rows["ea6"]


def test_which_backend_reads_the_longer_vit_run_as_its_own_column(tmp_path):
    """The 10-epoch ViT report is a second accuracy column headed with its epochs (a single
    seed marked); time and memory come from the preset's report only."""
    res = tmp_path / "results"
    for folder, epochs, rows in [
        ("vit_fmnist_cpu", 2, [{"backend": "sa", "test_acc_mean": 0.85, "test_acc_std": 0.001, "n_seeds": 3,
                                "epoch_s": 30.0, "peak_memory_bytes": 2 ** 20}]),
        ("vit_fmnist_cpu_10ep", 10, [{"backend": "sa", "test_acc_mean": 0.8871, "test_acc_std": None, "n_seeds": 1,
                                      "epoch_s": 99.0},
                                     {"backend": "ea6", "test_acc_mean": 0.8975, "test_acc_std": 0.002,
                                      "n_seeds": 3}])]:
        (res / folder).mkdir(parents=True)
        (res / folder / "vit_fmnist.json").write_text(json.dumps({"config": {"epochs": epochs}, "results": rows}))
    assert main(["which-backend", "--results", str(res), "--link-root", str(tmp_path)]) == 0
    md = (res / "which_backend.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| backend"))
    assert "Fashion-MNIST ViT test acc, 2 epochs" in header and "Fashion-MNIST ViT test acc, 10 epochs" in header
    rows = {ln.split(" | ")[0][2:]: ln for ln in md.splitlines() if ln.startswith("| ") and " | " in ln}
    assert "[0.8871 (1 seed)](results/vit_fmnist_cpu_10ep/vit_fmnist.md)" in rows["sa"]
    assert "**[0.8975 ± 0.0020](results/vit_fmnist_cpu_10ep/vit_fmnist.md)**" in rows["ea6"]
    assert "[30.0](results/vit_fmnist_cpu/vit_fmnist.md)" in rows["sa"] and "99.0" not in md
