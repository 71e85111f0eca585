"""``Sensitivity(k)``: a threshold in units of each array's spread."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Uniform


@dataclass(frozen=True)
class Sensitivity(Uniform):
    """``t = k * std(w)`` per array, so each array ends at its own sparsity
    (Han et al. 2015; Distiller's SensitivityPruner)."""

    k: float
    name = what = "sensitivity"
    knob = "k"
    kind = "std"
    unbounded = True
