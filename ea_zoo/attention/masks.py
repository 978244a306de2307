"""The one attention-mask rule of every backend (used by :meth:`AttentionBase.forward`).

**Values** (as torch SDPA and timm; :func:`ea_zoo.functional.checks.mask_to_keep`):

* bool: True = keep;
* integer: 0/1 only, 1 = keep (read as bool);
* float: **additive**: 0 keeps, -inf, or anything <= ``torch.finfo(dtype).min / 2`` (timm
  writes ``finfo.min``), drops. An all-zero float mask keeps every key. Any other value is a
  bias: softmax attention (``sa``) adds it to the scores, every other backend refuses it
  (ValueError in eager mode).

**Shapes** every backend takes (B = batch, L = sequence length):

* ``(B, L)``: key padding;
* ``(B, 1, 1, L)`` (or ``(1, 1, 1, L)``): timm's key-only form, the same key padding;
* ``(B, 1, L, L)`` (or ``(1, 1, L, L)``, or ``(L, L)`` when B != L) *derived from padding*:
  query i may see key j iff both are valid, ``keep[b, i, j] = valid_q[b, i] & valid_k[b, j]``
  (timm NaFlexViT's symmetric mask built from patch validity; the key-only mask expanded to
  (B, 1, L, L) is the case valid_q = all True). It is read as key padding ``valid_k`` plus a
  query mask: a query that sees no key outputs 0 (before ``proj``), as everywhere else.

A general ``(L, L)`` mask (e.g. a causal or banded one; use ``is_causal=True`` for causal)
cannot be expressed by the non-softmax backends: in eager mode it is a ValueError naming the
backend, the mask's shape and the accepted forms. ``sa`` passes any mask broadcastable to
(B, H, L, L) on to SDPA unchanged (only integer masks become bool and a float (B, L) mask
becomes (B, 1, 1, L)).

Checks of mask *values* (0/1 integers, additive floats, the outer-product form) run in
eager mode only (:func:`ea_zoo.functional.checks.values_visible`): under ``torch.compile``,
``vmap`` and on ``meta`` the conversion is the same branch-free tensor code without them, so
no backend syncs with the host over a mask.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ea_zoo.functional.checks import mask_to_keep, values_visible

__all__ = ["NormalizedMask", "normalize_attn_mask", "ACCEPTED_FORMS"]

ACCEPTED_FORMS = (
    "(B, L) key padding, (B, 1, 1, L) (timm's key-only form) or (B, 1, L, L) derived from "
    "padding (keep[b, i, j] = valid[b, i] & valid[b, j], timm NaFlexViT's form); bool True = keep, "
    "integer 0/1, or float additive (0 = keep, -inf or <= finfo.min / 2 = drop)"
)


class NormalizedMask(NamedTuple):
    """What :func:`normalize_attn_mask` makes of an ``attn_mask``.

    key_padding: (B, L) bool, True = keep, or None.
    query_keep: (B, L) bool, False where a query sees no key (its output is 0), or None.
    general: softmax attention only: a mask for SDPA broadcastable to (B, H, L, L), bool
        True = keep or float additive, or None.
    """

    key_padding: Optional[torch.Tensor] = None
    query_keep: Optional[torch.Tensor] = None
    general: Optional[torch.Tensor] = None


def _general_error(backend: str, shape, batch: int, seq_len: int, why: str = "") -> ValueError:
    return ValueError(
        f"attention backend {backend!r} cannot apply an attn_mask of shape {tuple(shape)}{why} "
        f"(B = {batch}, L = {seq_len}): it accepts {ACCEPTED_FORMS}. A general (L, L) mask (causal, "
        f"banded, ...) only softmax attention ('sa') can apply; for causal masking pass is_causal=True"
    )


def normalize_attn_mask(
    attn_mask: Optional[torch.Tensor],
    batch: int,
    seq_len: int,
    *,
    backend: str,
    num_heads: int = 1,
    general: bool = False,
) -> NormalizedMask:
    """Read ``attn_mask`` by the one rule of this module (see its docstring).

    Args:
        attn_mask: None or a tensor of one of the accepted forms.
        batch, seq_len: B and L of the input.
        backend: the backend's name, for errors.
        num_heads: H, to check that a general mask broadcasts to (B, H, L, L).
        general: the backend applies general masks (softmax attention): masks other than
            bool/integer (B, L) key padding come back as ``general``.
    """
    if attn_mask is None:
        return NormalizedMask()
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"{backend}: attn_mask must be a torch.Tensor, got {type(attn_mask).__name__}")
    what = f"attention backend {backend!r}: attn_mask"
    shape = given = tuple(attn_mask.shape)
    B, L = batch, seq_len
    if attn_mask.dim() == 2 and shape != (B, L):
        if shape == (L, L):  # (L, L) for every sequence (B != L here, else it is (B, L))
            attn_mask = attn_mask[None, None]
            shape = tuple(attn_mask.shape)
        elif not general:
            raise ValueError(
                f"{what}: a 2-D mask is key padding of shape (B, L) = ({B}, {L}) (True = keep), "
                f"got shape {shape}; accepted: {ACCEPTED_FORMS}"
            )
        else:
            raise ValueError(
                f"{what}: a 2-D mask is key padding of shape (B, L) = ({B}, {L}) (True = keep) or an "
                f"(L, L) = ({L}, {L}) mask, got shape {shape}"
            )
    if attn_mask.dim() == 2:  # (B, L) key padding
        if general and attn_mask.is_floating_point():  # additive: a bias of every query
            return NormalizedMask(general=attn_mask[:, None, None, :])
        return NormalizedMask(key_padding=mask_to_keep(attn_mask, what))
    if general:
        try:
            ok = torch.broadcast_shapes(shape, (B, num_heads, L, L)) == (B, num_heads, L, L)
        except RuntimeError:
            ok = False
        if not ok or attn_mask.dim() > 4:
            raise ValueError(
                f"{what}: expected (B, L) = ({B}, {L}) key padding or a mask broadcastable to "
                f"(B, H, L, L) = ({B}, {num_heads}, {L}, {L}), got shape {shape}"
            )
        if not attn_mask.is_floating_point():
            attn_mask = mask_to_keep(attn_mask, what)
        return NormalizedMask(general=attn_mask)
    # every other backend: the key-only and the padding-derived (outer product) forms
    if attn_mask.dim() != 4 or shape[0] not in (1, B) or shape[1] != 1 or shape[2] not in (1, L) \
            or shape[3] != L:
        raise _general_error(backend, given, B, L)
    keep = mask_to_keep(attn_mask, what)[:, 0]  # (B or 1, 1 or L, L)
    if shape[2] == 1:  # (B, 1, 1, L): key-only
        return NormalizedMask(key_padding=keep[:, 0].expand(B, L))
    key = keep.any(-2)  # valid keys: seen by some query
    query = keep.any(-1)  # valid queries: see some key
    if values_visible(keep) and not bool((keep == (query[:, :, None] & key[:, None, :])).all()):
        raise _general_error(backend, given, B, L, " that is not derived from padding "
                             "(keep[b, i, j] != valid_q[b, i] & valid_k[b, j])")
    return NormalizedMask(key_padding=key.expand(B, L), query_keep=query.expand(B, L))
