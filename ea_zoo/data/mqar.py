"""Multi-query associative recall (MQAR): the synthetic recall task of Zoology (Arora et al.
2023, "Zoology: Measuring and Improving Recall in Efficient Language Models") and of the Based
paper's Figure 2 (Arora et al. 2024).

One example of length ``seq_len`` (token ids in ``[0, vocab_size)``)::

    k1 v1 k2 v2 ... kP vP | . . kq . . . kq' . . ...
    <-- context: 2P ----> <-- seq_len - 2P: queries at power-law gaps, noise elsewhere -->

* the vocabulary is split in halves: keys are drawn from ``[1, vocab_size // 2)`` (0 is the
  filler id of Zoology), values from ``[vocab_size // 2, vocab_size)``; the P keys of one
  example are distinct, and so are its P values;
* the context holds the P key-value pairs;
* every key is queried once after the context, at position ``2P + 2 g`` where the gaps ``g``
  are P distinct draws from ``{0, ..., (seq_len - 2P) / 2 - 1}`` with probability
  ``p(g) ∝ alpha (g + 1)^(alpha - 1)`` (a power law: small gaps, i.e. queries soon after the
  context, are the most likely; Zoology's default ``alpha = 0.01``);
* every other position after the context is a uniformly random token (Zoology's
  ``random_non_queries``);
* ``labels[i]`` is the target of next-token prediction at input position ``i``: the value of
  the key at a query position, ``-100`` (ignored by ``cross_entropy``) everywhere else. So the
  label after each query is its value, and ``(labels != -100).sum(1) == P`` for every example.

Everything is drawn from one ``numpy.random.Generator(seed)`` (the gaps by the Gumbel top-k
trick: P draws without replacement proportional to ``p``), so a seed gives the same data on
every machine.

    >>> d = multiquery_ar(vocab_size=256, seq_len=64, num_pairs=8, num_examples=1000, seed=0)
    >>> d.inputs.shape, d.labels.shape      # (1000, 64) int64 each
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Sequence

import numpy as np
import torch

__all__ = ["IGNORE_INDEX", "MQARData", "check_mqar_params", "multiquery_ar", "mqar_mixture"]

#: label of every position that is not a query (ignored by ``torch.nn.functional.cross_entropy``)
IGNORE_INDEX = -100


@dataclass
class MQARData:
    """Inputs (N, L) and labels (N, L), int64; ``params`` holds the generator's arguments and
    ``num_pairs`` (N,) the number of pairs of each example (one value unless a mixture)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    num_pairs: torch.Tensor
    params: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"MQAR: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_mqar_params(vocab_size: int, seq_len: int, num_pairs: int, alpha: float = 0.01,
                      num_examples: int = 1, seed: int = 0) -> None:
    """Raise a ValueError naming the parameter when the arguments describe no valid MQAR set:
    ``vocab_size > seq_len``, ``seq_len`` even, ``4 * num_pairs <= seq_len``, ``alpha > 0``."""
    seq_len = _int("seq_len", seq_len, 2)
    vocab_size = _int("vocab_size", vocab_size, 4)
    num_pairs = _int("num_pairs", num_pairs, 1)
    _int("num_examples", num_examples, 1)
    _int("seed", seed, 0)
    if seq_len % 2:
        raise ValueError(f"MQAR: seq_len must be even (key-value pairs and query slots come in twos), got {seq_len}")
    if vocab_size <= seq_len:
        raise ValueError(f"MQAR: vocab_size must be greater than seq_len, got vocab_size={vocab_size} <= "
                         f"seq_len={seq_len}")
    if 4 * num_pairs > seq_len:
        raise ValueError(f"MQAR: 4 * num_pairs must be <= seq_len (the context of 2 * num_pairs tokens and at least "
                         f"as many query slots), got num_pairs={num_pairs} (4 * {num_pairs} = {4 * num_pairs}) > "
                         f"seq_len={seq_len}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"MQAR: alpha (the power-law exponent) must be a finite number > 0, got {alpha!r}")


def _sample_without_replacement(rng: np.random.Generator, n: int, size: int, k: int,
                                log_p: np.ndarray | None = None) -> np.ndarray:
    """(n, k) indices in [0, size), distinct per row; uniform, or proportional to exp(log_p)
    (Gumbel top-k, which is sequential sampling without replacement)."""
    scores = rng.gumbel(size=(n, size))
    if log_p is not None:
        scores = scores + log_p[None, :]
    idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    # order within the k chosen by score (the draw order), for a well-defined layout
    order = np.argsort(-np.take_along_axis(scores, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


def multiquery_ar(vocab_size: int = 256, seq_len: int = 64, num_pairs: int = 8, alpha: float = 0.01,
                  num_examples: int = 1000, seed: int = 0) -> MQARData:
    """A seeded MQAR set (module docstring). Raises ValueError on invalid parameters
    (:func:`check_mqar_params`)."""
    check_mqar_params(vocab_size, seq_len, num_pairs, alpha, num_examples, seed)
    N, L, P, V = int(num_examples), int(seq_len), int(num_pairs), int(vocab_size)
    rng = np.random.default_rng(int(seed))
    half = V // 2
    keys = 1 + _sample_without_replacement(rng, N, half - 1, P)            # [1, half)
    values = half + _sample_without_replacement(rng, N, V - half, P)       # [half, V)
    ctx = 2 * P
    space = (L - ctx) // 2
    g = np.arange(1, space + 1, dtype=np.float64)
    log_p = np.log(alpha) + (alpha - 1.0) * np.log(g)
    log_p -= np.log(np.exp(log_p - log_p.max()).sum()) + log_p.max()
    gaps = _sample_without_replacement(rng, N, space, P, log_p)            # distinct slots
    inputs = rng.integers(0, V, size=(N, L), dtype=np.int64)               # noise after the context
    inputs[:, 0:ctx:2] = keys
    inputs[:, 1:ctx:2] = values
    qpos = ctx + 2 * gaps
    rows = np.arange(N)[:, None]
    inputs[rows, qpos] = keys
    labels = np.full((N, L), IGNORE_INDEX, dtype=np.int64)
    labels[rows, qpos] = values
    params = dict(vocab_size=V, seq_len=L, num_pairs=P, alpha=float(alpha), num_examples=N, seed=int(seed))
    return MQARData(torch.from_numpy(inputs), torch.from_numpy(labels), torch.full((N,), P, dtype=torch.long),
                    params)


def mqar_mixture(vocab_size: int, seq_len: int, num_pairs: Sequence[int], num_examples: int, seed: int,
                 alpha: float = 0.01) -> MQARData:
    """Equal shares of ``num_examples`` for each pair count (seed ``seed * 1000 + i`` for the
    i-th), concatenated and shuffled with ``seed`` (Zoology trains on such mixtures)."""
    num_pairs = list(num_pairs)
    if not num_pairs:
        raise ValueError("MQAR: num_pairs must list at least one pair count")
    _int("num_examples", num_examples, len(num_pairs))
    _int("seed", seed, 0)
    n_each = [num_examples // len(num_pairs) + (1 if i < num_examples % len(num_pairs) else 0)
              for i in range(len(num_pairs))]
    parts = [multiquery_ar(vocab_size, seq_len, p, alpha, n, seed * 1000 + i)
             for i, (p, n) in enumerate(zip(num_pairs, n_each))]
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(num_examples))
    return MQARData(torch.cat([d.inputs for d in parts])[perm], torch.cat([d.labels for d in parts])[perm],
                    torch.cat([d.num_pairs for d in parts])[perm],
                    dict(vocab_size=vocab_size, seq_len=seq_len, num_pairs=num_pairs, alpha=float(alpha),
                         num_examples=num_examples, seed=seed))
