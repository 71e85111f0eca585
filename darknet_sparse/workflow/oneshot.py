"""One-shot pruning with no retraining: every convolution and connected
layer pruned by the second-order solver (:mod:`darknet_sparse.pruning.obs`)
to reproduce the dense model's output on a few unlabelled images.

For each layer the solver models (convolutions of any ``groups`` and
connected layers), first to last:

- its *target* is the dense model's pre-normalisation output ``Y = X_d
  W0^T`` at sampled output pixels of the calibration images (one pass of
  the dense network collects every layer's);
- its inputs ``X_p`` are those of the model *as pruned so far*: the network
  up to the layer before it (a copy of the cfg cut there, holding the
  weights already solved), run through the binding a few images at a time,
  so each layer sees its pruned predecessors' outputs and makes up for
  their error, not only for its own (the solved weights are written through
  the binding's views; the shim rebuilds the sparse forward pass's copy of
  them before each pass once views exist);
- the least-squares weights for those inputs, ``W* = argmin |X_p W^T -
  Y|^2 + lambda |W - W0|^2`` (``lambda`` the solver's dampening; ``W* = W0``
  when nothing before the layer changed), are pruned by OBS with ``H =
  X_p^T X_p``: since ``|X_p W^T - Y|^2 = |X_p (W - W*)^T|^2 + const``, the
  solver's error is exactly the growth of the layer's error against the
  dense output;
- each layer's removal count comes from any policy (:mod:`policies`: the
  weights ``|w| < t`` it would zero, or ``round(s * n)`` for a sparsity
  level), a spec and ``exclude``; or, with ``allocate="obs"``, one
  threshold over all layers on each weight's OBS saliency relative to its
  layer's dense output energy (the error its removal alone adds, per unit
  of that layer's output), measured on the dense inputs.

Weights already 0 (a pruned model, a loop's later step) stay 0 and
count toward the layer's removals.

Layers the solver does not model (local, deconvolutional, recurrent, a
connected layer too wide for its Gram matrix) are pruned by magnitude at
their level; skipped layers (``exclude``, a spec's ``skip``) keep their
weights.  Biases and batch-norm arrays are not touched by the solver; then,
unless ``recalibrate=False``, the batch-norm rolling statistics are
re-estimated relative to the dense model on the same images
(:func:`darknet_sparse.analysis.recalibrate.recalibrate` with a reference).
Since that recalibration will move every batch-norm layer's statistics,
the solve moves each one the same way as soon as the layer is solved
(estimated on its calibration rows: :func:`_corrected_stats`), so the
layers after it are fitted to the inputs the recalibrated model gives them
(on the training split's tuning protocol, 0.881 against 0.864 without).
The output is written to a temporary file and renamed.

Each layer's report gives its relative error ``|X_p W^T - Y|^2 / |Y|^2``
on the calibration pixels: ``input_error`` with the dense weights (what the
layers before it left), ``error`` after solving, and ``magnitude_error``,
what the layer's ``k`` smallest ``|w|`` removed (no update) would leave on
the same inputs.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..analysis import recalibrate as recalibrate_
from ..analysis.sensitivity import check_host
from ..darknet import images
from ..errors import CfgError, PolicyError
from ..format import darknet_text
from ..format.layout import DETECTION_TYPES, FORK_NAMES, PRUNABLE_ROLES, Layer, Model
from ..format.weightsfile import WeightsFile, atomic_path, check_output, write_arrays
from ..pruning import obs, policies
from ..reports import render_table
from ..structured import calibration

if TYPE_CHECKING:
    from ..darknet.network import Network

#: Calibration images used by default.
MAX_IMAGES = 128
#: A detector's default dampening (times the mean diagonal of each Gram
#: matrix): not the solver's own 0.01 (:data:`obs.DAMP`, SparseGPT's, the
#: default for any other model) but 1, chosen on the training split alone
#: (yolov3-tiny, global levels at 70%, calibrated on 128 frames of one
#: video, scored on all 180 of the other: agreement mAP@0.5 0.626 at 0.01,
#: 0.864 at 1, 0.838 at 10): a detector's few calibration images do not
#: span its wide layers' inputs, and the heavier dampening keeps the fit
#: from leaning on what they happen to share.
DETECTOR_DAMP = 1.0


def default_damp(model: Model) -> float:
    """:data:`DETECTOR_DAMP` for a detector, :data:`obs.DAMP` otherwise."""
    return DETECTOR_DAMP if any(layer.type in DETECTION_TYPES for layer in model.layers) else obs.DAMP
#: Output pixels sampled per image and layer (all of them where a layer has fewer).
POSITIONS = calibration.POSITIONS
#: Images per forward pass (and per recalibration pass).
CHUNK = calibration.CHUNK
#: Columns per group above which a layer's Gram matrix is not formed (float64,
#: 8192 columns take 512 MB): such a layer is pruned by magnitude.
MAX_COLUMNS = 8192
#: The allocation by OBS saliency (``--mode obs``).
ALLOCATE_OBS = "obs"
#: The allocation's Gram matrices use every this-many-th calibration row
#: (they only rank weights; the solver's own use every row).
ALLOCATION_STRIDE = 8


@dataclass
class LayerResult:
    """What happened to one prunable layer."""

    layer: int
    type: str
    method: str  # "obs", "magnitude" (not modelled by the solver) or "skip"
    weights: int
    zeros_before: int
    zeros: int
    rows: int = 0  # calibration pixels (times images) its Gram matrix came from
    input_error: float | None = None  # relative error of its output with the dense weights
    error: float | None = None  # after solving
    magnitude_error: float | None = None  # with its k smallest |w| removed, on the same inputs
    seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0


@dataclass
class OneshotResult:
    """What :func:`oneshot` did."""

    source: Path
    output: Path | None
    mode: str
    images: int
    damp: float
    positions: int
    layers: list[LayerResult]
    recalibration: recalibrate_.Recalibration | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    fork: str = "pjreddie"  # whose Darknet ran the model (its binding)
    resize: str = "letterbox"  # how the calibration images were fitted to the input

    @property
    def count(self) -> int:
        return sum(r.weights for r in self.layers)

    @property
    def zeros(self) -> int:
        return sum(r.zeros for r in self.layers)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.count if self.count else 0.0


# --------------------------------------------------------------------------
# Levels to removal counts.


def levels(model: Model, policy: policies.Policy | None, spec: dict | None = None,
           exclude: str | None = None, allocate: str | None = None,
           sparsity: float | None = None) -> dict[int, policies.Level]:
    """Each prunable layer's level: the policy's (or, with ``allocate="obs"``,
    a share of one OBS allocation at ``sparsity``, as ``global`` levels),
    overridden by ``spec``, then ``exclude``."""
    layers = policies.prunable_layers(model)
    if allocate == ALLOCATE_OBS:
        found = {layer.index: policies.Level("global", policies.check_sparsity(sparsity)) for layer in layers}
    elif allocate is not None:
        raise PolicyError(f"unknown allocation {allocate!r}: expected {ALLOCATE_OBS!r} or a policy")
    elif policy is not None:
        found = policies.check_policy(policy).levels(layers)
    elif spec:
        found = {layer.index: policies.Level("skip") for layer in layers}
    else:
        raise PolicyError("give a policy (Magnitude(s), Global(s), ...), a spec, or allocate='obs'")
    if spec:
        found = policies.apply_spec(found, spec, model)
    return policies.apply_exclude(found, policies.parse_exclude(exclude, model), model)


def removal_counts(wf: WeightsFile, chosen: dict[int, policies.Level],
                   skip_global: bool = False) -> dict[tuple[int, str], int]:
    """How many weights each prunable array loses at its level: ``round(s *
    n)`` for a sparsity, else how many ``|w|`` fall below the policy's
    threshold (:func:`policies.thresholds`); ``skip_global`` leaves the
    ``global`` levels out (the OBS allocation decides those)."""
    wanted = {i: level for i, level in chosen.items() if not (skip_global and level.kind == "global")}
    counts = {}
    for key, (level, t) in policies.thresholds(wf, wanted).items():
        a = wf.array(wf.slot(*key))
        if level.kind == "sparsity":
            counts[key] = int(round(level.value * a.size))
        else:
            counts[key] = int(np.count_nonzero(np.abs(a) < t)) if np.isfinite(t) else int(np.isfinite(a).sum())
    return counts


# --------------------------------------------------------------------------
# The layers the solver models.


@dataclass
class _Plan:
    """One layer the solver models: its geometry and dense weights."""

    layer: Layer
    groups: int
    outputs: int
    w0: np.ndarray  # (outputs, columns per group) float64
    #: What one unit of each output's z is worth after batch norm (|gamma| / sd), else 1:
    #: the solver works in these units, so outputs compare as the next layer sees them.
    scale: np.ndarray

    @property
    def scaled(self) -> np.ndarray:
        return self.w0 * self.scale[:, None]

    @property
    def columns(self) -> int:
        return self.w0.shape[1]

    def group_rows(self, g: int) -> slice:
        size = self.outputs // self.groups
        return slice(g * size, (g + 1) * size)


def _modelled(layer: Layer, fork: str) -> bool:
    return layer.type in ("convolutional", "connected") and calibration.plain(layer, fork)


def _plan(layer: Layer, wf: WeightsFile, weights: np.ndarray, fork: str) -> _Plan | None:
    if not _modelled(layer, fork):
        return None
    if layer.type == "connected":
        groups, outputs = 1, layer.outputs
    else:
        param = next(p for p in layer.params if p.role == "weights")
        outputs, per_group = param.shape[0], param.shape[1]
        groups = layer.input[0] // per_group if per_group else 1
    w0 = np.asarray(weights, np.float64).reshape(outputs, -1)
    if w0.shape[1] > MAX_COLUMNS:
        return None
    arrays = {p.name for p in layer.params}
    scale = np.ones(outputs)
    if {"scales", "rolling_variance"} <= arrays:
        gamma = np.abs(wf.array(wf.slot(layer.index, "scales")).astype(np.float64))
        variance = np.maximum(wf.array(wf.slot(layer.index, "rolling_variance")).astype(np.float64), 0)
        scale = gamma / (np.sqrt(variance) + recalibrate_.STD_EPSILON)
        top = float(scale.max()) if scale.size else 0.0
        scale = np.maximum(scale, 1e-8 * top) if top > 0 else np.ones(outputs)
    return _Plan(layer, groups, outputs, w0, scale)


def _group_rows(x: np.ndarray, plan: _Plan, pixels: np.ndarray, fork: str) -> list[np.ndarray]:
    """im2col rows of each group's input channels, float32."""
    layer = plan.layer
    x = x.reshape(-1, *layer.input)
    if plan.groups == 1:
        return [calibration.rows(x, layer, pixels, fork)]
    size = layer.input[0] // plan.groups
    return [calibration.rows(x[:, g * size:(g + 1) * size], layer, pixels, fork) for g in range(plan.groups)]


# --------------------------------------------------------------------------
# Networks: the dense one, and the model cut before a layer.


def _sections(text: str) -> list[int]:
    """Line numbers where each section of a cfg begins."""
    return [n for n, line in enumerate(darknet_text.lines(text)) if darknet_text.strip(line).startswith("[")]


def cut_cfg(text: str, layers: int) -> str:
    """The cfg with ``[net]`` and its first ``layers`` layers only."""
    lines = darknet_text.lines(text)
    starts = _sections(text) + [len(lines)]
    if len(starts) < 2:
        raise CfgError("the cfg has no sections")
    return "\n".join(lines[:starts[layers + 1]] if layers + 1 < len(starts) else lines) + "\n"


class _Networks:
    """The binding's networks for one run, each cfg written once into a
    temporary folder: passes of ``batch`` images, dropout off."""

    def __init__(self, cfg: Path, weights: Path, batch: int, fork: str):
        from ..darknet.network import Network, check_files

        self._Network = Network
        self.fork = check_files(cfg, weights, fork)
        try:
            self.text = cfg.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise CfgError(f"{cfg}: cannot read: {exc.strerror}") from None
        self.cfg, self.weights, self.batch = cfg, weights, batch
        self._folder = tempfile.TemporaryDirectory(prefix="darknet-sparse-oneshot-")

    def load(self, layers: int | None = None) -> Network:
        """The whole network, or its first ``layers`` layers, with the dense weights."""
        text = self.text if layers is None else cut_cfg(self.text, layers)
        path = Path(self._folder.name) / (f"cut-{layers}.cfg" if layers is not None else self.cfg.name)
        path.write_text(recalibrate_.calibration_cfg(text, self.batch), encoding="utf-8", errors="surrogateescape")
        net = self._Network(path, self.weights, fork=self.fork)
        check_host(net)
        return net

    def close(self) -> None:
        self._folder.cleanup()


def _set_weights(net: Network, solved: dict[int, np.ndarray], below: int | None = None) -> None:
    for index, values in solved.items():
        if below is None or index < below:
            net.params(index)["weights"][:] = values


# --------------------------------------------------------------------------
# The run.


def oneshot(wf: WeightsFile, output: str | Path | None, paths: Sequence[str | Path], policy: policies.Policy | None = None,
            *, spec: dict | None = None, exclude: str | None = None, allocate: str | None = None,
            sparsity: float | None = None, damp: float | None = None, block: int = obs.BLOCK,
            positions: int = POSITIONS, recalibrate: bool = True, resize: str | None = None, seed: int = 0,
            correct_stats: bool | None = None,
            on_stage: Callable[[str], None] | None = None) -> OneshotResult:
    """Prune ``wf`` with the solver on the calibration images ``paths`` and
    write ``output`` (None: report only); see the module docstring.  The
    levels come from ``policy`` (and ``spec``, ``exclude``), or from the OBS
    allocation at ``sparsity`` with ``allocate="obs"``; ``damp`` None:
    :func:`default_damp`; ``correct_stats`` None: as ``recalibrate`` (each
    solved layer's batch-norm statistics moved, for the layers after it, as
    the recalibration at the end will move them)."""
    started = time.perf_counter()
    say = on_stage or (lambda text: None)
    model = wf.model
    damp = default_damp(model) if damp is None else damp
    correct_stats = recalibrate if correct_stats is None else correct_stats
    if not damp >= 0:
        raise PolicyError(f"the dampening must be >= 0, not {damp!r}")
    if positions < 1:
        raise PolicyError(f"positions must be at least 1, not {positions}")
    if len(paths) < 2:
        raise PolicyError(f"oneshot needs at least 2 calibration images, got {len(paths)}")
    target = None if output is None else Path(output)
    if target is not None:
        check_output(wf.path, target)
    chosen = levels(model, policy, spec, exclude, allocate, sparsity)
    counts = removal_counts(wf, chosen, skip_global=allocate == ALLOCATE_OBS)
    dense_weights = {layer.index: wf.array(wf.slot(layer.index, "weights")) for layer in
                     policies.prunable_layers(model) if any(p.name == "weights" for p in layer.params)}
    plans = {}
    for index, level in chosen.items():
        if level.kind != "skip" and index in dense_weights:
            plan = _plan(model.layers[index], wf, dense_weights[index], model.fork)
            if plan is not None:
                plans[index] = plan
    batch = max(2, min(CHUNK, len(paths)))
    nets = _Networks(Path(model.path), wf.path, batch, model.fork)
    try:
        dense = nets.load()
        resize = resize or images.default_resize(model)
        x = images.load_batch(paths, dense.input_shape, resize)
        rng = np.random.default_rng(seed)
        pixels = {i: calibration.picks(p.layer, len(x), positions, rng) for i, p in plans.items()}
        say(f"dense pass over {len(x)} images: each layer's output as the target")
        targets, dense_grams = _dense_pass(dense, plans, x, pixels, model.fork, allocate == ALLOCATE_OBS)
        if allocate == ALLOCATE_OBS:
            global_layers = [i for i, level in chosen.items() if level.kind == "global" and i in plans]
            counts.update(_obs_allocation(plans, targets, dense_grams, global_layers, sparsity, damp))
            for index, level in chosen.items():  # layers the solver cannot model: magnitude at the level
                if level.kind == "global" and index not in plans and index in dense_weights:
                    counts[(index, "weights")] = int(round(level.value * dense_weights[index].size))
        del dense_grams
        results, solved = _solve_all(nets, model, wf, plans, chosen, counts, dense_weights, targets, x, pixels,
                                     damp, block, say, correct=correct_stats)
        recalibration = None
        notes = [f"layer {r.layer}: {r.rows} calibration rows for {plans[r.layer].columns} inputs per output: "
                 "its Gram matrix is rank-deficient and the fit may not carry over to other images; "
                 "give more images (--max-images)" for r in results
                 if r.method == "obs" and r.rows < plans[r.layer].columns]
        if target is not None:
            if recalibrate:
                say(f"batch-norm recalibration relative to the dense model on {len(x)} images")
                final = nets.load()
                _set_weights(final, solved)
                try:
                    recalibration = recalibrate_.recalibrate(final, model, x, reference=dense)
                except PolicyError as exc:
                    if "no batch-norm" not in str(exc):
                        raise
                    notes.append("no batch norm to recalibrate")
                    recalibration = None
                final.save(target)
            else:
                write_arrays(wf, target, {(i, "weights"): values for i, values in solved.items()})
    finally:
        nets.close()
    mode = allocate or (policy.name if policy is not None else "spec")
    return OneshotResult(wf.path, target, mode, len(x), damp, positions, results, recalibration,
                         time.perf_counter() - started, notes, nets.fork, resize)


def _dense_pass(dense: Network, plans: dict[int, _Plan], x: np.ndarray, pixels: dict[int, np.ndarray], fork: str,
                grams: bool) -> tuple[dict[int, list[np.ndarray]], dict[int, list[np.ndarray]]]:
    """Each planned layer's dense output per group at its pixels (float32),
    and with ``grams`` its dense Gram matrices per group."""
    indices = sorted(plans)
    targets: dict[int, list[list[np.ndarray]]] = {i: [[] for _ in range(plans[i].groups)] for i in indices}
    found: dict[int, list[np.ndarray]] = {}
    for part in calibration.chunks(len(x), dense.batch):
        for index, inp in zip(indices, calibration.inputs(dense, indices, x[part])):
            plan = plans[index]
            for g, rows in enumerate(_group_rows(inp, plan, pixels[index][part], fork)):
                targets[index][g].append(rows @ plan.scaled[plan.group_rows(g)].T.astype(np.float32))  # as _gather
                if grams:
                    sums = found.setdefault(index, [np.zeros((plan.columns,) * 2) for _ in range(plan.groups)])
                    some = rows[::ALLOCATION_STRIDE]
                    sums[g] += some.T @ some
    return {i: [np.concatenate(p) for p in t] for i, t in targets.items()}, found


def _obs_allocation(plans: dict[int, _Plan], targets: dict[int, list[np.ndarray]],
                    grams: dict[int, list[np.ndarray]], layers: list[int], sparsity: float,
                    damp: float) -> dict[tuple[int, str], int]:
    """Removal counts for ``layers`` from one threshold on each weight's
    saliency over its layer's dense output energy, reaching ``sparsity``
    of their weights together."""
    scores, sizes = [], []
    for index in layers:
        plan = plans[index]
        energy = sum(float(np.sum(t.astype(np.float64) ** 2)) for t in targets[index]) or 1.0
        per = [obs.saliencies(plan.scaled[plan.group_rows(g)], grams[index][g], damp).reshape(-1)
               for g in range(plan.groups)]
        scores.append(np.concatenate(per) / energy)
        sizes.append(plan.w0.size)
    if not scores:
        return {}
    every = np.concatenate(scores)
    k = int(round(sparsity * every.size))
    if k == 0:
        return {(index, "weights"): 0 for index in layers}
    gone = obs.lowest(every, k)
    bounds = np.cumsum([0, *sizes])
    return {(index, "weights"): int(gone[bounds[n]:bounds[n + 1]].sum()) for n, index in enumerate(layers)}


def _squared_error(D: np.ndarray, H: np.ndarray, R: np.ndarray, e0: float) -> float:
    """``|X (W0 + D)^T - Y|^2`` from ``H = X^T X``, ``R = X^T (Y - X W0^T)``
    and ``e0 = |X W0^T - Y|^2``."""
    if not D.any():
        return e0
    return max(e0 - 2 * float(np.sum(D * R.T)) + float(np.sum(D * (D @ H))), 0.0)


def _solve_all(nets: _Networks, model: Model, wf: WeightsFile, plans: dict[int, _Plan],
               chosen: dict[int, policies.Level], counts: dict[tuple[int, str], int],
               dense_weights: dict[int, np.ndarray], targets: dict[int, list[np.ndarray]], x: np.ndarray,
               pixels: dict[int, np.ndarray], damp: float, block: int,
               say: Callable[[str], None], correct: bool = False
               ) -> tuple[list[LayerResult], dict[int, np.ndarray]]:
    """Every prunable layer in order: solved, pruned by magnitude, or left;
    with ``correct``, each solved layer's batch-norm statistics are moved as
    the recalibration would move them (:func:`_corrected_stats`) before the
    layers after it gather their inputs."""
    solved: dict[int, np.ndarray] = {}  # float32 weights of the layers changed so far
    stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # their corrected batch-norm statistics
    results = []
    for layer in policies.prunable_layers(model):
        index = layer.index
        began = time.perf_counter()
        if chosen.get(index, policies.Level("skip")).kind == "skip" or index not in dense_weights:
            for param in layer.prunable(PRUNABLE_ROLES):
                a = wf.array(wf.slot(index, param.name))
                zeros = int(np.count_nonzero(a == 0))
                results.append(LayerResult(index, layer.type, "skip", a.size, zeros, zeros))
            continue
        w = dense_weights[index]
        k = counts.get((index, "weights"), 0)
        zeros_before = int(np.count_nonzero(w == 0))
        if index not in plans:
            new = np.where(obs.magnitude_mask(w, k), 0, w).astype(np.float32)
            solved[index] = new
            results.append(LayerResult(index, layer.type, "magnitude", w.size, zeros_before,
                                       int(np.count_nonzero(new == 0)), seconds=time.perf_counter() - began))
            _other_arrays(wf, layer, counts, solved, results)
            continue
        plan = plans[index]
        say(f"layer {index} ({layer.type}, {plan.w0.size} weights): removing {k}")
        gathered = _gather(nets, plan, solved, targets.pop(index), x, pixels[index], model.fork, stats)
        H, R, e0, yy, rows = gathered.H, gathered.R, gathered.e0, gathered.yy, gathered.rows
        changed = any(i < index for i in solved)
        parts, errors = [], {"input": 0.0, "after": 0.0, "magnitude": 0.0}
        magnitude = obs.magnitude_mask(plan.w0, k)
        for g, group_k in enumerate(obs.shares(k, [plan.w0.size // plan.groups] * plan.groups)):
            w0 = plan.scaled[plan.group_rows(g)]
            zero = w0 == 0  # weights already 0 stay 0: they go first
            group_k = max(group_k, int(zero.sum()))
            start = w0
            if changed:  # the least-squares fit to the dense output, pulled toward w0 by the dampening
                ridge = damp * float(np.mean(np.diag(H[g]))) or 1.0
                start = np.where(zero, 0, w0 + np.linalg.solve(H[g] + ridge * np.eye(plan.columns), R[g]).T)
            solution = obs.prune_rows(start, H[g], group_k, damp=damp, block=block)
            parts.append(solution.weights / plan.scale[plan.group_rows(g), None])
            mw = np.where(magnitude[plan.group_rows(g)], 0, w0)
            for name, W in (("input", w0), ("after", solution.weights), ("magnitude", mw)):
                errors[name] += _squared_error(W - w0, H[g], R[g], e0[g])
        total = sum(yy) or 1.0
        new = np.concatenate(parts).astype(np.float32).reshape(-1)
        if changed or k:
            solved[index] = new
            if correct:
                moved = _corrected_stats(wf, plan, gathered, [part * plan.scale[plan.group_rows(g), None]
                                                              for g, part in enumerate(parts)])
                if moved is not None:
                    stats[index] = moved
        results.append(LayerResult(index, layer.type, "obs", w.size, zeros_before, int(np.count_nonzero(new == 0)),
                                   rows, errors["input"] / total, errors["after"] / total,
                                   errors["magnitude"] / total, time.perf_counter() - began))
    return results, solved


def _other_arrays(wf: WeightsFile, layer: Layer, counts: dict, solved: dict, results: list) -> None:
    """Prunable arrays other than ``weights`` (recurrent layers' parts) are
    not written by the solver: reported as left."""
    for param in layer.prunable(PRUNABLE_ROLES):
        if param.name != "weights":
            a = wf.array(wf.slot(layer.index, param.name))
            zeros = int(np.count_nonzero(a == 0))
            results.append(LayerResult(layer.index, layer.type, "skip", a.size, zeros, zeros))


def _gather(nets: _Networks, plan: _Plan, solved: dict[int, np.ndarray], target: list[np.ndarray],
            x: np.ndarray, pixels: np.ndarray, fork: str,
            stats: dict[int, tuple[np.ndarray, np.ndarray]] | None = None) -> _Gathered:
    """Per group, with ``X_p`` the layer's inputs in the model pruned so far
    (its weights ``solved``, its batch-norm statistics ``stats`` where
    given) and ``Y`` the dense output: ``H = X_p^T X_p``, ``R = X_p^T (Y -
    X_p W0^T)``, ``|X_p W0^T - Y|^2`` and ``|Y|^2``, and the column sums of
    ``X_p``, ``Y`` and ``Y^2`` (float64).  The residual is computed as the
    target was, so it is exactly 0 where the inputs did not change."""
    index = plan.layer.index
    cut = nets.load(index) if index > 0 else None
    if cut is not None:
        _set_weights(cut, solved, below=index)
        _set_stats(cut, stats or {}, below=index)
    size = plan.outputs // plan.groups
    H = [np.zeros((plan.columns,) * 2) for _ in range(plan.groups)]
    R = [np.zeros((plan.columns, size)) for _ in range(plan.groups)]
    e0 = [0.0] * plan.groups
    yy = [float(np.sum(t.astype(np.float64) ** 2)) for t in target]
    sx = [np.zeros(plan.columns) for _ in range(plan.groups)]
    sy = [t.astype(np.float64).sum(0) for t in target]
    syy = [(t.astype(np.float64) ** 2).sum(0) for t in target]
    filters = [plan.scaled[plan.group_rows(g)].T.astype(np.float32) for g in range(plan.groups)]
    per_image = pixels.shape[1]
    for part in calibration.chunks(len(x), nets.batch):
        inp = np.asarray(x[part], np.float32) if cut is None else cut.layer_outputs(x[part], [index - 1])[0]
        for g, rows in enumerate(_group_rows(inp, plan, pixels[part], fork)):
            y = target[g][part.start * per_image:part.stop * per_image]
            residual = (y - rows @ filters[g]).astype(np.float64)
            H[g] += rows.T @ rows
            R[g] += rows.T.astype(np.float64) @ residual
            e0[g] += float(np.sum(residual ** 2))
            sx[g] += rows.sum(0, dtype=np.float64)
    return _Gathered(H, R, e0, yy, len(x) * per_image, sx, sy, syy)


@dataclass
class _Gathered:
    """What :func:`_gather` sums over one layer's calibration rows, per group."""

    H: list[np.ndarray]
    R: list[np.ndarray]
    e0: list[float]
    yy: list[float]
    rows: int
    sx: list[np.ndarray]  # column sums of X_p
    sy: list[np.ndarray]  # per output, the sum of the dense output Y
    syy: list[np.ndarray]  # and of Y^2


def _set_stats(net: Network, stats: dict[int, tuple[np.ndarray, np.ndarray]], below: int | None = None) -> None:
    for index, (mean, variance) in stats.items():
        if below is None or index < below:
            params = net.params(index)
            params["rolling_mean"][:] = mean
            params["rolling_variance"][:] = variance


def _corrected_stats(wf: WeightsFile, plan: _Plan, gathered: _Gathered, weights: list[np.ndarray]
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """A batch-norm layer's rolling mean and variance moved as ``recalibrate
    --reference`` would move them on the calibration rows: by the shift of
    its pre-normalisation output's mean, and the ratio of its variance,
    from the dense model's (``Y``) to the solved layer's on its pruned
    inputs (``X_p W^T``: mean from the column sums, second moment from
    ``H``), each output's in its own units (``weights`` per group, in the
    solver's scaled units).  None for a layer without batch norm."""
    layer = plan.layer
    if not {"rolling_mean", "rolling_variance", "scales"} <= {p.name for p in layer.params}:
        return None
    mean = wf.array(wf.slot(layer.index, "rolling_mean")).astype(np.float64).copy()
    variance = wf.array(wf.slot(layer.index, "rolling_variance")).astype(np.float64).copy()
    n = gathered.rows
    for g, W in enumerate(weights):
        rows = plan.group_rows(g)
        scale = plan.scale[rows]
        mine_mean = gathered.sx[g] @ W.T / n
        mine_var = np.einsum("oc,cd,od->o", W, gathered.H[g], W) / n - mine_mean ** 2
        dense_mean = gathered.sy[g] / n
        dense_var = gathered.syy[g] / n - dense_mean ** 2
        usable = (dense_var > 1e-12 * max(float(dense_var.max()), 1e-30)) & (mine_var > 0)
        mean[rows] += (mine_mean - dense_mean) / scale
        variance[rows] = np.where(usable, variance[rows] * mine_var / np.where(usable, dense_var, 1), variance[rows])
    return mean.astype(np.float32), variance.astype(np.float32)


# --------------------------------------------------------------------------
# The report.


def table(result: OneshotResult) -> str:
    """One line per prunable array, then the totals and the recalibration."""
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    rows = [[r.layer, r.type, r.method, r.weights, f"{r.sparsity:.4f}", number(r.input_error), number(r.error),
             number(r.magnitude_error), f"{r.seconds:.1f}"] for r in result.layers]
    lines = [f"one-shot {result.mode} on {result.images} images ({result.resize}; damp {result.damp:g}, "
             f"{result.positions} pixels per image and layer), run by {FORK_NAMES[result.fork]} (fork "
             f"{result.fork}); relative error of each layer's output against the dense model's on them:",
             render_table(["layer", "type", "method", "weights", "sparsity", "input", "after", "magnitude", "s"],
                          rows, align="><"),
             f"total: {result.zeros} of {result.count} prunable weights are 0 ({result.sparsity:.4f}), "
             f"{result.seconds / 60:.1f} minutes"]
    if result.recalibration is not None:
        lines += ["", recalibrate_.table(result.recalibration)]
    lines += result.notes
    if result.output is not None:
        lines.append(f"\nwritten: {result.output}")
    return "\n".join(lines)
