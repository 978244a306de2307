"""What the cost tools share: their backend columns and the checks that run before any work.

* :class:`BackendSpec`: one column of a tool: a spec (:class:`~ea_zoo.registry.AttentionSpec`
  or a per-layer :class:`~ea_zoo.registry.HybridSpec`), its label and an optional forced SDPA
  kernel. :func:`parse_backends` reads ``--backends``: ``name``, ``name[math]``,
  ``name:key=val;key=val``, a hybrid label ``ea6+sa@1,3`` (its commas belong to it) or JSON.
* CLI checks (:func:`parse_ints`, :func:`check_device`, :func:`check_heads`,
  :func:`check_depth`): a bad value is a one-line ValueError naming the option, the value and
  what is valid, raised while the arguments are read (before any output folder, model or
  measurement).
* :class:`ModelRunConfig`, :func:`preset_config`, :func:`add_model_arguments`,
  :func:`add_output_arguments`, :func:`run_with_threads`: the configuration and argument
  handling the three tools have in common.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ea_zoo.analysis.speed import add_threads_argument, cpu_threads
from ea_zoo.registry import AttentionSpec, HybridSpec, layer_specs, parse_attention

__all__ = [
    "SDPA_KERNELS", "BackendSpec", "parse_backend", "parse_backends", "split_backends", "sdpa_context",
    "parse_ints", "check_positive", "check_device", "check_heads", "check_depth", "ModelRunConfig",
    "preset_config", "add_model_arguments", "add_output_arguments", "run_with_threads",
]

#: kernels ``name[kernel]`` can force on backends that call SDPA
SDPA_KERNELS = ("math", "flash", "efficient", "cudnn")

Spec = Union[AttentionSpec, HybridSpec]


# ---------------------------------------------------------------------------- backends
@dataclass(frozen=True)
class BackendSpec:
    """One column of a tool: ``attention`` (a parsed spec, one backend or per layer) shown as
    ``label``; ``sdpa`` forces a scaled-dot-product kernel ("math", "flash", "efficient",
    "cudnn") for backends that call SDPA."""

    label: str
    attention: Spec
    sdpa: Optional[str] = None

    def __post_init__(self) -> None:  # any spec form (``BackendSpec("ea6", "ea6")``) is parsed once
        object.__setattr__(self, "attention", parse_attention(self.attention))

    @property
    def hybrid(self) -> bool:
        return isinstance(self.attention, HybridSpec)

    @property
    def name(self) -> str:
        """The name the spec was given by (a hybrid: its label)."""
        return self.attention.label if self.hybrid else self.attention.name

    @property
    def options(self) -> Dict[str, Any]:
        return {} if self.hybrid else self.attention.options

    @property
    def base_name(self) -> str:
        """The registered backend (an alias resolved); a hybrid: its label."""
        return self.attention.label if self.hybrid else self.attention.backend

    def min_depth(self) -> int:
        """The fewest layers the spec fits (1 for one backend)."""
        if not self.hybrid:
            return 1
        h = self.attention
        return h.num_layers if h.num_layers is not None else max([i for i, _ in h.layers] + [0]) + 1

    def layers(self, depth: Optional[int] = None) -> List[AttentionSpec]:
        """The spec of each layer of a ``depth``-layer model (default :meth:`min_depth`)."""
        return layer_specs(self.attention, self.min_depth() if depth is None else depth)


def _parse_value(s: str) -> Any:
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    return s


def parse_backend(text: str) -> BackendSpec:
    """``name``, ``name[math]`` (force the SDPA math kernel), ``name:key=val;key=val``, a
    hybrid label ``ea6+sa@1,3`` (``[kernel]`` may follow any form) or a JSON spec."""
    text = text.strip()
    m = re.fullmatch(r"(.*?)(?:\[(\w+)\])?", text, flags=re.S)
    body, sdpa = m.group(1).strip(), m.group(2)
    if not body:
        raise ValueError(f"--backends: empty backend spec {text!r}; use name, name[math], name:key=value or a "
                         "hybrid label like ea6+sa@1")
    if sdpa is not None and sdpa not in SDPA_KERNELS:
        raise ValueError(f"--backends {text!r}: unknown SDPA kernel {sdpa!r}; valid: {', '.join(SDPA_KERNELS)}")
    name, colon, opts = body.partition(":")
    try:
        if colon and not body.startswith(("{", "[")):
            options = {}
            for kv in opts.split(";"):
                if kv.strip():
                    k, eq, v = kv.partition("=")
                    if not eq:
                        raise ValueError(f"option {kv!r} must be key=value")
                    options[k.strip()] = _parse_value(v.strip())
            spec = parse_attention({"name": name.strip(), **options})
        else:
            spec = parse_attention(json.loads(body) if body.startswith(("{", "[")) else body)
    except (ValueError, TypeError) as e:
        raise ValueError(f"--backends {text!r}: {e}") from None
    return BackendSpec(label=text, attention=spec, sdpa=sdpa)


def split_backends(text: str) -> List[str]:
    """``"ea6,sa,ea6+sa@1,3"`` -> ``["ea6", "sa", "ea6+sa@1,3"]``: a piece of digits after a
    hybrid label's ``@`` list continues it."""
    out: List[str] = []
    for piece in str(text).split(","):
        piece = piece.strip()
        if out and re.fullmatch(r"\d+", piece) and re.search(r"@[\d,]*\d$", out[-1]):
            out[-1] += "," + piece
        elif piece:
            out.append(piece)
    return out


def parse_backends(text: Optional[str], default: Callable[[], List[BackendSpec]]) -> List[BackendSpec]:
    """``--backends`` -> columns (``default()`` when not given); ValueError for an empty list."""
    if text is None:
        return default()
    specs = [parse_backend(s) for s in split_backends(text)]
    if not specs:
        raise ValueError(f"--backends {text!r}: no backend given")
    return specs


def sdpa_context(kind: Optional[str]):
    """``torch.nn.attention.sdpa_kernel`` for ``kind`` (None: no constraint)."""
    if kind is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    if kind not in table:
        raise ValueError(f"unknown SDPA kernel {kind!r}; valid: {', '.join(table)}")
    return sdpa_kernel(table[kind])


# ---------------------------------------------------------------------------- checks
def parse_ints(text: Optional[str], option: str) -> Optional[List[int]]:
    """``"64,128"`` -> ``[64, 128]`` (None stays None); ValueError unless every piece is a
    positive integer."""
    if text is None:
        return None
    pieces = [p.strip() for p in str(text).split(",") if p.strip()]
    if not pieces or not all(re.fullmatch(r"\+?\d+", p) and int(p) > 0 for p in pieces):
        raise ValueError(f"{option} {text!r}: expected comma-separated positive integers, e.g. 64,128,256")
    return [int(p) for p in pieces]


def check_positive(value: Optional[int], option: str) -> None:
    if value is not None and (isinstance(value, bool) or value <= 0):
        raise ValueError(f"{option} {value!r}: expected a positive integer")


def check_device(device: str) -> torch.device:
    """``--device``: cpu, cuda or cuda:<index>, and CUDA present for the latter."""
    valid = "valid choices: cpu, cuda, cuda:<index>"
    try:
        dev = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r}: {valid}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: {valid}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_heads(dims: Sequence[int], heads: int, option: str = "--dim") -> None:
    """Every model width in ``dims`` divisible by ``heads`` (the head width is D / H)."""
    check_positive(heads, "--heads")
    for d in dims:
        if d % heads:
            raise ValueError(f"{option} {d} --heads {heads}: the width must be divisible by the number of heads "
                             f"(head width D/H); e.g. {option} {heads * max(1, round(d / heads))}")


def check_depth(specs: Sequence[BackendSpec], depth: int) -> None:
    """Every per-layer backend fits a ``depth``-layer model."""
    check_positive(depth, "--depth")
    for s in specs:
        try:
            s.layers(depth)
        except ValueError as e:
            raise ValueError(f"--backends {s.label!r} with --depth {depth}: {e}") from None


# ---------------------------------------------------------------------------- arguments
@dataclass
class ModelRunConfig:
    """What train-cost and infer-cost share: the model's sizes and the swept lengths and batch
    sizes (each tool's config adds its own fields)."""

    depth: int
    dim: int
    heads: int
    mlp_ratio: float
    vocab: int
    lengths: List[int]
    batch_sizes: List[int]


def preset_config(args: argparse.Namespace, presets: Mapping[str, Dict[str, Any]],
                  overrides: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """(preset name, its values updated by the ``overrides`` that are not None); the preset
    defaults to ``paper`` on CUDA and ``cpu`` elsewhere."""
    preset = args.preset or ("paper" if str(args.device).startswith("cuda") else "cpu")
    base = dict(presets[preset])
    base.update({k: v for k, v in overrides.items() if v is not None})
    return preset, base


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--depth``, ``--dim``, ``--heads``, ``--vocab`` (the preset's when not given)."""
    p.add_argument("--depth", type=int, default=None, help="layers (a per-layer backend must fit them)")
    p.add_argument("--dim", type=int, default=None, help="model width D")
    p.add_argument("--heads", type=int, default=None, help="heads H (D must be divisible by H)")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size")


def add_output_arguments(p: argparse.ArgumentParser, default_out: str) -> None:
    """``--out``, ``--no-plot``, ``--threads``, ``--quiet``."""
    p.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG figures")
    add_threads_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_with_threads(args: argparse.Namespace, fn: Callable[[argparse.Namespace], int]) -> int:
    """``fn(args)`` with ``--threads`` torch CPU threads."""
    with cpu_threads(getattr(args, "threads", None)):
        return fn(args)
