"""A detector's boxes for one image, exactly as ``darknet detector test`` finds them.

:func:`detect` runs upstream's own code through the binding
(:meth:`darknet_sparse.darknet.Network.detect`): ``load_image_color`` and
``letterbox_image`` prepare the image, one ``network_predict`` runs it,
``get_network_boxes`` decodes every ``[yolo]``, ``[region]`` and
``[detection]`` layer, and ``do_nms_sort`` suppresses overlaps per class.
Nothing of it is re-implemented here, so the boxes and probabilities are the
binary's (``test_detector`` in ``examples/detector.c``).

Darknet keeps a box's probability for class ``j`` only where it is above the
threshold (``objectness * class score > thresh``) and not suppressed by NMS;
:class:`Detections` holds the boxes with at least one such probability, in
Darknet's order.  ``detector test`` prints one line per (box, class) pair
above its threshold, in that order (:meth:`Detections.found`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .network import Network

#: ``detector test``'s defaults: -thresh, -hier, and its fixed NMS overlap.
THRESH = 0.5
HIER = 0.5
NMS = 0.45


@dataclass(frozen=True)
class Detections:
    """The boxes Darknet found in one image."""

    image: Path
    width: int  # the image's size in pixels
    height: int
    boxes: np.ndarray  # (n, 4) float32: centre x, centre y, width, height, as fractions of the image
    probs: np.ndarray  # (n, classes) float32: 0 where at or below the threshold or suppressed
    objectness: np.ndarray  # (n,) float32

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def classes(self) -> int:
        return self.probs.shape[1]

    def found(self, thresh: float = 0.0) -> list[tuple[int, int, float]]:
        """(box, class, probability) for every probability above ``thresh``,
        box by box and class by class, as ``draw_detections`` prints them."""
        rows, cols = np.nonzero(self.probs > thresh)
        return [(int(i), int(j), float(self.probs[i, j])) for i, j in zip(rows, cols)]

    def corners(self) -> np.ndarray:
        """(n, 4) float64 pixel boxes: left, top, right, bottom, clipped to the
        image as ``print_cocos`` clips them for COCO's evaluator."""
        x, y, w, h = (self.boxes.astype(np.float64) * [self.width, self.height, self.width, self.height]).T
        left, right = np.clip(x - w / 2, 0, self.width), np.clip(x + w / 2, 0, self.width)
        top, bottom = np.clip(y - h / 2, 0, self.height), np.clip(y + h / 2, 0, self.height)
        return np.stack([left, top, right, bottom], axis=1)


def detect(net: Network, image: str | Path, thresh: float = THRESH, hier: float = HIER,
           nms: float = NMS) -> Detections:
    """The boxes of ``image`` with a probability above ``thresh`` (``nms`` 0:
    no suppression); ``hier`` matters only for a ``[region]`` layer with a
    class tree."""
    boxes, probs, objectness, (width, height) = net.detect(image, thresh, hier, nms)
    kept = np.any(probs > 0, axis=1)
    return Detections(Path(image), width, height, boxes[kept], probs[kept], objectness[kept])
