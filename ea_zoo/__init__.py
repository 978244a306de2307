"""ea_zoo: element-wise attention and its rivals behind one interface.

    >>> import torch, ea_zoo
    >>> attn = ea_zoo.create_attention("ea6", dim=64, num_heads=4, causal=True)
    >>> y = attn(torch.randn(2, 128, 64))            # (B, L, D) -> (B, L, D)

**Plugins.** ``EA_ZOO_PLUGINS`` (comma-separated module names, e.g.
``EA_ZOO_PLUGINS=my_backends,lab.attn``) lists modules imported at the end of ``import
ea_zoo``. A module that registers a backend (``@ea_zoo.register_attention("name")``) makes it
available everywhere a built-in one is, in any process that sees the variable: the CLI
tools (``ea-zoo complexity --backends name``), training runs, the conformance test suite
(``pytest tests/attention/test_conformance.py -k name``), the timm ViT names
(``vit_tiny_patch16_224_name``) and the sequence models (``tsc_name``, ``lm_name``, ...).
A module that cannot be imported is an ImportError naming it and the variable.
"""
import importlib as _importlib
import os as _os

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
    "load_plugins",
]

#: the environment variable naming plugin modules (comma-separated)
PLUGINS_ENV = "EA_ZOO_PLUGINS"


def load_plugins(modules=None):
    """Import the plugin modules (default: ``$EA_ZOO_PLUGINS``, comma-separated); returns
    their names. Importing a module twice does nothing (Python's import cache)."""
    if modules is None:
        modules = _os.environ.get(PLUGINS_ENV, "")
    if isinstance(modules, str):
        modules = modules.split(",")
    names = [m.strip() for m in modules if m and m.strip()]
    for name in names:
        try:
            _importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"{PLUGINS_ENV} plugin {name!r} cannot be imported: {e}") from e
    return names


load_plugins()
