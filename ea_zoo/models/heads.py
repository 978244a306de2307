"""Task heads of the sequence model: hidden states of the backbone -> the task's output.

A task is a head module; the backbone knows no task. Every head has three forms, matching the
backbone's:

* ``forward(h, padding_mask=None)``: hidden states (B, L, D) of a whole sequence;
* ``step(h_t, state)``: the hidden state (B, D) of one more token while decoding, with the
  head's own small state (``init_state(batch_size)``; a running sum for mean pooling, nothing
  for the others), returning ``(out, state)``: what ``forward`` gives on the prefix so far;
* ``prefill(h, state)``: L more tokens (B, L, D) at once, returning ``(out, state)``.

Heads (:data:`HEADS`, by task):

* :class:`EncoderHead` (``task='encode'``): the hidden states themselves;
* :class:`ClassifierHead` (``'classify'``): pooled (:class:`SequencePool`: ``'mean'``,
  ``'cls'``, ``'last'``, padding-aware), dropout, linear -> (B, num_classes);
* :class:`ForecastHead` (``'forecast'``): pooled, dropout, linear -> (B, pred_len, out_chans);
* :class:`LMHead` (``'lm'``): per-token linear map to the vocabulary (no bias; its weight can
  be tied to the token embedding).

The linear heads are ``nn.Linear`` subclasses, so their parameters are ``head.weight`` /
``head.bias``, as in checkpoints of the model before it had head modules.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Tuple, Type

import torch
from torch import nn
from timm.layers import trunc_normal_

from ea_zoo.functional.checks import check_key_padding_mask
from ea_zoo.models.sequence_args import choice, pos_int

__all__ = [
    "POOLS", "TASKS", "HEADS", "SequencePool", "SequenceHead", "EncoderHead", "ClassifierHead",
    "ForecastHead", "LMHead", "resolve_head",
]

POOLS = ("mean", "cls", "last")
#: tokens the backbone puts in front for a pooling (the class token)
_PREFIX_TOKENS = {"cls": 1}

State = Dict[str, Any]


class SequencePool(nn.Module):
    """Pooling over tokens: (B, L, D) -> (B, D), padding-aware; with a step form.

    * ``'mean'``: mean over valid tokens (decoding: a running sum);
    * ``'last'``: the last valid token (decoding: the newest token);
    * ``'cls'``: the class token in front (``num_prefix_tokens = 1``; the backbone prepends it).
      No step form: in a causal model the class token in front sees no other token.
    """

    def __init__(self, pool: str = "mean") -> None:
        super().__init__()
        self.pool = choice("pool", pool, POOLS)

    @property
    def num_prefix_tokens(self) -> int:
        return _PREFIX_TOKENS.get(self.pool, 0)

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}"

    def forward(self, h: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """h (B, L(+1), D), padding_mask (B, L) bool (True = keep) -> (B, D)."""
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

    # ------------------------------------------------------------------ decoding
    def _require_step(self) -> None:
        if self.pool == "cls":
            raise ValueError("pool='cls' has no step form: the class token in front needs the whole sequence "
                             "(an encoder); use pool='last' or 'mean'")

    def init_state(self, batch_size: int, dim: int, device=None, dtype=None) -> State:
        """Empty pooling state: ``{'sum': zeros (B, D), 'count': 0}`` for mean pooling, ``{}`` else."""
        self._require_step()
        if self.pool == "mean":
            return {"sum": torch.zeros(batch_size, dim, device=device, dtype=dtype), "count": 0}
        return {}

    def step(self, h_t: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """One more token h_t (B, D) -> (pooled prefix (B, D), state)."""
        self._require_step()
        if self.pool == "mean":
            new = {"sum": state["sum"] + h_t, "count": int(state["count"]) + 1}
            return new["sum"] / new["count"], new
        return h_t, state

    def prefill(self, h: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """L more tokens h (B, L, D) -> (pooled prefix (B, D), state)."""
        self._require_step()
        if self.pool == "mean":
            new = {"sum": state["sum"] + h.sum(1), "count": int(state["count"]) + h.shape[1]}
            return new["sum"] / max(new["count"], 1), new
        if h.shape[1] == 0:
            raise ValueError("pool='last' needs at least one token; prefill got 0")
        return h[:, -1], state


class SequenceHead(nn.Module):
    """Interface of a task head (see the module docstring).

    Class attributes: ``task`` (the ``SequenceTransformer(task=...)`` value it implements),
    ``model_args`` (the task-specific model arguments it consumes; any other given to the model
    is an error naming the tasks that use it).
    """

    task: ClassVar[str] = ""
    model_args: ClassVar[Tuple[str, ...]] = ()

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens the backbone puts in front of the sequence for this head (a class token)."""
        return 0

    @classmethod
    def prefix_tokens(cls, **head_args: Any) -> int:
        """:attr:`num_prefix_tokens` of the head ``cls(dim, **head_args)`` would be (the
        backbone is built before the head)."""
        return 0

    @classmethod
    def resolve_args(cls, *, in_chans: Optional[int], vocab_size: Optional[int], causal: bool, dropout: float,
                     **task_args: Any) -> Dict[str, Any]:
        """The model's arguments -> this head's constructor arguments (besides ``dim``),
        validated, defaults filled; ValueError naming the argument otherwise."""
        return {}

    def init_weights(self) -> None:
        """timm's ViT init of the head's parameters (the model calls it)."""

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Empty decoding state of the head."""
        return {}

    def forward(self, h: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def step(self, h_t: torch.Tensor, state: Optional[State] = None) -> Tuple[torch.Tensor, State]:
        raise NotImplementedError

    def prefill(self, h: torch.Tensor, state: Optional[State] = None) -> Tuple[torch.Tensor, State]:
        raise NotImplementedError


def _lin_init(m: nn.Linear) -> None:
    trunc_normal_(m.weight, std=0.02)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


class EncoderHead(SequenceHead):
    """``task='encode'``: the hidden states (B, L, D) (step: (B, D)), unchanged."""

    task = "encode"

    def __init__(self, dim: Optional[int] = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, h: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return h

    def step(self, h_t: torch.Tensor, state: Optional[State] = None) -> Tuple[torch.Tensor, State]:
        return h_t, {} if state is None else state

    def prefill(self, h: torch.Tensor, state: Optional[State] = None) -> Tuple[torch.Tensor, State]:
        return h, {} if state is None else state


class LMHead(nn.Linear, SequenceHead):
    """``task='lm'``: next-token logits, a per-token linear map D -> vocab_size without bias.

    (B, L, D) -> (B, L, vocab_size); step (B, D) -> (B, vocab_size). Needs a causal
    token model; the model's ``tie_weights`` shares the weight with the token embedding.
    """

    task = "lm"
    model_args = ("tie_weights",)

    def __init__(self, dim: int, vocab_size: int, device=None, dtype=None) -> None:
        super().__init__(pos_int("dim", dim), pos_int("vocab_size", vocab_size), bias=False, device=device,
                         dtype=dtype)
        self.vocab_size = vocab_size

    @classmethod
    def resolve_args(cls, *, in_chans, vocab_size, causal, dropout, **task_args) -> Dict[str, Any]:
        if vocab_size is None:
            raise ValueError("task='lm' needs token input: set vocab_size (and in_chans=None)")
        if not causal:
            raise ValueError("task='lm' needs causal=True (a decoder)")
        return {"vocab_size": vocab_size}

    def init_weights(self) -> None:
        _lin_init(self)

    def forward(self, h: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return super().forward(h)

    def step(self, h_t: torch.Tensor, state: Optional[State] = None) -> Tuple[torch.Tensor, State]:
        return super().forward(h_t), {} if state is None else state

    def prefill(self, h: torch.Tensor, state: Optional[State] = None) -> Tuple[torch.Tensor, State]:
        return super().forward(h), {} if state is None else state


class _PooledHead(nn.Linear, SequenceHead):
    """Pool (:class:`SequencePool`), dropout, linear D -> ``out_features``, then :meth:`_shape`."""

    def __init__(self, dim: int, out_features: int, pool: str, drop: float, device=None, dtype=None) -> None:
        super().__init__(pos_int("dim", dim), out_features, device=device, dtype=dtype)
        self.pooling = SequencePool(pool)
        self.drop = nn.Dropout(drop)

    @property
    def pool(self) -> str:
        return self.pooling.pool

    @property
    def num_prefix_tokens(self) -> int:
        return self.pooling.num_prefix_tokens

    @classmethod
    def prefix_tokens(cls, pool: str = "mean", **head_args: Any) -> int:
        return _PREFIX_TOKENS.get(pool, 0)

    @staticmethod
    def _resolve_pool(pool: Optional[str], causal: bool) -> str:
        pool = choice("pool", pool if pool is not None else ("last" if causal else "mean"), POOLS)
        if pool == "cls" and causal:
            raise ValueError("pool='cls' needs an encoder (causal=False): in a causal model the class token "
                             "in front sees no other token; use pool='last' or 'mean'")
        return pool

    def init_weights(self) -> None:
        _lin_init(self)

    def _shape(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def _out(self, pooled: torch.Tensor) -> torch.Tensor:
        return self._shape(super().forward(self.drop(pooled)))

    def forward(self, h: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._out(self.pooling(h, padding_mask))

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return self.pooling.init_state(batch_size, self.in_features,
                                       device=self.weight.device if device is None else device,
                                       dtype=self.weight.dtype if dtype is None else dtype)

    def step(self, h_t: torch.Tensor, state: Optional[State] = None) -> Tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(h_t.shape[0], device=h_t.device, dtype=h_t.dtype)
        pooled, state = self.pooling.step(h_t, state)
        return self._out(pooled), state

    def prefill(self, h: torch.Tensor, state: Optional[State] = None) -> Tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(h.shape[0], device=h.device, dtype=h.dtype)
        pooled, state = self.pooling.prefill(h, state)
        return self._out(pooled), state


class ClassifierHead(_PooledHead):
    """``task='classify'``: class logits (B, num_classes) of the pooled hidden states.

    ``pool``: ``'mean'`` (default of an encoder), ``'last'`` (default of a causal decoder: the
    last valid token has seen the whole sequence) or ``'cls'`` (encoders).
    """

    task = "classify"
    model_args = ("num_classes", "pool")

    def __init__(self, dim: int, num_classes: int, pool: str = "mean", drop: float = 0.0, device=None,
                 dtype=None) -> None:
        super().__init__(dim, pos_int("num_classes", num_classes), pool, drop, device=device, dtype=dtype)

    @property
    def num_classes(self) -> int:
        return self.out_features

    @classmethod
    def resolve_args(cls, *, in_chans, vocab_size, causal, dropout, num_classes=None, pool=None,
                     **task_args) -> Dict[str, Any]:
        return {"num_classes": pos_int("num_classes", num_classes), "pool": cls._resolve_pool(pool, causal),
                "drop": dropout}

    def reset_classifier(self, num_classes: int) -> None:
        """New ``num_classes`` outputs (fresh ``nn.Linear`` init), same pooling and dropout."""
        ref = self.weight
        new = nn.Linear(self.in_features, pos_int("num_classes", num_classes), device=ref.device, dtype=ref.dtype)
        self.weight, self.bias, self.out_features = new.weight, new.bias, num_classes


class ForecastHead(_PooledHead):
    """``task='forecast'``: the next ``pred_len`` values of ``out_chans`` targets,
    (B, pred_len, out_chans), from the pooled hidden states (``'last'`` by default in a causal
    decoder: the last valid token has seen the whole past)."""

    task = "forecast"
    model_args = ("pred_len", "out_chans", "pool")

    def __init__(self, dim: int, pred_len: int, out_chans: int, pool: str = "last", drop: float = 0.0,
                 device=None, dtype=None) -> None:
        pred_len, out_chans = pos_int("pred_len", pred_len), pos_int("out_chans", out_chans)
        super().__init__(dim, pred_len * out_chans, pool, drop, device=device, dtype=dtype)
        self.pred_len, self.out_chans = pred_len, out_chans

    @classmethod
    def resolve_args(cls, *, in_chans, vocab_size, causal, dropout, pred_len=None, out_chans=None, pool=None,
                     **task_args) -> Dict[str, Any]:
        if in_chans is None:
            raise ValueError("task='forecast' needs a continuous input: set in_chans (and vocab_size=None)")
        return {"pred_len": pos_int("pred_len", pred_len),
                "out_chans": pos_int("out_chans", out_chans) if out_chans is not None else in_chans,
                "pool": cls._resolve_pool(pool, causal), "drop": dropout}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pred_len={self.pred_len}, out_chans={self.out_chans}"

    def _shape(self, out: torch.Tensor) -> torch.Tensor:
        return out.view(out.shape[0], self.pred_len, self.out_chans)


#: task -> head class (``SequenceTransformer(task=...)``)
HEADS: Dict[str, Type[SequenceHead]] = {h.task: h for h in (EncoderHead, ClassifierHead, ForecastHead, LMHead)}
TASKS = tuple(HEADS)

#: task-specific model arguments, in the order they are checked
_TASK_ARGS = ("num_classes", "pred_len", "out_chans", "pool", "tie_weights")


def resolve_head(task: str, *, in_chans: Optional[int], vocab_size: Optional[int], causal: bool,
                 dropout: float, **task_args: Any) -> Tuple[Type[SequenceHead], Dict[str, Any]]:
    """``task`` and the model's arguments -> (head class, its constructor arguments besides
    ``dim``). A task-specific argument the task does not use (``num_classes`` for
    ``task='lm'``) is a ValueError naming the tasks that use it, not silently ignored."""
    head_cls = HEADS[choice("task", task, TASKS)]
    for arg in _TASK_ARGS:
        val = task_args.get(arg)
        if val is None or val is False or arg in head_cls.model_args:
            continue
        users = [h.task for h in HEADS.values() if arg in h.model_args]
        raise ValueError(f"{arg} is only used by task={' or '.join(map(repr, users))}, not task={task!r}")
    args = {k: v for k, v in task_args.items() if k in head_cls.model_args}
    return head_cls, head_cls.resolve_args(in_chans=in_chans, vocab_size=vocab_size, causal=causal,
                                           dropout=dropout, **args)
