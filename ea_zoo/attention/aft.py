"""Shared base of the AFT backends (Zhai et al. 2021; Feng 2025 eq. 19). Not registered.

A subclass chooses two things:

* :meth:`AFTBase.position_bias` ``(L) -> (L, L) or None``: the w of eq. 19 for the parallel
  form (None = w = 0, AFT-simple's linear path);
* ``_cache_limit`` and :meth:`AFTBase._step_bias`: how many of the most recent keys the
  decoding state caches (with their biases w_tj); older keys are folded into per-channel
  running sums ``(m, num, den)`` (bias 0). ``None`` caches everything (AFT-full), 0 nothing
  (AFT-simple), ``window`` the last window keys (AFT-local).

Decoding state (dict): ``k``, ``v`` (B, H, T, d) cache; ``m``, ``num``, ``den`` (B, H, d)
running max / numerator / denominator of the folded keys; ``t`` (int) tokens seen. State
tensors are float32 for half/bfloat16 modules.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ea_zoo.attention.base import AttentionBase, State
from ea_zoo.functional.aft import aft, aft_compute_dtype, aft_state_update, aft_step


class AFTBase(AttentionBase):
    """AFT mixing on heads: y_i = sigmoid(q_i) * sum_j e^{k_j + w_ij} v_j / sum_j e^{k_j + w_ij}.

    Element-wise per channel; heads only matter for the ``q_norm``/``k_norm`` layout.
    ``attn_drop`` is accepted and ignored (no explicit attention weights).
    """

    #: number of recent keys cached for decoding (None = all of them); older keys are
    #: folded into the running sums. Subclasses may set it per instance.
    _cache_limit: Optional[int] = 0

    def position_bias(self, seq_len: int) -> Optional[torch.Tensor]:
        """w of eq. 19, (L, L), or None for w = 0."""
        return None

    def _step_bias(self, t: int, n_cached: int) -> Optional[torch.Tensor]:
        """Biases w_{t, j} (n_cached,) of the cached keys j = t - n_cached + 1 .. t."""
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
    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        self._require_step()
        ref = self.qkv.weight
        ct = aft_compute_dtype(dtype or ref.dtype)
        shape = (batch_size, self.num_heads, self.head_dim)
        dd = {"device": device if device is not None else ref.device, "dtype": ct}
        cache = torch.zeros(batch_size, self.num_heads, 0, self.head_dim, **dd)
        state = {"k": cache, "v": cache.clone(), "t": 0}
        if self._cache_limit is not None:  # running sums of the keys outside the cache
            state.update(m=torch.full(shape, float("-inf"), **dd),
                         num=torch.zeros(shape, **dd), den=torch.zeros(shape, **dd))
        return state

    def step_attend(self, q, k, v, state: State) -> Tuple[torch.Tensor, State]:
        """q, k, v (B, H, d) -> (B, H, d), new state (the input state is not modified)."""
        t = state["t"]
        ct = state["k"].dtype
        kc = torch.cat([state["k"], k.to(ct)[..., None, :]], dim=-2)
        vc = torch.cat([state["v"], v.to(ct)[..., None, :]], dim=-2)
        new = {"t": t + 1}
        sums = None
        if self._cache_limit is not None:
            sums = (state["m"], state["num"], state["den"])
            if kc.shape[-2] > self._cache_limit:  # the oldest key leaves the window
                sums = aft_state_update(sums, kc[..., 0, :], vc[..., 0, :])
                kc, vc = kc[..., 1:, :], vc[..., 1:, :]
            new.update(m=sums[0], num=sums[1], den=sums[2])
        y = aft_step(q, kc, vc, bias=self._step_bias(t, kc.shape[-2]), sums=sums)
        new.update(k=kc, v=vc)
        return y, new
