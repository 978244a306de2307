"""AFT-full (Zhai et al. 2021; Feng 2025 eq. 19): learned pairwise position biases w (L x L)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ea_zoo.attention.aft import AFTBase
from ea_zoo.attention.base import State
from ea_zoo.functional.aft import aft_full
from ea_zoo.registry import register_attention


@register_attention("aft_full")
class AFTFull(AFTBase):
    """AFT-full: ``y_i = sigmoid(q_i) * sum_j e^{k_j + w_ij} v_j / sum_j e^{k_j + w_ij}``.

    x (B, L, D) -> (B, L, D). ``pos_bias`` w is a (max_len, max_len) parameter (init 0)
    shared by all channels; a sequence uses its top-left (L, L) block, and L > max_len is a
    ValueError. O(L^2 D) compute, O(L D + L^2) memory. Decoding caches every past k, v
    (2 L D numbers, at most ``max_decode_len`` = max_len tokens), so it is not recurrent;
    ``prefill`` appends L tokens to the cache in one call.

    Args (besides :class:`~ea_zoo.attention.base.AttentionBase`'s):
        max_len: longest sequence (size of w).
    """

    recurrent = False
    supports_step = True
    paper_equation = "19 (AFT-full, Zhai et al. 2021)"
    description = "AFT-full, learned L x L position biases"
    _state_kind = "full"

    length_option = "max_len"

    def __init__(
        self,
        *args: Any,
        max_len: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(max_len, int) or max_len <= 0:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        self.max_len = max_len
        self.max_decode_len = max_len  # positions the bias table covers when decoding
        self.pos_bias = nn.Parameter(torch.zeros(max_len, max_len, **self.factory_kwargs()))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_len={self.max_len}"

    def position_bias(self, seq_len: int) -> torch.Tensor:
        self._check_len(seq_len, self.max_len)
        return self.pos_bias[:seq_len, :seq_len]

    def attend_state(self, q, k, v, state: State):
        """q, k, v (B, H, L, d) at positions T .. T + L - 1 after a cache of T tokens: one
        :func:`aft_full` call. Returns (o (B, H, L, d), the grown cache)."""
        return aft_full(q, k, v, self.pos_bias, causal=True, initial_state=state, output_final_state=True)

    def state_numel(self, seq_len: int) -> int:
        return 2 * seq_len * self.dim
