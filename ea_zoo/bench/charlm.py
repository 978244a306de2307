"""``ea-zoo charlm``: character-level language modelling on Tiny Shakespeare, every causal backend.

The corpus is :func:`ea_zoo.data.shakespeare.load_shakespeare` (nanoGPT's ``shakespeare_char``:
first 90% of the characters train, last 10% validate, 65 characters, SHA-256 checked). The
model is ``ea_zoo.create_model("lm", attention=<spec>, vocab_size=65, ...)``: a causal
decoder, pre-LN, learned positions, tied input/output embedding (as nanoGPT's GPT);
AFT-full/local get ``max_len`` = the context length from the model builder.

The CPU preset is the CPU recipe of nanoGPT's README (4 layers, 4 heads, width 128, context
64, batch 12, 2000 iterations, dropout 0; AdamW lr 1e-3 with betas 0.9/0.99 and weight decay
0.1, 100 warm-up iterations, cosine to 1e-4, gradient clip 1; nanoGPT reports validation loss
about 1.88 for softmax attention), the same for every backend. Seeds: ``--main-seeds`` (3) for
the ``--main-backends`` (SA, EA-2, EA-6), ``--seeds`` (1) for the others.

Per run: the validation loss over the whole validation split (non-overlapping windows of the
context length; nats per character), the final training loss (mean of the last 50
iterations), and a sample of ``sample_chars`` (500) characters (prompt "\\n", temperature 0.8,
top-k 200, the context cropped to the training context as nanoGPT's ``sample.py``), written to
``<out>/samples/``.

Timing columns come from ``--timing-only`` (run it alone on an idle machine): training tokens/s
(median of timed iterations at the recipe's batch and context) and decoding ms per generated
token through ``model.step`` (batch 1) at contexts 64, 1024 and 8192 (the state is built by
``model.prefill`` of random tokens in chunks, then ``timing_steps`` steps are timed; median),
with the decoding state's bytes at each context. A context whose prefill is projected to take
longer than ``max_prefill_s`` (300 s on the CPU preset; full ``ea``'s blocked prefill against a
cache is the one that hits it) is recorded as skipped, with the larger ones. The timing model is the trained architecture
(fresh weights: cost does not depend on them) with ``max_len`` (the learned position table and
AFT's position biases) raised to cover 8192.

    ea-zoo charlm --preset cpu --jobs 2 --out benchmarks/results/charlm_cpu
    ea-zoo charlm --preset cpu --timing-only --out benchmarks/results/charlm_cpu     # idle machine
    ea-zoo charlm --preset paper --device cuda          # nanoGPT's GPU recipe (6x384, context 256)
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

PRESETS: Dict[str, Dict[str, Any]] = {
    "smoke": dict(about="seconds (tests)", depth=1, num_heads=2, embed_dim=16, mlp_ratio=4.0, context=16,
                  batch_size=4, iters=8, lr=1e-3, min_lr=1e-4, warmup=2, weight_decay=0.1, betas=[0.9, 0.99],
                  grad_clip=1.0, dropout=0.0, val_limit=2000, sample_chars=40, seeds=1, main_seeds=1,
                  decode_contexts=[16, 64], timing_steps=3, timing_iters=3, max_prefill_s=60),
    "cpu": dict(about="nanoGPT's CPU recipe: 4 layers, 4 heads, D 128, context 64, batch 12, 2000 iterations",
                depth=4, num_heads=4, embed_dim=128, mlp_ratio=4.0, context=64, batch_size=12, iters=2000, lr=1e-3,
                min_lr=1e-4, warmup=100, weight_decay=0.1, betas=[0.9, 0.99], grad_clip=1.0, dropout=0.0,
                val_limit=None, sample_chars=500, seeds=1, main_seeds=3, decode_contexts=[64, 1024, 8192],
                timing_steps=16, timing_iters=20, max_prefill_s=300),
    "paper": dict(about="nanoGPT's GPU recipe: 6 layers, 6 heads, D 384, context 256, batch 64, 5000 iterations, "
                        "dropout 0.2 (reported ~1.47)",
                  depth=6, num_heads=6, embed_dim=384, mlp_ratio=4.0, context=256, batch_size=64, iters=5000, lr=1e-3,
                  min_lr=1e-4, warmup=100, weight_decay=0.1, betas=[0.9, 0.99], grad_clip=1.0, dropout=0.2,
                  val_limit=None, sample_chars=500, seeds=3, main_seeds=3, decode_contexts=[256, 1024, 8192, 32768],
                  timing_steps=32, timing_iters=50, max_prefill_s=900),
}
PRESETS["gpu"] = PRESETS["paper"]

#: the issue's "3 seeds for SA, EA-2, EA-6" default
MAIN_BACKENDS = "sa,ea2,ea6"


def _model_cfg(p: Dict[str, Any], max_len: int) -> Dict[str, Any]:
    return {"name": "lm", "embed_dim": p["embed_dim"], "depth": p["depth"], "num_heads": p["num_heads"],
            "mlp_ratio": p["mlp_ratio"], "dropout": p["dropout"], "norm_first": True, "tie_weights": True,
            "pos_embed": "learned", "max_len": int(max_len)}


def _data_cfg(p, data_root, verify) -> Dict[str, Any]:
    return {"dataset": "tinyshakespeare", "root": data_root, "verify": bool(verify), "val_fraction": 0.1,
            "val_limit": p["val_limit"]}


def _train_cfg(p) -> Dict[str, Any]:
    return {k: p[k] for k in ("context", "batch_size", "iters", "lr", "min_lr", "warmup", "weight_decay", "betas",
                              "grad_clip")}


def build_jobs(p, backends, seeds_for, device, data_root=None, verify=True) -> List[common.Job]:
    """One job per (backend, seed); ``seeds_for(backend)`` gives the seeds."""
    jobs = []
    per = {b: list(seeds_for(b)) for b in backends}
    # seed-major: a grid stopped early has every backend at its first seed
    for k in range(max((len(v) for v in per.values()), default=0)):
        for b in backends:
            if k >= len(per[b]):
                continue
            s = per[b][k]
            cfg = {"bench": "charlm", "kind": "train", "recipe": RECIPE_VERSION, "device": device, "attention": b,
                   "seed": int(s), "data": _data_cfg(p, data_root, verify), "model": _model_cfg(p, p["context"]),
                   "train": _train_cfg(p), "sample": {"chars": p["sample_chars"], "temperature": 0.8, "top_k": 200,
                                                      "prompt": "\n"}}
            jobs.append(common.Job(cfg, f"{common.backend_label(b)}_s{s}", {"backend": b, "seed": s}))
    return jobs


def build_timing_jobs(p, backends, device, data_root=None, verify=True) -> List[common.Job]:
    jobs = []
    for b in backends:
        cfg = {"bench": "charlm", "kind": "timing", "recipe": RECIPE_VERSION, "device": device, "attention": b,
               "data": _data_cfg(p, data_root, verify), "model": _model_cfg(p, p["context"]), "train": _train_cfg(p),
               "decode_contexts": list(p["decode_contexts"]), "timing_steps": p["timing_steps"],
               "timing_iters": p["timing_iters"], "max_prefill_s": p["max_prefill_s"]}
        jobs.append(common.Job(cfg, f"timing_{common.backend_label(b)}", {"backend": b}))
    return jobs


# ----------------------------------------------------------------------------- pieces
@lru_cache(maxsize=2)
def corpus(root: Optional[str], verify: bool, val_fraction: float = 0.1):
    from ea_zoo.data.shakespeare import load_shakespeare

    return load_shakespeare(root, verify=verify, val_fraction=val_fraction)


def _corpus(cfg):
    d = cfg["data"]
    return corpus(d["root"], bool(d["verify"]), float(d["val_fraction"]))


def build_model(cfg: Dict[str, Any], vocab_size: int, max_len: Optional[int] = None) -> torch.nn.Module:
    from ea_zoo.models import create_model

    m = dict(cfg["model"])
    name = m.pop("name")
    if max_len is not None:
        m["max_len"] = int(max_len)
    return create_model(name, attention=cfg["attention"], vocab_size=vocab_size, task="lm", causal=True, **m)


def get_batch(data: torch.Tensor, ctx: int, bs: int, gen: torch.Generator):
    ix = torch.randint(0, len(data) - ctx - 1, (bs,), generator=gen)
    idx = ix[:, None] + torch.arange(ctx + 1)
    w = data[idx]
    return w[:, :-1], w[:, 1:]


@torch.no_grad()
def val_loss(model: torch.nn.Module, data: torch.Tensor, ctx: int, device, limit: Optional[int] = None,
             batch_size: int = 64) -> float:
    """Mean next-character loss over non-overlapping windows of ``ctx`` covering ``data``."""
    model.eval()
    if limit:
        data = data[:limit]
    n = (len(data) - 1) // ctx
    x = data[: n * ctx].view(n, ctx)
    y = data[1: n * ctx + 1].view(n, ctx)
    tot = 0.0
    for i in range(0, n, batch_size):
        logits = model(x[i:i + batch_size].to(device)).float()
        tot += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i:i + batch_size].reshape(-1).to(device),
                                     reduction="sum"))
    model.train()
    return tot / (n * ctx)


@torch.no_grad()
def sample(model: torch.nn.Module, prompt: torch.Tensor, n: int, ctx: int, temperature: float, top_k: int,
           gen: torch.Generator, device) -> torch.Tensor:
    """nanoGPT's sampling: crop to the last ``ctx`` tokens, temperature, top-k; (P,) -> (P + n,)."""
    model.eval()
    seq = prompt.clone()
    for _ in range(n):
        logits = model(seq[-ctx:][None].to(device))[0, -1].float().cpu() / temperature
        if top_k and top_k < logits.numel():
            v, _ = torch.topk(logits, top_k)
            logits[logits < v[-1]] = -float("inf")
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        seq = torch.cat([seq, nxt])
    model.train()
    return seq


class _Trainer:
    def __init__(self, cfg, vocab: int, seed: int) -> None:
        self.tc = cfg["train"]
        self.dev = torch.device(cfg["device"])
        torch.manual_seed(seed)
        self.model = build_model(cfg, vocab).to(self.dev)
        self.opt = common.make_adamw(self.model, self.tc["lr"], self.tc["weight_decay"], self.tc["betas"])
        self.gen = torch.Generator().manual_seed(seed)
        self.it = 0

    def step(self, x, y) -> float:
        tc = self.tc
        common.set_lr(self.opt, common.lr_at(self.it, int(tc["iters"]), int(tc["warmup"]), float(tc["lr"]),
                                             float(tc["min_lr"])))
        logits = self.model(x.to(self.dev))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1).to(self.dev))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(tc["grad_clip"]))
        self.opt.step()
        self.it += 1
        return loss.item()


def train_run(cfg: Dict[str, Any], run_dir: Path, progress: bool = False) -> Dict[str, Any]:
    from tqdm.auto import tqdm

    cp = _corpus(cfg)
    tc = cfg["train"]
    seed = int(cfg["seed"])
    tr = _Trainer(cfg, cp.vocab_size, seed)
    ctx, bs, iters = int(tc["context"]), int(tc["batch_size"]), int(tc["iters"])
    bar = tqdm(total=iters, desc=f"charlm {common.backend_label(cfg['attention'])} s{seed}", disable=not progress,
               leave=False, dynamic_ncols=True)
    losses: List[float] = []
    log = Path(run_dir) / "train_log.txt"
    log.write_text("")
    t0 = time.perf_counter()
    diverged = False
    for it in range(iters):
        x, y = get_batch(cp.train, ctx, bs, tr.gen)
        lv = tr.step(x, y)
        if not math.isfinite(lv):
            diverged = True
            break
        losses.append(lv)
        bar.update(1)
        if (it + 1) % 100 == 0:
            m = statistics.fmean(losses[-100:])
            bar.set_postfix_str(f"loss {m:.3f}", refresh=False)
            with open(log, "a") as f:
                f.write(f"iter {it + 1} train_loss(last 100) {m:.4f} elapsed {time.perf_counter() - t0:.1f}s\n")
    bar.close()
    train_s = time.perf_counter() - t0
    vl = val_loss(tr.model, cp.val, ctx, tr.dev, cfg["data"]["val_limit"]) if not diverged else None
    sc = cfg["sample"]
    g = torch.Generator().manual_seed(1337 + seed)
    text = None
    if not diverged:
        ids = sample(tr.model, cp.encode(sc["prompt"]), int(sc["chars"]), ctx, float(sc["temperature"]),
                     int(sc["top_k"]), g, tr.dev)
        text = cp.decode(ids)
        (Path(run_dir) / "sample.txt").write_text(text)
    final = losses[-50:]
    return {"val_loss": vl, "final_train_loss": statistics.fmean(final) if final else None, "diverged": diverged,
            "iters": len(losses), "train_s": train_s, "tokens_per_s_under_load": len(losses) * bs * ctx / train_s,
            "params": common.params_of(tr.model), "vocab_size": cp.vocab_size, "sample": text,
            "val_chars": len(cp.val) if not cfg["data"]["val_limit"] else cfg["data"]["val_limit"]}


def timing_run(cfg: Dict[str, Any], run_dir: Path, progress: bool = False) -> Dict[str, Any]:
    """Training tokens/s and decoding ms/token through ``step`` at each context."""
    from ea_zoo.analysis.memory import tensor_bytes
    from ea_zoo.analysis.speed import synchronize

    cp = _corpus(cfg)
    tc = cfg["train"]
    ctx, bs = int(tc["context"]), int(tc["batch_size"])
    tr = _Trainer(cfg, cp.vocab_size, 0)
    gen = torch.Generator().manual_seed(0)
    batches = [get_batch(cp.train, ctx, bs, gen) for _ in range(4)]
    for i in range(3):
        tr.step(*batches[i % 4])
    times = []
    for i in range(int(cfg["timing_iters"])):
        synchronize(tr.dev)
        t0 = time.perf_counter()
        tr.step(*batches[i % 4])
        synchronize(tr.dev)
        times.append(time.perf_counter() - t0)
    it_s = statistics.median(times)
    del tr
    contexts = sorted(int(c) for c in cfg["decode_contexts"])
    n_steps = int(cfg["timing_steps"])
    torch.manual_seed(0)
    model = build_model(cfg, cp.vocab_size, max_len=max(contexts) + n_steps + 2).to(torch.device(cfg["device"]))
    model.eval()
    dev = torch.device(cfg["device"])
    decode: Dict[str, Any] = {}
    budget = float(cfg.get("max_prefill_s") or math.inf)
    skip_from = None
    with torch.no_grad():
        for C in contexts:
            if skip_from is not None:
                decode[str(C)] = {"skipped": f"prefill too slow (given up at context {skip_from})"}
                continue
            ids = torch.randint(0, cp.vocab_size, (1, C), generator=gen).to(dev)
            state = model.init_state(1)
            logits = None
            t0 = time.perf_counter()
            too_slow = None
            for a in range(0, C, 1024):
                tc0 = time.perf_counter()
                logits, state = model.prefill(ids[:, a:a + 1024], state)
                spent, last = time.perf_counter() - t0, time.perf_counter() - tc0
                left = len(range(a + 1024, C, 1024))
                if left and spent + last * left > budget:  # chunks cost at least as much as the last one
                    too_slow = f"prefill to {C} tokens projected > {spent + last * left:.0f} s (budget {budget:.0f} s)"
                    break
            if too_slow:
                decode[str(C)] = {"skipped": too_slow}
                skip_from = C
                continue
            prefill_s = time.perf_counter() - t0
            tok = logits[:, -1].argmax(-1)
            st = []
            for _ in range(n_steps):
                synchronize(dev)
                t0 = time.perf_counter()
                logits, state = model.step(tok, state)
                tok = logits.argmax(-1)
                synchronize(dev)
                st.append(time.perf_counter() - t0)
            decode[str(C)] = {"ms_per_token": 1000 * statistics.median(st), "ms_all": [1000 * s for s in st],
                              "state_bytes": int(tensor_bytes(state)), "state_numel_declared": int(model.state_numel(C)),
                              "prefill_s": prefill_s}
    return {"train_iter_s": it_s, "train_tokens_per_s": bs * ctx / it_s, "train_iter_s_all": times,
            "decode": decode, "decode_batch_size": 1}


# ----------------------------------------------------------------------------- report
def collect(jobs, timing_jobs, store, contexts) -> List[Dict[str, Any]]:
    labels = list(dict.fromkeys(common.backend_label(j.meta["backend"]) for j in jobs + list(timing_jobs)))
    timing = {common.backend_label(j.meta["backend"]): store.load(j.cfg) for j in timing_jobs}
    rows = []
    for b in labels:
        rs = [(j, store.load(j.cfg)) for j in jobs if common.backend_label(j.meta["backend"]) == b]
        done = [(j, r) for j, r in rs if r]
        m, s, n = common.mean_std(r.get("val_loss") for _, r in done)
        t = timing.get(b) or {}
        row: Dict[str, Any] = {
            "backend": b, "val_loss_mean": m, "val_loss_std": s, "n_seeds": n, "seeds_planned": len(rs),
            "val_loss_values": [r.get("val_loss") for _, r in done],
            "final_train_loss_mean": common.mean_std(r.get("final_train_loss") for _, r in done)[0],
            "params": done[0][1]["params"] if done else None,
            "cpu_s_per_run": common.mean_std(r.get("cpu_s") for _, r in done)[0],
            "train_tokens_per_s": t.get("train_tokens_per_s"),
            "tokens_per_s_under_load": common.mean_std(r.get("tokens_per_s_under_load") for _, r in done)[0],
            "samples": [f"samples/{b}_s{j.meta['seed']}.txt" for j, r in done if r.get("sample")],
            "timing_date": t.get("date"), "timing_load_average": t.get("load_average"),
            "status": "ok" if done and n == len(rs) else f"{n}/{len(rs)} seeds",
        }
        for C in contexts:
            dd = (t.get("decode") or {}).get(str(C), {})
            row[f"decode_ms_at_{C}"] = dd.get("ms_per_token")
            row[f"state_bytes_at_{C}"] = dd.get("state_bytes")
            if dd.get("skipped"):
                row[f"decode_skipped_at_{C}"] = dd["skipped"]
        rows.append(row)
    return rows


def _plot(rows, contexts, path: Path, title: str) -> None:
    plt = common.plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    labels = [r["backend"] for r in rows]
    x = list(range(len(rows)))
    colors = ["tab:red" if b == "sa" else ("tab:blue" if b.startswith("ea") else "tab:gray") for b in labels]
    vl = [r["val_loss_mean"] if r["val_loss_mean"] is not None else float("nan") for r in rows]
    axes[0].bar(x, vl, yerr=[r["val_loss_std"] or 0.0 for r in rows], color=colors, capsize=3)
    fin = [v for v in vl if math.isfinite(v)]
    if fin:
        axes[0].set_ylim(max(0.0, min(fin) - 0.15), max(fin) + 0.1)
    axes[0].axhline(1.88, color="k", lw=0.8, ls=":", label="nanoGPT CPU recipe, softmax (~1.88)")
    axes[0].legend(fontsize=7)
    axes[0].set_title("validation loss (nats/char, mean ± std)", fontsize=10)
    axes[1].bar(x, [r["train_tokens_per_s"] or float("nan") for r in rows], color=colors)
    axes[1].set_title("training tokens/s (--timing-only)", fontsize=10)
    for ax in axes[:2]:
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    markers = "osD^v<>ph*Xd+x"
    cmap = plt.get_cmap("tab20")
    for i, r in enumerate(rows):
        pts = [(C, r.get(f"decode_ms_at_{C}")) for C in contexts if r.get(f"decode_ms_at_{C}") is not None]
        if pts:
            axes[2].plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)],
                         color=cmap(i % 20), ls="--" if r["backend"] == "sa" else "-", label=r["backend"], ms=4)
    axes[2].set_xscale("log", base=2)
    axes[2].set_yscale("log")
    axes[2].set_xlabel("context (tokens already in the state)")
    axes[2].set_title("decode ms per token through step (batch 1, --timing-only)", fontsize=10)
    axes[2].grid(True, alpha=0.3)
    if axes[2].get_legend_handles_labels()[0]:
        axes[2].legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(jobs, timing_jobs, store, p, preset, out, env, plot, status=None):
    contexts = list(p["decode_contexts"])
    rows = collect(jobs, timing_jobs, store, contexts)
    # samples into the results folder
    sdir = Path(out) / "samples"
    for j in jobs:
        r = store.load(j.cfg)
        if r and r.get("sample"):
            sdir.mkdir(parents=True, exist_ok=True)
            (sdir / f"{common.backend_label(j.meta['backend'])}_s{j.meta['seed']}.txt").write_text(r["sample"])
    ms = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731

    def dec(r, C):
        if r.get(f"decode_skipped_at_{C}"):
            return "skipped"
        return ms(r.get(f"decode_ms_at_{C}"))

    table = []
    for r in rows:
        table.append([r["backend"], common.fmt_pm(r["val_loss_mean"], r["val_loss_std"], r["n_seeds"], 3),
                      r["n_seeds"], "-" if r["final_train_loss_mean"] is None else f"{r['final_train_loss_mean']:.3f}",
                      "-" if r["params"] is None else f"{r['params'] / 1e6:.3f}M",
                      "-" if r["train_tokens_per_s"] is None else f"{r['train_tokens_per_s']:.0f}",
                      *[dec(r, C) for C in contexts],
                      *[common.fmt_bytes(r.get(f"state_bytes_at_{C}")) for C in contexts[-1:]],
                      ", ".join(f"[s{Path(s).stem.rsplit('_s', 1)[1]}]({s})" for s in r["samples"]) or "-", r["status"]])
    headers = ["backend", "val loss", "seeds", "train loss", "params", "train tok/s",
               *[f"decode ms/tok @{C}" for C in contexts], f"state @{contexts[-1]}", "samples", "status"]
    notes = (f"Preset `{preset}`. Tiny Shakespeare (nanoGPT's split: first 90% train, last 10% validation; "
             f"{'the whole validation split' if not p['val_limit'] else str(p['val_limit']) + ' validation characters'} "
             f"in non-overlapping windows of {p['context']}). Model: causal `lm`, {p['depth']} layers, {p['num_heads']} "
             f"heads, width {p['embed_dim']}, FFN {p['mlp_ratio']:g}x, pre-LN, learned positions, tied embeddings, "
             f"dropout {p['dropout']}. Recipe (every backend; nanoGPT's): AdamW lr {p['lr']:g} (betas "
             f"{p['betas'][0]}/{p['betas'][1]}, weight decay {p['weight_decay']} on matrices), {p['warmup']} warm-up "
             f"iterations then cosine to {p['min_lr']:g}, {p['iters']} iterations of batch {p['batch_size']} x context "
             f"{p['context']}, gradient clip {p['grad_clip']}. nanoGPT reports validation loss ~1.88 for this recipe "
             f"with softmax attention (its model differs slightly: no biases, scaled init of the residual projections). Val loss: mean ± "
             f"sample std over seeds. Train loss: mean of the last 50 iterations. Samples: {p['sample_chars']} "
             f"characters from the prompt '\\n', temperature 0.8, top-k 200, context cropped to {p['context']}. "
             f"Timing columns (`--timing-only`, one run at a time): training tokens/s = median of "
             f"{p['timing_iters']} iterations; decode ms/token = median of {p['timing_steps']} `model.step` calls "
             f"(batch 1) after `prefill` of the context (random tokens, chunks of 1024); 'skipped' = the prefill "
             f"to that context was projected to take more than {p['max_prefill_s']} s; state = bytes of the "
             f"decoding state at the last context. '-' = not measured yet.")
    notes = " ".join(filter(None, [notes, common.cpu_impl_note((j.label, store.load(j.cfg)) for j in [*jobs, *timing_jobs])]))
    sections = [("Results", common.md_table(headers, table)), ("Setup", notes)]
    config = {"preset": preset, **{k: v for k, v in p.items() if k != "about"}, "backends": [r["backend"] for r in rows]}
    title = "Character-level LM on Tiny Shakespeare, every causal backend"
    paths = common.write_outputs(out, "charlm", title, env, config, rows, sections,
                                 (lambda path: _plot(rows, contexts, path, f"{title} (preset {preset})")) if plot else None,
                                 extra={"status": status or {},
                                        "runs": common.run_records([*jobs, *timing_jobs], store)})
    print("\n" + common.text_table(headers[:-2], [t[:-2] for t in table]))
    return paths


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_grid_arguments(p, PRESETS, "cpu", "runs/bench/charlm")
    p.add_argument("--main-backends", default=MAIN_BACKENDS,
                   help=f"backends that get --main-seeds seeds (default {MAIN_BACKENDS})")
    p.add_argument("--main-seeds", default=None, help="seeds of the main backends (default: the preset's, 3 on cpu)")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: the preset's)")
    p.add_argument("--download", action="store_true", help="download input.txt (nanoGPT's URL, SHA-256 checked) if missing")
    p.add_argument("--no-verify", action="store_true", help="accept a corpus whose SHA-256 is not Tiny Shakespeare's")


def run(args: argparse.Namespace) -> int:
    from ea_zoo.train.runs import RunStore

    p = copy.deepcopy(PRESETS[args.preset])
    if args.iters:
        p["iters"] = int(args.iters)
    backends = common.parse_backends(args.backends, causal=True)
    seeds = common.parse_seeds(args.seeds if args.seeds is not None else p["seeds"])
    main_seeds = common.parse_seeds(args.main_seeds if args.main_seeds is not None else p["main_seeds"])
    main = set(common.parse_backends(args.main_backends, causal=True)) if args.main_backends else set()
    seeds_for = lambda b: main_seeds if b in main else seeds  # noqa: E731
    out = Path(args.out)
    root = str(Path(args.data_root).resolve()) if args.data_root else None
    verify = not args.no_verify
    if args.download:
        from ea_zoo.data.shakespeare import load_shakespeare

        load_shakespeare(root, download=True, verify=verify)
    jobs = build_jobs(p, backends, seeds_for, args.device, root, verify)
    timing_jobs = build_timing_jobs(p, backends, args.device, root, verify)
    store = RunStore(common.store_root_of(args))
    return common.run_grid(
        args, "charlm", jobs, timing_jobs=timing_jobs,
        before=lambda: corpus(root, verify),  # a missing / wrong file fails here, before any run
        report=lambda env, status: write_report(jobs, timing_jobs, store, p, args.preset, out, env,
                                                not args.no_plot, status))
