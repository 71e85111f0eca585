"""What the data rank (:mod:`datarank`) and the refit (:mod:`reconstruct`)
both do with calibration images: the output pixels sampled per layer, the
layers' inputs collected a few images at a time through the binding, and
im2col rows of those inputs at the sampled pixels, as Darknet's convolution
sees them."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..format.layout import Layer, conv_padding, conv_strides

if TYPE_CHECKING:
    from ..darknet.network import Network

#: Output pixels sampled per image and layer (all of them where a layer has fewer).
POSITIONS = 256
#: Images per forward pass of the collection (memory: every fitted layer's input).
CHUNK = 8


def plain(layer: Layer, fork: str) -> bool:
    """Whether :func:`rows` models the layer: every connected layer and
    convolution (strides, AlexeyAB's ``stride_x``/``stride_y`` and dilation)."""
    return layer.type in ("connected", "convolutional")


def dilation(layer: Layer, fork: str) -> int:
    """The kernel's dilation: AlexeyAB's ``dilation`` (1 for a 1x1 kernel, as
    its parser sets); pjreddie's Darknet has none."""
    if fork != "alexeyab" or layer.section.get_int("size", 1) == 1:
        return 1
    return max(1, layer.section.get_int("dilation", 1))


def rows(x: np.ndarray, layer: Layer, pixels: np.ndarray, fork: str = "pjreddie") -> np.ndarray:
    """im2col rows of the input ``x`` (N, C, H, W) at output pixels ``pixels``
    (per image, flat indices into the output plane): (N * len, C * k * k),
    columns in the weights' order (channel, kernel row, kernel column).  As
    the fork's im2col_cpu_ext: taps ``dilation`` apart, the zero padding
    times the dilation on each side (the output size is the layout's)."""
    if layer.type == "connected":
        return x.reshape(len(x), -1)
    size = layer.section.get_int("size", 1)
    stride_x, stride_y = conv_strides(layer.section, fork)
    step = dilation(layer, fork)
    pad = conv_padding(layer.section, size) * step
    n, c, h, w = x.shape
    _, oh, ow = layer.output
    reach = (size - 1) * step + 1  # a tap may fall past the padding: it reads a zero
    padded = np.zeros((n, c, max(h + 2 * pad, (oh - 1) * stride_y + reach),
                       max(w + 2 * pad, (ow - 1) * stride_x + reach)), np.float32)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    oy, ox = np.divmod(pixels, ow)  # (N, P)
    ky, kx = np.meshgrid(np.arange(size) * step, np.arange(size) * step, indexing="ij")
    ys = oy[:, :, None, None] * stride_y + ky  # (N, P, k, k)
    xs = ox[:, :, None, None] * stride_x + kx
    image = np.arange(n)[:, None, None, None]
    patches = padded[image, :, ys, xs]  # (N, P, k, k, C)
    return patches.transpose(0, 1, 4, 2, 3).reshape(n * pixels.shape[1], c * size * size)


def picks(layer: Layer, images: int, positions: int, rng: np.random.Generator) -> np.ndarray:
    """The output pixels sampled per image (``images``, ``positions``): all
    of them where the plane is smaller; one row for a connected layer."""
    if layer.type == "connected":
        return np.zeros((images, 1), np.int64)
    _, oh, ow = layer.output
    plane = oh * ow
    if plane <= positions:
        return np.tile(np.arange(plane), (images, 1))
    return np.stack([np.sort(rng.choice(plane, positions, replace=False)) for _ in range(images)])


def chunks(count: int, size: int = CHUNK) -> Iterator[slice]:
    """Slices of ``count`` images, ``size`` at a time."""
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def inputs(net: Network, indices: Sequence[int], x: np.ndarray) -> list[np.ndarray]:
    """Each layer's input (the previous layer's output, or the image) for the images ``x``."""
    wanted = sorted({i - 1 for i in indices if i > 0})
    found = dict(zip(wanted, net.layer_outputs(x, wanted))) if wanted else {}
    return [np.asarray(x, np.float32) if i == 0 else found[i - 1] for i in indices]
