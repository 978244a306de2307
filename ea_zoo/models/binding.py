"""Attention specs for models: thin functional forms of :class:`ea_zoo.registry.AttentionSpec`.

Models take their attention backend as a *spec*: a registered name (``"ea6"``), a config
mapping with a ``name`` key (``{"name": "ea_series", "order": 4}``, a dict or an omegaconf
``DictConfig``), or a per-layer form (see :class:`ea_zoo.registry.HybridSpec`). The parsing
lives in :mod:`ea_zoo.registry`; this module keeps the function names models and users call:

* :func:`normalize_attention`: the JSON-serialisable form (``spec.to_config()``), which is
  what models record for export;
* :func:`attention_label`: ``spec.label``;
* :func:`attention_description`: one line saying what a spec is (from the backend's own
  ``description`` and ``paper_equation``), for model cards and tool tables;
* :func:`bind_attention`: ``spec.bind(**options)``, a class for timm's ``attn_layer``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Union

from ea_zoo.registry import AttentionSpec, HybridSpec, host_arguments, parse_attention

__all__ = ["AttentionConfig", "normalize_attention", "attention_label", "attention_description", "bind_attention",
           "CONSTRUCTOR_ARGS"]

#: the JSON-serialisable form of a spec
AttentionConfig = Union[str, Dict[str, Any], List[Any]]

#: constructor arguments the host model supplies (timm's Block passes all of these); a spec
#: may not bind them, so the model's own ``qkv_bias=...`` etc. is never silently overridden
CONSTRUCTOR_ARGS = host_arguments()


def normalize_attention(spec: Any) -> AttentionConfig:
    """Validate ``spec`` and return its JSON-serialisable form (a name, a dict, or the
    per-layer list / mapping)."""
    return parse_attention(spec).to_config()


def attention_label(spec: Any) -> str:
    """Short readable label of a spec: ``"ea6"``, ``"ea_series_order4"``, ``"ea6+sa@3,7"``."""
    return parse_attention(spec).label


def attention_description(spec: Any) -> str:
    """One line describing a spec: the backend class's ``description`` (else its docstring's
    first line), the options that differ from the class defaults (an alias's included) and
    the paper equation, e.g. ``"EA-series, Taylor polynomial of order t (order=2; Feng 2025
    eq. 5-6 (recurrent form: 7-16))"``; a hybrid lists its parts."""
    spec = parse_attention(spec)
    if isinstance(spec, HybridSpec):
        rest = [f", with {attention_description(s)} at layers {','.join(str(i) for i, t in spec.layers if t == s)}"
                for s in spec.specs()[1:]]
        return attention_description(spec.default) + "".join(rest)
    cls = spec.cls
    text = getattr(cls, "description", "") or (cls.__doc__ or "").strip().split("\n")[0].rstrip(".") or spec.name
    extra = [", ".join(f"{k}={v!r}" for k, v in sorted(spec.all_options.items()))] if spec.all_options else []
    eq = getattr(cls, "paper_equation", "")
    if eq:
        extra.append(f"Feng 2025 eq. {eq}")
    return f"{text} ({'; '.join(extra)})" if extra else text


def bind_attention(spec: Any, **options: Any) -> type:
    """A subclass of the backend of the single-backend ``spec`` whose constructor binds its
    options and ``options`` (e.g. ``causal=True``, ``max_len=197``), usable as timm's
    ``attn_layer``; see :meth:`ea_zoo.registry.AttentionSpec.bind`."""
    return AttentionSpec.parse(spec).bind(**options)
