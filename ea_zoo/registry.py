"""Registry of attention backends: a name (or config) -> an ``AttentionBase`` subclass.

    >>> from ea_zoo import create_attention, list_attentions
    >>> attn = create_attention("ea6", dim=64, num_heads=4, causal=True)
    >>> attn = create_attention({"name": "ea_series", "order": 6, "causal": True}, dim=64)

Names are registered with :func:`register_attention`; aliases such as ``ea6`` (=
``ea_series`` with ``order=6``) bind default options to a registered name and are listed by
:func:`list_attentions` beside the names. A config is a ``str``, a ``dict`` or an omegaconf
``DictConfig`` with a ``name`` key; its other keys are backend options.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Mapping, Tuple, Type, TypeVar

_BACKENDS: Dict[str, type] = {}
_ALIASES: Dict[str, Tuple[str, Dict[str, Any]]] = {}

T = TypeVar("T", bound=type)


def register_attention(name: str) -> Callable[[T], T]:
    """Class decorator: register an ``AttentionBase`` subclass under ``name``."""

    def wrap(cls: T) -> T:
        if name in _BACKENDS or name in _ALIASES:
            raise ValueError(f"attention name {name!r} is already registered")
        _BACKENDS[name] = cls
        cls.attention_name = name
        return cls

    return wrap


def register_alias(alias: str, target: str, **defaults: Any) -> None:
    """Register ``alias`` as ``target`` with ``defaults`` bound (explicit kwargs still win)."""
    if alias in _BACKENDS or alias in _ALIASES:
        raise ValueError(f"attention name {alias!r} is already registered")
    if target not in _BACKENDS:
        raise ValueError(f"alias {alias!r} points at unknown attention {target!r}")
    _ALIASES[alias] = (target, dict(defaults))


def list_attentions(include_aliases: bool = True) -> List[str]:
    """Registered backend names (sorted), with the aliases unless ``include_aliases=False``."""
    names = list(_BACKENDS)
    if include_aliases:
        names += list(_ALIASES)
    return sorted(names)


def _unknown(name: Any) -> ValueError:
    return ValueError(
        f"unknown attention {name!r}; valid names: {', '.join(list_attentions())}"
    )


def get_attention_cls(name: str) -> type:
    """The class registered under ``name`` (an alias resolves to its target's class)."""
    if not isinstance(name, str):
        raise TypeError(f"attention name must be a str, got {type(name).__name__}")
    if name in _ALIASES:
        name = _ALIASES[name][0]
    if name not in _BACKENDS:
        raise _unknown(name)
    return _BACKENDS[name]


def resolve_attention(name_or_cfg: Any) -> Tuple[type, Dict[str, Any]]:
    """Turn a name or config into ``(cls, options)``; alias defaults are merged under the
    config's own options."""
    if isinstance(name_or_cfg, str):
        name, opts = name_or_cfg, {}
    else:
        cfg = _to_dict(name_or_cfg)
        if "name" not in cfg:
            raise ValueError(
                f"attention config needs a 'name' key (one of: {', '.join(list_attentions())}); got keys {sorted(cfg)}"
            )
        cfg = dict(cfg)
        name = cfg.pop("name")
        opts = cfg
    cls = get_attention_cls(name)
    if name in _ALIASES:
        opts = {**_ALIASES[name][1], **opts}
    return cls, opts


def attention_options(cls: type) -> List[str]:
    """Keyword options the backend constructor accepts (besides ``dim``)."""
    params = []
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.name in ("self", "dim") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.name not in params:
                params.append(p.name)
        if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(klass.__init__).parameters.values()):
            break
    return params


def create_attention(name_or_cfg: Any, dim: int, num_heads: int = 8, **kwargs: Any):
    """Build an attention module from a name or config.

    Args:
        name_or_cfg: a registered name or alias (``"ea6"``) or a dict/DictConfig with ``name``.
        dim: model width D.
        num_heads: heads H.
        **kwargs: backend options; they override the config's and the alias's.
    """
    cls, opts = resolve_attention(name_or_cfg)
    opts = {**opts, **kwargs}
    valid = attention_options(cls)
    bad = sorted(k for k in opts if k not in valid)
    if bad:
        raise ValueError(
            f"unknown option(s) {bad} for attention {cls.attention_name!r}; valid options: {', '.join(valid)}"
        )
    return cls(dim, num_heads=num_heads, **opts)


def _to_dict(cfg: Any) -> Dict[str, Any]:
    if isinstance(cfg, Mapping):
        return dict(cfg)
    try:  # omegaconf is a dependency, but keep the registry importable without it
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(
        f"attention must be a name (str) or a config mapping with a 'name' key, got {type(cfg).__name__}"
    )
