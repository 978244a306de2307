"""timm Vision Transformers with ea_zoo attention backends, registered with timm.

Importing :mod:`ea_zoo` registers, with timm's own model registry:

* ``vit_{tiny,small,base}_patch16_224_{backend}`` for every backend in :data:`VIT_BACKENDS`;
* the short names of :data:`SHORT_NAMES` (ViT-Small/16 at 224), e.g. ``vit_ea6``.

Every model is timm's own :class:`~timm.models.vision_transformer.VisionTransformer` with
``attn_layer`` set to the backend class (bound to its options by
:func:`~ea_zoo.models.binding.bind_attention`); nothing of the ViT is forked, so
``forward_features``, ``forward_head``, ``reset_classifier``, ``set_grad_checkpointing``,
``forward_intermediates``, ``features_only=True``, FX feature extraction and
``torch.compile`` behave as for any timm ViT.

The backend travels in the model kwargs as a JSON-serialisable spec, so it can be
overridden and exported::

    timm.create_model("vit_ea6")                                      # EA-6 ViT-S/16
    timm.create_model("vit_ea6", attention="ea4")                      # EA-4 instead
    timm.create_model("vit_ea6", attention={"name": "ea_series", "order": 8})
    timm.create_model("vit_small_patch16_224_sa", num_classes=10, img_size=32, patch_size=4)

No weights are published: ``pretrained=True`` needs a local file, through timm's
``pretrained_cfg_overlay=dict(file="model.pth")`` (goes through timm's checkpoint filter,
so a 224 checkpoint resamples its position embedding) or ``checkpoint_path="model.pth"``.

Backends with a length-dependent parameter (``max_len`` of ``aft_full``/``aft_local``) get
``max_len`` = number of tokens, patches plus class/register tokens, from ``img_size`` and
``patch_size`` unless the spec sets it. Such a model cannot run at a larger
``dynamic_img_size`` than it was built for.

TorchScript: :func:`script_model` scripts a model or raises
:class:`TorchScriptUnsupportedError` naming the backend and the reason (the first
statement TorchScript could not compile); :func:`torchscript_support` records the outcome per
backend in :data:`TORCHSCRIPT_STATUS`.
"""
from __future__ import annotations

import math
import re
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

import timm
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import register_notrace_module, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from ea_zoo.attention.base import AttentionBase
from ea_zoo.models.binding import attention_label, bind_attention, normalize_attention
from ea_zoo.registry import attention_options, resolve_attention

__all__ = [
    "VIT_BACKENDS",
    "VIT_SIZES",
    "SHORT_NAMES",
    "VIT_MODEL_NAMES",
    "TORCHSCRIPT_STATUS",
    "TorchScriptUnsupportedError",
    "create_vit",
    "vit_attention_layer",
    "script_model",
    "torchscript_support",
]

#: backends with a ``vit_{size}_patch16_224_{backend}`` name
VIT_BACKENDS: Tuple[str, ...] = (
    "sa", "la", "la_identity", "aft_full", "aft_simple", "aft_local", "hedgehog", "taylor",
    "ea", "ea2", "ea4", "ea6", "ea8",
)

#: timm's ViT-Ti/16, ViT-S/16 and ViT-B/16 architecture arguments
VIT_SIZES: Dict[str, Dict[str, Any]] = {
    "tiny": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "small": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "base": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
}

#: short name -> (size, backend). ``vit_aft`` is AFT-simple: the AFT variant without
#: position-dependent parameters, so it runs at any resolution and in O(L D), like the
#: other efficient backends; use ``vit_small_patch16_224_aft_full``/``_aft_local`` for the
#: others.
SHORT_NAMES: Dict[str, Tuple[str, str]] = {
    "vit_sa": ("small", "sa"),
    "vit_la": ("small", "la"),
    "vit_aft": ("small", "aft_simple"),
    "vit_hedgehog": ("small", "hedgehog"),
    "vit_taylor": ("small", "taylor"),
    "vit_ea": ("small", "ea"),
    "vit_ea2": ("small", "ea2"),
    "vit_ea6": ("small", "ea6"),
}

# fx: trace through the ViT, keep every attention backend a leaf module (their forward
# validates shapes in Python, which symbolic tracing cannot follow)
register_notrace_module(AttentionBase)

_BACKEND_DESC = {
    "sa": "softmax attention (timm's ViT attention; Feng 2025 eq. 17)",
    "la": "linear attention, elu+1 feature map",
    "la_identity": "linear attention, identity feature map (de Brebisson & Vincent 2016)",
    "aft_full": "AFT-full, learned L x L position biases (Feng 2025 eq. 19)",
    "aft_simple": "AFT-simple, no position biases",
    "aft_local": "AFT-local, windowed position biases",
    "hedgehog": "Hedgehog linear attention (learned feature maps)",
    "taylor": "Taylor linear attention (2nd-order exp feature map)",
    "ea": "full element-wise attention (Feng 2025 eq. 1-2)",
    "ea2": "EA-series, Taylor order 2 (Feng 2025 eq. 5)",
    "ea4": "EA-series, Taylor order 4",
    "ea6": "EA-series, Taylor order 6",
    "ea8": "EA-series, Taylor order 8",
}


def _cfg(description: str = "", **kwargs: Any) -> Dict[str, Any]:
    """Pretrained cfg of an ea_zoo ViT: ImageNet-1k input conventions of timm's ViT, no weights."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_INCEPTION_MEAN,
        "std": IMAGENET_INCEPTION_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_name": "Element-wise Attention Is All You Need",
        "description": description,
        "notes": ("no published weights: load a local checkpoint with pretrained=True, "
                  "pretrained_cfg_overlay=dict(file=...) or checkpoint_path=...",),
        **kwargs,
    }


# ----------------------------------------------------------------------------- names
def _variants() -> Dict[str, Tuple[Dict[str, Any], str, str]]:
    """name -> (architecture args, default attention, description)."""
    out = {}
    for size, args in VIT_SIZES.items():
        for backend in VIT_BACKENDS:
            out[f"vit_{size}_patch16_224_{backend}"] = (
                args, backend, f"ViT-{size.capitalize()}/16 @224 with {_BACKEND_DESC[backend]}")
    for short, (size, backend) in SHORT_NAMES.items():
        out[short] = (VIT_SIZES[size], backend,
                      f"ViT-{size.capitalize()}/16 @224 with {_BACKEND_DESC[backend]} "
                      f"(= vit_{size}_patch16_224_{backend})")
    return out


_VARIANTS = _variants()
#: every ViT name ea_zoo registers with timm
VIT_MODEL_NAMES: Tuple[str, ...] = tuple(_VARIANTS)

default_cfgs = generate_default_cfgs({name: _cfg(desc) for name, (_, _, desc) in _VARIANTS.items()})


# ----------------------------------------------------------------------------- builders
def _num_tokens(kwargs: Dict[str, Any], default_img_size: int = 224) -> int:
    """Tokens a VisionTransformer built from ``kwargs`` sees: patches + class/register tokens."""
    img = to_2tuple(kwargs.get("img_size", default_img_size))
    patch = to_2tuple(kwargs.get("patch_size", 16))
    rnd = math.ceil if kwargs.get("dynamic_img_pad", False) else math.floor
    patches = rnd(img[0] / patch[0]) * rnd(img[1] / patch[1])
    prefix = (1 if kwargs.get("class_token", True) else 0) + int(kwargs.get("reg_tokens", 0) or 0)
    return int(patches + prefix)


def vit_attention_layer(attention: Any, num_tokens: Optional[int] = None) -> type:
    """The ``attn_layer`` class for a spec; sets ``max_len=num_tokens`` where the backend has
    a ``max_len`` option the spec leaves unset."""
    spec = normalize_attention(attention)
    cls, opts = resolve_attention(spec)
    extra = {}
    if "max_len" in attention_options(cls) and "max_len" not in opts:
        if num_tokens is None:
            raise ValueError(
                f"attention {attention_label(spec)!r} has a max_len option: give it in the attention "
                "config or pass the token count")
        extra["max_len"] = int(num_tokens)
    return bind_attention(spec, **extra)


def _check_pretrained_source(variant: str, kwargs: Dict[str, Any]) -> None:
    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
    )
    if not (cfg.url or cfg.file or cfg.hf_hub_id or cfg.state_dict or cfg.source == "local-dir"):
        raise RuntimeError(
            f"{variant}: ea_zoo publishes no pretrained weights for this model (no URL or hub id). "
            f"Use pretrained=False, or load a local checkpoint: timm.create_model({variant!r}, "
            "pretrained=True, pretrained_cfg_overlay=dict(file='path/to/model.pth')) or "
            f"timm.create_model({variant!r}, checkpoint_path='path/to/model.pth')."
        )


def create_vit(variant: str, pretrained: bool = False, *, attention: Any, arch_args: Dict[str, Any],
               **kwargs: Any) -> VisionTransformer:
    """Build ``variant``: timm's VisionTransformer(attn_layer=<bound backend>, **arch_args, **kwargs)."""
    if "attn_layer" in kwargs:
        raise ValueError(
            f"{variant}: choose the attention with attention=<name or config> "
            f"(e.g. attention='ea6' or {{'name': 'ea_series', 'order': 4}}), not attn_layer")
    spec = normalize_attention(attention)
    model_args = {**arch_args, **kwargs}
    attn_layer = vit_attention_layer(spec, _num_tokens(model_args))
    if pretrained:
        _check_pretrained_source(variant, kwargs)
    out_indices = model_args.pop("out_indices", 3)
    model = build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        attn_layer=attn_layer,
        **model_args,
    )
    # reconstruction args for timm's save_config_for_hf (timm.create_model adds its kwargs)
    model._model_args = dict(getattr(model, "_model_args", {}), attention=spec)
    model.attention_spec = spec
    return model


def _make_entrypoint(name: str, arch_args: Dict[str, Any], backend: str, desc: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
        attention = kwargs.pop("attention", None)
        return create_vit(name, pretrained, attention=backend if attention is None else attention,
                          arch_args=arch_args, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = (f"{desc}.\n\n    Architecture {arch_args}; default attention {backend!r}, "
                          "override with attention=<name or config>.")
    return entrypoint


for _name, (_args, _backend, _desc) in _VARIANTS.items():
    globals()[_name] = register_model(_make_entrypoint(_name, _args, _backend, _desc))


# ----------------------------------------------------------------------------- any timm ViT
def create_timm_model(model_name: str, attention: Any = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name, **kwargs)`` with the attention swapped for ``attention``.

    For ea_zoo's own names ``attention`` overrides the default backend. For any other timm
    model built on ``VisionTransformer`` (``vit_*``, ``deit_*``, ...) the backend class goes in
    as ``attn_layer``; everything else, including ``pretrained=True`` (timm's softmax-attention
    weights, loaded strictly: backends with extra parameters need ``pretrained_strict=False``
    or a local file), is timm's. The swapped model records the spec as ``model.attention_spec``.
    """
    base = model_name.split(".", 1)[0]
    if base in _VARIANTS:
        if attention is not None:
            kwargs["attention"] = normalize_attention(attention)
        return timm.create_model(model_name, **kwargs)
    if attention is None:
        return timm.create_model(model_name, **kwargs)
    if not timm.is_model(base):
        raise ValueError(f"unknown model {model_name!r}: not an ea_zoo model and not a timm model")
    spec = normalize_attention(attention)
    cls, opts = resolve_attention(spec)
    num_tokens = None
    if "max_len" in attention_options(cls) and "max_len" not in opts:
        probe_kw = {k: v for k, v in kwargs.items() if k not in (
            "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
            "features_only", "out_indices", "feature_cls", "device", "dtype")}
        with torch.device("meta"):
            probe = timm.create_model(model_name, **probe_kw)
        if not hasattr(probe, "patch_embed") or not hasattr(probe, "num_prefix_tokens"):
            raise ValueError(f"{model_name}: cannot infer max_len for {attention_label(spec)!r}; set it in the attention config")
        num_tokens = int(probe.patch_embed.num_patches + probe.num_prefix_tokens)
    attn_layer = vit_attention_layer(spec, num_tokens)
    try:
        model = timm.create_model(model_name, attn_layer=attn_layer, **kwargs)
    except TypeError as e:
        if "attn_layer" not in str(e):
            raise
        raise ValueError(
            f"timm model {model_name!r} takes no attn_layer: attention swap works for models built on "
            "timm's VisionTransformer (vit_*, deit_*, ...)") from e
    if not any(isinstance(m, attn_layer) for m in model.modules()):
        raise ValueError(f"timm model {model_name!r} ignored attn_layer; its attention cannot be swapped")
    args = dict(getattr(model, "_model_args", {}))
    args.pop("attn_layer", None)  # a class: not serialisable; the spec is kept on the model
    model._model_args = args
    model.attention_spec = spec
    return model


# ----------------------------------------------------------------------------- TorchScript
class TorchScriptUnsupportedError(RuntimeError):
    """``torch.jit.script`` cannot compile a model's attention backend; the message says why."""


#: backend label -> None (scripts) or the reason it cannot be scripted (filled by
#: :func:`torchscript_support` / :func:`script_model`)
TORCHSCRIPT_STATUS: Dict[str, Optional[str]] = {}


def _script_reason(err: BaseException) -> str:
    """One line saying what TorchScript could not compile: its message, the source location and
    statement it points at (or the module attribute whose annotation it could not read)."""
    text = str(err).strip()
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    head = (lines[0] if lines else type(err).__name__).strip()
    head = re.sub(r"\s+at\s*:?$", "", head).rstrip(":")
    where = ""
    locs = [ln.strip() for ln in lines if re.match(r'\s*File "', ln)]
    here = [i for i, ln in enumerate(lines) if "<--- HERE" in ln]
    if locs:
        stmt = lines[here[0] - 1].strip() if here and here[0] > 0 else ""
        where = locs[0] + (f": {stmt}" if stmt else "")
    else:  # attribute type inference: name the module attribute from the traceback
        attr, owner = None, None
        tb = err.__traceback__
        while tb is not None:
            f = tb.tb_frame
            if f.f_code.co_name == "infer_type" and isinstance(f.f_locals.get("name"), str):
                attr = f.f_locals["name"]
            if f.f_code.co_name == "infer_concrete_type_builder" and "nn_module" in f.f_locals:
                owner_cls = type(f.f_locals["nn_module"])
                if "bound_options" in vars(owner_cls):  # name the backend, not its bound subclass
                    owner_cls = owner_cls.__bases__[0]
                owner = owner_cls.__name__
            tb = tb.tb_next
        if attr:
            where = f"attribute {attr!r} of {owner or 'the module'} (string annotation from " \
                    "`from __future__ import annotations`)"
    return f"{head} ({where})" if where else head


def _backend_labels(model: nn.Module) -> List[str]:
    labels = []
    for m in model.modules():
        if isinstance(m, AttentionBase):
            lab = getattr(type(m), "bound_label", None) or m.attention_name
            if lab not in labels:
                labels.append(lab)
    return labels


def script_model(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(model)``, or :class:`TorchScriptUnsupportedError` naming the
    backend(s) and the statement TorchScript could not compile (also recorded in
    :data:`TORCHSCRIPT_STATUS`)."""
    labels = _backend_labels(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in torch 2.x
            scripted = torch.jit.script(model)
    except Exception as e:  # torch.jit.frontend.* / RuntimeError
        reason = _script_reason(e)
        for lab in labels:
            TORCHSCRIPT_STATUS[lab] = reason
        raise TorchScriptUnsupportedError(
            f"attention backend(s) {', '.join(labels) or '(none)'} cannot be compiled by torch.jit.script: "
            f"{reason}. Use torch.compile or torch.fx (both supported) instead.") from e
    for lab in labels:
        TORCHSCRIPT_STATUS[lab] = None
    return scripted


def torchscript_support(attention: Any) -> Tuple[bool, Optional[str]]:
    """Try to script a tiny ViT with ``attention``; returns ``(ok, reason)`` and records it."""
    spec = normalize_attention(attention)
    model = create_vit("vit_tiny_patch16_224_sa", attention=spec, arch_args=dict(
        img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=2))
    label = attention_label(spec)
    try:
        script_model(model)
    except TorchScriptUnsupportedError as e:
        reason = _script_reason(e.__cause__) if e.__cause__ is not None else str(e)
        TORCHSCRIPT_STATUS[label] = reason
        return False, reason
    TORCHSCRIPT_STATUS[label] = None
    return True, None
