"""``ea-zoo bench-vit``: a small timm ViT on Fashion-MNIST for every attention backend.

The staged Fashion-MNIST (``<data root>/fashion-mnist``, :func:`ea_zoo.data.images.load_images`:
the official 60k/10k split, validation = a stratified 1/12 of train, seed 0) through timm's
``VisionTransformer`` with the backend as ``attn_layer``
(``ea_zoo.create_model("vit_tiny_patch16_224", attention=<spec>, img_size=28, patch_size=...)``;
AFT-full/local get ``max_len`` = patches + class token from the model builder). The same
recipe for every backend: AdamW, linear warm-up then cosine per step, gradient clip, fixed
epochs, the last epoch's weights tested. The images are read once into tensors (normalised
with the dataset mean/std; optional random-crop augmentation with 2-pixel padding, done on
tensors), so no per-image PIL transform costs time.

Accuracy runs (``--jobs 2``: two single-thread runs side by side) report test accuracy mean
± sample std over seeds. The timing columns come from ``--timing-only`` runs, one at a time
on an otherwise idle machine: time per training epoch (median step time x steps per epoch)
and peak training memory (CPU: parameters + AdamW state + the peak of live tensors over
forward + backward, as ``ea-zoo train-cost``; CUDA: ``max_memory_allocated`` over a step).

    ea-zoo bench-vit --preset cpu --jobs 2 --out benchmarks/results/vit_fmnist_cpu
    ea-zoo bench-vit --preset cpu --timing-only --out benchmarks/results/vit_fmnist_cpu   # idle machine
    ea-zoo bench-vit --preset paper --device cuda
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from ea_zoo.bench import common

__all__ = ["PRESETS", "build_jobs", "train_run", "timing_run", "add_arguments", "run"]

RECIPE_VERSION = 1
MEAN, STD = 0.2860, 0.3530

PRESETS: Dict[str, Dict[str, Any]] = {
    "smoke": dict(about="seconds (tests)", patch_size=7, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0,
                  epochs=1, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_epochs=0.0, grad_clip=1.0,
                  label_smoothing=0.0, augment=False, limit_train=256, limit_test=128, seeds=1,
                  timing_steps=2),
    "cpu": dict(about="ViT 28x28/7 (17 tokens), D 64, 4 blocks, 4 heads, 2 epochs, 3 seeds", patch_size=7,
                embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, epochs=2, batch_size=128, lr=2e-3,
                weight_decay=0.05, warmup_epochs=0.2, grad_clip=1.0, label_smoothing=0.0, augment=False,
                limit_train=None, limit_test=None, seeds=3, timing_steps=20),
    "paper": dict(about="ViT 28x28/4 (50 tokens), D 192, 6 blocks, 3 heads, 40 epochs with augmentation (GPU)",
                  patch_size=4, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0, epochs=40, batch_size=256,
                  lr=1e-3, weight_decay=0.05, warmup_epochs=2.0, grad_clip=1.0, label_smoothing=0.1, augment=True,
                  limit_train=None, limit_test=None, seeds=3, timing_steps=50),
}
PRESETS["gpu"] = PRESETS["paper"]

_MODEL_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
_TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "grad_clip", "label_smoothing", "augment")


def _cfg(p: Dict[str, Any], backend: str, seed: int, device: str, data_root: Optional[str], kind: str) -> Dict[str, Any]:
    cfg = {
        "bench": "vit_fmnist", "kind": kind, "recipe": RECIPE_VERSION, "device": device, "attention": backend,
        "data": {"dataset": "fashion_mnist", "val_fraction": 1 / 12, "val_seed": 0, "limit_train": p["limit_train"],
                 "limit_test": p["limit_test"], "root": data_root},
        "model": {"name": "vit_tiny_patch16_224", "img_size": 28, "in_chans": 1, "num_classes": 10,
                  **{k: p[k] for k in _MODEL_KEYS}},
        "train": {k: p[k] for k in _TRAIN_KEYS},
    }
    if kind == "train":
        cfg["seed"] = int(seed)
    else:
        cfg["timing_steps"] = p["timing_steps"]
    return cfg


def build_jobs(p, backends, seeds, device, data_root=None) -> List[common.Job]:
    # seed-major: a grid stopped early has every backend at its first seeds
    return [common.Job(_cfg(p, b, s, device, data_root, "train"), f"{common.backend_label(b)}_s{s}",
                       {"backend": b, "seed": s}) for s in seeds for b in backends]


def build_timing_jobs(p, backends, device, data_root=None) -> List[common.Job]:
    return [common.Job(_cfg(p, b, 0, device, data_root, "timing"), f"timing_{common.backend_label(b)}",
                       {"backend": b}) for b in backends]


# ----------------------------------------------------------------------------- data / model
@lru_cache(maxsize=2)
def load_tensors(root: Optional[str], limit_train: Optional[int], limit_test: Optional[int]):
    """(x_train, y_train, x_val, y_val, x_test, y_test): uint8 images (N, 28, 28), int64 labels."""
    from ea_zoo.data.images import load_images

    s = load_images("fashion_mnist", root=root, augment=False, val_fraction=1 / 12, val_seed=0)

    def take(subset):
        idx = torch.as_tensor(subset.indices, dtype=torch.long)
        base = subset.dataset
        return base.data[idx], torch.as_tensor(base.targets)[idx].long()

    xtr, ytr = take(s.train)
    xva, yva = take(s.val)
    xte, yte = s.test.data, torch.as_tensor(s.test.targets).long()
    if limit_train:
        xtr, ytr = xtr[:limit_train], ytr[:limit_train]
    if limit_test:
        xte, yte = xte[:limit_test], yte[:limit_test]
        xva, yva = xva[:limit_test], yva[:limit_test]
    return xtr, ytr, xva, yva, xte, yte


def _norm(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() / 255.0) - MEAN).div_(STD).unsqueeze(1)


def _random_crop(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Per-image random crop of (B, 1, H, W) after zero padding (of the normalised zero level)."""
    B, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), value=(0.0 - MEAN) / STD)
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    rows = (oy[:, None] + torch.arange(H))[:, :, None]
    cols = (ox[:, None] + torch.arange(W))[:, None, :]
    b = torch.arange(B)[:, None, None]
    return xp[:, 0][b, rows, cols].unsqueeze(1)


def build_model(cfg: Dict[str, Any]) -> torch.nn.Module:
    from ea_zoo.models import create_model

    m = dict(cfg["model"])
    name = m.pop("name")
    return create_model(name, attention=cfg["attention"], **m)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device, batch_size: int = 500) -> float:
    model.eval()
    hit = 0
    for i in range(0, len(x), batch_size):
        out = model(_norm(x[i:i + batch_size]).to(device))
        hit += int((out.argmax(-1).cpu() == y[i:i + batch_size]).sum())
    model.train()
    return hit / max(1, len(x))


class _Trainer:
    def __init__(self, cfg: Dict[str, Any], n_train: int, seed: int) -> None:
        self.cfg, self.tc = cfg, cfg["train"]
        self.dev = torch.device(cfg["device"])
        torch.manual_seed(seed)
        self.model = build_model(cfg).to(self.dev)
        self.opt = common.make_adamw(self.model, self.tc["lr"], self.tc["weight_decay"])
        self.bs = int(self.tc["batch_size"])
        self.steps_per_epoch = max(1, math.ceil(n_train / self.bs))
        self.total = self.steps_per_epoch * int(self.tc["epochs"])
        self.warmup = int(round(float(self.tc["warmup_epochs"]) * self.steps_per_epoch))
        self.gen = torch.Generator().manual_seed(seed)
        self.step_i = 0

    def forward_backward(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        x = _norm(xb)
        if self.tc["augment"]:
            x = _random_crop(x, self.gen)
        out = self.model(x.to(self.dev))
        loss = F.cross_entropy(out.float(), yb.to(self.dev), label_smoothing=float(self.tc["label_smoothing"]))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        common.set_lr(self.opt, common.lr_at(self.step_i, self.total, self.warmup, float(self.tc["lr"])))
        loss = self.forward_backward(xb, yb)
        if self.tc["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.tc["grad_clip"]))
        self.opt.step()
        self.step_i += 1
        return loss.item()


def train_run(cfg: Dict[str, Any], run_dir: Path, progress: bool = False) -> Dict[str, Any]:
    from tqdm.auto import tqdm

    d = cfg["data"]
    xtr, ytr, xva, yva, xte, yte = load_tensors(d["root"], d["limit_train"], d["limit_test"])
    seed = int(cfg["seed"])
    tr = _Trainer(cfg, len(xtr), seed)
    epochs = int(cfg["train"]["epochs"])
    bar = tqdm(total=tr.total, desc=f"vit {common.backend_label(cfg['attention'])} s{seed}", disable=not progress,
               leave=False, dynamic_ncols=True)
    epoch_s, epoch_loss, epoch_val = [], [], []
    diverged = False
    for ep in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(xtr), generator=tr.gen)
        tot, n = 0.0, 0
        for i in range(0, len(xtr), tr.bs):
            idx = perm[i:i + tr.bs]
            lv = tr.step(xtr[idx], ytr[idx])
            if not math.isfinite(lv):
                diverged = True
                break
            tot += lv * len(idx)
            n += len(idx)
            bar.update(1)
        epoch_s.append(time.perf_counter() - t0)
        epoch_loss.append(tot / max(1, n))
        if diverged:
            break
        epoch_val.append(accuracy(tr.model, xva, yva, tr.dev))  # the learning curve (outside the epoch timing)
        bar.set_postfix_str(f"ep {ep + 1} loss {epoch_loss[-1]:.3f} val {epoch_val[-1]:.3f}", refresh=False)
    bar.close()
    return {
        "test_acc": accuracy(tr.model, xte, yte, tr.dev), "val_acc": accuracy(tr.model, xva, yva, tr.dev),
        "final_train_loss": epoch_loss[-1] if epoch_loss else None, "epoch_train_loss": epoch_loss,
        "epoch_val_acc": epoch_val,
        "epoch_s": epoch_s, "epoch_s_mean_under_load": statistics.fmean(epoch_s) if epoch_s else None,
        "diverged": diverged, "params": common.params_of(tr.model), "n_train": len(xtr), "n_test": len(xte),
        "steps": tr.step_i,
    }


def timing_run(cfg: Dict[str, Any], run_dir: Path, progress: bool = False) -> Dict[str, Any]:
    """Median training-step time (after 3 warm-up steps) x steps per epoch; peak memory."""
    from ea_zoo.analysis.memory import param_bytes, peak_live_bytes

    d = cfg["data"]
    xtr, ytr, *_ = load_tensors(d["root"], d["limit_train"], d["limit_test"])
    tr = _Trainer(cfg, len(xtr), 0)
    bs = tr.bs
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(xtr), (bs,), generator=gen) for _ in range(4)]
    from ea_zoo.analysis.speed import synchronize

    for i in range(3):
        tr.step(xtr[batches[i % 4]], ytr[batches[i % 4]])
    times = []
    for i in range(int(cfg["timing_steps"])):
        idx = batches[i % 4]
        synchronize(tr.dev)
        t0 = time.perf_counter()
        tr.step(xtr[idx], ytr[idx])
        synchronize(tr.dev)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    idx = batches[0]
    static = 3 * param_bytes(tr.model)
    if tr.dev.type == "cuda":
        torch.cuda.synchronize(tr.dev)
        torch.cuda.reset_peak_memory_stats(tr.dev)
        tr.step(xtr[idx], ytr[idx])
        torch.cuda.synchronize(tr.dev)
        mem, act, measure = int(torch.cuda.max_memory_allocated(tr.dev)), None, "cuda max_memory_allocated (step)"
    else:
        def fwd_bwd() -> None:
            tr.forward_backward(xtr[idx], ytr[idx])

        act = peak_live_bytes(fwd_bwd)
        tr.opt.zero_grad(set_to_none=True)
        mem, measure = static + act, "params + AdamW state + peak live tensors (fwd+bwd)"
    return {"step_s_median": med, "step_s": times, "steps_per_epoch": tr.steps_per_epoch,
            "epoch_s": med * tr.steps_per_epoch, "images_per_s": bs / med, "peak_memory_bytes": int(mem),
            "static_bytes": int(static), "activation_bytes": None if act is None else int(act),
            "memory_measure": measure, "batch_size": bs}


# ----------------------------------------------------------------------------- report
def collect(jobs, timing_jobs, store) -> List[Dict[str, Any]]:
    rows = []
    labels = list(dict.fromkeys(common.backend_label(j.meta["backend"]) for j in jobs))
    timing = {common.backend_label(j.meta["backend"]): store.load(j.cfg) for j in timing_jobs}
    for b in labels:
        rs = [(j, store.load(j.cfg)) for j in jobs if common.backend_label(j.meta["backend"]) == b]
        done = [r for _, r in rs if r]
        m, s, n = common.mean_std(r["test_acc"] for r in done)
        vm = common.mean_std(r["val_acc"] for r in done)[0]
        t = timing.get(b) or {}
        row = {"backend": b, "test_acc_mean": m, "test_acc_std": s, "n_seeds": n, "seeds_planned": len(rs),
               "test_acc_values": [r["test_acc"] for r in done], "val_acc_mean": vm,
               "final_train_loss_mean": common.mean_std(r.get("final_train_loss") for r in done)[0],
               "params": done[0]["params"] if done else None,
               "cpu_s_per_run": common.mean_std(r.get("cpu_s") for r in done)[0],
               "epoch_s_under_load": common.mean_std(r.get("epoch_s_mean_under_load") for r in done)[0],
               "epoch_s": t.get("epoch_s"), "images_per_s": t.get("images_per_s"),
               "peak_memory_bytes": t.get("peak_memory_bytes"), "timing_date": t.get("date"),
               "timing_load_average": t.get("load_average"),
               "status": "ok" if n == len(rs) else f"{n}/{len(rs)} seeds",
               "epoch_val_acc_mean": _mean_curve([r.get("epoch_val_acc") for r in done]),
               "epoch_train_loss_mean": _mean_curve([r.get("epoch_train_loss") for r in done])}
        rows.append(row)
    return rows


def _mean_curve(curves: List[Optional[List[float]]]) -> Optional[List[float]]:
    """Per-epoch mean over the seeds' curves; None unless every seed has a full curve (runs
    stored before the curve was recorded have none)."""
    if not curves or any(not c for c in curves) or len({len(c) for c in curves}) != 1:
        return None
    return [statistics.fmean(v) for v in zip(*curves)]


def curve_table(rows: List[Dict[str, Any]]) -> Optional[str]:
    """Markdown: validation accuracy (and train loss) after each epoch, mean over seeds, for
    the backends whose runs recorded it; None when none did."""
    have = [r for r in rows if r.get("epoch_val_acc_mean")]
    if not have:
        return None
    n_ep = max(len(r["epoch_val_acc_mean"]) for r in have)
    body = []
    for r in have:
        va, tl = r["epoch_val_acc_mean"], r.get("epoch_train_loss_mean") or []
        body.append([r["backend"], *[f"{a:.4f}" + (f" ({tl[i]:.3f})" if i < len(tl) else "") for i, a in enumerate(va)],
                     *["-"] * (n_ep - len(va))])
    return common.md_table(["backend", *[f"epoch {e + 1}" for e in range(n_ep)]], body)


def _plot(rows, path: Path, title: str) -> None:
    plt = common.plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = [r["backend"] for r in rows]
    x = list(range(len(rows)))
    acc = [r["test_acc_mean"] if r["test_acc_mean"] is not None else float("nan") for r in rows]
    err = [r["test_acc_std"] or 0.0 for r in rows]
    colors = ["tab:red" if b == "sa" else ("tab:blue" if b.startswith("ea") else "tab:gray") for b in labels]
    axes[0].bar(x, acc, yerr=err, color=colors, capsize=3)
    finite = [a for a in acc if math.isfinite(a)]
    if finite:
        axes[0].set_ylim(max(0.0, min(finite) - 0.03), min(1.0, max(finite) + 0.01))
    axes[0].set_title("test accuracy (mean ± std over seeds)", fontsize=10)
    for ax, key, ttl in ((axes[1], "epoch_s", "time per training epoch (s, --timing-only)"),
                         (axes[2], "peak_memory_bytes", "peak training memory (MiB, --timing-only)")):
        vals = [(r[key] if r[key] is not None else float("nan")) for r in rows]
        if key == "peak_memory_bytes":
            vals = [v / 2 ** 20 for v in vals]
        ax.bar(x, vals, color=colors)
        ax.set_title(ttl, fontsize=10)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(jobs, timing_jobs, store, p, preset, out, env, plot, status=None):
    rows = collect(jobs, timing_jobs, store)
    table = []
    for r in rows:
        table.append([r["backend"], common.fmt_pm(r["test_acc_mean"], r["test_acc_std"], r["n_seeds"], 4),
                      r["n_seeds"], "-" if r["params"] is None else f"{r['params'] / 1e3:.1f}k",
                      "-" if r["epoch_s"] is None else f"{r['epoch_s']:.1f}",
                      "-" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}",
                      common.fmt_bytes(r["peak_memory_bytes"]),
                      "-" if r["epoch_s_under_load"] is None else f"{r['epoch_s_under_load']:.1f}", r["status"]])
    n_tok = (28 // p["patch_size"]) ** 2 + 1
    notes = (f"Preset `{preset}`. Fashion-MNIST (staged, official split; {p['limit_train'] or 55000} training images "
             f"after holding out a stratified 1/12 for validation; {p['limit_test'] or 10000} test images). Model: timm "
             f"`VisionTransformer` 28x28, patch {p['patch_size']} ({n_tok} tokens with the class token), width "
             f"{p['embed_dim']}, {p['depth']} blocks, {p['num_heads']} heads, MLP ratio {p['mlp_ratio']:g}, the "
             f"backend as `attn_layer`. Recipe (every backend): AdamW lr {p['lr']:g}, weight decay "
             f"{p['weight_decay']} (matrices), batch {p['batch_size']}, {p['epochs']} epochs, warm-up "
             f"{p['warmup_epochs']:g} epoch(s) then cosine per step, gradient clip {p['grad_clip']}, label smoothing "
             f"{p['label_smoothing']}, augmentation {'random crop (pad 2)' if p['augment'] else 'none'}; the last "
             f"epoch is tested. Test accuracy: mean ± sample std over seeds. Time per epoch, images/s and peak "
             f"memory are from `--timing-only` (one run at a time, {p['timing_steps']} timed steps after 3 warm-up "
             f"steps, median; memory = parameters + AdamW state + peak live tensors of forward + backward on CPU); "
             f"'epoch s (grid)' is the mean epoch time measured during the accuracy runs, which ran side by side on a "
             f"shared machine (not a clean timing).")
    notes = " ".join(filter(None, [notes, common.cpu_impl_note((j.label, store.load(j.cfg)) for j in [*jobs, *timing_jobs])]))
    sections = [("Results", common.md_table(["backend", "test acc", "seeds", "params", "epoch s", "img/s",
                                             "peak memory", "epoch s (grid)", "status"], table)),
                ("Setup", notes)]
    curves = curve_table(rows)
    if curves:
        sections.insert(1, ("Learning curves: validation accuracy after each epoch (train loss of the epoch), "
                            "mean over seeds", curves))
    config = {"preset": preset, **{k: v for k, v in p.items() if k != "about"}, "backends": [r["backend"] for r in rows]}
    title = "ViT on Fashion-MNIST, every backend"
    paths = common.write_outputs(out, "vit_fmnist", title, env, config, rows, sections,
                                 (lambda path: _plot(rows, path, f"{title} (preset {preset})")) if plot else None,
                                 extra={"status": status or {},
                                        "runs": common.run_records([*jobs, *timing_jobs], store)})
    print("\n" + common.text_table(["backend", "test acc", "seeds", "params", "epoch s", "img/s", "peak mem",
                                    "epoch s (grid)", "status"], table))
    return paths


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_grid_arguments(p, PRESETS, "cpu", "runs/bench/vit_fmnist")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")


def run(args: argparse.Namespace) -> int:
    from ea_zoo.train.runs import RunStore

    p = copy.deepcopy(PRESETS[args.preset])
    if args.epochs:
        p["epochs"] = int(args.epochs)
    backends = common.parse_backends(args.backends, causal=False)
    seeds = common.parse_seeds(args.seeds if args.seeds is not None else p["seeds"])
    out = Path(args.out)
    root = str(Path(args.data_root).resolve()) if args.data_root else None
    jobs = build_jobs(p, backends, seeds, args.device, root)
    timing_jobs = build_timing_jobs(p, backends, args.device, root)
    store = RunStore(common.store_root_of(args))
    return common.run_grid(
        args, "vit_fmnist", jobs, timing_jobs=timing_jobs, desc="vit",
        report=lambda env, status: write_report(jobs, timing_jobs, store, p, args.preset, out, env,
                                                not args.no_plot, status))
