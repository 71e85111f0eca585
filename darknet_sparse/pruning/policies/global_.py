"""``Global(s)``: one threshold over all prunable arrays together."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Uniform


@dataclass(frozen=True)
class Global(Uniform):
    """The one threshold that zeroes ``round(sparsity * n)`` of all ``n``
    prunable weights together (see :func:`.thresholds`); each layer
    ends at its own sparsity."""

    sparsity: float
    name = kind = "global"
    knob = "sparsity"
    exact = True
