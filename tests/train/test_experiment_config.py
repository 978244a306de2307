"""Experiment configs: strict schema before any data is read, overrides as for model configs, run keys."""
import pytest

from ea_zoo.train import run as run_mod
from ea_zoo.train.run import load_experiment
from ea_zoo.train.runs import config_hash


def run_key(cfg):
    return run_mod.run_key(cfg)


@pytest.mark.parametrize("override, key, valid", [
    ("data.batch_szie=8", "data.batch_szie", "data.batch_size"),
    ("module.label_smoothng=0.1", "module.label_smoothng", "module.label_smoothing"),
    ("early_stopping.patiense=5", "early_stopping.patiense", "early_stopping.patience"),
    ("data.nonsense=1", "data.nonsense", "data.val_source"),
    ("optim.lrr=1", "optim.lrr", "optim.lr"),
    ("trainer.max_epochz=1", "trainer.max_epochz", "trainer.max_steps"),
])
def test_unknown_keys_are_rejected_with_the_path_and_the_valid_keys(override, key, valid):
    with pytest.raises(ValueError) as e:
        load_experiment("table3_jap", [override])
    msg = str(e.value)
    assert "\n" not in msg and repr(key) in msg and valid in msg, msg


@pytest.mark.parametrize("override, part", [
    ("trainer.max_epochs=abc", "trainer.max_epochs"),
    ("data.batch_size=0", "data.batch_size=0"),
    ("data.val_source=tset", "'train', 'test'"),
    ("optim.scheduler=linear", "'cosine', 'none'"),
    ("task=regression", "'classification'"),
    ("threads=zero", "threads"),
    ("cpu_impl=fast", "cpu_impl='fast' is not valid; valid values: 'reference', 'compiled'"),
])
def test_wrong_types_and_values_are_rejected(override, part):
    with pytest.raises(ValueError) as e:
        load_experiment("table3_jap", [override])
    assert part in str(e.value) and "\n" not in str(e.value)


def test_a_typo_fails_before_any_data_is_read(tmp_path, capsys):
    from ea_zoo.cli import main

    # the data root is empty: a config check that ran after loading would say "not found"
    rc = main(["train", "--config", "table3_jap", f"data.root={tmp_path}", "optim.lrr=1"])
    err = capsys.readouterr().err
    assert rc != 0 and "optim.lrr" in err and "not found" not in err and "Traceback" not in err


def test_attention_overrides_work_as_for_model_configs():
    import ea_zoo

    cfg = load_experiment("table3_jap", ["attention=ea6", "attention.order=4"])
    assert cfg.attention.name == "ea_series" and cfg.attention.order == 4 and cfg.label == "ea4"
    model = ea_zoo.build_model({"model": {**cfg.model, "in_chans": 3, "num_classes": 2}, "attention": cfg.attention})
    assert {m.order for m in model.modules() if type(m).__name__.startswith("EASeries")} == {4}
    assert load_experiment("table3_jap", ["attention=sa"]).label == "sa"
    with pytest.raises(ValueError, match="attention.order"):
        load_experiment("table3_jap", ["attention=sa", "attention.order=4"])


def test_every_section_has_its_defaults_and_generic_configs_load():
    cfg = load_experiment("uea", ["data.dataset=Epilepsy"])
    assert cfg.data.dataset == "Epilepsy" and cfg.trainer.max_epochs == -1 and cfg.trainer.min_steps > 0
    assert cfg.threads == "auto" and set(run_mod.DEFAULTS) >= {"trainer", "optim", "early_stopping", "data"}
    f = load_experiment("ett", ["data.dataset=some/where/my.csv", "data.pred_len=12"])
    assert f.task == "forecasting" and f.data.pred_len == 12 and f.data.val_source == "val"
    # the paper's configs take the generic budget
    assert load_experiment("table3_uwg").trainer.min_steps == cfg.trainer.min_steps


def test_run_key_hashes_what_changes_results_only():
    a = load_experiment("table3_jap", ["trainer.max_steps=100"])
    b = load_experiment("table3_jap", ["trainer.max_steps=200"])
    assert config_hash(run_key(a)) != config_hash(run_key(b))
    c = load_experiment("table3_jap", ["trainer.max_steps=100", "threads=1", "output_dir=/tmp/x",
                                       "trainer.enable_progress_bar=false", "label=other", "cpu_impl=compiled"])
    assert config_hash(run_key(a)) == config_hash(run_key(c))
    assert "attention" in run_key(a) and "threads" not in run_key(a) and "cpu_impl" not in run_key(a)
    assert c.cpu_impl == "compiled" and a.cpu_impl == "reference"


def test_threads_default_does_not_oversubscribe(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    resolve_threads = run_mod.resolve_threads
    assert resolve_threads("auto", jobs=1) == 2 and resolve_threads("auto", jobs=2) == 1
    assert resolve_threads("auto", jobs=8) == 1 and resolve_threads(3) == 3 and resolve_threads(None) is None


def test_config_dir_is_read_at_call_time(tmp_path, monkeypatch):
    import shutil

    from ea_zoo.configs import config_dir
    from ea_zoo.train import run

    shutil.copytree(config_dir(), tmp_path / "cfg")
    (tmp_path / "cfg" / "experiment" / "mine.yaml").write_text("defaults: [experiment/uea]\nname: mine\n")
    monkeypatch.setenv("EA_ZOO_CONFIG_DIR", str(tmp_path / "cfg"))
    assert run.CONFIG_DIR == tmp_path / "cfg"
    assert load_experiment("mine").name == "mine"
