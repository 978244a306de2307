"""The one interface every attention backend implements.

An attention backend is an ``nn.Module`` that maps ``x`` of shape (B, L, D) to (B, L, D).
It owns its projections and names them as timm's ``Attention`` does (``qkv``, ``q_norm``,
``k_norm``, ``norm``, ``proj``), so a softmax-attention checkpoint loads into any backend and
any backend class can be handed to timm's ``VisionTransformer(attn_layer=...)``.

A backend subclass implements three things:

* ``attend(q, k, v, key_padding_mask, causal)``: the mixing on projected heads,
  q, k, v of shape (B, H, L, d) -> (B, H, L, d). It calls :mod:`ea_zoo.functional`.
* ``init_state`` / ``step_attend``: one decoding step on a single token's heads,
  q_t, k_t, v_t of shape (B, H, d) -> (B, H, d), carrying a dict of tensors.
* optionally ``attend_state(q, k, v, state)``: the causal mixing of L new tokens' heads
  (B, H, L, d) continuing from ``state``, returning ``(o, final_state)``; the default loops
  over ``step_attend``. Recurrent backends override it with their functional op's
  ``initial_state`` / ``output_final_state`` form (one parallel call), which is what
  :meth:`AttentionBase.prefill` (and so ``generate``) uses.

State contract (every backend): ``init_state()`` gives an empty state on the module's
device in its accumulation dtype (:meth:`AttentionBase.state_factory`); processing a
sequence in pieces, ``y1, s = prefill(x[:, :a]); y2, s = prefill(x[:, a:], s)``, equals the
causal ``forward(x)``, and so does ``step`` token by token.
* ``state_numel(seq_len)``: how many numbers one sequence keeps to decode token L + 1.

Class attributes describe the backend to tools and users:

* ``recurrent``: True when the decoding state has a fixed size, independent of L
  (linear attention, EA-series, AFT-simple/local, ...). SA and full EA decode with a cache
  that grows with L, so they are not recurrent, but they still ``step``.
* ``supports_step``: False for a backend that cannot decode token by token; ``step`` then
  raises :class:`StepNotSupportedError`.

Masks: one rule for every backend, in one place (:mod:`ea_zoo.attention.masks`, applied by
:meth:`AttentionBase.forward` through :meth:`AttentionBase.prepare_mask`): bool True = keep;
float *additive* as torch SDPA and timm (0 = keep, -inf or <= finfo.min / 2 = drop; any other
value is a bias only softmax attention applies); integer 0/1. Shapes: (B, L) key padding,
timm's key-only (B, 1, 1, L), and the padding-derived (B, 1, L, L) that timm's NaFlexViT builds
from patch validity (query i sees key j iff both are valid; a query that sees no key outputs
0 before ``proj``). A general (L, L) mask is a ValueError naming the backend (``sa`` passes it
to SDPA). Mask value checks run in eager mode only, and no backend's forward syncs with the
host: every backend runs under ``torch.compile(fullgraph=True)``, ``torch.func.vmap`` and on
``meta``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Tuple, Type

import torch
from torch import nn

from ea_zoo.attention.masks import NormalizedMask, normalize_attn_mask

State = Dict[str, Any]


class StepNotSupportedError(NotImplementedError):
    """Raised by :meth:`AttentionBase.step` on a backend that has no recurrent form."""


class AttentionBase(nn.Module):
    """Base class of all ea_zoo attention backends (timm ``attn_layer`` compatible).

    ``forward(x, attn_mask=None, is_causal=None)``: ``attn_mask`` follows the one mask rule of
    :mod:`ea_zoo.attention.masks` (bool True = keep, float additive 0 / -inf; (B, L),
    (B, 1, 1, L) or padding-derived (B, 1, L, L)), see :meth:`forward`.

    Args:
        dim: model width D; input and output are (B, L, D).
        num_heads: number of heads H; D must be divisible by H (head width d = D / H).
        qkv_bias: bias in the fused ``qkv`` projection.
        qk_norm: normalise q and k per head with ``norm_layer(d)`` (timm's ``q_norm``/``k_norm``).
        scale_norm: normalise the mixed output with ``norm_layer(D)`` before ``proj``.
        proj_bias: bias in the output projection.
        attn_drop: dropout on attention weights. Only backends that form explicit weights
            (softmax attention) apply it; the others accept and ignore it.
        proj_drop: dropout after the output projection.
        norm_layer: constructor for the q/k/output norms; ``nn.LayerNorm`` when None.
        causal: default causal mode of ``forward``; ``forward(is_causal=...)`` overrides it.
        device, dtype: factory kwargs for the parameters.
    """

    recurrent: ClassVar[bool] = False
    supports_step: ClassVar[bool] = True
    #: equation number(s) in Feng 2025 (or the cited paper) this backend implements
    paper_equation: ClassVar[str] = ""
    #: name under which the backend is registered (set by ``register_attention``)
    attention_name: ClassVar[str] = ""
    #: the option that depends on the host's token count (e.g. ``"max_len"`` of the AFT
    #: position tables), filled by :meth:`ea_zoo.registry.AttentionSpec.with_length`
    length_option: ClassVar[Optional[str]] = None

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Optional[Type[nn.Module]] = None,
        device=None,
        dtype=None,
        *,
        causal: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool (True or False), got {causal!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(num_heads, int) or num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(
                f"num_heads must be a positive int dividing dim={dim}, got {num_heads!r}"
            )
        dd = {"device": device, "dtype": dtype}
        norm_layer = norm_layer or nn.LayerNorm
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.causal = bool(causal)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(dim, **dd) if scale_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    # ------------------------------------------------------------------ helpers
    def factory_kwargs(self) -> Dict[str, Any]:
        """``{"device", "dtype"}`` of the module's parameters, for the ones a backend adds."""
        w = self.qkv.weight
        return {"device": w.device, "dtype": w.dtype}

    def host_config(self) -> Dict[str, Any]:
        """The host (timm ``Block``) arguments this module was built with, read back from its
        layers: ``dim``, ``num_heads``, ``qkv_bias``, ``qk_norm``, ``scale_norm``, ``proj_bias``,
        ``attn_drop``, ``proj_drop``, ``norm_layer`` (a constructor rebuilding the q/k/output
        norms with their ``eps``; None when there are none). ``type(other)(**m.host_config())``
        builds another backend in the same slot (per-layer / hybrid models)."""
        import functools

        norms = [n for n in (self.q_norm, self.norm) if not isinstance(n, nn.Identity)]
        norm_layer = None
        if norms:
            n = norms[0]
            norm_layer = functools.partial(type(n), eps=n.eps) if isinstance(getattr(n, "eps", None), float) \
                else type(n)
        return {
            "dim": self.dim, "num_heads": self.num_heads, "qkv_bias": self.qkv.bias is not None,
            "qk_norm": not isinstance(self.q_norm, nn.Identity), "scale_norm": not isinstance(self.norm, nn.Identity),
            "proj_bias": self.proj.bias is not None, "attn_drop": float(self.attn_drop.p),
            "proj_drop": float(self.proj_drop.p), "norm_layer": norm_layer,
        }

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, causal={self.causal}"

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3:
            raise ValueError(f"expected x of shape (B, L, D={self.dim}), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"expected last dimension D={self.dim} (the module's dim), got {x.shape[-1]} "
                f"(x shape {tuple(x.shape)})"
            )

    def project(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, D) -> q, k, v each (B, H, L, d), with ``q_norm``/``k_norm`` applied."""
        B, L, _ = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def merge_heads(self, o: torch.Tensor) -> torch.Tensor:
        """(B, H, L, d) -> (B, L, D) through ``norm``, ``proj`` and ``proj_drop``."""
        B, H, L, d = o.shape
        o = o.transpose(1, 2).reshape(B, L, H * d)
        return self.proj_drop(self.proj(self.norm(o)))

    # ------------------------------------------------------------------ parallel form
    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor],
        causal: bool,
    ) -> torch.Tensor:
        """Mix projected heads: q, k, v (B, H, L, d) -> (B, H, L, d). Implemented per backend."""
        raise NotImplementedError

    def mask_name(self) -> str:
        """The backend's name in mask errors: its registered name, else the class name."""
        return self.attention_name or type(self).__name__

    def prepare_mask(self, attn_mask: Optional[torch.Tensor], batch: int, seq_len: int) -> NormalizedMask:
        """Read ``attn_mask`` by the one mask rule (:mod:`ea_zoo.attention.masks`): key padding
        (B, L), timm's key-only (B, 1, 1, L) or the padding-derived (B, 1, L, L); bool True =
        keep, float additive (0 keep, -inf drop). A general (L, L) mask is a ValueError.

        Softmax attention overrides this to pass general masks on to SDPA.
        """
        return normalize_attn_mask(attn_mask, batch, seq_len, backend=self.mask_name(),
                                   num_heads=self.num_heads)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: Optional[bool] = None,
    ) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D).

        Args:
            x: input tokens.
            attn_mask: one mask rule for every backend (:mod:`ea_zoo.attention.masks`):
                bool True = keep; integer 0/1 (1 = keep); float **additive** as torch SDPA
                and timm (0 = keep, -inf or <= finfo.min / 2 = drop; other values are a bias
                only ``sa`` applies). Shapes: (B, L) key padding, (B, 1, 1, L) (timm's key-only
                form), (B, 1, L, L) derived from padding (query i sees key j iff both are
                valid, timm NaFlexViT's form; a query that sees no key outputs 0 before
                ``proj``). Padded keys have no influence on any output, NaN/Inf in them
                included. ``sa`` also takes any SDPA mask broadcastable to (B, H, L, L); the
                other backends raise a ValueError for a general (L, L) mask. Value checks run
                in eager mode only; nothing in ``forward`` syncs with the host, so it runs
                under ``torch.compile(fullgraph=True)``, ``torch.func.vmap`` and on ``meta``.
            is_causal: overrides the constructor's ``causal`` when not None.
        """
        self._check_input(x)
        B, L, _ = x.shape
        mask = self.prepare_mask(attn_mask, B, L)
        causal = self.causal if is_causal is None else bool(is_causal)
        if L == 0:  # no token: an empty output, for every backend
            return self.proj_drop(self.proj(self.norm(x)))
        q, k, v = self.project(x)
        kpm = mask.key_padding
        if kpm is not None:
            # padded positions never influence valid ones, even when they hold NaN/Inf
            kpm = kpm.to(k.device)
            keep = kpm[:, None, :, None]
            k = torch.where(keep, k, torch.zeros((), dtype=k.dtype, device=k.device))
            v = torch.where(keep, v, torch.zeros((), dtype=v.dtype, device=v.device))
        o = self.attend(q, k, v, mask.general if mask.general is not None else kpm, causal)
        if mask.query_keep is not None:  # queries that see no key output 0
            o = torch.where(mask.query_keep.to(o.device)[:, None, :, None], o,
                            torch.zeros((), dtype=o.dtype, device=o.device))
        return self.merge_heads(o.to(v.dtype))

    # ------------------------------------------------------------------ recurrent form
    def state_factory(self, device=None, dtype=None) -> Dict[str, Any]:
        """``{"device", "dtype"}`` for a new decoding state: the module's device and its
        accumulation dtype (float64 for a float64 module, float32 for float32/half/bfloat16),
        unless given. A module on ``meta`` gives meta states."""
        ref = self.qkv.weight
        device = ref.device if device is None else torch.device(device)
        dtype = ref.dtype if dtype is None else dtype
        return {"device": device, "dtype": torch.float64 if dtype == torch.float64 else torch.float32}

    def init_state(self, batch_size: int = 1, device=None, dtype=None) -> State:
        """Empty decoding state for ``batch_size`` sequences (see :meth:`state_factory`)."""
        self._require_step()
        raise NotImplementedError

    def attend_state(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: State
    ) -> Tuple[torch.Tensor, State]:
        """Causal mixing of L new tokens continuing from ``state``: q, k, v (B, H, L, d) ->
        (o (B, H, L, d), state after the last token).

        Default: one :meth:`step_attend` per token. Backends whose functional op takes
        ``initial_state`` / ``output_final_state`` override this with one parallel call.
        """
        outs = []
        for i in range(q.shape[2]):
            o, state = self.step_attend(q[:, :, i], k[:, :, i], v[:, :, i], state)
            outs.append(o)
        if not outs:
            return q.new_zeros(q.shape[:-1] + (v.shape[-1],)), state
        return torch.stack(outs, dim=2), state

    def prefill(self, x: torch.Tensor, state: Optional[State] = None) -> Tuple[torch.Tensor, State]:
        """Causal forward over x (B, L, D) continuing from ``state`` (``init_state`` if None).

        Returns ``(y (B, L, D), final_state)``. ``prefill(x)`` equals the causal
        ``forward(x)``; feeding a sequence in pieces with the state passed on equals one call
        on the whole sequence (and equals :meth:`step` token by token).
        """
        self._require_step()
        self._check_input(x)
        if state is None:
            state = self.init_state(x.shape[0])
        if x.shape[1] == 0:  # no token: the state is unchanged
            return self.proj_drop(self.proj(self.norm(x))), state
        q, k, v = self.project(x)
        o, state = self.attend_state(q, k, v, state)
        return self.merge_heads(o.to(v.dtype)), state

    def step_attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: State
    ) -> Tuple[torch.Tensor, State]:
        """One causal step on heads q, k, v (B, H, d) -> (B, H, d), new state."""
        raise NotImplementedError

    def step(self, x_t: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """Decode one token: x_t (B, D) -> y_t (B, D), new state.

        Feeding tokens 1..L one at a time reproduces the causal ``forward`` on the whole
        sequence, token by token.
        """
        self._require_step()
        if x_t.dim() != 2 or x_t.shape[-1] != self.dim:
            raise ValueError(f"step expects x_t of shape (B, D={self.dim}), got {tuple(x_t.shape)}")
        q, k, v = self.project(x_t[:, None, :])
        o, state = self.step_attend(q[:, :, 0], k[:, :, 0], v[:, :, 0], state)
        y = self.merge_heads(o[:, :, None, :].to(v.dtype))
        return y[:, 0], state

    def _require_step(self) -> None:
        if not self.supports_step:
            raise StepNotSupportedError(
                f"attention backend {type(self).__name__!r} has no recurrent/decoding form; "
                "use a backend whose `supports_step` is True"
            )

    def state_numel(self, seq_len: int) -> int:
        """Numbers kept per sequence (all layers' worth is the caller's sum) to decode token L+1."""
        raise NotImplementedError
