"""Models with ea_zoo attention: timm ViTs (registered with timm on import) and sequence
Transformers (Feng 2025 section 4.1), built by name or config.

    >>> import timm, ea_zoo
    >>> timm.create_model("vit_ea6", num_classes=10, img_size=32, patch_size=4)
    >>> ea_zoo.create_model("vit_small_patch16_224", attention={"name": "ea_series", "order": 6})
    >>> timm.create_model("vit_ea6", attention="ea6+sa@3,7")       # softmax attention in blocks 3, 7
    >>> ea_zoo.create_model("lm_ea6").generate(prompt, max_new_tokens=32)
    >>> ea_zoo.build_model("tsc", overrides=["attention=ea2", "model.depth=6"])
"""
from ea_zoo.models.binding import attention_description, attention_label, bind_attention, normalize_attention
from ea_zoo.models import vit  # noqa: F401  (registers the ViTs with timm)
from ea_zoo.models.vit import (
    SHORT_NAMES,
    TORCHSCRIPT_STATUS,
    VIT_BACKENDS,
    VIT_MODEL_NAMES,
    TorchScriptUnsupportedError,
    script_model,
    torchscript_support,
    vit_backends,
)
from ea_zoo.models.sequence import SequenceBlock, SequenceTransformer, SinusoidalTimeEmbedding
from ea_zoo.models.factory import (
    SEQUENCE_FAMILIES,
    SEQUENCE_MODELS,
    build_model,
    create_model,
    list_models,
    load_config,
    register_sequence_model,
)

__all__ = [
    "attention_description",
    "attention_label",
    "bind_attention",
    "normalize_attention",
    "SHORT_NAMES",
    "TORCHSCRIPT_STATUS",
    "VIT_BACKENDS",
    "VIT_MODEL_NAMES",
    "TorchScriptUnsupportedError",
    "script_model",
    "torchscript_support",
    "vit_backends",
    "SequenceBlock",
    "SequenceTransformer",
    "SinusoidalTimeEmbedding",
    "SEQUENCE_FAMILIES",
    "SEQUENCE_MODELS",
    "build_model",
    "create_model",
    "list_models",
    "load_config",
    "register_sequence_model",
]
