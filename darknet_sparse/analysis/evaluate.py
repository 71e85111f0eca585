"""How good a model is: a detector's mAP, a classifier's top-1 and top-k.

Detectors (:func:`evaluate_detector`).  Each image goes through
:func:`darknet_sparse.darknet.detect.detect` (upstream's letterbox, decode and NMS)
at a low threshold (``conf``, 0.005 as Darknet's ``detector valid``); every
(box, class) probability left is one scored detection, its box clipped to the
image as ``print_cocos`` clips it.  COCO's own evaluator (pycocotools) then
gives mAP@0.5 and mAP@0.5:0.95 (over IoU 0.5, 0.55, ... 0.95; at most 100
detections per image, COCO's rule) and each class's AP.  The ground truth is
either

``labels``     Darknet label files, one ``class cx cy w h`` line per object
               (fractions of the image), where ``detector train`` looks for
               them (:func:`label_path`); or
``reference``  another model's detections above ``reference_conf``: an
               *agreement* score, how well the model reproduces what the
               reference finds, not accuracy against human labels.

Classifiers (:func:`evaluate_classifier`): top-1 and top-k on the ``valid=``
list of a ``.data`` file, images and class rule as ``classifier valid``
(:func:`darknet_sparse.darknet.images.labelled_list`), so both equal the binary's.
"""
from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..darknet.detect import HIER, NMS, Detections, detect
from ..darknet.images import load_batch
from ..errors import CfgError, InputError
from ..format import darknet_text
from ..format.layout import DETECTION_TYPES
from .metrics import hits, labelled_set

if TYPE_CHECKING:
    from ..darknet.network import Network

#: ``detector valid``'s threshold: keep nearly every box, let the ranking decide.
CONF = 0.005
#: What counts as a reference detection in agreement mode (``detector test``'s default).
REFERENCE_CONF = 0.5
#: Images per forward pass when classifying (bounds the memory of a long list).
CLASSIFIER_CHUNK = 64
#: ``fill_truth_detection``'s rewrites of an image path into its label path, in
#: order, each replacing the first occurrence only (``find_replace``).
LABEL_REWRITES = (("images", "labels"), ("JPEGImages", "labels"), ("raw", "labels"),
                  (".jpg", ".txt"), (".png", ".txt"), (".JPG", ".txt"), (".JPEG", ".txt"))
#: AlexeyAB's rule (``replace_image_to_label`` in its ``src/utils.c``): only
#: COCO's and VOC's own folders are rewritten (the first occurrence of each),
#: so labels otherwise sit beside the image; then the extension, only at the end.
ALEXEYAB_FOLDER_REWRITES = (("/images/train2017/", "/labels/train2017/"), ("/images/val2017/", "/labels/val2017/"),
                            ("/JPEGImages/", "/labels/"), ("/images/train2014/", "/labels/train2014/"),
                            ("/images/val2014/", "/labels/val2014/"))
ALEXEYAB_EXTENSIONS = (".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".bmp", ".BMP", ".ppm", ".PPM",
                       ".tiff", ".TIFF")


@dataclass(frozen=True)
class ClassAP:
    """One class's AP: at IoU 0.5, and averaged over IoU 0.5:0.95."""

    index: int
    name: str
    truths: int  # ground-truth objects of the class
    ap50: float
    ap: float


@dataclass
class DetectorReport:
    """A detector's mAP over a set of images."""

    images: int
    truth: str  # "labels" or "reference"
    truth_source: str  # where the ground truth came from, in words
    truths: int  # ground-truth objects
    detections: int  # scored (box, class) pairs of the evaluated model
    conf: float
    nms: float
    map50: float | None  # None when there is no ground-truth object at all
    map: float | None  # mAP@0.5:0.95
    classes: list[ClassAP]  # the classes with ground truth
    seconds_per_image: float  # the evaluated model: image load, forward pass, decode, NMS


@dataclass
class ClassifierReport:
    """A classifier's accuracy on a ``.data`` file's ``valid=`` list."""

    images: int
    top1: float
    k: int
    topk: float


def task_of(last_layer_type: str) -> str:
    """``detector`` when the last layer is a detection layer, else ``classifier``."""
    return "detector" if last_layer_type in DETECTION_TYPES else "classifier"


# Ground truth.

def label_path(image: str | Path, fork: str = "pjreddie") -> Path:
    """Where ``detector train`` reads an image's labels.  pjreddie's:
    ``images`` -> ``labels`` (then ``JPEGImages``, ``raw``) and ``.jpg``
    (``.png``, ``.JPG``, ``.JPEG``) -> ``.txt``, each the first occurrence
    in the path.  AlexeyAB's: :data:`ALEXEYAB_FOLDER_REWRITES`, then the
    image's extension -> ``.txt``, so usually the file beside the image.
    A path from which the rule derives no ``.txt`` would have Darknet read
    something that is no label file (the image itself, or its namesake): refused."""
    text = str(image)
    if fork == "alexeyab":
        for old, new in ALEXEYAB_FOLDER_REWRITES:
            text = text.replace(old, new, 1)
        extension = next((e for e in ALEXEYAB_EXTENSIONS if text.endswith(e)), None)
        if extension is None:
            raise InputError(f"{image}: AlexeyAB's rule derives no label file from this name "
                             f"(it needs one of {', '.join(ALEXEYAB_EXTENSIONS)} at its end)")
        return Path(text[:-len(extension)] + ".txt")
    for old, new in LABEL_REWRITES:
        text = text.replace(old, new, 1)
    if not any(old in str(image) for old, new in LABEL_REWRITES if new == ".txt"):
        raise InputError(f"{image}: Darknet's rule derives no label file from this name "
                         "(it needs .jpg, .png, .JPG or .JPEG in it)")
    return Path(text)


def read_labels(path: Path, classes: int) -> np.ndarray:
    """A label file as (n, 5) float64 rows: class, cx, cy, w, h."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the label file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text label file") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            values = line.split()
            if len(values) != 5:
                raise ValueError
            row = [int(values[0])] + [float(v) for v in values[1:]]
        except ValueError:
            raise InputError(f"{path}:{number}: expected 'class cx cy w h', found {line.strip()!r}") from None
        if not 0 <= row[0] < classes:
            raise InputError(f"{path}:{number}: class {row[0]}, the network has classes 0..{classes - 1}")
        if not all(math.isfinite(v) for v in row[1:]) or row[3] < 0 or row[4] < 0:
            raise InputError(f"{path}:{number}: box {row[1:]} is not finite with a width and height >= 0")
        rows.append(row)
    return np.array(rows, np.float64).reshape(-1, 5)


def find_names(weights: str | Path, cfg: str | Path, classes: int) -> Path | None:
    """The class names beside a model, when none are given: ``MODEL.names``
    beside the weights or the cfg (either file's stem), the ``names=`` of
    ``MODEL.data`` there, then any other ``*.names`` file, or ``.data``
    file's ``names=``, beside the weights, then beside the cfg
    (``coco.names`` beside ``yolov3-tiny.weights``); the first with exactly
    ``classes`` lines, so the names of another model are passed over.
    None when none fits."""
    weights, cfg = Path(weights), Path(cfg)
    stems = dict.fromkeys(path.name.split(".")[0] for path in (weights, cfg))
    folders = dict.fromkeys((weights.parent, cfg.parent))
    named = [folder / f"{stem}{suffix}" for suffix in (".names", ".data") for folder in folders for stem in stems]
    others = [p for folder in folders for p in sorted(folder.glob("*"))
              if p.suffix in (".names", ".data") and p not in named]
    for candidate in (p for p in named + others if p.is_file()):
        try:
            path = candidate
            if candidate.suffix == ".data":
                path = Path(darknet_text.read_options(candidate).get("names", ""))
                if not path.name or not path.is_file():
                    continue
            if len(darknet_text.read_lines(path)) == classes:
                return path
        except CfgError:  # an unreadable or malformed neighbour is not the user's input
            continue
    return None


def _label_corners(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Label rows as pixel (left, top, right, bottom), clipped like detections."""
    x, y, w, h = (labels[:, 1:] * [width, height, width, height]).T
    return np.stack([np.clip(x - w / 2, 0, width), np.clip(y - h / 2, 0, height),
                     np.clip(x + w / 2, 0, width), np.clip(y + h / 2, 0, height)], axis=1)


# Detectors.

def check_detector(net: Network, what: str = "the model") -> None:
    reason = net.detector_error()
    if reason:
        raise InputError(f"{what} is not a detector Darknet can decode: {reason}")


def evaluate_detector(net: Network, paths: Sequence[str | Path], *, reference: Network | None = None,
                      reference_conf: float = REFERENCE_CONF, reference_name: str = "the reference model",
                      conf: float = CONF, nms: float = NMS, hier: float = HIER,
                      names: Sequence[str] | None = None,
                      on_progress: Callable[[int], None] | None = None) -> DetectorReport:
    """mAP of ``net`` on ``paths`` against their label files, or, with
    ``reference``, against that model's detections above ``reference_conf``
    (agreement).  ``on_progress(n)`` is told how many images are done."""
    if not paths:
        raise InputError("no images to evaluate")
    for name, value in (("conf", conf), ("reference conf", reference_conf), ("nms", nms)):
        if not 0 <= value < 1:
            raise InputError(f"{name} must be in [0, 1), not {value}")
    check_detector(net)
    if reference is not None:
        check_detector(reference, "the reference model")
        if reference.detector_classes != net.detector_classes:
            raise InputError(f"the reference model has {reference.detector_classes} classes, "
                             f"the model {net.detector_classes}")
    if names is not None and len(names) < net.detector_classes:
        raise InputError(f"{len(names)} class names for a model with {net.detector_classes} classes")
    # Every label file is read before the first image is run: a bad one fails at once.
    labels = None if reference is not None else [read_labels(label_path(p, net.fork), net.detector_classes)
                                                 for p in paths]
    found, truths, seconds = [], [], 0.0
    for done, path in enumerate(paths, 1):
        start = time.perf_counter()
        dets = detect(net, path, conf, hier, nms)
        seconds += time.perf_counter() - start
        if labels is not None:
            rows = labels[done - 1]
            truth = (rows[:, 0].astype(np.int64), _label_corners(rows, dets.width, dets.height))
        else:
            ref = detect(reference, path, reference_conf, hier, nms)
            pairs = ref.found()
            truth = (np.array([j for _, j, _ in pairs], np.int64), ref.corners()[[i for i, _, _ in pairs]])
        found.append(dets)
        truths.append(truth)
        if on_progress:
            on_progress(done)
    classes = found[0].classes
    if reference is None:
        source = "Darknet label files beside the images (images/ -> labels/, .jpg -> .txt)"
    else:
        source = (f"agreement with {reference_name}: its detections with confidence above "
                  f"{reference_conf:g} are the ground truth")
    map_, map50, per_class, counts = _coco_map(found, truths, classes, names)
    return DetectorReport(len(found), "labels" if reference is None else "reference", source, counts[0],
                          counts[1], conf, nms, map50, map_, per_class, seconds / len(paths))


def _coco_map(found: Sequence[Detections], truths: Sequence[tuple[np.ndarray, np.ndarray]], classes: int,
              names: Sequence[str] | None) -> tuple[float | None, float | None, list[ClassAP], tuple[int, int]]:
    """COCO's evaluator over every image's detections and ground truth:
    mAP@0.5:0.95, mAP@0.5 (None without ground truth), the classes' APs,
    and the counts of ground-truth objects and of detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    image_list = [{"id": i, "width": d.width, "height": d.height} for i, d in enumerate(found, 1)]
    categories = [{"id": j + 1} for j in range(classes)]
    truth_anns, det_anns = [], []
    for image_id, (dets, (labels, corners)) in enumerate(zip(found, truths), 1):
        for label, box in zip(labels, corners):
            truth_anns.append(_annotation(len(truth_anns) + 1, image_id, int(label), box))
        boxes = dets.corners()
        for i, j, prob in dets.found():
            det_anns.append(_annotation(len(det_anns) + 1, image_id, j, boxes[i], prob))
    sizes = (len(truth_anns), len(det_anns))
    if not truth_anns:
        return None, None, [], sizes
    counts = np.bincount([a["category_id"] - 1 for a in truth_anns], minlength=classes)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt, dt = COCO(), COCO()
        gt.dataset = {"images": image_list, "categories": categories, "annotations": truth_anns}
        dt.dataset = {"images": image_list, "categories": categories, "annotations": det_anns}
        gt.createIndex()
        dt.createIndex()
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # precision[iou, recall, class, area, max detections]: area "all", 100 detections.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = [ClassAP(int(category) - 1, names[category - 1] if names else str(category - 1),
                         int(counts[category - 1]), _mean_valid(precision[0, :, k]), _mean_valid(precision[:, :, k]))
                 for k, category in enumerate(evaluator.params.catIds) if counts[category - 1]]
    return float(evaluator.stats[0]), float(evaluator.stats[1]), per_class, sizes


def _annotation(ann_id: int, image_id: int, label: int, box: np.ndarray, score: float | None = None) -> dict:
    left, top, right, bottom = (float(v) for v in box)
    ann = {"id": ann_id, "image_id": image_id, "category_id": label + 1, "iscrowd": 0,
           "bbox": [left, top, right - left, bottom - top], "area": (right - left) * (bottom - top)}
    if score is not None:
        ann["score"] = score
    return ann


def _mean_valid(values: np.ndarray) -> float:
    """COCO's mean over the entries it computed (-1 marks none)."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else 0.0


# Classifiers.

def evaluate_classifier(net: Network, data: str | Path, k: int = 5,
                        on_progress: Callable[[int], None] | None = None) -> ClassifierReport:
    """Top-1 and top-``k`` on the ``valid=`` list of a classifier's ``.data``
    file, as ``classifier valid`` computes them (its ``top=`` is the k it
    prints).  ``on_progress(n)`` is told how many images are done."""
    if k < 1:
        raise InputError(f"k must be at least 1, not {k}")
    paths, truth = labelled_set(net, data)
    top1 = topk = 0
    for start in range(0, len(paths), CLASSIFIER_CHUNK):
        chunk = paths[start:start + CLASSIFIER_CHUNK]
        outputs = net.predict(load_batch(chunk, net.input_shape, "crop"))
        first, among = hits(outputs, truth[start:start + len(chunk)], k)
        top1, topk = top1 + first, topk + among
        if on_progress:
            on_progress(start + len(chunk))
    return ClassifierReport(len(paths), top1 / len(paths), k, topk / len(paths))
