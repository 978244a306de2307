"""Sequence Transformer of Feng 2025 section 4.1, with any ea_zoo attention backend: a
backbone (:class:`~ea_zoo.models.sequence_backbone.SequenceBackbone`) plus a task head
(:mod:`ea_zoo.models.heads`).

One block, stacked ``depth`` times: attention (backend by name/config through the registry,
one for all layers or one per layer: ``"ea6+sa@1"``, ``["ea6", "sa", "ea6"]``) and an FFN of
width ``mlp_ratio * D``, each in a residual branch with LayerNorm:

* post-LN (default, the paper's): ``x = LN(x + Attn(x)); x = LN(x + FFN(x))``;
* pre-LN (``norm_first=True``): ``x = x + Attn(LN(x)); x = x + FFN(LN(x))``, and a final LN.

``causal=False`` gives an encoder, ``causal=True`` a decoder (every attention causal).

Inputs are a continuous multivariate series (B, L, C) (``in_chans=C``, linear embedding) or
token ids (B, L) (``vocab_size``). Positions: an absolute sinusoidal embedding of real-valued
timestamps (B, L) given by the caller ("designed based on the sampling times of the data";
0..L-1 when none are given), a learned embedding of integer positions
(``pos_embed='learned'``, ``max_len``), or none.

Tasks (``task``: the head, :data:`~ea_zoo.models.heads.HEADS`) and outputs of
``forward(x, timestamps=None, padding_mask=None)``:

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
attention ``step`` (norms and FFN act per token) and the head's ``step``. Feeding tokens
1..L reproduces the causal ``forward`` on the sequence token by token; ``out`` is what
``forward`` would give on the prefix (hidden state, logits of the last token, or the prefix's
forecast / class logits). ``model.generate(prompt, max_new_tokens)`` decodes greedily (LM):
constant memory in L for recurrent backends (linear attention, EA-series, AFT-simple), a
growing cache for SA/EA; a hybrid keeps each layer's own kind of state. Backends without a
decoding form raise their ``StepNotSupportedError``.

The state is ``{"t": tokens so far, "layers": [each layer's attention state], "head": the
head's state}`` (the head's: a running sum for mean pooling, else empty).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from ea_zoo.models.heads import POOLS, TASKS, ClassifierHead, LMHead, SequenceHead, resolve_head
from ea_zoo.models.sequence_args import pos_int
from ea_zoo.models.sequence_backbone import POS_EMBEDS, SequenceBackbone
from ea_zoo.models.sequence_blocks import LearnedPositionEmbedding, SequenceBlock, SinusoidalTimeEmbedding

__all__ = [
    "TASKS", "POOLS", "POS_EMBEDS",
    "SinusoidalTimeEmbedding", "LearnedPositionEmbedding", "SequenceBlock", "SequenceBackbone",
    "SequenceTransformer",
]

State = Dict[str, Any]


class SequenceTransformer(SequenceBackbone):
    """A :class:`SequenceBackbone` with a task head (``self.head``, a
    :class:`~ea_zoo.models.heads.SequenceHead`).

    The backbone's layers are the model's own attributes (``embed``, ``pos_embed``,
    ``cls_token``, ``embed_norm``, ``blocks``, ``norm``) and the head's parameters are
    ``head.weight`` / ``head.bias``, so state-dict keys are those of timm's ViT layout.

    Args:
        attention: backend name or config (``'ea6'``, ``{'name': 'ea_series', 'order': 4}``),
            or per layer (``'ea6+sa@1'``, ``['ea6', 'sa', 'ea6']``,
            ``{'default': 'ea6', 'layers': {1: 'sa'}}``). Its ``causal`` comes from the model;
            ``max_len`` (AFT) from ``max_len`` if set.
        task: one of :data:`TASKS` (see the module docstring).
        in_chans: channels C of a continuous input (B, L, C); exclusive with ``vocab_size``.
        vocab_size: token vocabulary; input (B, L) int64.
        embed_dim, depth, num_heads, mlp_ratio: width D, blocks, heads, FFN width / D.
        dropout: dropout on embeddings, attention output, FFN and before the pooled heads.
            attn_drop: on attention weights (backends that form them).
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
        short_conv: kernel size of a short causal convolution in front of every attention
            (0 = none; causal models only; see :class:`~ea_zoo.models.short_conv.ShortConv`).
        qkv_bias, norm_eps: as in timm.

    ``model.config`` records the arguments (``"model"``) and the attention's
    JSON-serialisable form (``"attention"``); the factory adds the model ``name``.
    """

    head: SequenceHead

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
        short_conv: int = 0,
    ) -> None:
        args = dict(task=task, in_chans=in_chans, vocab_size=vocab_size, embed_dim=embed_dim, depth=depth,
                    num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout, attn_drop=attn_drop,
                    norm_first=norm_first, causal=causal, pos_embed=pos_embed, max_len=max_len,
                    time_scale=time_scale, max_period=max_period, embed_norm=embed_norm, num_classes=num_classes,
                    pool=pool, pred_len=pred_len, out_chans=out_chans, tie_weights=tie_weights, qkv_bias=qkv_bias,
                    norm_eps=norm_eps, short_conv=short_conv)
        # the head's arguments first (a task argument the task does not use is an error)
        head_cls, head_args = resolve_head(task, in_chans=in_chans, vocab_size=vocab_size, causal=causal,
                                           dropout=dropout, num_classes=num_classes, pool=pool, pred_len=pred_len,
                                           out_chans=out_chans, tie_weights=tie_weights)
        super().__init__(attention, in_chans=in_chans, vocab_size=vocab_size, embed_dim=embed_dim, depth=depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout, attn_drop=attn_drop,
                         norm_first=norm_first, causal=causal, pos_embed=pos_embed, max_len=max_len,
                         time_scale=time_scale, max_period=max_period, embed_norm=embed_norm,
                         class_token=head_cls.prefix_tokens(**head_args) > 0, qkv_bias=qkv_bias, norm_eps=norm_eps,
                         weight_init="skip", short_conv=short_conv)
        self.task = task
        self.head = head_cls(self.embed_dim, **head_args)
        self.init_weights()
        if tie_weights:
            self.head.weight = self.embed.weight
        self.tie_weights = bool(tie_weights)
        self.config: Dict[str, Any] = {"model": args, "attention": self.attention_spec}

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """timm ViT init for the model's own layers (backbone, then head); backend-specific
        parameters keep theirs."""
        self.init_backbone_weights()
        self.head.init_weights()

    # ------------------------------------------------------------------ task views
    @property
    def pool(self) -> Optional[str]:
        """The head's pooling (``'mean'``, ``'cls'``, ``'last'``), None for heads without."""
        return getattr(self.head, "pool", None)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def pred_len(self) -> int:
        return self.head.pred_len

    @property
    def out_chans(self) -> int:
        return self.head.out_chans

    # ------------------------------------------------------------------ parallel form
    def pool_features(self, h: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L(+1), D) -> (B, D) by the head's pooling (mean / last over valid tokens, or the class token)."""
        pooling = getattr(self.head, "pooling", None)
        if pooling is None:
            raise ValueError(f"pool_features needs a pooling head (task='classify' or 'forecast'), "
                             f"this model has task={self.task!r}")
        return pooling(h, padding_mask)

    def forward_head(self, h: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.head(h, padding_mask)

    def forward(
        self,
        x: torch.Tensor,
        timestamps: Optional[torch.Tensor] = None,
        padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x (B, L, C) or (B, L) ids; timestamps (B, L) or (L,); padding_mask (B, L) bool, True = keep."""
        return self.forward_head(self.forward_features(x, timestamps, padding_mask), padding_mask)

    def reset_classifier(self, num_classes: int) -> None:
        """New classification head output with ``num_classes`` classes (task='classify')."""
        if not isinstance(self.head, ClassifierHead):
            raise ValueError(f"reset_classifier needs task='classify', this model has task={self.task!r}")
        self.head.reset_classifier(num_classes)

    # ------------------------------------------------------------------ recurrent form
    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Empty decoding state: every layer's attention state (each layer's own kind), the
        token count and the head's state. Needs a causal model; a backend without a decoding
        form raises its ``StepNotSupportedError``."""
        state = super().init_state(batch_size, device=device, dtype=dtype)
        device, dtype = self._state_device_dtype(device, dtype)
        state["head"] = self.head.init_state(batch_size, device=device, dtype=dtype)
        return state

    def step(
        self, x_t: torch.Tensor, state: State, timestamp: Optional[Any] = None
    ) -> Tuple[torch.Tensor, State]:
        """Feed one token: x_t (B, C) or ids (B,); timestamp (B,) or a number (default: its index).

        Returns ``(out, new_state)``: hidden (B, D) (encode), logits (B, vocab) (lm), or the
        forecast (B, pred_len, out_chans) / class logits (B, num_classes) of the prefix so far.
        """
        h, new = super().step(x_t, state, timestamp)
        out, new["head"] = self.head.step(h, state.get("head"))
        return out, new

    def prefill(
        self, x: torch.Tensor, state: Optional[State] = None, timestamps: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, State]:
        """Feed L tokens at once: x (B, L, C) or ids (B, L), continuing from ``state``
        (``init_state(B)`` if None); timestamps (B, L) / (L,) (default: their indices).

        Every layer runs one parallel causal call with its state (:meth:`AttentionBase.prefill`),
        so ``prefill`` of a prompt followed by :meth:`step` per new token equals ``step`` from
        the first token. Returns ``(out, new_state)``: hidden states (B, L, D) (encode), logits
        (B, L, vocab) (lm), or the forecast / class logits of the whole prefix (as :meth:`step`).
        """
        h, new = super().prefill(x, state, timestamps)
        out, new["head"] = self.head.prefill(h, new.get("head"))
        return out, new

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, use_cache: bool = True) -> torch.Tensor:
        """Greedy decoding (task='lm'): prompt ids (B, P) -> (B, P + max_new_tokens).

        ``use_cache=True`` runs the prompt through :meth:`prefill` (one parallel call per layer)
        and the new tokens through :meth:`step` (constant memory in L for recurrent backends, a
        growing cache for SA/EA); ``use_cache=False`` reruns the
        parallel forward on the whole sequence per token (any backend, O(L) forwards). Call
        ``model.eval()`` first to switch dropout off.
        """
        if not isinstance(self.head, LMHead):
            raise ValueError(f"generate needs task='lm', this model has task={self.task!r}")
        if prompt.dim() != 2 or prompt.shape[1] < 1 or prompt.is_floating_point():
            raise ValueError(f"prompt must be token ids of shape (B, P) with P >= 1, got {prompt.dtype} {tuple(prompt.shape)}")
        max_new_tokens = pos_int("max_new_tokens", max_new_tokens, 0)
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
