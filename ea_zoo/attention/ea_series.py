"""``ea_series``: EA with a Taylor polynomial (Feng 2025, eq. 5-6; recurrent eq. 7-16).

Aliases ``ea2``, ``ea4``, ``ea6``, ``ea8`` bind ``order``.
"""
from __future__ import annotations

from typing import Any

from ea_zoo.attention.base import State
from ea_zoo.attention.ea import TemperatureScaledAttention
from ea_zoo.functional.ea_series import check_order, ea_series, ea_series_init_state, ea_series_step
from ea_zoo.functional.ea_series_chunk import DEFAULT_CHUNK_SIZE
from ea_zoo.registry import register_alias, register_attention


@register_attention("ea_series")
class EASeriesAttention(TemperatureScaledAttention):
    """EA-t: full EA with e^{2qk} replaced by its Taylor polynomial of highest degree t.

    x (B, L, D) -> (B, L, D), O(t L D) compute and memory; decodes with a fixed state of
    2 (t + 1) D numbers (+ D for the running stabiliser), independent of L.

    Args (besides :class:`~ea_zoo.attention.ea.TemperatureScaledAttention`'s ``temperature``, ``learn_temperature``):
        order: highest Taylor degree t, even (default 6). Odd raises ValueError unless
            ``allow_odd=True``.
        allow_odd: accept odd orders (weights may turn negative).
        chunk_size: tokens per chunk of the causal PyTorch path (default 64; the outputs agree
            to float rounding for any value). Chunks in which the running minimum of k^2
            falls more than tau = 20 below the chunk's scale (large q, k: trained models,
            scale >= 4) are redone exactly in sub-chunks of a quarter of their size
            (pairwise once <= 16 rows), so their cost stays O(C) per row; measured in
            ``benchmarks/results/ea_series_speed_cpu_scale/``.

    Default scale: ``temperature=1`` and ``qk_norm=False`` reproduce the paper's formula.
    The polynomial is accurate while |2 q k| / tau stays small; turn on ``qk_norm`` and/or
    raise ``temperature`` when q, k grow (see README, "EA-series approximation error").
    """

    recurrent = True
    paper_equation = "5-6 (recurrent form: 7-16)"
    description = "EA-series, Taylor polynomial of order t"

    def __init__(self, *args: Any, order: int = 6, allow_odd: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 **kwargs: Any) -> None:
        check_order(order, allow_odd)  # fail before any parameter is built
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        super().__init__(*args, **kwargs)
        self.order = order
        self.allow_odd = allow_odd
        self.chunk_size = chunk_size

    def extra_repr(self) -> str:
        return super().extra_repr() + f", order={self.order}"

    def attend(self, q, k, v, key_padding_mask, causal):
        q, k = self.scale_qk(q, k)
        return ea_series(q, k, v, order=self.order, causal=causal, key_padding_mask=key_padding_mask,
                         allow_odd=self.allow_odd, chunk_size=self.chunk_size)

    def init_state(self, batch_size: int = 1, device=None, dtype=None) -> State:
        """Empty state {'s', 'z': (t+1, B, H, d), 'ref': (B, H, d)} (module device, accumulation dtype)."""
        self._require_step()
        return ea_series_init_state((batch_size, self.num_heads, self.head_dim), self.order,
                                    **self.state_factory(device, dtype))

    def step_attend(self, q, k, v, state):
        q, k = self.scale_qk(q, k)
        return ea_series_step(q, k, v, state, order=self.order, allow_odd=self.allow_odd)

    def attend_state(self, q, k, v, state):
        """L new tokens (B, H, L, d) from ``state``: one causal chunked call (eq. 6) with state."""
        q, k = self.scale_qk(q, k)
        return ea_series(q, k, v, order=self.order, causal=True, allow_odd=self.allow_odd,
                         initial_state=state, output_final_state=True, chunk_size=self.chunk_size)

    def state_numel(self, seq_len: int) -> int:
        return 2 * (self.order + 1) * self.dim + self.dim


for _t in (2, 4, 6, 8):
    register_alias(f"ea{_t}", "ea_series", order=_t)
