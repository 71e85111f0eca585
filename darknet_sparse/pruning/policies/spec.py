"""Per-layer overrides: layer selectors, spec files and ``exclude``.

A spec file (YAML or TOML) overrides levels per layer index, index range
(``"3-7"``) or layer type, most specific first, and ``exclude`` skips
layers.  Selectors also know ``first`` (the first prunable layer) and
``heads`` (the layers feeding a detection head).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from ...errors import PolicyError
from ...format.layout import DETECTION_TYPES, PRUNABLE_ROLES, Layer, Model
from .base import Level, check_sparsity, check_threshold, prunable_layers

DETECTION_HEADS = DETECTION_TYPES  # the name the policies' API has always had


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
