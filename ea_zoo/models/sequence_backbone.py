"""The sequence Transformer's backbone: embeddings, ``depth`` blocks, final norm; no task.

``causal=False`` gives an encoder, ``causal=True`` a decoder (every attention causal). Inputs
are a continuous multivariate series (B, L, C) (``in_chans=C``, linear embedding) or token
ids (B, L) (``vocab_size``). Positions: an absolute sinusoidal embedding of real-valued
timestamps (B, L) given by the caller (0..L-1 when none are given), a learned embedding of
integer positions (``pos_embed='learned'``, ``max_len``), or none. ``class_token=True`` puts a
learned token in front (for heads that pool it).

Attention is chosen per layer: ``attention`` is any spec :func:`ea_zoo.registry.parse_attention`
takes (a name, a config, a hybrid label ``"ea6+sa@1"``, a per-layer list or mapping); layer i
is ``layer_specs(attention, depth)[i].with_length(max_len).build(...)``, so a hybrid model
mixes backends, and decoding carries each layer's own state (a KV cache in SA/EA layers, a
fixed-size state in recurrent ones).

Three forms, all returning hidden states (B, L(+1), D) / (B, D):

* ``forward(x, timestamps=None, padding_mask=None)``: the parallel form;
* ``prefill(x, state=None, timestamps=None)``: L causal tokens continuing from a decoding
  state (one parallel call per layer), ``(h, state)``;
* ``step(x_t, state, timestamp=None)``: one token, ``(h_t, state)``.

The decoding state is ``{"t": tokens so far, "layers": [each layer's state]}`` (a layer's
state is its attention's, plus the short convolution's last inputs when ``short_conv`` is set)
(:meth:`SequenceBackbone.init_state`; other keys of a state are passed through).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from timm.layers import trunc_normal_

from ea_zoo.functional.checks import check_key_padding_mask
from ea_zoo.models.sequence_args import choice, pos_float, pos_int
from ea_zoo.models.short_conv import check_short_conv
from ea_zoo.models.sequence_blocks import LearnedPositionEmbedding, SequenceBlock, SinusoidalTimeEmbedding
from ea_zoo.registry import HybridSpec, layer_specs, parse_attention

__all__ = ["POS_EMBEDS", "SequenceBackbone"]

POS_EMBEDS = ("sinusoidal", "learned", "none")

State = Dict[str, Any]


class SequenceBackbone(nn.Module):
    """Encoder/decoder stack of :class:`SequenceBlock` with input and position embeddings.

    Args:
        attention: attention spec, one backend for all layers or per layer (see the module
            docstring). Its ``causal`` comes from the model; ``max_len`` (AFT) from ``max_len``
            if set.
        in_chans: channels C of a continuous input (B, L, C); exclusive with ``vocab_size``.
        vocab_size: token vocabulary; input (B, L) int64.
        embed_dim, depth, num_heads, mlp_ratio: width D, blocks, heads, FFN width / D.
        dropout: dropout on embeddings, attention output and FFN. attn_drop: on attention
            weights (backends that form them).
        norm_first: pre-LN instead of post-LN (and a final LayerNorm).
        causal: decoder (causal attention) instead of encoder.
        pos_embed: ``'sinusoidal'`` (timestamps), ``'learned'`` (integer positions < max_len)
            or ``'none'``.
        max_len: learned-position table size (default 512); also the length option of
            backends that take one (AFT-full/local's ``max_len``) unless their spec sets it.
        time_scale, max_period: sinusoidal embedding of ``time_scale * t``.
        embed_norm: LayerNorm after input + position embedding (BERT).
        class_token: a learned token in front of the sequence.
        short_conv: kernel size K of a depthwise causal convolution in front of every
            attention (:class:`~ea_zoo.models.short_conv.ShortConv`; H3 / Based / fla's
            ``use_short_conv``); 0 = none. Needs ``causal=True``; adds (K - 1) * D numbers per
            layer to the decoding state.
        qkv_bias, norm_eps: as in timm.
        weight_init: ``''`` (timm's ViT init of the backbone's own layers) or ``'skip'``.
    """

    def __init__(
        self,
        attention: Any = "ea6",
        in_chans: Optional[int] = None,
        vocab_size: Optional[int] = None,
        embed_dim: int = 128,
        depth: int = 2,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        attn_drop: float = 0.0,
        norm_first: bool = False,
        causal: bool = False,
        pos_embed: str = "sinusoidal",
        max_len: Optional[int] = None,
        time_scale: float = 1.0,
        max_period: float = 10000.0,
        embed_norm: bool = False,
        class_token: bool = False,
        qkv_bias: bool = True,
        norm_eps: float = 1e-5,
        weight_init: str = "",
        short_conv: int = 0,
    ) -> None:
        super().__init__()
        self.pos_embed_type = choice("pos_embed", pos_embed, POS_EMBEDS)
        if (in_chans is None) == (vocab_size is None):
            raise ValueError(f"give exactly one of in_chans (continuous input (B, L, C)) and vocab_size "
                             f"(token ids (B, L)); got in_chans={in_chans!r}, vocab_size={vocab_size!r}")
        self.in_chans = None if in_chans is None else pos_int("in_chans", in_chans)
        self.vocab_size = None if vocab_size is None else pos_int("vocab_size", vocab_size)
        self.embed_dim = self.num_features = pos_int("embed_dim", embed_dim)
        self.depth = pos_int("depth", depth)
        self.num_heads = pos_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        pos_float("mlp_ratio", mlp_ratio, 0.0, open_lo=True)
        pos_float("dropout", dropout, 0.0, 1.0)
        pos_float("attn_drop", attn_drop, 0.0, 1.0)
        if not isinstance(causal, bool) or not isinstance(norm_first, bool):
            raise ValueError(f"causal and norm_first must be bool, got causal={causal!r}, norm_first={norm_first!r}")
        self.causal = causal
        self.norm_first = norm_first
        self.max_len = None if max_len is None else pos_int("max_len", max_len)
        choice("weight_init", weight_init, ("", "skip"))
        self.short_conv = check_short_conv(short_conv, causal)

        # attention: one spec per layer; causal belongs to the model
        spec = parse_attention(attention)
        specs = layer_specs(spec, self.depth)
        for i, s in enumerate(specs):
            opts = s.all_options
            if "causal" in opts and opts["causal"] != causal:
                where = f" (layer {i}: {s.label!r})" if isinstance(spec, HybridSpec) else ""
                raise ValueError(f"attention config sets causal={opts['causal']!r}{where} but the model has "
                                 f"causal={causal}; set causal on the model only")
        self.attention_spec = spec.to_config()

        # embeddings
        D = embed_dim
        self.embed = nn.Linear(in_chans, D) if self.in_chans is not None else nn.Embedding(vocab_size, D)
        if self.pos_embed_type == "sinusoidal":
            self.pos_embed: Optional[nn.Module] = SinusoidalTimeEmbedding(D, max_period, time_scale)
        elif self.pos_embed_type == "learned":
            self.pos_embed = LearnedPositionEmbedding(self.max_len or 512, D)
        else:
            self.pos_embed = None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if class_token else None
        self.embed_norm = nn.LayerNorm(D, eps=norm_eps) if embed_norm else nn.Identity()
        self.pos_drop = nn.Dropout(dropout)

        # blocks: each layer's attention from its own spec
        self.blocks = nn.ModuleList([
            SequenceBlock(D, num_heads,
                          s.with_length(self.max_len).build(D, num_heads, causal=causal, qkv_bias=qkv_bias,
                                                            attn_drop=attn_drop, proj_drop=dropout),
                          mlp_ratio=mlp_ratio, dropout=dropout, norm_first=norm_first, norm_eps=norm_eps,
                          short_conv=short_conv)
            for s in specs
        ])
        self.norm = nn.LayerNorm(D, eps=norm_eps) if norm_first else nn.Identity()
        if weight_init != "skip":
            self.init_backbone_weights()

    # ------------------------------------------------------------------ init
    def init_backbone_weights(self) -> None:
        """timm ViT init for the backbone's own layers; backend-specific parameters keep theirs."""
        def lin(m: nn.Linear) -> None:
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

        if isinstance(self.embed, nn.Linear):
            lin(self.embed)
        else:
            trunc_normal_(self.embed.weight, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for blk in self.blocks:
            for m in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
                lin(m)

    # ------------------------------------------------------------------ helpers
    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.cls_token is not None else 0

    def _float_dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def _embed_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) floats or (B, L) ids -> (B, L, D); also (B, C) / (B,) for one step."""
        if self.in_chans is not None:
            if not x.is_floating_point() or x.shape[-1] != self.in_chans:
                raise ValueError(f"expected a float series (B, L, C={self.in_chans}), got {x.dtype} of shape {tuple(x.shape)}")
            return self.embed(x.to(self._float_dtype()))
        if x.is_floating_point() or x.dtype == torch.bool:
            raise ValueError(f"expected token ids (int64) of shape (B, L), got {x.dtype} of shape {tuple(x.shape)}")
        return self.embed(x.long())

    def _positions(self, timestamps: Optional[torch.Tensor], B: int, L: int, device, offset: int = 0):
        """Position embedding (B, L, D) (or None) from timestamps (B, L) / (L,) or offset.. offset+L-1."""
        if self.pos_embed is None:
            if timestamps is not None:
                raise ValueError("timestamps were given but pos_embed='none'")
            return None
        if timestamps is None:
            dt = self._float_dtype() if self.pos_embed_type == "sinusoidal" else torch.long
            t = torch.arange(offset, offset + L, device=device, dtype=dt).expand(B, L)
        else:
            if not torch.is_tensor(timestamps) and self.pos_embed_type == "sinusoidal":
                timestamps = torch.as_tensor(timestamps, dtype=self._float_dtype())
            t = torch.as_tensor(timestamps, device=device)
            if t.dim() == 1 and t.shape[0] == L:
                t = t.expand(B, L)
            if tuple(t.shape) != (B, L):
                raise ValueError(f"timestamps must have shape (B, L) = ({B}, {L}) (or (L,)), got {tuple(t.shape)}")
            if self.pos_embed_type == "sinusoidal" and t.is_floating_point():
                t = t.to(torch.promote_types(t.dtype, self._float_dtype()))
        return self.pos_embed(t)

    @staticmethod
    def _check_state(state: Any) -> None:
        if not isinstance(state, dict) or "layers" not in state:
            raise ValueError("state must come from model.init_state(batch_size)")

    # ------------------------------------------------------------------ parallel form
    def forward_features(
        self,
        x: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Hidden states (B, L + num_prefix_tokens, D) (class token first when there is one)."""
        h = self._embed_input(x)
        if h.dim() != 3:
            raise ValueError(f"expected a batch of sequences, got input of shape {tuple(x.shape)}")
        B, L, _ = h.shape
        mask = check_key_padding_mask(padding_mask, B, L)
        pe = self._positions(timestamps, B, L, h.device)
        if pe is not None:
            h = h + pe.to(h.dtype)
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(B, -1, -1).to(h.dtype), h], dim=1)
            if mask is not None:
                mask = torch.cat([mask.new_ones(B, 1), mask], dim=1)
        h = self.pos_drop(self.embed_norm(h))
        for blk in self.blocks:
            h = blk(h, mask)
        return self.norm(h)

    def forward(
        self,
        x: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return self.forward_features(x, timestamps, padding_mask)

    # ------------------------------------------------------------------ recurrent form
    def _state_device_dtype(self, device=None, dtype=None):
        ref = self.embed.weight
        return (device if device is not None else ref.device), (dtype if dtype is not None else ref.dtype)

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Empty decoding state ``{"t": 0, "layers": [...]}``: every layer's state
        (:meth:`SequenceBlock.init_state`: its attention's state, of that layer's own kind, and
        the short convolution's inputs when there is one). Needs a causal model; a backend without a decoding form
        raises its ``StepNotSupportedError``."""
        if not self.causal:
            raise ValueError("step/generate need a causal model (causal=True); this one is a non-causal encoder")
        device, dtype = self._state_device_dtype(device, dtype)
        return {"t": 0, "layers": [blk.init_state(batch_size, device=device, dtype=dtype) for blk in self.blocks]}

    def step(
        self, x_t: torch.Tensor, state: State, timestamp: Optional[Any] = None
    ) -> Tuple[torch.Tensor, State]:
        """Feed one token: x_t (B, C) or ids (B,); timestamp (B,) or a number (default: its
        index). Returns ``(h_t (B, D), new_state)``."""
        self._check_state(state)
        t = int(state["t"])
        h = self._embed_input(x_t)
        if h.dim() != 2:
            raise ValueError(f"step takes one token per sequence: (B, C) or (B,), got input of shape {tuple(x_t.shape)}")
        B = h.shape[0]
        ts = None
        if timestamp is not None:
            if not torch.is_tensor(timestamp) and self.pos_embed_type == "sinusoidal":
                timestamp = torch.as_tensor(timestamp, dtype=self._float_dtype())
            ts = torch.as_tensor(timestamp, device=h.device)
            ts = (ts.expand(B) if ts.dim() == 0 else ts).reshape(B, 1)
        pe = self._positions(ts, B, 1, h.device, offset=t)
        if pe is not None:
            h = h + pe[:, 0].to(h.dtype)
        h = self.pos_drop(self.embed_norm(h))
        layers: List[Any] = []
        for blk, st in zip(self.blocks, state["layers"]):
            h, st = blk.step(h, st)
            layers.append(st)
        return self.norm(h), {**state, "t": t + 1, "layers": layers}

    def prefill(
        self, x: torch.Tensor, state: Optional[State] = None, timestamps: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, State]:
        """Feed L tokens at once: x (B, L, C) or ids (B, L), continuing from ``state``
        (``self.init_state(B)`` if None); timestamps (B, L) / (L,) (default: their indices).
        Every layer runs one parallel causal call with its state (:meth:`AttentionBase.prefill`).
        Returns ``(h (B, L, D), new_state)``."""
        h = self._embed_input(x)
        if h.dim() != 3:
            raise ValueError(f"prefill takes a batch of sequences (B, L, C) or ids (B, L), got shape {tuple(x.shape)}")
        B, L, _ = h.shape
        if state is None:
            state = self.init_state(B)
        self._check_state(state)
        t = int(state["t"])
        pe = self._positions(timestamps, B, L, h.device, offset=t)
        if pe is not None:
            h = h + pe.to(h.dtype)
        h = self.pos_drop(self.embed_norm(h))
        layers: List[Any] = []
        for blk, st in zip(self.blocks, state["layers"]):
            h, st = blk.prefill(h, st)
            layers.append(st)
        return self.norm(h), {**state, "t": t + L, "layers": layers}

    def max_decode_len(self) -> Optional[int]:
        """Longest sequence ``step``/``generate`` can reach (None: unbounded): the smallest
        ``max_decode_len`` of any layer's attention and of a learned position embedding."""
        limits = [getattr(blk.attn, "max_decode_len", None) for blk in self.blocks]
        if self.pos_embed_type == "learned":
            limits.append(self.pos_embed.max_len)
        limits = [int(x) for x in limits if x is not None]
        return min(limits) if limits else None

    def state_numel(self, seq_len: int) -> int:
        """Numbers one sequence keeps (all layers, each its own kind) to decode token ``seq_len + 1``."""
        return sum(blk.state_numel(seq_len) for blk in self.blocks)
