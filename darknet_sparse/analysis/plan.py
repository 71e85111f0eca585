"""Per-layer pruning levels chosen from a sensitivity sweep: the plan.

A sweep (:mod:`sensitivity`) gives each layer a curve of measured points:
level -> weights left non-zero, effective FLOPs, and the metric.  A plan
gives every swept layer one of its measured levels so that the total
reaches a target with the least predicted loss.  The predicted loss of a
plan is the sum of its layers' losses, each measured with that layer pruned
alone (interactions are ignored, as in Han et al. 2015).

Targets, over the weights of the swept layers:

``sparsity``  the share of them that are 0;
``flops``     the share of their dense FLOPs that the zeros remove,
              ``1 - effective / dense`` with effective FLOPs counted as
              ``info`` counts them: 2 per multiply-add of a non-zero weight.

A layer's loss at a level is the drop of its metric from its own level-0
value (``top1``), or the rise of a distance (``rel_l2``, ``kl``).

The search is greedy over the curves (a multiple-choice knapsack
heuristic): from every layer at level 0, repeatedly take the move, one layer
to one of its higher levels, with the least added loss per unit of the
target gained (ties: the larger gain), until the target is reached; then,
while some layer can go back to a lower level without missing the target,
take the step back that saves the most loss.

The plan is compared with the ``magnitude`` mode (one level for every
layer) and the ``triangle`` mode (from 0 at the first swept layer rising
linearly to ``end`` at the last) at the plan's total sparsity, with curves
interpolated linearly between measured levels; a mode that would need
levels beyond the sweep's is reported as out of reach.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import InputError, PolicyError
from ..format.weightsfile import atomic_path
from ..reports import render_table
from .sensitivity import HIGHER_IS_BETTER, Row, Sensitivity

TARGETS = ("sparsity", "flops")
#: The metric a plan minimises when none is named, first present wins.
PREFERRED_METRICS = ("top1", "map50", "map", "kl", "rel_l2")
BISECTION_STEPS = 60
#: Slack when comparing totals with the target (float sums of counts).
EPSILON = 1e-12


@dataclass(frozen=True)
class Point:
    """One measured level of one layer."""

    level: float
    nonzero: int
    effective_flops: int
    loss: float


@dataclass(frozen=True)
class Curve:
    """One layer's measured points, level 0 first."""

    layer: int
    type: str
    weights: int
    flops: int
    points: tuple[Point, ...]

    def at(self, level: float) -> Point:
        """The point at ``level``, interpolated linearly between measured ones."""
        points = self.points
        if not 0 <= level <= points[-1].level:
            raise ValueError(f"level {level} outside the measured 0..{points[-1].level}")
        upper = next(i for i, p in enumerate(points) if p.level >= level)
        high = points[upper]
        if high.level == level or upper == 0:
            return high
        low = points[upper - 1]
        t = (level - low.level) / (high.level - low.level)
        return Point(level, round(low.nonzero + t * (high.nonzero - low.nonzero)),
                     round(low.effective_flops + t * (high.effective_flops - low.effective_flops)),
                     low.loss + t * (high.loss - low.loss))


@dataclass(frozen=True)
class Estimate:
    """Totals of one way of pruning the swept layers; None: out of reach."""

    name: str
    setting: str
    sparsity: float | None = None
    flops_removed: float | None = None
    loss: float | None = None


@dataclass
class Plan:
    """The chosen level of every swept layer, and how it compares."""

    target: str
    value: float
    metric: str
    baseline: float
    choices: list[tuple[Curve, Point]]
    compared: list[Estimate]

    @property
    def levels(self) -> dict[int, float]:
        return {curve.layer: point.level for curve, point in self.choices}

    @property
    def totals(self) -> Estimate:
        return self.compared[0]


def curves(result: Sensitivity, metric: str) -> list[Curve]:
    """Each swept layer's curve of losses in ``metric``."""
    if metric not in result.metrics:
        raise PolicyError(f"the sweep measured {', '.join(result.metrics)}, not {metric}")
    by_layer: dict[int, dict[float, Row]] = {}
    for row in result.rows:
        if row.level in by_layer.setdefault(row.layer, {}):
            raise InputError(f"layer {row.layer} has two rows for level {row.level:g}")
        by_layer[row.layer][row.level] = row
    found = []
    for layer, rows in sorted(by_layer.items()):
        if 0.0 not in rows:
            raise InputError(f"layer {layer} has no level-0 row, so its loss has no reference")
        base = rows[0.0].metrics[metric]
        points = tuple(Point(level, row.nonzero, row.effective_flops, _loss(metric, base, row.metrics[metric]))
                       for level, row in sorted(rows.items()))
        first = rows[0.0]
        found.append(Curve(layer, first.type, first.weights, first.flops, points))
    return found


def _loss(metric: str, base: float, value: float) -> float:
    return base - value if metric in HIGHER_IS_BETTER else value - base


def default_metric(result: Sensitivity) -> str:
    return next((m for m in PREFERRED_METRICS if m in result.metrics), result.metrics[0])


def make_plan(result: Sensitivity, target: str, value: float, metric: str | None = None) -> Plan:
    """The levels that reach ``value`` of ``target`` (``sparsity`` or
    ``flops``) with the least predicted loss in ``metric``."""
    if target not in TARGETS:
        raise PolicyError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    if not 0 < value < 1:
        raise PolicyError(f"target {target} {value!r} outside (0, 1)")
    metric = metric or default_metric(result)
    found = curves(result, metric)
    gain = _gain(target)
    need = value * sum(c.weights if target == "sparsity" else c.flops for c in found)
    best = sum(gain(c, c.points[-1]) for c in found)
    if best < need * (1 - EPSILON):
        most = best / sum(c.weights if target == "sparsity" else c.flops for c in found)
        raise PolicyError(f"the sweep's levels reach at most {most:.4f} {target} removed, not {value:g}; "
                          "sweep higher levels")
    choices = [(curve, curve.points[i]) for curve, i in zip(found, _greedy(found, gain, need))]
    totals = _totals("plan", "per layer", choices)
    compared = [totals, _magnitude(found, totals.sparsity), _triangle(found, totals.sparsity)]
    return Plan(target, value, metric, result.baseline.get(metric, 0.0), choices, compared)


def _gain(target: str) -> Callable[[Curve, Point], int]:
    """What a point removes: weights (sparsity) or FLOPs."""
    if target == "sparsity":
        return lambda curve, point: curve.weights - point.nonzero
    return lambda curve, point: curve.flops - point.effective_flops


def _greedy(found: list[Curve], gain: Callable[[Curve, Point], int], need: float) -> list[int]:
    """Indices of the chosen point of each curve (see the module docstring)."""
    state = [0] * len(found)
    have = sum(gain(c, c.points[0]) for c in found)
    while have < need * (1 - EPSILON):
        moves = []
        for k, curve in enumerate(found):
            here = curve.points[state[k]]
            for j in range(state[k] + 1, len(curve.points)):
                more = gain(curve, curve.points[j]) - gain(curve, here)
                if more > 0:
                    cost = curve.points[j].loss - here.loss
                    moves.append((cost / more, -more, curve.layer, k, j))
        _, more, _, k, j = min(moves)
        state[k], have = j, have - more
    while True:
        steps = []
        for k, curve in enumerate(found):
            here = curve.points[state[k]]
            for j in range(state[k]):
                less = gain(curve, here) - gain(curve, curve.points[j])
                saving = here.loss - curve.points[j].loss
                if saving > 0 and have - less >= need * (1 - EPSILON):
                    steps.append((-saving, curve.layer, k, j, less))
        if not steps:
            return state
        _, _, k, j, less = min(steps)
        state[k], have = j, have - less


def _totals(name: str, setting: str, choices: list[tuple[Curve, Point]]) -> Estimate:
    weights = sum(curve.weights for curve, _ in choices)
    flops = sum(curve.flops for curve, _ in choices)
    nonzero = sum(point.nonzero for _, point in choices)
    effective = sum(point.effective_flops for _, point in choices)
    return Estimate(name, setting, 1 - nonzero / weights, 1 - effective / flops if flops else 0.0,
                    sum(point.loss for _, point in choices))


def _magnitude(found: list[Curve], sparsity: float) -> Estimate:
    """One level for every layer, chosen to reach ``sparsity``."""
    reach = min(curve.points[-1].level for curve in found)
    level = _solve(lambda u: _totals("", "", [(c, c.at(u)) for c in found]).sparsity, sparsity, reach)
    if level is None:
        return Estimate("magnitude", "beyond the measured levels")
    return _totals("magnitude", f"level {level:.4f}", [(c, c.at(level)) for c in found])


def _triangle(found: list[Curve], sparsity: float) -> Estimate:
    """Levels ``end * i / (n - 1)`` by depth (as the triangle mode with
    start 0), ``end`` chosen to reach ``sparsity``."""
    steps = max(len(found) - 1, 1)

    def levels(end: float) -> list[tuple[Curve, Point]]:
        return [(c, c.at(end * i / steps)) for i, c in enumerate(found)]

    reach = min(c.points[-1].level * steps / i for i, c in enumerate(found) if i) if len(found) > 1 else 0.0
    reach = min(reach, 1 - EPSILON)
    end = _solve(lambda e: _totals("", "", levels(e)).sparsity, sparsity, reach)
    if end is None:
        return Estimate("triangle", "beyond the measured levels")
    return _totals("triangle", f"end {end:.4f}", levels(end))


def _solve(total: Callable[[float], float], target: float, reach: float) -> float | None:
    """The least level in ``[0, reach]`` whose (non-decreasing) total reaches
    ``target``, by bisection; None if even ``reach`` falls short."""
    if total(reach) < target - 1e-9:
        return None
    low, high = 0.0, reach
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if total(middle) >= target - 1e-9:
            high = middle
        else:
            low = middle
    return high


def to_spec(plan: Plan) -> dict:
    """The spec ``threshold --spec`` and ``loop --spec`` read: every swept
    layer at its level, every other layer skipped."""
    return {"default": "skip", "layers": {str(layer): float(level) for layer, level in plan.levels.items()}}


def spec_text(plan: Plan, source: str, toml: bool = False) -> str:
    """:func:`to_spec` as YAML (``yaml.safe_dump``) or TOML, with the
    plan's totals as comments."""
    totals = plan.totals
    spec = to_spec(plan)
    lines = [f"# darknet-sparse plan from {source}: {plan.target} target {plan.value:g}",
             f"# total sparsity {totals.sparsity:.4f}, FLOPs removed {totals.flops_removed:.4f}, "
             f"predicted {plan.metric} loss {totals.loss:.4f}"]
    if not toml:
        return "\n".join(lines) + "\n" + yaml.safe_dump(spec, sort_keys=False)
    # No TOML writer in the standard library; the spec's shape is fixed and
    # its keys are layer indices, so this writes it.
    lines += [f'default = "{spec["default"]}"', "", "[layers]"]
    lines += [f'"{layer}" = {level!r}' for layer, level in spec["layers"].items()]
    return "\n".join(lines) + "\n"


def write_spec(plan: Plan, path: str | Path, source: str) -> None:
    """The spec, TOML for a ``.toml`` name, else YAML, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(spec_text(plan, source, toml=Path(path).suffix == ".toml"), encoding="utf-8")


def table(plan: Plan) -> str:
    """The chosen levels, then the plan against the modes."""
    chosen = []
    for curve, point in plan.choices:
        removed = 1 - point.effective_flops / curve.flops if curve.flops else 0.0
        chosen.append([curve.layer, curve.type, curve.weights, f"{point.level:.3g}",
                       f"{1 - point.nonzero / curve.weights:.4f}", f"{removed:.4f}", f"{point.loss:.4f}"])
    compared = [[e.name, e.setting] + ([f"{e.sparsity:.4f}", f"{e.flops_removed:.4f}", f"{e.loss:.4f}"]
                                       if e.sparsity is not None else ["-", "-", "-"]) for e in plan.compared]
    return "\n".join([
        f"plan for {plan.target} {plan.value:g}, least predicted {plan.metric} loss "
        f"(unpruned {plan.metric}: {plan.baseline:.4f})",
        render_table(["layer", "type", "weights", "level", "sparsity", "FLOPs rm", "loss"], chosen, align="><"),
        "", "at the plan's total sparsity (losses interpolated between measured levels):",
        render_table(["", "setting", "sparsity", "FLOPs rm", "loss"], compared, align="<<")])
