"""Attention backends (``nn.Module``), one file each; importing this package registers them.

Every module of this folder is imported (:func:`pkgutil.iter_modules`, in name order), so a
backend is one file here (a class decorated with ``@register_attention("name")``) plus its
``ea_zoo/configs/attention/<name>.yaml``: nothing else lists the backends. Modules whose name
starts with ``_`` are skipped.
"""
import importlib
import pkgutil

from ea_zoo.attention.base import AttentionBase, StepNotSupportedError

#: the modules of this package, imported (and so registered) on import
BACKEND_MODULES = tuple(
    info.name for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
    if not info.name.startswith("_")
)
for _name in BACKEND_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
del _name

__all__ = ["AttentionBase", "StepNotSupportedError", "BACKEND_MODULES"]
