"""The attention math on already-projected tensors, one file per family.

Shapes: q, k, v are (B, L, D) or (B, H, L, d) (L is always dim -2). Each function is the
reference implementation of one equation of Feng 2025 (or the cited paper) and, where a fast
kernel exists, dispatches to it. Modules in :mod:`ea_zoo.attention` call these.
"""
from ea_zoo.functional.checks import check_key_padding_mask  # noqa: F401
from ea_zoo.functional.softmax import *  # noqa: F401,F403
from ea_zoo.functional.linear import *  # noqa: F401,F403
from ea_zoo.functional.aft import *  # noqa: F401,F403
from ea_zoo.functional.ea import *  # noqa: F401,F403
from ea_zoo.functional.ea_series import *  # noqa: F401,F403
