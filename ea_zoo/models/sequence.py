"""Sequence Transformer of Feng 2025 section 4.1, with any ea_zoo attention backend.

One block, stacked ``depth`` times: attention (backend by name/config through the registry)
and an FFN of width ``mlp_ratio * D``, each in a residual branch with LayerNorm:

* post-LN (default, the paper's): ``x = LN(x + Attn(x)); x = LN(x + FFN(x))``;
* pre-LN (``norm_first=True``): ``x = x + Attn(LN(x)); x = x + FFN(LN(x))``, and a final LN.

``causal=False`` gives an encoder, ``causal=True`` a decoder (every attention causal).

Inputs are a continuous multivariate series (B, L, C) (``in_chans=C``, linear embedding) or
token ids (B, L) (``vocab_size``). Positions: an absolute sinusoidal embedding of real-valued
timestamps (B, L) given by the caller ("designed based on the sampling times of the data";
0..L-1 when none are given), a learned embedding of integer positions
(``pos_embed='learned'``, ``max_len``), or none.

Tasks (``task``) and outputs of ``forward(x, timestamps=None, padding_mask=None)``:

* ``'encode'``: hidden states (B, L, D);
* ``'classify'``: logits (B, num_classes), pooled over tokens (``pool``: ``'mean'``,
  ``'cls'`` (a learned class token in front) or ``'last'``), padding-aware;
* ``'forecast'``: (B, pred_len, out_chans): the next ``pred_len`` values of ``out_chans``
  targets from the pooled state (``'last'`` by default: the last valid token of a causal
  decoder, which has seen the whole past);
* ``'lm'``: next-token logits (B, L, vocab_size), causal.

``padding_mask`` is (B, L) bool, True = keep (right padding for causal models).

Recurrent inference (causal models): ``state = model.init_state(B)``, then
``out, state = model.step(x_t, state, timestamp=None)`` per token runs every layer's
attention ``step`` (norms and FFN act per token). Feeding tokens 1..L reproduces the causal
``forward`` on the sequence token by token; ``out`` is what ``forward`` would give on the
prefix (hidden state, logits of the last token, or the prefix's forecast / class logits).
``model.generate(prompt, max_new_tokens)`` decodes greedily (LM): constant memory in L for
recurrent backends (linear attention, EA-series, AFT-simple), a growing cache for SA/EA.
Backends without a decoding form raise their ``StepNotSupportedError``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from timm.layers import Mlp, trunc_normal_

from ea_zoo.functional.checks import check_key_padding_mask
from ea_zoo.models.binding import normalize_attention
from ea_zoo.registry import attention_options, create_attention, resolve_attention

__all__ = [
    "TASKS", "POOLS", "POS_EMBEDS",
    "SinusoidalTimeEmbedding", "LearnedPositionEmbedding", "SequenceBlock", "SequenceTransformer",
]

TASKS = ("encode", "classify", "forecast", "lm")
POOLS = ("mean", "cls", "last")
POS_EMBEDS = ("sinusoidal", "learned", "none")


def _choice(name: str, value: Any, allowed) -> Any:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid; allowed values: {', '.join(map(repr, allowed))}")
    return value


def _pos_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _pos_float(name: str, value: Any, lo: float = 0.0, hi: Optional[float] = None, open_lo: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo or (open_lo and value == lo) \
            or (hi is not None and value >= hi):
        rng = f"{'>' if open_lo else '>='} {lo}" + (f" and < {hi}" if hi is not None else "")
        raise ValueError(f"{name} must be a number {rng}, got {value!r}")
    return float(value)


class SinusoidalTimeEmbedding(nn.Module):
    """Absolute sinusoidal embedding of real-valued timestamps: t (...,) -> (..., D).

    ``pe(t)[2i] = sin(s t w_i)``, ``pe(t)[2i+1] = cos(s t w_i)``, ``w_i = max_period^(-2i/D)``
    (Vaswani et al. 2017 at integer t), ``s = time_scale``. No parameters.
    """

    def __init__(self, dim: int, max_period: float = 10000.0, time_scale: float = 1.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"sinusoidal position embedding needs an even embed_dim, got {dim}")
        self.dim = dim
        self.max_period = _pos_float("max_period", max_period, 1.0, open_lo=True)
        self.time_scale = _pos_float("time_scale", time_scale, 0.0, open_lo=True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}, time_scale={self.time_scale}"

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        dt = t.dtype if t.is_floating_point() else torch.float32
        t = t.to(dt)
        i = torch.arange(0, self.dim, 2, device=t.device, dtype=dt)
        freqs = torch.exp(i * (-math.log(self.max_period) / self.dim))
        ang = (t * self.time_scale).unsqueeze(-1) * freqs
        return torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(-2)


class LearnedPositionEmbedding(nn.Module):
    """Learned embedding of integer positions 0..max_len-1: p (...,) -> (..., D)."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.max_len = _pos_int("max_len", max_len)
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        trunc_normal_(self.weight, std=0.02)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        if p.is_floating_point():
            if not bool((p == p.round()).all()):
                raise ValueError("pos_embed='learned' needs integer positions; use pos_embed='sinusoidal' "
                                 "for real-valued timestamps")
            p = p.long()
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= self.max_len):
            raise ValueError(f"positions must lie in [0, max_len={self.max_len}), got [{int(p.min())}, "
                             f"{int(p.max())}]; build the model with a larger max_len")
        return self.weight[p]


class SequenceBlock(nn.Module):
    """Transformer block: attention + FFN, post-LN (default) or pre-LN (``norm_first``).

    Parameter names follow timm's ViT block (``attn.qkv``, ``attn.proj``, ``norm1``,
    ``mlp.fc1``, ``mlp.fc2``, ``norm2``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attention: Any,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_drop: float = 0.0,
        norm_first: bool = False,
        causal: bool = False,
        qkv_bias: bool = True,
        norm_eps: float = 1e-5,
        attn_options: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.norm_first = bool(norm_first)
        self.attn = create_attention(attention, dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                     proj_drop=dropout, causal=causal, **(attn_options or {}))
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D)."""
        if self.norm_first:
            x = x + self.attn(self.norm1(x), attn_mask=padding_mask)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, attn_mask=padding_mask))
        return self.norm2(x + self.mlp(x))

    def prefill(self, x: torch.Tensor, state: Dict[str, Any]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """Causal tokens x (B, L, D) through the block continuing from the attention's state
        (one parallel call: :meth:`AttentionBase.prefill`)."""
        if self.norm_first:
            a, state = self.attn.prefill(self.norm1(x), state)
            x = x + a
            return x + self.mlp(self.norm2(x)), state
        a, state = self.attn.prefill(x, state)
        x = self.norm1(x + a)
        return self.norm2(x + self.mlp(x)), state

    def step(self, x_t: torch.Tensor, state: Dict[str, Any]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """One token x_t (B, D) through the block with the attention's decoding state."""
        if self.norm_first:
            a, state = self.attn.step(self.norm1(x_t), state)
            x_t = x_t + a
            return x_t + self.mlp(self.norm2(x_t)), state
        a, state = self.attn.step(x_t, state)
        x_t = self.norm1(x_t + a)
        return self.norm2(x_t + self.mlp(x_t)), state


class SequenceTransformer(nn.Module):
    """Encoder/decoder stack of :class:`SequenceBlock` with input, position and task heads.

    Args:
        attention: backend name or config (``'ea6'``, ``{'name': 'ea_series', 'order': 4}``).
            Its ``causal`` comes from the model; ``max_len`` (AFT) from ``max_len`` if set.
        task: one of :data:`TASKS` (see the module docstring).
        in_chans: channels C of a continuous input (B, L, C); exclusive with ``vocab_size``.
        vocab_size: token vocabulary; input (B, L) int64.
        embed_dim, depth, num_heads, mlp_ratio: width D, blocks, heads, FFN width / D.
        dropout: dropout on embeddings, attention output and FFN. attn_drop: on attention
            weights (backends that form them).
        norm_first: pre-LN instead of post-LN.
        causal: decoder (causal attention) instead of encoder.
        pos_embed: ``'sinusoidal'`` (timestamps), ``'learned'`` (integer positions < max_len)
            or ``'none'``.
        max_len: learned-position table size (default 512); also passed as ``max_len`` to
            backends that take one (AFT-full/local) unless the attention config sets it.
        time_scale, max_period: sinusoidal embedding of ``time_scale * t``.
        embed_norm: LayerNorm after input + position embedding (BERT).
        num_classes: classes (``task='classify'``).
        pool: ``'mean'``, ``'cls'`` or ``'last'`` (classify/forecast); default ``'mean'`` for
            encoders, ``'last'`` for decoders.
        pred_len, out_chans: forecast horizon L' and targets C' (default C) (``'forecast'``).
        tie_weights: LM head shares the token embedding.
        qkv_bias, norm_eps: as in timm.
    """

    def __init__(
        self,
        attention: Any = "ea6",
        task: str = "encode",
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
        num_classes: Optional[int] = None,
        pool: Optional[str] = None,
        pred_len: Optional[int] = None,
        out_chans: Optional[int] = None,
        tie_weights: bool = False,
        qkv_bias: bool = True,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.task = _choice("task", task, TASKS)
        self.pos_embed_type = _choice("pos_embed", pos_embed, POS_EMBEDS)
        if (in_chans is None) == (vocab_size is None):
            raise ValueError(f"give exactly one of in_chans (continuous input (B, L, C)) and vocab_size "
                             f"(token ids (B, L)); got in_chans={in_chans!r}, vocab_size={vocab_size!r}")
        self.in_chans = None if in_chans is None else _pos_int("in_chans", in_chans)
        self.vocab_size = None if vocab_size is None else _pos_int("vocab_size", vocab_size)
        self.embed_dim = self.num_features = _pos_int("embed_dim", embed_dim)
        self.depth = _pos_int("depth", depth)
        self.num_heads = _pos_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        _pos_float("mlp_ratio", mlp_ratio, 0.0, open_lo=True)
        _pos_float("dropout", dropout, 0.0, 1.0)
        _pos_float("attn_drop", attn_drop, 0.0, 1.0)
        if not isinstance(causal, bool) or not isinstance(norm_first, bool):
            raise ValueError(f"causal and norm_first must be bool, got causal={causal!r}, norm_first={norm_first!r}")
        self.causal = causal
        self.norm_first = norm_first
        self.max_len = None if max_len is None else _pos_int("max_len", max_len)

        # task-specific arguments: refuse those that would be silently ignored
        for arg, val, tasks in (("num_classes", num_classes, ("classify",)), ("pred_len", pred_len, ("forecast",)),
                                ("out_chans", out_chans, ("forecast",)), ("pool", pool, ("classify", "forecast"))):
            if val is not None and self.task not in tasks:
                raise ValueError(f"{arg} is only used by task={' or '.join(map(repr, tasks))}, not task={task!r}")
        if tie_weights and self.task != "lm":
            raise ValueError(f"tie_weights is only used by task='lm', not task={task!r}")
        if self.task == "lm":
            if self.vocab_size is None:
                raise ValueError("task='lm' needs token input: set vocab_size (and in_chans=None)")
            if not causal:
                raise ValueError("task='lm' needs causal=True (a decoder)")
        if self.task == "classify":
            self.num_classes = _pos_int("num_classes", num_classes)
        if self.task == "forecast":
            if self.in_chans is None:
                raise ValueError("task='forecast' needs a continuous input: set in_chans (and vocab_size=None)")
            self.pred_len = _pos_int("pred_len", pred_len)
            self.out_chans = _pos_int("out_chans", out_chans) if out_chans is not None else self.in_chans
        self.pool = None
        if self.task in ("classify", "forecast"):
            self.pool = _choice("pool", pool if pool is not None else ("last" if causal else "mean"), POOLS)
            if self.pool == "cls" and causal:
                raise ValueError("pool='cls' needs an encoder (causal=False): in a causal model the class token "
                                 "in front sees no other token; use pool='last' or 'mean'")

        # attention spec: causal belongs to the model
        spec = normalize_attention(attention)
        cls, opts = resolve_attention(spec)
        if "causal" in opts and bool(opts["causal"]) != causal:
            raise ValueError(f"attention config sets causal={opts['causal']!r} but the model has causal={causal}; "
                             "set causal on the model only")
        attn_options = {}
        if self.max_len is not None and "max_len" in attention_options(cls) and "max_len" not in opts:
            attn_options["max_len"] = self.max_len
        self.attention_spec = spec

        # embeddings
        D = embed_dim
        self.embed = nn.Linear(in_chans, D) if self.in_chans is not None else nn.Embedding(vocab_size, D)
        if self.pos_embed_type == "sinusoidal":
            self.pos_embed: Optional[nn.Module] = SinusoidalTimeEmbedding(D, max_period, time_scale)
        elif self.pos_embed_type == "learned":
            self.pos_embed = LearnedPositionEmbedding(self.max_len or 512, D)
        else:
            self.pos_embed = None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if self.pool == "cls" else None
        self.embed_norm = nn.LayerNorm(D, eps=norm_eps) if embed_norm else nn.Identity()
        self.pos_drop = nn.Dropout(dropout)

        self.blocks = nn.ModuleList([
            SequenceBlock(D, num_heads, spec, mlp_ratio=mlp_ratio, dropout=dropout, attn_drop=attn_drop,
                          norm_first=norm_first, causal=causal, qkv_bias=qkv_bias, norm_eps=norm_eps,
                          attn_options=attn_options)
            for _ in range(depth)
        ])
        self.norm = nn.LayerNorm(D, eps=norm_eps) if norm_first else nn.Identity()

        # heads
        self.head_drop = nn.Dropout(dropout)
        if self.task == "classify":
            self.head: nn.Module = nn.Linear(D, self.num_classes)
        elif self.task == "forecast":
            self.head = nn.Linear(D, self.pred_len * self.out_chans)
        elif self.task == "lm":
            self.head = nn.Linear(D, self.vocab_size, bias=False)
        else:
            self.head = nn.Identity()
        self._init_weights()
        if tie_weights:
            self.head.weight = self.embed.weight
        self.tie_weights = bool(tie_weights)

    # ------------------------------------------------------------------ init
    def _init_weights(self) -> None:
        """timm ViT init for the model's own layers; backend-specific parameters keep theirs."""
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
        if isinstance(self.head, nn.Linear):
            lin(self.head)

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

    # ------------------------------------------------------------------ parallel form
    def forward_features(
        self,
        x: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Hidden states (B, L + num_prefix_tokens, D) (class token first when pool='cls')."""
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

    def pool_features(self, h: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L(+1), D) -> (B, D) by ``self.pool`` (mean / last over valid tokens, or the class token)."""
        if self.pool == "cls":
            return h[:, 0]
        if padding_mask is not None:
            padding_mask = check_key_padding_mask(padding_mask, h.shape[0], h.shape[1])
        if self.pool == "mean":
            if padding_mask is None:
                return h.mean(1)
            m = padding_mask.to(h.dtype).unsqueeze(-1)
            return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        if padding_mask is None:
            return h[:, -1]
        pos = torch.arange(h.shape[1], device=h.device)
        last = (pos * padding_mask).argmax(1)
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward_head(self, h: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.task == "encode":
            return h
        if self.task == "lm":
            return self.head(h)
        out = self.head(self.head_drop(self.pool_features(h, padding_mask)))
        if self.task == "forecast":
            out = out.view(out.shape[0], self.pred_len, self.out_chans)
        return out

    def forward(
        self,
        x: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x (B, L, C) or (B, L) ids; timestamps (B, L) or (L,); padding_mask (B, L) bool, True = keep."""
        return self.forward_head(self.forward_features(x, timestamps, padding_mask), padding_mask)

    def reset_classifier(self, num_classes: int) -> None:
        """New classification head with ``num_classes`` outputs (task='classify')."""
        if self.task != "classify":
            raise ValueError(f"reset_classifier needs task='classify', this model has task={self.task!r}")
        self.num_classes = _pos_int("num_classes", num_classes)
        ref = self.head.weight
        self.head = nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype)

    # ------------------------------------------------------------------ recurrent form
    def init_state(self, batch_size: int, device=None, dtype=None) -> Dict[str, Any]:
        """Empty decoding state: every layer's attention state, the token count and (mean
        pooling) a running sum. Needs a causal model; a backend without a decoding form raises
        its ``StepNotSupportedError``."""
        if not self.causal:
            raise ValueError("step/generate need a causal model (causal=True); this one is a non-causal encoder")
        ref = self.embed.weight
        device = device if device is not None else ref.device
        dtype = dtype if dtype is not None else ref.dtype
        state: Dict[str, Any] = {
            "t": 0,
            "layers": [blk.attn.init_state(batch_size, device=device, dtype=dtype) for blk in self.blocks],
        }
        if self.pool == "mean":
            state["sum"] = torch.zeros(batch_size, self.embed_dim, device=device, dtype=dtype)
        return state

    def step(
        self, x_t: torch.Tensor, state: Dict[str, Any], timestamp: Optional[Any] = None
    ) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """Feed one token: x_t (B, C) or ids (B,); timestamp (B,) or a number (default: its index).

        Returns ``(out, new_state)``: hidden (B, D) (encode), logits (B, vocab) (lm), or the
        forecast (B, pred_len, out_chans) / class logits (B, num_classes) of the prefix so far.
        """
        if not isinstance(state, dict) or "layers" not in state:
            raise ValueError("state must come from model.init_state(batch_size)")
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
        h = self.norm(h)
        new: Dict[str, Any] = {"t": t + 1, "layers": layers}
        if self.task == "encode":
            return h, new
        if self.task == "lm":
            return self.head(h), new
        if self.pool == "mean":
            new["sum"] = state["sum"] + h
            pooled = new["sum"] / (t + 1)
        else:
            pooled = h
        out = self.head(self.head_drop(pooled))
        if self.task == "forecast":
            out = out.view(B, self.pred_len, self.out_chans)
        return out, new

    def prefill(
        self, x: torch.Tensor, state: Optional[Dict[str, Any]] = None, timestamps: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """Feed L tokens at once: x (B, L, C) or ids (B, L), continuing from ``state``
        (``init_state(B)`` if None); timestamps (B, L) / (L,) (default: their indices).

        Every layer runs one parallel causal call with its state (:meth:`AttentionBase.prefill`),
        so ``prefill`` of a prompt followed by :meth:`step` per new token equals ``step`` from
        the first token. Returns ``(out, new_state)``: hidden states (B, L, D) (encode), logits
        (B, L, vocab) (lm), or the forecast / class logits of the whole prefix (as :meth:`step`).
        """
        h = self._embed_input(x)
        if h.dim() != 3:
            raise ValueError(f"prefill takes a batch of sequences (B, L, C) or ids (B, L), got shape {tuple(x.shape)}")
        B, L, _ = h.shape
        if state is None:
            state = self.init_state(B)
        elif not isinstance(state, dict) or "layers" not in state:
            raise ValueError("state must come from model.init_state(batch_size)")
        t = int(state["t"])
        pe = self._positions(timestamps, B, L, h.device, offset=t)
        if pe is not None:
            h = h + pe.to(h.dtype)
        h = self.pos_drop(self.embed_norm(h))
        layers: List[Any] = []
        for blk, st in zip(self.blocks, state["layers"]):
            h, st = blk.prefill(h, st)
            layers.append(st)
        h = self.norm(h)
        new: Dict[str, Any] = {"t": t + L, "layers": layers}
        if self.task == "encode":
            return h, new
        if self.task == "lm":
            return self.head(h), new
        if self.pool == "mean":
            new["sum"] = state["sum"] + h.sum(1)
            pooled = new["sum"] / max(t + L, 1)
        else:
            pooled = h[:, -1]
        out = self.head(self.head_drop(pooled))
        if self.task == "forecast":
            out = out.view(B, self.pred_len, self.out_chans)
        return out, new

    def max_decode_len(self) -> Optional[int]:
        """Longest sequence ``step``/``generate`` can reach (None: unbounded): the smallest
        ``max_decode_len`` of any layer's attention and of a learned position embedding."""
        limits = [getattr(blk.attn, "max_decode_len", None) for blk in self.blocks]
        if self.pos_embed_type == "learned":
            limits.append(self.pos_embed.max_len)
        limits = [int(x) for x in limits if x is not None]
        return min(limits) if limits else None

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, use_cache: bool = True) -> torch.Tensor:
        """Greedy decoding (task='lm'): prompt ids (B, P) -> (B, P + max_new_tokens).

        ``use_cache=True`` runs the prompt through :meth:`prefill` (one parallel call per layer)
        and the new tokens through :meth:`step` (constant memory in L for recurrent backends, a
        growing cache for SA/EA); ``use_cache=False`` reruns the
        parallel forward on the whole sequence per token (any backend, O(L) forwards). Call
        ``model.eval()`` first to switch dropout off.
        """
        if self.task != "lm":
            raise ValueError(f"generate needs task='lm', this model has task={self.task!r}")
        if prompt.dim() != 2 or prompt.shape[1] < 1 or prompt.is_floating_point():
            raise ValueError(f"prompt must be token ids of shape (B, P) with P >= 1, got {prompt.dtype} {tuple(prompt.shape)}")
        max_new_tokens = _pos_int("max_new_tokens", max_new_tokens, 0)
        limit = self.max_decode_len()
        if limit is not None and prompt.shape[1] + max_new_tokens > limit:
            raise ValueError(f"prompt + max_new_tokens = {prompt.shape[1] + max_new_tokens} exceeds max_len={limit}, "
                             "the longest sequence this model can decode (learned position embedding or a "
                             "backend's position biases, e.g. aft_local); build it with a larger max_len")
        if max_new_tokens == 0:
            return prompt
        out = [prompt]
        if not use_cache:
            seq = prompt
            for _ in range(max_new_tokens):
                nxt = self(seq)[:, -1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
            return seq
        logits, state = self.prefill(prompt)
        logits = logits[:, -1]
        for i in range(max_new_tokens):
            nxt = logits.argmax(-1)
            out.append(nxt[:, None])
            if i < max_new_tokens - 1:
                logits, state = self.step(nxt, state)
        return torch.cat(out, dim=1)

    def state_numel(self, seq_len: int) -> int:
        """Numbers one sequence keeps (all layers) to decode token ``seq_len + 1``."""
        return sum(blk.attn.state_numel(seq_len) for blk in self.blocks)
