"""Run store: keys are the full config; a changed override is a new run; no stale results."""
import json

import pytest
from omegaconf import OmegaConf

from ea_zoo.train.runs import RunStore, canonical_json, config_hash


def test_hash_is_order_free_and_config_sensitive():
    a = {"attention": "ea6", "trainer": {"max_epochs": 1, "limit_train_batches": 1}, "seed": 0}
    b = {"seed": 0, "trainer": {"limit_train_batches": 1, "max_epochs": 1}, "attention": "ea6"}
    assert config_hash(a) == config_hash(b) == config_hash(OmegaConf.create(a))
    c = {**a, "trainer": {"max_epochs": 50}}
    assert config_hash(c) != config_hash(a)


def test_smoke_run_is_not_reported_for_the_real_run(tmp_path):
    store = RunStore(tmp_path)
    smoke = {"attention": "sa", "trainer": {"max_epochs": 1, "limit_train_batches": 1}}
    real = {"attention": "sa", "trainer": {"max_epochs": 50}}
    store.save(smoke, {"test_acc": 0.111}, label="JAP-sa-s0")
    assert store.load(smoke)["test_acc"] == 0.111
    assert store.load(real) is None
    d = store.save(real, {"test_acc": 0.9}, label="JAP-sa-s0")
    assert d.name.startswith("JAP-sa-s0-") and store.load(real)["test_acc"] == 0.9
    assert len(list(store.results())) == 2


def test_edited_config_is_a_miss(tmp_path):
    store = RunStore(tmp_path)
    cfg = {"attention": "ea2", "seed": 1}
    d = store.save(cfg, {"acc": 1.0})
    (d / "config.json").write_text(json.dumps({"attention": "ea2", "seed": 2}))
    assert store.load(cfg) is None
    d2 = store.start({"attention": "la"})
    assert (d2 / "config.json").is_file() and store.load({"attention": "la"}) is None


def test_non_json_values_are_rejected():
    with pytest.raises(TypeError, match="not JSON"):
        canonical_json({"x": object()})
    with pytest.raises(TypeError, match="not finite"):
        canonical_json({"x": float("nan")})
