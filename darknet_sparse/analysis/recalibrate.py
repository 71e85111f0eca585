"""Batch-norm recalibration: the rolling statistics of a pruned network,
re-estimated on calibration images through the binding.

Pruning shifts the activations every batch-norm layer sees, but inference
still normalises them with the rolling mean and variance of the dense
network.  Re-estimating those two arrays, and nothing else, recovers much of
what one-shot pruning loses (the BN-statistics correction of Li et al.,
"EagleEye", 2020; PyTorch's ``update_bn``).

Darknet's training-mode forward pass (``forward_batchnorm_layer``) updates
them as an exponential average, ``rolling = .99 * rolling + .01 * batch``:
after 50 batches 60% of the old value is still there.  So before each pass
the rolling arrays are set to 0 through the views; after it they hold
exactly ``.01`` times that batch's mean and (unbiased) variance, which are
collected; at the end the arrays get the mean and variance of the whole
calibration set, pooled over the passes, whatever their number or order.
Each layer normalises with its batch's statistics during the passes, as in
training, so a layer is calibrated on inputs normalised the same way.
Dropout, which a training pass would also switch on, stays off
(:func:`calibration_network`): the statistics are those of the inputs
inference sees, and the result is the same on every run.  The pass size is
the cfg's batch unless given: deployment cfgs often say ``batch=1``, and a
layer's batch statistics need at least 2 images (more is steadier for the
layers downstream, at the memory of that many images).

Relative to a reference (``reference``, the dense model the pruned one was
made from).  Calibration images rarely look like the data the model was
trained on: yolov3-tiny recalibrated *unpruned* on frames of two videos
agrees with itself at only mAP@0.5 0.964 on the evaluation images, and
that loss adds to the pruned model's (benchmarks/detector.md).  So with a
reference, both models are measured on the same images in the same way
(means m, variances v), and only the *change* pruning made is applied to
the reference's rolling statistics (ref_mean, ref_variance).  Per channel,
in units of the reference's measured spread: ``variance = ref_variance *
v_pruned / v_reference`` and ``mean = m_pruned + (ref_mean - m_reference) *
sqrt(v_pruned / v_reference)``.  The reference unpruned recalibrates to
exactly its own statistics, whatever the images; what is estimated on them
is only how pruning (and any retraining since) moved each channel (bias
correction, as in Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", 2019, here applied to both moments of
batch norm).  The offset scales with the spread: a channel pruning made
constant (all its weights zero: v_pruned = 0) gets its constant as mean,
as absolute recalibration would give it, where an unscaled offset divided
by the tiny epsilon Darknet adds to the variance would flood every layer
after it (Fashion-MNIST at 95% fell to chance that way).  Where the
reference's own channel is constant on the images, the model's measured
statistics stand.  The reference's statistics are the base, not the
model's own: for a pruned copy they are the same, and after retraining on
calibration-like images (whose batches pull Darknet's rolling averages
toward them) only the reference's still describe the data the model was
trained for.

Only ``[convolutional]``, ``[deconvolutional]``, ``[connected]`` and
``[batchnorm]`` layers are recalibrated: they update their statistics once
per pass.  The batch-norm sublayers of rnn, gru, lstm and crnn update once
per time step and are left as they are.  The views show host memory, so
this needs a CPU build of the binding (:func:`sensitivity.check_host`).
"""
from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..darknet import images
from ..darknet.network import Network, check_files
from ..errors import InputError
from ..format import darknet_text
from ..format.files import load_model
from ..format.layout import Layer, Model
from ..reports import render_table
from .sensitivity import check_host

#: The weight of a batch in pjreddie's rolling average (batchnorm_layer.c);
#: :func:`measure` asks the network for its fork's (``Network.rolling_rate``:
#: AlexeyAB's is 0.1).
EMA_RATE = np.float32(0.01)
CALIBRATED_TYPES = ("convolutional", "deconvolutional", "connected", "batchnorm")
#: What Darknet adds to the standard deviation it divides by (normalize_cpu).
STD_EPSILON = 1e-6


@dataclass
class LayerChange:
    """How far one layer's statistics moved."""

    layer: int
    type: str
    channels: int
    mean_shift: float  # mean |new - old| of the rolling mean, in old standard deviations
    std_ratio: float  # geometric mean of new / old standard deviation


@dataclass
class Recalibration:
    """What :func:`recalibrate` did."""

    images: int  # images used (a multiple of the pass size)
    passes: int
    batch: int
    layers: list[LayerChange]
    skipped: list[int]  # layers with batch norm this cannot recalibrate
    relative: bool = False  # only the shift from a reference model applied
    fork: str = "pjreddie"  # whose Darknet ran the model


def calibration_cfg(text: str, batch: int | None = None) -> str:
    """cfg text whose ``[dropout]`` layers drop nothing (``probability=0``)
    and, with ``batch``, whose passes take ``batch`` images (``batch=``,
    ``subdivisions=1`` in ``[net]``), by :func:`darknet_text.edit_sections`."""
    edits: dict[int, dict[str, object]] = {}
    for index, kind in enumerate(darknet_text.section_types(text)):
        if kind == "dropout":
            edits[index] = {"probability": 0}
        elif index == 0 and kind in ("net", "network") and batch is not None:
            edits[index] = {"batch": batch, "subdivisions": 1}
    return darknet_text.edit_sections(text, edits)


def calibration_network(cfg: str | Path, weights: str | Path, batch: int | None = None,
                        fork: str = "auto") -> Network:
    """The network of ``cfg`` and ``weights`` with dropout off, and passes of
    ``batch`` images if given (parsed from a temporary copy of the cfg; the
    weights are read as they are), in the Darknet of ``fork`` (auto: as
    :class:`~darknet_sparse.darknet.Network` resolves it)."""
    if batch is not None and batch < 2:
        raise InputError(f"calibration passes need at least 2 images, not {batch}")
    fork = check_files(cfg, weights, fork)  # errors name the user's files, not the copy's
    text = darknet_text.read_text(cfg, "the cfg")
    with tempfile.TemporaryDirectory(prefix="darknet-sparse-") as folder:
        copy = Path(folder) / Path(cfg).name
        copy.write_text(calibration_cfg(text, batch), encoding="utf-8", errors="surrogateescape", newline="")
        return Network(copy, weights, fork=fork)


def recalibrate_file(cfg: str | Path, weights: str | Path, paths: Sequence[str | Path], output: str | Path, *,
                     batch: int | None = None, reference: str | Path | None = None,
                     reference_cfg: str | Path | None = None, resize: str | None = None,
                     channels: Mapping[int, np.ndarray] | None = None,
                     on_progress: Callable[[int, int], None] | None = None, fork: str = "auto") -> Recalibration:
    """Recalibrate the model of ``cfg`` and ``weights`` on the images
    ``paths`` and save it to ``output`` (atomically; ``output`` may be
    ``weights``): the one call the command line, the loop and the
    benchmarks make.

    Passes take ``batch`` images (default: the cfg's); ``reference`` (with
    ``reference_cfg``, default ``cfg``) are the dense weights to measure the
    shift against, through ``channels`` for a channel-pruned model
    (:func:`recalibrate`); ``resize`` fits the images (default: as Darknet
    does for this network, :func:`darknet_sparse.darknet.images.default_resize`).
    ``on_progress(done, total)`` counts the passes.  ``fork`` picks whose
    Darknet runs both models (auto: as :class:`~darknet_sparse.darknet.Network`
    resolves the model's); the result says which.
    """
    net = calibration_network(cfg, weights, batch, fork)
    base = None if reference is None else calibration_network(reference_cfg or cfg, reference, batch, net.fork)
    model = load_model(cfg, net.fork, weights)
    base_model = model if reference is None or reference_cfg is None else load_model(reference_cfg, net.fork,
                                                                                      reference)
    x = ImageFiles(paths, net.input_shape, resize or images.default_resize(model))
    total = len(x) // pass_size(len(x), net.batch) * (1 if base is None else 2)
    result = recalibrate(net, model, x, None if on_progress is None else (lambda done: on_progress(done, total)),
                         reference=base, reference_model=base_model, channels=channels)
    net.save(output)
    return dataclasses.replace(result, fork=net.fork)


def batchnorm_layers(net: Network) -> tuple[list[int], list[int]]:
    """Indices of the layers with rolling statistics: those recalibrated,
    and those left alone (batch norm inside recurrent layers)."""
    calibrated, skipped = [], []
    for index in range(net.num_layers):
        names = net.params(index)
        if "rolling_mean" in names and net.layer_type(index) in CALIBRATED_TYPES:
            calibrated.append(index)
        elif any(name.endswith("rolling_mean") for name in names):
            skipped.append(index)
    return calibrated, skipped


def pass_size(images: int, batch: int) -> int:
    """Images per pass: as even as the passes allow, at most ``batch``."""
    if images < 2:
        raise InputError(f"recalibration needs at least 2 images, got {images}")
    if batch < 2:
        raise InputError(f"the network takes {batch} image per pass, too few for batch statistics: "
                         "load it with a larger batch (calibration_network, recalibrate --batch)")
    return images // -(-images // batch)


class ImageFiles:
    """Calibration images read pass by pass (a few at a time in memory), as
    :func:`recalibrate` takes them: their count, and slices as arrays."""

    def __init__(self, paths: Sequence[str | Path], shape: tuple[int, int, int], how: str = "crop"):
        self.paths, self.shape, self.how = list(paths), shape, how

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, part: slice) -> np.ndarray:
        return images.load_batch(self.paths[part], self.shape, self.how)


def measure(net: Network, model: Model, x: np.ndarray | ImageFiles,
            on_progress: Callable[[int], None] | None = None
            ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], int, int]:
    """The mean and variance of every recalibrated layer's inputs to batch
    norm over the calibration images ``x`` (N, C, H, W), an array or
    :class:`ImageFiles`; and the passes and their size.  The network is left
    as it was (its rolling arrays serve as scratch and are restored).

    ``model`` is the cfg's layout (for each layer's output size);
    ``on_progress(n)`` is told how many passes are done.  Fewer than one
    image per pass may be left out, so that every pass has the same size.
    """
    check_host(net)
    layers, _ = batchnorm_layers(net)
    original_batch = net.batch
    size = pass_size(len(x), original_batch)
    passes = len(x) // size
    views = {index: net.params(index) for index in layers}
    old = {index: (v["rolling_mean"].copy(), v["rolling_variance"].copy()) for index, v in views.items()}
    sums = {index: np.zeros((3, v["rolling_mean"].size)) for index, v in views.items()}
    rate = np.float64(np.float32(net.rolling_rate))
    net.set_batch(size)
    try:
        for step in range(passes):
            for v in views.values():
                v["rolling_mean"][:] = 0
                v["rolling_variance"][:] = 0
            net.forward_train(x[step * size:(step + 1) * size])
            for index, v in views.items():
                mean = v["rolling_mean"] / rate
                sums[index] += (mean, mean * mean, v["rolling_variance"] / rate)
            if on_progress:
                on_progress(step + 1)
    finally:
        net.set_batch(original_batch)
        for index, (mean, variance) in old.items():
            views[index]["rolling_mean"][:] = mean
            views[index]["rolling_variance"][:] = variance
    stats = {}
    for index in layers:
        _, h, w = model.layers[index].output
        stats[index] = pooled(sums[index], passes, size * h * w)
    return stats, passes, size


def recalibrate(net: Network, model: Model, x: np.ndarray | ImageFiles,
                on_progress: Callable[[int], None] | None = None,
                reference: Network | None = None, reference_model: Model | None = None,
                channels: Mapping[int, np.ndarray] | None = None) -> Recalibration:
    """Set every recalibrated layer's rolling mean and variance to those of
    the calibration images ``x`` (:func:`measure`); nothing else changes.

    With ``reference`` (a network of the same layers, e.g. the dense model
    loaded by :func:`calibration_network`), both are measured and only the
    network's shift from the reference is applied to the reference's
    statistics (module docstring); ``on_progress`` then counts the
    reference's passes after the network's.  A channel-pruned network
    (:mod:`darknet_sparse.structured.slim`) compares with its dense reference through
    ``channels``: per layer, the reference's channels it kept
    (:meth:`darknet_sparse.structured.slim.Choice.kept_channels`), with the
    reference's layout ``reference_model``.
    """
    check_host(net)
    layers, skipped = batchnorm_layers(net)
    if not layers:
        raise InputError("the network has no batch-norm statistics to recalibrate")
    if reference is not None:
        _check_reference(net, reference, layers, channels)
    stats, passes, size = measure(net, model, x, on_progress)
    if reference is not None:
        reference.set_batch(net.batch)
        shift = None if on_progress is None else (lambda done: on_progress(passes + done))
        base, _, _ = measure(reference, reference_model or model, x, shift)
        if channels:
            base = {i: (m[channels[i]], v[channels[i]]) if i in channels else (m, v) for i, (m, v) in base.items()}
    changes = []
    for index in layers:
        v = net.params(index)
        old_mean, old_variance = v["rolling_mean"].copy(), v["rolling_variance"].copy()
        mean, variance = stats[index]
        if reference is not None:
            theirs = {name: reference.params(index)[name] for name in ("rolling_mean", "rolling_variance")}
            if channels and index in channels:
                theirs = {name: values[channels[index]] for name, values in theirs.items()}
            mean, variance = _carried(theirs["rolling_mean"], theirs["rolling_variance"], *base[index], mean,
                                      variance)
        v["rolling_mean"][:] = mean
        v["rolling_variance"][:] = variance
        changes.append(_change(model.layers[index], old_mean, old_variance, v["rolling_mean"],
                               v["rolling_variance"]))
    return Recalibration(passes * size, passes, size, changes, skipped, reference is not None)


def _carried(rolling_mean: np.ndarray, rolling_variance: np.ndarray, ref_mean: np.ndarray,
             ref_variance: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference's rolling statistics, in units of what was measured on
    it, carried over to what was measured on the model (module docstring);
    where the reference's channel was constant on the images there is no
    unit, and the model's measured statistics stand."""
    measured = ref_variance > 0
    ratio = np.divide(variance, ref_variance, out=np.ones_like(variance), where=measured)
    offset = np.divide(rolling_mean - ref_mean, np.sqrt(ref_variance), out=np.zeros_like(mean), where=measured)
    return (np.where(measured, mean + offset * np.sqrt(variance), mean),
            np.where(measured, rolling_variance * ratio, variance))


def _check_reference(net: Network, reference: Network, layers: list[int],
                     channels: Mapping[int, np.ndarray] | None = None) -> None:
    """The reference must have the network's input and, layer by layer, the
    same batch-norm channels (or, through ``channels``, the ones kept)."""
    check_host(reference)
    if reference.input_shape != net.input_shape:
        raise InputError(f"the reference takes input {reference.input_shape}, the model {net.input_shape}")
    theirs, _ = batchnorm_layers(reference)
    if theirs != layers:
        raise InputError(f"the reference has batch norm in layers {theirs}, the model in {layers}")
    for index in layers:
        ours, other = net.params(index)["rolling_mean"].size, reference.params(index)["rolling_mean"].size
        if channels and index in channels:
            kept = np.asarray(channels[index])
            if len(kept) and (kept.min() < 0 or kept.max() >= other):
                raise InputError(f"layer {index}: kept channels outside the reference's {other}")
            other = len(kept)
        if ours != other:
            raise InputError(f"layer {index}: the reference has {other} channels, the model {ours}")


def pooled(sums: np.ndarray, passes: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased variance of ``passes * count`` values per channel,
    from the sums over passes of each pass's mean, squared mean and unbiased
    variance over ``count`` values (the law of total variance)."""
    sum_mean, sum_square, sum_variance = sums
    mean = sum_mean / passes
    squares = (count - 1) * sum_variance + count * np.maximum(sum_square - passes * mean * mean, 0)
    return mean, squares / max(passes * count - 1, 1)


def _change(layer: Layer, old_mean: np.ndarray, old_variance: np.ndarray, mean: np.ndarray,
            variance: np.ndarray) -> LayerChange:
    old_std = np.sqrt(np.maximum(old_variance, 0).astype(np.float64)) + STD_EPSILON
    std = np.sqrt(np.maximum(variance, 0).astype(np.float64)) + STD_EPSILON
    return LayerChange(layer.index, layer.type, mean.size, float(np.mean(np.abs(mean - old_mean) / old_std)),
                       float(np.exp(np.mean(np.log(std / old_std)))))


def table(result: Recalibration) -> str:
    """One line per recalibrated layer: how far its statistics moved."""
    passes = f"{result.passes} pass{'es' if result.passes != 1 else ''}"
    rows = [[c.layer, c.type, c.channels, f"{c.mean_shift:.4f}", f"{c.std_ratio:.4f}"] for c in result.layers]
    how = ", relative to the reference" if result.relative else ""
    lines = [f"recalibrated {len(result.layers)} layers on {result.images} images ({passes} of {result.batch}{how})",
             render_table(["layer", "type", "channels", "mean shift", "std ratio"], rows, align="><")]
    if result.skipped:
        lines.append(f"left as they were (batch norm inside recurrent layers): {result.skipped}")
    lines.append(f"fork: {result.fork}: the model ran in {result.fork}'s Darknet")
    return "\n".join(lines)
