"""Structured pruning: remove whole channels, rewrite the cfg and the weights.

Network slimming (Liu et al., "Learning Efficient Convolutional Networks
through Network Slimming", 2017): a channel whose batch-norm scale
``gamma`` is near zero contributes almost nothing, so its filter, and the
matching input slices of every layer that reads it, can go.  The result is a
smaller dense model that any runtime (stock Darknet, AlexeyAB's fork,
OpenCV) runs faster without sparse kernels.

Channels are ranked by ``|gamma|`` of the convolution that produces them;
:mod:`channels` says which channels must go together or stay.  A class of
channels tied by shortcuts goes only if every one of its ``|gamma|`` is below
the threshold, so its score is the largest of them.  Three ways to choose:

``gamma_threshold=T``  remove every class scoring below ``T``.
``percent=P``          ``T`` is the ``|gamma|`` below which the fraction ``P``
                       of the prunable channels lies (one global threshold).
``target_flops=F``     remove classes in order of score until the dense
                       FLOPs have fallen by the fraction ``F``.

``min_channels`` keeps at least that many channels in every convolution
(skipping a class that would go below it), ``exclude`` keeps every channel of
the layers it names, and blocks that must keep equal counts (grouped
convolutions, AlexeyAB route ``groups``) get back their highest-scoring
channels until they do.

Bias compensation.  With batch norm Darknet computes
``act(gamma * (z - mean) / sd + beta)``; a removed channel is taken to be the
constant ``a = act(beta)``, exactly what it outputs when ``gamma = 0``.  That
constant travels through pooling, upsampling, routes and shortcuts like any
channel, and each convolution or connected layer reading it received
``a * sum(W[o, k])`` (the sum over the kernel of filter ``o`` on input
channel ``k``) in its pre-normalisation output ``z``.  Removing the channel
removes that term, so it is folded back: ``mean[o] -= a * sum(W[o, k])``
where the consumer has batch norm (``z - mean`` is then unchanged), else
``bias[o] += a * sum(W[o, k])``.  This is exact for 1x1 kernels, connected
layers and every pixel a kernel sees entirely inside the image; at the
zero-padded borders of kernels of 3x3 and more, the padding contributed 0
where the sum assumes ``a``, so border pixels differ (by ``a`` times the
weights that fall outside the image).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import OutputError, PolicyError, WeightsFormatError
from ..format import darknet_text
from ..format.cfg import parse_cfg
from ..format.layout import Model, build_model
from ..format.weightsfile import FLOAT, WeightsFile, atomic_path, check_output
from ..pruning.policies import parse_exclude, selector_matches
from .channels import ACTIVATIONS, ChannelGraph, LayerChannels, channel_graph

MODES = ("gamma-threshold", "percent", "target-flops")
#: How channels are scored: ``gamma`` is |gamma| itself; ``layer`` is |gamma|
#: over the mean |gamma| of the convolution producing it, so that a layer
#: whose scales are all small (yolov3-tiny's layer 13) is not emptied first;
#: ``data`` is a given order (:mod:`darknet_sparse.structured.datarank`: the error
#: removal causes downstream per FLOP saved, measured on images).
RANKS = ("gamma", "layer", "data")


@dataclass
class SlimRow:
    """One layer before and after: channels out, parameters, dense FLOPs."""

    index: int
    type: str
    channels_before: int
    channels_after: int
    params_before: int
    params_after: int
    bflops_before: float
    bflops_after: float
    note: str = ""


@dataclass
class SlimResult:
    """What ``slim`` did; ``output``/``cfg`` are None for a dry run."""

    source: Path
    output: Path | None
    cfg: Path | None
    fork: str
    mode: str
    value: float
    threshold: float  # the |gamma| below which classes went (the last one's score for target-flops)
    prunable: int  # channels that could be ranked
    removed: int  # channels removed from convolution outputs
    rows: list[SlimRow]
    notes: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict:
        params = sum(r.params_before for r in self.rows), sum(r.params_after for r in self.rows)
        flops = sum(r.bflops_before for r in self.rows), sum(r.bflops_after for r in self.rows)
        return {"params_before": params[0], "params_after": params[1],
                "bflops_before": flops[0], "bflops_after": flops[1],
                "flops_removed": 1 - flops[1] / flops[0] if flops[0] else 0.0,
                "channels_removed": self.removed, "channels_prunable": self.prunable}


# --------------------------------------------------------------------------
# Choosing the channels.


@dataclass
class _Candidates:
    """Classes that may go, in ascending score, with their nodes."""

    classes: list[int]
    scores: np.ndarray
    nodes: list[np.ndarray]
    gamma: np.ndarray  # |gamma| of every node (NaN: not ranked)
    count: int  # prunable nodes


def _gammas(wf: WeightsFile, graph: ChannelGraph, rank: str = "gamma") -> np.ndarray:
    gamma = np.full(len(graph.node_layer), np.nan)
    for entry in graph.layers:
        if entry.role == "conv" and graph.rankable[entry.output].all() and len(entry.output):
            scores = np.abs(np.asarray(wf.arrays(entry.index)["scales"], np.float64))
            if rank == "layer":
                mean = scores.mean()
                scores = scores / mean if mean > 0 else scores
            gamma[entry.output] = scores
    return gamma


def _candidates(wf: WeightsFile, graph: ChannelGraph, keep: np.ndarray, rank: str = "gamma",
                scores: np.ndarray | None = None) -> _Candidates:
    """Every class with no frozen, unranked or kept node."""
    gamma = _gammas(wf, graph, rank) if scores is None else np.asarray(scores, np.float64)
    roots = graph.classes()
    blocked = keep | ~graph.rankable | np.isnan(gamma)
    blocked[list(graph.frozen)] = True
    bad_roots = set(roots[blocked].tolist())
    members: dict[int, list[int]] = {}
    for node, root in enumerate(roots.tolist()):
        if root not in bad_roots:
            members.setdefault(root, []).append(node)
    classes = list(members)
    nodes = [np.array(members[c], np.int64) for c in classes]
    scores = np.array([gamma[n].max() for n in nodes]) if nodes else np.zeros(0)
    order = np.lexsort((np.array(classes), scores)) if classes else np.zeros(0, np.int64)
    return _Candidates([classes[i] for i in order], scores[order], [nodes[i] for i in order], gamma,
                       sum(len(n) for n in nodes))


def _select(graph: ChannelGraph, cand: _Candidates, take: int, min_channels: int) -> np.ndarray:
    """Remove the first ``take`` candidate classes, keeping ``min_channels``
    per convolution and equal counts in blocks; the kept flag of every node."""
    kept = np.ones(len(graph.node_layer), bool)
    left = {entry.index: len(entry.output) for entry in graph.layers if entry.role == "conv"}
    for nodes in cand.nodes[:take]:
        layers, counts = np.unique(graph.node_layer[nodes], return_counts=True)
        if all(left[layer] - count >= min_channels for layer, count in zip(layers.tolist(), counts.tolist())):
            kept[nodes] = False
            for layer, count in zip(layers.tolist(), counts.tolist()):
                left[layer] -= count
    if graph.blocks:
        _equalise(graph, cand, kept)
    return kept


def _equalise(graph: ChannelGraph, cand: _Candidates, kept: np.ndarray) -> None:
    """Give blocks that must keep equal counts their best removed classes
    back until they do (only ever adding channels, so it ends)."""
    roots = graph.classes()
    members = {cls: nodes for cls, nodes in zip(cand.classes, cand.nodes)}
    changed = True
    while changed:
        changed = False
        for nodes, groups, _ in graph.blocks:
            blocks = nodes.reshape(groups, -1)
            target = kept[blocks].sum(1).max()
            for block in blocks:
                removed = block[~kept[block]]
                for node in removed[np.argsort(-cand.gamma[removed], kind="stable")].tolist():
                    if kept[block].sum() >= target:
                        break
                    if not kept[node]:
                        kept[members[roots[node]]] = True
                        changed = True


def _flops(graph: ChannelGraph, kept: np.ndarray) -> int:
    """Dense FLOPs of the slimmed model (as :mod:`layout` counts them)."""
    total = 0
    for entry, layer in zip(graph.layers, graph.model.layers):
        if entry.role == "conv":
            weights = next(p for p in layer.params if p.role == "weights")
            n, per, size, _ = weights.shape
            outs = kept[entry.output].reshape(entry.groups, -1).sum(1)
            ins = kept[entry.input].reshape(entry.groups, -1).sum(1)
            total += 2 * int(outs @ ins) * size * size * weights.macs
        elif entry.role == "connected":
            c, h, w = layer.input
            total += 2 * layer.output[0] * int(kept[entry.input].sum()) * h * w
        else:
            total += layer.flops
    return total


def _choose(graph: ChannelGraph, cand: _Candidates, mode: str, value: float,
            min_channels: int) -> tuple[np.ndarray, float]:
    """The kept flag of every node, and the threshold it amounts to."""
    if mode == "gamma-threshold":
        if not (math.isfinite(value) and value >= 0):
            raise PolicyError(f"--gamma-threshold {value!r} must be a finite number >= 0")
        threshold = value
    elif mode == "percent":
        if not 0 <= value < 1:
            raise PolicyError(f"--percent {value!r} outside [0, 1)")
        ranked = np.sort(np.concatenate([cand.gamma[n] for n in cand.nodes])) if cand.nodes else np.zeros(0)
        k = round(value * len(ranked))
        threshold = 0.0 if k == 0 else float(ranked[k]) if k < len(ranked) else math.inf
    elif mode == "target-flops":
        if not 0 < value < 1:
            raise PolicyError(f"--target-flops {value!r} outside (0, 1)")
        return _target_flops(graph, cand, value, min_channels)
    else:
        raise PolicyError(f"unknown slim mode {mode!r}: expected one of {', '.join(MODES)}")
    take = int(np.searchsorted(cand.scores, threshold, side="left"))
    return _select(graph, cand, take, min_channels), threshold


def _target_flops(graph: ChannelGraph, cand: _Candidates, fraction: float,
                  min_channels: int) -> tuple[np.ndarray, float]:
    """The fewest classes, in score order, that cut the FLOPs by ``fraction``."""
    dense = graph.model.flops
    goal = (1 - fraction) * dense

    def flops(take: int) -> int:
        return _flops(graph, _select(graph, cand, take, min_channels))

    if not cand.classes or flops(len(cand.classes)) > goal:
        best = 1 - flops(len(cand.classes)) / dense if dense else 0.0
        raise PolicyError(f"--target-flops {fraction:g}: removing every prunable channel "
                          f"(min {min_channels} per layer) cuts the FLOPs by {best:.1%} at most")
    low, high = 0, len(cand.classes)  # flops(high) meets the goal
    while low < high:
        middle = (low + high) // 2
        if flops(middle) <= goal:
            high = middle
        else:
            low = middle + 1
    return _select(graph, cand, high, min_channels), float(cand.scores[high - 1]) if high else 0.0


# --------------------------------------------------------------------------
# Constants of removed channels and the new arrays.


def _constants(wf: WeightsFile, graph: ChannelGraph, kept: np.ndarray) -> list[np.ndarray]:
    """Per layer, the constant each removed output channel holds (NaN where kept)."""
    values: list[np.ndarray] = []
    for entry in graph.layers:
        removed = ~kept[entry.output]
        out = np.full(len(entry.output), np.nan)
        if entry.role == "conv" and removed.any():
            beta = np.asarray(wf.arrays(entry.index)["biases"], np.float64)
            out[removed] = ACTIVATIONS[entry.activation](beta[removed])
        elif entry.role == "pass":
            out = ACTIVATIONS[entry.activation](entry.scale * _input_constants(values, entry))
        elif entry.role == "route":
            out = np.concatenate([values[source][start:end] for source, start, end in entry.pieces])
        elif entry.role == "shortcut":  # pjreddie: alpha*input + beta*from; AlexeyAB: input + sum of froms
            base = _input_constants(values, entry)
            total, added = base.copy(), np.zeros(len(base), bool)
            for source in entry.sources:
                theirs = values[source][:len(total)]
                total[:len(theirs)] += entry.beta * theirs
                added[:len(theirs)] = True
            total[added] += (entry.alpha - 1.0) * base[added]
            out = ACTIVATIONS[entry.activation](total)
        out[~removed] = np.nan
        if np.isnan(out[removed]).any():
            raise RuntimeError(f"slim: layer {entry.index} removes a channel whose value is not known")
        values.append(out)
    return values


def _input_constants(values: list[np.ndarray], entry: LayerChannels) -> np.ndarray:
    return values[entry.index - 1] if entry.index else np.full(len(entry.input), np.nan)


def _new_arrays(wf: WeightsFile, graph: ChannelGraph, kept: np.ndarray,
                constants: list[np.ndarray]) -> tuple[dict[tuple[int, str], np.ndarray], dict[int, int]]:
    """Every array of the slimmed model, and the new ``groups`` of depthwise layers."""
    arrays: dict[tuple[int, str], np.ndarray] = {}
    groups: dict[int, int] = {}
    for entry, layer in zip(graph.layers, graph.model.layers):
        if layer.index >= wf.layers_present:
            break
        current = {name: np.asarray(values) for name, values in wf.arrays(layer.index).items()}
        if entry.role in ("conv", "connected"):
            keep_in = kept[entry.input]
            inputs = _input_constants(constants, entry)
            a = np.where(keep_in, 0.0, inputs if len(inputs) == len(keep_in) else 0.0)
            if entry.role == "conv":
                current, groups_after = _slim_conv(current, layer.params, entry, kept, a)
                if entry.depthwise:
                    groups[layer.index] = groups_after
            else:
                current = _slim_connected(current, layer, keep_in, a, wf.header.transposed)
        for name, values in current.items():
            arrays[layer.index, name] = values
    return arrays, groups


def _compensate(current: dict[str, np.ndarray], delta: np.ndarray) -> None:
    """Fold the removed inputs' contribution back: into the rolling mean
    under batch norm, else into the bias."""
    if "rolling_mean" in current:
        current["rolling_mean"] = (current["rolling_mean"].astype(np.float64) - delta).astype(FLOAT)
    else:
        current["biases"] = (current["biases"].astype(np.float64) + delta).astype(FLOAT)


def _slim_conv(current: dict[str, np.ndarray], params, entry: LayerChannels, kept: np.ndarray,
               a: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
    shape = next(p.shape for p in params if p.role == "weights")
    n, per, size, _ = shape
    g = entry.groups
    weights = current["weights"].reshape(g, n // g, per, size, size)
    if a.any():
        sums = weights.astype(np.float64).sum((3, 4))  # (g, n/g, per)
        _compensate(current, np.einsum("gnc,gc->gn", sums, a.reshape(g, per)).reshape(n))
    keep_out = kept[entry.output].reshape(g, n // g)
    keep_in = kept[entry.input].reshape(g, per)
    pieces = [weights[j][keep_out[j]][:, keep_in[j]] for j in range(g) if keep_out[j].any()]
    new = {name: values[kept[entry.output]] for name, values in current.items() if name != "weights"}
    new["weights"] = np.concatenate([p.reshape(-1) for p in pieces]) if pieces else np.zeros(0, FLOAT)
    return new, len(pieces)


def _slim_connected(current: dict[str, np.ndarray], layer, keep_in: np.ndarray, a: np.ndarray,
                    transposed: bool) -> dict[str, np.ndarray]:
    outputs, inputs = next(p.shape for p in layer.params if p.role == "weights")
    spatial = inputs // len(keep_in)
    weights = current["weights"].reshape((inputs, outputs) if transposed else (outputs, inputs))
    matrix = weights.T if transposed else weights  # (outputs, inputs)
    columns = np.repeat(keep_in, spatial)
    if a.any():
        _compensate(current, matrix.astype(np.float64) @ np.repeat(a, spatial))
    kept_matrix = matrix[:, columns]
    current = dict(current)
    current["weights"] = (kept_matrix.T if transposed else kept_matrix).reshape(-1)
    return current


# --------------------------------------------------------------------------
# The cfg text.


def rewrite_cfg(text: str, values: dict[int, dict[str, int]]) -> str:
    """``text`` with ``key=value`` of the given layers (index after ``[net]``)
    set by :func:`darknet_text.edit_sections`: in place where the section
    has the key (spacing, comments and every other line unchanged), else
    added after its header."""
    return darknet_text.edit_sections(text, {index + 1: changes for index, changes in values.items()})


# --------------------------------------------------------------------------
# The whole job.


def default_output(weights: Path) -> Path:
    """``MODEL.weights`` -> ``MODEL.slim.weights``."""
    stem = weights.name[:-len(".weights")] if weights.name.endswith(".weights") else weights.name
    return weights.with_name(stem + ".slim.weights")


def cfg_beside(weights: Path) -> Path:
    """``OUT.weights`` -> ``OUT.cfg``."""
    stem = weights.name[:-len(".weights")] if weights.name.endswith(".weights") else weights.name
    return weights.with_name(stem + ".cfg")


@dataclass
class Choice:
    """Which channels stay: the graph, the kept flag of every node, and the
    threshold the rule amounts to."""

    graph: ChannelGraph
    kept: np.ndarray
    mode: str
    value: float
    threshold: float
    prunable: int
    keep: np.ndarray  # nodes excluded by the user

    def kept_channels(self, layer: int) -> np.ndarray:
        """Indices (in the original model) of the output channels layer ``layer`` keeps."""
        return np.flatnonzero(self.kept[self.graph.layers[layer].output])


def choose(wf: WeightsFile, *, gamma_threshold: float | None = None, percent: float | None = None,
           target_flops: float | None = None, min_channels: int = 1, exclude: str | None = None,
           rank: str = "gamma", scores: np.ndarray | None = None) -> Choice:
    """Decide which channels go, by exactly one of the three rules; scores
    by ``rank`` (:data:`RANKS`: |gamma|, or |gamma| relative to its layer's
    mean, which ``gamma_threshold`` then also means, or ``data``: the
    ``scores`` given, one per node of the channel graph, lowest first)."""
    if rank not in RANKS:
        raise PolicyError(f"unknown rank {rank!r}: expected one of {', '.join(RANKS)}")
    if (rank == "data") != (scores is not None):
        raise PolicyError("rank data needs the scores of datarank.order (slim --images), and only it takes them")
    if rank == "data" and gamma_threshold is not None:
        raise PolicyError("--gamma-threshold ranks by |gamma|: with the data rank give --percent or --target-flops")
    chosen = [(name, v) for name, v in zip(MODES, (gamma_threshold, percent, target_flops)) if v is not None]
    if len(chosen) != 1:
        raise PolicyError("slim needs exactly one of --gamma-threshold, --percent, --target-flops")
    (mode, value), = chosen
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise PolicyError(f"--min-channels {min_channels!r} must be an integer >= 1")
    model = wf.model
    if wf.partial:
        raise WeightsFormatError(f"{wf.path}: holds only layers 0..{wf.layers_present - 1} of {len(model.layers)}; "
                                 "slim needs every layer")
    graph = channel_graph(model)
    keep = np.zeros(len(graph.node_layer), bool)
    selectors = parse_exclude(exclude, model)
    for layer in model.layers:
        if any(selector_matches(s, layer, model) for s in selectors):
            keep[graph.node_layer == layer.index] = True
    if scores is not None and len(scores) != len(graph.node_layer):
        raise PolicyError(f"{len(scores)} scores for {len(graph.node_layer)} channel nodes")
    cand = _candidates(wf, graph, keep, rank, scores)
    kept, threshold = _choose(graph, cand, mode, float(value), min_channels)
    return Choice(graph, kept, mode, float(value), float(threshold), cand.count, keep)


def slim(wf: WeightsFile, output: str | Path | None, *, gamma_threshold: float | None = None,
         percent: float | None = None, target_flops: float | None = None, min_channels: int = 1,
         exclude: str | None = None, rank: str = "gamma") -> SlimResult:
    """Remove channels of ``wf`` by one of the three rules (:func:`choose`)
    and write the result (:func:`apply`)."""
    if output is not None:
        check_targets(wf, Path(output))
    choice = choose(wf, gamma_threshold=gamma_threshold, percent=percent, target_flops=target_flops,
                    min_channels=min_channels, exclude=exclude, rank=rank)
    return apply(wf, choice, output)


def check_targets(wf: WeightsFile, target: Path) -> None:
    """Refuse outputs that would overwrite the weights or cfg read."""
    for source, written in ((wf.path, target), (Path(wf.model.path), cfg_beside(target))):
        if written.exists() and written.resolve() == source.resolve():
            raise OutputError(f"{written}: slim would overwrite its input {source}; choose another -o")
        check_output(source, written)


def apply(wf: WeightsFile, choice: Choice, output: str | Path | None) -> SlimResult:
    """Write the slimmed weights to ``output`` and its cfg beside it
    (``OUT.cfg``), both atomically; ``output=None`` only computes the report."""
    target = None if output is None else Path(output)
    model = wf.model
    cfg_path = Path(model.path)
    if target is not None:
        check_targets(wf, target)
    graph, kept = choice.graph, choice.kept
    constants = _constants(wf, graph, kept)
    arrays, groups = _new_arrays(wf, graph, kept, constants)

    changes: dict[int, dict[str, int]] = {}
    for entry in graph.layers:
        if entry.role == "conv" and not kept[entry.output].all():
            changes[entry.index] = {"filters": int(kept[entry.output].sum())}
            if entry.depthwise:
                changes[entry.index]["groups"] = groups[entry.index]
    text = darknet_text.read_text(cfg_path, "the cfg")
    new_text = rewrite_cfg(text, changes)
    new_model = build_model(parse_cfg(new_text, str(cfg_path)), model.fork)
    _check(new_model, graph, kept, arrays)

    reasons = _reasons(graph, choice.keep)
    result = SlimResult(wf.path, target, None if target is None else cfg_beside(target), model.fork, choice.mode,
                        choice.value, choice.threshold, choice.prunable, int((~kept).sum()),
                        _rows(model, new_model, graph, reasons), _notes(graph, reasons))
    if target is not None:
        _write(wf, new_model, arrays, target, new_text)
    return result


def _check(new_model: Model, graph: ChannelGraph, kept: np.ndarray, arrays) -> None:
    """The rewritten cfg must give every layer the channels and arrays made here."""
    for entry, layer in zip(graph.layers, new_model.layers):
        if len(entry.output) and layer.output[0] != int(kept[entry.output].sum()):
            raise RuntimeError(f"slim: layer {layer.index} has {layer.output[0]} channels in the new cfg, "
                               f"expected {int(kept[entry.output].sum())}")
        for param in layer.params:
            if arrays[layer.index, param.name].size != param.count:
                raise RuntimeError(f"slim: layer {layer.index} {param.name}: {arrays[layer.index, param.name].size}"
                                   f" values for {param.count} in the new cfg")


def _write(wf: WeightsFile, new_model: Model, arrays, target: Path, text: str) -> None:
    with open(wf.path, "rb") as fp:
        fp.seek(wf.payload_end)
        trailing = fp.read()
    with atomic_path(target) as weights_tmp, atomic_path(cfg_beside(target)) as cfg_tmp:
        with open(weights_tmp, "wb") as fp:
            fp.write(wf.header.to_bytes())
            for layer in new_model.layers:
                for param in layer.params:
                    fp.write(np.ascontiguousarray(arrays[layer.index, param.name], FLOAT).tobytes())
            fp.write(trailing)
        cfg_tmp.write_text(text, encoding="utf-8", errors="surrogateescape")


def _reasons(graph: ChannelGraph, keep: np.ndarray) -> dict[int, str]:
    """Why each convolution channel that could not go had to stay."""
    roots = graph.classes()
    by_root: dict[int, str] = {}
    for node, why in graph.frozen.items():
        by_root.setdefault(int(roots[node]), why)
    for node in np.flatnonzero(keep).tolist():
        by_root.setdefault(int(roots[node]), "excluded")
    for node in np.flatnonzero(~graph.rankable & (graph.node_layer >= 0)).tolist():
        entry = graph.layers[graph.node_layer[node]]
        if entry.role == "conv":
            by_root.setdefault(int(roots[node]), f"not ranked: layer {entry.index} has no batch norm"
                               if entry.activation in ACTIVATIONS else
                               f"not ranked: layer {entry.index} activation={entry.activation}")
    reasons = {}
    for entry in graph.layers:
        if entry.role == "conv":
            for node in entry.output.tolist():
                why = graph.frozen.get(node) or by_root.get(int(roots[node]))
                if why:
                    reasons[node] = why
    return reasons


def _rows(model: Model, new_model: Model, graph: ChannelGraph, reasons: dict[int, str]) -> list[SlimRow]:
    rows = []
    for old, new, entry in zip(model.layers, new_model.layers, graph.layers):
        note = ""
        if entry.role == "conv":
            held = sorted({reasons[n] for n in entry.output.tolist() if n in reasons})
            if held:
                count = sum(n in reasons for n in entry.output.tolist())
                note = f"{count} kept: {held[0]}" + (f" (+{len(held) - 1} more reasons)" if len(held) > 1 else "")
        elif entry.role == "frozen":
            note = entry.note
        rows.append(SlimRow(old.index, old.type, old.output[0], new.output[0], old.param_count, new.param_count,
                            old.flops / 1e9, new.flops / 1e9, note))
    return rows


def _notes(graph: ChannelGraph, reasons: dict[int, str]) -> list[str]:
    """The reasons convolution channels stayed, with the layers they hold."""
    by_reason: dict[str, set[int]] = {}
    for node, why in reasons.items():
        by_reason.setdefault(why, set()).add(int(graph.node_layer[node]))
    return sorted(f"{why}: keeps channels of layer{'s' if len(layers) > 1 else ''} "
                  f"{', '.join(map(str, sorted(layers)))}" for why, layers in by_reason.items())


def table(result: SlimResult) -> str:
    """The report as text (one row per layer whose numbers change, or with a note)."""
    from ..reports import render_table
    headers = ["layer", "type", "channels", "params", "BFLOPs", "note"]
    rows = []
    for r in result.rows:
        if (r.channels_before, r.params_before) == (r.channels_after, r.params_after) and not r.note:
            continue
        channels = f"{r.channels_before} -> {r.channels_after}" if r.channels_before else ""
        rows.append([str(r.index), r.type, channels, f"{r.params_before:,} -> {r.params_after:,}",
                     f"{r.bflops_before:.3f} -> {r.bflops_after:.3f}" if r.bflops_before else "", r.note])
    t = result.totals
    rows.append(["total", "", f"-{result.removed} of {result.prunable} prunable",
                 f"{t['params_before']:,} -> {t['params_after']:,}",
                 f"{t['bflops_before']:.3f} -> {t['bflops_after']:.3f}", f"FLOPs -{t['flops_removed']:.1%}"])
    where = "dry run, nothing written" if result.output is None else f"wrote {result.output} and {result.cfg}"
    rule = {"gamma-threshold": f"|gamma| < {result.value:g}",
            "percent": f"{result.value:g} of the prunable channels (|gamma| < {result.threshold:.4g})",
            "target-flops": f"FLOPs -{result.value:g} (|gamma| up to {result.threshold:.4g})"}[result.mode]
    head = f"{result.source}: slim {rule}, fork {result.fork}; {where}"
    return "\n".join([head, render_table(headers, rows, "<<")] + [f"note: {n}" for n in result.notes])
