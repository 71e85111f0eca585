"""Least-squares reconstruction after channel pruning: refit the layers
that read a slimmed network's channels so they output what the dense
network's layers did.

Removing channels (:mod:`slim`) leaves every layer after them computing from
fewer inputs; bias compensation restores only each removed channel's mean.
He et al. ("Channel Pruning for Accelerating Very Deep Neural Networks",
2017) and Luo et al. ("ThiNet", 2017) refit the next layer's weights
instead, by linear least squares on sampled activations, so the channels
that stay take over what the removed ones carried.  This module does that
for every convolution (``groups=1``) and connected layer of the slimmed
network, first to last:

- run the dense and the slimmed network on calibration images (through the
  binding, in inference mode); take the layer's input in each (the output
  of the layer before it, which is how Darknet feeds a layer);
- sample up to ``positions`` output pixels per image and build the
  receptive fields there (im2col rows, Darknet's weight order: channel,
  kernel row, kernel column); the dense rows times the dense filters are
  the *target*, the layer's pre-normalisation output ``z`` for the channels
  it keeps;
- solve, for the slimmed rows ``X`` (plus a constant column), the ridge
  problem ``min |X W - target|^2 + ridge * n * |W - W0|^2``, ``W0`` being
  the dense filters restricted to the kept channels (so a layer whose input
  lost nothing stays where it was unless the data say otherwise), with the
  normal equations in float64;
- write the new filters, and fold the constant into the layer's batch-norm
  rolling mean (``z - mean`` is what batch norm reads) or, without batch
  norm, into its bias.

Because the slimmed network is re-run for every layer, each layer is fitted
to inputs that already carry the refits before it (the sequential scheme of
both papers), so errors are corrected rather than compounded.  Batch-norm
scales, biases and the rolling variance are not touched: the refit layer's
``z`` matches the dense ``z``, which those were made for.  The weights do not
depend on the input size, so the images may be smaller than the cfg's.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..darknet import images
from ..darknet.network import Network
from ..errors import BindingError, InputError
from ..format.layout import Layer, Model
from ..format.weightsfile import WeightsFile, atomic_path
from ..reports import render_table
from . import calibration, datarank
from . import slim as slim_
from .channels import ChannelGraph, channel_graph
from .slim import SlimResult

#: Candidate pulls toward the dense filters, relative to the mean squared
#: input; each layer takes the one whose fit on most images reproduces the
#: held-out images best.
RIDGES = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
#: The share of the images held out to choose the ridge.
HOLDOUT = 0.25
@dataclass
class LayerFit:
    """How well one layer's refit reproduces the dense layer's output."""

    layer: int
    type: str
    inputs_before: int  # input channels in the dense model
    inputs_after: int
    rows: int  # sampled output pixels (times images)
    ridge: float  # the pull toward the dense filters chosen
    error_before: float  # relative squared error of z on the held-out images, before the refit
    error_after: float  # and after (fitted without them)


def fittable(graph: ChannelGraph, kept: np.ndarray) -> list[int]:
    """The layers refit: convolutions of one group and connected layers,
    from the first one whose input lost channels (before it nothing
    differs from the dense network)."""
    fork = graph.model.fork
    layers = [e for e in graph.layers if ((e.role == "conv" and e.groups == 1) or e.role == "connected")
              and calibration.plain(graph.model.layers[e.index], fork)]
    changed = [e.index for e in layers if not kept[e.input].all()]
    return [e.index for e in layers if changed and e.index >= changed[0]]


def reconstruct(dense: Network, slimmed: Network, dense_model: Model, graph: ChannelGraph, kept: np.ndarray,
                x: np.ndarray, *, positions: int = calibration.POSITIONS, ridges: Sequence[float] = RIDGES,
                holdout: float = HOLDOUT, seed: int = 0, layers: Sequence[int] | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> list[LayerFit]:
    """Refit ``slimmed`` (loaded from slim's output) layer by layer to
    reproduce ``dense`` on the images ``x`` (N, C, H, W), in place; see the
    module docstring.  ``graph`` and ``kept`` are the slim choice's
    (:class:`darknet_sparse.structured.slim.Choice`).  ``on_progress(done, total)``
    counts the dense pass as the first of ``len(layers) + 1`` steps."""
    for net in (dense, slimmed):
        if net.on_gpu:
            raise BindingError("reconstruction reads and writes host memory: use a CPU build of the binding")
    if len(x) < 2:
        raise InputError(f"reconstruction needs at least 2 images, got {len(x)}")
    todo = fittable(graph, kept) if layers is None else list(layers)
    rng = np.random.default_rng(seed)
    picks = {index: calibration.picks(dense_model.layers[index], len(x), positions, rng) for index in todo}
    fit_images = len(x) - max(1, round(holdout * len(x)))
    targets = _dense_targets(dense, dense_model, graph, kept, x, picks)
    if on_progress:
        on_progress(1, len(todo) + 1)
    fits = []
    for done, index in enumerate(todo, 2):
        fits.append(_fit_layer(slimmed, dense, dense_model.layers[index], graph.layers[index], kept, x, picks[index],
                               targets.pop(index), fit_images, ridges, dense_model.fork))
        if on_progress:
            on_progress(done, len(todo) + 1)
    return fits


def _dense_filters(dense: Network, layer: Layer, keep_out: np.ndarray) -> np.ndarray:
    return dense.params(layer.index)["weights"].reshape(layer.output[0], -1)[keep_out].astype(np.float64)


def _dense_targets(dense: Network, model: Model, graph: ChannelGraph, kept: np.ndarray, x: np.ndarray,
                   picks: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """The dense layers' pre-normalisation outputs (no bias) at the sampled
    pixels, for the channels they keep: one pass of the dense network."""
    indices = list(picks)
    filters = {i: _dense_filters(dense, model.layers[i], kept[graph.layers[i].output]) for i in indices}
    parts: dict[int, list[np.ndarray]] = {i: [] for i in indices}
    for part in calibration.chunks(len(x)):
        for index, inp in zip(indices, calibration.inputs(dense, indices, x[part])):
            layer = model.layers[index]
            rows = calibration.rows(inp.reshape(-1, *layer.input), layer, picks[index][part], model.fork)
            parts[index].append((rows.astype(np.float64) @ filters[index].T).astype(np.float32))
    return {i: np.concatenate(p) for i, p in parts.items()}


def _fit_layer(slimmed: Network, dense: Network, layer: Layer, entry, kept: np.ndarray, x: np.ndarray,
               picks: np.ndarray, target: np.ndarray, fit_images: int, ridges: Sequence[float],
               fork: str) -> LayerFit:
    """Accumulate the normal equations of the slimmed layer's input against
    the dense target, the first ``fit_images`` images apart from the rest;
    choose the ridge by the rest's error; solve on all of them."""
    index = layer.index
    keep_in, keep_out = kept[entry.input], kept[entry.output]
    shape = (int(keep_in.sum()), *layer.input[1:])
    per_image = picks.shape[1] if layer.type != "connected" else 1
    view, theirs = slimmed.params(index), dense.params(index)
    w0 = _dense_filters(dense, layer, keep_out)
    start = w0[:, np.repeat(keep_in, w0.shape[1] // len(keep_in))]  # the dense filters on the kept inputs
    columns = start.shape[1] + 1  # and the constant
    sums = {name: [np.zeros((columns, columns)), np.zeros((columns, len(start))), 0.0] for name in ("fit", "held")}
    for part in calibration.chunks(len(x)):
        (inp,) = calibration.inputs(slimmed, [index], x[part])
        rows = calibration.rows(inp.reshape(-1, *shape), layer, picks[part], fork).astype(np.float64)
        X = np.concatenate([rows, np.ones((len(rows), 1))], 1)
        T = target[part.start * per_image:part.stop * per_image].astype(np.float64)
        image = np.repeat(np.arange(part.start, part.stop), per_image)
        for name, mask in (("fit", image < fit_images), ("held", image >= fit_images)):
            gram, cross, norm = sums[name]
            gram += X[mask].T @ X[mask]
            cross += X[mask].T @ T[mask]
            sums[name][2] = norm + float(np.sum(T[mask] ** 2))
    current = np.concatenate([view["weights"].reshape(start.shape).astype(np.float64),
                              _offset(view, theirs, keep_out)[:, None]], 1).T  # (columns, outputs)
    prior = np.concatenate([start, np.zeros((len(start), 1))], 1).T

    def error(W: np.ndarray, name: str) -> float:
        gram, cross, norm = sums[name]
        return max(float(np.sum(W * (gram @ W)) - 2 * np.sum(W * cross) + norm), 0.0) / (norm or 1.0)

    def solve(gram: np.ndarray, cross: np.ndarray, ridge: float) -> np.ndarray:
        penalty = np.full(columns, ridge * float(np.mean(np.diag(gram)[:-1])))
        penalty[-1] = 0.0  # the constant is free
        return np.linalg.solve(gram + np.diag(penalty), cross + penalty[:, None] * prior)

    held = {ridge: error(solve(sums["fit"][0], sums["fit"][1], ridge), "held") for ridge in ridges}
    ridge = min(held, key=held.get)
    total = [sums["fit"][k] + sums["held"][k] for k in range(2)]
    W = solve(total[0], total[1], ridge)
    view["weights"][:] = W[:-1].T.astype(np.float32).reshape(-1)
    _set_offset(view, theirs, keep_out, W[-1])
    rows = int(len(x) * per_image)
    return LayerFit(index, layer.type, len(keep_in), int(keep_in.sum()), rows, ridge,
                    error(current, "held"), held[ridge])


def _offset(view: dict, theirs: dict, keep_out: np.ndarray) -> np.ndarray:
    """What the slimmed layer adds to z relative to the dense one: the
    dense rolling mean minus its own (batch norm), or its bias minus the
    dense bias."""
    if "rolling_mean" in view:
        return theirs["rolling_mean"][keep_out].astype(np.float64) - view["rolling_mean"]
    return view["biases"].astype(np.float64) - theirs["biases"][keep_out]


def _set_offset(view: dict, theirs: dict, keep_out: np.ndarray, constant: np.ndarray) -> None:
    if "rolling_mean" in view:
        view["rolling_mean"][:] = (theirs["rolling_mean"][keep_out] - constant).astype(np.float32)
    else:
        view["biases"][:] = (theirs["biases"][keep_out] + constant).astype(np.float32)


@dataclass
class RefitResult:
    """What :func:`slim_refit` did: slim's report, the data rank's use,
    and each refit layer's errors."""

    slim: SlimResult
    images: int
    ranked_by_data: bool
    fits: list[LayerFit]


def slim_refit(wf: WeightsFile, output: str | Path, paths: Sequence[str | Path], *, rank: str = "data",
               refit: bool = True, resize: str | None = None, positions: int = calibration.POSITIONS,
               on_stage: Callable[[str], None] | None = None, **rule) -> RefitResult:
    """``slim`` with calibration images: channels chosen in the data rank's
    order (:mod:`darknet_sparse.structured.datarank`, ``rank="data"``; or by |gamma|),
    removed, and the layers after them refit by least squares (``refit``).
    ``rule`` is slim's (``target_flops=``, ``percent=`` ...).  Writes
    ``output`` and its cfg beside it only when everything succeeded."""

    target = Path(output)
    slim_.check_targets(wf, target)
    say = on_stage or (lambda text: None)
    dense = Network(wf.model.path, wf.path, fork=wf.model.fork)  # the fork the file was read with
    x = images.load_batch(paths, dense.input_shape, resize or images.default_resize(wf.model))
    scores = None
    if rank == "data":
        say(f"measuring what each channel's removal costs downstream on {len(x)} images")
        graph = channel_graph(wf.model)
        scores = datarank.order(graph, wf.model, datarank.measure(dense, wf.model, graph, x, positions=positions))
    choice = slim_.choose(wf, rank=rank, scores=scores, **rule)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as folder:
        staged = Path(folder) / target.name
        result = slim_.apply(wf, choice, staged)
        fits = []
        if refit:
            say(f"refitting the layers after the removed channels on {len(x)} images")
            slimmed = Network(slim_.cfg_beside(staged), staged, fork=wf.model.fork)
            fits = reconstruct(dense, slimmed, wf.model, choice.graph, choice.kept, x, positions=positions)
            slimmed.save(staged)
        for made, final in ((staged, target), (slim_.cfg_beside(staged), slim_.cfg_beside(target))):
            with atomic_path(final) as tmp:
                shutil.copyfile(made, tmp)
    result.output, result.cfg = target, slim_.cfg_beside(target)
    return RefitResult(result, len(x), rank == "data", fits)


def table(result: RefitResult) -> str:
    """slim's report, then one line per refit layer."""
    lines = [slim_.table(result.slim)]
    how = "channels chosen by the data rank" if result.ranked_by_data else "channels chosen by |gamma|"
    if result.fits:
        rows = [[f.layer, f.type, f"{f.inputs_before} -> {f.inputs_after}", f.rows, f"{f.ridge:g}",
                 f"{f.error_before:.4f}", f"{f.error_after:.4f}"] for f in result.fits]
        layers = f"{len(result.fits)} layer{'s' if len(result.fits) != 1 else ''}"
        lines += ["", f"refit {layers} by least squares on {result.images} images ({how}); "
                  "relative error of each layer's output on the held-out images:",
                  render_table(["layer", "type", "inputs", "rows", "ridge", "before", "after"], rows, align="><")]
    else:
        lines.append(f"({how}; not refit)")
    return "\n".join(lines)
