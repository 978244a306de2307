"""``ea-zoo ablate`` on tiny synthetic data: any dataset, honest labels, runs keyed by config, reports."""
import csv
import json
from pathlib import Path

import pytest

from ea_zoo.cli import main
from ea_zoo.data.paths import data_root

ROOT = data_root()
requires_jap = pytest.mark.skipif(
    not all((ROOT / "UEA" / "JapaneseVowels" / f"JapaneseVowels_{s}.ts").is_file() for s in ("TRAIN", "TEST")),
    reason=f"JapaneseVowels not under {ROOT}")


def _ablate(capsys, *args):
    rc = main(["ablate", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _report(out):
    md = (out / "results.md").read_text()
    rows = list(csv.DictReader(open(out / "results.csv")))
    js = json.loads((out / "results.json").read_text())
    return md, rows, js


def test_any_uea_archive_by_name_columns_titled_by_dataset(tmp_path, toy_root, capsys, tiny):
    out, runs = tmp_path / "out", tmp_path / "runs"
    rc, log, err = _ablate(capsys, "--datasets", "ToyGestures", "--backends", "sa,ea2", "--seeds", "2",
                           "--compare", "ea2:sa", "--runs-dir", str(runs), "--out", str(out), "--no-plot",
                           f"data.root={toy_root}", *tiny)
    assert rc == 0, err
    md, rows, js = _report(out)
    assert "| backend | ToyGestures |" in md and "JAP" not in md and "(paper" not in md
    assert {r["dataset"] for r in rows} == {"ToyGestures"}
    assert all(r["paper"] == "" and r["n"] == "2" and r["config_hash"] for r in rows)
    assert [c["cell"] for c in js["cells"]] == ["ToyGestures"]
    # every run records its fit, best epoch, steps, wall time and the machine
    run0 = js["runs"][0]
    assert set(run0["train"]) >= {"loss", "acc"} and run0["best_epoch"] is not None and run0["steps"] >= 2
    assert run0["wall_seconds"] > 0 and run0["machine"]["cpu_count"] and run0["machine"]["torch"]
    # the paired verdict per cell
    v = {(x["cell"], x["metric"]): x for x in js["verdicts"]}
    assert v[("ToyGestures", "acc")]["n"] == 2 and v[("ToyGestures", "acc")]["verdict"] in ("ahead", "tied", "behind")
    assert "Is ea2 >= sa?" in md and "95% interval" in md
    # second call: everything is found in the store, nothing retrains
    rc, log, _ = _ablate(capsys, "--datasets", "ToyGestures", "--backends", "sa,ea2", "--seeds", "2",
                         "--runs-dir", str(runs), "--out", str(out), "--no-plot", f"data.root={toy_root}", *tiny)
    assert rc == 0 and "ran 0, skipped 4" in log


def test_changed_budget_is_a_new_run_not_a_stale_result(tmp_path, toy_root, capsys, tiny):
    common = ["--datasets", "ToyGestures", "--backends", "sa", "--seeds", "1", "--runs-dir", str(tmp_path / "runs"),
              "--out", str(tmp_path / "out"), "--no-plot", f"data.root={toy_root}", *tiny]
    rc, log, _ = _ablate(capsys, *common, "trainer.max_steps=2")
    assert rc == 0 and "ran 1" in log
    rc, log, _ = _ablate(capsys, *common, "trainer.max_steps=6")
    assert rc == 0 and "ran 1, skipped 0" in log  # the smoke run is not reported for the real one
    md, rows, js = _report(tmp_path / "out")
    assert [r["steps"] for r in js["runs"]] == [6]
    assert "trainer.max_steps=6" in md and len(list((tmp_path / "runs").iterdir())) == 2


def test_suite_cell_with_another_dataset_is_labelled_by_it_and_outputs_go_under_runs(tmp_path, toy_root, capsys,
                                                                                    monkeypatch, tiny):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _ablate(capsys, "--suite", "table3", "--cells", "JAP", "--backends", "sa", "--seeds", "1",
                         f"data.root={toy_root}", "data.dataset=ToyGestures", *tiny)
    assert rc == 0, err
    out = tmp_path / "runs" / "ablate" / "report_table3"  # the default: under runs/ of the working directory
    assert (out / "results.png").is_file() and not (tmp_path / "benchmarks").exists()
    md, rows, js = _report(out)
    assert "ToyGestures" in md and "JapaneseVowels" not in md and "(paper" not in md
    assert rows[0]["dataset"] == "ToyGestures" and rows[0]["paper"] == ""
    assert js["cells"][0]["paper"] is None


def test_any_csv_by_path_both_protocols_parallel_jobs(tmp_path, toy_root, capsys, tiny):
    csv_path = toy_root / "toy.csv"
    rc, log, err = _ablate(capsys, "--datasets", str(csv_path), "--horizons", "3", "--backends", "sa", "--seeds", "1",
                           "--protocols", "val,test", "--jobs", "2", "--runs-dir", str(tmp_path / "runs"),
                           "--out", str(tmp_path / "out"), "--no-plot", *tiny, "trainer.val_check_interval=2")
    assert rc == 0, err + log
    assert "2 at a time" in log
    md, rows, js = _report(tmp_path / "out")
    assert "toy-3 MAE" in md and "(paper" not in md and {r["dataset"] for r in rows} == {str(csv_path)}
    assert {r["protocol"] for r in rows} == {"val", "test"} and "P2 test-selected" in md
    cfgs = {r["protocol"]: json.loads((Path(r["dir"]) / "config.json").read_text()) for r in js["runs"]}
    assert cfgs["test"]["data"]["val_source"] == "test" and cfgs["val"]["data"]["val_source"] == "val"
    assert all((Path(r["dir"]) / "train.log").is_file() for r in js["runs"])


def test_uea_protocols_set_the_validation_source(tmp_path, capsys):
    from ea_zoo.train.ablate import Group, plan_runs, resolve_datasets

    plan = plan_runs(resolve_datasets(["JAP", "ToyGestures"]), [Group(["sa"], [0, 1], ["val", "test"])])
    assert len(plan) == 8 and {p.cell for p in plan} == {"JapaneseVowels", "ToyGestures"}
    test = [p for p in plan if p.protocol == "test"][0].cfg
    assert test["data"]["val_source"] == "test" and test["checkpoint"]["monitor"] == "val/acc"
    assert len({p.hash for p in plan}) == 8 and len({p.group_hash for p in plan}) == 4


def test_user_errors_are_one_line(tmp_path, capsys):
    for args, part in ((["--suite", "table3", "--cells", "NOPE"], "'NOPE'"),
                       (["--datasets", "JAP", "--backends", "nosuch"], "'nosuch'"),
                       (["--datasets", "JAP", "--protocols", "tsl"], "'tsl'"),
                       (["--datasets", "JAP", "--horizons", "abc"], "'abc'")):
        rc, out, err = _ablate(capsys, *args, "--runs-dir", str(tmp_path), "--dry-run")
        assert rc == 2 and part in err and "valid" in err.lower() or "integers" in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_dry_run_lists_the_plan(tmp_path, capsys):
    rc, out, _ = _ablate(capsys, "--suite", "table4", "--cells", "ETTh2-6", "--backends", "sa,ea6", "--seeds", "2",
                         "--runs-dir", str(tmp_path), "--dry-run")
    assert rc == 0 and out.count("would run ETTh2-6-val-") == 4


@requires_jap
def test_paper_cells_get_the_paper_numbers_and_missing_data_is_reported(tmp_path, capsys, tiny):
    from ea_zoo.train.ablate import SUITES, collect, run_grid, write_report

    suite, runs = SUITES["table3"], tmp_path / "runs"
    status = run_grid(suite, ["sa", "ea2"], [0], runs, cells=["JAP", "SCP2"], overrides=tiny)
    assert sorted(status["ran"]) == [("JapaneseVowels", "val", "ea2", 0), ("JapaneseVowels", "val", "sa", 0)]
    assert len(status["missing"]) == 2 and not status["failed"]  # SCP2 is not staged: not a failure
    again = run_grid(suite, ["sa", "ea2"], [0], runs, cells=["JAP"], overrides=tiny)
    assert again["ran"] == [] and len(again["skipped"]) == 2
    stats = collect(suite, ["sa", "ea2"], [0], runs, cells=["JAP", "SCP2"], overrides=tiny)
    paths = write_report(stats, suite, tmp_path / "out", budget="toy")
    md = paths["md"].read_text()
    assert "(paper 0.97)" in md and "(paper 0.957)" in md and "data not present" in md and "Note: toy" in md
    rows = list(csv.DictReader(open(paths["csv"])))
    jap_sa = [r for r in rows if r["dataset"] == "JapaneseVowels" and r["backend"] == "sa"][0]
    assert jap_sa["n"] == "1" and jap_sa["paper"] == "0.97" and jap_sa["status"] == "ok"
    assert [r["status"] for r in rows if r["dataset"] == "SelfRegulationSCP2"] == ["data not present"] * 2
    assert paths["png"].stat().st_size > 1000


def test_restore_from_a_committed_report_extends_a_grid_on_a_fresh_store(tmp_path, toy_root, capsys, tiny):
    common = ["--datasets", "ToyGestures", "--backends", "sa,ea2", "--seeds", "1", "--no-plot",
              f"data.root={toy_root}", *tiny]
    first = tmp_path / "first"
    rc, log, err = _ablate(capsys, *common, "--runs-dir", str(first / "runs"), "--out", str(first / "out"))
    assert rc == 0 and "ran 2" in log, err
    committed = first / "out" / "results.json"
    _, rows_before, js_before = _report(first / "out")
    # a fresh clone: no run store; the report alone restores both runs, nothing retrains
    fresh = tmp_path / "fresh"
    rc, log, err = _ablate(capsys, *common, "--backends", "sa,ea2,la", "--runs-dir", str(fresh / "runs"),
                           "--out", str(fresh / "out"), "--restore-from", str(committed))
    assert rc == 0, err
    assert "restored 2 finished runs" in log and "ran 1, skipped 2" in log  # only the new backend trains
    _, rows, js = _report(fresh / "out")
    by = {(r["backend"], r["metric"]): r for r in rows}
    for r in rows_before:
        assert by[(r["backend"], r["metric"])]["values"] == r["values"]
    restored = [r for r in js["runs"] if r.get("restored_from")]
    assert sorted(r["backend"] for r in restored) == ["ea2", "sa"]
    assert {r["config_hash"] for r in restored} == {r["config_hash"] for r in js_before["runs"]}
    # a changed config does not match the committed hashes: it trains instead of being restored
    rc, log, _ = _ablate(capsys, *common, "trainer.max_steps=6", "--runs-dir", str(tmp_path / "other"),
                         "--out", str(tmp_path / "other_out"), "--restore-from", str(committed))
    assert rc == 0 and "restored 0 finished runs" in log and "ran 2" in log


def test_restore_from_a_bad_file_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.json").write_text('{"title": "not a report"}')
    (tmp_path / "broken.json").write_text("{")
    for path, part in ((tmp_path / "nosuch.json", "cannot read"), (tmp_path / "notes.json", "not an ablation report"),
                       (tmp_path / "broken.json", "not JSON")):
        rc, out, err = _ablate(capsys, "--datasets", "JAP", "--backends", "sa", "--runs-dir", str(tmp_path / "r"),
                               "--restore-from", str(path), "--dry-run")
        assert rc == 2 and str(path) in err and part in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_report_table_shows_no_std_for_a_single_seed():
    from ea_zoo.train.report import _table

    row = {"cell": "SelfRegulationSCP1", "task": "classification", "protocol": "val", "metric": "acc",
           "paper": None, "status": "ok"}
    stats = {"cells": [{"cell": "SelfRegulationSCP1", "task": "classification", "protocols": ["val"]}],
             "backends": ["sa", "taylor"],
             "rows": [{**row, "backend": "sa", "n": 3, "n_planned": 3, "mean": 0.75, "std": 0.05},
                      {**row, "backend": "taylor", "n": 1, "n_planned": 3, "mean": 0.836, "std": 0.0}]}
    lines = _table(stats, "classification", "val", ["acc"], with_paper=False)
    assert lines[2] == "| sa | 0.750 ± 0.050 |"
    assert lines[3] == "| taylor | **0.836** (n=1 of 3) |"
