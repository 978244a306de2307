"""Shared base of the AFT backends (Zhai et al. 2021; Feng 2025 eq. 19). Not registered.

A subclass chooses:

* :meth:`AFTBase.position_bias` ``(L) -> (L, L) or None``: the w of eq. 19 for the parallel
  form (None = w = 0, AFT-simple's linear path);
* its decoding state and :meth:`AFTBase.attend_state`, one call of its functional op with
  ``initial_state`` / ``output_final_state``: AFT-simple keeps running sums
  ``{"m", "num", "den"}`` (B, H, d) (:func:`~ea_zoo.functional.aft.aft`); AFT-local the last
  ``window`` keys/values ``{"k", "v"}`` (B, H, T, d), the sums of the keys that left the
  window and the token count ``"t"`` (:func:`~ea_zoo.functional.aft.aft_local`); AFT-full the
  cache ``{"k", "v"}`` of every key (:func:`~ea_zoo.functional.aft.aft_full`).

:meth:`AFTBase.step_attend` is the L = 1 case of ``attend_state``. State tensors are in the
accumulation dtype (:meth:`~ea_zoo.attention.base.AttentionBase.state_factory`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ea_zoo.attention.base import AttentionBase, State
from ea_zoo.functional.aft import aft, init_aft_state


class AFTBase(AttentionBase):
    """AFT mixing on heads: y_i = sigmoid(q_i) * sum_j e^{k_j + w_ij} v_j / sum_j e^{k_j + w_ij}.

    Element-wise per channel; heads only matter for the ``q_norm``/``k_norm`` layout.
    ``attn_drop`` is accepted and ignored (no explicit attention weights).
    """

    #: kind of decoding state, see :func:`~ea_zoo.functional.aft.init_aft_state`
    _state_kind: str = "simple"

    def position_bias(self, seq_len: int) -> Optional[torch.Tensor]:
        """w of eq. 19, (L, L), or None for w = 0."""
        return None

    def _check_len(self, seq_len: int, max_len: int) -> None:
        if seq_len > max_len:
            raise ValueError(
                f"{type(self).__name__}: sequence length L={seq_len} exceeds max_len={max_len} "
                f"(the size of the learned position biases); build it with max_len >= {seq_len}"
            )

    def attend(self, q, k, v, key_padding_mask, causal):
        """q, k, v (B, H, L, d) -> (B, H, L, d)."""
        return aft(q, k, v, pos_bias=self.position_bias(q.shape[-2]), causal=causal,
                   key_padding_mask=key_padding_mask)

    # ------------------------------------------------------------------ decoding
    def init_state(self, batch_size: int = 1, device=None, dtype=None) -> State:
        """Empty decoding state for ``batch_size`` sequences on the module's device in its
        accumulation dtype unless given (see the module docstring for its entries)."""
        self._require_step()
        return init_aft_state((batch_size, self.num_heads), self.head_dim, kind=self._state_kind,
                              **self.state_factory(device, dtype))

    def step_attend(self, q, k, v, state: State) -> Tuple[torch.Tensor, State]:
        """q, k, v (B, H, d) -> (B, H, d), new state (the input state is not modified):
        the L = 1 case of :meth:`attend_state`."""
        o, state = self.attend_state(q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), state)
        return o.squeeze(2), state
