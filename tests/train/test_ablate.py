"""The resumable ablation grid on a 2-run toy grid (JAP x {sa, ea2} x 1 seed), plus a missing-data cell."""
import csv
import json

import pytest

from ea_zoo.data.paths import data_root
from ea_zoo.train.ablate import SUITES, collect, run_grid, write_report

ROOT = data_root()

#: overrides that make any experiment a seconds-long smoke run
TINY = [
    "threads=1", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
    "model.embed_dim=16", "model.depth=1", "model.num_heads=2",
]


def _requires(*rel):
    return pytest.mark.skipif(not all((ROOT / r).is_file() for r in rel), reason=f"{', '.join(rel)} not under {ROOT}")


requires_jap = _requires("UEA/JapaneseVowels/JapaneseVowels_TRAIN.ts", "UEA/JapaneseVowels/JapaneseVowels_TEST.ts")


@requires_jap
def test_toy_grid_is_resumable_and_reports(tmp_path):
    suite = SUITES["table3"]
    runs = tmp_path / "runs"
    status = run_grid(suite, ["sa", "ea2"], [0], runs, cells=["JAP", "SCP2"], overrides=TINY)
    assert sorted(status["ran"]) == [("JAP", "ea2", 0), ("JAP", "sa", 0)]
    assert len(status["missing"]) == 2 and not status["failed"]  # SCP2 is not staged: not a failure
    assert (runs / "JAP" / "sa" / "seed0" / "results.json").is_file()
    # second call: everything finished is skipped (resumable)
    again = run_grid(suite, ["sa", "ea2"], [0], runs, cells=["JAP"], overrides=TINY)
    assert again["ran"] == [] and len(again["skipped"]) == 2

    stats = collect(suite, ["sa", "ea2"], [0], runs, cells=["JAP", "SCP2"])
    paths = write_report(stats, suite, tmp_path / "out", budget="toy")
    md = paths["md"].read_text()
    assert "(paper 0.97)" in md and "(paper 0.957)" in md and "data not present" in md and "Budget: toy" in md
    rows = list(csv.DictReader(open(paths["csv"])))
    jap_sa = [r for r in rows if r["cell"] == "JAP" and r["backend"] == "sa"][0]
    assert jap_sa["n"] == "1" and jap_sa["paper"] == "0.97" and jap_sa["status"] == "ok"
    assert [r["status"] for r in rows if r["cell"] == "SCP2"] == ["data not present"] * 2
    assert len(json.loads(paths["json"].read_text())["runs"]) == 2
    assert paths["png"].stat().st_size > 1000


def test_cli_lists_runs(tmp_path, capsys):
    from ea_zoo.cli import main

    rc = main(["ablate", "--suite", "table4", "--cells", "ETTh2-6", "--backends", "sa,ea6", "--seeds", "2",
               "--runs-dir", str(tmp_path), "--dry-run"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("would run ETTh2-6") == 4
    assert main(["ablate", "--suite", "table3", "--backends", "nope", "--dry-run"]) == 2
