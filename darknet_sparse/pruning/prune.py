"""Apply a pruning policy to a weights file, streaming, and report per array.

:func:`threshold` is the whole ``darknet-sparse threshold`` job: choose the
levels (:mod:`policies`), resolve them to thresholds, then copy the file
with ``|w| < t`` set to 0 in the chosen arrays, counting zeros and non-finite
values as it goes.  Nothing is kept in memory beyond one chunk.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import policies
from ..errors import PolicyError, WeightsFormatError
from ..format.layout import PRUNABLE_ROLES, OPTIONAL_PRUNABLE_ROLES
from ..format.stats import INF_BITS, SIGN_OFF, Moments
from ..format.weightsfile import Edit, Slot, WeightsFile, check_output, write


@dataclass
class ArrayResult:
    """What pruning did to one array."""

    layer: int
    type: str
    name: str
    count: int
    zeros_before: int = 0
    zeros_after: int = 0
    nonfinite: int = 0
    threshold: float | None = None
    level: str = "skip"

    @property
    def sparsity(self) -> float:
        return self.zeros_after / self.count if self.count else 0.0


@dataclass
class PruneResult:
    """Per-array results and totals of one threshold run."""

    source: Path
    output: Path | None
    fork: str
    mode: str  # the policy's name, or "spec" for a spec alone
    arrays: list[ArrayResult]
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(a.count for a in self.arrays)

    @property
    def zeros_before(self) -> int:
        return sum(a.zeros_before for a in self.arrays)

    @property
    def zeros_after(self) -> int:
        return sum(a.zeros_after for a in self.arrays)

    @property
    def nonfinite(self) -> int:
        return sum(a.nonfinite for a in self.arrays)

    @property
    def sparsity(self) -> float:
        return self.zeros_after / self.count if self.count else 0.0


def _threshold_edit(t: float, result: ArrayResult) -> Edit:
    """An edit setting ``0 < |w| < t`` to +0.0 and counting as it goes.

    Exact zeros of either sign are left as they are, so bytes that need no
    change stay unchanged.  The work is done on ``bits(|w|) - 1`` as unsigned
    integers, where exact zeros wrap to the top: one comparison then finds
    the values to keep, and zeros and non-finite values are all at or above
    ``INF_BITS - 1``, so one max tells whether a chunk has any to count.
    Zeroing multiplies by the keep flags (a masked store is slower).  A
    chunk costs about five passes over memory that stays in cache.
    """
    keep_from = np.uint32(max(int(np.float32(t).view(np.uint32)), 1) - 1)

    def edit(slot: Slot, piece: np.ndarray) -> None:
        words = piece.view(np.uint32)
        bits = np.bitwise_and(words, SIGN_OFF)
        bits -= np.uint32(1)
        zeros = 0
        if bits.max() >= INF_BITS - 1:
            zeros = int(np.count_nonzero(bits == np.uint32(0xFFFFFFFF)))
            result.nonfinite += int(np.count_nonzero(bits >= np.uint32(INF_BITS - 1))) - zeros
        result.zeros_before += zeros
        if keep_from:
            keep = bits >= keep_from
            pruned = piece.size - int(np.count_nonzero(keep))
            if pruned:
                np.multiply(words, keep, out=words)
            zeros += pruned
        result.zeros_after += zeros
    return edit


def threshold(wf: WeightsFile, output: str | Path | None, policy: policies.Policy | None = None, *,
              spec: dict | None = None, exclude: str | None = None, include_optional: bool = False,
              in_place: bool = False, backup: bool = False, dry_run: bool = False,
              strict: bool = False) -> PruneResult:
    """Prune the prunable arrays of ``wf`` into ``output`` by ``policy``
    (:mod:`policies`: ``Absolute(t)``, ``Magnitude(s)``, ...).

    A ``spec`` overrides the policy's levels per layer; given without a
    policy, only the layers it names are pruned.  ``output=None`` or
    ``dry_run`` computes and counts without writing.  With ``in_place`` the
    output may be the input; ``backup`` first copies it to ``NAME.bak``.
    ``strict`` makes NaN or Inf in any array an error (no output is left
    behind); otherwise they are counted and reported.
    """
    roles = PRUNABLE_ROLES + (OPTIONAL_PRUNABLE_ROLES if include_optional else ())
    model = wf.model
    layers = policies.prunable_layers(model, roles)
    if policy is not None:
        levels = policies.check_policy(policy).levels(layers)
    elif spec:
        # A spec alone (a plan): layers it does not name are left alone.
        levels = {layer.index: policies.Level("skip") for layer in layers}
    else:
        raise PolicyError("give a policy (Absolute(t), Magnitude(s), Sensitivity(k), Triangle(start, end), "
                          "Global(s)), a spec, or both")
    if spec:
        levels = policies.apply_spec(levels, spec, model, roles=roles)
    levels = policies.apply_exclude(levels, policies.parse_exclude(exclude, model), model)
    target = None if output is None else Path(output)
    if target is not None and not dry_run:
        check_output(wf.path, target, in_place)
    chosen = policies.thresholds(wf, levels, roles)

    arrays: list[ArrayResult] = []
    edits = {}
    for slot in wf.slots:
        if slot.param.role not in roles:
            continue
        result = ArrayResult(slot.layer.index, slot.layer.type, slot.param.name, slot.param.count)
        if slot.key in chosen:
            level, t = chosen[slot.key]
            result.threshold, result.level = t, level.describe()
            edits[slot.key] = _threshold_edit(t, result)
        else:
            edits[slot.key] = _threshold_edit(0.0, result)  # counts only
        arrays.append(result)
    notes = list(model.notes)
    if wf.partial:
        notes.append(f"partial file: holds layers 0..{wf.layers_present - 1} of {len(model.layers)}")
    if wf.trailing:
        notes.append(f"{wf.trailing} trailing bytes after the last layer, kept as they are")

    if strict:
        _check_finite(wf)
    if target is None or dry_run:
        for slot in wf.slots:
            if slot.key in edits:
                for piece in wf.chunks(slot):
                    edits[slot.key](slot, piece)
    else:
        if in_place and backup:
            shutil.copy2(wf.path, wf.path.with_name(wf.path.name + ".bak"))
        write(wf, target, edits, in_place=in_place)
    mode = policy.name if policy is not None else "spec"
    outcome = PruneResult(wf.path, None if dry_run else target, model.fork, mode, arrays, notes)
    if outcome.nonfinite:
        notes.append(f"{outcome.nonfinite} NaN or Inf weights found (left as they are; --strict makes this an error)")
    return outcome


def _check_finite(wf: WeightsFile) -> None:
    """Raise on the first array holding NaN or Inf."""
    for slot in wf.slots:
        stats = Moments()
        for piece in wf.chunks(slot):
            stats.add(piece)
        if stats.nonfinite:
            raise WeightsFormatError(f"{wf.path}: layer {slot.layer.index} ({slot.layer.type}) array "
                                     f"{slot.param.name} holds {stats.nonfinite} NaN or Inf values")


def default_output(weights: Path) -> Path:
    """``MODEL.weights`` -> ``MODEL.sparse.weights``."""
    stem = weights.name[:-len(".weights")] if weights.name.endswith(".weights") else weights.name
    return weights.with_name(stem + ".sparse.weights")

