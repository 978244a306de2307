"""AFT-simple (Zhai et al. 2021, w = 0 in Feng 2025 eq. 19): linear cost, fixed-size state."""
from __future__ import annotations

from typing import Any


from ea_zoo.attention.aft import AFTBase
from ea_zoo.attention.base import State
from ea_zoo.functional.aft import aft
from ea_zoo.registry import register_attention


@register_attention("aft_simple")
class AFTSimple(AFTBase):
    """AFT-simple: ``y_i = sigmoid(q_i) * sum_j e^{k_j} v_j / sum_j e^{k_j}`` per channel.

    x (B, L, D) -> (B, L, D). O(L D) compute and memory (causal prefix sums in log space,
    see :mod:`ea_zoo.functional.aft`). Decoding keeps per-channel running max, numerator
    and denominator ``{"m", "num", "den"}`` (B, H, d): 3 D numbers, whatever L;
    ``prefill`` runs L tokens from a state in one parallel call.
    """

    recurrent = True
    supports_step = True
    paper_equation = "19 (w = 0; AFT-simple, Zhai et al. 2021)"
    description = "AFT-simple, no position biases"
    _state_kind = "simple"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    def attend_state(self, q, k, v, state: State):
        """q, k, v (B, H, L, d) continuing from the running sums: one causal :func:`aft` call
        with ``initial_state``. Returns (o (B, H, L, d), the sums after the last token)."""
        return aft(q, k, v, causal=True, initial_state=state, output_final_state=True)

    def state_numel(self, seq_len: int) -> int:
        return 3 * self.dim
