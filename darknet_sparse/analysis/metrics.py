"""What the measures of ``analysis/`` share: a classifier's top-1 and top-k
as Darknet ranks classes, the labelled validation set they are counted on,
and a reference model's detections, computed once.

The detection layer types are :data:`darknet_sparse.format.layout.DETECTION_TYPES`
and how images are fitted to a network is
:func:`darknet_sparse.darknet.images.default_resize`: lower layers need them.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..darknet import images
from ..errors import InputError

if TYPE_CHECKING:
    from ..darknet.network import Network


def first_max(outputs: np.ndarray) -> np.ndarray:
    """Each row's class as Darknet's ``top_k`` picks it: the first index
    whose value no later value exceeds (NaN never wins a comparison)."""
    best = np.zeros(len(outputs), np.int64)
    rows = np.arange(len(outputs))
    for i in range(1, outputs.shape[1]):
        best = np.where(outputs[:, i] > outputs[rows, best], i, best)
    return best


def top_k(outputs: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` best classes as Darknet's ``top_k`` ranks them: by
    value, an earlier index first among equals (a stable sort)."""
    return np.argsort(-outputs, axis=1, kind="stable")[:, :k]


def hits(outputs: np.ndarray, truth: np.ndarray, k: int = 1) -> tuple[int, int]:
    """How many rows of ``outputs`` have their ``truth`` class first
    (:func:`first_max`), and how many among their ``k`` best (:func:`top_k`)."""
    return (int(np.sum(first_max(outputs) == truth)),
            int(np.sum(np.any(top_k(outputs, k) == truth[:, None], axis=1))))


def labelled_set(net: Network, data: str | Path) -> tuple[list[Path], np.ndarray]:
    """The ``valid=`` images of a classifier's ``.data`` file and their
    classes (:func:`darknet_sparse.darknet.images.labelled_list`), checked
    against the network's outputs."""
    paths, truth = images.labelled_list(data)
    if net.outputs < truth.max() + 1:
        raise InputError(f"{data}: labels reach class {truth.max()}, the network has {net.outputs} outputs")
    return paths, truth


class Remembered:
    """A reference model no one edits while it is compared with others (a
    sweep's dense model, a loop's starting model): each image's detections
    are computed once per image and setting, not once per comparison.  Any
    other attribute is the network's."""

    def __init__(self, net: Network):
        self.net = net
        self._seen: dict[tuple, object] = {}

    def detect(self, image: str | Path, thresh: float, hier: float, nms: float):
        key = (str(image), thresh, hier, nms)
        if key not in self._seen:
            self._seen[key] = self.net.detect(image, thresh, hier, nms)
        return self._seen[key]

    def __getattr__(self, name: str):
        if name == "net":  # not set yet (copying): no network to ask
            raise AttributeError(name)
        return getattr(self.net, name)
