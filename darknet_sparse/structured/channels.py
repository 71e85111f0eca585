"""Which convolution produces each channel of every layer: the channel graph.

Removing a filter of a convolution removes one channel from its output and
from every tensor that channel travels into.  This module follows channels
through the cfg (no weights needed) and gives:

- one *node* per output channel of each convolution (the only layers whose
  channels can go) and, for every layer, the node behind each channel of its
  input and of its output;
- *classes*: nodes that must go together, because a ``[shortcut]`` adds them
  channel by channel (every convolution a chain of shortcuts sums shares one
  mask) or because a depthwise convolution ties output ``k`` to input ``k``;
- *rankable* nodes: channels of a batch-normalised convolution whose
  activation acts on each value alone (nothing ranks the others, so they stay);
- *frozen* nodes, which stay, each with the reason: channels that reach a
  detection head, and channels that reach a layer type or option this module
  cannot follow (``[reorg]``, ``[local]``, ``[sam]``, ``[softmax]``,
  ``share_index`` ...), which is frozen rather than guessed at;
- *equal-count blocks*: node lists cut into equal blocks that must keep the
  same number of channels each: the input and the output of a grouped
  convolution, and every input of an AlexeyAB ``[route]`` with ``groups``
  (which takes slice ``group_id`` of each input).

How layers pass channels on (both forks): ``[maxpool]``, ``[avgpool]``,
``[upsample]``, ``[dropout]`` and ``[activation]`` act on each channel alone;
``[route]`` concatenates its inputs; ``[shortcut]`` adds channel ``k`` of
each ``from`` layer to channel ``k`` of its input for ``k`` below the smaller
channel count (Darknet's ``minc``) and passes the rest of its input on;
``[connected]`` reads ``h*w`` columns per input channel.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..format.layout import DETECTION_TYPES, Layer, Model

#: Darknet's element-wise activations, as functions of float64 arrays.  A
#: convolution with any other activation (``normalize_channels`` mixes
#: channels; the rare piecewise ones are not modelled) is not ranked; a
#: ``[shortcut]`` or ``[activation]`` layer with one is frozen.
ACTIVATIONS = {
    "linear": lambda x: x,
    "leaky": lambda x: np.where(x > 0, x, 0.1 * x),
    "relu": lambda x: np.maximum(x, 0.0),
    "relie": lambda x: np.where(x > 0, x, 0.01 * x),
    "ramp": lambda x: x * (x > 0) + 0.1 * x,
    "logistic": lambda x: 1 / (1 + np.exp(-x)),
    "loggy": lambda x: 2 / (1 + np.exp(-x)) - 1,
    "tanh": np.tanh,
    "elu": lambda x: np.where(x >= 0, x, np.expm1(x)),
    "selu": lambda x: np.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * np.expm1(x)),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "swish": lambda x: x / (1 + np.exp(-x)),
    "mish": lambda x: x * np.tanh(np.where(x > 20, x, np.where(x < -20, np.exp(x), np.log1p(np.exp(x))))),
}

#: Layer types that act on every channel alone and keep the channel order.
PASS_THROUGH = ("maxpool", "avgpool", "upsample", "dropout", "activation")
#: Layers whose input channels are a fixed format: the detection heads and iseg.
HEADS = DETECTION_TYPES + ("iseg",)
#: Convolution options this module does not follow: the layer is frozen.
_CONV_OPTIONS_FROZEN = ("numload", "dontload", "dontloadscales", "flipped", "binary", "xnor", "antialiasing",
                        "share_index", "coordconv", "assisted_excitation", "deform")


@dataclass
class LayerChannels:
    """How one layer's channels relate to nodes.

    ``input``/``output`` hold the node behind each channel (int arrays,
    empty for flat tensors).  ``role`` is ``conv``, ``connected``,
    ``pass``, ``route``, ``shortcut`` or ``frozen``.
    """

    index: int
    role: str
    input: np.ndarray
    output: np.ndarray
    groups: int = 1
    depthwise: bool = False
    #: route: (source layer, first channel, end) of each piece, in order.
    pieces: list[tuple[int, int, int]] = field(default_factory=list)
    #: shortcut: the ``from`` layers.
    sources: list[int] = field(default_factory=list)
    activation: str = "linear"
    alpha: float = 1.0  # pjreddie shortcut: out = alpha*input + beta*from
    beta: float = 1.0
    scale: float = 1.0  # upsample
    note: str = ""


@dataclass
class ChannelGraph:
    """Nodes, classes, frozen nodes and equal-count blocks of one model."""

    model: Model
    layers: list[LayerChannels]
    node_layer: np.ndarray  # producing layer of each node (-1: the network input)
    node_channel: np.ndarray  # channel index within its producer
    rankable: np.ndarray  # bool: a channel of a batch-normalised convolution with a modelled activation
    frozen: dict[int, str]  # node -> why it must stay
    blocks: list[tuple[np.ndarray, int, str]]  # (nodes, equal blocks, why)
    parent: np.ndarray  # union-find forest; see :meth:`classes`

    def find(self, node: int) -> int:
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def classes(self) -> np.ndarray:
        """The class (its root node) of every node."""
        return np.array([self.find(n) for n in range(len(self.parent))], dtype=np.int64)

    def producer(self, layer: int) -> np.ndarray:
        """The nodes of one convolution's output channels, in order."""
        return np.flatnonzero(self.node_layer == layer)


class _Builder:
    def __init__(self, model: Model):
        self.model = model
        self.node_layer: list[int] = []
        self.node_channel: list[int] = []
        self.rankable: list[bool] = []
        self.frozen: dict[int, str] = {}
        self.blocks: list[tuple[np.ndarray, int, str]] = []
        self.parent: list[int] = []
        self.layers: list[LayerChannels] = []

    def new_nodes(self, layer: int, count: int, rankable: bool) -> np.ndarray:
        start = len(self.parent)
        self.node_layer += [layer] * count
        self.node_channel += list(range(count))
        self.rankable += [rankable] * count
        self.parent += list(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def freeze(self, nodes: np.ndarray, why: str) -> None:
        for node in nodes.tolist():
            self.frozen.setdefault(node, why)

    def union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def _find(self, node: int) -> int:
        while self.parent[node] != node:
            node = self.parent[node]
        return node


def _where(layer: Layer) -> str:
    return f"layer {layer.index} [{layer.section.type}]"


def channel_graph(model: Model) -> ChannelGraph:
    """Follow every channel of ``model`` from the convolution that makes it."""
    b = _Builder(model)
    first = b.new_nodes(-1, model.layers[0].input[0] if model.layers else 0, False)
    b.freeze(first, "the network input")
    shared = {layer.shares for layer in model.layers if layer.shares is not None}
    outputs: list[np.ndarray] = []
    current = first
    empty = np.zeros(0, np.int64)
    for layer in model.layers:
        c_in = layer.input[0]
        inp = current if len(current) == c_in else empty
        if len(current) and not len(inp):  # flat tensor: nothing to follow
            b.freeze(current, f"reaches {_where(layer)}, which reads it flat")
        entry = _layer(b, layer, inp, outputs, shared)
        b.layers.append(entry)
        outputs.append(entry.output)
        current = entry.output
    return ChannelGraph(model, b.layers, np.array(b.node_layer, np.int64), np.array(b.node_channel, np.int64),
                        np.array(b.rankable, bool), b.frozen, b.blocks, np.array(b.parent, np.int64))


def _frozen(b: _Builder, layer: Layer, inp: np.ndarray, why: str) -> LayerChannels:
    """A layer this module does not follow: what reaches it stays, and its
    output channels are new frozen nodes."""
    b.freeze(inp, why)
    out = b.new_nodes(layer.index, layer.output[0], False)
    b.freeze(out, why)
    return LayerChannels(layer.index, "frozen", inp, out, note=why)


def _layer(b: _Builder, layer: Layer, inp: np.ndarray, outputs: list[np.ndarray], shared: set) -> LayerChannels:
    s, kind = layer.section, layer.type
    where = _where(layer)
    if kind == "convolutional":
        return _conv(b, layer, inp, shared)
    if kind == "connected":
        c, h, w = layer.input
        weights = [p for p in layer.params if p.role == "weights"]
        if len(inp) and weights and c * h * w == weights[0].shape[1]:
            out = b.new_nodes(layer.index, layer.output[0], False)
            b.freeze(out, f"output of {where} (not ranked)")
            return LayerChannels(layer.index, "connected", inp, out)
        return _frozen(b, layer, inp, f"reaches {where}, which reads it flat")
    if kind in PASS_THROUGH:
        if kind == "maxpool" and b.model.fork == "alexeyab" and (
                s.get_int("maxpool_depth", 0) or s.get_int("antialiasing", 0)):
            return _frozen(b, layer, inp, f"reaches {where} (maxpool_depth or antialiasing)")
        if kind == "upsample" and s.get_int("stride", 2) < 0:
            return _frozen(b, layer, inp, f"reaches {where} (reverse upsample)")
        activation = s.get_str("activation", "linear") if kind == "activation" else "linear"
        if activation not in ACTIVATIONS:
            return _frozen(b, layer, inp, f"reaches {where} (activation={activation})")
        scale = s.get_float("scale", 1.0) if kind == "upsample" else 1.0
        return LayerChannels(layer.index, "pass", inp, inp, activation=activation, scale=scale)
    if kind == "route":
        return _route(b, layer, outputs)
    if kind == "shortcut":
        return _shortcut(b, layer, inp, outputs)
    if kind in HEADS:
        return _frozen(b, layer, inp, f"feeds the head {where}")
    why = f"reaches {where}, a layer type slim cannot follow"
    for key in ("from", "layers"):  # [sam], [scale_channels] ... read other layers too
        for value in s.ints(key) if s.has(key) else []:
            source = value + layer.index if value < 0 else value
            if 0 <= source < len(outputs):
                b.freeze(outputs[source], why)
    return _frozen(b, layer, inp, why)


def _conv(b: _Builder, layer: Layer, inp: np.ndarray, shared: set) -> LayerChannels:
    s, where = layer.section, _where(layer)
    n, c = layer.output[0], layer.input[0]
    groups = 1
    weights = [p for p in layer.params if p.role == "weights"]
    if weights:
        groups = c // weights[0].shape[1]
    unknown = [key for key in _CONV_OPTIONS_FROZEN if s.get_int(key, 0)] if weights else ["share_index"]
    if layer.index in shared:
        unknown.append("its weights are shared")
    if unknown or not len(inp):
        return _frozen(b, layer, inp, f"reaches {where} ({', '.join(unknown) or 'no image input'})")
    activation = s.get_str("activation", "logistic")
    bn = any(p.role == "scales" for p in layer.params)
    out = b.new_nodes(layer.index, n, bn and activation in ACTIVATIONS)  # the others are not ranked
    entry = LayerChannels(layer.index, "conv", inp, out, groups=groups, activation=activation)
    if groups > 1 and groups == c == n:
        entry.depthwise = True
        for a, z in zip(inp.tolist(), out.tolist()):
            b.union(a, z)
    elif groups > 1:
        b.blocks.append((inp, groups, f"input of the grouped {where}"))
        b.blocks.append((out, groups, f"output of the grouped {where}"))
    return entry


def _route(b: _Builder, layer: Layer, outputs: list[np.ndarray]) -> LayerChannels:
    s, where = layer.section, _where(layer)
    count = layer.index
    sources = [v + count if v < 0 else v for v in s.ints("layers")]
    groups = s.get_int("groups", 1) if b.model.fork == "alexeyab" else 1
    group_id = s.get_int("group_id", 0) if groups > 1 else 0
    if not layer.output[0]:  # inputs of different sizes: Darknet leaves the dims at 0
        for source in sources:
            b.freeze(outputs[source], f"reaches {where}, whose inputs differ in size")
        return LayerChannels(layer.index, "frozen", np.zeros(0, np.int64), np.zeros(0, np.int64))
    if any(len(outputs[source]) % groups for source in sources):
        why = f"reaches {where}, whose groups={groups} does not divide it into whole channels"
        for source in sources:
            b.freeze(outputs[source], why)
        out = b.new_nodes(layer.index, layer.output[0], False)
        b.freeze(out, why)
        return LayerChannels(layer.index, "frozen", out, out, note=why)
    pieces, nodes = [], []
    for source in sources:
        src = outputs[source]
        size = len(src) // groups
        if groups > 1:
            b.blocks.append((src, groups, f"sliced by {where} (groups={groups})"))
        pieces.append((source, group_id * size, (group_id + 1) * size))
        nodes.append(src[group_id * size:(group_id + 1) * size])
    out = np.concatenate(nodes) if nodes else np.zeros(0, np.int64)
    return LayerChannels(layer.index, "route", out, out, pieces=pieces)


def _shortcut(b: _Builder, layer: Layer, inp: np.ndarray, outputs: list[np.ndarray]) -> LayerChannels:
    s, where = layer.section, _where(layer)
    sources = [v + layer.index if v < 0 else v for v in s.ints("from")]
    activation = s.get_str("activation", "linear")
    pj = b.model.fork == "pjreddie"
    problem = None
    if not pj and s.get_str("weights_type", "none") != "none":
        problem = "weights_type"
    elif activation not in ACTIVATIONS:
        problem = f"activation={activation}"
    elif not pj and any(b.model.layers[src].output[1:] != layer.input[1:] for src in sources):
        problem = "inputs of different sizes"
    if problem:
        for src in sources:
            b.freeze(outputs[src], f"reaches {where} ({problem})")
        b.freeze(inp, f"reaches {where} ({problem})")
        return LayerChannels(layer.index, "frozen", inp, inp, sources=sources, note=problem)
    for src in sources:
        for a, z in zip(inp.tolist(), outputs[src].tolist()):  # zip stops at the smaller count
            b.union(a, z)
    alpha = s.get_float("alpha", 1.0) if pj else 1.0
    beta = s.get_float("beta", 1.0) if pj else 1.0
    return LayerChannels(layer.index, "shortcut", inp, inp, sources=sources, activation=activation,
                         alpha=alpha, beta=beta)
