"""timm Vision Transformers with ea_zoo attention backends, registered with timm.

Importing :mod:`ea_zoo` registers, with timm's own model registry:

* ``vit_{tiny,small,base}_patch16_224_{backend}`` for every registered attention name and
  alias (:data:`VIT_BACKENDS`, read from the registry at each use). The names come from a
  registry hook (:func:`ea_zoo.registry.add_registration_hook`), so a backend registered
  later, from any module, is a timm model at once;
* the short names of :data:`SHORT_NAMES` (ViT-Small/16 at 224), e.g. ``vit_ea6``.

Every model is timm's own :class:`~timm.models.vision_transformer.VisionTransformer` with
``attn_layer`` set to the backend class (bound to its options by
:meth:`ea_zoo.registry.AttentionSpec.bind`); nothing of the ViT is forked, so
``forward_features``, ``forward_head``, ``reset_classifier``, ``set_grad_checkpointing``,
``forward_intermediates``, ``features_only=True``, FX feature extraction and
``torch.compile`` behave as for any timm ViT.

The backend travels in the model kwargs as a JSON-serialisable spec, so it can be
overridden and exported::

    timm.create_model("vit_ea6")                                      # EA-6 ViT-S/16
    timm.create_model("vit_ea6", attention="ea4")                      # EA-4 instead
    timm.create_model("vit_ea6", attention={"name": "ea_series", "order": 8})
    timm.create_model("vit_ea6", attention="ea6+sa@3,7")               # SA in blocks 3 and 7
    timm.create_model("vit_ea6", attention={"default": "ea6", "layers": {3: "sa"}})
    timm.create_model("vit_small_patch16_224_sa", num_classes=10, img_size=32, patch_size=4)

**Per-layer (hybrid) attention.** ``attention=`` also takes a per-layer spec
(:class:`ea_zoo.registry.HybridSpec`: a list with one spec per block, ``{"default": spec,
"layers": {index: spec}}`` or a label ``"ea6+sa@3,7"``). timm's VisionTransformer takes one
``attn_layer`` class: the model is built with the default spec's class, then ``blocks[i].attn``
of every other layer is replaced by its spec's module, built with the same host arguments
(:meth:`~ea_zoo.attention.base.AttentionBase.host_config`), initialised as timm initialises
the ViT and given the replaced layer's shared projections (``qkv``, ``proj``, norms), all
before pretrained weights load. Bad indices, duplicates and a list of the wrong length are
ValueErrors raised before anything is built. ``model.attention_spec`` and
``model._model_args["attention"]`` hold ``spec.to_config()``.

No weights are published: ``pretrained=True`` needs a local file, through timm's
``pretrained_cfg_overlay=dict(file="model.pth")`` (goes through timm's checkpoint filter,
so a 224 checkpoint resamples its position embedding) or ``checkpoint_path="model.pth"``.

Backends with a length-dependent option (the class attribute ``length_option``, e.g.
``max_len`` of ``aft_full``/``aft_local``) get the number of tokens, patches plus
class/register tokens, from ``img_size`` and ``patch_size``
(:meth:`~ea_zoo.registry.AttentionSpec.with_length`) unless the spec sets it. Such a model
cannot run at a larger ``dynamic_img_size`` than it was built for.

TorchScript: :func:`script_model` scripts a model or raises
:class:`TorchScriptUnsupportedError` naming the backend and the reason (the first
statement TorchScript could not compile); :func:`torchscript_support` records the outcome per
backend in :data:`TORCHSCRIPT_STATUS`.
"""
from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Sequence as _SequenceABC
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

import timm
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import register_notrace_module, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._manipulate import named_apply
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn, get_init_weights_vit

from ea_zoo.attention.base import AttentionBase
from ea_zoo.models.binding import attention_description
from ea_zoo.registry import AttentionSpec, HybridSpec, add_registration_hook, list_attentions, parse_attention

__all__ = [
    "VIT_BACKENDS",
    "VIT_SIZES",
    "SHORT_NAMES",
    "VIT_MODEL_NAMES",
    "TORCHSCRIPT_STATUS",
    "TorchScriptUnsupportedError",
    "LiveNames",
    "vit_backends",
    "create_vit",
    "create_timm_model",
    "vit_attention_layer",
    "replace_attention_layers",
    "script_model",
    "torchscript_support",
]


class LiveNames(_SequenceABC):
    """A read-only tuple-like view of names that reads its source at every use (so names
    registered later are in it): iterate, index, ``len``, ``in``, compare with a tuple."""

    def __init__(self, source: Callable[[], Sequence[str]], what: str) -> None:
        self._source = source
        self._what = what

    def _names(self) -> Tuple[str, ...]:
        return tuple(self._source())

    def __getitem__(self, i):  # type: ignore[override]
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (tuple, list, LiveNames)) and self._names() == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{self._what}: {self._names()!r}>"


def vit_backends() -> Tuple[str, ...]:
    """Attention names with ``vit_{size}_patch16_224_{name}`` models: every registered name
    and alias, now."""
    return tuple(list_attentions())


#: backends with a ``vit_{size}_patch16_224_{backend}`` name (a live view of the registry)
VIT_BACKENDS = LiveNames(vit_backends, "registered attention names")

#: timm's ViT-Ti/16, ViT-S/16 and ViT-B/16 architecture arguments: the one place ea_zoo states
#: them (configs/model/vit_*.yaml name timm's models and add nothing; a test checks these
#: against timm's own vit_{size}_patch16_224)
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
    **{f"vit_{b}": ("small", b) for b in ("sa", "la", "hedgehog", "taylor", "ea", "ea2", "ea6")},
    "vit_aft": ("small", "aft_simple"),
}

# fx: trace through the ViT, keep every attention backend a leaf module (their forward
# validates shapes in Python, which symbolic tracing cannot follow)
register_notrace_module(AttentionBase)


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
#: name -> (architecture args, default attention, description); filled by the registry hook
_VARIANTS: Dict[str, Tuple[Dict[str, Any], str, str]] = {}
#: timm reads a module's ``default_cfgs`` when a name is registered
default_cfgs: Dict[str, Any] = {}

#: every ViT name ea_zoo registers with timm (a live view: grows with the registry)
VIT_MODEL_NAMES = LiveNames(lambda: tuple(_VARIANTS), "ea_zoo ViT names")


def _make_entrypoint(name: str, arch_args: Dict[str, Any], backend: str, desc: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
        attention = kwargs.pop("attention", None)
        return create_vit(name, pretrained, attention=backend if attention is None else attention,
                          arch_args=arch_args, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = (f"{desc}.\n\n    Architecture {arch_args}; default attention {backend!r}, "
                          "override with attention=<name, config or per-layer spec>.")
    return entrypoint


def _register_backend(backend: str) -> None:
    """Registry hook: the timm names of ``backend`` (one per size, and its short names)."""
    desc = attention_description(backend)
    names = [(f"vit_{size}_patch16_224_{backend}", size, f"ViT-{size.capitalize()}/16 @224 with {desc}")
             for size in VIT_SIZES]
    names += [(short, size, f"ViT-{size.capitalize()}/16 @224 with {desc} (= vit_{size}_patch16_224_{backend})")
              for short, (size, b) in SHORT_NAMES.items() if b == backend]
    for name, size, text in names:
        if name in _VARIANTS:
            continue
        _VARIANTS[name] = (VIT_SIZES[size], backend, text)
        default_cfgs.update(generate_default_cfgs({name: _cfg(text)}))
        globals()[name] = register_model(_make_entrypoint(name, VIT_SIZES[size], backend, text))


add_registration_hook(_register_backend)


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
    """The ``attn_layer`` class of a single-backend spec, its ``length_option`` (AFT's
    ``max_len``) set to ``num_tokens`` unless the spec sets it."""
    spec = AttentionSpec.parse(attention).with_length(num_tokens)
    opt = getattr(spec.cls, "length_option", None)
    if opt is not None and opt not in spec.all_options:
        raise ValueError(f"attention {spec.label!r} has a {opt} option: give it in the attention config or pass "
                         "the token count")
    return spec.bind()


def _layer_classes(spec: Any, depth: int, num_tokens: Optional[int]) -> List[type]:
    """One ``attn_layer`` class per block (ValueError for a per-layer spec that does not fit
    ``depth``), before anything is built."""
    spec = parse_attention(spec)
    if isinstance(spec, AttentionSpec):
        return [vit_attention_layer(spec, num_tokens)] * depth
    return [vit_attention_layer(s, num_tokens) for s in spec.per_layer(depth)]


def replace_attention_layers(model: nn.Module, layer_classes: Sequence[type], weight_init: str = "") -> nn.Module:
    """Give ``model.blocks[i].attn`` the class ``layer_classes[i]`` where it has another one.

    Each new module is built with the replaced one's host arguments
    (:meth:`~ea_zoo.attention.base.AttentionBase.host_config`), device and dtype, initialised
    with timm's ViT init (``weight_init``; ``"skip"``: none) and given the replaced module's
    parameters it shares (``qkv``, ``proj``, the norms: timm's init, ``fix_init`` and any
    loaded weights carry over). Returns ``model``.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no .blocks: per-layer attention needs a VisionTransformer")
    if len(layer_classes) != len(blocks):
        raise ValueError(f"{len(layer_classes)} attention classes for a model of depth {len(blocks)}")
    for blk, cls in zip(blocks, layer_classes):
        old = blk.attn
        if type(old) is cls:
            continue
        new = cls(**old.host_config(), **old.factory_kwargs())
        if weight_init != "skip":
            named_apply(get_init_weights_vit(weight_init or ""), new)
        own = new.state_dict()
        shared = {k: v for k, v in old.state_dict().items() if k in own and own[k].shape == v.shape}
        new.load_state_dict(shared, strict=False)
        blk.attn = new.train(old.training)
    return model


def _vit_with_layers(layer_classes: Sequence[type], **kwargs: Any) -> VisionTransformer:
    """timm's VisionTransformer with the first class as ``attn_layer``, the other blocks'
    attention replaced (:func:`replace_attention_layers`)."""
    model = VisionTransformer(attn_layer=layer_classes[0], **kwargs)
    return replace_attention_layers(model, layer_classes, kwargs.get("weight_init", ""))


def _record(model: nn.Module, spec: Any) -> nn.Module:
    """Record the spec's JSON form: ``model.attention_spec`` and ``_model_args['attention']``
    (the reconstruction args timm's save_config_for_hf writes)."""
    config = parse_attention(spec).to_config()
    args = dict(getattr(model, "_model_args", {}))
    args.pop("attn_layer", None)  # a class: not serialisable; the spec is kept instead
    model._model_args = dict(args, attention=config)
    model.attention_spec = config
    return model


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
    """Build ``variant``: timm's VisionTransformer(attn_layer=<bound backend>, **arch_args,
    **kwargs); a per-layer ``attention`` replaces the blocks that differ from its default."""
    if "attn_layer" in kwargs:
        raise ValueError(
            f"{variant}: choose the attention with attention=<name or config> "
            f"(e.g. attention='ea6' or {{'name': 'ea_series', 'order': 4}}), not attn_layer")
    spec = parse_attention(attention)
    model_args = {**arch_args, **kwargs}
    classes = _layer_classes(spec, int(model_args.get("depth", 12)), _num_tokens(model_args))
    if pretrained:
        _check_pretrained_source(variant, kwargs)
    out_indices = model_args.pop("out_indices", 3)
    hybrid = len(set(classes)) > 1
    model = build_model_with_cfg(
        functools.partial(_vit_with_layers, classes) if hybrid else VisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **({} if hybrid else {"attn_layer": classes[0]}),
        **model_args,
    )
    # reconstruction args for timm's save_config_for_hf (timm.create_model adds its kwargs)
    return _record(model, spec)


# ----------------------------------------------------------------------------- any timm ViT
_PROBE_SKIP = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
               "features_only", "out_indices", "feature_cls", "device", "dtype")


def create_timm_model(model_name: str, attention: Any = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name, **kwargs)`` with the attention swapped for ``attention``
    (one spec or a per-layer spec).

    For ea_zoo's own names ``attention`` overrides the default backend. For any other timm
    model built on ``VisionTransformer`` (``vit_*``, ``deit_*``, ...) the backend class goes in
    as ``attn_layer`` (a per-layer spec: the default's class, then the other blocks replaced);
    everything else, including ``pretrained=True`` (timm's softmax-attention weights, loaded
    strictly: backends with extra parameters need ``pretrained_strict=False`` or a local
    file), is timm's. The swapped model records the spec as ``model.attention_spec``.
    """
    base = model_name.split(".", 1)[0]
    if attention is None:
        return timm.create_model(model_name, **kwargs)
    spec = parse_attention(attention)
    if base in _VARIANTS:
        return _record(timm.create_model(model_name, attention=spec, **kwargs), spec)
    if not timm.is_model(base):
        raise ValueError(f"unknown model {model_name!r}: not an ea_zoo model and not a timm model")
    hybrid = isinstance(spec, HybridSpec)
    depth, num_tokens = 1, None
    needs_length = any(getattr(s.cls, "length_option", None) not in (None, *s.all_options)
                       for s in ([spec] if not hybrid else spec.specs()))
    if hybrid or needs_length:  # the token count / depth: a probe on the meta device
        with torch.device("meta"):
            probe = timm.create_model(model_name, **{k: v for k, v in kwargs.items() if k not in _PROBE_SKIP})
        if not hasattr(probe, "blocks") or not hasattr(probe, "patch_embed"):
            raise ValueError(f"{model_name}: not a VisionTransformer; cannot swap its attention for {spec.label!r}")
        depth = len(probe.blocks)
        num_tokens = int(probe.patch_embed.num_patches + getattr(probe, "num_prefix_tokens", 0))
    classes = _layer_classes(spec, depth, num_tokens)  # bad per-layer specs fail here, before building
    try:
        model = timm.create_model(model_name, attn_layer=classes[0], **kwargs)
    except TypeError as e:
        if "attn_layer" not in str(e):
            raise
        raise ValueError(
            f"timm model {model_name!r} takes no attn_layer: attention swap works for models built on "
            "timm's VisionTransformer (vit_*, deit_*, ...)") from e
    if not any(isinstance(m, classes[0]) for m in model.modules()):
        raise ValueError(f"timm model {model_name!r} ignored attn_layer; its attention cannot be swapped")
    if hybrid:
        inner = model if hasattr(model, "blocks") else getattr(model, "model", None)
        if inner is None or len(getattr(inner, "blocks", ())) != depth:
            raise ValueError(f"{model_name}: per-layer attention {spec.label!r} needs the model's blocks "
                             "(not available with features_only=True on a timm name; use an ea_zoo ViT name)")
        replace_attention_layers(inner, classes, kwargs.get("weight_init", ""))
    return _record(model, spec)


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
    spec = AttentionSpec.parse(attention)
    model = create_vit("vit_tiny_patch16_224_sa", attention=spec, arch_args=dict(
        img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=2))
    label = spec.label
    try:
        script_model(model)
    except TorchScriptUnsupportedError as e:
        reason = _script_reason(e.__cause__) if e.__cause__ is not None else str(e)
        TORCHSCRIPT_STATUS[label] = reason
        return False, reason
    TORCHSCRIPT_STATUS[label] = None
    return True, None
