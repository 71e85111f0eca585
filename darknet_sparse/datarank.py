"""A data-driven order for slim: which channels to remove first, by the
error their removal causes in the layers that read them, per FLOP saved.

|gamma| says how much a channel is scaled, not how much the next layers
depend on it, and it is blind to cost: yolov3-tiny's channels differ 15x
in the FLOPs they take (a channel of layer 2 costs 25 MFLOPs, one of layer
12 1.6), so an order by |gamma| alone empties the expensive, sensitive early
layers to reach a FLOPs target.  ThiNet (Luo et al., 2017) chooses the
channels of a layer whose removal changes the *next* layer's output least,
greedily, on sampled activations; this module does that for every layer at
once and divides by the FLOPs each channel costs, so one greedy order over
the whole network trades error against speed:

- One pass of the dense network over calibration images collects, for
  every convolution or connected layer ``C`` that reads prunable channels,
  the covariance ``M`` of its input patches (im2col rows at sampled output
  pixels, centred: bias compensation restores each channel's mean).
- Channel ``j``'s contribution to ``C``'s output ``o`` is ``w_oj . patch_j``;
  in batch-norm units (times ``gamma_o / sd_o``, so every output counts as
  the network sees it) the squared error of removing a set ``S`` of input
  channels is ``sum_{j, j' in S} G[j, j']`` with
  ``G[j, j'] = sum over kernel taps of M * V``, ``V = W^T diag(s^2) W``.
  Divided by ``C``'s output variance in the same units, the errors of
  different layers compare.
- Greedily, the channel whose removal adds the least error per FLOP saved
  (its own filter and every consumer's slice of it) goes next; the cross
  terms with channels of its layer already gone are kept up to date.

The result is a score per channel node, its position in that order, for
:func:`darknet_sparse.slim.choose` (``rank="data"``), which keeps its
constraints (heads, shortcut classes, ``min_channels``) and its FLOPs
search.  Errors across different producers reaching one consumer through a
route are not crossed (each producer's channels are ranked within its own
block), and reconstruction (:mod:`darknet_sparse.reconstruct`) afterwards
repairs much of what the order could not avoid.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .errors import PolicyError
from .layout import Model
from .reconstruct import POSITIONS, _chunks, _inputs, _picks, _rows

if TYPE_CHECKING:
    from .channels import ChannelGraph
    from .darknet import Network

#: A consumer whose input patches have more values than this is left out of
#: the error (its covariance would not fit in memory): a connected layer
#: reading a large map flat.
MAX_PATCH = 12288


def consumers(graph: ChannelGraph) -> list[int]:
    """The layers whose input error is measured: convolutions of one group
    and connected layers reading at least one rankable channel."""
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


def _patch(layer) -> int:
    """Values one output reads: its filter's size."""
    weights = next(p for p in layer.params if p.role == "weights")
    return weights.count // (layer.output[0] if layer.type != "connected" else layer.outputs)


def _output_scale(net: Network, index: int, outputs: int) -> tuple[np.ndarray, bool]:
    """Per output, what one unit of its pre-normalisation value is worth
    downstream: gamma / sd under batch norm, else 1."""
    params = net.params(index)
    if "scales" in params and "rolling_variance" in params:
        sd = np.sqrt(np.maximum(params["rolling_variance"].astype(np.float64), 0)) + 1e-6
        return np.abs(params["scales"].astype(np.float64)) / sd, True
    return np.ones(outputs), False


def errors(dense: Network, model: Model, graph: ChannelGraph, x: np.ndarray, *, positions: int = POSITIONS,
           seed: int = 0, on_progress: Callable[[int, int], None] | None = None) -> dict[int, np.ndarray]:
    """Per producing convolution, the matrix ``G`` (its output channels
    squared) of the relative squared error that removing channels causes
    in the layers reading them; one pass of the dense network over ``x``."""
    if dense.on_gpu:
        raise PolicyError("the data rank reads host memory: use a CPU build of the binding")
    todo = [i for i in consumers(graph) if _patch(model.layers[i]) <= MAX_PATCH]
    rng = np.random.default_rng(seed)
    picks = {i: _picks(model.layers[i], len(x), positions, rng) for i in todo}
    sums: dict[int, list] = {}
    for done, part in enumerate(_chunks(len(x)), 1):
        for index, inp in zip(todo, _inputs(dense, todo, x[part])):
            layer = model.layers[index]
            rows = _rows(inp.reshape(-1, *layer.input), layer, picks[index][part]).astype(np.float64)
            total = sums.setdefault(index, [0, np.zeros(rows.shape[1]), np.zeros((rows.shape[1],) * 2)])
            total[0] += len(rows)
            total[1] += rows.sum(0)
            total[2] += rows.T @ rows
        if on_progress:
            on_progress(part.stop, len(x))
    found: dict[int, np.ndarray] = {}
    for index in todo:
        layer, entry = model.layers[index], graph.layers[index]
        count, first, second = sums[index]
        mean = first / count
        covariance = second / count - np.outer(mean, mean)
        outputs = layer.output[0] if layer.type != "connected" else layer.outputs
        w = dense.params(index)["weights"].astype(np.float64).reshape(outputs, -1)
        scale, _ = _output_scale(dense, index, outputs)
        weighted = w * scale[:, None]
        variance = float(np.sum(weighted * (weighted @ covariance)))  # the output's variance, batch-norm units
        taps = w.shape[1] // len(entry.input)
        v = weighted.T @ weighted
        g = (covariance * v).reshape(len(entry.input), taps, len(entry.input), taps).sum((1, 3))
        g /= variance if variance > 0 else 1.0
        producers = graph.node_layer[entry.input]
        for producer in np.unique(producers):
            if producer < 0:
                continue
            mine = producers == producer
            channels = graph.node_channel[entry.input[mine]]
            size = int(np.sum(graph.node_layer == producer))
            block = found.setdefault(int(producer), np.zeros((size, size)))
            block[np.ix_(channels, channels)] += g[np.ix_(mine, mine)]
    return found


def order(graph: ChannelGraph, model: Model, g: dict[int, np.ndarray]) -> np.ndarray:
    """Each node's position in the greedy order (NaN: not rankable): the
    next to go is the channel adding the least error per FLOP saved."""
    cost = channel_flops(graph, model)
    position = np.full(len(graph.node_layer), np.nan)
    candidates = {}
    for producer, block in g.items():
        nodes = graph.producer(producer)
        ok = graph.rankable[nodes] & np.array([n not in graph.frozen for n in nodes.tolist()])
        if ok.any():
            candidates[producer] = (nodes, ok.copy(), np.zeros(len(nodes)))
    step = 0
    while candidates:
        best, best_value = None, np.inf
        for producer, (nodes, left, cross) in candidates.items():
            block = g[producer]
            value = (np.diag(block) + 2 * cross) / np.maximum(cost[nodes], 1.0)
            value = np.where(left, value, np.inf)
            k = int(np.argmin(value))
            if value[k] < best_value:
                best, best_value = (producer, k), value[k]
        if best is None:
            break
        producer, k = best
        nodes, left, cross = candidates[producer]
        position[nodes[k]] = step
        step += 1
        left[k] = False
        cross += g[producer][:, k]
        if not left.any():
            del candidates[producer]
    return position
