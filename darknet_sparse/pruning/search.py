"""The level search: the level of a policy that reaches a total sparsity.

The prune/retrain loop asks for a total sparsity of the prunable weights at
each step.  :func:`prune_to` finds the value of the policy's knob (see
:class:`~darknet_sparse.pruning.policies.Policy`) that reaches it: ``Magnitude`` and
``Global`` without a spec take the target as their own level; any other
policy, or a spec that fixes some layers, is bisected, each trial a dry run
of :func:`darknet_sparse.pruning.prune.threshold`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import prune
from ..errors import PolicyError
from ..format.layout import PRUNABLE_ROLES
from .policies import Magnitude, Policy, check_kind
from ..format.stats import nonzero
from ..format.weightsfile import WeightsFile

#: The search stops once the total sparsity is this close above the target.
TOLERANCE = 1e-4
SEARCH_STEPS = 60
#: A threshold above any float32 |w|: thresholds are searched up to it.
UNBOUNDED = float(np.finfo(np.float32).max)


def prune_to(wf: WeightsFile, output: Path | None, target: float, kind: type[Policy] = Magnitude,
             spec: dict | None = None) -> tuple[prune.PruneResult, float]:
    """Threshold ``wf`` by the policy ``kind`` (a class such as
    ``Sensitivity``) so the total sparsity of its prunable weights is at
    least ``target``; the result and the level its knob was given.

    ``Magnitude`` and ``Global`` without a spec take ``target`` as their
    level.  Otherwise (``Sensitivity``'s std multiple, ``Triangle``'s end with
    start 0, ``Absolute``'s threshold, or a spec that fixes some layers) the
    level is bisected until the total lands within :data:`TOLERANCE` above
    the target.  A spec's own levels (``skip``, fixed sparsities) hold at
    every level.
    """
    measure = _measure(wf, kind, spec)
    if spec is None and kind.exact:
        level = target
    else:
        level = _search(measure, target, _max_level(wf, kind), kind)
    return measure(level, output), level


def max_sparsity(wf: WeightsFile, kind: type[Policy] = Magnitude, spec: dict | None = None) -> float:
    """The highest total sparsity :func:`prune_to` can reach on ``wf``
    (below 1 for ``Triangle`` or a spec that skips layers)."""
    return _measure(wf, kind, spec)(_max_level(wf, kind)).sparsity


def weight_sparsity(wf: WeightsFile) -> float:
    """Share of exact zeros among the prunable weights of ``wf``."""
    slots = [s for s in wf.slots if s.param.role in PRUNABLE_ROLES]
    count = sum(s.param.count for s in slots)
    return 1 - sum(nonzero(wf, s) for s in slots) / count if count else 0.0


def _measure(wf: WeightsFile, kind: type[Policy], spec: dict | None) -> Callable[..., prune.PruneResult]:
    """Threshold ``wf`` by ``kind`` at a level (a dry run without ``into``)."""
    check_kind(kind)

    def apply(level: float, into: Path | None = None) -> prune.PruneResult:
        return prune.threshold(wf, into, kind.at(level), spec=spec)
    return apply


def _max_level(wf: WeightsFile, kind: type[Policy]) -> float:
    """The highest level worth trying.  Thresholds: one above every |w|.
    Sparsities: ``round(s * n)`` must stay below every array's ``n``, or the
    k-th smallest |w| of a small array does not exist."""
    if kind.unbounded:
        return UNBOUNDED
    smallest = min(s.param.count for s in wf.slots if s.param.role in PRUNABLE_ROLES and s.param.count)
    return (smallest - 0.5) / smallest - 1e-9


def _search(measure: Callable[[float], prune.PruneResult], target: float, high: float,
            kind: type[Policy]) -> float:
    """The smallest level in ``[0, high]`` (to within the bisection) whose
    total sparsity reaches ``target``."""
    if measure(0.0).sparsity >= target:
        return 0.0
    reached = measure(high).sparsity
    if reached < target:
        raise PolicyError(f"mode {kind.name} reaches at most {reached:.4f} total sparsity here (with its spec, "
                          f"if any), not the target {target:.4f}")
    low = 0.0
    for _ in range(SEARCH_STEPS):
        if reached - target <= TOLERANCE:
            break
        middle = (low + high) / 2 if high < UNBOUNDED else max(1.0, low * 2)
        sparsity = measure(middle).sparsity
        if sparsity >= target:
            high, reached = middle, sparsity
        else:
            low = middle
    return high
