"""Sparsity schedules: the target of each step of a prune/retrain loop.

Pruning in several smaller steps, retraining in between, loses less
accuracy than pruning once (Han et al. 2015).  A schedule says how far each
step goes.  Steps are numbered ``t = 1 .. n``; step ``n`` always reaches the
final sparsity ``s_f`` exactly, and step 0 (before the loop) is ``s_i``.

``agp``     Automated Gradual Pruning (Zhu & Gupta, "To prune, or not to
            prune", 2017): ``s_t = s_f + (s_i - s_f) * (1 - t/n) ** 3``.
            Big steps early, while there are many redundant weights, and
            small ones near the end, when every weight counts.  The paper
            prunes every few hundred iterations of one training run; here a
            step is one threshold + retrain round, which is the same formula
            with a coarser clock.
``linear``  ``s_t = s_i + (s_f - s_i) * t/n``.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable

from ..errors import PolicyError
from .policies import check_sparsity

SCHEDULES = ("agp", "linear")


def agp(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """Zhu & Gupta's cubic schedule, one target per step."""
    final, steps, initial = _check(final, steps, initial)
    return [final + (initial - final) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]


def linear(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """Equal increments from ``initial`` to ``final``."""
    final, steps, initial = _check(final, steps, initial)
    return [initial + (final - initial) * t / steps for t in range(1, steps + 1)]


def targets(final: float, steps: int, schedule: str = "agp", initial: float = 0.0) -> list[float]:
    """The targets of ``schedule`` (a name in :data:`SCHEDULES`)."""
    rules = {"agp": agp, "linear": linear}
    if schedule not in rules:
        raise PolicyError(f"unknown schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    return rules[schedule](final, steps, initial)


def explicit(values: Iterable[float]) -> list[float]:
    """A user's own list of targets: each in [0, 1), never decreasing
    (zeros stay zero, so a lower target could not be reached)."""
    result = [check_sparsity(value, "step sparsity") for value in values]
    if not result:
        raise PolicyError("no step sparsities given")
    for before, after in itertools.pairwise(result):
        if after < before:
            raise PolicyError(f"step sparsities must not decrease: {before:g} then {after:g}")
    return result


def _check(final: float, steps: int, initial: float) -> tuple[float, int, float]:
    final = check_sparsity(final, "final sparsity")
    initial = check_sparsity(initial, "initial sparsity")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PolicyError(f"steps {steps!r} must be a whole number >= 1")
    if initial > final:
        raise PolicyError(f"initial sparsity {initial:g} above the final sparsity {final:g}")
    return final, steps, initial
