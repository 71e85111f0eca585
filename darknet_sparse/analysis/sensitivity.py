"""How much each layer's pruning costs: a sweep through the binding.

For every prunable layer and every level, :func:`sweep` prunes that layer
alone, measures the network, and writes the saved arrays back, all in one
loaded :class:`~darknet_sparse.darknet.Network` (one Darknet parse for the
whole sweep).  A level is a sparsity asked of each weight array of the layer,
reached by magnitude within the array exactly as ``threshold --mode
magnitude`` and a spec's per-layer sparsity reach it: with ``k = round(s*n)``,
every ``|w|`` below the ``(k+1)``-th smallest becomes 0.  Level 0 is always
in the sweep (the unpruned network's values, measured once), so every
layer's curve starts at the unpruned network (the idea of
Han et al. 2015, section 4; Distiller's ``sensitivity_analysis``).

Three measures, each a ``Network -> {name: value}`` function:

:func:`top1`       a classifier's top-1 on the ``valid=`` list of a ``.data``
                   file, images prepared as ``darknet classifier valid``
                   prepares them, so it equals the binary's top-1.
:func:`deviation`  for any network, against its outputs before pruning on
                   sample images, at every output layer
                   (:func:`output_layers`: each ``[yolo]``, ``[region]`` and
                   ``[detection]`` head of a detector, else the last layer):
                   ``rel_l2``, the mean over heads and images of
                   ``|y - y0| / |y0|``, and, where the last layer is
                   ``[softmax]``, ``kl``, the mean KL divergence of the
                   pruned outputs from the dense ones (summed over softmax
                   groups).  A layer that feeds only one head moves only
                   that head's outputs, so every head is measured.
:func:`agreement`  a detector's agreement with a reference model (the dense
                   one): ``map50`` and ``map`` (@0.5:0.95), COCO's mAP of
                   its detections against the reference's confident ones
                   (:func:`darknet_sparse.analysis.evaluate.evaluate_detector`).

The CSV (:func:`write_csv`, :func:`read_csv`) holds one row per layer and
level with the layer's weight count and FLOPs, so ``plan`` needs no cfg.

The views are host memory, which a network on a GPU does not compute with:
a sweep needs a CPU build of the binding (:func:`check_host`).
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..darknet import images
from ..errors import BindingError, InputError, PolicyError
from ..format.layout import DETECTION_TYPES, Layer, Model
from ..format.weightsfile import atomic_path
from ..pruning.policies import check_sparsity, parse_exclude, prunable_layers, selector_matches
from ..reports import render_table
from . import evaluate
from .metrics import Remembered, hits, labelled_set

if TYPE_CHECKING:
    from ..darknet.network import Network

Measure = Callable[["Network"], dict]
#: Metrics where higher is better; the rest are distances (0 = unchanged).
HIGHER_IS_BETTER = ("top1", "map50", "map")
#: Probabilities below this count as this in the KL divergence.
KL_FLOOR = 1e-12
FIELDS = ("layer", "type", "weights", "flops", "level", "nonzero", "sparsity", "effective_flops")


@dataclass(frozen=True)
class Row:
    """One layer pruned alone to one level, and what the measure said."""

    layer: int
    type: str
    weights: int  # prunable weights of the layer
    flops: int  # their dense FLOPs per image (2 per multiply-add)
    level: float  # the sparsity asked of each array
    nonzero: int  # weights left non-zero
    effective_flops: int  # 2 * sum(nonzero * macs)
    metrics: dict = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzero / self.weights if self.weights else 0.0


@dataclass
class Sensitivity:
    """A whole sweep: the metrics' names, the unpruned values, every row."""

    metrics: tuple[str, ...]
    baseline: dict
    rows: list[Row]

    @property
    def levels(self) -> list[float]:
        return sorted({row.level for row in self.rows})

    @property
    def layers(self) -> list[int]:
        return sorted({row.layer for row in self.rows})


def top1(net: Network, data: str | Path, how: str = "crop") -> Measure:
    """Top-1 on the ``valid=`` list of a classifier's ``.data`` file."""
    paths, truth = labelled_set(net, data)
    x = images.load_batch(paths, net.input_shape, how)

    def measure(network: Network) -> dict:
        return {"top1": hits(network.predict(x), truth)[0] / len(truth)}
    return measure


def deviation(net: Network, x: np.ndarray, heads: Sequence[int], softmax: bool = False) -> Measure:
    """Distance of the outputs of layers ``heads`` on ``x`` from their
    outputs now (``rel_l2``: each head's mean relative L2, averaged over the
    heads); with ``softmax``, also the KL divergence at the last head."""
    heads = list(heads)
    if not heads:
        raise InputError("deviation needs at least one output layer")
    reference = [y.astype(np.float64) for y in net.layer_outputs(x, heads)]
    norms = [np.linalg.norm(y, axis=1) for y in reference]
    for norm in norms:
        norm[norm == 0] = 1.0
    p = np.clip(reference[-1], KL_FLOOR, None)

    def measure(network: Network) -> dict:
        outputs = [y.astype(np.float64) for y in network.layer_outputs(x, heads)]
        result = {"rel_l2": float(np.mean([np.mean(np.linalg.norm(y - y0, axis=1) / norm)
                                           for y, y0, norm in zip(outputs, reference, norms)]))}
        if softmax:
            q = np.clip(outputs[-1], KL_FLOOR, None)
            result["kl"] = float(np.mean(np.sum(reference[-1] * (np.log(p) - np.log(q)), axis=1)))
        return result
    return measure


def agreement(paths: Sequence[str | Path], reference: Network, reference_conf: float = 0.5) -> Measure:
    """Agreement mAP on the images ``paths`` with ``reference`` (a network
    the sweep does not edit): its detections with confidence above
    ``reference_conf`` are the ground truth; ``map50`` and ``map``."""
    fixed = Remembered(reference)

    def measure(network: Network) -> dict:
        report = evaluate.evaluate_detector(network, paths, reference=fixed, reference_conf=reference_conf)
        if report.map50 is None:
            raise InputError(f"the reference model finds nothing above confidence {reference_conf:g} in the "
                             f"{len(paths)} images: there is nothing to agree with")
        return {"map50": report.map50, "map": report.map}
    return measure


def output_layers(model: Model) -> list[int]:
    """The layers whose outputs a user reads: every detector head, or the last layer."""
    heads = [layer.index for layer in model.layers if layer.type in DETECTION_TYPES]
    return heads or [len(model.layers) - 1]


def ends_in_softmax(model: Model) -> bool:
    return bool(model.layers) and model.layers[-1].type == "softmax"


def select_layers(model: Model, selectors: str | None = None) -> list[Layer]:
    """The prunable layers, or those the comma-separated selectors name."""
    layers = prunable_layers(model)
    if selectors:
        chosen = parse_exclude(selectors, model)
        layers = [layer for layer in layers if any(selector_matches(s, layer, model) for s in chosen)]
        if not layers:
            raise PolicyError(f"{selectors!r} names no prunable layer")
    return layers


def check_levels(levels: Iterable[float]) -> list[float]:
    """Sorted distinct sparsities in [0, 1), with 0 added."""
    return sorted({0.0} | {check_sparsity(level, "level") for level in levels})


def prune_array(a: np.ndarray, sparsity: float) -> None:
    """Zero ``|w|`` below the ``(k+1)``-th smallest, ``k = round(s*n)``
    (all of them when ``k`` reaches ``n``), in place."""
    k = round(sparsity * a.size)
    if k >= a.size:
        a[:] = 0
    elif k:
        magnitude = np.abs(a)
        a[magnitude < np.partition(magnitude, k)[k]] = 0


def check_host(net: Network) -> None:
    """Refuse a network on a GPU, whose passes would ignore edited views."""
    if net.on_gpu:
        raise BindingError("the network runs on a GPU, where edits of its parameter views do not reach the "
                           "passes: use a CPU build of the binding (make darknet binding GPU=0)")


def sweep(net: Network, model: Model, levels: Sequence[float], measure: Measure,
          layers: Sequence[Layer] | None = None, on_progress: Callable[[int], None] | None = None) -> Sensitivity:
    """Prune each layer alone to each level, measure, restore.

    ``model`` is the cfg's layout under the fork ``net`` runs (its binding's rules);
    ``on_progress(n)`` is told how many measurements are done.  The weights
    are written back from copies, so the network ends bit-identical.
    """
    check_host(net)
    levels = check_levels(levels)
    layers = prunable_layers(model) if layers is None else list(layers)
    baseline = measure(net)
    rows: list[Row] = []
    done = 0
    for layer in layers:
        views = _weight_views(net, layer)
        saved = [view.copy() for view, _ in views]
        weights = sum(view.size for view, _ in views)
        flops = 2 * sum(view.size * macs for view, macs in views)
        for level in levels:
            try:
                for view, _ in views:
                    prune_array(view, level)
                nonzero = [int(np.count_nonzero(view)) for view, _ in views]
                # Level 0 changes nothing: the network is the one measured first.
                metrics = dict(baseline) if level == 0 else measure(net)
                rows.append(Row(layer.index, layer.type, weights, flops, level, sum(nonzero),
                                2 * sum(n * macs for n, (_, macs) in zip(nonzero, views)), metrics))
            finally:
                for (view, _), copy in zip(views, saved):
                    view[:] = copy
            done += 1
            if on_progress:
                on_progress(done)
    return Sensitivity(tuple(baseline), baseline, rows)


def _weight_views(net: Network, layer: Layer) -> list[tuple[np.ndarray, int]]:
    """The binding's view of each prunable array of ``layer``, with its macs."""
    arrays = net.params(layer.index)
    views = []
    for param in layer.prunable():
        view = arrays.get(param.name)
        if view is None or view.size != param.count:
            raise BindingError(f"layer {layer.index} ({layer.type}): Darknet holds no {param.count}-float "
                               f"array {param.name!r} (it has {', '.join(arrays) or 'none'})")
        views.append((view, param.macs))
    return views


def table(result: Sensitivity, metric: str | None = None) -> str:
    """One line per layer, one column per level: the metric's value."""
    metric = metric or result.metrics[0]
    levels = result.levels
    cells = {(row.layer, row.level): row for row in result.rows}
    rows = []
    for index in result.layers:
        first = next(row for row in result.rows if row.layer == index)
        rows.append([index, first.type, first.weights] + [
            f"{cells[(index, level)].metrics[metric]:.4f}" if (index, level) in cells else None for level in levels])
    headers = ["layer", "type", "weights"] + [f"{level:.3g}" for level in levels]
    return "\n".join([f"{metric} with one layer pruned to each level (dense: {result.baseline[metric]:.4f})",
                      render_table(headers, rows, align="><")])


def to_csv(result: Sensitivity) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS + result.metrics)
    for row in result.rows:
        writer.writerow([row.layer, row.type, row.weights, row.flops, f"{row.level:g}", row.nonzero,
                         f"{row.sparsity:.6f}", row.effective_flops]
                        + [repr(row.metrics[name]) for name in result.metrics])
    return out.getvalue()


def write_csv(result: Sensitivity, path: str | Path) -> None:
    """The CSV, atomically (a temporary file renamed over ``path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(to_csv(result), encoding="utf-8")


def read_csv(path: str | Path) -> Sensitivity:
    """A sweep back from its CSV (the baseline: the level-0 rows' values)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(header[:len(FIELDS)]) != FIELDS or len(header) == len(FIELDS):
        raise InputError(f"{path}: not a sensitivity CSV: the header must be {','.join(FIELDS)} "
                         "and one or more metric columns")
    metrics = tuple(header[len(FIELDS):])
    rows = []
    for number, values in enumerate(reader, 2):
        if not values:
            continue
        try:
            if len(values) != len(header):
                raise ValueError
            record = dict(zip(header, values))
            row = Row(int(record["layer"]), record["type"], int(record["weights"]), int(record["flops"]),
                      float(record["level"]), int(record["nonzero"]), int(record["effective_flops"]),
                      {name: float(record[name]) for name in metrics})
        except ValueError:
            raise InputError(f"{path}:{number}: expected {len(header)} values of the header's kinds") from None
        if not (0 <= row.level < 1 and 0 <= row.nonzero <= row.weights and row.weights > 0
                and all(math.isfinite(v) for v in row.metrics.values())):
            raise InputError(f"{path}:{number}: level, nonzero or a metric is out of range")
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no rows")
    baseline_rows = [row for row in rows if row.level == 0]
    baseline = dict(baseline_rows[0].metrics) if baseline_rows else {}
    return Sensitivity(metrics, baseline, rows)
