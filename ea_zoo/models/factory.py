"""Model factory: names and configs -> models, for ViTs (timm) and sequence Transformers.

    >>> import ea_zoo
    >>> ea_zoo.create_model("vit_small_patch16_224", attention="ea6")      # any timm ViT, swapped
    >>> ea_zoo.create_model("vit_ea6", num_classes=10, img_size=32, patch_size=4)
    >>> ea_zoo.create_model("tsc_ea6", in_chans=3, num_classes=5)          # sequence classifier
    >>> ea_zoo.build_model("tsf", overrides=["attention=ea2", "model.depth=3"])
    >>> cfg = load_config("configs/model/lm.yaml", ["attention=sa", "model.norm_first=true"])

Sequence model names live in :data:`SEQUENCE_MODELS` (name -> builder): for each family in
:data:`SEQUENCE_FAMILIES` (``bert_base``, ``tsc``, ``tsf``, ``lm``) the bare family name (needs
``attention=``) and ``{family}_{backend}`` for every backend of
:data:`~ea_zoo.models.vit.VIT_BACKENDS`. ViT names are registered with timm
(:mod:`ea_zoo.models.vit`).

Configs (omegaconf YAML, ``configs/``): a model config has a ``model`` section (``name`` plus
constructor arguments) and an ``attention`` section (a backend name or a mapping with
``name`` and options); ``configs/attention/<name>.yaml`` holds one backend config each.
Overrides are dotlist strings: ``attention=ea6`` (loads ``configs/attention/ea6.yaml``),
``attention.order=4``, ``model.depth=6``, ``model=tsf`` (another model config's section).
Unknown keys and invalid values raise ValueError naming the key and what is allowed.
"""
from __future__ import annotations

import copy
import fnmatch
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

import timm
from omegaconf import DictConfig, ListConfig, OmegaConf
from timm.models.vision_transformer import VisionTransformer

from ea_zoo.configs import config_dir
from ea_zoo.models.binding import CONSTRUCTOR_ARGS, normalize_attention
from ea_zoo.models.sequence import SequenceTransformer
from ea_zoo.models.vit import VIT_BACKENDS, VIT_MODEL_NAMES, create_timm_model
from ea_zoo.registry import _to_dict, attention_options, list_attentions, resolve_attention

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

#: default arguments of each sequence-model family (mirrored by configs/model/<family>.yaml)
SEQUENCE_FAMILIES: Dict[str, Dict[str, Any]] = {
    # BERT-base sizes (Devlin et al. 2019; Feng 2025 section 4.2): 12 layers, D 768, 12 heads of
    # 64, FFN 3072, post-LN, learned positions up to 512, embedding LayerNorm. Token encoder
    # returning hidden states (no token-type embeddings, pooler or MLM head).
    "bert_base": dict(task="encode", vocab_size=30522, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                      dropout=0.1, norm_first=False, causal=False, pos_embed="learned", max_len=512,
                      embed_norm=True),
    # multivariate time-series classification (Feng 2025 section 4.1, non-causal); defaults
    # sized for JapaneseVowels (12 series, 9 labels)
    "tsc": dict(task="classify", in_chans=12, num_classes=9, embed_dim=128, depth=3, num_heads=8, mlp_ratio=2.0,
                dropout=0.1, norm_first=False, causal=False, pos_embed="sinusoidal", pool="mean"),
    # time-series forecasting (Feng 2025 section 4.1, causal): L' = 12 future values of 7
    # variables (ETT) from the last token of a causal decoder
    "tsf": dict(task="forecast", in_chans=7, pred_len=12, embed_dim=128, depth=2, num_heads=8, mlp_ratio=4.0,
                dropout=0.1, norm_first=False, causal=True, pos_embed="sinusoidal", pool="last"),
    # causal (byte-level) language model
    "lm": dict(task="lm", vocab_size=256, embed_dim=256, depth=4, num_heads=4, mlp_ratio=4.0,
               dropout=0.1, norm_first=False, causal=True, pos_embed="sinusoidal"),
}

_DESCRIPTIONS = {
    "bert_base": "BERT-base-sized token encoder (hidden states)",
    "tsc": "time-series classifier (encoder, mean pooling)",
    "tsf": "time-series forecaster (causal decoder)",
    "lm": "causal language model (greedy generate)",
}

#: name -> builder(attention=None, **kwargs) -> nn.Module
SEQUENCE_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_sequence_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder ``fn(attention=None, **kwargs)`` under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in SEQUENCE_MODELS or name in VIT_MODEL_NAMES:
            raise ValueError(f"model name {name!r} is already registered")
        SEQUENCE_MODELS[name] = fn
        return fn

    return wrap


def _family_builder(family: str, default_attention: Optional[str]) -> Callable[..., SequenceTransformer]:
    defaults = SEQUENCE_FAMILIES[family]

    def build(attention: Any = None, **kwargs: Any) -> SequenceTransformer:
        if attention is None:
            attention = default_attention
        if attention is None:
            raise ValueError(f"model {family!r} needs an attention backend: attention=<name or config>, "
                             f"one of {', '.join(list_attentions())} (or use e.g. '{family}_ea6')")
        _check_model_kwargs(family, kwargs)
        args = dict(defaults)
        # switching the input kind: giving one of in_chans / vocab_size drops the other default
        if "in_chans" in kwargs and "vocab_size" not in kwargs:
            args.pop("vocab_size", None)
        if "vocab_size" in kwargs and "in_chans" not in kwargs:
            args.pop("in_chans", None)
        args.update(kwargs)
        model = SequenceTransformer(attention=attention, **args)
        model.model_name = family if default_attention is None else f"{family}_{default_attention}"
        model.config = {"model": {"name": family, **{k: v for k, v in args.items()}},
                        "attention": normalize_attention(attention)}
        return model

    build.__name__ = family if default_attention is None else f"{family}_{default_attention}"
    build.__doc__ = (f"{_DESCRIPTIONS[family]}; attention "
                     f"{'required' if default_attention is None else repr(default_attention)}. Defaults: {defaults}")
    return build


for _family in SEQUENCE_FAMILIES:
    register_sequence_model(_family)(_family_builder(_family, None))
    for _backend in VIT_BACKENDS:
        register_sequence_model(f"{_family}_{_backend}")(_family_builder(_family, _backend))


# ----------------------------------------------------------------------------- names
def _base_name(name: str) -> str:
    return name.split(".", 1)[0]


def create_model(model_name: str, attention: Any = None, **kwargs: Any) -> nn.Module:
    """Build a model by name, optionally with another attention backend.

    Args:
        model_name: an ea_zoo sequence model (``tsc_ea6``, ``lm``, ...; see :func:`list_models`),
            an ea_zoo ViT (``vit_ea6``, ``vit_small_patch16_224_sa``, ...) or any timm model
            built on ``VisionTransformer`` (``vit_small_patch16_224``, ``deit_tiny_patch16_224``).
        attention: backend name or config (str / dict / DictConfig); ``None`` keeps the name's
            default (timm's softmax ``Attention`` for plain timm names).
        **kwargs: model arguments (timm's ``create_model`` kwargs for ViTs).
    """
    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be a str, got {type(model_name).__name__}; use build_model for configs")
    if attention is not None:
        attention = normalize_attention(attention)
    if model_name in SEQUENCE_MODELS:
        return SEQUENCE_MODELS[model_name](attention=attention, **kwargs)
    base = _base_name(model_name)
    if base in VIT_MODEL_NAMES or timm.is_model(base):
        return create_timm_model(model_name, attention, **kwargs)
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


# ----------------------------------------------------------------------------- configs
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


def _check_model_kwargs(model_name: str, kwargs: Mapping[str, Any], prefix: str = "") -> None:
    allowed = model_config_keys(model_name)
    if allowed is None:
        return
    bad = sorted(k for k in kwargs if k not in allowed)
    if bad:
        raise ValueError(
            f"unknown key(s) {[prefix + k for k in bad]} for model {model_name!r}; allowed keys: "
            f"{', '.join(prefix + k for k in allowed)}")


def _known_model_configs() -> List[str]:
    d = config_dir() / "model"
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _read_yaml(path_or_name: Union[str, Path], kind: str) -> DictConfig:
    p = Path(path_or_name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"config file {str(p)!r} does not exist")
        return OmegaConf.load(p)
    cand = config_dir() / kind / f"{path_or_name}.yaml"
    if cand.exists():
        return OmegaConf.load(cand)
    known = sorted(q.stem for q in (config_dir() / kind).glob("*.yaml")) if (config_dir() / kind).is_dir() else []
    raise ValueError(f"unknown {kind} config {str(path_or_name)!r}: not a file, and not one of {', '.join(known)} "
                     f"(in {config_dir() / kind})")


def _attention_node(value: Any) -> Any:
    """An ``attention=`` value -> its config: a name loads configs/attention/<name>.yaml when
    there is one (else stays ``{'name': name}``); a mapping is validated."""
    if isinstance(value, str):
        resolve_attention(value)  # unknown name: ValueError listing the valid ones
        f = config_dir() / "attention" / f"{value}.yaml"
        if f.exists():
            node = OmegaConf.to_container(OmegaConf.load(f), resolve=True)
            normalize_attention(node)
            return node
        return {"name": value}
    if isinstance(value, (Mapping, DictConfig)):
        node = _to_dict(value)
        normalize_attention(node)
        return node
    raise ValueError(f"attention must be a backend name ({', '.join(list_attentions())}) or a mapping with "
                     f"'name', got {value!r}")


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


def _normalise_config(cfg: Any) -> Dict[str, Any]:
    """Dict/DictConfig/path/name -> plain dict with 'model' (and 'attention')."""
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
            raise ValueError(f"config needs a 'model' section (with 'name'); got keys {sorted(cfg)}")
    if not isinstance(cfg["model"], Mapping) or "name" not in cfg["model"]:
        raise ValueError("config section 'model' must be a mapping with a 'name' key "
                         f"(one of ea_zoo.list_models() or a timm ViT name); got {cfg['model']!r}")
    cfg["model"] = dict(cfg["model"])
    if "attention" in cfg["model"]:
        if cfg.get("attention") is not None:
            raise ValueError("attention is given both at the top level and in the model section; keep one")
        cfg["attention"] = cfg["model"].pop("attention")
    return cfg


def _validate(cfg: Dict[str, Any]) -> None:
    name = cfg["model"]["name"]
    if not isinstance(name, str):
        raise ValueError(f"model.name must be a str, got {name!r}")
    if name not in SEQUENCE_MODELS and not timm.is_model(_base_name(name)):
        raise ValueError(f"model.name={name!r} is not a known model; allowed: ea_zoo.list_models() "
                         f"(e.g. {', '.join(list_models(['tsc_ea6', 'vit_ea6', 'lm']))}) or a timm ViT name")
    _check_model_kwargs(name, {k: v for k, v in cfg["model"].items() if k != "name"}, prefix="model.")
    if cfg.get("attention") is not None:
        cfg["attention"] = _attention_node(cfg["attention"])


def load_config(path_or_name: Any, overrides: Optional[Iterable[str]] = None) -> DictConfig:
    """Load a model config and apply dotlist overrides.

    Args:
        path_or_name: a YAML path, a name under ``configs/model`` (``'vit_small'``, ``'tsc'``,
            ...), a dict or a DictConfig.
        overrides: ``key=value`` strings: ``attention=<name>`` (replaces the attention section
            by ``configs/attention/<name>.yaml``), ``attention.<option>=v``, ``model.<arg>=v``,
            ``model=<config name>`` (another config's model section), ``<top-level key>=v``.

    Returns:
        A DictConfig with ``model`` and ``attention``; ``build_model`` builds it.

    Raises:
        ValueError naming the key and the allowed keys/values for an unknown key, backend or
        option.
    """
    cfg = _normalise_config(path_or_name)
    for item in overrides or []:
        key, value = _parse_override(item)
        if key == "attention":
            cfg["attention"] = _attention_node(value)
        elif key.startswith("attention."):
            opt = key[len("attention."):]
            node = _attention_node(cfg["attention"]) if cfg.get("attention") is not None else None
            if node is None:
                raise ValueError(f"override {item!r}: the config has no attention section; set attention=<name> first")
            cls, _ = resolve_attention(node)
            allowed = ["name"] + [k for k in attention_options(cls) if k not in CONSTRUCTOR_ARGS]
            if "." in opt or opt not in allowed:
                raise ValueError(f"unknown key {key!r} for attention {node['name']!r}; allowed keys: "
                                 f"{', '.join('attention.' + k for k in allowed)}")
            node[opt] = value
            if opt == "name":  # a new backend keeps only the options it accepts
                new_cls, _ = resolve_attention(value)
                valid = set(attention_options(new_cls))
                node = {k: v for k, v in node.items() if k == "name" or k in valid}
            cfg["attention"] = _attention_node(node)
        elif key == "model":
            if not isinstance(value, str):
                raise ValueError(f"override {item!r}: model=<config name>, one of {', '.join(_known_model_configs())}")
            other = _normalise_config(value)
            cfg["model"] = other["model"]
            if other.get("attention") is not None and cfg.get("attention") is None:
                cfg["attention"] = other["attention"]
        elif key.startswith("model."):
            arg = key[len("model."):]
            name = value if arg == "name" else cfg["model"]["name"]
            allowed = model_config_keys(name) if isinstance(name, str) else None
            if "." in arg or (allowed is not None and arg not in allowed):
                raise ValueError(f"unknown key {key!r} for model {name!r}; allowed keys: "
                                 f"{', '.join('model.' + k for k in (allowed or []))}")
            cfg["model"][arg] = value
        else:
            top = key.split(".", 1)[0]
            if top not in cfg:
                raise ValueError(f"unknown key {key!r}; allowed top-level keys: {', '.join(sorted(set(cfg) | {'model', 'attention'}))}")
            node = OmegaConf.create(cfg)
            OmegaConf.update(node, key, value, merge=False)
            cfg = OmegaConf.to_container(node, resolve=True)
    _validate(cfg)
    return OmegaConf.create(cfg)


def build_model(cfg: Any, overrides: Optional[Iterable[str]] = None) -> nn.Module:
    """Build a model from a config (DictConfig / dict / YAML path / config name).

    ``cfg['model']`` holds ``name`` and the model arguments; ``cfg['attention']`` the backend
    (name or mapping). Other top-level sections (training, data) are ignored.
    """
    cfg = load_config(cfg, overrides)
    c = OmegaConf.to_container(cfg, resolve=True)
    model_args = dict(c["model"])
    name = model_args.pop("name")
    return create_model(name, attention=c.get("attention"), **model_args)
