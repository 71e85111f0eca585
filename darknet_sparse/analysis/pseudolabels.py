"""Darknet label files for unlabelled images, from a model's own detections.

``detector train`` finds an image's labels by rewriting its path
(``fill_truth_detection`` in ``src/data.c``): the first ``images`` becomes
``labels`` (then the first ``JPEGImages``, then ``raw``), and the first
``.jpg`` (``.png``, ``.JPG``, ``.JPEG``) becomes ``.txt``
(:func:`darknet_sparse.analysis.evaluate.label_path`).  So that labels are never
written beside the user's images, :func:`prepare` gives every image a
symbolic link ``FOLDER/images/NNNNN.jpg`` and writes its labels to
``FOLDER/labels/NNNNN.txt``, where pjreddie's rewriting of the link's path
lands (AlexeyAB's fork reads labels beside the image: there they are
``FOLDER/images/NNNNN.txt``); the list Darknet trains on
(``FOLDER/train.list``) names the links.
Darknet reads an image by its content (stb_image), not by its name, so a
link named ``.jpg`` may point at a PNG.  A folder whose path would send the
rewriting elsewhere (it holds ``images``, ``raw``, ``.jpg`` ...) is refused.

The labeller is a model run in-process (:func:`darknet_sparse.darknet.detect.detect`:
upstream's letterbox, decode and NMS): each (box, class) with a probability
above ``conf`` is one line ``class cx cy w h``, the box clipped to the image
and given as fractions of it.  An image with no such detection gets an empty
file (Darknet stops at a missing one).  ``FOLDER/labels.json`` records what
made the labels; a second :func:`prepare` with the same model, images and
confidence keeps them.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..darknet.detect import Detections, detect
from ..errors import InputError, OutputError
from .evaluate import label_path

#: Confidence a labeller's detection needs to become a label: the reference
#: confidence of agreement mode (``evaluate.REFERENCE_CONF``) and
#: ``detector test``'s default, so retraining aims at what the score counts.
LABEL_CONF = 0.5
STAMP = "labels.json"


@dataclass(frozen=True)
class Labelled:
    """What :func:`prepare` left in its folder."""

    train_list: Path
    images: int
    boxes: int  # label lines written (0 without labels)
    reused: bool  # the labels of an earlier run were kept


def link_name(index: int) -> str:
    return f"{index:05d}.jpg"


def check_folder(folder: Path, fork: str = "pjreddie") -> None:
    """``folder`` is a place where Darknet's rewriting of a link's path lands
    on the label file written for it (both forks' rules for ``auto``), else
    an :class:`OutputError`."""
    link = folder / "images" / link_name(0)
    for name in ("pjreddie", "alexeyab") if fork == "auto" else (fork,):
        expected = folder / ("labels" if name == "pjreddie" else "images") / link_name(0).replace(".jpg", ".txt")
        found = label_path(link, name)
        if found != expected:
            raise OutputError(
                f"{folder}: Darknet would read the labels of {link} from {found}, not {expected} (it replaces "
                "the first 'images', 'JPEGImages', 'raw' and '.jpg' in an image's path); choose an output "
                "folder whose absolute path holds none of images, JPEGImages, raw, .jpg, .png, .JPG, .JPEG")


def prepare(labeller: Callable[[], object] | None, paths: Sequence[Path], folder: Path, conf: float = LABEL_CONF,
            identity: dict | None = None, on_progress: Callable[[int], None] | None = None,
            fork: str = "pjreddie") -> Labelled:
    """Link ``paths`` into ``folder/images``, write ``folder/train.list``
    and, with a ``labeller`` (a function returning the detector
    :class:`~darknet_sparse.darknet.Network`, called only when labels are
    made), the label files of its detections above ``conf``.  ``identity``
    (the labeller's cfg and weights, say) decides with the images and
    ``conf`` whether earlier labels can be kept.  ``on_progress(n)`` is told
    how many images are labelled.  ``fork`` says whose rule places the
    label files (pjreddie: ``folder/labels``; alexeyab: beside the links)."""
    if not paths:
        raise InputError("no training images")
    if not 0 < conf < 1:
        raise InputError(f"label confidence {conf} must be in (0, 1)")
    folder = folder.resolve()
    check_folder(folder, fork)
    sources = []
    for path in paths:
        source = Path(os.path.abspath(path))
        if not source.is_file():
            raise InputError(f"{path}: no such training image")
        sources.append(source)
    stamp = {"images": [str(s) for s in sources], "conf": conf if labeller else None, "labeller": identity}
    links = _link(sources, folder / "images", fork)
    train_list = folder / "train.list"
    train_list.write_text("".join(f"{link}\n" for link in links))
    if _read_stamp(folder) == stamp and (labeller is None or all(
            label_path(link, fork).is_file() for link in links)):
        boxes = sum(len(label_path(link, fork).read_text().splitlines()) for link in links) if labeller else 0
        return Labelled(train_list, len(links), boxes, True)
    (folder / STAMP).unlink(missing_ok=True)
    labels = folder / "labels"
    labels.mkdir(exist_ok=True)
    for stale in [*labels.iterdir(), *(label_path(link, fork) for link in links)]:
        stale.unlink(missing_ok=True)  # also AlexeyAB's, beside the links
    boxes = 0
    if labeller is None and fork == "alexeyab":
        # A teacher's run reads no labels, but AlexeyAB's loader still opens
        # each image's file and lists every missing one in ./bad.list.
        for link in links:
            label_path(link, fork).write_text("")
    if labeller is not None:
        net = labeller()
        for done, link in enumerate(links, 1):
            lines = label_lines(detect(net, link, conf))
            label_path(link, fork).write_text("".join(line + "\n" for line in lines))
            boxes += len(lines)
            if on_progress:
                on_progress(done)
    (folder / STAMP).write_text(json.dumps(stamp) + "\n")
    return Labelled(train_list, len(links), boxes, False)


def label_lines(dets: Detections, conf: float = 0.0) -> list[str]:
    """``class cx cy w h`` for every (box, class) above ``conf``: the box
    clipped to the image, as fractions of it; boxes clipped to nothing are
    left out."""
    corners = dets.corners()
    lines = []
    for i, j, _ in dets.found(conf):
        left, top, right, bottom = corners[i]
        w, h = (right - left) / dets.width, (bottom - top) / dets.height
        if w <= 0 or h <= 0:
            continue
        cx, cy = (left + right) / 2 / dets.width, (top + bottom) / 2 / dets.height
        lines.append(f"{j} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def file_identity(*paths: Path) -> dict:
    """Each file's absolute path and sha256: what a labeller is made of."""
    return {str(Path(p).resolve()): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def _link(sources: Sequence[Path], folder: Path, fork: str) -> list[Path]:
    """``folder/NNNNN.jpg`` -> each source, stale links (and stale label
    files beside them) removed."""
    folder.mkdir(parents=True, exist_ok=True)
    links = [folder / link_name(i) for i in range(len(sources))]
    wanted = set(links) | {label_path(link, fork) for link in links}
    for entry in folder.iterdir():
        if entry not in wanted:
            entry.unlink()
    for link, source in zip(links, sources):
        if link.is_symlink() and Path(os.readlink(link)) == source:
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(source)
    return links


def _read_stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None
