"""AFT-local (Zhai et al. 2021; Feng 2025 eq. 19): learned biases inside a band |i - j| < window."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ea_zoo.attention.aft import AFTBase
from ea_zoo.attention.base import State
from ea_zoo.functional.aft import aft, aft_local, aft_local_dense_bias
from ea_zoo.registry import register_attention


@register_attention("aft_local")
class AFTLocal(AFTBase):
    """AFT-local: eq. 19 with ``w_ij`` learned for ``|i - j| < window`` and 0 outside.

    x (B, L, D) -> (B, L, D). Outside the window the bias is 0, not -inf: every key still
    contributes (``e^{k_j}``), so the mixing stays global. Only the band is stored:
    ``pos_bias[i, r] = w_{i, i + r - (window - 1)}``, shape (max_len, 2 window - 1), init 0;
    L > max_len is a ValueError. Parallel form: causal O(L window D) (banded,
    :func:`~ea_zoo.functional.aft.aft_local`), non-causal O(L^2 D) (dense w). Decoding is
    recurrent: AFT-simple running sums of the keys that left the window plus a cache of the
    last ``window`` keys/values for their biases and the token count ``t``: 3 D + 2 window D
    numbers, whatever L; ``prefill`` runs L tokens from a state in one call. Decoding past
    ``max_decode_len`` (= max_len) positions is a ValueError raised before any work.

    Args (besides :class:`~ea_zoo.attention.base.AttentionBase`'s):
        window: keys with |i - j| < window get a learned bias.
        max_len: longest sequence (rows of the bias table).
    """

    recurrent = True
    supports_step = True
    paper_equation = "19 (AFT-local, Zhai et al. 2021)"
    description = "AFT-local, windowed position biases"
    _state_kind = "local"

    length_option = "max_len"

    def __init__(
        self,
        *args: Any,
        window: int = 64,
        max_len: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(window, int) or window <= 0:
            raise ValueError(f"window must be a positive int, got {window!r}")
        if not isinstance(max_len, int) or max_len <= 0:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        self.window = window
        self.max_len = max_len
        self.max_decode_len = max_len  # positions the bias table covers when decoding
        self.pos_bias = nn.Parameter(torch.zeros(max_len, 2 * window - 1, **self.factory_kwargs()))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}, max_len={self.max_len}"

    def position_bias(self, seq_len: int) -> torch.Tensor:
        """Dense w (L, L): the band from ``pos_bias``, 0 outside it."""
        self._check_len(seq_len, self.max_len)
        return aft_local_dense_bias(self.pos_bias, self.window, seq_len)

    def attend(self, q, k, v, key_padding_mask, causal):
        """q, k, v (B, H, L, d) -> (B, H, L, d); causal: banded, non-causal: dense w."""
        self._check_len(q.shape[-2], self.max_len)
        if causal:
            return aft_local(q, k, v, self.pos_bias, self.window, causal=True,
                             key_padding_mask=key_padding_mask)
        return aft(q, k, v, pos_bias=self.position_bias(q.shape[-2]), causal=False,
                   key_padding_mask=key_padding_mask)

    def attend_state(self, q, k, v, state: State):
        """q, k, v (B, H, L, d) at positions t .. t + L - 1: one :func:`aft_local` call with
        ``initial_state``. Returns (o (B, H, L, d), state after the last token)."""
        return aft_local(q, k, v, self.pos_bias, self.window, causal=True, initial_state=state,
                         output_final_state=True)

    def state_numel(self, seq_len: int) -> int:
        return 3 * self.dim + 2 * self.window * self.dim
