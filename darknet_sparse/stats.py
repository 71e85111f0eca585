"""Chunked statistics of weight arrays: exact magnitude quantiles, std, zeros.

Every function reads arrays piece by piece through
:meth:`WeightsFile.chunks`, so memory stays at one chunk whatever the file.

Magnitude order is taken on the IEEE bit pattern: for non-negative floats
the unsigned integer order of ``bits & 0x7fffffff`` is the order of ``|w|``
(NaN sorts above +Inf).  That turns "the k-th smallest ``|w|``" into a
two-pass radix selection on 16-bit digits, exact and streaming.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .weightsfile import Slot, WeightsFile

SIGN_OFF = np.uint32(0x7FFFFFFF)
INF_BITS = 0x7F800000


def abs_bits(piece: np.ndarray) -> np.ndarray:
    """``|w|`` as comparable unsigned integers (a new array)."""
    return np.bitwise_and(piece.view(np.uint32), SIGN_OFF)


def bits_to_float(bits: int) -> float:
    return float(np.array([bits], np.uint32).view(np.float32)[0])


def kth_smallest_abs(wf: WeightsFile, slots: Iterable[Slot], k: int) -> float:
    """The ``(k+1)``-th smallest ``|w|`` over all ``slots`` (0-based ``k``).

    Zeroing every ``|w|`` below it zeroes exactly ``k`` values, or fewer when
    several values tie with it.
    """
    slots = list(slots)
    total = sum(slot.param.count for slot in slots)
    if not 0 <= k < total:
        raise ValueError(f"k={k} outside 0..{total - 1}")
    high = np.zeros(1 << 15 + 1, np.int64)
    for slot in slots:
        for piece in wf.chunks(slot):
            high += np.bincount(abs_bits(piece) >> 16, minlength=high.size)
    cumulative = np.cumsum(high)
    digit = int(np.searchsorted(cumulative, k, side="right"))
    below = int(cumulative[digit - 1]) if digit else 0
    low = np.zeros(1 << 16, np.int64)
    for slot in slots:
        for piece in wf.chunks(slot):
            bits = abs_bits(piece)
            low += np.bincount(bits[(bits >> 16) == digit] & 0xFFFF, minlength=low.size)
    rest = int(np.searchsorted(np.cumsum(low), k - below, side="right"))
    return bits_to_float((digit << 16) | rest)


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
