"""One tiny epoch of each task, end to end through ``ea_zoo.train.run.train``."""
import json
import math

import pytest
import torch

from ea_zoo.data.paths import data_root
from ea_zoo.train.run import load_experiment, train

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
requires_etth2 = _requires("ETT-small/ETTh2.csv")
requires_fmnist = _requires("fashion-mnist/train-images-idx3-ubyte.gz", "fashion-mnist/train-labels-idx1-ubyte.gz",
                            "fashion-mnist/t10k-images-idx3-ubyte.gz", "fashion-mnist/t10k-labels-idx1-ubyte.gz")


@requires_jap
def test_classification_one_epoch(tmp_path):
    cfg = load_experiment("table3_jap", TINY + ["attention=ea2", f"output_dir={tmp_path}"])
    res = train(cfg)
    assert (tmp_path / "best.ckpt").is_file() and (tmp_path / "config.yaml").is_file()
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["test"] == res["test"] and 0.0 <= res["test"]["test/acc"] <= 1.0
    assert res["test"]["test/n"] == 32  # 2 test batches of 16
    assert res["attention"] == "ea2" and res["best_val"]["monitor"] == "val/loss"
    assert res["data"]["n_train"] == 216 and res["precision"] == "32-true"
    assert (tmp_path / "logs" / "metrics.csv").is_file()


@requires_etth2
def test_forecasting_one_epoch_scaled_and_original_metrics(tmp_path):
    cfg = load_experiment("table4_etth2_12", TINY + ["attention=sa", f"output_dir={tmp_path}"])
    res = train(cfg)
    t = res["test"]
    assert set(t) >= {"test/mae", "test/rmse", "test/mse", "test/orig_mae", "test/orig_rmse"}
    assert math.isclose(t["test/rmse"], math.sqrt(t["test/mse"]), rel_tol=1e-5)
    assert res["data"]["borders"] == [[0, 8634, 11514], [8640, 11520, 14400]]
    # original-unit errors are the scaled ones times the target's train std (ETTh2 OT ~ 11.6)
    assert 5 < t["test/orig_mae"] / t["test/mae"] < 20
    assert res["config"]["data"]["pred_len"] == 12


@requires_fmnist
def test_image_one_epoch(tmp_path):
    over = [o for o in TINY if not o.startswith("model.")] + [
        "attention=ea6", f"output_dir={tmp_path}", "data.limit_train=64", "data.batch_size=16",
        "data.eval_batch_size=16", "model.embed_dim=24", "model.depth=1", "model.num_heads=2"]
    res = train(load_experiment("vit_fmnist", over))
    assert res["test"]["test/n"] == 32 and res["params"] < 20000


def test_forecasting_module_metrics_are_exact():
    from ea_zoo.train.modules import ForecastingModule

    class Const(torch.nn.Module):
        def forward(self, x, timestamps=None):
            return torch.zeros(x.shape[0], 2, 1)

    m = ForecastingModule(Const(), out_mean=[10.0], out_std=[2.0])
    acc = m._acc("val")
    acc.reset()
    for y in (torch.tensor([[[1.0], [3.0]]]), torch.tensor([[[0.0], [2.0]], [[2.0], [0.0]]])):
        m._eval_step({"x": torch.zeros(y.shape[0], 6, 1), "y": y}, "val")
    out = m.epoch_metrics(acc.reduced(m))
    errs = torch.tensor([1.0, 3.0, 0.0, 2.0, 2.0, 0.0])
    assert math.isclose(out["mae"], errs.mean().item(), rel_tol=1e-6)
    assert math.isclose(out["rmse"], errs.pow(2).mean().sqrt().item(), rel_tol=1e-6)  # not a mean of batch RMSEs
    assert math.isclose(out["orig_mae"], 2.0 * errs.mean().item(), rel_tol=1e-6)
    assert torch.allclose(m.inverse(torch.tensor([1.0])), torch.tensor([12.0]))


def test_config_errors_and_overrides():
    cfg = load_experiment("table4_ettm2_6", ["attention=ea2", "trainer.max_epochs=3", "data.features=M"])
    assert cfg.label == "ea2" and cfg.attention.order == 2 and cfg.trainer.max_epochs == 3 and cfg.data.dataset == "ETTm2"
    assert cfg.data.kind == "forecast" and cfg.data.pred_len == 6  # from configs/data + the experiment
    with pytest.raises(ValueError, match="unknown key"):
        load_experiment("table3_jap", ["nonsense.key=1"])
    with pytest.raises(FileNotFoundError, match="table3_jap"):
        load_experiment("no_such_experiment")


def test_precision_auto():
    from ea_zoo.train.run import _precision

    assert _precision({"precision": "auto", "accelerator": "cpu"}) == "32-true"
    assert _precision({"precision": "16-mixed"}) == "16-mixed"
    if torch.cuda.is_available():
        assert _precision({"precision": "auto", "accelerator": "auto"}) == "bf16-mixed"


@requires_jap
def test_seeded_deterministic_runs_repeat(tmp_path):
    over = TINY + ["attention=ea6", "trainer.deterministic=true", "debug.weight_hash=true", "seed=3"]
    for d in ("a", "b"):
        train(load_experiment("table3_jap", over + [f"output_dir={tmp_path / d}"]))
    ha, hb = ((tmp_path / d / "weights_rank0.sha256").read_text() for d in ("a", "b"))
    assert ha == hb


def test_step_budget_early_stopping_waits_for_min_steps_and_results_record_the_fit(tmp_path, toy_root):
    # min_delta=100: no validation ever improves, so early stopping would stop at the 2nd validation;
    # it must wait for min_steps (the toy archive has 2 optimizer steps per epoch)
    over = ["threads=1", "trainer.enable_progress_bar=false", "model.embed_dim=16", "model.depth=1",
            "model.num_heads=2", f"data.root={toy_root}", "data.dataset=ToyGestures", "trainer.max_epochs=-1",
            "trainer.min_steps=10", "trainer.max_steps=40", "early_stopping.patience=1", "early_stopping.min_delta=100",
            "optim.warmup_steps=0", f"output_dir={tmp_path / 'run'}"]
    res = train(load_experiment("uea", over))
    assert 10 <= res["global_steps"] < 40 and res["stopped_by"] == "early_stopping"
    assert res["steps_per_epoch"] == 2 and res["best_step"] == 2 * (res["best_epoch"] + 1) <= res["global_steps"]
    fit = res["train"]["eval_best"]
    assert set(fit) >= {"loss", "acc"} and 0.0 <= fit["acc"] <= 1.0 and res["train"]["last_epoch"]["loss"] > 0
    assert res["wall_seconds"] > 0 and res["machine"]["cpu_count"] >= 1 and res["machine"]["torch"] == torch.__version__
    assert [h["step"] for h in res["history"]][:3] == [2, 4, 6]
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["config"]["trainer"]["min_steps"] == 10


def test_cosine_decay_ends_at_decay_steps():
    from ea_zoo.train.modules import SequenceClassificationModule

    class Trainer:  # what configure_optimizers reads
        estimated_stepping_batches = 100
        train_dataloader = object()
        num_training_batches = 10
        accumulate_grad_batches = 1
        max_epochs = -1

    m = SequenceClassificationModule(torch.nn.Linear(2, 2), lr=1.0, min_lr_ratio=0.1, warmup_steps=5, decay_steps=40)
    m._trainer = Trainer()
    sched = m.configure_optimizers()["lr_scheduler"]["scheduler"]
    f = sched.lr_lambdas[0]
    assert math.isclose(f(0), 0.2) and math.isclose(f(4), 1.0) and math.isclose(f(5), 1.0)
    assert math.isclose(f(40), 0.1) and math.isclose(f(90), 0.1) and 0.1 < f(20) < 1.0
