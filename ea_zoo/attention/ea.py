"""``ea``: full element-wise attention (Feng 2025, eq. 1-2) as an attention backend."""
from __future__ import annotations

import math
from typing import Any, Tuple

import torch
from torch import nn

from ea_zoo.attention.base import AttentionBase, State
from ea_zoo.functional.ea import ea, ea_init_state, ea_step
from ea_zoo.registry import register_attention


class TemperatureScaledAttention(AttentionBase):
    """Shared base of EA and EA-series (not registered): q, k scaled by tau^(-1/2) per head.

    Args (besides :class:`AttentionBase`'s):
        temperature: tau in e^{-(q-k)^2 / tau}; 1.0 is the paper's eq. 2. q and k are
            scaled by tau^(-1/2) before the functional call.
        learn_temperature: make log(tau) a learnable parameter, one per head.
    """

    def __init__(self, *args: Any, temperature: float = 1.0, learn_temperature: bool = False,
                 **kwargs: Any) -> None:
        if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        super().__init__(*args, **kwargs)
        log_tau = torch.full((self.num_heads,), math.log(float(temperature)), **self.factory_kwargs())
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_temperature", log_tau, persistent=False)
        # tau = 1 and fixed: skip the multiply (it would also keep two more (B, H, L, d) tensors alive)
        self._unit_temperature = float(temperature) == 1.0 and not learn_temperature

    def scale_qk(self, q: torch.Tensor, k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Divide q, k (B, H, ..., d) by sqrt(tau_h)."""
        if self._unit_temperature:
            return q, k
        s = torch.exp(-0.5 * self.log_temperature).to(q.dtype)
        s = s.view(1, -1, *([1] * (q.dim() - 2)))
        return q * s, k * s


@register_attention("ea")
class ElementwiseAttention(TemperatureScaledAttention):
    """Full EA: y_i = sum_j e^{-(q_i-k_j)^2/tau} v_j / sum_j e^{-(q_i-k_j)^2/tau}, per channel.

    x (B, L, D) -> (B, L, D). Heads only group channels for ``qk_norm`` (timm layout); the
    mixing is per channel. O(L^2 D) compute, O(L D) memory (blocked, see
    :func:`ea_zoo.functional.ea`). Decodes from a cache of past keys/values (not recurrent).

    Args (besides :class:`TemperatureScaledAttention`'s ``temperature``, ``learn_temperature``):
        max_block_elements: memory bound of the blocked reference (elements of one
            (block, L, D) similarity block).
    """

    paper_equation = "1-2"
    description = "full element-wise attention"

    def __init__(self, *args: Any, max_block_elements: int = 1 << 24, **kwargs: Any) -> None:
        if isinstance(max_block_elements, bool) or not isinstance(max_block_elements, int) or max_block_elements <= 0:
            raise ValueError(f"max_block_elements must be a positive int, got {max_block_elements!r}")
        super().__init__(*args, **kwargs)
        self.max_block_elements = int(max_block_elements)

    def attend(self, q, k, v, key_padding_mask, causal):
        q, k = self.scale_qk(q, k)
        return ea(q, k, v, causal=causal, key_padding_mask=key_padding_mask,
                  max_block_elements=self.max_block_elements)

    def init_state(self, batch_size: int = 1, device=None, dtype=None) -> State:
        """Empty key/value cache {'k', 'v'}: (B, H, 0, d) each (module device, accumulation dtype)."""
        self._require_step()
        return ea_init_state((batch_size, self.num_heads, self.head_dim), **self.state_factory(device, dtype))

    def step_attend(self, q, k, v, state):
        q, k = self.scale_qk(q, k)
        return ea_step(q, k, v, state)

    def attend_state(self, q, k, v, state):
        """L new tokens (B, H, L, d) after the P cached ones: one causal call over the P + L
        keys (the cached rows' queries are placeholders whose outputs are dropped)."""
        q, k = self.scale_qk(q, k)
        cd = state["k"].dtype
        kc = torch.cat([state["k"], k.to(cd)], dim=-2)
        vc = torch.cat([state["v"], v.to(cd)], dim=-2)
        P = state["k"].shape[-2]
        qc = torch.cat([q.new_zeros(q.shape[:-2] + (P, q.shape[-1])).to(cd), q.to(cd)], dim=-2)
        o = ea(qc, kc, vc, causal=True, max_block_elements=self.max_block_elements)[..., P:, :]
        return o.to(v.dtype), {"k": kc, "v": vc}

    def state_numel(self, seq_len: int) -> int:
        return 2 * seq_len * self.dim
