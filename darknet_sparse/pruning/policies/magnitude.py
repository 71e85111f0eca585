"""``Magnitude(s)``: the same sparsity in every array."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Uniform


@dataclass(frozen=True)
class Magnitude(Uniform):
    """Each prunable array loses its ``round(sparsity * n)`` smallest ``|w|``
    (exact up to ties): its threshold is the k-th smallest magnitude."""

    sparsity: float
    name = "magnitude"
    knob = kind = "sparsity"
    exact = True
