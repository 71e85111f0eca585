"""The evaluation split's two parts, scored apart.

``make images``' evaluation split mixes two kinds of image: later frames of
the two videos whose earlier frames are the whole training split (a street
with pedestrians; a cartoon), and the photos, mostly of things no training
frame shows (the dense model finds person, car and truck in the training
frames; in the photos also animals, fruit, a bicycle, a kite).  Everything a benchmark
ranks, fits or trains sees the training frames only, so one agreement score
over the whole split averages an in-domain part and an out-of-domain one.
:func:`agreement` reports both beside the whole, running the model once per
image.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from darknet_sparse.analysis.evaluate import DetectorReport, Remembered, evaluate_detector

#: How ``make images`` names video frames (``vtest_00500.jpg``); the rest of
#: the evaluation split are photos.
VIDEO_PREFIXES = ("vtest_", "Megamind_")
PARTS = ("video frames", "photos")


def parts(paths: Sequence[str | Path]) -> dict[str, list]:
    """The paths of each part, in their order."""
    frame = [Path(p).name.startswith(VIDEO_PREFIXES) for p in paths]
    return {"video frames": [p for p, f in zip(paths, frame) if f],
            "photos": [p for p, f in zip(paths, frame) if not f]}


def agreement(net, paths: Sequence[str | Path], reference, **options) -> tuple[DetectorReport, dict[str, float]]:
    """``evaluate_detector`` on all of ``paths``, and each part's mAP@0.5
    (NaN for a part with no image or no reference detection)."""
    model = Remembered(net)
    whole = evaluate_detector(model, paths, reference=reference, **options)
    by_part = {}
    for name, chosen in parts(paths).items():
        score = evaluate_detector(model, chosen, reference=reference, **options).map50 if chosen else None
        by_part[name] = float("nan") if score is None else score
    return whole, by_part
