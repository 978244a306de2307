"""Short causal convolution over time: the token-shift of H3, Based and Mamba (fla's ``use_short_conv``).

A depthwise (one filter per channel) causal convolution of kernel size K in front of a layer's
attention: ``y_i = b + sum_{s=0}^{K-1} w_s * x_{i-s}`` (elementwise over the D channels,
``x_{<0} = 0``). It hands each position its K - 1 predecessors, which is what associative
recall needs: the value token after a key then carries that key, so one attention layer can
match a query key to it (an induction head in one layer instead of two; Arora et al. 2023,
"Zoology", and the Based paper use such short convolutions for that reason).

Three forms, as every layer of the sequence models:

* ``forward(x, padding_mask=None)``: x (B, L, D) -> (B, L, D); padded positions (mask False)
  are zeroed before the convolution, so they never reach a valid one;
* ``prefill(x, state)``: L tokens continuing from ``state``, the last K - 1 inputs (B, K-1, D);
* ``step(x_t, state)``: one token (B, D).

The decoding state is K - 1 past inputs per sequence: (K - 1) * D numbers, independent of L.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ea_zoo.models.sequence_args import pos_int

__all__ = ["ShortConv", "check_short_conv"]


def check_short_conv(value, causal: bool) -> int:
    """The ``short_conv`` option, validated: a kernel size K >= 2, or 0 for none (causal models only)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value == 1:
        raise ValueError(f"short_conv must be a kernel size >= 2, or 0 for none; got {value!r}")
    if value and not causal:
        raise ValueError(f"short_conv={value} is a causal convolution; it needs causal=True")
    return value


class ShortConv(nn.Module):
    """Depthwise causal convolution over time, kernel ``kernel_size`` (K >= 2), with bias.

    ``weight`` (D, 1, K) is laid out as :class:`torch.nn.Conv1d`'s (tap K-1 = the current
    token), initialised as Conv1d's default.
    """

    def __init__(self, dim: int, kernel_size: int = 4) -> None:
        super().__init__()
        self.dim = pos_int("dim", dim)
        self.kernel_size = check_short_conv(kernel_size, causal=True)
        if not self.kernel_size:
            raise ValueError("ShortConv needs a kernel size >= 2, got 0")
        conv = nn.Conv1d(dim, dim, self.kernel_size, groups=dim)
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone())

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}"

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, K-1+L, D), already left-padded or prefixed by the state -> (B, L, D)."""
        w = self.weight.to(x.dtype)
        b = self.bias.to(x.dtype)
        return F.conv1d(x.transpose(1, 2), w, b, groups=self.dim).transpose(1, 2)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Empty state: K - 1 zero inputs (B, K-1, D)."""
        return torch.zeros(batch_size, self.kernel_size - 1, self.dim, device=device,
                           dtype=dtype if dtype is not None else self.weight.dtype)

    def state_numel(self, seq_len: int = 0) -> int:
        """Numbers one sequence keeps to decode (independent of ``seq_len``)."""
        return (self.kernel_size - 1) * self.dim

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor = None) -> torch.Tensor:
        """x (B, L, D), padding_mask (B, L) bool (True = keep) or None -> (B, L, D)."""
        if padding_mask is not None:
            x = x.masked_fill(~padding_mask[..., None], 0.0)
        return self._conv(F.pad(x, (0, 0, self.kernel_size - 1, 0)))

    def _check_state(self, state: torch.Tensor, x: torch.Tensor) -> None:
        want = (x.shape[0], self.kernel_size - 1, self.dim)
        if not torch.is_tensor(state) or tuple(state.shape) != want:
            got = tuple(state.shape) if torch.is_tensor(state) else type(state).__name__
            raise ValueError(f"short-conv state must have shape {want} (from init_state), got {got}")

    def prefill(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, D) after the inputs kept in ``state`` (B, K-1, D) -> (y (B, L, D), new state)."""
        self._check_state(state, x)
        full = torch.cat([state.to(x.dtype), x], dim=1)
        return self._conv(full), full[:, full.shape[1] - (self.kernel_size - 1):]

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One token x_t (B, D) -> (y_t (B, D), new state)."""
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state
