"""Attention backends (``nn.Module``), one file each; importing this package registers them."""
from ea_zoo.attention.base import AttentionBase, StepNotSupportedError
from ea_zoo.attention import sa, la, aft_full, aft_simple, aft_local, hedgehog, taylor, ea, ea_series  # noqa: F401  (registration)

__all__ = ["AttentionBase", "StepNotSupportedError"]
