"""``Absolute(t)``: one threshold for every array."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Uniform


@dataclass(frozen=True)
class Absolute(Uniform):
    """Weights with ``|w| < threshold`` become 0, in every prunable array."""

    threshold: float
    name = "absolute"
    knob = kind = "threshold"
    unbounded = True
