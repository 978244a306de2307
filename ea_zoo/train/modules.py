"""LightningModules of the paper's tasks: sequence classification, forecasting, images.

Each wraps an ``nn.Module`` built by :func:`ea_zoo.build_model` and consumes the batches of
:mod:`ea_zoo.train.datamodules`:

* :class:`SequenceClassificationModule` -- batches ``{x (B,L,C), t (B,L), mask (B,L), y (B,)}``,
  the model is called ``model(x, timestamps=t, padding_mask=mask) -> logits (B, K)``;
  cross-entropy loss; metric accuracy.
* :class:`ForecastingModule` -- batches ``{x (B,L,C), y (B,L',C'), t_x (B,L)}``, the model is
  called ``model(x, timestamps=t_x) -> (B, L', C')``; MSE loss on the scaled series; metrics
  MSE, MAE and RMSE on the scaled series and MAE/RMSE/MSE in original units
  (``orig_*``: errors times the output columns' scaler std). Optional per-window input
  normalisation (``input_norm``: none | last | mean_std) wraps the model.
* :class:`ImageClassificationModule` -- batches ``(images, labels)``; ``model(images) -> logits``.

Epoch metrics are exact: per-batch sums (correct predictions, absolute and squared errors,
counts) are accumulated and reduced across processes (sum) at epoch end, so accuracy and RMSE
are those of the whole split, not means of batch values. Logged keys: ``{train,val,test}/loss``
and ``{val,test}/<metric>``.

Optimiser: AdamW (``lr``, ``weight_decay``) with a linear warm-up of ``warmup_steps`` optimizer
steps plus ``warmup_epochs`` epochs, then a cosine decay to ``min_lr_ratio * lr`` that ends at
optimizer step ``decay_steps`` (default: the end of the run, ``trainer.estimated_stepping_batches``)
and stays at ``min_lr_ratio * lr`` after it (``scheduler: cosine``), or a constant rate
(``scheduler: none``). With a step budget (``trainer.min_steps``) the experiment runner sets
``decay_steps = min_steps``: the decay is complete when early stopping may first stop.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

INPUT_NORMS = ("none", "last", "mean_std")

__all__ = [
    "INPUT_NORMS",
    "BaseTaskModule",
    "SequenceClassificationModule",
    "ForecastingModule",
    "ImageClassificationModule",
    "MODULES",
]


class _Sums:
    """Named running sums (float64) reduced across processes at epoch end."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.reset()

    def reset(self) -> None:
        self.values = {n: 0.0 for n in self.names}
        self._t: Optional[torch.Tensor] = None

    def add(self, **kv: torch.Tensor) -> None:
        for k, v in kv.items():
            self.values[k] = self.values[k] + v.detach().double().sum()

    def reduced(self, module: L.LightningModule) -> Dict[str, float]:
        vec = torch.stack([torch.as_tensor(self.values[n], dtype=torch.float64, device=module.device)
                           for n in self.names])
        trainer = module._trainer
        if trainer is not None and trainer.world_size > 1:
            vec = trainer.strategy.reduce(vec, reduce_op="sum")
        return {n: float(v) for n, v in zip(self.names, vec.tolist())}


class BaseTaskModule(L.LightningModule):
    """Shared optimiser/scheduler and metric plumbing."""

    #: metric monitored for checkpointing / early stopping, and its mode
    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0, max_epochs: int = 10,
                 warmup_epochs: float = 0.0, scheduler: str = "cosine", min_lr_ratio: float = 0.0,
                 betas: Sequence[float] = (0.9, 0.999), warmup_steps: int = 0,
                 decay_steps: Optional[int] = None) -> None:
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.max_epochs, self.warmup_epochs = int(max_epochs), float(warmup_epochs)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = None if decay_steps is None else int(decay_steps)
        if scheduler not in ("cosine", "none"):
            raise ValueError(f"scheduler must be 'cosine' or 'none', got {scheduler!r}")
        self.scheduler_name, self.min_lr_ratio = scheduler, float(min_lr_ratio)
        self.betas = tuple(betas)
        self._sums: Dict[str, _Sums] = {}

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or n.endswith(".bias") or "pos_embed" in n or "cls_token" in n
             else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas)
        if self.scheduler_name == "none":
            return opt
        total = self.trainer.estimated_stepping_batches
        if self.decay_steps is not None:
            steps = self.decay_steps if not math.isfinite(total) else min(self.decay_steps, int(total))
        elif math.isfinite(total):
            steps = int(total)
        else:
            raise ValueError("scheduler 'cosine' needs a bounded run: set trainer.max_steps, trainer.max_epochs "
                             "or optim.decay_steps")
        steps = max(1, steps)
        warm = self.warmup_steps + int(round(self.warmup_epochs * self._steps_per_epoch()))
        floor = self.min_lr_ratio

        def factor(step: int) -> float:
            if warm > 0 and step < warm:
                return (step + 1) / warm
            prog = min(1.0, (step - warm) / max(1, steps - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _steps_per_epoch(self) -> float:
        if not self.warmup_epochs:
            return 0.0
        trainer = self.trainer
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()
        nb = trainer.num_training_batches
        if not math.isfinite(nb) or nb <= 0:
            return 0.0
        return math.ceil(nb / max(1, trainer.accumulate_grad_batches))

    # -------------------------------------------------------------- metric plumbing
    _metric_names: Sequence[str] = ()

    def _acc(self, stage: str) -> _Sums:
        if stage not in self._sums:
            self._sums[stage] = _Sums(self._metric_names)
        return self._sums[stage]

    def on_validation_epoch_start(self) -> None:
        self._acc("val").reset()

    def on_test_epoch_start(self) -> None:
        self._acc("test").reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def _log_epoch(self, stage: str) -> None:
        sums = self._acc(stage).reduced(self)
        for k, v in self.epoch_metrics(sums).items():
            # values are already reduced (equal on every rank); sync_dist only keeps Lightning quiet
            self.log(f"{stage}/{k}", v, prog_bar=k in ("acc", "mae", "loss"), sync_dist=True)

    def epoch_metrics(self, sums: Dict[str, float]) -> Dict[str, float]:
        raise NotImplementedError


class SequenceClassificationModule(BaseTaskModule):
    """Multivariate time-series classification (Table 3); monitors ``val/acc`` (max)."""

    monitor = "val/acc"
    monitor_mode = "max"
    _metric_names = ("n", "correct", "loss_sum")

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, **kw: Any) -> None:
        super().__init__(model, **kw)
        self.label_smoothing = float(label_smoothing)

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["x"], timestamps=batch.get("t"), padding_mask=batch.get("mask"))

    def training_step(self, batch, batch_idx):
        logits = self(batch)
        loss = F.cross_entropy(logits.float(), batch["y"], label_smoothing=self.label_smoothing)
        acc = (logits.argmax(-1) == batch["y"]).float().mean()
        bs = batch["y"].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("train/acc", acc, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        logits = self(batch).float()
        y = batch["y"]
        loss = F.cross_entropy(logits, y, reduction="sum")
        self._acc(stage).add(n=torch.tensor(float(y.shape[0])), correct=(logits.argmax(-1) == y).sum(), loss_sum=loss)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def epoch_metrics(self, s: Dict[str, float]) -> Dict[str, float]:
        n = max(s["n"], 1.0)
        return {"acc": s["correct"] / n, "loss": s["loss_sum"] / n, "n": s["n"]}


class ForecastingModule(BaseTaskModule):
    """Forecasting (Table 4): MSE loss on the scaled series; monitors ``val/loss`` (= scaled MSE).

    Args:
        out_mean, out_std: the scaler's mean/std of the output columns (C',), for the
            original-unit metrics.
        out_index: positions of the output columns among the input columns (``MS``: the
            target's); None when outputs = inputs (``S``, ``M``).
        input_norm: per-window input normalisation around the model, undone on its output
            (same for every backend): ``"none"`` (the model sees the scaled series, as TSL's
            vanilla Transformer), ``"last"`` (subtract each channel's last input value and add it
            back: the model predicts the change from the last observation, so an untrained
            model starts at the persistence forecast) or ``"mean_std"`` (the window's mean and
            std, the Non-stationary-Transformer / RevIN normalisation without affine weights).
    """

    monitor = "val/loss"
    monitor_mode = "min"
    _metric_names = ("n", "abs", "sq", "abs_orig", "sq_orig")

    def __init__(self, model: nn.Module, out_mean: Sequence[float] = (0.0,), out_std: Sequence[float] = (1.0,),
                 out_index: Optional[Sequence[int]] = None, input_norm: str = "none", **kw: Any) -> None:
        super().__init__(model, **kw)
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, got {input_norm!r}")
        self.input_norm = input_norm
        self.out_index = None if out_index is None else list(out_index)
        self.register_buffer("out_mean", torch.as_tensor(list(out_mean), dtype=torch.float32))
        self.register_buffer("out_std", torch.as_tensor(list(out_std), dtype=torch.float32))

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"]
        if self.input_norm == "none":
            return self.model(x, timestamps=batch.get("t_x"))
        if self.input_norm == "last":
            loc, scale = x[:, -1:, :], torch.ones_like(x[:, -1:, :])
        else:  # mean_std
            loc = x.mean(1, keepdim=True)
            scale = x.std(1, keepdim=True, unbiased=False) + 1e-5
        y = self.model((x - loc) / scale, timestamps=batch.get("t_x"))
        if self.out_index is not None:
            loc, scale = loc[..., self.out_index], scale[..., self.out_index]
        return y * scale.to(y.dtype) + loc.to(y.dtype)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Scaled (..., C') -> original units."""
        return y * self.out_std.to(y.dtype) + self.out_mean.to(y.dtype)

    def training_step(self, batch, batch_idx):
        pred = self(batch).float()
        loss = F.mse_loss(pred, batch["y"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=pred.shape[0],
                 sync_dist=True)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        pred = self(batch).float()
        err = pred - batch["y"]
        err_o = err * self.out_std.float()
        self._acc(stage).add(n=torch.tensor(float(err.numel())), abs=err.abs().sum(), sq=(err ** 2).sum(),
                             abs_orig=err_o.abs().sum(), sq_orig=(err_o ** 2).sum())

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def epoch_metrics(self, s: Dict[str, float]) -> Dict[str, float]:
        n = max(s["n"], 1.0)
        mse, mse_o = s["sq"] / n, s["sq_orig"] / n
        return {"loss": mse, "mse": mse, "mae": s["abs"] / n, "rmse": math.sqrt(mse),
                "orig_mse": mse_o, "orig_mae": s["abs_orig"] / n, "orig_rmse": math.sqrt(mse_o)}


class ImageClassificationModule(BaseTaskModule):
    """Image classification with a ViT of the zoo; monitors ``val/acc`` (max)."""

    monitor = "val/acc"
    monitor_mode = "max"
    _metric_names = ("n", "correct", "loss_sum")

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, **kw: Any) -> None:
        super().__init__(model, **kw)
        self.label_smoothing = float(label_smoothing)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=y.shape[0], sync_dist=True)
        self.log("train/acc", (logits.argmax(-1) == y).float().mean(), on_step=False, on_epoch=True,
                 batch_size=y.shape[0], sync_dist=True)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, y = batch
        logits = self(x).float()
        self._acc(stage).add(n=torch.tensor(float(y.shape[0])), correct=(logits.argmax(-1) == y).sum(),
                             loss_sum=F.cross_entropy(logits, y, reduction="sum"))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def epoch_metrics(self, s: Dict[str, float]) -> Dict[str, float]:
        n = max(s["n"], 1.0)
        return {"acc": s["correct"] / n, "loss": s["loss_sum"] / n, "n": s["n"]}


#: task name (experiment config ``task``) -> module class
MODULES = {
    "classification": SequenceClassificationModule,
    "forecasting": ForecastingModule,
    "image": ImageClassificationModule,
}
