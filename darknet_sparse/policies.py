"""Pruning policies: which threshold each weight array gets.

Every policy ends as one magnitude threshold per array: weights with
``|w| < t`` become 0 (the recipe of Han et al., "Learning both Weights and
Connections", 2015).  Policies differ in how ``t`` is chosen:

``absolute``     one ``t`` for every array.
``magnitude``    the same target sparsity ``s`` in every array: ``t`` is the
                 ``round(s*n)``-th smallest ``|w|`` (exact up to ties).
``sensitivity``  ``t = s * std(w)`` per array, so each ends at its own
                 sparsity (Han et al.; Distiller's SensitivityPruner).
``triangle``     target sparsity rising linearly with depth, from ``start``
                 at the first prunable layer to ``end`` at the last: the
                 layers near the output are pruned hardest.
``global``       one ``t`` over all prunable arrays together that reaches a
                 total sparsity ``s``.

A spec file (YAML or TOML) overrides levels per layer index, index range
(``"3-7"``) or layer type, most specific first, and ``exclude`` skips
layers.  Only arrays whose role is prunable are ever considered, so
biases and batch-norm statistics cannot be selected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .errors import PolicyError
from .layout import PRUNABLE_ROLES, Layer, Model
from .stats import kth_smallest_abs, moments
from .weightsfile import Slot, WeightsFile

MODES = ("absolute", "magnitude", "sensitivity", "triangle", "global")
DETECTION_HEADS = ("yolo", "region", "detection", "Gaussian_yolo")


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


def mode_levels(model: Model, mode: str, *, threshold: float | None = None, sparsity: float | None = None,
                start: float | None = None, end: float | None = None,
                roles: tuple[str, ...] = PRUNABLE_ROLES) -> dict[int, Level]:
    """The level each prunable layer gets from the mode alone."""
    layers = prunable_layers(model, roles)
    if mode == "absolute":
        level = Level("threshold", check_threshold(_need(threshold, "--threshold", mode)))
    elif mode == "magnitude":
        level = Level("sparsity", check_sparsity(_need(sparsity, "--sparsity", mode)))
    elif mode == "sensitivity":
        level = Level("std", check_threshold(_need(threshold, "--threshold (in units of std)", mode),
                                             "sensitivity"))
    elif mode == "global":
        level = Level("global", check_sparsity(_need(sparsity, "--sparsity", mode)))
    elif mode == "triangle":
        first = check_sparsity(0.0 if start is None else start, "--start")
        last = check_sparsity(_need(end if end is not None else sparsity, "--end (or --sparsity)", mode), "--end")
        steps = max(len(layers) - 1, 1)
        return {layer.index: Level("sparsity", first + (last - first) * i / steps)
                for i, layer in enumerate(layers)}
    else:
        raise PolicyError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    return {layer.index: level for layer in layers}


def _need(value, name: str, mode: str):
    if value is None:
        raise PolicyError(f"mode {mode} needs {name}")
    return value


def selector_matches(selector: str, layer: Layer, model: Model) -> bool:
    """Does ``selector`` (index, ``a-b`` range, type, ``first``, ``heads``) name ``layer``?"""
    selector = selector.strip()
    if selector.lstrip("-").isdigit():
        index = int(selector)
        return layer.index == (index + len(model.layers) if index < 0 else index)
    if "-" in selector and all(part.isdigit() for part in selector.split("-", 1)):
        low, high = map(int, selector.split("-", 1))
        return low <= layer.index <= high
    if selector == "first":
        return layer is prunable_layers(model)[0] if prunable_layers(model) else False
    if selector == "heads":
        return layer.index in feeding_heads(model)
    return selector == layer.type


def feeding_heads(model: Model) -> set[int]:
    """Indices of the layers directly before a yolo/region/detection layer."""
    return {layer.index - 1 for layer in model.layers if layer.type in DETECTION_HEADS and layer.index}


def check_selector(selector: str, model: Model) -> None:
    if not any(selector_matches(selector, layer, model) for layer in model.layers):
        raise PolicyError(f"{selector!r} matches no layer of {model.path}")


def parse_exclude(text: str | None, model: Model) -> list[str]:
    selectors = [item.strip() for item in (text or "").split(",") if item.strip()]
    for selector in selectors:
        check_selector(selector, model)
    return selectors


def read_spec(path: str | Path) -> dict:
    """Load a spec file: ``layers`` maps selectors to a sparsity (number),
    ``{threshold: t}``, ``{sparsity: s}``, ``{std: s}`` or ``skip``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read spec: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as exc:  # the parsers' own error types differ
        raise PolicyError(f"{path}: not a valid spec file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("layers", {}), dict):
        raise PolicyError(f"{path}: a spec is a mapping with a 'layers' mapping")
    unknown = set(data) - {"layers", "default"}
    if unknown:
        raise PolicyError(f"{path}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    return data


def spec_level(value, where: str) -> Level:
    """A spec value -> :class:`Level`."""
    if value == "skip":
        return Level("skip")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Level("sparsity", check_sparsity(value, where))
    if isinstance(value, dict) and len(value) == 1:
        (kind, number), = value.items()
        if kind in ("sparsity",):
            return Level("sparsity", check_sparsity(number, where))
        if kind in ("threshold", "std"):
            return Level(kind, check_threshold(number, where))
    raise PolicyError(f"{where}: {value!r} is not a sparsity, {{threshold: t}}, {{std: s}} or skip")


def apply_spec(levels: dict[int, Level], spec: Mapping, model: Model, source: str = "spec",
               roles: tuple[str, ...] = PRUNABLE_ROLES) -> dict[int, Level]:
    """Override ``levels`` with a spec; an index beats a range beats a type."""
    result = dict(levels)
    layers = prunable_layers(model, roles)
    if "default" in spec:
        default = spec_level(spec["default"], f"{source}: default")
        result = {layer.index: default for layer in layers}

    def rank(selector: str) -> int:
        text = str(selector).strip()
        return 2 if text.lstrip("-").isdigit() else 1 if "-" in text else 0

    for selector in sorted(spec.get("layers", {}), key=lambda key: rank(str(key))):
        level = spec_level(spec["layers"][selector], f"{source}: layer {selector}")
        check_selector(str(selector), model)
        for layer in layers:
            if selector_matches(str(selector), layer, model):
                result[layer.index] = level
    return result


def apply_exclude(levels: dict[int, Level], selectors: Iterable[str], model: Model) -> dict[int, Level]:
    result = dict(levels)
    for layer in model.layers:
        if any(selector_matches(s, layer, model) for s in selectors) and layer.index in result:
            result[layer.index] = Level("skip")
    return result


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
