"""Wall-clock timing that waits for the device (CUDA events / synchronize on GPU)."""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

__all__ = ["synchronize", "time_call", "timed_greedy_step", "Timer", "cpu_threads", "add_threads_argument"]

#: default intra-op threads of the cost tools on CPU: one thread keeps timings stable on a
#: shared machine (with 2+ OpenMP threads, a core taken by another process stalls every
#: parallel region until the scheduler hands it back, ~10 ms each)
DEFAULT_CPU_THREADS = 1


@contextlib.contextmanager
def cpu_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (n None or <= 0: leave it), then restore."""
    old = torch.get_num_threads()
    if n is not None and n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def add_threads_argument(p) -> None:
    p.add_argument("--threads", type=int, default=DEFAULT_CPU_THREADS,
                   help=f"torch intra-op CPU threads while measuring (default {DEFAULT_CPU_THREADS}: stable timings on "
                        "a shared machine; 0 = torch's default)")


def synchronize(device: torch.device | str) -> None:
    """Wait for all queued work on ``device``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":  # pragma: no cover
        torch.mps.synchronize()


def timed_greedy_step(model: Any, tok: torch.Tensor, state: Any, device: torch.device | str):
    """One greedy decoding step of a sequence model, timed on ``device``: ``model.step(tok,
    state)``, then the argmax token. Returns ``(next tokens, new state, seconds)``."""
    synchronize(device)
    t0 = time.perf_counter()
    logits, state = model.step(tok, state)
    tok = logits.argmax(-1)
    synchronize(device)
    return tok, state, time.perf_counter() - t0


def time_call(
    fn: Callable[[], Any],
    device: torch.device | str = "cpu",
    warmup: int = 1,
    repeat: int = 3,
    max_total_s: Optional[float] = None,
) -> Dict[str, float]:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeat`` timed ones.

    ``max_total_s``: stop warming up / repeating once this much time has been spent (at least
    one timed call is always made), so slow points of a sweep do not take minutes.

    Returns seconds: ``median``, ``min``, ``mean`` and the raw ``times``.
    """
    spent = 0.0
    for _ in range(max(0, warmup)):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        spent += time.perf_counter() - t0
        if max_total_s is not None and spent > max_total_s / 2:
            break
    synchronize(device)
    times: List[float] = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        spent += times[-1]
        if max_total_s is not None and spent > max_total_s:
            break
    return {"median": statistics.median(times), "min": min(times), "mean": statistics.fmean(times),
            "times": times}


class Timer:
    """Context manager: ``with Timer(device) as t: ...``; ``t.seconds`` after the block."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device
        self.seconds = float("nan")

    def __enter__(self) -> "Timer":
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0
