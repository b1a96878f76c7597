"""Dropout masks for the CPU training speed-ups (lorafit.speedups): 16 random bits per element from PCG64 streams
seeded from torch's generator, compared with a threshold, and packed to bits where backward holds them.

A mask costs one 64-bit word per four elements; the element is dropped when its 16-bit number falls below
round(p * 65536). Same p to 1/65536, every draw rooted in torch's generator (seeding and exact resume hold). Masks
of 65,536 elements and more are drawn in two halves from two streams, the second on a helper thread: the same mask
for a seed whatever the thread count.

Parallel parts of a batch (lorafit.trainer_utils) draw on their own threads: each part's thread takes its seeds from
a generator of its own (``part_stream``), itself seeded from torch's generator in the caller's thread, so the masks
stay rooted in ``torch.manual_seed`` and do not depend on how the threads interleave.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache

import numpy as np
import torch

_LEVELS = 65536  # a mask element is 16 random bits


def drop_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """Boolean tensor, True with probability round(p * 65536) / 65536 (the elements to drop)."""
    return ~keep_mask(shape, p)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """Boolean tensor, False with probability round(p * 65536) / 65536 (True: the elements to keep).

    A mask of ``SPLIT_WORDS`` words and more is drawn in two halves from two PCG64 streams, each seeded with its own
    128 bits from torch's generator, the second half on a helper thread when torch has more than one: numpy's
    generator and comparison release the GIL, and drawing on one core left the other idle for 3.6% of a bf16 step
    (docs/benchmarks.md). The split depends on the mask's size alone, so a seed gives the same mask whatever the
    thread count."""
    n = math.prod(shape)
    threshold = np.int16(round(p * _LEVELS) - _LEVELS // 2)
    keep = np.empty(n, dtype=np.bool_)
    words = (n + 3) // 4
    if words < SPLIT_WORDS:
        _draw(0, _seeds(1)[0], keep, threshold)
    else:
        cut = (words + 1) // 2 * 4  # the first half's elements: whole 64-bit words
        first, second = _seeds(2)
        if torch.get_num_threads() > 1:
            other = _helper().submit(_draw, 1, second, keep[cut:], threshold)
            _draw(0, first, keep[:cut], threshold)
            other.result()
        else:
            _draw(0, first, keep[:cut], threshold)
            _draw(1, second, keep[cut:], threshold)
    return torch.from_numpy(keep).view(shape)


def _draw(stream: int, seed: int, out: np.ndarray, threshold: np.int16) -> None:
    """Fill ``out`` with ``bits >= threshold``, the bits 16 per element from stream ``stream`` started at ``seed``.
    numpy's comparison: 0.05 ms for 1.38M int16 elements on the benchmark CPU, torch's int16 >= 0.41 ms."""
    bits = _seeded(stream, seed).random_raw((len(out) + 3) // 4).view(np.int16)[: len(out)]
    np.greater_equal(bits, threshold, out=out)


def _seeds(k: int) -> list[int]:
    """``k`` 128-bit seeds from torch's default generator (one ``random_`` call): the masks follow
    ``torch.manual_seed`` and the Trainer's RNG checkpoints (exact resume) as torch's own draws would, while PCG64
    draws the words at 2.4x the speed of torch's mt19937 ``random_`` (0.82 instead of 1.98 ms for 344,064 words, one
    core of the benchmark VM), whose serial loop took 4.5% of a bf16 training step."""
    generator = _LOCAL.generator  # a parallel part's own (part_stream), else None: torch's default
    drawn = torch.empty(2 * k, dtype=torch.int64).random_(-(2**63), None, generator=generator).tolist()
    return [(drawn[2 * i] % 2**64) << 64 | drawn[2 * i + 1] % 2**64 for i in range(k)]


def _seeded(stream: int, seed: int) -> np.random.PCG64:
    """Generator ``stream`` (0: the caller's thread, 1: the helper's) set to start at ``seed``."""
    pcg = _LOCAL.pcgs[stream]
    state = pcg.state
    state["state"]["state"] = seed
    state["state"]["inc"] = _PCG_INC
    pcg.state = state
    return pcg


@cache
def _helper() -> ThreadPoolExecutor:
    """The thread that draws a mask's second half (numpy works there without the GIL)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorafit-mask")


os.register_at_fork(after_in_child=_helper.cache_clear)  # a forked child has no helper thread: it starts its own


SPLIT_WORDS = 16_384  # masks of 65,536 elements and more: below, handing half to a thread costs more than it saves
class _ThreadState(threading.local):
    """Per thread: its two PCG64 generators, whose states are set from a seed before every use (threads drawing at
    once must not share one), and, in a parallel part, the generator its seeds come from (``part_stream``)."""

    def __init__(self) -> None:
        self.pcgs = (np.random.PCG64(0), np.random.PCG64(0))
        self.generator: torch.Generator | None = None


_LOCAL = _ThreadState()


@contextmanager
def part_stream(seed: int) -> Iterator[None]:
    """In this thread, draw mask seeds from a generator started at ``seed`` instead of torch's default generator:
    a parallel part's masks then depend on its seed alone, not on what the other parts' threads draw meanwhile."""
    previous = _LOCAL.generator
    _LOCAL.generator = torch.Generator().manual_seed(seed)
    try:
        yield
    finally:
        _LOCAL.generator = previous


_PCG_INC = 0x5851F42D4C957F2D14057B7EF767814F  # a fixed odd increment: one PCG64 cycle, entered at random points


def pack_mask(keep: torch.Tensor) -> torch.Tensor:
    """A boolean mask as bits (numpy's packbits, 0.05 ms for 1.57M elements on the benchmark CPU): what dropout holds
    for backward in fp32 training, 1/8 of the mask's bytes."""
    return torch.from_numpy(np.packbits(keep.numpy().reshape(-1)))


def unpack_mask(bits: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The boolean mask of ``shape`` that ``pack_mask`` packed."""
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=math.prod(shape)).view(np.bool_)).view(shape)
