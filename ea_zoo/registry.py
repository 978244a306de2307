"""Registry of attention backends and the one spec type that names them.

    >>> from ea_zoo import create_attention, list_attentions
    >>> attn = create_attention("ea6", dim=64, num_heads=4, causal=True)
    >>> attn = create_attention({"name": "ea_series", "order": 6, "causal": True}, dim=64)

Backends are registered with :func:`register_attention`; aliases such as ``ea6`` (=
``ea_series`` with ``order=6``) bind default options to a registered name and are listed by
:func:`list_attentions` beside the names.

**Specs.** Every public entry point (``create_attention``, ``create_model``, ``build_model``,
the tools) turns what the user gave into a spec once, with :func:`parse_attention`, and hands
that object down; nothing below re-parses it.

* :class:`AttentionSpec`: one backend with options. From a name (``"ea6"``), a mapping or
  omegaconf ``DictConfig`` with ``name`` (``{"name": "ea_series", "order": 4}``) or its JSON.
  Frozen and hashable; ``to_config()`` is its JSON-serialisable form, ``label`` a short
  readable name, ``bind(**host)`` a class for timm's ``attn_layer``, ``build(dim, ...)`` a
  module.
* :class:`HybridSpec`: one spec per layer. From a list (one spec per layer), a mapping
  ``{"default": <spec>, "layers": {3: "sa", 7: "sa"}}`` or its label ``"ea6+sa@3,7"``.
  :func:`layer_specs` expands any spec to the per-layer list of a model of a given depth.

**Options.** A backend declares its own options as keyword-only arguments of its
``__init__`` (with type annotations and defaults); the timm-compatible base arguments
(``dim``, ``num_heads``, ``qkv_bias``, ...: :func:`host_arguments`) are declared once, by
:class:`~ea_zoo.attention.base.AttentionBase`, and are set by the host model, never by a spec.
An option a backend does not declare, or a value of the wrong type (``causal="false"``), is
a ValueError naming the valid options. The option that depends on the host's token count is
the class attribute ``length_option`` (``"max_len"`` of AFT-full/local);
:meth:`AttentionSpec.with_length` fills it, for ViTs, sequence models and tools alike.
"""
from __future__ import annotations

import inspect
import json
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, TypeVar, Union

__all__ = [
    "register_attention",
    "register_alias",
    "add_registration_hook",
    "list_attentions",
    "get_attention_cls",
    "attention_options",
    "host_arguments",
    "AttentionSpec",
    "HybridSpec",
    "parse_attention",
    "layer_specs",
    "resolve_attention",
    "create_attention",
]

_BACKENDS: Dict[str, type] = {}
_ALIASES: Dict[str, Tuple[str, Dict[str, Any]]] = {}
_HOOKS: List[Callable[[str], None]] = []

T = TypeVar("T", bound=type)


# ----------------------------------------------------------------------------- registration
def register_attention(name: str) -> Callable[[T], T]:
    """Class decorator: register an ``AttentionBase`` subclass under ``name``.

    Registration hooks (:func:`add_registration_hook`: the timm ViT names, the sequence
    families) run for the new name, so a backend registered from any module is a ViT and a
    sequence model at once.
    """
    _check_new_name(name)

    def wrap(cls: T) -> T:
        _check_new_name(name)
        _BACKENDS[name] = cls
        cls.attention_name = name
        _options_cache.pop(cls, None)
        _run_hooks(name)
        return cls

    return wrap


def register_alias(alias: str, target: str, **defaults: Any) -> None:
    """Register ``alias`` as ``target`` with ``defaults`` bound (explicit options still win)."""
    _check_new_name(alias)
    if target not in _BACKENDS:
        raise ValueError(f"alias {alias!r} points at unknown attention {target!r}")
    _check_options(target, _BACKENDS[target], defaults)
    _ALIASES[alias] = (target, dict(defaults))
    _run_hooks(alias)


def add_registration_hook(fn: Callable[[str], None]) -> None:
    """Call ``fn(name)`` for every registered name and alias, now and when one is added."""
    _HOOKS.append(fn)
    for name in list_attentions():
        fn(name)


def _run_hooks(name: str) -> None:
    for fn in list(_HOOKS):
        fn(name)


def _check_new_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"attention name {name!r} must be an identifier (letters, digits, _)")
    if name in _BACKENDS or name in _ALIASES:
        raise ValueError(f"attention name {name!r} is already registered")


def list_attentions(include_aliases: bool = True) -> List[str]:
    """Registered backend names (sorted), with the aliases unless ``include_aliases=False``."""
    names = list(_BACKENDS)
    if include_aliases:
        names += list(_ALIASES)
    return sorted(names)


def _unknown(name: Any) -> ValueError:
    return ValueError(f"unknown attention {name!r}; valid names: {', '.join(list_attentions())}")


def get_attention_cls(name: str) -> type:
    """The class registered under ``name`` (an alias resolves to its target's class)."""
    if not isinstance(name, str):
        raise TypeError(f"attention name must be a str, got {type(name).__name__}")
    if name in _ALIASES:
        name = _ALIASES[name][0]
    if name not in _BACKENDS:
        raise _unknown(name)
    return _BACKENDS[name]


# ----------------------------------------------------------------------------- options
_options_cache: Dict[type, Dict[str, Tuple[Any, Any]]] = {}


def host_arguments() -> Tuple[str, ...]:
    """Constructor arguments the host model sets (timm's ``Block`` passes them): the
    positional parameters of ``AttentionBase.__init__`` (``dim``, ``num_heads``,
    ``qkv_bias``, ..., ``device``, ``dtype``)."""
    from ea_zoo.attention.base import AttentionBase

    params = inspect.signature(AttentionBase.__init__).parameters.values()
    return tuple(p.name for p in params if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD)


def _declared(cls: type) -> Dict[str, Tuple[Any, Any]]:
    """option -> (type hint, default): keyword-only ``__init__`` parameters along the MRO
    (a class whose ``__init__`` takes ``**kwargs`` passes the rest on to its parent)."""
    if cls in _options_cache:
        return _options_cache[cls]
    out: Dict[str, Tuple[Any, Any]] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        init = vars(klass)["__init__"]
        params = inspect.signature(init).parameters.values()
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # unresolvable annotation: fall back to the default's type
            hints = {}
        for p in params:
            if p.kind == p.KEYWORD_ONLY and p.name not in out:
                out[p.name] = (hints.get(p.name, Any), p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break
    _options_cache[cls] = out
    return out


def attention_options(cls: type) -> List[str]:
    """The options a backend class declares (its own and its parents', ``causal`` included;
    not the host's :func:`host_arguments`)."""
    host = set(host_arguments())
    return [k for k in _declared(cls) if k not in host]


def _type_ok(value: Any, hint: Any, default: Any) -> bool:
    if hint is Any or hint is inspect.Parameter.empty:
        if default is None or default is inspect.Parameter.empty:
            return True
        hint = type(default)
    origin = typing.get_origin(hint)
    if origin is Union:
        return any(_type_ok(value, h, inspect.Parameter.empty) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # other annotations: the constructor checks


def _hint_name(hint: Any, default: Any) -> str:
    if hint is Any or hint is inspect.Parameter.empty:
        return type(default).__name__
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check_options(label: str, cls: type, opts: Mapping[str, Any]) -> None:
    declared = _declared(cls)
    valid = attention_options(cls)
    host = [k for k in opts if k in host_arguments()]
    if host:
        raise ValueError(
            f"attention option(s) {sorted(host)} are set by the model, not the attention config; "
            f"pass them to the model (e.g. qkv_bias=..., qk_norm=...). Options of {label!r}: {', '.join(valid)}")
    bad = sorted(k for k in opts if k not in valid)
    if bad:
        raise ValueError(f"unknown option(s) {bad} for attention {label!r}; valid options: {', '.join(valid)}")
    for k, v in opts.items():
        hint, default = declared[k]
        if not _type_ok(v, hint, default):
            raise ValueError(
                f"attention {label!r}: option {k}={v!r} must be {_hint_name(hint, default)} "
                f"(got {type(v).__name__}; default {default!r})")


# ----------------------------------------------------------------------------- specs
def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, Mapping):
        raise ValueError(f"attention option values must be scalars or lists, got a mapping {dict(v)!r}")
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    raise ValueError(f"attention option value {v!r} ({type(v).__name__}) is not JSON-serialisable")


def _thaw(v: Any) -> Any:
    return [_thaw(x) for x in v] if isinstance(v, tuple) else v


def _to_plain(value: Any) -> Any:
    """omegaconf containers -> Python containers; other values as they are."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def _from_json(value: Any, opener: str) -> Any:
    """A str that starts with ``opener`` (``{`` or ``[``) parsed as JSON; other values as is."""
    if not (isinstance(value, str) and value.strip().startswith(opener)):
        return value
    try:
        return json.loads(value)
    except ValueError as e:
        raise ValueError(f"attention {value!r} looks like JSON but does not parse: {e}") from None


def _slug(v: Any) -> str:
    if isinstance(v, bool):
        return "" if v else "False"
    return re.sub(r"[^0-9A-Za-z]+", "p", str(v))


_BOUND: Dict[Tuple[type, str], type] = {}


@dataclass(frozen=True)
class AttentionSpec:
    """One attention backend with options: the normalised form of a user's choice.

    Attributes:
        name: the registered name or alias the user gave (``"ea6"``, ``"ea_series"``).
        option_items: the user's options as sorted ``(key, value)`` pairs (alias defaults
            not included; see :attr:`all_options`).

    Build with :meth:`parse` (or :func:`parse_attention`); the constructor trusts its input.
    """

    name: str
    option_items: Tuple[Tuple[str, Any], ...] = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def parse(cls, value: Any) -> "AttentionSpec":
        """A spec from a name, a mapping / DictConfig with ``name``, its JSON, or a spec.

        Raises ValueError naming the valid backends (unknown name), the valid options
        (unknown option, wrong type) or the accepted forms.
        """
        if isinstance(value, AttentionSpec):
            return value
        value = _from_json(_to_plain(value), "{")
        if isinstance(value, str):
            name, opts = value, {}
        elif isinstance(value, Mapping):
            opts = dict(value)
            if "name" not in opts:
                raise ValueError(f"attention config needs a 'name' key (one of: {', '.join(list_attentions())}); "
                                 f"got keys {sorted(map(str, opts))}")
            name = opts.pop("name")
        elif value is None:
            raise ValueError(f"attention must be given: one of {', '.join(list_attentions())} or a config "
                             "with a 'name' key")
        else:
            raise TypeError(f"attention must be a name (str) or a config mapping with a 'name' key, got "
                            f"{type(value).__name__}")
        if not isinstance(name, str):
            raise TypeError(f"attention name must be a str, got {name!r}")
        klass = get_attention_cls(name)  # unknown name: ValueError listing the valid ones
        opts = {str(k): _freeze(v) for k, v in opts.items()}
        _check_options(name, klass, {**_ALIASES.get(name, ("", {}))[1], **opts})
        return cls(name, tuple(sorted(opts.items())))

    def replace(self, **options: Any) -> "AttentionSpec":
        """This spec with ``options`` set (validated); ``name=`` switches the backend and
        keeps only the options the new one declares."""
        opts = dict(self.option_items)
        name = options.pop("name", self.name)
        if name != self.name:
            valid = set(attention_options(get_attention_cls(name)))
            opts = {k: v for k, v in opts.items() if k in valid}
        return AttentionSpec.parse({"name": name, **opts, **options})

    # ------------------------------------------------------------------ views
    @property
    def options(self) -> Dict[str, Any]:
        """The user's options (a new dict)."""
        return {k: _thaw(v) for k, v in self.option_items}

    @property
    def backend(self) -> str:
        """The registered backend name (an alias resolved)."""
        return _ALIASES[self.name][0] if self.name in _ALIASES else self.name

    @property
    def cls(self) -> type:
        """The backend class."""
        return get_attention_cls(self.name)

    @property
    def all_options(self) -> Dict[str, Any]:
        """Alias defaults merged under the user's options: what the constructor receives."""
        return {**_ALIASES.get(self.name, ("", {}))[1], **self.options}

    @property
    def label(self) -> str:
        """Short readable label: ``"ea6"``, ``"ea6_temperature2"``, ``"ea_series_order4"``."""
        opts = self.options
        if self.name in _ALIASES:  # options equal to the alias defaults say nothing new
            defaults = _ALIASES[self.name][1]
            opts = {k: v for k, v in opts.items() if defaults.get(k, object()) != v}
        return "_".join([self.name] + [f"{k}{_slug(v)}" for k, v in sorted(opts.items())])

    def canonical(self) -> "AttentionSpec":
        """The same backend and options, written the shortest way: options equal to the
        backend's declared defaults dropped, then the alias whose defaults match the most
        options (``{"name": "ea_series", "order": 4, "temperature": 1.0}`` -> ``ea4``)."""
        declared = _declared(self.cls)
        opts = {k: v for k, v in self.all_options.items()
                if not (k in declared and declared[k][1] == v)}
        best, best_n = self.backend, -1
        for alias, (target, defaults) in sorted(_ALIASES.items()):
            if target == self.backend and len(defaults) > best_n and all(
                    opts.get(k, declared.get(k, (None, object()))[1]) == v for k, v in defaults.items()):
                best, best_n = alias, len(defaults)
        if best_n >= 0:
            opts = {k: v for k, v in opts.items() if k not in _ALIASES[best][1]}
        return AttentionSpec(best, tuple(sorted((k, _freeze(v)) for k, v in opts.items())))

    def to_config(self) -> Union[str, Dict[str, Any]]:
        """JSON-serialisable form: the name, or ``{"name": ..., **options}``."""
        return self.name if not self.option_items else {"name": self.name, **self.options}

    def to_json(self) -> str:
        return json.dumps(self.to_config(), sort_keys=True)

    def __str__(self) -> str:
        return self.label

    # ------------------------------------------------------------------ host
    def with_length(self, num_tokens: Optional[int]) -> "AttentionSpec":
        """Fill the backend's ``length_option`` (e.g. AFT's ``max_len``) with the host's token
        count when the spec leaves it unset; other backends are returned unchanged."""
        opt = getattr(self.cls, "length_option", None)
        if opt is None or opt in self.all_options or num_tokens is None:
            return self
        return self.replace(**{opt: int(num_tokens)})

    def split_host(self, kwargs: Mapping[str, Any]) -> Tuple["AttentionSpec", Dict[str, Any]]:
        """``kwargs`` -> (this spec with the option kwargs set, the host kwargs)."""
        host_names = set(host_arguments())
        host = {k: v for k, v in kwargs.items() if k in host_names}
        opts = {k: v for k, v in kwargs.items() if k not in host_names}
        return (self.replace(**opts) if opts else self), host

    def build(self, dim: int, num_heads: int = 8, **kwargs: Any):
        """The module: ``cls(dim, num_heads, **host args, **options)``; ``kwargs`` may hold
        host arguments (``qkv_bias``, ``device``, ...) and options (``causal``, ...)."""
        spec, host = self.split_host(kwargs)
        return spec.cls(dim, num_heads, **host, **spec.all_options)

    def bind(self, **options: Any) -> type:
        """A subclass of the backend whose constructor binds this spec's options (plus
        ``options``): the class timm's ``VisionTransformer(attn_layer=...)`` needs (timm calls
        ``attn_layer(dim, num_heads=..., qkv_bias=..., ...)``). Cached per spec; pickles by
        (backend, options)."""
        spec = self.replace(**options) if options else self
        cls, opts = spec.cls, spec.all_options
        key = (cls, json.dumps(opts, sort_keys=True))
        if key not in _BOUND:
            _BOUND[key] = _bound_class(cls, opts, _alias_label(cls, opts))
        return _BOUND[key]


def _bound_class(cls: type, opts: Dict[str, Any], label: str) -> type:
    name = re.sub(r"\W", "_", f"{cls.__name__}_{label}")
    bound = dict(opts)

    def __init__(self, dim: int, num_heads: int = 8, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, dim, num_heads, *args, **{**bound, **kwargs})

    def __reduce_ex__(self, protocol: int):
        # pickle by (backend class, options), not by the dynamic class's name, so models
        # pickle (torch.save(model), ddp_spawn, deepcopy) and unpickle in a fresh process
        return (_restore_bound, (cls, dict(bound)), self.__getstate__())

    return type(name, (cls,), {
        "__init__": __init__,
        "__reduce_ex__": __reduce_ex__,
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"{cls.__name__} with options {bound} bound (AttentionSpec.bind).\n\n{cls.__doc__ or ''}",
        "bound_options": dict(bound),
        "bound_label": label,
    })


def _alias_label(cls: type, opts: Mapping[str, Any]) -> str:
    """Label of a backend with ``opts``: the alias whose defaults match, plus the other options
    (``EASeriesAttention`` with order 8 -> ``ea8``), else the name plus options."""
    for alias, (target, defaults) in sorted(_ALIASES.items()):
        if target == cls.attention_name and all(opts.get(k) == v for k, v in defaults.items()):
            rest = {k: v for k, v in opts.items() if k not in defaults}
            return "_".join([alias] + [f"{k}{_slug(v)}" for k, v in sorted(rest.items())])
    return "_".join([cls.attention_name] + [f"{k}{_slug(v)}" for k, v in sorted(opts.items())])


def _restore_bound(cls: type, opts: Dict[str, Any]):
    """Unpickling helper: an empty instance of the bound class of ``cls`` with ``opts``."""
    spec = AttentionSpec.parse({"name": cls.attention_name, **opts})
    sub = spec.bind()
    return sub.__new__(sub)


@dataclass(frozen=True)
class HybridSpec:
    """One attention spec per layer: a default and the layers that differ.

    Attributes:
        default: the spec of every layer not listed in ``layers``.
        layers: sorted ``(index, spec)`` pairs (0-based layer indices).
        num_layers: the depth the spec was written for (a per-layer list), or None (the
            mapping form fits any depth above its largest index).
    """

    default: AttentionSpec
    layers: Tuple[Tuple[int, AttentionSpec], ...] = ()
    num_layers: Optional[int] = None

    @classmethod
    def parse(cls, value: Any) -> "HybridSpec":
        """From a list of specs, ``{"default": spec, "layers": {index: spec}}``, a label
        ``"ea6+sa@3,7"`` (EA-6 with SA at layers 3 and 7) or a HybridSpec."""
        if isinstance(value, HybridSpec):
            return value
        value = _to_plain(value)
        if isinstance(value, str):
            return cls._parse_label(value)
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError("per-layer attention list is empty; give one spec per layer")
            specs = [AttentionSpec.parse(v) for v in value]
            counts: Dict[AttentionSpec, int] = {}
            for s in specs:
                counts[s] = counts.get(s, 0) + 1
            default = max(counts, key=lambda s: (counts[s], -specs.index(s)))
            layers = tuple((i, s) for i, s in enumerate(specs) if s != default)
            return cls(default, layers, len(specs))
        if isinstance(value, Mapping):
            extra = sorted(set(value) - {"default", "layers"})
            if extra or "default" not in value:
                raise ValueError(f"per-layer attention mapping takes keys 'default' (a spec) and 'layers' "
                                 f"({{index: spec}}); got keys {sorted(map(str, value))}")
            layers = value.get("layers") or {}
            if not isinstance(layers, Mapping):
                raise ValueError(f"attention 'layers' must map layer indices to specs, got {layers!r}")
            return cls._from_parts(AttentionSpec.parse(value["default"]), layers.items())
        raise TypeError(f"per-layer attention must be a list, a mapping with 'default'/'layers' or a label "
                        f"like 'ea6+sa@3,7', got {type(value).__name__}")

    @classmethod
    def _from_parts(cls, default: AttentionSpec, items: Any) -> "HybridSpec":
        seen: Dict[int, AttentionSpec] = {}
        for key, spec in items:
            idx = _layer_index(key)
            if idx in seen:
                raise ValueError(f"attention layer {idx} is given twice (as {seen[idx].label!r} and "
                                 f"{AttentionSpec.parse(spec).label!r}); give each layer once")
            seen[idx] = AttentionSpec.parse(spec)
        layers = tuple(sorted((i, s) for i, s in seen.items() if s != default))
        return cls(default, layers, None)

    @classmethod
    def _parse_label(cls, text: str) -> "HybridSpec":
        parts = [p.strip() for p in text.split("+")]
        if len(parts) < 2 or any(not p for p in parts) or "@" in parts[0]:
            raise ValueError(f"hybrid attention label {text!r} must look like 'ea6+sa@3,7' (default "
                             "backend, then '+<backend>@<layer indices>' for each other backend)")
        items = []
        for part in parts[1:]:
            name, at, idx = part.partition("@")
            if not at or not idx:
                raise ValueError(f"hybrid attention label {text!r}: {part!r} must be '<backend>@<indices>'")
            for i in idx.split(","):
                items.append((i.strip(), name.strip()))
        return cls._from_parts(AttentionSpec.parse(parts[0]), items)

    # ------------------------------------------------------------------ views
    @property
    def label(self) -> str:
        """``"ea6+sa@3,7"``: the default, then each other spec with its layers."""
        groups: Dict[AttentionSpec, List[int]] = {}
        for i, s in self.layers:
            groups.setdefault(s, []).append(i)
        return "+".join([self.default.label] + [f"{s.label}@{','.join(map(str, idx))}" for s, idx in groups.items()])

    def to_config(self) -> Union[List[Any], Dict[str, Any]]:
        """JSON-serialisable: the list (when written per layer) or ``{"default", "layers"}``."""
        if self.num_layers is not None:
            return [s.to_config() for s in self.per_layer(self.num_layers)]
        return {"default": self.default.to_config(), "layers": {i: s.to_config() for i, s in self.layers}}

    def to_json(self) -> str:
        return json.dumps(self.to_config(), sort_keys=True)

    def __str__(self) -> str:
        return self.label

    def per_layer(self, depth: int) -> List[AttentionSpec]:
        """The spec of each of ``depth`` layers; ValueError for an index out of range or a list
        of another length."""
        if self.num_layers is not None and self.num_layers != depth:
            raise ValueError(f"per-layer attention lists {self.num_layers} specs but the model has depth "
                             f"{depth}; give exactly one spec per layer")
        bad = [i for i, _ in self.layers if i >= depth]
        if bad:
            raise ValueError(f"attention layer index {bad[0]} is out of range for a model of depth {depth} "
                             f"(valid indices 0..{depth - 1})")
        out = [self.default] * depth
        for i, s in self.layers:
            out[i] = s
        return out

    def with_length(self, num_tokens: Optional[int]) -> "HybridSpec":
        return HybridSpec(self.default.with_length(num_tokens),
                          tuple((i, s.with_length(num_tokens)) for i, s in self.layers), self.num_layers)

    def canonical(self) -> "HybridSpec":
        """Each layer's spec in its :meth:`AttentionSpec.canonical` form."""
        default = self.default.canonical()
        layers = tuple((i, s.canonical()) for i, s in self.layers)
        return HybridSpec(default, tuple((i, s) for i, s in layers if s != default), self.num_layers)

    def specs(self) -> List[AttentionSpec]:
        """The distinct specs (default first)."""
        out = [self.default]
        for _, s in self.layers:
            if s not in out:
                out.append(s)
        return out


def _layer_index(key: Any) -> int:
    if isinstance(key, bool):
        raise ValueError(f"attention layer index {key!r} must be a non-negative int")
    if isinstance(key, str) and re.fullmatch(r"\s*\d+\s*", key):
        key = int(key)
    if not isinstance(key, int) or key < 0:
        raise ValueError(f"attention layer index {key!r} must be a non-negative int (0-based layer number)")
    return key


Spec = Union[AttentionSpec, HybridSpec]


def parse_attention(value: Any) -> Spec:
    """The one normaliser: any user form -> :class:`AttentionSpec` or :class:`HybridSpec`.

    Accepts a name (``"ea6"``), a mapping / DictConfig with ``name`` and options, its JSON,
    a per-layer list, a ``{"default", "layers"}`` mapping, a hybrid label
    (``"ea6+sa@3,7"``), or an already parsed spec (returned as is).
    """
    if isinstance(value, (AttentionSpec, HybridSpec)):
        return value
    value = _from_json(_to_plain(value), "[")
    if isinstance(value, (list, tuple)) or (isinstance(value, str) and "+" in value):
        return HybridSpec.parse(value)
    if isinstance(value, Mapping) and "name" not in value and ("default" in value or "layers" in value):
        return HybridSpec.parse(value)
    return AttentionSpec.parse(value)


def layer_specs(value: Any, depth: int) -> List[AttentionSpec]:
    """One :class:`AttentionSpec` per layer of a model of ``depth`` layers."""
    spec = parse_attention(value)
    if isinstance(spec, AttentionSpec):
        return [spec] * depth
    return spec.per_layer(depth)


# ----------------------------------------------------------------------------- compatibility
def resolve_attention(name_or_cfg: Any) -> Tuple[type, Dict[str, Any]]:
    """``(cls, options)`` of a single-backend spec (alias defaults merged under its options)."""
    spec = AttentionSpec.parse(name_or_cfg)
    return spec.cls, spec.all_options


def create_attention(name_or_cfg: Any, dim: int, num_heads: int = 8, **kwargs: Any):
    """Build an attention module from a name or config.

    Args:
        name_or_cfg: a registered name or alias (``"ea6"``), a dict/DictConfig with ``name``,
            or an :class:`AttentionSpec`.
        dim: model width D.
        num_heads: heads H.
        **kwargs: host arguments (``qkv_bias``, ``qk_norm``, ``device``, ...) and backend
            options (``causal``, ``order``, ...); options override the spec's.
    """
    spec = parse_attention(name_or_cfg)
    if isinstance(spec, HybridSpec):
        raise ValueError(f"create_attention builds one layer; {spec.label!r} is a per-layer spec "
                         "(give it to a model, or use layer_specs(spec, depth))")
    return spec.build(dim, num_heads, **kwargs)
