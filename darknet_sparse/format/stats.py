"""Chunked statistics of weight arrays: exact magnitude quantiles, std, zeros.

Every function reads arrays piece by piece through
:meth:`WeightsFile.chunks`, so memory stays at one chunk whatever the file.

Magnitude order is taken on the IEEE bit pattern: for non-negative floats
the unsigned integer order of ``bits & 0x7fffffff`` is the order of ``|w|``
(NaN sorts above +Inf).  That turns "the k-th smallest ``|w|``" into a
selection on integers, exact and streaming: a sample brackets it, one pass
counts below the bracket and keeps what falls inside, and a radix selection
on 16-bit digits picks the answer from those.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ..errors import ArrayError, WeightsFormatError
from .weightsfile import FLOAT, Slot, WeightsFile

SIGN_OFF = np.uint32(0x7FFFFFFF)
INF_BITS = 0x7F800000
#: The quantile sample: up to SAMPLE_RUNS runs of SAMPLE_RUN floats (one
#: read each), at least SAMPLE_SPACING floats apart.  2048 runs bracket a
#: quantile within about 4% of the values, cheaply enough to pay off from a
#: few million values on.
SAMPLE_RUNS = 2048
SAMPLE_RUN = 16
SAMPLE_SPACING = 4096


def abs_bits(piece: np.ndarray) -> np.ndarray:
    """``|w|`` as comparable unsigned integers (a new array)."""
    return np.bitwise_and(piece.view(np.uint32), SIGN_OFF)


def bits_to_float(bits: int) -> float:
    return float(np.array([bits], np.uint32).view(np.float32)[0])


def kth_smallest_abs(wf: WeightsFile, slots: Iterable[Slot], k: int) -> float:
    """The ``(k+1)``-th smallest ``|w|`` over all ``slots`` (0-based ``k``).

    Zeroing every ``|w|`` below it zeroes exactly ``k`` values, or fewer when
    several values tie with it.  A sample brackets the answer; one pass over
    the arrays counts the values below the bracket and keeps those inside it
    (a few percent), among which the answer is selected.  Should the sample
    have misled, a radix selection over the arrays decides, so the answer is
    exact either way.
    """
    slots = [slot for slot in slots if slot.param.count]
    total = sum(slot.param.count for slot in slots)
    if not 0 <= k < total:
        raise ArrayError(f"k={k} outside 0..{total - 1}")
    low, high = _bracket(wf, slots, k, total)
    below, inside = 0, []
    for slot in slots:
        for piece in wf.chunks(slot):
            bits = abs_bits(piece)
            if low:
                below += int(np.count_nonzero(bits < low))
                bits -= np.uint32(low)
            inside.append(bits[bits <= np.uint32(high - low)])
    kept = np.concatenate(inside)
    if below <= k < below + kept.size:
        return bits_to_float(low + _select(lambda: [kept], k - below))
    return bits_to_float(_select(lambda: (abs_bits(piece) for slot in slots for piece in wf.chunks(slot)), k))


def _bracket(wf: WeightsFile, slots: list[Slot], k: int, total: int) -> tuple[int, int]:
    """Bit patterns ``low <= high`` between which the k-th smallest ``|w|``
    almost surely lies: ``4 * sqrt(m)`` ranks either side of the quantile in
    a sample of ``m`` values, some eight standard deviations for independent
    values, so that runs of related neighbours rarely miss either.  Inputs
    too small to sample get the whole range."""
    runs = min(SAMPLE_RUNS, total // SAMPLE_SPACING)
    if runs < 16:
        return 0, 0xFFFFFFFF
    bits = np.sort(abs_bits(_sample(wf, slots, total, runs)))
    rank = k * bits.size // total
    reach = 4 * math.isqrt(bits.size) + 1
    low = int(bits[rank - reach]) if rank >= reach else 0
    high = int(bits[rank + reach]) if rank + reach < bits.size else 0xFFFFFFFF
    return low, high


def _sample(wf: WeightsFile, slots: list[Slot], total: int, runs: int) -> np.ndarray:
    """``runs`` runs of :data:`SAMPLE_RUN` floats, one at a random place in
    each of ``runs`` equal stretches of the arrays, read one by one."""
    counts = np.array([slot.param.count for slot in slots])
    starts = np.cumsum(counts) - counts
    stretch = total // runs
    places = np.arange(runs) * stretch + np.random.default_rng(total).integers(0, stretch, runs)
    which = np.searchsorted(starts, places, side="right") - 1
    pieces = []
    with open(wf.path, "rb", buffering=0) as fp:
        for index, place in zip(which.tolist(), places.tolist()):
            slot = slots[index]
            piece = np.empty(min(SAMPLE_RUN, slot.param.count), FLOAT)
            first = min(place - int(starts[index]), slot.param.count - piece.size)
            if os.preadv(fp.fileno(), [piece], slot.offset + 4 * first) != piece.nbytes:
                raise WeightsFormatError(f"{wf.path}: changed while being read")
            pieces.append(piece)
    return np.concatenate(pieces)


def _select(chunks: Callable[[], Iterable[np.ndarray]], k: int) -> int:
    """The k-th smallest (0-based) of unsigned 32-bit values that come in
    chunks: a radix selection on two 16-bit digits (``chunks()`` is called
    once per digit)."""
    high = np.zeros(1 << 16, np.int64)
    for bits in chunks():
        high += np.bincount(bits >> 16, minlength=high.size)
    cumulative = np.cumsum(high)
    digit = int(np.searchsorted(cumulative, k, side="right"))
    below = int(cumulative[digit - 1]) if digit else 0
    low = np.zeros(1 << 16, np.int64)
    for bits in chunks():
        low += np.bincount(bits[(bits >> 16) == digit] & 0xFFFF, minlength=low.size)
    rest = int(np.searchsorted(np.cumsum(low), k - below, side="right"))
    return (digit << 16) | rest


@dataclass
class Moments:
    """Count, zeros, non-finite values, mean and std of one array."""

    count: int = 0
    zeros: int = 0
    nonfinite: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, piece: np.ndarray) -> None:
        bits = abs_bits(piece)
        finite = bits < INF_BITS
        self.count += piece.size
        self.zeros += int(np.count_nonzero(bits == 0))
        self.nonfinite += piece.size - int(np.count_nonzero(finite))
        values = piece[finite].astype(np.float64) if self.nonfinite else piece.astype(np.float64)
        self.total += float(values.sum())
        self.squares += float(np.dot(values, values))

    @property
    def std(self) -> float:
        finite = self.count - self.nonfinite
        if not finite:
            return 0.0
        mean = self.total / finite
        return float(np.sqrt(max(self.squares / finite - mean * mean, 0.0)))


def moments(wf: WeightsFile, slot: Slot) -> Moments:
    result = Moments()
    for piece in wf.chunks(slot):
        result.add(piece)
    return result


def nonzero(wf: WeightsFile, slot: Slot) -> int:
    """Elements that are not exactly zero (NaN counts as non-zero)."""
    return sum(int(np.count_nonzero(abs_bits(piece))) for piece in wf.chunks(slot))
