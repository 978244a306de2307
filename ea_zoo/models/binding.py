"""Attention specs for models: a backend name or config, normalised and bound to a class.

Models take their attention backend as a *spec*: a registered name (``"ea6"``) or a config
mapping with a ``name`` key (``{"name": "ea_series", "order": 4}``, a dict or an omegaconf
``DictConfig``). :func:`normalize_attention` turns a spec into its JSON-serialisable form
(a ``str`` or a plain ``dict``), which is what models record for export.

APIs that want a *class* (timm's ``VisionTransformer(attn_layer=...)`` checks
``issubclass(attn_layer, ...)``, so a ``functools.partial`` does not work) get one from
:func:`bind_attention`: a cached subclass of the backend whose constructor binds the spec's
options, with a readable ``__name__`` such as ``EASeriesAttention_ea6``.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, Mapping, Tuple, Union

from ea_zoo.registry import _ALIASES, _to_dict, attention_options, list_attentions, resolve_attention

__all__ = ["AttentionSpec", "normalize_attention", "attention_label", "bind_attention", "CONSTRUCTOR_ARGS"]

AttentionSpec = Union[str, Dict[str, Any]]

#: constructor arguments the host model supplies (timm's Block passes all of these); a spec
#: may not bind them, so the model's own ``qkv_bias=...`` etc. is never silently overridden.
CONSTRUCTOR_ARGS = (
    "dim", "num_heads", "qkv_bias", "qk_norm", "scale_norm", "proj_bias",
    "attn_drop", "proj_drop", "norm_layer", "device", "dtype",
)

_BOUND: Dict[Tuple[type, str], type] = {}


def normalize_attention(spec: Any) -> AttentionSpec:
    """Validate ``spec`` and return it as a ``str`` or a plain JSON-serialisable ``dict``.

    Raises ValueError naming the valid backends (unknown name) or the valid options
    (unknown option), TypeError for a spec that is neither a name nor a mapping.
    """
    if isinstance(spec, str):
        resolve_attention(spec)  # raises with the list of valid names
        return spec
    if spec is None:
        raise ValueError(f"attention must be given: one of {', '.join(list_attentions())} or a config with a 'name' key")
    cfg = _to_dict(spec)
    cls, opts = resolve_attention(cfg)
    _check_options(cls, opts)
    try:
        json.dumps(cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"attention config {cfg!r} must be JSON-serialisable (str/int/float/bool values)") from e
    if set(cfg) == {"name"}:
        return cfg["name"]
    return cfg


def _check_options(cls: type, opts: Mapping[str, Any]) -> None:
    valid = attention_options(cls)
    bad = sorted(k for k in opts if k not in valid)
    if bad:
        raise ValueError(
            f"unknown option(s) {bad} for attention {cls.attention_name!r}; valid options: {', '.join(valid)}"
        )
    fixed = sorted(k for k in opts if k in CONSTRUCTOR_ARGS)
    if fixed:
        raise ValueError(
            f"attention option(s) {fixed} are set by the model, not the attention config; "
            f"pass them to the model (e.g. qkv_bias=..., qk_norm=...). Attention-config options "
            f"of {cls.attention_name!r}: {', '.join(k for k in valid if k not in CONSTRUCTOR_ARGS)}"
        )


def attention_label(spec: Any) -> str:
    """Short readable label of a spec: ``"ea6"``, ``"ea_series_order4"``, ``"sa_causal"``."""
    spec = normalize_attention(spec)
    if isinstance(spec, str):
        return spec
    spec = dict(spec)
    name = spec.pop("name")
    if name in _ALIASES:  # drop options equal to the alias defaults
        spec = {k: v for k, v in spec.items() if _ALIASES[name][1].get(k, object()) != v}
    parts = [name] + [f"{k}{_slug(v)}" for k, v in sorted(spec.items())]
    return "_".join(parts)


def _slug(v: Any) -> str:
    if isinstance(v, bool):
        return "" if v else "False"
    return re.sub(r"[^0-9A-Za-z]+", "p", str(v))


def bind_attention(spec: Any, **options: Any) -> type:
    """A subclass of the backend of ``spec`` whose constructor binds the spec's options.

    Args:
        spec: backend name or config (see :func:`normalize_attention`).
        **options: extra options (e.g. ``causal=True``, ``max_len=197``); they win over the
            spec's.

    Returns:
        A class (cached per backend and options) usable as timm's ``attn_layer``:
        ``cls(dim, num_heads=..., qkv_bias=..., ...)``. Options passed to the constructor
        still win over the bound ones.
    """
    cls, opts = resolve_attention(normalize_attention(spec))
    opts = {**opts, **options}
    _check_options(cls, opts)
    return _bound_class(cls, opts)


def _bound_class(cls: type, opts: Dict[str, Any]) -> type:
    key = (cls, json.dumps(opts, sort_keys=True, default=repr))
    if key in _BOUND:
        return _BOUND[key]
    label = _label_from(cls, opts)
    name = re.sub(r"\W", "_", f"{cls.__name__}_{label}")
    bound = dict(opts)

    def __init__(self, dim: int, num_heads: int = 8, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, dim, num_heads, *args, **{**bound, **kwargs})

    def __reduce_ex__(self, protocol: int):
        # pickle by (backend class, options), not by the dynamic class's name, so models
        # pickle (torch.save(model), ddp_spawn, deepcopy) and unpickle in a fresh process
        return (_restore_bound, (cls, dict(bound)), self.__getstate__())

    sub = type(
        name,
        (cls,),
        {
            "__init__": __init__,
            "__reduce_ex__": __reduce_ex__,
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"{cls.__name__} with options {bound} bound (ea_zoo.models.bind_attention).\n\n{cls.__doc__ or ''}",
            "bound_options": dict(bound),
            "bound_label": label,
        },
    )
    _BOUND[key] = sub
    return sub


def _restore_bound(cls: type, opts: Dict[str, Any]):
    """Unpickling helper: an empty instance of the bound class of ``cls`` with ``opts``."""
    sub = _bound_class(cls, opts)
    return sub.__new__(sub)


def _label_from(cls: type, opts: Mapping[str, Any]) -> str:
    """Label for the bound class name: the alias whose defaults match, else name + options."""
    for alias, (target, defaults) in sorted(_ALIASES.items()):
        if target == cls.attention_name and all(opts.get(k) == v for k, v in defaults.items()):
            rest = {k: v for k, v in opts.items() if k not in defaults}
            return "_".join([alias] + [f"{k}{_slug(v)}" for k, v in sorted(rest.items())])
    return "_".join([cls.attention_name] + [f"{k}{_slug(v)}" for k, v in sorted(opts.items())])
