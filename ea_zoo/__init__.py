"""ea_zoo: element-wise attention and its rivals behind one interface.

    >>> import torch, ea_zoo
    >>> attn = ea_zoo.create_attention("ea6", dim=64, num_heads=4, causal=True)
    >>> y = attn(torch.randn(2, 128, 64))            # (B, L, D) -> (B, L, D)
"""
from ea_zoo import functional  # noqa: F401
from ea_zoo.registry import (
    create_attention,
    get_attention_cls,
    list_attentions,
    register_alias,
    register_attention,
)
from ea_zoo import attention  # noqa: F401  (registers the backends)
from ea_zoo.attention import AttentionBase, StepNotSupportedError
from ea_zoo import models  # noqa: F401  (registers the ViTs with timm)
from ea_zoo.models import build_model, create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "AttentionBase",
    "StepNotSupportedError",
    "create_attention",
    "get_attention_cls",
    "list_attentions",
    "register_alias",
    "register_attention",
    "functional",
    "models",
    "build_model",
    "create_model",
    "list_models",
]
