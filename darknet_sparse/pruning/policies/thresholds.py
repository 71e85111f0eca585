"""Levels resolved to one magnitude threshold per array."""
from __future__ import annotations

import math
from typing import Mapping

from ...format.layout import PRUNABLE_ROLES
from ...format.stats import kth_smallest_abs, moments
from ...format.weightsfile import Slot, WeightsFile
from .base import Level


def thresholds(wf: WeightsFile, levels: Mapping[int, Level],
               roles: tuple[str, ...] = PRUNABLE_ROLES) -> dict[tuple[int, str], tuple[Level, float]]:
    """Resolve levels to one threshold per array (``skip`` arrays omitted).

    Arrays of layers the file does not hold (a partial file) are omitted.
    """
    slots = [slot for slot in wf.slots if slot.param.role in roles and slot.layer.index in levels]
    result: dict[tuple[int, str], tuple[Level, float]] = {}
    global_slots = [s for s in slots if levels[s.layer.index].kind == "global"]
    if global_slots:
        level = levels[global_slots[0].layer.index]
        total = sum(s.param.count for s in global_slots)
        t = _magnitude_threshold(wf, global_slots, level.value, total)
        result.update({s.key: (level, t) for s in global_slots})
    for slot in slots:
        level = levels[slot.layer.index]
        if level.kind in ("skip", "global") or not slot.param.count:
            continue
        result[slot.key] = (level, _threshold_for(wf, slot, level))
    return result


def _threshold_for(wf: WeightsFile, slot: Slot, level: Level) -> float:
    if level.kind == "threshold":
        return level.value
    if level.kind == "std":
        return level.value * moments(wf, slot).std
    return _magnitude_threshold(wf, [slot], level.value, slot.param.count)


def _magnitude_threshold(wf: WeightsFile, slots: list[Slot], sparsity: float, count: int) -> float:
    """The threshold zeroing ``round(sparsity * count)`` weights (up to ties);
    when that rounds to all of them, every finite weight goes."""
    k = round(sparsity * count)
    if k >= count:
        return math.inf
    return kth_smallest_abs(wf, slots, k) if k else 0.0
