"""A data-driven order for slim: which channels to remove first, by the
error their removal leaves in the layers that read them, after the best
refit, per FLOP saved.

|gamma| says how much a channel is scaled, not how much the next layers
depend on it, and it is blind to cost: yolov3-tiny's channels differ 15x in
the FLOPs they take (a channel of layer 2 costs 25 MFLOPs, one of layer 12
1.6), so an order by |gamma| alone empties the expensive, sensitive early
layers to reach a FLOPs target.  And what matters after a refit
(:mod:`darknet_sparse.structured.reconstruct`) is not what a channel contributes but
what the channels left cannot take over.  Optimal Brain Surgeon (Hassibi
and Stork, 1993), applied to groups of weights (the kernel taps one input
channel feeds a layer; Frantar and Alistarh's "Optimal Brain Compression",
2022, does this for whole filters) gives exactly that for a layer whose
input covariance is ``H``: removing group ``g`` from filter ``w`` and
refitting the rest by least squares raises the squared error by
``w_g (H^-1)_gg^-1 w_g^T``, and the refit is ``w -= w_g (H^-1)_gg^-1
(H^-1)_g``, after which ``H^-1`` loses the group the same way.

So: one pass of the dense network over calibration images collects, for
every convolution or connected layer reading prunable channels (a
*consumer*), the covariance of its input patches (im2col rows at sampled
output pixels, centred: the refit's constant restores each mean).  The
filters are weighted by what one unit of each output is worth downstream
(``gamma / sd`` under batch norm), and each consumer's error is divided by
its output variance in those units, so the errors of different layers
compare.  Greedily, the channel whose removal adds the least error per
FLOP saved (its own filter and every consumer's slice) goes next; each
consumer it feeds updates its filters and ``H^-1`` as above, and a removed
channel's own filter stops counting in the consumer that made it.

The result is a score per channel node, its position in that order, for
:func:`darknet_sparse.structured.slim.choose` (``rank="data"``), which keeps its
constraints (heads, shortcut classes, ``min_channels``) and its FLOPs
search.  The order models each consumer's refit but not how errors travel
further; the sequential refit afterwards corrects for that on the data.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BindingError
from ..format.layout import Layer, Model
from . import calibration

if TYPE_CHECKING:
    from ..darknet.network import Network
    from .channels import ChannelGraph

#: A consumer whose input patches have more values than this is left out of
#: the error (its covariance would not fit in memory): a connected layer
#: reading a large map flat.
MAX_PATCH = 12288
#: Added to the diagonal of each covariance before inverting, relative to
#: each entry (and a floor relative to their mean): channels that never
#: vary stay invertible, and quiet ones keep their share.
DAMPING = 1e-4


@dataclass
class Consumer:
    """One layer reading prunable channels: its weighted filters
    (outputs, groups, taps), the inverse covariance of its inputs, which
    node each input group is, and its output variance."""

    layer: int
    filters: np.ndarray
    inverse: np.ndarray
    nodes: np.ndarray
    variance: float
    alive: np.ndarray  # input groups not yet removed


def consumers(graph: ChannelGraph) -> list[int]:
    """The layers whose error is measured: convolutions of one group and
    connected layers reading at least one rankable channel."""
    found = []
    for entry in graph.layers:
        if ((entry.role == "conv" and entry.groups == 1) or entry.role == "connected") and len(entry.input) \
                and graph.rankable[entry.input].any():
            found.append(entry.index)
    return found


def channel_flops(graph: ChannelGraph, model: Model) -> np.ndarray:
    """FLOPs per image each node takes: its filter in its own convolution
    and its slice in every layer reading it (dense counts, as layout's)."""
    cost = np.zeros(len(graph.node_layer))
    for entry, layer in zip(graph.layers, model.layers):
        if entry.role == "conv" and len(entry.output):
            cost[entry.output] += layer.flops / len(entry.output)
        if entry.role in ("conv", "connected") and len(entry.input):
            np.add.at(cost, entry.input, layer.flops / len(entry.input))
    return cost


def _outputs(layer: Layer) -> int:
    return layer.output[0] if layer.type != "connected" else layer.outputs


def _patch(layer: Layer) -> int:
    """Values one output reads: its filter's size."""
    weights = next(p for p in layer.params if p.role == "weights")
    return weights.count // _outputs(layer)


def _output_scale(net: Network, index: int, outputs: int) -> np.ndarray:
    """Per output, what one unit of its pre-normalisation value is worth
    downstream: gamma / sd under batch norm, else 1."""
    params = net.params(index)
    if "scales" in params and "rolling_variance" in params:
        sd = np.sqrt(np.maximum(params["rolling_variance"].astype(np.float64), 0)) + 1e-6
        return np.abs(params["scales"].astype(np.float64)) / sd
    return np.ones(outputs)


def measure(dense: Network, model: Model, graph: ChannelGraph, x: np.ndarray, *,
            positions: int = calibration.POSITIONS, seed: int = 0,
            on_progress: Callable[[int, int], None] | None = None) -> list[Consumer]:
    """Every consumer's state for :func:`order`, from one pass of the dense
    network over the images ``x`` (N, C, H, W)."""
    if dense.on_gpu:
        raise BindingError("the data rank reads host memory: use a CPU build of the binding")
    todo = [i for i in consumers(graph)
            if _patch(model.layers[i]) <= MAX_PATCH and calibration.plain(model.layers[i], model.fork)]
    rng = np.random.default_rng(seed)
    picks = {i: calibration.picks(model.layers[i], len(x), positions, rng) for i in todo}
    sums: dict[int, list] = {}
    for part in calibration.chunks(len(x)):
        for index, inp in zip(todo, calibration.inputs(dense, todo, x[part])):
            layer = model.layers[index]
            rows = calibration.rows(inp.reshape(-1, *layer.input), layer, picks[index][part],
                                    model.fork).astype(np.float64)
            total = sums.setdefault(index, [0, np.zeros(rows.shape[1]), np.zeros((rows.shape[1],) * 2)])
            total[0] += len(rows)
            total[1] += rows.sum(0)
            total[2] += rows.T @ rows
        if on_progress:
            on_progress(part.stop, len(x))
    found = []
    for index in todo:
        layer, entry = model.layers[index], graph.layers[index]
        count, first, second = sums.pop(index)
        mean = first / count
        covariance = second / count - np.outer(mean, mean)
        outputs = _outputs(layer)
        w = dense.params(index)["weights"].astype(np.float64).reshape(outputs, -1)
        w = w * _output_scale(dense, index, outputs)[:, None]
        variance = float(np.sum(w * (w @ covariance)))
        diagonal = np.diag(covariance)
        floor = 1e-9 * max(float(np.mean(diagonal)), 1e-30)
        inverse = np.linalg.inv(covariance + np.diag(DAMPING * diagonal + floor))
        groups = len(entry.input)
        found.append(Consumer(index, w.reshape(outputs, groups, -1), inverse, entry.input.copy(),
                              variance if variance > 0 else 1.0, np.ones(groups, bool)))
    return found


def _group_costs(c: Consumer) -> np.ndarray:
    """The error each input group's removal (and refit) adds now."""
    groups, taps = c.filters.shape[1:]
    blocks = c.inverse.reshape(groups, taps, groups, taps)[np.arange(groups), :, np.arange(groups), :]
    alive = np.flatnonzero(c.alive)
    costs = np.full(groups, np.inf)
    if len(alive):
        inner = np.linalg.inv(blocks[alive])  # (alive, taps, taps)
        w = c.filters[:, alive, :]  # (outputs, alive, taps)
        costs[alive] = np.einsum("oat,atu,oau->a", w, inner, w) / c.variance
    return costs


def _remove_group(c: Consumer, g: int) -> None:
    """Take input group ``g`` out of ``c``: refit its filters, shrink ``H^-1``."""
    groups, taps = c.filters.shape[1:]
    cols = np.arange(g * taps, (g + 1) * taps)
    block = np.linalg.inv(c.inverse[np.ix_(cols, cols)])
    rows = c.inverse[cols]  # (taps, dims)
    flat = c.filters.reshape(len(c.filters), -1)
    flat -= flat[:, cols] @ block @ rows
    c.inverse -= rows.T @ block @ rows
    flat[:, cols] = 0
    c.inverse[cols] = 0
    c.inverse[:, cols] = 0
    c.alive[g] = False


def order(graph: ChannelGraph, model: Model, states: list[Consumer]) -> np.ndarray:
    """Each node's position in the greedy order (NaN: not rankable): next
    goes the channel whose removal adds the least refit error per FLOP."""
    flops = np.maximum(channel_flops(graph, model), 1.0)
    rankable = graph.rankable.copy()
    rankable[list(graph.frozen)] = False
    reading: dict[int, list[tuple[Consumer, int]]] = {}
    for c in states:
        for g, node in enumerate(c.nodes.tolist()):
            reading.setdefault(node, []).append((c, g))
    by_layer = {c.layer: c for c in states}
    total = np.zeros(len(graph.node_layer))  # each node's cost summed over the layers reading it
    costs = {}

    def refresh(c: Consumer) -> None:
        new = np.where(c.alive, _group_costs(c), 0.0)
        old = costs.get(c.layer, np.zeros_like(new))
        np.add.at(total, c.nodes, new - old)
        costs[c.layer] = new

    for c in states:
        refresh(c)
    candidates = np.flatnonzero(rankable & (graph.node_layer >= 0))
    position = np.full(len(graph.node_layer), np.nan)
    left = np.ones(len(candidates), bool)
    for step in range(len(candidates)):
        value = np.where(left, total[candidates] / flops[candidates], np.inf)
        k = int(np.argmin(value))
        node = int(candidates[k])
        position[node] = step
        left[k] = False
        touched = set()
        for c, g in reading.get(node, []):
            _remove_group(c, g)
            touched.add(c.layer)
        own = by_layer.get(int(graph.node_layer[node]))
        if own is not None:  # the channel's own filter no longer counts
            own.filters[int(graph.node_channel[node])] = 0
            touched.add(own.layer)
        for layer in sorted(touched):
            refresh(by_layer[layer])
    return position
