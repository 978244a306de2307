"""``ea-zoo mqar``: multi-query associative recall vs decode-state size (Zoology; Based Fig. 2).

For every backend (causal), a 2-layer causal LM (``ea_zoo.create_model("lm", ...)``: pre-LN,
learned positions, tied embeddings, no dropout) is trained per model width (so per state size) and per
learning rate on the MQAR generator of :mod:`ea_zoo.data.mqar`: a mixture of the preset's
(sequence length, number of pairs) segments, loss on the query positions only, a new draw of
the training pool for every pass over it (seeded by the data seed and the pass, so no example
repeats). The CPU preset trains on 4 pairs (Zoology's basic example) and tests 4, 8 and
16: recall beyond the trained count is where a fixed-size state runs out. Training
stops early once the validation accuracy reaches ``early_stop_acc`` (it has converged); the
weights with the best validation accuracy are tested. As in Zoology, each (backend, width)
reports its best learning rate, chosen here on a validation set (a separately seeded draw),
not on the test set.

Reported (``--out``): ``mqar.json`` / ``mqar.csv`` (one row per run, plus the best-per-width
rows), ``mqar.md`` (tables: accuracy and state size per width; accuracy per number of pairs
at ``--fixed-width``), ``mqar.png`` ((a) test accuracy vs decode-state bytes, log scale, one
curve per backend; (b) accuracy vs number of pairs at the fixed width).

Decode state = ``model.state_numel(L) * 4`` bytes (float32 state, all layers, one sequence)
after L = the longest test sequence: the KV cache of SA / full EA / AFT-full grows with L, the
recurrent states do not.

    ea-zoo mqar --preset cpu --jobs 2 --out benchmarks/results/mqar_cpu
    ea-zoo mqar --preset paper --device cuda            # Zoology's sizes
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ea_zoo.bench import common

__all__ = ["PRESETS", "headline_metric", "build_jobs", "train_run", "collect", "add_arguments", "run"]

RECIPE_VERSION = 1

#: segments are [seq_len, num_pairs, num_examples]
PRESETS: Dict[str, Dict[str, Any]] = {
    "smoke": dict(
        about="seconds (tests)",
        vocab_size=64, alpha=0.01, train=[[16, 2, 256], [16, 4, 256]], val=[[16, 2, 32], [16, 4, 32]],
        test=[[16, 2, 64], [16, 4, 64]], widths=[16], lrs=[3e-3], depth=2, num_heads=1, mlp_ratio=2.0, short_conv=4,
        steps=12, batch_size=32, warmup=2, weight_decay=0.1, grad_clip=1.0, eval_every=6, early_stop_acc=0.99,
        seeds=1, fixed_width=16),
    # sized by pilots on this 2-core machine (one thread per run). Without a short convolution SA at width 64
    # stayed on the "set of values" plateau (accuracy 1/P) for ~1300 steps at lr 3e-3 and reached 0.975 by
    # step 1900 (at lr 1e-3 / 1e-2, or on a P 4/8/16 mixture, not by step 3000); the grid would have cost
    # ~15 CPU-hours. With a short causal convolution of 4 taps in front of every attention (as Based, H3 and
    # fla's use_short_conv) SA at width 64 passes validation 0.99 at step 800 (68 s); EA-6 rises to 0.78 by
    # step 1200 and stays there to 1500 (cosine schedule ends), so 1500 steps is the cap. At width 16 (256 tokens)
    # even SA reached only 0.22 validation accuracy in 1500 steps (EA-2 0.12), so the widths start at 32.
    # Zoology sweeps the learning rate per (backend, width) and reports the best; here a 3-point sweep
    # around the pilots' 3e-3 (a run is keyed by its own lr, so the grid can be finished one lr at a time).
    "cpu": dict(
        about="Zoology's basic MQAR (vocab 256, L 64), short conv 4: train 4 pairs, test 4/8/16; widths 32/64/128; "
              "lr sweep 1e-3/3e-3/1e-2",
        vocab_size=256, alpha=0.01,
        train=[[64, 4, 20000]], val=[[64, 4, 500]],
        test=[[64, 4, 1000], [64, 8, 1000], [64, 16, 1000]],
        widths=[32, 64, 128], lrs=[1e-3, 3e-3, 1e-2], depth=2, num_heads=1, mlp_ratio=2.0, short_conv=4,
        steps=1500, batch_size=64, warmup=100, weight_decay=0.1, grad_clip=1.0, eval_every=100,
        early_stop_acc=0.99, seeds=1, fixed_width=64),
    "paper": dict(
        about="Zoology / Based Fig. 2 sizes (vocab 8192, lengths 64-512; GPU)",
        vocab_size=8192, alpha=0.01,
        train=[[64, 4, 100000], [128, 8, 20000], [256, 16, 20000], [256, 32, 20000], [256, 64, 20000]],
        val=[[64, 4, 500], [64, 8, 500], [64, 16, 500], [128, 32, 500], [256, 64, 500]],
        test=[[64, 4, 1000], [64, 8, 1000], [64, 16, 1000], [128, 32, 1000], [256, 64, 1000],
              [512, 64, 1000], [512, 128, 1000], [512, 256, 1000]],
        widths=[64, 128, 256, 512], lrs=[4.6e-4, 1e-3, 2.2e-3, 4.6e-3, 1e-2], depth=2, num_heads=1, mlp_ratio=4.0,
        short_conv=0,
        steps=35000, batch_size=256, warmup=1000, weight_decay=0.1, grad_clip=1.0, eval_every=1000,
        early_stop_acc=0.995, seeds=1, fixed_width=128),
}
PRESETS["gpu"] = PRESETS["paper"]


# ----------------------------------------------------------------------------- runs
def _seg_name(seg: Sequence[int]) -> str:
    return f"L{seg[0]}_P{seg[1]}"


def _trained_seg(p: Dict[str, Any]) -> Optional[str]:
    """The test segment drawn like the training data (one train segment, also tested), or None."""
    names = [_seg_name(s) for s in p["test"]]
    return _seg_name(p["train"][0]) if len(p["train"]) == 1 and _seg_name(p["train"][0]) in names else None


def headline_metric(p: Dict[str, Any]) -> Tuple[str, str]:
    """(row key, label) of the headline accuracy: on the trained segment when tested, else overall."""
    seg = _trained_seg(p)
    if seg is None:
        return "test_acc", "test accuracy"
    return f"test_{seg}", f"test accuracy at the trained {seg.replace('_', ' ')}"


def build_jobs(p: Dict[str, Any], backends: Sequence[str], seeds: Sequence[int], device: str) -> List[common.Job]:
    """One job per (width, backend, lr, seed), in that order."""
    max_len = max(s[0] for s in p["train"] + p["val"] + p["test"])
    jobs = []
    # width-major: a grid stopped early has every backend at the small widths
    for w in p["widths"]:
        for b in backends:
            for lr in p["lrs"]:
                for seed in seeds:
                    cfg = {
                        "bench": "mqar", "recipe": RECIPE_VERSION, "device": device, "seed": int(seed),
                        "attention": b,
                        "data": {"vocab_size": p["vocab_size"], "alpha": p["alpha"], "train": p["train"],
                                 "val": p["val"], "test": p["test"], "data_seed": 0, "fresh_train": True},
                        "model": {"name": "lm", "embed_dim": int(w), "depth": p["depth"], "num_heads": p["num_heads"],
                                  "mlp_ratio": p["mlp_ratio"], "dropout": 0.0, "norm_first": True,
                                  "pos_embed": "learned", "max_len": max_len, "tie_weights": True,
                                  "short_conv": int(p["short_conv"])},
                        "train": {"lr": float(lr), "steps": p["steps"], "batch_size": p["batch_size"],
                                  "warmup": p["warmup"], "weight_decay": p["weight_decay"], "betas": [0.9, 0.98],
                                  "grad_clip": p["grad_clip"], "eval_every": p["eval_every"],
                                  "early_stop_acc": p["early_stop_acc"]},
                    }
                    label = f"{common.backend_label(b)}_w{w}_lr{lr:g}_s{seed}"
                    jobs.append(common.Job(cfg, label, {"backend": b, "width": w, "lr": lr, "seed": seed}))
    return jobs


@lru_cache(maxsize=4)
def _data(vocab: int, alpha: float, segs: Tuple[Tuple[int, int, int], ...], seed: int):
    """{seq_len: MQARData}: each (length, pairs, examples) segment drawn with its own seed
    (``seed * 100 + i``), segments of one length concatenated and shuffled."""
    from ea_zoo.data.mqar import MQARData, multiquery_ar

    by_len: Dict[int, List[Any]] = {}
    for i, (L, P, N) in enumerate(segs):
        by_len.setdefault(int(L), []).append(multiquery_ar(vocab, int(L), int(P), alpha, int(N), seed * 100 + i))
    out = {}
    for L, parts in sorted(by_len.items()):
        n = sum(len(d) for d in parts)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100 + L))
        out[L] = MQARData(torch.cat([d.inputs for d in parts])[perm], torch.cat([d.labels for d in parts])[perm],
                          torch.cat([d.num_pairs for d in parts])[perm],
                          {"seq_len": L, "segments": [d.params for d in parts]})
    return out


def _segments(cfg_segs) -> Tuple[Tuple[int, int, int], ...]:
    return tuple(tuple(int(v) for v in s) for s in cfg_segs)


def build_model(cfg: Dict[str, Any]) -> torch.nn.Module:
    from ea_zoo.models import create_model

    m = dict(cfg["model"])
    name = m.pop("name")
    return create_model(name, attention=cfg["attention"], vocab_size=cfg["data"]["vocab_size"], causal=True,
                        task="lm", **m)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Dict[int, Any], device, batch_size: int = 256) -> Dict[str, Any]:
    """Overall accuracy on the query positions and per (length, pairs) segment."""
    model.eval()
    correct: Dict[Tuple[int, int], int] = {}
    total: Dict[Tuple[int, int], int] = {}
    loss_sum, n_lab = 0.0, 0
    for L, d in data.items():
        for i in range(0, len(d), batch_size):
            x = d.inputs[i:i + batch_size].to(device)
            y = d.labels[i:i + batch_size].to(device)
            pairs = d.num_pairs[i:i + batch_size]
            logits = model(x).float()
            mask = y != -100
            loss_sum += float(F.cross_entropy(logits[mask], y[mask], reduction="sum"))
            n_lab += int(mask.sum())
            hit = (logits.argmax(-1) == y) & mask
            for P in pairs.unique().tolist():
                sel = (pairs == P).to(device)
                key = (L, int(P))
                correct[key] = correct.get(key, 0) + int(hit[sel].sum())
                total[key] = total.get(key, 0) + int(mask[sel].sum())
    model.train()
    seg = {f"L{L}_P{P}": correct[(L, P)] / total[(L, P)] for (L, P) in sorted(total)}
    return {"acc": sum(correct.values()) / max(1, sum(total.values())), "loss": loss_sum / max(1, n_lab),
            "segments": seg}


def train_run(cfg: Dict[str, Any], run_dir: Path, progress: bool = False) -> Dict[str, Any]:
    """Train and test one MQAR model; returns the result record's metrics."""
    from tqdm.auto import tqdm

    dev = torch.device(cfg["device"])
    dc, tc = cfg["data"], cfg["train"]
    ds = int(dc["data_seed"])
    vocab, alpha, tsegs = dc["vocab_size"], float(dc["alpha"]), _segments(dc["train"])
    val = _data(vocab, alpha, _segments(dc["val"]), 3 * ds + 1)
    test = _data(vocab, alpha, _segments(dc["test"]), 3 * ds + 2)
    pool_n = sum(s[2] for s in tsegs)
    fresh = bool(dc.get("fresh_train", True))

    def pool(e: int):
        # training pass e draws a new pool (seeded by data_seed and e) unless fresh_train is off
        return _data(vocab, alpha, tsegs, 3 * ds if not fresh or e == 0 else 1000 + 1000 * ds + e)

    torch.manual_seed(int(cfg["seed"]))
    model = build_model(cfg).to(dev)
    opt = common.make_adamw(model, tc["lr"], tc["weight_decay"], tc["betas"])
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    steps, bs = int(tc["steps"]), int(tc["batch_size"])
    losses: List[float] = []
    history: List[Dict[str, Any]] = []
    best = (-1.0, None, 0)
    model.train()
    bar = tqdm(total=steps, desc=f"mqar {common.backend_label(cfg['attention'])} w{cfg['model']['embed_dim']}",
               disable=not progress, leave=False, dynamic_ncols=True)
    log = Path(run_dir) / "train_log.txt"
    log.write_text("")
    step = 0
    t_train = 0.0
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        train = pool(((step - 1) * bs) // pool_n)
        lens = sorted(train)
        if len(lens) > 1:
            sizes = torch.tensor([len(train[L]) for L in lens], dtype=torch.float)
            L = lens[int(torch.multinomial(sizes, 1, generator=gen))]
        else:
            L = lens[0]
        d = train[L]
        idx = torch.randint(0, len(d), (bs,), generator=gen)
        x, y = d.inputs[idx].to(dev), d.labels[idx].to(dev)
        common.set_lr(opt, common.lr_at(step - 1, steps, int(tc["warmup"]), float(tc["lr"])))
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc["grad_clip"]))
        opt.step()
        t_train += time.perf_counter() - t0
        lv = loss.item()
        if not math.isfinite(lv):
            history.append({"step": step, "train_loss": lv, "diverged": True})
            break
        losses.append(lv)
        bar.update(1)
        if step % int(tc["eval_every"]) == 0 or step == steps:
            ev = evaluate(model, val, dev)
            history.append({"step": step, "train_loss": sum(losses[-20:]) / len(losses[-20:]), "val_acc": ev["acc"],
                            "train_s": round(t_train, 2)})
            with open(log, "a") as f:
                f.write(f"{history[-1]}\n")
            bar.set_postfix_str(f"loss {history[-1]['train_loss']:.3f} val {ev['acc']:.3f}", refresh=False)
            if ev["acc"] > best[0]:
                best = (ev["acc"], copy.deepcopy(model.state_dict()), step)
            if ev["acc"] >= float(tc["early_stop_acc"]):
                break
    bar.close()
    if best[1] is not None:
        model.load_state_dict(best[1])
    ev_test = evaluate(model, test, dev)
    max_len = max(test)
    final = losses[-20:]
    return {
        "test_acc": ev_test["acc"], "test_segments": ev_test["segments"], "test_loss": ev_test["loss"],
        "val_acc": best[0] if best[0] >= 0 else None, "best_step": best[2], "steps_run": step,
        "final_train_loss": (sum(final) / len(final)) if final else None,
        "diverged": bool(history and history[-1].get("diverged")),
        "train_s": t_train, "state_len": max_len,
        "state_numel": int(model.state_numel(max_len)), "state_bytes": int(model.state_numel(max_len)) * 4,
        "params": common.params_of(model), "history": history,
    }


# ----------------------------------------------------------------------------- report
def legacy_run_config(report: Dict[str, Any], row: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The resolved config of a run row of a report written before rows carried their config
    hash: rebuilt from the report's preset block and the row's (spec, width, lr, seed, device)."""
    try:
        p = {**report["config"], "widths": [int(row["width"])], "lrs": [float(row["lr"])]}
        return build_jobs(p, [row["spec"]], [int(row["seed"])], row.get("device") or "cpu")[0].cfg
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def collect(jobs: Sequence[common.Job], store) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(run rows, best-per-(backend, width) rows); a best row averages seeds of the lr with the
    highest mean validation accuracy."""
    runs = []
    for j in jobs:
        r = store.load(j.cfg)
        row = {"backend": common.backend_label(j.meta["backend"]), "spec": j.meta["backend"], "width": j.meta["width"],
               "lr": j.meta["lr"], "seed": j.meta["seed"], "status": "ok" if r else "not run"}
        if r:
            row.update({k: r.get(k) for k in ("val_acc", "test_acc", "test_loss", "final_train_loss", "steps_run",
                                               "best_step", "state_bytes", "state_numel", "params", "wall_s", "cpu_s",
                                               "train_s", "diverged", "device", "date", "git_commit",
                                               "config_hash")})
            row.update({f"test_{k}": v for k, v in (r.get("test_segments") or {}).items()})
        runs.append(row)
    best = []
    keys = []
    for r in runs:
        k = (r["backend"], r["width"])
        if k not in keys:
            keys.append(k)
    for b, w in keys:
        cand = [r for r in runs if r["backend"] == b and r["width"] == w and r["status"] == "ok"]
        by_lr: Dict[float, List[Dict[str, Any]]] = {}
        for r in cand:
            by_lr.setdefault(r["lr"], []).append(r)
        n_lrs = len({r["lr"] for r in runs if r["backend"] == b and r["width"] == w})
        row: Dict[str, Any] = {"backend": b, "width": w, "status": "not run"}
        if by_lr:
            lr, rs = max(by_lr.items(), key=lambda kv: common.mean_std(x["val_acc"] for x in kv[1])[0] or -1.0)
            m, s, n = common.mean_std(x["test_acc"] for x in rs)
            row = {"backend": b, "width": w, "best_lr": lr, "test_acc": m, "test_acc_std": s, "n_seeds": n,
                   "val_acc": common.mean_std(x["val_acc"] for x in rs)[0], "state_bytes": rs[0]["state_bytes"],
                   "params": rs[0]["params"], "lrs_done": len(by_lr), "lrs": n_lrs,
                   "status": "ok" if len(by_lr) == n_lrs else f"{len(by_lr)}/{n_lrs} lrs"}
            for seg in [k for k in rs[0] if k.startswith("test_L")]:
                row[seg] = common.mean_std(x.get(seg) for x in rs)[0]
        best.append(row)
    return runs, best


def _plot(best: List[Dict[str, Any]], p: Dict[str, Any], fixed_width: int, path: Path) -> None:
    plt = common.plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    labels = list(dict.fromkeys(r["backend"] for r in best))
    markers = "osD^v<>ph*Xd+x"
    cmap = plt.get_cmap("tab20")
    segs = [_seg_name(s) for s in p["test"]]
    key, what = headline_metric(p)
    for i, b in enumerate(labels):
        pts = sorted((r["state_bytes"], r[key]) for r in best if r["backend"] == b and r.get(key) is not None)
        style = dict(marker=markers[i % len(markers)], color=cmap(i % 20), linestyle="--" if b == "sa" else "-",
                     markersize=5, linewidth=1.3, label=b)
        if pts:
            axes[0].plot([q[0] for q in pts], [q[1] for q in pts], **style)
        row = next((r for r in best if r["backend"] == b and r["width"] == fixed_width and r.get("test_acc") is not None),
                   None)
        if row:
            xs = [s[1] for s in p["test"]]
            ys = [row.get(f"test_{s}") for s in segs]
            axes[1].plot(xs, ys, **style)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel(f"decode state (bytes, float32, all layers, after L={max(s[0] for s in p['test'])})")
    axes[0].set_ylabel(f"MQAR {what} (best lr per width)", fontsize=9)
    axes[0].set_title(f"(a) accuracy vs state size; widths {p['widths']}", fontsize=10)
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("key-value pairs in the test sequence")
    axes[1].set_title(f"(b) accuracy vs pairs at width {fixed_width} (L={', '.join(str(s[0]) for s in p['test'])})",
                      fontsize=9)
    for ax in axes:
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(jobs, store, p: Dict[str, Any], preset: str, out: Path, env: Dict[str, Any], plot: bool,
                 fixed_width: int, status: Optional[Dict[str, List[str]]] = None) -> List[Path]:
    runs, best = collect(jobs, store)
    labels = list(dict.fromkeys(r["backend"] for r in best))
    widths = p["widths"]
    get = {(r["backend"], r["width"]): r for r in best}
    key, what = headline_metric(p)
    t1 = []
    for b in labels:
        cells = []
        for w in widths:
            r = get.get((b, w), {})
            if r.get("test_acc") is None:
                cells.append("not run")
            else:
                head = (common.fmt_pm(r["test_acc"], r["test_acc_std"], r["n_seeds"]) if key == "test_acc"
                        else f"{r[key]:.3f} (all {r['test_acc']:.3f};")
                cells.append(f"{head} {'(' if key == 'test_acc' else ''}{common.fmt_bytes(r['state_bytes'])}, "
                             f"lr {r['best_lr']:g}" + ("" if r["status"] == "ok" else f", {r['status']}") + ")")
        t1.append([b, *cells])
    segs = [_seg_name(s) for s in p["test"]]
    t2 = []
    for b in labels:
        r = get.get((b, fixed_width), {})
        t2.append([b, *[("-" if r.get(f"test_{s}") is None else f"{r[f'test_{s}']:.3f}") for s in segs]])
    n_ok = sum(r["status"] == "ok" for r in runs)
    seg_txt = lambda segs_: ", ".join(f"{s[1]} pairs at L {s[0]} ({s[2]})" for s in segs_)  # noqa: E731
    notes = (f"Preset `{preset}`. Data: MQAR (ea_zoo.data.mqar; Zoology's generator: keys from the lower half of a "
             f"{p['vocab_size']}-token vocabulary, values from the upper half, queries at power-law gaps with alpha "
             f"{p['alpha']}, noise tokens elsewhere). Train: {seg_txt(p['train'])} examples; validation "
             f"{seg_txt(p['val'])}; test {seg_txt(p['test'])} (separately seeded draws). "
             f"Model: causal `lm`, {p['depth']} layers, {p['num_heads']} head(s), FFN {p['mlp_ratio']:g} x width, "
             f"pre-LN, learned positions, tied input/output embeddings (as Zoology), no dropout, "
             + (f"a short causal convolution of {p['short_conv']} taps in front of every attention (the same for "
                f"every backend; Based / H3 / fla's use_short_conv). " if p.get("short_conv") else
                "no short convolution. ")
             + f"Training: AdamW (betas 0.9/0.98, weight decay "
             f"{p['weight_decay']} on matrices), {p['warmup']} warm-up steps then cosine, at most {p['steps']} steps "
             f"of batch {p['batch_size']}, gradient clip {p['grad_clip']}, loss on the query positions; stops once "
             f"validation accuracy >= {p['early_stop_acc']} (checked every {p['eval_every']} steps); the "
             f"best-validation weights are tested. Learning rates {p['lrs']}: the best by mean validation accuracy "
             f"is reported per (backend, width), as Zoology reports the best of its sweep. Accuracy = fraction "
             f"of query positions whose value is predicted (argmax). Decode state = `model.state_numel(L) * 4` "
             f"bytes after L = {max(s[0] for s in p['test'])} tokens. {n_ok}/{len(runs)} runs finished.")
    notes = " ".join(filter(None, [notes, common.cpu_impl_note((j.label, store.load(j.cfg)) for j in jobs)]))
    sections = [
        (f"{what[0].upper() + what[1:]}, per width"
         + (" (in brackets: over all test segments; decode state; best lr)" if key != "test_acc"
            else " (decode state, best lr)"),
         common.md_table(["backend", *[f"width {w}" for w in widths]], t1)),
        (f"Test accuracy per number of pairs at width {fixed_width}",
         common.md_table(["backend", *[s.replace('_', ' ') for s in segs]], t2)),
        ("Setup", notes),
        ("All runs", common.md_table(
            ["backend", "width", "lr", "seed", "val acc", "test acc", "steps", "final train loss", "CPU s", "status"],
            [[r["backend"], r["width"], f"{r['lr']:g}", r["seed"], _f(r.get("val_acc")), _f(r.get("test_acc")),
              r.get("steps_run", "-"), _f(r.get("final_train_loss")), _f(r.get("cpu_s"), 0), r["status"]]
             for r in runs])),
    ]
    config = {"preset": preset, **{k: v for k, v in p.items() if k != "about"}, "backends": labels,
              "fixed_width": fixed_width}
    rows = [{"kind": "best", **r} for r in best] + [{"kind": "run", **r} for r in runs]
    paths = common.write_outputs(out, "mqar", "MQAR: associative recall vs decode-state size", env, config, rows,
                                 sections, (lambda path: _plot(best, p, fixed_width, path)) if plot else None,
                                 extra={"status": status or {}})
    print("\n" + common.text_table(["backend", *[f"w{w}" for w in widths]], t1))
    return paths


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}"


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_grid_arguments(p, PRESETS, "cpu", "runs/bench/mqar", timing=False)
    p.add_argument("--widths", default=None, help="comma-separated model widths (default: the preset's)")
    p.add_argument("--lrs", default=None, help="comma-separated learning rates (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the preset's)")
    p.add_argument("--fixed-width", type=int, default=None, help="width of the accuracy-vs-pairs table")


def preset_from_args(args) -> Dict[str, Any]:
    p = copy.deepcopy(PRESETS[args.preset])
    if args.widths:
        p["widths"] = [int(v) for v in args.widths.split(",") if v.strip()]
    if args.lrs:
        p["lrs"] = [float(v) for v in args.lrs.split(",") if v.strip()]
    if args.steps:
        p["steps"] = int(args.steps)
    return p


def run(args: argparse.Namespace) -> int:
    from ea_zoo.train.runs import RunStore

    p = preset_from_args(args)
    backends = common.parse_backends(args.backends, causal=True)
    seeds = common.parse_seeds(args.seeds if args.seeds is not None else p["seeds"])
    fixed_width = args.fixed_width or p["fixed_width"]
    if fixed_width not in p["widths"]:
        fixed_width = p["widths"][len(p["widths"]) // 2]
    out = Path(args.out)
    jobs = build_jobs(p, backends, seeds, args.device)
    store = RunStore(common.store_root_of(args))
    return common.run_grid(
        args, "mqar", jobs, rebuild=legacy_run_config,
        report=lambda env, status: write_report(jobs, store, p, args.preset, out, env, not args.no_plot,
                                                fixed_width, status))
