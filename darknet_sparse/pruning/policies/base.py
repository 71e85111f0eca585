"""What every policy shares: the :class:`Level` one layer gets, the
:class:`Policy` base class, and the checks of sparsities and thresholds."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ...errors import PolicyError
from ...format.layout import PRUNABLE_ROLES, Layer, Model


@dataclass(frozen=True)
class Level:
    """How hard to prune one array: a ``sparsity``, an absolute
    ``threshold``, a multiple of its ``std``, a share of one ``global``
    threshold, or ``skip``."""

    kind: str
    value: float = 0.0

    def describe(self) -> str:
        return {"sparsity": f"sparsity {self.value:g}", "threshold": f"|w| < {self.value:g}",
                "std": f"{self.value:g} x std", "global": f"global sparsity {self.value:g}",
                "skip": "skip"}[self.kind]


class Policy:
    """A rule giving every prunable layer its :class:`Level`.

    Each policy is a frozen dataclass whose fields are checked when it is
    made.  One field, :attr:`knob`, is the level the prune/retrain loop
    searches so that the total sparsity reaches a step's target; :meth:`at`
    makes the policy at another value of it.
    """

    #: The policy's name: ``--mode`` on the command line, ``mode`` in a loop's log.
    name: ClassVar[str]
    #: The field that :meth:`at` sets.
    knob: ClassVar[str]
    #: The knob is a threshold (no upper bound), not a sparsity (below 1).
    unbounded: ClassVar[bool] = False
    #: Applied alone, the knob is the total sparsity reached: nothing to search.
    exact: ClassVar[bool] = False

    def levels(self, layers: list[Layer]) -> dict[int, Level]:
        """The level of each of ``layers`` (the prunable ones, in order)."""
        raise NotImplementedError

    @property
    def level(self) -> float:
        """The knob's value."""
        return getattr(self, self.knob)

    @classmethod
    def at(cls, level: float) -> Policy:
        """The policy with its knob at ``level`` (and any other field at its default)."""
        return cls(level)


class Uniform(Policy):
    """A policy that gives every layer the same level: a :class:`Level` of
    :attr:`kind` at the knob's value, checked when the policy is made."""

    #: The :attr:`Level.kind` every layer gets.
    kind: ClassVar[str]
    #: What an error calls the knob (default: its field name).
    what: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        check = check_threshold if self.unbounded else check_sparsity
        object.__setattr__(self, self.knob, check(self.level, self.what or self.knob))

    def levels(self, layers: list[Layer]) -> dict[int, Level]:
        return {layer.index: Level(self.kind, self.level) for layer in layers}


def check_sparsity(value: float, what: str = "sparsity") -> float:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise PolicyError(f"{what} {value!r} outside [0, 1)")
    return float(value)


def check_threshold(value: float, what: str = "threshold") -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise PolicyError(f"{what} {value!r} must be a finite number >= 0")
    return float(value)


def prunable_layers(model: Model, roles: tuple[str, ...] = PRUNABLE_ROLES) -> list[Layer]:
    return [layer for layer in model.layers if layer.prunable(roles)]
