"""cfg sections -> layer shapes, the parameter-array table, and FLOPs, per fork.

A ``.weights`` file carries no layout of its own: the cfg decides where every
float belongs.  This module replays Darknet's shape propagation
(``parse_network_cfg``: each layer's input is the previous layer's output)
and gives every layer an ordered tuple of :class:`Param` in the order the
fork's ``save_weights_upto`` writes them.  The reader, the writer, the
pruning policies and the FLOPs report all use this one table; each count is
computed here and nowhere else.

Two forks are modelled (``docs/format.md`` lists both layouts): ``pjreddie``
(upstream Darknet) and ``alexeyab``.  They agree on convolutional and
connected layers and disagree on ``[batchnorm]`` (3 or 4 arrays), the matrix
order of ``[lstm]`` and ``[gru]``, the cfg keys of ``[rnn]`` and ``[crnn]``,
and on which sections exist at all.

FLOPs are counted as Darknet prints BFLOPs for a convolution:
``2 * filters * size^2 * c/groups * out_h * out_w`` for one image, i.e. two
FLOPs per multiply-add of a weight.  Each weight array records how many
multiply-adds one of its weights takes part in per image (``macs``), so the
effective FLOPs of a pruned layer are ``2 * sum(nonzero * macs)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .cfg import Section
from ..errors import CfgError

FORKS = ("pjreddie", "alexeyab")
#: Each fork as a report names its Darknet.
FORK_NAMES = {"pjreddie": "pjreddie's", "alexeyab": "AlexeyAB's"}
#: The layer types whose outputs are a detector's results (its heads):
#: pjreddie's three, and AlexeyAB's Gaussian_yolo.
DETECTION_TYPES = ("yolo", "region", "detection", "Gaussian_yolo")

#: Roles of parameter arrays.  Only ``weights`` is pruned by default;
#: ``shortcut`` and ``implicit`` only when asked; the rest never.
PRUNABLE_ROLES = ("weights",)
OPTIONAL_PRUNABLE_ROLES = ("shortcut", "implicit")
BN_ROLES = ("scales", "rolling_mean", "rolling_variance")


@dataclass(frozen=True)
class Param:
    """One float32 array of a layer, as it lies in the file."""

    name: str
    role: str
    count: int
    macs: int = 0  # multiply-adds each element takes part in, per image
    shape: tuple[int, ...] = ()  # in-memory shape where it matters (weights)


@dataclass(frozen=True)
class Layer:
    """One cfg section after ``[net]``, with the shapes Darknet gives it."""

    index: int
    type: str
    section: Section
    input: tuple[int, int, int]  # (c, h, w) as Darknet passes them on
    output: tuple[int, int, int]
    outputs: int  # flattened output size (``l.outputs``)
    params: tuple[Param, ...] = ()
    shares: int | None = None  # AlexeyAB share_index: weights live in that layer
    #: Arrays a shared layer computes with but does not store (they are layer
    #: ``shares``'s); their ``macs`` are this layer's.
    borrowed: tuple[Param, ...] = ()
    #: (c, h, w) and ``outputs`` handed to the next layer when they are not
    #: this layer's own: AlexeyAB's antialiasing blur sublayer.  Routes and
    #: shortcuts that name this layer still see ``output``, as in Darknet.
    passes: tuple[tuple[int, int, int], int] | None = None

    @property
    def param_count(self) -> int:
        return sum(p.count for p in self.params)

    @property
    def flops(self) -> int:
        """Dense FLOPs for one image (2 per multiply-add of a weight),
        borrowed weights included."""
        return 2 * sum(p.count * p.macs for p in self.params + self.borrowed)

    def prunable(self, roles: tuple[str, ...] = PRUNABLE_ROLES) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.role in roles)


@dataclass
class Model:
    """The whole network: ``[net]`` options and every layer, for one fork."""

    fork: str
    net: Section
    layers: list[Layer]
    path: str = "<cfg>"
    notes: list[str] = field(default_factory=list)

    @property
    def param_count(self) -> int:
        return sum(layer.param_count for layer in self.layers)

    @property
    def flops(self) -> int:
        return sum(layer.flops for layer in self.layers)


# --------------------------------------------------------------------------
# Building blocks shared by several layer types.


def _conv_block(prefix: str, c: int, n: int, size: int, groups: int, bn: bool,
                out_hw: int, load_scales: bool = True) -> tuple[Param, ...]:
    """biases[n], the BN triple if ``bn``, then weights[(c/groups)*n*size^2]."""
    params = [Param(prefix + "biases", "biases", n)]
    if bn and load_scales:
        params += [Param(prefix + role, role, n) for role in BN_ROLES]
    shape = (n, c // groups, size, size)
    params.append(Param(prefix + "weights", "weights", n * (c // groups) * size * size, out_hw, shape))
    return tuple(params)


def _connected_block(prefix: str, inputs: int, outputs: int, bn: bool,
                     load_scales: bool = True) -> tuple[Param, ...]:
    """biases[out], weights[out*in], then the BN triple if ``bn``."""
    params = [Param(prefix + "biases", "biases", outputs),
              Param(prefix + "weights", "weights", inputs * outputs, 1, (outputs, inputs))]
    if bn and load_scales:
        params += [Param(prefix + role, role, outputs) for role in BN_ROLES]
    return tuple(params)


def _relative(section: Section, index: int, value: int, count: int, key: str) -> int:
    """Resolve a ``layers=``/``from=`` entry: negative is relative to ``index``."""
    target = index + value if value < 0 else value
    if not 0 <= target < count:
        raise section.error(f"{key}={value} points to layer {target}, outside 0..{count - 1}", key)
    return target


def _positive(section: Section, key: str, default: int) -> int:
    value = section.get_int(key, default)
    if value <= 0:
        raise section.error(f"{key}={value} must be positive", key)
    return value


# --------------------------------------------------------------------------
# Per-type rules.  Each takes the section and the context and returns the
# output shape, the flattened output size and the parameter arrays.


@dataclass
class _Context:
    fork: str
    index: int
    c: int
    h: int
    w: int
    inputs: int
    layers: list[Layer]
    net: Section


_Result = tuple[tuple[int, int, int], int, tuple[Param, ...]]


def _groups(s: Section, ctx: _Context, *channels: int) -> int:
    """``groups`` of a convolution, which must divide every channel count
    given; AlexeyAB's ``make_convolutional_layer`` turns it off for ``xnor``
    and clamps it to at least 1."""
    groups = s.get_int("groups", 1)
    if ctx.fork == "alexeyab":
        groups = 1 if s.get_int("xnor", 0) or groups < 1 else groups
    elif groups < 1:
        raise s.error(f"groups={groups} must be positive", "groups")
    if any(c % groups for c in channels):
        raise s.error(f"groups={groups} does not divide the channel counts {channels}", "groups")
    return groups


def _conv_geometry(s: Section, ctx: _Context) -> tuple[int, int, int, int]:
    """(filters, size, groups, padding) of a convolution."""
    n = _positive(s, "filters", 1)
    size = _positive(s, "size", 1)
    padding = conv_padding(s, size)
    return n, size, _groups(s, ctx, ctx.c, n), padding


def _out_size(section: Section, extent: int, padding: int, size: int, stride: int, what: str) -> int:
    out = (extent + 2 * padding - size) // stride + 1
    if out <= 0:
        raise section.error(f"{what} output size {out} from input {extent}, size {size}, stride {stride}")
    return out


def conv_padding(s: Section, size: int) -> int:
    """The zero padding of a windowed layer of kernel ``size``, as both
    forks read it: ``pad=1`` means ``size // 2`` whatever ``padding`` says."""
    return size // 2 if s.get_int("pad", 0) else s.get_int("padding", 0)


def conv_strides(s: Section, fork: str) -> tuple[int, int]:
    """(stride_x, stride_y): AlexeyAB reads ``stride_x``/``stride_y`` and
    falls back to ``stride`` for either one missing or below 1."""
    stride = _positive(s, "stride", 1)
    if fork == "pjreddie":
        return stride, stride
    stride_x, stride_y = s.get_int("stride_x", -1), s.get_int("stride_y", -1)
    return stride_x if stride_x >= 1 else stride, stride_y if stride_y >= 1 else stride


def _antialiasing(s: Section, ctx: _Context) -> int:
    """AlexeyAB ``antialiasing``: the layer runs with stride 1 and a fixed
    blur sublayer applies the stride (see :func:`_blurred`)."""
    return s.get_int("antialiasing", 0) if ctx.fork == "alexeyab" else 0


def _blurred(s: Section, ctx: _Context, output: tuple[int, int, int]) -> tuple[tuple[int, int, int], int]:
    """Shape after the antialiasing blur (3x3 pad 1, or 2x2 pad 0 for
    ``antialiasing=2``) with the layer's configured strides."""
    stride_x, stride_y = conv_strides(s, ctx.fork)
    blur, pad = (2, 0) if _antialiasing(s, ctx) == 2 else (3, 1)
    c, h, w = output
    h, w = (h + 2 * pad - blur) // stride_y + 1, (w + 2 * pad - blur) // stride_x + 1
    return (c, h, w), c * h * w


def _convolutional(s: Section, ctx: _Context) -> _Result:
    n, size, groups, padding = _conv_geometry(s, ctx)
    stride_x, stride_y = (1, 1) if _antialiasing(s, ctx) else conv_strides(s, ctx.fork)
    out_h = _out_size(s, ctx.h, padding, size, stride_y, "convolution")
    out_w = _out_size(s, ctx.w, padding, size, stride_x, "convolution")
    bn = s.get_int("batch_normalize", 0) != 0 or (ctx.fork == "alexeyab" and s.get_int("cbn", 0) != 0)
    load_scales = not s.get_int("dontloadscales", 0)
    # pjreddie's loader reads only the first numload filters (0 = all).
    filters = (ctx.fork == "pjreddie" and s.get_int("numload", 0)) or n
    params = _conv_block("", ctx.c, filters, size, groups, bn, out_h * out_w, load_scales)
    return (n, out_h, out_w), n * out_h * out_w, params


def _deconvolutional(s: Section, ctx: _Context) -> _Result:
    n = _positive(s, "filters", 1)
    size = _positive(s, "size", 1)
    stride = _positive(s, "stride", 1)
    padding = conv_padding(s, size)
    out_h = (ctx.h - 1) * stride + size - 2 * padding
    out_w = (ctx.w - 1) * stride + size - 2 * padding
    bn = s.get_int("batch_normalize", 0) != 0
    # Each weight of a transposed convolution is used once per input pixel.
    params = _conv_block("", ctx.c, n, size, 1, bn, ctx.h * ctx.w, not s.get_int("dontloadscales", 0))
    return (n, out_h, out_w), n * out_h * out_w, params


def _connected(s: Section, ctx: _Context) -> _Result:
    out = _positive(s, "output", 1)
    bn = s.get_int("batch_normalize", 0) != 0
    return (out, 1, 1), out, _connected_block("", ctx.inputs, out, bn, not s.get_int("dontloadscales", 0))


def _local(s: Section, ctx: _Context) -> _Result:
    n = _positive(s, "filters", 1)
    size = _positive(s, "size", 1)
    stride = _positive(s, "stride", 1)
    pad = s.get_int("pad", 0)
    out_h = ((ctx.h - 1) if pad else (ctx.h - size)) // stride + 1
    out_w = ((ctx.w - 1) if pad else (ctx.w - size)) // stride + 1
    if out_h <= 0 or out_w <= 0:
        raise s.error(f"local output size {out_h}x{out_w} is empty")
    locations = out_h * out_w
    params = (Param("biases", "biases", locations * n),
              Param("weights", "weights", ctx.c * n * size * size * locations, 1))
    return (n, out_h, out_w), n * locations, params


def _batchnorm(s: Section, ctx: _Context) -> _Result:
    roles = (("biases",) if ctx.fork == "alexeyab" else ()) + BN_ROLES
    params = tuple(Param(role, role, ctx.c) for role in roles)
    return (ctx.c, ctx.h, ctx.w), ctx.inputs, params


def _pool(s: Section, ctx: _Context) -> _Result:
    """[maxpool] and AlexeyAB's [local_avgpool] (which ignores
    ``maxpool_depth`` and ``antialiasing``)."""
    stride = _positive(s, "stride", 1)
    stride_x = stride_y = stride
    if ctx.fork == "alexeyab":
        stride_x, stride_y = s.get_int("stride_x", stride), s.get_int("stride_y", stride)
        if stride_x < 1 or stride_y < 1:
            raise s.error(f"stride_x={stride_x}, stride_y={stride_y} must be positive")
    size = _positive(s, "size", stride)
    padding = s.get_int("padding", size - 1)
    if s.type in ("max", "maxpool") and _antialiasing(s, ctx):
        stride_x = stride_y = 1
    if s.type in ("max", "maxpool") and ctx.fork == "alexeyab" and s.get_int("maxpool_depth", 0):
        c = _positive(s, "out_channels", 1)
        return (c, ctx.h, ctx.w), c * ctx.h * ctx.w, ()
    out_h = (ctx.h + padding - size) // stride_y + 1
    out_w = (ctx.w + padding - size) // stride_x + 1
    if out_h <= 0 or out_w <= 0:
        raise s.error(f"pooling output size {out_h}x{out_w} is empty")
    return (ctx.c, out_h, out_w), ctx.c * out_h * out_w, ()


def _avgpool(s: Section, ctx: _Context) -> _Result:
    return (ctx.c, 1, 1), ctx.c, ()


def _same(s: Section, ctx: _Context) -> _Result:
    """Layers whose output has the input's shape."""
    return (ctx.c, ctx.h, ctx.w), ctx.inputs, ()


def _flat(s: Section, ctx: _Context) -> _Result:
    """Layers that keep ``outputs`` but leave Darknet's out dims at zero."""
    return (0, 0, 0), ctx.inputs, ()


def _upsample(s: Section, ctx: _Context) -> _Result:
    stride = s.get_int("stride", 2)
    if stride == 0:
        raise s.error("stride=0 is not allowed", "stride")
    if stride > 0:
        h, w = ctx.h * stride, ctx.w * stride
    else:
        h, w = ctx.h // -stride, ctx.w // -stride
    return (ctx.c, h, w), ctx.c * h * w, ()


def _reorg(s: Section, ctx: _Context) -> _Result:
    stride = _positive(s, "stride", 1)
    if ctx.fork == "pjreddie" and s.get_int("extra", 0):
        return (0, 0, 0), ctx.inputs + s.get_int("extra", 0), ()
    if s.get_int("reverse", 0):
        c, h, w = ctx.c // (stride * stride), ctx.h * stride, ctx.w * stride
    else:
        c, h, w = ctx.c * stride * stride, ctx.h // stride, ctx.w // stride
    return (c, h, w), c * h * w, ()


def _route(s: Section, ctx: _Context) -> _Result:
    sources = [ctx.layers[_relative(s, ctx.index, v, ctx.index, "layers")] for v in s.ints("layers")]
    first = sources[0]
    c, h, w = first.output
    outputs = sum(src.outputs for src in sources)
    for src in sources[1:]:
        if src.output[1:] == first.output[1:]:
            c += src.output[0]
        else:
            c = h = w = 0
    if ctx.fork == "alexeyab":
        groups = _positive(s, "groups", 1)
        group_id = s.get_int("group_id", 0)
        if not 0 <= group_id < groups:
            raise s.error(f"group_id={group_id} outside 0..{groups - 1}", "group_id")
        c //= groups
        outputs //= groups
    return (c, h, w), outputs, ()


def _shortcut(s: Section, ctx: _Context) -> _Result:
    sources = [_relative(s, ctx.index, v, ctx.index, "from") for v in s.ints("from")]
    if ctx.fork == "pjreddie" and len(sources) != 1:
        raise s.error("pjreddie's [shortcut] takes exactly one from= layer", "from")
    params: tuple[Param, ...] = ()
    if ctx.fork == "alexeyab":
        kind = s.get_str("weights_type", "none")
        per = {"none": 0, "per_feature": 1, "per_layer": 1, "per_channel": ctx.c}
        if kind not in per:
            raise s.error(f"weights_type={kind} is not one of {', '.join(per)}", "weights_type")
        if per[kind]:
            params = (Param("weights", "shortcut", (len(sources) + 1) * per[kind]),)
    return (ctx.c, ctx.h, ctx.w), ctx.inputs, params


def _from_layer_shape(s: Section, ctx: _Context) -> _Result:
    """AlexeyAB [sam] and [scale_channels]: the shape of the ``from`` layer."""
    source = ctx.layers[_relative(s, ctx.index, s.get_int("from", None) if s.has("from") else -1,
                                  ctx.index, "from")]
    return source.output, source.outputs, ()


def _crop(s: Section, ctx: _Context) -> _Result:
    h, w = s.get_int("crop_height", 1), s.get_int("crop_width", 1)
    return (ctx.c, h, w), ctx.c * h * w, ()


def _head(s: Section, ctx: _Context, c: int, what: str) -> _Result:
    """A detection head keeps its input's shape, which must hold exactly
    ``c`` channels: Darknet asserts (pjreddie) or exits (AlexeyAB) otherwise."""
    if c * ctx.h * ctx.w != ctx.inputs:
        raise s.error(f"needs {c} input channels ({what}) but the layer before gives "
                      f"{ctx.c}x{ctx.h}x{ctx.w}: its filters= does not match")
    return (c, ctx.h, ctx.w), ctx.inputs, ()


def _yolo(s: Section, ctx: _Context) -> _Result:
    """[yolo]/[Gaussian_yolo]: 4 (or 8) coords + 1 + classes per anchor of
    ``mask`` (all ``num`` anchors without a mask)."""
    classes = s.get_int("classes", 20)
    mask = s.get_str("mask")
    anchors = len(mask.split("#")[0].split(",")) if mask else s.get_int("num", 1)
    coords = 8 if s.type == "Gaussian_yolo" else 4
    return _head(s, ctx, anchors * (coords + 1 + classes), f"{anchors} anchors x ({coords}+1+{classes})")


def _region(s: Section, ctx: _Context) -> _Result:
    num, coords, classes = s.get_int("num", 1), s.get_int("coords", 4), s.get_int("classes", 20)
    return _head(s, ctx, num * (coords + 1 + classes), f"num={num} x ({coords}+1+{classes})")


def _iseg(s: Section, ctx: _Context) -> _Result:
    classes, ids = s.get_int("classes", 20), s.get_int("ids", 32)
    return _head(s, ctx, classes + ids, f"classes={classes} + ids={ids}")


def _detection(s: Section, ctx: _Context) -> _Result:
    """YOLOv1's [detection]: side^2 cells of num boxes and the classes."""
    side, num = s.get_int("side", 7), s.get_int("num", 1)
    coords, classes = s.get_int("coords", 1), s.get_int("classes", 1)
    need = side * side * ((1 + coords) * num + classes)
    if need != ctx.inputs:
        raise s.error(f"needs {need} inputs (side={side}, num={num}, coords={coords}, classes={classes}) "
                      f"but the layer before gives {ctx.inputs}")
    return _flat(s, ctx)


def _rnn(s: Section, ctx: _Context) -> _Result:
    out = _positive(s, "output", 1)
    hidden = _positive(s, "hidden", 1) if ctx.fork == "alexeyab" else out
    bn = s.get_int("batch_normalize", 0) != 0
    params = (_connected_block("input_layer.", ctx.inputs, hidden, bn)
              + _connected_block("self_layer.", hidden, hidden, bn)
              + _connected_block("output_layer.", hidden, out, bn))
    return (0, 0, 0) if ctx.fork == "pjreddie" else (out, 1, 1), out, params


_GRU_ORDER = {"pjreddie": ("wz", "wr", "wh", "uz", "ur", "uh"),
              "alexeyab": ("uz", "ur", "uh", "wz", "wr", "wh")}
_LSTM_ORDER = {"pjreddie": ("wi", "wf", "wo", "wg", "ui", "uf", "uo", "ug"),
               "alexeyab": ("wf", "wi", "wg", "wo", "uf", "ui", "ug", "uo")}


def _gated(order: dict[str, tuple[str, ...]]) -> Callable[[Section, _Context], _Result]:
    """GRU/LSTM: connected blocks; ``u*`` read the input, ``w*`` the state."""

    def rule(s: Section, ctx: _Context) -> _Result:
        out = _positive(s, "output", 1)
        bn = s.get_int("batch_normalize", 0) != 0
        params: tuple[Param, ...] = ()
        for name in order[ctx.fork]:
            params += _connected_block(name + ".", ctx.inputs if name[0] == "u" else out, out, bn)
        return (0, 0, 0) if ctx.fork == "pjreddie" else (out, 1, 1), out, params

    return rule


def _crnn(s: Section, ctx: _Context) -> _Result:
    bn = s.get_int("batch_normalize", 0) != 0
    if ctx.fork == "pjreddie":
        out_c, hidden = s.get_int("output_filters", 1), s.get_int("hidden_filters", 1)
        size, stride, groups, padding = 3, 1, 1, 1
    else:
        out_c, hidden = _positive(s, "output", 1), _positive(s, "hidden", 1)
        size, stride = _positive(s, "size", 3), _positive(s, "stride", 1)
        groups = _groups(s, ctx, ctx.c, hidden, out_c)
        padding = conv_padding(s, size)
    out_h = _out_size(s, ctx.h, padding, size, stride, "crnn input")
    out_w = _out_size(s, ctx.w, padding, size, stride, "crnn input")
    hw = out_h * out_w
    params = (_conv_block("input_layer.", ctx.c, hidden, size, groups, bn, hw)
              + _conv_block("self_layer.", hidden, hidden, size, groups, bn, hw)
              + _conv_block("output_layer.", hidden, out_c, size, groups, bn, hw))
    if ctx.fork == "pjreddie":  # parse_crnn passes (w, h) where make_crnn_layer takes (h, w)
        out_h, out_w = out_w, out_h
    return (out_c, out_h, out_w), out_c * hw, params


def _conv_lstm(s: Section, ctx: _Context) -> _Result:
    out = _positive(s, "output", 1)
    size, stride = _positive(s, "size", 3), _positive(s, "stride", 1)
    groups = _groups(s, ctx, ctx.c, out)
    padding = conv_padding(s, size)
    bn = s.get_int("batch_normalize", 0) != 0
    out_h = _out_size(s, ctx.h, padding, size, stride, "conv_lstm input")
    out_w = _out_size(s, ctx.w, padding, size, stride, "conv_lstm input")
    hw = out_h * out_w
    blocks: list[tuple[str, int]] = []
    if s.get_int("peephole", 0):
        blocks += [("vf", out), ("vi", out), ("vo", out)]
    if s.get_int("bottleneck", 0):
        blocks.append(("wf", 2 * out))
    else:
        blocks += [("wf", out), ("wi", out), ("wg", out), ("wo", out)]
    blocks += [("uf", ctx.c), ("ui", ctx.c), ("ug", ctx.c), ("uo", ctx.c)]
    params: tuple[Param, ...] = ()
    for name, c_in in blocks:
        params += _conv_block(name + ".", c_in, out, size, groups, bn, hw)
    return (out, out_h, out_w), out * hw, params


def _history(s: Section, ctx: _Context) -> _Result:
    c = ctx.c * _positive(s, "history_size", 4)
    return (c, ctx.h, ctx.w), c * ctx.h * ctx.w, ()


def _implicit(s: Section, ctx: _Context) -> _Result:
    filters, atoms = _positive(s, "filters", 128), _positive(s, "atoms", 1)
    return (filters, atoms, 1), filters * atoms, (Param("weights", "implicit", filters * atoms),)


# Section names (and aliases) -> (canonical type, rule, forks that know it).
_BOTH = FORKS
_TYPES: dict[str, tuple[str, Callable[[Section, _Context], _Result], tuple[str, ...]]] = {
    "conv": ("convolutional", _convolutional, _BOTH),
    "convolutional": ("convolutional", _convolutional, _BOTH),
    "deconv": ("deconvolutional", _deconvolutional, ("pjreddie",)),
    "deconvolutional": ("deconvolutional", _deconvolutional, ("pjreddie",)),
    "conn": ("connected", _connected, _BOTH),
    "connected": ("connected", _connected, _BOTH),
    "local": ("local", _local, _BOTH),
    "batchnorm": ("batchnorm", _batchnorm, _BOTH),
    "max": ("maxpool", _pool, _BOTH),
    "maxpool": ("maxpool", _pool, _BOTH),
    "local_avg": ("local_avgpool", _pool, ("alexeyab",)),
    "local_avgpool": ("local_avgpool", _pool, ("alexeyab",)),
    "avg": ("avgpool", _avgpool, _BOTH),
    "avgpool": ("avgpool", _avgpool, _BOTH),
    "route": ("route", _route, _BOTH),
    "shortcut": ("shortcut", _shortcut, _BOTH),
    "upsample": ("upsample", _upsample, _BOTH),
    "reorg": ("reorg", _reorg, _BOTH),
    "reorg3d": ("reorg3d", _reorg, ("alexeyab",)),
    "yolo": ("yolo", _yolo, _BOTH),
    "Gaussian_yolo": ("Gaussian_yolo", _yolo, ("alexeyab",)),
    "region": ("region", _region, _BOTH),
    "detection": ("detection", _detection, _BOTH),
    "soft": ("softmax", _flat, _BOTH),
    "softmax": ("softmax", _flat, _BOTH),
    "cost": ("cost", _flat, _BOTH),
    "contrastive": ("contrastive", _same, ("alexeyab",)),
    "dropout": ("dropout", _same, _BOTH),
    "crop": ("crop", _crop, _BOTH),
    "activation": ("activation", _same, _BOTH),
    "logistic": ("logistic", _same, ("pjreddie",)),
    "l2norm": ("l2norm", _same, ("pjreddie",)),
    "iseg": ("iseg", _iseg, ("pjreddie",)),
    "lrn": ("normalization", _same, _BOTH),
    "normalization": ("normalization", _same, _BOTH),
    "empty": ("empty", _same, ("alexeyab",)),
    "silence": ("empty", _same, ("alexeyab",)),
    "sam": ("sam", _from_layer_shape, ("alexeyab",)),
    "scale_channels": ("scale_channels", _from_layer_shape, ("alexeyab",)),
    "rnn": ("rnn", _rnn, _BOTH),
    "gru": ("gru", _gated(_GRU_ORDER), _BOTH),
    "lstm": ("lstm", _gated(_LSTM_ORDER), _BOTH),
    "crnn": ("crnn", _crnn, _BOTH),
    "conv_lstm": ("conv_lstm", _conv_lstm, ("alexeyab",)),
    "history": ("history", _history, ("alexeyab",)),
    "implicit": ("implicit", _implicit, ("alexeyab",)),
}

#: Sections, options and activations only AlexeyAB's parser knows: a cfg
#: using any of them was written for that fork.
ALEXEYAB_SECTIONS = frozenset(k for k, (_, _, forks) in _TYPES.items() if forks == ("alexeyab",))
ALEXEYAB_OPTIONS = frozenset({
    "stride_x", "stride_y", "dilation", "antialiasing", "share_index", "weights_type",
    "weights_normalization", "group_id", "maxpool_depth", "cbn", "assisted_excitation",
    "coordconv", "sway", "rotate", "stretch", "stretch_sway", "grad_centr", "mosaic", "cutmix",
    "ema_alpha", "loss_scale", "scale_x_y", "iou_loss", "nms_kind", "beta_nms", "iou_normalizer",
    "cls_normalizer", "max_delta", "new_coords", "objectness_smooth", "label_smooth_eps",
    "train_only_bn", "dont_update", "burnin_update", "track_history_size",
})
ALEXEYAB_ACTIVATIONS = frozenset({
    "mish", "swish", "relu6", "hard_mish", "normalize_channels", "normalize_channels_softmax",
    "normalize_channels_softmax_maxval", "gelu", "sech",
})


def alexeyab_markers(sections: list[Section]) -> list[str]:
    """What in a cfg only AlexeyAB's parser understands (empty for plain cfgs)."""
    found = []
    for s in sections:
        if s.type in ALEXEYAB_SECTIONS:
            found.append(f"[{s.type}] at line {s.line}")
        for key in s.options:  # file order, so the message is stable
            if key in ALEXEYAB_OPTIONS or (s.type == "crnn" and key in ("output", "hidden")):
                found.append(f"{key}= at line {s.option_lines[key]}")
        if s.options.get("activation") in ALEXEYAB_ACTIVATIONS:
            found.append(f"activation={s.options['activation']} at line {s.option_lines['activation']}")
        if s.type == "route" and s.has("groups"):
            found.append(f"[route] groups= at line {s.option_lines['groups']}")
        if s.type == "shortcut" and "," in s.options.get("from", ""):
            found.append(f"[shortcut] from= several layers at line {s.option_lines['from']}")
    return found


#: AlexeyAB's ``share_index`` value meaning "shares nothing".
_NO_SHARE = -1000000000


def _shared_source(section: Section, index: int, layers: list[Layer], params: tuple[Param, ...]) -> int:
    """The layer whose arrays an AlexeyAB conv with ``share_index`` uses; a
    chain of shares ends at the layer that stores them."""
    value = section.get_int("share_index")
    source = layers[_relative(section, index, value, index, "share_index")]
    if source.shares is not None:
        source = layers[source.shares]
    theirs = [p.count for p in source.params or source.borrowed if p.role in ("biases", "weights")]
    if source.type != "convolutional" or theirs != [p.count for p in params if p.role in ("biases", "weights")]:
        raise section.error(f"share_index={value} points to layer {source.index} ({source.type}), "
                            "not a convolution with the same filters and weights", "share_index")
    return source.index


def build_model(sections: list[Section], fork: str) -> Model:
    """Propagate shapes through every section and build the parameter table."""
    if fork not in FORKS:
        raise CfgError(f"unknown fork {fork!r}: expected one of {', '.join(FORKS)}")
    net = sections[0]
    c, h, w = net.get_int("channels", 0), net.get_int("height", 0), net.get_int("width", 0)
    inputs = net.get_int("inputs", c * h * w)
    layers: list[Layer] = []
    for index, section in enumerate(sections[1:]):
        entry = _TYPES.get(section.type)
        if entry is None or fork not in entry[2]:
            known = "" if entry is None else f" (a section of the {entry[2][0]} fork only)"
            raise section.error(f"unknown section type [{section.type}] for the {fork} fork{known}")
        kind, rule, _ = entry
        ctx = _Context(fork, index, c, h, w, inputs, layers, net)
        if kind in ("convolutional", "deconvolutional", "local", "crnn", "conv_lstm") and min(c, h, w) <= 0:
            raise section.error(f"layer {index} ({kind}) needs an image input, got c={c} h={h} w={w}")
        if kind in ("connected", "rnn", "gru", "lstm") and inputs <= 0:
            raise section.error(f"layer {index} ({kind}) has no inputs")
        output, outputs, params = rule(section, ctx)
        for param in params:  # whatever a shape rule missed: never an array of negative size
            if param.count < 0:
                raise section.error(f"layer {index} ({kind}) would have {param.count} {param.name} "
                                    f"(input c={c} h={h} w={w}, inputs={inputs})")
        shares, borrowed, passes = None, (), None
        if kind == "convolutional" and fork == "alexeyab" and section.get_int("share_index", _NO_SHARE) != _NO_SHARE:
            shares, borrowed, params = _shared_source(section, index, layers, params), params, ()
        if section.get_int("dontload", 0):  # Darknet then reads nothing for it
            params = ()
        if kind in ("convolutional", "maxpool") and _antialiasing(section, ctx):
            passes = _blurred(section, ctx, output)
        layers.append(Layer(index, kind, section, (c, h, w), output, outputs, params, shares, borrowed, passes))
        (c, h, w), inputs = passes or (output, outputs)
    return Model(fork, net, layers, net.path)
