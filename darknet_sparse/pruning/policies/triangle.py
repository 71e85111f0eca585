"""``Triangle(start, end)``: sparsity rising linearly with depth."""
from __future__ import annotations

from dataclasses import dataclass

from ...format.layout import Layer
from .base import Level, Policy, check_sparsity


@dataclass(frozen=True)
class Triangle(Policy):
    """Sparsity ``start`` at the first prunable layer, ``end`` at the last,
    linear in between: the layers near the output are pruned hardest."""

    start: float
    end: float
    name = "triangle"
    knob = "end"

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", check_sparsity(self.start, "start"))
        object.__setattr__(self, "end", check_sparsity(self.end, "end"))

    @classmethod
    def at(cls, level: float) -> Triangle:
        """Rising from 0 to ``level``."""
        return cls(0.0, level)

    def levels(self, layers: list[Layer]) -> dict[int, Level]:
        steps = max(len(layers) - 1, 1)
        return {layer.index: Level("sparsity", self.start + (self.end - self.start) * i / steps)
                for i, layer in enumerate(layers)}
