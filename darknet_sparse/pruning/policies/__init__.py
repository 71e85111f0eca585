"""Pruning policies: which threshold each weight array gets.

Every policy ends as one magnitude threshold per array: weights with
``|w| < t`` become 0 (the recipe of Han et al., "Learning both Weights and
Connections", 2015).  Policies differ in how ``t`` is chosen, one small
module each:

``Absolute(t)``           one ``t`` for every array.
``Magnitude(s)``          the same target sparsity ``s`` in every array: ``t``
                          is the ``round(s*n)``-th smallest ``|w|`` (exact up
                          to ties).
``Sensitivity(k)``        ``t = k * std(w)`` per array, so each ends at its
                          own sparsity.
``Triangle(start, end)``  target sparsity rising linearly with depth, from
                          ``start`` at the first prunable layer to ``end`` at
                          the last.
``Global(s)``             one ``t`` over all prunable arrays together that
                          reaches a total sparsity ``s``.

A policy gives each prunable layer a :class:`Level`; a spec (:mod:`.spec`)
and ``exclude`` override levels per layer; :func:`thresholds` resolves the
levels to thresholds.  Only arrays whose role is prunable are ever
considered, so biases and batch-norm statistics cannot be selected.
"""
from __future__ import annotations

from ...errors import PolicyError
from .absolute import Absolute
from .base import Level, Policy, Uniform, check_sparsity, check_threshold, prunable_layers
from .global_ import Global
from .magnitude import Magnitude
from .sensitivity import Sensitivity
from .spec import (DETECTION_HEADS, apply_exclude, apply_spec, check_selector, feeding_heads, parse_exclude, read_spec, selector_matches, spec_level)
from .thresholds import thresholds
from .triangle import Triangle

#: Every policy by name: the one place a mode name (``--mode``, a loop log's
#: ``mode``) becomes a policy class.
POLICIES: dict[str, type[Policy]] = {kind.name: kind for kind in (Absolute, Magnitude, Sensitivity, Triangle,
                                                                  Global)}

__all__ = [
    "DETECTION_HEADS", "POLICIES", "Absolute", "Global", "Level", "Magnitude", "Policy", "Sensitivity",
    "Triangle", "Uniform", "apply_exclude", "apply_spec", "check_kind", "check_policy", "check_selector",
    "check_sparsity", "check_threshold", "feeding_heads", "parse_exclude", "prunable_layers", "read_spec",
    "selector_matches", "spec_level", "thresholds",
]

_EXPECTED = ", ".join(f"{kind.__name__} ({name})" for name, kind in POLICIES.items())


def check_policy(policy: object) -> Policy:
    """``policy`` if it is a policy object, else a :class:`PolicyError`."""
    if not isinstance(policy, Policy):
        raise PolicyError(f"unknown mode {policy!r}: expected a policy: {_EXPECTED}")
    return policy


def check_kind(kind: object) -> type[Policy]:
    """``kind`` if it is a policy class, else a :class:`PolicyError`."""
    if not (isinstance(kind, type) and kind in POLICIES.values()):
        raise PolicyError(f"unknown mode {kind!r}: expected a policy class: {_EXPECTED}")
    return kind
