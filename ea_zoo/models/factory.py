"""Model factory: names and configs -> models, for ViTs (timm) and sequence Transformers.

    >>> import ea_zoo
    >>> ea_zoo.create_model("vit_small_patch16_224", attention="ea6")      # any timm ViT, swapped
    >>> ea_zoo.create_model("vit_ea6", num_classes=10, img_size=32, patch_size=4)
    >>> ea_zoo.create_model("vit_ea6", attention="ea6+sa@3,7")             # per-layer (hybrid)
    >>> ea_zoo.create_model("tsc_ea6", in_chans=3, num_classes=5)          # sequence classifier
    >>> ea_zoo.build_model("tsf", overrides=["attention=ea2", "model.depth=3"])
    >>> cfg = load_config("lm", ["attention=sa", "model.norm_first=true"])

Every entry point (:func:`create_model`, :func:`build_model`, :func:`load_config`) turns the
attention it is given into a spec once (:func:`ea_zoo.registry.parse_attention`) and hands
that object down.

Sequence model names live in :data:`SEQUENCE_MODELS` (name -> builder): for each family in
:data:`SEQUENCE_FAMILIES` (``bert_base``, ``tsc``, ``tsf``, ``lm``) the bare family name (needs
``attention=``) and ``{family}_{backend}`` for every registered attention name. ViT names are
registered with timm (:mod:`ea_zoo.models.vit`). Both follow the registry (registration
hooks), so a backend registered later has its models too.

Configs (omegaconf YAML, :func:`ea_zoo.configs.config_dir`, ``$EA_ZOO_CONFIG_DIR`` read at each
call): a model config has a ``model`` section (``name`` plus constructor arguments) and an
``attention`` section (a spec: a backend name, a mapping with ``name`` and options, or a
per-layer form); ``attention/<name>.yaml`` holds one backend config each. :func:`load_config`
is the one override reader, for model configs and (called by the experiment loader) whole
experiment configs:

* ``attention=ea6`` (loads ``attention/ea6.yaml``), ``attention=ea6+sa@3,7`` (per layer),
  ``attention={name: ea_series, order: 4}``;
* ``attention.<option>=v`` (validated by the registry: unknown options and wrong types, e.g.
  ``causal='false'``, are errors naming the valid options), ``attention.name=sa``;
* ``attention.default=<spec>``, ``attention.layers.<i>=<spec>``,
  ``attention.layers.<i>.<option>=v``, ``attention.default.<option>=v`` (per layer);
* ``model.<arg>=v`` (checked against the model's arguments), ``model=<config name>``;
* ``<section>.<key>=v`` for any other section the config has (``trainer.max_epochs=3``,
  ``seed=1``; those sections are validated by their own reader).

Unknown keys and invalid values raise ValueError naming the key and what is allowed.
"""
from __future__ import annotations

import copy
import fnmatch
import inspect
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from torch import nn

import timm
from omegaconf import DictConfig, ListConfig, OmegaConf
from timm.models.vision_transformer import VisionTransformer

from ea_zoo.configs import config_dir, config_names, config_path
from ea_zoo.models.sequence import SequenceTransformer
from ea_zoo.models.vit import VIT_MODEL_NAMES, create_timm_model
from ea_zoo.registry import AttentionSpec, HybridSpec, layer_specs, parse_attention

__all__ = [
    "SEQUENCE_FAMILIES",
    "SEQUENCE_MODELS",
    "register_sequence_model",
    "create_model",
    "list_models",
    "load_config",
    "build_model",
    "config_dir",
    "model_config_keys",
]

# ----------------------------------------------------------------------------- sequence families
# The family argument dicts (SEQUENCE_FAMILIES), the name -> builder table (SEQUENCE_MODELS),
# register_sequence_model and the entrypoints live in one place, ea_zoo.models.sequence_families;
# {family}_{backend} is generated there for every registered attention (a registry hook).
from ea_zoo.models.sequence_families import (  # noqa: E402
    SEQUENCE_FAMILIES,
    SEQUENCE_MODELS,
    register_sequence_model,
)


# ----------------------------------------------------------------------------- names
def _base_name(name: str) -> str:
    return name.split(".", 1)[0]


def create_model(model_name: str, attention: Any = None, **kwargs: Any) -> nn.Module:
    """Build a model by name, optionally with another attention backend.

    Args:
        model_name: an ea_zoo sequence model (``tsc_ea6``, ``lm``, ...; see :func:`list_models`),
            an ea_zoo ViT (``vit_ea6``, ``vit_small_patch16_224_sa``, ...) or any timm model
            built on ``VisionTransformer`` (``vit_small_patch16_224``, ``deit_tiny_patch16_224``).
        attention: a spec (name, config mapping / DictConfig, per-layer list, ``{default,
            layers}`` mapping, label ``"ea6+sa@3,7"`` or a parsed spec); ``None`` keeps the
            name's default (timm's softmax ``Attention`` for plain timm names).
        **kwargs: model arguments (timm's ``create_model`` kwargs for ViTs).
    """
    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a str, got {type(model_name).__name__}; use build_model for configs")
    spec = None if attention is None else parse_attention(attention)
    if model_name in SEQUENCE_MODELS:
        return SEQUENCE_MODELS[model_name](attention=spec, **kwargs)
    base = _base_name(model_name)
    if base in VIT_MODEL_NAMES or timm.is_model(base):
        return create_timm_model(model_name, spec, **kwargs)
    raise ValueError(
        f"unknown model {model_name!r}: not an ea_zoo model (ea_zoo.list_models(): "
        f"{', '.join(list_models('*_ea6'))}, ...) nor a timm model")


def list_models(filter: Union[str, Sequence[str]] = "", include_timm: bool = False) -> List[str]:
    """Names :func:`create_model` builds: ea_zoo's sequence models and ViTs (sorted).

    Args:
        filter: fnmatch pattern(s), e.g. ``'vit_*ea*'``, ``'tsc_*'``.
        include_timm: also list every timm model (any ``VisionTransformer`` one takes ``attention``).
    """
    names = set(SEQUENCE_MODELS) | set(VIT_MODEL_NAMES)
    if include_timm:
        names |= set(timm.list_models())
    pats = [filter] if isinstance(filter, str) else list(filter)
    pats = [p for p in pats if p]
    if pats:
        names = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)}
    return sorted(names)


# ----------------------------------------------------------------------------- model section
#: keyword arguments timm's create_model / build_model_with_cfg take besides the model's own
_TIMM_FACTORY_KEYS = (
    "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir", "scriptable",
    "exportable", "no_jit", "features_only", "out_indices", "feature_cls", "pretrained_strict",
)


def _is_vit(name: str) -> bool:
    base = _base_name(name)
    if base in VIT_MODEL_NAMES:
        return True
    return bool(timm.is_model(base)) and base in set(timm.list_models(module="vision_transformer"))


def model_config_keys(model_name: str) -> Optional[List[str]]:
    """Keys a ``model`` config section may hold for ``model_name`` (None: not checked)."""
    if model_name in SEQUENCE_MODELS:
        params = inspect.signature(SequenceTransformer.__init__).parameters
        return ["name"] + [p for p in params if p not in ("self", "attention")]
    if _is_vit(model_name):
        params = inspect.signature(VisionTransformer.__init__).parameters
        skip = ("self", "attn_layer", "block_fn", "mlp_layer", "embed_layer", "device", "dtype")
        return ["name"] + [p for p in params if p not in skip] + list(_TIMM_FACTORY_KEYS)
    return None


def _check_model_key(model_name: Any, arg: str) -> None:
    allowed = model_config_keys(model_name) if isinstance(model_name, str) else None
    if "." in arg or (allowed is not None and arg not in allowed):
        raise ValueError(f"unknown key {'model.' + arg!r} for model {model_name!r}; allowed keys: "
                         f"{', '.join('model.' + k for k in (allowed or []))}")


# ----------------------------------------------------------------------------- reading
def _read_yaml(path_or_name: Union[str, Path], kind: str) -> DictConfig:
    p = Path(path_or_name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"config file {str(p)!r} does not exist")
        return OmegaConf.load(p)
    cand = config_path(kind, str(path_or_name))
    if cand.exists():
        return OmegaConf.load(cand)
    raise ValueError(f"unknown {kind} config {str(path_or_name)!r}: not a file, and not one of "
                     f"{', '.join(config_names(kind))} (in {config_dir() / kind})")


def _parse_override(item: str):
    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value (e.g. attention=ea6, attention.order=4, "
                         "model.depth=6)")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise ValueError(f"override {item!r} has an empty key")
    value = OmegaConf.from_dotlist([f"v={raw}"]).v if raw.strip() != "" else ""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return key, value


# ----------------------------------------------------------------------------- attention section
def _spec_node(spec: AttentionSpec) -> Dict[str, Any]:
    """The config node of one spec: ``attention/<name>.yaml`` for a bare name that has one,
    else ``{"name": ..., **options}``."""
    if not spec.option_items:
        f = config_path("attention", spec.name)
        if f.exists():
            node = OmegaConf.to_container(OmegaConf.load(f), resolve=True)
            parse_attention(node)  # a broken YAML names its file's content
            return node
    return {"name": spec.name, **spec.options}


def _attention_node(value: Any) -> Any:
    """Any ``attention`` value -> its config node, validated by the registry: one spec -> a
    mapping with ``name``; a per-layer list -> a list of those; any other per-layer form ->
    ``{"default": node, "layers": {index: node}}``."""
    spec = parse_attention(value)  # ValueError naming the valid names / options / forms
    if isinstance(spec, AttentionSpec):
        return _spec_node(spec)
    if spec.num_layers is not None:
        return [_spec_node(s) for s in spec.per_layer(spec.num_layers)]
    return {"default": _spec_node(spec.default), "layers": {i: _spec_node(s) for i, s in spec.layers}}


def _layer_key(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"attention layer index {text!r} must be a non-negative int (0-based layer number)")
    return int(text)


def _set_option(node: Any, path: List[str], value: Any) -> Dict[str, Any]:
    """``node`` (one spec) with ``path`` (``[option]``; ``["name"]`` switches the backend and
    keeps the options the new one declares) set to ``value``; the registry validates."""
    spec = parse_attention(node)
    if isinstance(spec, HybridSpec):
        raise ValueError(f"attention is per-layer ({spec.label!r}): set attention.default.<option>= or "
                         "attention.layers.<index>.<option>=")
    if len(path) != 1:
        raise ValueError(f"unknown key 'attention.{'.'.join(path)}': attention options are flat "
                         f"(attention.<option>=value)")
    if path[0] == "name":
        new = spec.replace(name=value) if isinstance(value, str) else parse_attention({"name": value})
        return {"name": new.name, **new.options}
    spec.replace(**{path[0]: value})  # unknown option / wrong type: the registry's ValueError
    return {**(node if isinstance(node, Mapping) else {"name": node}), path[0]: value}


def _set_attention(node: Any, path: List[str], value: Any) -> Any:
    """The attention node with ``attention.<path>=value`` applied (see the module docstring)."""
    if node is None:
        raise ValueError("the config has no attention section; set attention=<name> first")
    head, rest = path[0], path[1:]
    if head not in ("default", "layers"):
        return _attention_node(_set_option(node, path, value))
    if isinstance(node, list):  # per-layer list: its layers by position
        if head == "default" or not rest:
            raise ValueError("attention is a per-layer list: set attention.layers.<index>=<spec> (or give "
                             "attention={default: <spec>, layers: {<index>: <spec>}})")
        i = _layer_key(rest[0])
        if i >= len(node):
            raise ValueError(f"attention layer index {i} is out of range for the per-layer list of {len(node)} "
                             f"specs (valid indices 0..{len(node) - 1})")
        node = list(node)
        node[i] = _attention_node(value) if len(rest) == 1 else _set_option(node[i], rest[1:], value)
        return _attention_node(node)
    spec = parse_attention(node)
    hyb = (dict(node) if isinstance(spec, HybridSpec) else {"default": node, "layers": {}})
    hyb["layers"] = dict(hyb.get("layers") or {})
    if head == "default":
        hyb["default"] = _attention_node(value) if not rest else _set_option(hyb["default"], rest, value)
    elif not rest:  # attention.layers={3: sa, ...}
        if not isinstance(value, Mapping):
            raise ValueError(f"attention.layers must map layer indices to specs, got {value!r}")
        hyb["layers"] = dict(value)
    else:
        i = _layer_key(rest[0])
        layers = {_layer_key(str(k)): v for k, v in hyb["layers"].items()}
        layers[i] = _attention_node(value) if len(rest) == 1 else _set_option(layers.get(i, hyb["default"]),
                                                                               rest[1:], value)
        hyb["layers"] = layers
    return _attention_node(hyb) if hyb["layers"] else _attention_node(hyb["default"])


# ----------------------------------------------------------------------------- configs
def _normalise_config(cfg: Any) -> Dict[str, Any]:
    """Dict/DictConfig/path/name -> plain dict with 'model' (and 'attention' as a node)."""
    if isinstance(cfg, (str, Path)):
        cfg = _read_yaml(cfg, "model")
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"config must be a mapping, DictConfig, YAML path or config name, got {type(cfg).__name__}")
    cfg = copy.deepcopy(dict(cfg))
    if "model" not in cfg:
        if "name" in cfg:  # flat form: the model section itself
            model = dict(cfg)
            attn = model.pop("attention", None)
            cfg = {"model": model}
            if attn is not None:
                cfg["attention"] = attn
        else:
            raise ValueError(f"config needs a 'model' section (with 'name'); got keys {sorted(map(str, cfg))}")
    if not isinstance(cfg["model"], Mapping) or "name" not in cfg["model"]:
        raise ValueError("config section 'model' must be a mapping with a 'name' key "
                         f"(one of ea_zoo.list_models() or a timm ViT name); got {cfg['model']!r}")
    cfg["model"] = dict(cfg["model"])
    if "attention" in cfg["model"]:
        if cfg.get("attention") is not None:
            raise ValueError("attention is given both at the top level and in the model section; keep one")
        cfg["attention"] = cfg["model"].pop("attention")
    if cfg.get("attention") is not None:
        cfg["attention"] = _attention_node(cfg["attention"])
    return cfg


def _apply_override(cfg: Dict[str, Any], key: str, value: Any) -> Dict[str, Any]:
    if key == "attention":
        cfg["attention"] = _attention_node(value)
    elif key.startswith("attention."):
        cfg["attention"] = _set_attention(cfg.get("attention"), key.split(".")[1:], value)
    elif key == "model":
        if not isinstance(value, str):
            raise ValueError(f"model=<config name>, one of {', '.join(config_names('model'))}")
        other = _normalise_config(value)
        cfg["model"] = other["model"]
        if other.get("attention") is not None and cfg.get("attention") is None:
            cfg["attention"] = other["attention"]
    elif key.startswith("model."):
        arg = key[len("model."):]
        _check_model_key(value if arg == "name" else cfg["model"]["name"], arg)
        cfg["model"][arg] = value
    else:  # another section: set it; its own reader (the experiment loader) validates it
        if key.split(".", 1)[0] not in cfg:
            raise ValueError(f"unknown key {key!r}; allowed top-level keys: "
                             f"{', '.join(sorted(set(map(str, cfg)) | {'model', 'attention'}))}")
        node = OmegaConf.create(cfg)
        OmegaConf.update(node, key, value, merge=False)
        cfg = OmegaConf.to_container(node, resolve=True)
    return cfg


def _validate(cfg: Dict[str, Any]) -> None:
    name = cfg["model"]["name"]
    if not isinstance(name, str):
        raise ValueError(f"model.name must be a str, got {name!r}")
    if name not in SEQUENCE_MODELS and not timm.is_model(_base_name(name)):
        raise ValueError(f"model.name={name!r} is not a known model; allowed: ea_zoo.list_models() "
                         f"(e.g. {', '.join(list_models(['tsc_ea6', 'vit_ea6', 'lm']))}) or a timm ViT name")
    for arg in cfg["model"]:
        if arg != "name":
            _check_model_key(name, arg)
    if cfg.get("attention") is not None and isinstance(cfg["model"].get("depth"), int):
        layer_specs(cfg["attention"], cfg["model"]["depth"])  # a per-layer spec must fit the depth


def load_config(path_or_name: Any, overrides: Optional[Iterable[str]] = None) -> DictConfig:
    """Load a config and apply dotlist overrides: the one override reader of ea_zoo.

    Args:
        path_or_name: a YAML path, a name under ``configs/model`` (``'vit_small'``, ``'tsc'``,
            ...), a dict or a DictConfig: a model config, or a whole experiment config (other
            sections are kept and take overrides as they are).
        overrides: ``key=value`` strings: ``attention=<spec>`` (a name loads
            ``configs/attention/<name>.yaml``; ``ea6+sa@3,7`` is per-layer),
            ``attention.<option>=v``, ``attention.name=<backend>``, ``attention.default=<spec>``,
            ``attention.layers.<i>=<spec>``, ``attention.layers.<i>.<option>=v``,
            ``model.<arg>=v``, ``model=<config name>`` (another config's model section),
            ``<section>[.<key>]=v`` for a section the config has.

    Returns:
        A DictConfig with ``model``, ``attention`` (a validated spec node) and any other
        section of the input; ``build_model`` builds it.

    Raises:
        ValueError naming the override, the key and the allowed keys/values for an unknown
        key, backend or option, a wrongly typed option or a per-layer spec that does not fit.
    """
    cfg = _normalise_config(path_or_name)
    for item in overrides or []:
        key, value = _parse_override(item)
        try:
            cfg = _apply_override(cfg, key, value)
        except ValueError as e:
            raise ValueError(f"override {item!r}: {e}") from None
    _validate(cfg)
    return OmegaConf.create(cfg)


def build_model(cfg: Any, overrides: Optional[Iterable[str]] = None) -> nn.Module:
    """Build a model from a config (DictConfig / dict / YAML path / config name).

    ``cfg['model']`` holds ``name`` and the model arguments; ``cfg['attention']`` the spec
    (any form :func:`ea_zoo.registry.parse_attention` takes). Other top-level sections
    (training, data) are ignored.
    """
    c = OmegaConf.to_container(load_config(cfg, overrides), resolve=True)
    model_args = dict(c["model"])
    name = model_args.pop("name")
    attention = c.get("attention")
    return create_model(name, attention=None if attention is None else parse_attention(attention), **model_args)
