"""``ea-zoo complexity``: Table 1 of Feng 2025, measured.

For every attention backend, on the mixing step alone (``attend(q, k, v)`` on projected
heads (B, H, L, d): the part Table 1 is about; the q/k/v/output projections cost O(L D^2) for
every backend alike and are reported separately as "layer FLOPs"):

* **compute**: forward FLOPs counted by fvcore with our handles (:mod:`ea_zoo.analysis.flops`;
  1 FLOP per element-wise output, 2 M N K per matmul);
* **memory**: bytes autograd saves between forward and backward (the activation memory of
  training; :func:`ea_zoo.analysis.memory.saved_activation_bytes`), and on a GPU also the
  peak allocated over forward + backward;
* **inference**: the decoding state after L tokens, measured (numbers held in the state's
  tensors after stepping L tokens; the module's ``state_numel(L)`` is recorded beside it),
  plus the FLOPs and latency of decoding token L + 1;
* forward and forward + backward wall time.

Sweeps: L at fixed D, D at fixed L (fixed number of heads H, so the head width grows with D:
Table 1's setting), and the EA-series order t. Each measure's asymptotic exponent is the
log-log slope over the upper half of a sweep (:func:`ea_zoo.analysis.fit.tail_slope`);
it agrees with Table 1 when within ``--tolerance`` (0.25) of the claimed exponent. The t
factor is checked as a straight-line fit in t.

Outputs (``--out``): ``complexity.json`` (environment, config, every point, fits),
``complexity.csv`` (one row per point), ``complexity.md`` (the tables), ``complexity.png``
(L and D sweeps, log-log) and ``complexity_t.png`` (the t sweep).
"""
from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Mapping as _MappingABC
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ea_zoo.analysis import common, report
from ea_zoo.analysis.common import BackendSpec, parse_backend, sdpa_context
from ea_zoo.analysis.fit import linear_fit, tail_slope
from ea_zoo.analysis.flops import FLOP_CONVENTION, count_flops
from ea_zoo.analysis.memory import (
    cuda_peak_bytes,
    is_oom,
    peak_live_bytes,
    saved_activation_bytes,
    tensor_bytes,
    tensor_numel,
)
from ea_zoo.analysis.speed import time_call
from ea_zoo.registry import get_attention_cls, list_attentions

__all__ = [
    "CLAIMS",
    "TABLE1_EQUATIONS",
    "IMPLEMENTATION_CLAIMS",
    "claim_key",
    "PRESETS",
    "LayerStack",
    "BackendSpec",
    "parse_backend",
    "default_backends",
    "measure_parallel",
    "measure_decode",
    "run_sweeps",
    "fit_results",
    "add_arguments",
    "run",
]

# ---------------------------------------------------------------------------- Table 1 claims


@dataclass(frozen=True)
class Claim:
    """A complexity O(L^a D^b [t]) as text and as exponents."""

    text: str
    L: float
    D: float
    t: bool = False


@dataclass(frozen=True)
class ClaimRow:
    row: str  # "SA", "LA", "AFT", "EA-series" or a description
    source: str  # "Table 1" or where the expectation comes from
    compute: Claim
    memory: Claim
    inference: Claim


#: Table 1 of Feng 2025 (and, for backends it does not list, the complexity stated by the
#: backend's own paper / implementation docstring). Exponents of L and D; ``t``: linear in t.
CLAIMS: Dict[str, ClaimRow] = {
    "SA": ClaimRow("SA", "Table 1", Claim("O(L^2 D)", 2, 1), Claim("O(L^2)", 2, 0), Claim("O(LD)", 1, 1)),
    "LA": ClaimRow("LA", "Table 1", Claim("O(L D^2)", 1, 2), Claim("O(LD)", 1, 1), Claim("O(D^2)", 0, 2)),
    "AFT": ClaimRow("AFT", "Table 1", Claim("O(L^2 D)", 2, 1), Claim("O(LD)", 1, 1), Claim("O(LD)", 1, 1)),
    "EA-series": ClaimRow("EA-series", "Table 1", Claim("O(tLD)", 1, 1, True), Claim("O(tLD)", 1, 1, True),
                          Claim("O(tD)", 0, 1, True)),
    # not in Table 1: expectations from the backend's paper / our implementation's docstring
    "Hedgehog": ClaimRow("LA (Hedgehog map, F=2d)", "LA row; Zhang et al. 2024",
                         Claim("O(L D^2)", 1, 2), Claim("O(LD)", 1, 1), Claim("O(D^2)", 0, 2)),
    "Taylor": ClaimRow("LA (Based/Taylor map, F=1+d'+d'^2, d' fixed)", "Arora et al. 2024",
                       Claim("O(L D d'^2)", 1, 1), Claim("O(L d'^2)", 1, 0), Claim("O(D d'^2)", 0, 1)),
    "AFT-simple": ClaimRow("AFT-simple (w=0)", "Zhai et al. 2021", Claim("O(LD)", 1, 1), Claim("O(LD)", 1, 1),
                           Claim("O(D)", 0, 1)),
    "AFT-local": ClaimRow("AFT-local (window s)", "Zhai et al. 2021; dense parallel form",
                          Claim("O(L^2 D)", 2, 1), Claim("O(LD)", 1, 1), Claim("O(sD)", 0, 1)),
    "EA": ClaimRow("EA (full, eq. 2)", "Feng 2025 sec. 3.1; blocked reference",
                   Claim("O(L^2 D)", 2, 1), Claim("O(LD)", 1, 1), Claim("O(LD)", 1, 1)),
}

#: Table 1 row of each equation of Feng 2025: a backend whose ``paper_equation`` starts with
#: one of these is measured against that row
TABLE1_EQUATIONS: Dict[str, str] = {"17": "SA", "18": "LA", "19": "AFT", "5-6": "EA-series"}

#: backends whose implementation's complexity is not the Table 1 row of their equation (or that
#: Table 1 does not list): backend name -> CLAIMS key
IMPLEMENTATION_CLAIMS: Dict[str, str] = {
    "hedgehog": "Hedgehog", "taylor": "Taylor", "aft_simple": "AFT-simple", "aft_local": "AFT-local", "ea": "EA",
}


def claim_key(backend: str) -> Optional[str]:
    """The CLAIMS row a registered backend (or alias) is measured against: its implementation
    claim, else the Table 1 row of its ``paper_equation``, else None (no claim)."""
    try:
        cls = get_attention_cls(backend)
    except (ValueError, TypeError):
        return None
    name = cls.attention_name
    if name in IMPLEMENTATION_CLAIMS:
        return IMPLEMENTATION_CLAIMS[name]
    m = re.match(r"\s*([0-9]+(?:-[0-9]+)?)", getattr(cls, "paper_equation", "") or "")
    return TABLE1_EQUATIONS.get(m.group(1)) if m else None


class _BackendClaims(_MappingABC):
    """registered backend name -> claim row, read from the registry at each use."""

    def _table(self) -> Dict[str, str]:
        out = {}
        for n in list_attentions(include_aliases=False):
            key = claim_key(n)
            if key is not None:
                out[n] = key
        return out

    def __getitem__(self, name: str) -> str:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


#: registered backend name -> claim row (a live view: see :func:`claim_key`)
BACKEND_CLAIM = _BackendClaims()


# ---------------------------------------------------------------------------- presets

PRESETS: Dict[str, Dict[str, Any]] = {
    # a few seconds: tests
    "tiny": dict(batch=1, heads=2, dim=16, lengths=[16, 32, 64], length=32, dims=[8, 16, 32],
                 orders=[2, 4, 6], decode_max_len=64, warmup=0, repeat=1, max_seconds=5.0),
    # the default: under 2 minutes on a 2-core CPU
    "cpu": dict(batch=1, heads=4, dim=64, lengths=[64, 128, 256, 512], length=256,
                dims=[16, 32, 64, 128], orders=[2, 4, 6, 8], decode_max_len=512, warmup=1, repeat=2,
                max_seconds=10.0),
    # paper scale (BERT-base width, 12 heads); meant for --device cuda
    "paper": dict(batch=1, heads=12, dim=768, lengths=[512, 1024, 2048, 4096, 8192, 16384], length=4096,
                  dims=[192, 384, 768, 1536, 3072], orders=[2, 4, 6, 8, 10, 12], decode_max_len=4096,
                  warmup=3, repeat=10, max_seconds=60.0),
}

#: tolerance on a fitted exponent for "agrees with the claim"
DEFAULT_TOLERANCE = 0.25


# ---------------------------------------------------------------------------- backends

#: how the paper shows some backends by default: EA-series at its orders 2 and 6, softmax
#: attention also with the math SDPA kernel (the "no additional optimizations" softmax)
PAPER_VARIANTS: Dict[str, Tuple[str, ...]] = {"ea_series": ("ea2", "ea6"), "sa": ("sa", "sa[math]")}


def default_backends() -> List[BackendSpec]:
    """Every registered backend and alias (registry order), where :data:`PAPER_VARIANTS`
    names how the paper shows a backend (EA-series as EA-2 and EA-6; SA also as sa[math])."""
    labels: List[str] = []
    for n in list_attentions():
        base = get_attention_cls(n).attention_name
        for lab in PAPER_VARIANTS.get(base, (n,)):
            if lab not in labels:
                labels.append(lab)
    return [parse_backend(lab) for lab in labels]


_sdpa_context = sdpa_context  # the name train_cost / infer_cost used


class LayerStack(nn.Module):
    """The attention layers of a per-layer spec measured as one model (the cost tools' view of
    a hybrid): ``attend`` runs every layer's mixing on the same heads (outputs stacked, so
    nothing is added), ``forward`` / ``step`` run the layers in sequence, the decoding state
    is the list of the layers' states and ``state_numel`` their sum."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        first = self.layers[0]
        self.dim, self.num_heads, self.head_dim = first.dim, first.num_heads, first.head_dim
        self.supports_step = all(getattr(m, "supports_step", False) for m in self.layers)
        self.recurrent = all(getattr(m, "recurrent", False) for m in self.layers)

    def project(self, x):
        return self.layers[0].project(x)

    def attend(self, q, k, v, key_padding_mask, causal):
        return torch.stack([m.attend(q, k, v, key_padding_mask, causal) for m in self.layers])

    def forward(self, x, attn_mask=None, is_causal=None):
        for m in self.layers:
            x = m(x, attn_mask=attn_mask, is_causal=is_causal)
        return x

    def init_state(self, batch_size: int = 1, device=None, dtype=None):
        return [m.init_state(batch_size, device=device, dtype=dtype) for m in self.layers]

    def step(self, x_t, state):
        new = []
        for m, s in zip(self.layers, state):
            x_t, s = m.step(x_t, s)
            new.append(s)
        return x_t, new

    def step_attend(self, q, k, v, state):
        outs, new = zip(*(m.step_attend(q, k, v, s) for m, s in zip(self.layers, state)))
        return torch.stack(outs), list(new)

    def state_numel(self, seq_len: int) -> int:
        return sum(int(m.state_numel(seq_len)) for m in self.layers)


def build_backend(spec: BackendSpec, dim: int, heads: int, max_len: int, causal: bool,
                  device, dtype, depth: Optional[int] = None) -> nn.Module:
    """The attention module of ``spec`` (its length option, e.g. AFT's ``max_len``, set to
    ``max_len``): one layer, or a :class:`LayerStack` of ``depth`` layers (default: the fewest
    a per-layer spec fits)."""
    layers = spec.layers(depth)
    torch.manual_seed(0)
    with torch.device(device):
        mods = [s.with_length(max_len).build(dim, heads, causal=causal) for s in layers]
    m = mods[0] if len(mods) == 1 and not spec.hybrid else LayerStack(mods)
    return m.to(device=device, dtype=dtype)


class Mixer(nn.Module):
    """``attend`` alone: q, k, v (B, H, L, d) -> (B, H, L, d) (what Table 1 measures)."""

    def __init__(self, attn: nn.Module, causal: bool) -> None:
        super().__init__()
        self.attn = attn
        self.causal = causal

    def forward(self, q, k, v):
        return self.attn.attend(q, k, v, None, self.causal)


class _StepAttend(nn.Module):
    """One decoding step of the mixing (``step_attend`` on one token's heads), with the state
    flattened to tensor inputs so fvcore can trace it."""

    def __init__(self, attn: nn.Module, spec, consts: List[Any], is_tensor: List[bool]) -> None:
        super().__init__()
        self.attn = attn
        self.spec = spec
        self.consts = consts
        self.is_tensor = is_tensor

    def forward(self, q, k, v, *tensors):
        it = iter(tensors)
        leaves = [next(it) if t else c for t, c in zip(self.is_tensor, self.consts)]
        y, new = self.attn.step_attend(q, k, v, tree_unflatten(leaves, self.spec))
        out = [y] + [t for t in tree_flatten(new)[0] if isinstance(t, torch.Tensor)]
        return tuple(out)


def count_step_flops(attn: nn.Module, x_t: torch.Tensor, state: Any) -> Tuple[int, Dict[str, int]]:
    """Forward FLOPs of the mixing part of ``attn.step(x_t, state)`` (``step_attend`` on the
    projected heads of x_t (B, D)), and the unsupported ops (which should be none)."""
    with torch.no_grad():
        q, k, v = attn.project(x_t[:, None, :])
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    leaves, spec = tree_flatten(state)
    is_tensor = [isinstance(t, torch.Tensor) for t in leaves]
    consts = [None if t else c for t, c in zip(is_tensor, leaves)]
    tensors = tuple(t for t in leaves if isinstance(t, torch.Tensor))
    r = count_flops(_StepAttend(attn, spec, consts, is_tensor), (q, k, v) + tensors)
    return r.total, r.unsupported


# ---------------------------------------------------------------------------- measuring


def _qkv(attn: nn.Module, batch: int, length: int, device, dtype, requires_grad: bool):
    torch.manual_seed(1)
    x = torch.randn(batch, length, attn.dim, device=device, dtype=dtype)
    with torch.no_grad():
        q, k, v = attn.project(x)
    return tuple(t.contiguous().requires_grad_(requires_grad) for t in (q, k, v)), x


def measure_parallel(spec: BackendSpec, length: int, dim: int, heads: int, batch: int = 1, *,
                     device="cpu", dtype=torch.float32, causal: bool = False, max_len: Optional[int] = None,
                     timing: bool = True, warmup: int = 1, repeat: int = 3,
                     layer_flops: bool = True, max_seconds: Optional[float] = None,
                     depth: Optional[int] = None) -> Dict[str, Any]:
    """Training-side measures of ``spec`` at one (L, D): FLOPs, saved bytes, peak, times (of
    every layer together for a per-layer spec or ``depth`` > 1)."""
    device = torch.device(device)
    rec: Dict[str, Any] = {"backend": spec.label, "L": length, "D": dim, "H": heads, "B": batch}
    attn = build_backend(spec, dim, heads, max_len or length, causal, device, dtype, depth)
    if hasattr(attn, "order"):
        rec["t"] = attn.order
    attn.eval()  # no dropout; gradients still flow
    mixer = Mixer(attn, causal)
    (q, k, v), x = _qkv(attn, batch, length, device, dtype, requires_grad=True)
    params = list(attn.parameters())
    with sdpa_context(spec.sdpa):
        fl = count_flops(mixer, (q.detach(), k.detach(), v.detach()))
        rec["flops"] = fl.total
        rec["flops_by_op"] = fl.by_operator
        rec["unsupported_ops"] = fl.unsupported
        if layer_flops:
            rec["layer_flops"] = count_flops(attn, (x,)).total
        rec["act_bytes"] = saved_activation_bytes(lambda: mixer(q, k, v), exclude=params)
        q.grad = k.grad = v.grad = None

        def fwd_bwd_once():
            y = mixer(q, k, v)
            y.backward(torch.ones_like(y))
            q.grad = k.grad = v.grad = None

        # peak over forward + backward, above what existed before (params, inputs)
        if device.type == "cuda":
            rec["peak_bytes"] = cuda_peak_bytes(fwd_bwd_once, device)
        else:
            rec["peak_bytes"] = peak_live_bytes(fwd_bwd_once)
        if timing:
            out_shape = q.shape[:-1] + (v.shape[-1],)
            if isinstance(attn, LayerStack):
                out_shape = (len(attn.layers),) + out_shape
            g = torch.randn(out_shape, device=device, dtype=dtype)

            def fwd():
                with torch.no_grad():
                    return mixer(q, k, v)

            def fwd_bwd():
                y = mixer(q, k, v)
                torch.autograd.backward(y, g, inputs=[q, k, v])

            rec["time_fwd_s"] = time_call(fwd, device, warmup, repeat, max_seconds)["min"]
            rec["time_fwd_bwd_s"] = time_call(fwd_bwd, device, warmup, repeat, max_seconds)["min"]
    return rec


def measure_decode(spec: BackendSpec, lengths: Sequence[int], dim: int, heads: int, batch: int = 1, *,
                   device="cpu", dtype=torch.float32, timing: bool = True, repeat: int = 3,
                   depth: Optional[int] = None) -> Dict[int, Dict[str, Any]]:
    """Decoding measures after L tokens, for each L in ``lengths`` (one pass of max(L) steps).

    Per L: the state's numbers (``state_numel``, measured), bytes, the module's declared
    ``state_numel(L)``, FLOPs and latency of decoding token L + 1.
    """
    device = torch.device(device)
    lengths = sorted(set(int(n) for n in lengths))
    attn = build_backend(spec, dim, heads, max(lengths) + 1, True, device, dtype, depth).eval()
    if not getattr(attn, "supports_step", False):
        return {}
    torch.manual_seed(2)
    xs = torch.randn(max(lengths) + 1, batch, dim, device=device, dtype=dtype)
    out: Dict[int, Dict[str, Any]] = {}
    with torch.no_grad(), sdpa_context(spec.sdpa):
        state = attn.init_state(batch, device=device, dtype=dtype)
        n = 0
        for L in lengths:
            while n < L:
                _, state = attn.step(xs[n], state)
                n += 1
            rec: Dict[str, Any] = {
                "state_numel": tensor_numel(state) // batch,
                "state_bytes": tensor_bytes(state) // batch,
                "state_numel_declared": int(attn.state_numel(L)),
            }
            flops, unsupported = count_step_flops(attn, xs[L], state)
            rec["step_flops"] = flops // batch
            rec["step_unsupported_ops"] = unsupported
            if timing:
                st = state
                rec["step_time_s"] = time_call(lambda: attn.step(xs[L], st), device, 1, repeat)["min"]
            out[L] = rec
    return out


# ---------------------------------------------------------------------------- sweeps


@dataclass
class SweepConfig:
    batch: int
    heads: int
    dim: int
    lengths: List[int]
    length: int
    dims: List[int]
    orders: List[int]
    decode_max_len: int
    warmup: int
    repeat: int
    max_seconds: float
    causal: bool = False
    timing: bool = True
    decode: bool = True
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    depth: Optional[int] = None
    preset: str = ""


def _progress(total: int, desc: str, disable: bool):
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True)
    except ImportError:  # pragma: no cover
        class _Null:
            def update(self, *_):
                pass

            def set_postfix_str(self, *_):
                pass

            def close(self):
                pass

        return _Null()


def _safe(fn, *args, **kwargs) -> Tuple[Optional[Any], Optional[str]]:
    """Run ``fn``; an out-of-memory error returns (None, "oom"), other errors propagate."""
    try:
        return fn(*args, **kwargs), None
    except Exception as err:  # noqa: BLE001
        if is_oom(err):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return None, "oom"
        raise


def run_sweeps(specs: Sequence[BackendSpec], cfg: SweepConfig, quiet: bool = False) -> List[Dict[str, Any]]:
    """All measurements: rows tagged ``sweep`` in {"L", "D", "t"}."""
    rows: List[Dict[str, Any]] = []
    dec_lengths = [L for L in cfg.lengths if L <= cfg.decode_max_len]
    dec_len_fixed = min(cfg.length, cfg.decode_max_len)
    ea_series = [s for s in specs if s.base_name == "ea_series"]
    t_base = ea_series[0] if ea_series else None
    n_t = len(cfg.orders) if t_base is not None else 0
    total = len(specs) * (len(cfg.lengths) + len(cfg.dims)) + n_t
    if cfg.decode:
        total += len(specs) * (1 + len(cfg.dims)) + n_t
    bar = _progress(total, "complexity", quiet)
    common = dict(device=cfg.device, dtype=cfg.dtype, causal=cfg.causal, timing=cfg.timing,
                  warmup=cfg.warmup, repeat=cfg.repeat, max_seconds=cfg.max_seconds, depth=cfg.depth)
    dec_kw = dict(device=cfg.device, dtype=cfg.dtype, timing=cfg.timing, repeat=cfg.repeat, depth=cfg.depth)

    def parallel_sweep(spec, sweep, points, point_kw):
        """Points in increasing size; stop a backend past OOM or ``max_seconds`` per call."""
        stopped = None
        for p in points:
            bar.set_postfix_str(f"{spec.label} {sweep}={p}")
            kw = point_kw(p)
            if stopped:
                rec = {"backend": spec.label, "sweep": sweep, "skipped": stopped, **{k: kw[k] for k in ("length", "dim")}}
                rec["L"], rec["D"] = rec.pop("length"), rec.pop("dim")
                rows.append(rec)
                bar.update(1)
                continue
            t0 = time.perf_counter()
            rec, err = _safe(measure_parallel, kw.pop("spec"), **kw, **common)
            elapsed = time.perf_counter() - t0
            if rec is None:
                rec = {"backend": spec.label, "L": kw["length"], "D": kw["dim"], "skipped": err}
                stopped = err
            elif cfg.timing and rec.get("time_fwd_bwd_s", 0) > cfg.max_seconds:
                stopped = f"time>{cfg.max_seconds}s"
            elif elapsed > 4 * cfg.max_seconds:
                stopped = f"time>{cfg.max_seconds}s"
            rec["sweep"] = sweep
            rows.append(rec)
            bar.update(1)

    for spec in specs:
        parallel_sweep(spec, "L", cfg.lengths,
                       lambda L, s=spec: dict(spec=s, length=L, dim=cfg.dim, heads=cfg.heads, batch=cfg.batch,
                                              max_len=L))
        parallel_sweep(spec, "D", cfg.dims,
                       lambda D, s=spec: dict(spec=s, length=cfg.length, dim=D, heads=cfg.heads, batch=cfg.batch,
                                              max_len=cfg.length))
        if cfg.decode:
            bar.set_postfix_str(f"{spec.label} decode L")
            dec, err = _safe(measure_decode, spec, dec_lengths, cfg.dim, cfg.heads, cfg.batch, **dec_kw)
            for L, d in (dec or {}).items():
                _merge_decode(rows, spec.label, "L", L, cfg.dim, d)
            bar.update(1)
            for D in cfg.dims:
                bar.set_postfix_str(f"{spec.label} decode D={D}")
                dec, err = _safe(measure_decode, spec, [dec_len_fixed], D, cfg.heads, cfg.batch, **dec_kw)
                for L, d in (dec or {}).items():
                    _merge_decode(rows, spec.label, "D", L, D, d, parallel_L=cfg.length)
                bar.update(1)

    if t_base is not None:
        for t in cfg.orders:
            spec = BackendSpec(f"ea_series:order={t}", {"name": "ea_series", "order": t})
            bar.set_postfix_str(f"order t={t}")
            rec, err = _safe(measure_parallel, spec, cfg.length, cfg.dim, cfg.heads, cfg.batch, **common)
            rec = rec or {"backend": spec.label, "L": cfg.length, "D": cfg.dim, "skipped": err}
            rec.update(sweep="t", t=t)
            rows.append(rec)
            bar.update(1)
            if cfg.decode:
                dec, err = _safe(measure_decode, spec, [dec_len_fixed], cfg.dim, cfg.heads, cfg.batch, **dec_kw)
                for L, d in (dec or {}).items():
                    rec.update({"decode_L": L, **d})
                bar.update(1)
    bar.close()
    return rows


def _merge_decode(rows, label, sweep, L, D, d, parallel_L=None):
    """Attach decode measures to the matching parallel row (same backend, sweep, L, D)."""
    match_L = L if parallel_L is None else parallel_L
    for r in rows:
        if r.get("backend") == label and r.get("sweep") == sweep and r.get("L") == match_L and r.get("D") == D:
            r.update({"decode_L": L, **d})
            return
    rows.append({"backend": label, "sweep": sweep, "L": match_L, "D": D, "decode_L": L, **d})


# ---------------------------------------------------------------------------- fitting

#: measure key -> (Table 1 column, description)
MEASURES = {
    "flops": ("compute", "forward FLOPs of the mixing"),
    "act_bytes": ("memory", "bytes saved for backward"),
    "state_numel": ("inference", "decoding state numbers after L tokens"),
    "step_flops": ("inference", "FLOPs of the mixing to decode token L+1"),
    "time_fwd_bwd_s": (None, "forward+backward seconds"),
    "time_fwd_s": (None, "forward seconds"),
    "peak_bytes": ("memory", "peak bytes over forward+backward (CUDA allocator or live-tensor tracking)"),
    "step_time_s": (None, "seconds to decode token L+1"),
}


def _series(rows, label, sweep, key, xkey):
    pts = sorted((r[xkey], r.get(key)) for r in rows
                 if r.get("backend") == label and r.get("sweep") == sweep and r.get(key) is not None
                 and r.get(xkey) is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def fit_results(rows: Sequence[Dict[str, Any]], specs: Sequence[BackendSpec], tolerance: float = DEFAULT_TOLERANCE
                ) -> Dict[str, Any]:
    """Per backend and measure: fitted exponents in L and D, the claim, and agreement."""
    fits: Dict[str, Any] = {}
    for spec in specs:
        key = None if spec.hybrid else claim_key(spec.attention.name)
        claim = CLAIMS.get(key) if key else None
        entry: Dict[str, Any] = {"claim_row": claim.row if claim else None,
                                 "claim_source": claim.source if claim else None, "measures": {}}
        for m, (column, _desc) in MEASURES.items():
            sx_L = _series(rows, spec.label, "L", m, "decode_L" if m.startswith(("state", "step")) else "L")
            sx_D = _series(rows, spec.label, "D", m, "D")
            slope_L, slope_D = tail_slope(*sx_L), tail_slope(*sx_D)
            c = getattr(claim, column) if (claim and column) else None
            rec = {"slope_L": slope_L, "slope_D": slope_D, "claim": c.text if c else None,
                   "claim_L": c.L if c else None, "claim_D": c.D if c else None}
            for var, s in (("L", slope_L), ("D", slope_D)):
                want = getattr(c, var) if c else None
                rec[f"agree_{var}"] = None if (want is None or s is None) else bool(abs(s - want) <= tolerance)
            entry["measures"][m] = rec
        fits[spec.label] = entry
    return fits


def fit_orders(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Straight-line fits of each measure against the EA-series order t."""
    pts = sorted((r["t"], r) for r in rows if r.get("sweep") == "t" and "skipped" not in r)
    out: Dict[str, Any] = {"orders": [t for t, _ in pts]}
    for m in ("flops", "act_bytes", "state_numel", "step_flops", "time_fwd_bwd_s"):
        ts = [t for t, r in pts if r.get(m) is not None]
        ys = [r[m] for t, r in pts if r.get(m) is not None]
        fit = linear_fit(ts, ys)
        fit["values"] = ys
        deterministic = not m.startswith("time")
        fit["linear_in_t"] = (None if not deterministic or not math.isfinite(fit["r2"])
                              else bool(fit["r2"] >= 0.98 and fit["slope"] > 0))
        out[m] = fit
    return out


# ---------------------------------------------------------------------------- tables


def _fmt_slope(s: Optional[float], agree: Optional[bool]) -> str:
    if s is None:
        return "-"
    mark = "" if agree is None else ("✓" if agree else "✗")
    return f"{s:.2f}{mark}"


def _cell(m: Dict[str, Any], with_D: bool = True, marks: bool = True) -> str:
    """'L 2.00✓ D 0.95✓' for one measure's fit."""
    parts = [f"L {_fmt_slope(m['slope_L'], m['agree_L'] if marks else None)}"]
    if with_D:
        parts.append(f"D {_fmt_slope(m['slope_D'], m['agree_D'] if marks else None)}")
    return " ".join(parts)


def claims_table(fits: Dict[str, Any], orders: Dict[str, Any], device_cuda: bool = False) -> Tuple[List[str], List[List[str]]]:
    """The main table: per backend, each Table-1 column's claim beside the measured exponents
    (``L a D b``: cost ∝ L^a at fixed D and ∝ D^b at fixed L; ✓/✗ against the claim)."""
    peak = "CUDA peak fwd+bwd" if device_cuda else "peak fwd+bwd"
    headers = ["backend", "Table 1 row", "compute claim", "FLOPs", "memory claim", "saved activations",
               peak, "inference claim", "decoding state", "step FLOPs", "fwd+bwd time", "t factor"]
    rows = []
    for label, f in fits.items():
        ms = f["measures"]
        row = [label, (f["claim_row"] or "-") + ("" if f["claim_source"] in (None, "Table 1") else " *")]
        row += [ms["flops"]["claim"] or "-", _cell(ms["flops"])]
        row += [ms["act_bytes"]["claim"] or "-", _cell(ms["act_bytes"]), _cell(ms["peak_bytes"])]
        row += [ms["state_numel"]["claim"] or "-", _cell(ms["state_numel"]), _cell(ms["step_flops"]),
                _cell(ms["time_fwd_bwd_s"], marks=False)]
        tcell = "-"
        if f["claim_row"] == "EA-series" and orders.get("flops"):
            lin = [orders[m].get("linear_in_t") for m in ("flops", "act_bytes", "state_numel")]
            if any(v is not None for v in lin):
                tcell = "linear ✓" if all(v for v in lin if v is not None) else "not linear ✗"
        row.append(tcell)
        rows.append(row)
    return headers, rows


def order_table(orders: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    headers = ["measure", *[f"t={t}" for t in orders.get("orders", [])], "per +1 in t", "R² (linear)", "linear in t"]
    rows = []
    names = {"flops": "FLOPs", "act_bytes": "act. memory (B)", "state_numel": "state numbers",
             "step_flops": "step FLOPs", "time_fwd_bwd_s": "fwd+bwd time (s)"}
    for m, nm in names.items():
        f = orders.get(m)
        if not f or not f.get("values"):
            continue
        lin = f.get("linear_in_t")
        rows.append([nm, *[report.fmt_num(v) for v in f["values"]], report.fmt_num(f["slope"]),
                     "-" if not math.isfinite(f["r2"]) else f"{f['r2']:.4f}",
                     "-" if lin is None else ("✓" if lin else "✗")])
    return headers, rows


def detail_table(rows: Sequence[Dict[str, Any]], sweep: str) -> Tuple[List[str], List[List[str]]]:
    headers = ["backend", "L", "D", "FLOPs", "layer FLOPs", "saved act.", "peak fwd+bwd", "state numbers",
               "step FLOPs", "fwd ms", "fwd+bwd ms", "step ms"]
    out = []
    for r in rows:
        if r.get("sweep") != sweep:
            continue
        ms = lambda k: "-" if r.get(k) is None else f"{1000 * r[k]:.3g}"  # noqa: E731
        out.append([r["backend"], r.get("L"), r.get("D"), report.fmt_num(r.get("flops")),
                    report.fmt_num(r.get("layer_flops")), report.fmt_bytes(r.get("act_bytes")),
                    report.fmt_bytes(r.get("peak_bytes")),
                    report.fmt_num(r.get("state_numel")), report.fmt_num(r.get("step_flops")),
                    ms("time_fwd_s"), ms("time_fwd_bwd_s"),
                    ms("step_time_s") if r.get("skipped") is None else f"skipped ({r['skipped']})"])
    return headers, out


NOTES = """\
* Cells read `L a D b`: the cost grows as L^a at fixed D and as D^b at fixed L; exponents
  are log-log slopes over the upper half of each sweep (the D sweep keeps the number of heads
  fixed, so the head width grows with D: Table 1's single-head view). ✓: within ±{tol} of the
  claimed exponent; ✗: not. Rows marked * are not in Table 1; their claim is the complexity
  the backend's own paper/implementation states. Table 1 assumes L >> D; lower-order terms
  bend the curves where L ~ D.
* Compute = forward FLOPs of the mixing (`attend` on projected heads; the shared O(L D^2)
  projections are excluded, see "layer FLOPs" below): {conv}.
* Memory: "saved activations" = bytes autograd keeps for backward (distinct storages,
  parameters excluded); "peak fwd+bwd" = peak of live tensor bytes created during forward +
  backward (torch.cuda.max_memory_allocated on GPU; live-tensor tracking through a
  TorchDispatchMode on CPU, blind to buffers private to a fused kernel).
  `sa` uses PyTorch's fused SDPA kernel, which keeps no L x L matrix, so its memory is O(LD),
  not Table 1's O(L^2); `sa[math]` forces the math kernel (the paper's "no additional
  optimizations" softmax), which stores the L x L weights.
* `ea` (full EA) holds (block, L, D) similarity tensors, block = min(L, max_block_elements /
  (B L D)); until B L^2 D exceeds max_block_elements (2^24) nothing is blocked and its memory
  is O(L^2 D); beyond it blocks are recomputed in backward: saved memory O(LD), peak
  O(LD + max_block_elements).
* `aft_full` and `aft_local` compute the dense position-bias form: exp(w) (L x L) is kept, an
  O(L^2) term that Table 1's O(LD) for AFT leaves out.
* Inference = numbers held by the decoding state after L tokens (measured on the state's
  tensors, per sequence) and FLOPs of the mixing (`step_attend`) to decode token L + 1;
  "step ms" times the whole layer's `step`. Times are the best of --repeat calls; their
  exponents are for information only (small CPU sizes are dominated by per-op overhead, and
  a shared machine adds noise).
* A per-layer (hybrid) backend, labelled like `ea6+sa@1`, and every backend under `--depth N`
  is measured as the stack of its layers: FLOPs, saved memory and the decoding state are sums
  over the layers (each layer's mixing on the same heads).
"""


# ---------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="sizes: tiny (tests), cpu (default on CPU, < 2 min on 2 cores), paper "
                        "(BERT-base width, L up to 16k; default on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index> (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--backends", default=None,
                   help="comma-separated specs: name, name[math] (SDPA math kernel), name:key=val;key=val, "
                        "a per-layer label such as ea6+sa@1 (default: every registered backend, EA-series as "
                        "ea2 and ea6, SA also as sa[math])")
    p.add_argument("--lengths", type=str, default=None, help="L sweep, e.g. 64,128,256,512")
    p.add_argument("--length", type=int, default=None, help="fixed L of the D and t sweeps")
    p.add_argument("--dims", type=str, default=None, help="D sweep, e.g. 32,64,128,256")
    p.add_argument("--dim", type=int, default=None, help="fixed D of the L and t sweeps")
    p.add_argument("--heads", type=int, default=None, help="number of heads H (fixed in every sweep)")
    p.add_argument("--batch", type=int, default=None, help="batch size B")
    p.add_argument("--depth", type=int, default=None,
                   help="measure every backend as a stack of this many layers (default: one layer; a per-layer "
                        "backend: the fewest layers its spec fits)")
    p.add_argument("--orders", type=str, default=None, help="EA-series orders t to sweep, e.g. 2,4,6,8")
    p.add_argument("--decode-max-len", type=int, default=None, help="longest L for the decoding measures")
    p.add_argument("--causal", action="store_true", help="measure the causal forms (default: non-causal)")
    p.add_argument("--no-time", action="store_true", help="skip wall-clock timing (FLOPs and memory only)")
    p.add_argument("--no-decode", action="store_true", help="skip the decoding (state) measures")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions per point (the best is kept)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before timing")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop growing a backend's sweep once one forward+backward takes longer")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="|slope - claim| for agreement")
    common.add_output_arguments(p, "benchmarks/results/complexity_cpu")


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The sweep configuration; ValueError (one line) for a bad value, before any work."""
    common.check_device(args.device)
    for opt in ("length", "dim", "heads", "batch", "depth", "decode_max_len", "repeat"):
        common.check_positive(getattr(args, opt, None), "--" + opt.replace("_", "-"))
    ints = common.parse_ints
    preset, base = common.preset_config(args, PRESETS, dict(
        batch=args.batch, heads=args.heads, dim=args.dim, lengths=ints(args.lengths, "--lengths"),
        length=args.length, dims=ints(args.dims, "--dims"), orders=ints(args.orders, "--orders"),
        decode_max_len=args.decode_max_len, warmup=args.warmup, repeat=args.repeat, max_seconds=args.max_seconds))
    common.check_heads([base["dim"]], base["heads"], "--dim")
    common.check_heads(base["dims"], base["heads"], "--dims")
    return SweepConfig(**base, causal=args.causal, timing=not args.no_time, decode=not args.no_decode,
                       device=args.device, dtype=getattr(torch, args.dtype), depth=getattr(args, "depth", None),
                       preset=preset)


def backends_from_args(args: argparse.Namespace, cfg: SweepConfig) -> List[BackendSpec]:
    """``--backends`` (default :func:`default_backends`), checked against the device and depth."""
    specs = common.parse_backends(args.backends, default_backends)
    for s in specs:
        if s.sdpa and torch.device(cfg.device).type == "cpu" and s.sdpa not in ("math", "flash"):
            raise ValueError(f"--backends {s.label!r}: SDPA kernel {s.sdpa!r} is not available on CPU "
                             "(use math or flash)")
        if cfg.depth is not None:
            try:
                s.layers(cfg.depth)
            except ValueError as e:
                raise ValueError(f"--backends {s.label!r} with --depth {cfg.depth}: {e}") from None
    return specs


def run(args: argparse.Namespace) -> int:
    return common.run_with_threads(args, _run)


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    preset, dev = cfg.preset, torch.device(cfg.device)
    specs = backends_from_args(args, cfg)
    out = report.prepare_out(args.out)
    t_start = time.perf_counter()
    rows = run_sweeps(specs, cfg, quiet=args.quiet)
    fits = fit_results(rows, specs, args.tolerance)
    orders = fit_orders(rows)
    elapsed = time.perf_counter() - t_start

    env = report.environment(dev, cfg.dtype)
    config = {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in vars(cfg).items()}
    config.update(preset=preset, backends=[s.label for s in specs], tolerance=args.tolerance)
    unsupported = sorted({op for r in rows for op in list((r.get("unsupported_ops") or {}))
                          + list((r.get("step_unsupported_ops") or {}))})

    h, tr = claims_table(fits, orders, dev.type == "cuda")
    oh, orows = order_table(orders)
    notes = NOTES.format(tol=args.tolerance, conv=FLOP_CONVENTION)
    sections = [
        ("Measured exponents beside Table 1", report.markdown_table(h, tr)),
        ("EA-series order t (L={}, D={})".format(cfg.length, cfg.dim), report.markdown_table(oh, orows)),
        ("Notes", notes),
        ("L sweep (D={}, H={}, B={})".format(cfg.dim, cfg.heads, cfg.batch), report.markdown_table(*detail_table(rows, "L"))),
        ("D sweep (L={}, H={}, B={})".format(cfg.length, cfg.heads, cfg.batch), report.markdown_table(*detail_table(rows, "D"))),
    ]
    if unsupported:
        sections.insert(2, ("Unsupported ops (counted as 0 FLOPs)", ", ".join(unsupported)))
    title = "ea-zoo complexity: Table 1 of Feng 2025, measured"
    report.write_markdown(out / "complexity.md", title, sections, env)
    report.write_json(out / "complexity.json", {
        "tool": "ea-zoo complexity", "environment": env, "config": config, "flop_convention": FLOP_CONVENTION,
        "claims": {k: {"row": c.row, "source": c.source, "compute": c.compute.text, "memory": c.memory.text,
                       "inference": c.inference.text} for k, c in CLAIMS.items()},
        "fits": fits, "order_fit": orders, "unsupported_ops": unsupported, "elapsed_s": elapsed, "results": rows,
    })
    csv_rows = [{k: v for k, v in r.items() if k not in ("flops_by_op",)} for r in rows]
    report.write_csv(out / "complexity.csv", csv_rows)
    figs = []
    if not args.no_plot:
        from ea_zoo.analysis import plots

        figs = plots.complexity_figures(rows, specs, out, cfg)

    print(f"\n{title}  [{env['device_name']}, {env['dtype']}, preset {preset}, {elapsed:.0f} s]\n")
    print(report.text_table(h, tr))
    print(f"\nEA-series order t (L={cfg.length}, D={cfg.dim}):")
    print(report.text_table(oh, orows))
    print("\n" + notes)
    if unsupported:
        print(f"WARNING: ops without a FLOP handle (counted 0): {', '.join(unsupported)}")
    print(f"wrote {out / 'complexity.json'}, .csv, .md" + (f", {', '.join(p.name for p in figs)}" if figs else ""))
    return 0
