"""Images and labelled lists, prepared exactly as Darknet's tools prepare them.

Darknet (``src/image.c``) loads an 8-bit image with stb_image as floats
``byte / 255.`` in planar (C, H, W) order, then

``crop``       (``classifier valid``: ``center_crop_image``) crops the
               largest centred square and resizes it to the network's size;
``letterbox``  (``detector test``: ``letterbox_image``) resizes to fit
               inside the network's size keeping the aspect ratio and pastes
               the result centred on a grey (0.5) canvas;
``resize``     (AlexeyAB's ``detector test`` without ``letter_box=1``:
               ``resize_image``, the same bilinear code in that fork)
               stretches the image to the network's size.

All resize with ``resize_image``: bilinear in two passes (columns, then
rows), in float32 in Darknet's order of operations, including its quirk of
dropping the second row's share on the last output row.  :func:`resize`
repeats that operation for operation, so a classifier's outputs here equal
those of the binary bit for bit on PNG images.  Pillow decodes the files:
lossless formats give stb's bytes; JPEG decoders may differ by a grey level.

A ``.data`` file and its lists are read as Darknet reads them
(:mod:`darknet_text`), and an image's class is the first label, in
labels-file order, found anywhere in its path (``strstr`` in
``validate_classifier_single``).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import CfgError, InputError
from ..format import darknet_text
from ..format.layout import DETECTION_TYPES, Model

RESIZE = ("crop", "letterbox", "resize")


def default_resize(model: Model) -> str:
    """How ``darknet`` fits images to this network: for a detector as the
    fork's ``detector test`` (pjreddie: ``letterbox``; AlexeyAB: ``resize``
    unless ``[net] letter_box=1``), ``crop`` otherwise (``classifier valid``)."""
    if not any(layer.type in DETECTION_TYPES for layer in model.layers):
        return "crop"
    if model.fork == "alexeyab" and not model.net.get_int("letter_box", 0):
        return "resize"
    return "letterbox"

#: File types both stb_image and Pillow read.
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tga", ".gif", ".pgm", ".ppm", ".pnm")
#: The value ``letterbox_image`` fills the border with.
LETTERBOX_FILL = 0.5
F32 = np.float32


def read_pixels(path: str | Path, channels: int) -> np.ndarray:
    """An image as float32 (channels, h, w) in [0, 1], as ``load_image_stb``
    gives it (grey from RGB by stb's integer luma when ``channels`` is 1)."""
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise InputError(f"{path}: images are loaded with 1 or 3 channels, the network takes {channels}")
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{path}: cannot read the image: {exc}") from None
    if channels == 1:
        rgb = (rgb[..., 0] * 77 + rgb[..., 1] * 150 + rgb[..., 2] * 29)[..., None] >> 8
    return (rgb.transpose(2, 0, 1) / 255.).astype(F32)


def resize(image: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet's ``resize_image`` of a (c, h, w) float32 image."""
    _, ih, iw = image.shape
    ix, ix1, dx = _steps(iw, w)
    part = (F32(1) - dx) * image[:, :, ix] + dx * image[:, :, ix1]
    part[:, :, -1] = image[:, :, -1]
    iy, iy1, dy = _steps(ih, h)
    dy = dy[None, :, None]
    out = (F32(1) - dy) * part[:, iy, :]
    if ih > 1:
        out[:, :-1, :] += dy[:, :-1, :] * part[:, iy1[:-1], :]
    return out


def _steps(size: int, new: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``new`` positions: the source index, the next one, and the
    weight of the next, in ``resize_image``'s float32 arithmetic."""
    position = np.arange(new, dtype=F32) * (F32(size - 1) / F32(max(new - 1, 1)))
    index = position.astype(np.int64)
    weight = position - index.astype(F32)
    return np.minimum(index, size - 1), np.minimum(index + 1, size - 1), weight


def center_crop(image: np.ndarray, w: int, h: int) -> np.ndarray:
    """``center_crop_image``: the largest centred square, resized to (w, h)."""
    _, ih, iw = image.shape
    side = min(iw, ih)
    top, left = (ih - side) // 2, (iw - side) // 2
    return resize(image[:, top:top + side, left:left + side], w, h)


def letterbox(image: np.ndarray, w: int, h: int) -> np.ndarray:
    """``letterbox_image``: fit inside (w, h), keep the aspect, centre on grey."""
    c, ih, iw = image.shape
    if F32(w) / F32(iw) < F32(h) / F32(ih):
        new_w, new_h = w, ih * w // iw
    else:
        new_w, new_h = iw * h // ih, h
    boxed = np.full((c, h, w), LETTERBOX_FILL, F32)
    top, left = (h - new_h) // 2, (w - new_w) // 2
    boxed[:, top:top + new_h, left:left + new_w] = resize(image, new_w, new_h)
    return boxed


def load_batch(paths: Sequence[str | Path], shape: tuple[int, int, int], how: str = "crop") -> np.ndarray:
    """Images prepared for a network taking (c, h, w): float32 (N, c, h, w)."""
    if how not in RESIZE:
        raise InputError(f"unknown resize {how!r}: expected one of {', '.join(RESIZE)}")
    c, h, w = shape
    if not (c and h and w):
        raise InputError("the network takes no images (its cfg gives no width, height and channels)")
    prepare = {"crop": center_crop, "letterbox": letterbox, "resize": resize}[how]
    batch = np.empty((len(paths), c, h, w), F32)
    for row, path in zip(batch, paths):
        row[:] = prepare(read_pixels(path, c), w, h)
    return batch


def image_paths(source: str | Path) -> list[Path]:
    """The images of a folder (recursively, sorted) or of a list file (one
    path per line, as Darknet's ``train.list``)."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
        if not paths:
            raise InputError(f"{source}: no images ({', '.join(SUFFIXES)}) in this folder")
        return paths
    paths = [Path(line) for line in darknet_text.read_lines(source) if line]
    if not paths:
        raise InputError(f"{source}: the list names no images")
    return paths


def labelled_list(data: str | Path) -> tuple[list[str], np.ndarray]:
    """The ``valid=`` images of a classifier's ``.data`` file and their class
    indices, by Darknet's substring rule; an image no label names is an error
    (Darknet would silently count it as wrong)."""
    options = darknet_text.read_options(data)
    try:
        classes = int(options.get("classes", "2"))
    except ValueError:
        raise CfgError(f"{data}: classes={options['classes']!r} is not a number") from None
    labels = darknet_text.read_lines(options.get("labels", "data/labels.list"))
    if len(labels) < classes or classes < 1:
        raise CfgError(f"{data}: classes={classes} but {options.get('labels', 'data/labels.list')} "
                       f"has {len(labels)} labels")
    paths = [line for line in darknet_text.read_lines(options.get("valid", "data/train.list")) if line]
    if not paths:
        raise CfgError(f"{data}: the valid= list names no images")
    truth = np.array([next((j for j in range(classes) if labels[j] in path), -1) for path in paths])
    unlabelled = [path for path, t in zip(paths, truth) if t < 0]
    if unlabelled:
        raise CfgError(f"{data}: {len(unlabelled)} images match no label, e.g. {unlabelled[0]}")
    return paths, truth


def sample(paths: Sequence[Path], limit: int | None, seed: int = 0) -> list[Path]:
    """At most ``limit`` of ``paths``, drawn without replacement by a seeded
    generator and kept in their order (a sorted folder lists one class
    after another, so its first N would not do)."""
    if limit is None or limit >= len(paths):
        return list(paths)
    chosen = np.sort(np.random.default_rng(seed).choice(len(paths), limit, replace=False))
    return [paths[i] for i in chosen]
