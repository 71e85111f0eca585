"""The example models' data and their accuracy, measured by Darknet itself.

:func:`write_digits` turns scikit-learn's handwritten digits (1797 8x8 images,
shipped inside the package) into a Darknet classification set; the example
model ``cfg/digits.cfg`` / ``cfg/digits.weights`` is trained on it by
``scripts/train_example.sh``.  :func:`write_fashion` does the same for
Fashion-MNIST (70,000 28x28 images of clothes, Debian's
``dataset-fashion-mnist``), the second example with headroom for pruning
(``cfg/fashion.cfg``, ``scripts/train_example.sh fashion``).  :func:`classifier_top1` runs
``darknet classifier valid`` and returns its top-1, so a pruned model is
judged by the same code that trained it.

Darknet finds an image's class by substring match: the first label, in
labels-file order, that occurs anywhere in the image's *path* (``strstr`` in
``validate_classifier_single``; ``fill_truth`` in data.c while training).
Labels are therefore words (``zero`` .. ``nine`` for digits, none contains
another, unlike ``1`` and ``10``), images sit in a folder named by their label, and
every path is checked to contain its own label and no other: an output folder
such as ``/home/someone`` is refused rather than silently mislabelled.

Darknet reads the ``.data`` file with all whitespace removed and builds backup
file names in a 256-byte buffer, so the output folder must have no whitespace
and a short absolute path.  The output is the same bytes on every run: the
train/validation split is drawn from a seeded legacy ``RandomState``, whose
stream numpy keeps fixed across releases.
"""
from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import DarknetRunError, OutputError
from ..format import darknet_text

LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Must equal width= and height= in cfg/digits.cfg: 2x nearest-neighbour
# upscale of the 8x8 originals, so `classifier valid` sees them unresampled.
IMAGE_SIZE = 16
VALID_FRACTION = 0.2
SPLIT_SEED = 2018
DEFAULT_OUTDIR = Path("data/digits")
# Fashion-MNIST's classes as path words, in its label order (0 = T-shirt/top
# .. 9 = ankle boot): none contains another ("tshirt" would contain "shirt").
FASHION_LABELS = ("top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
FASHION_SIZE = 28
FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")
FASHION_OUTDIR = Path("data/fashion")
# Darknet writes backup/<cfg base>_<epoch>.weights into char[256].
_MAX_ROOT_CHARS = 160
_TOP1_LINE = re.compile(r"^\d+: top 1: ([0-9.]+), top \d+: [0-9.]+$", re.MULTILINE)
_CLASS_LINE = re.compile(r"^.*, (-?\d+), \S+, \S+, $", re.MULTILINE)
_TAIL_LINES = 15


def darknet_labels(path: str, labels: tuple[str, ...] = LABELS) -> list[str]:
    """The labels Darknet's substring rule finds in ``path``, in label order."""
    return [label for label in labels if label in path]


def write_digits(outdir: str | Path = DEFAULT_OUTDIR, split_seed: int = SPLIT_SEED) -> Path:
    """Write the digits as 3-channel PNGs plus Darknet's lists; return the ``.data`` path.

    Layout under ``outdir`` (see :func:`write_classification_set`):
    ``train/<label>/NNNN.png`` and ``valid/<label>/NNNN.png`` (NNNN is the
    index in ``load_digits()``) and ``digits.data``.  The split is
    stratified: ``VALID_FRACTION`` of each class is held out, drawn with
    ``split_seed`` (another seed, another split: the shipped model's is
    ``SPLIT_SEED``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise OutputError("the digits example needs scikit-learn: pip install 'darknet-sparse[examples]'") from None

    digits = load_digits()
    targets = digits.target
    images = _to_pixels(digits.images)
    held_out = _validation_mask(targets, split_seed)
    items = (("valid" if valid else "train", target, f"{index:04d}", pixels)
             for index, (pixels, target, valid) in enumerate(zip(images, targets, held_out)))
    return write_classification_set(outdir, "digits", LABELS, items)


def write_fashion(outdir: str | Path = FASHION_OUTDIR, source: str | Path = FASHION_SOURCE) -> Path:
    """Write Fashion-MNIST (Debian's ``dataset-fashion-mnist``) as a Darknet
    classification set; return the ``.data`` path.

    The 60,000 training images go to ``train/<label>/NNNNN.png`` and the
    10,000 test images to ``valid/<label>/NNNNN.png`` (NNNNN is the index in
    its IDX file), 28x28, grey repeated into 3 channels (pjreddie's
    ``classifier train`` loads every image as 3 channels).  The split is the
    data set's own: the test images are never trained on.
    """
    source = Path(source)
    items = []
    for split, prefix in (("train", "train"), ("valid", "t10k")):
        images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        targets = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
        if len(images) != len(targets) or images.shape[1:] != (FASHION_SIZE, FASHION_SIZE):
            raise OutputError(f"{source}: {prefix} files hold {images.shape} images and {len(targets)} labels, "
                              f"expected N {FASHION_SIZE}x{FASHION_SIZE} images and N labels")
        items += [(split, int(t), f"{i:05d}", pixels) for i, (pixels, t) in enumerate(zip(images, targets))]
    return write_classification_set(outdir, "fashion", FASHION_LABELS, items)


def read_idx(path: str | Path) -> np.ndarray:
    """A gzipped IDX file (MNIST's format: zero bytes, a type byte 0x08 for
    uint8, the number of dimensions, each dimension as a big-endian uint32,
    then the values) as a uint8 array."""
    import gzip

    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        hint = " (make fashion installs Debian's dataset-fashion-mnist)" if not Path(path).exists() else ""
        raise OutputError(f"{path}: cannot read: {exc.strerror or exc}{hint}") from None
    if len(data) < 4 or data[:3] != b"\0\0\x08":
        raise OutputError(f"{path}: not an IDX file of bytes (expected 00 00 08 as the first bytes)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) != offset + int(np.prod(dims)):
        raise OutputError(f"{path}: {len(data) - offset} bytes of values, expected {int(np.prod(dims))} for {dims}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def write_classification_set(outdir: str | Path, name: str, labels: tuple[str, ...],
                             items: Iterable[tuple[str, int, str, np.ndarray]]) -> Path:
    """Write (split, label index, file stem, HxW uint8 pixels) items as
    3-channel PNGs plus Darknet's lists; return the ``.data`` path.

    Layout under ``outdir``: ``<split>/<label>/<stem>.png``, one
    ``<split>.list`` per split (``train`` and ``valid``), ``labels.list``,
    ``<name>.data`` (absolute paths, so Darknet can run from any folder) and
    an empty ``backup/``.  Every path is checked to contain its own label and
    no other (Darknet's substring rule).
    """
    from PIL import Image

    root = Path(outdir).resolve()
    _check_root(root)
    lists: dict[str, list[str]] = {"train": [], "valid": []}
    for split, target, stem, pixels in items:
        path = root / split / labels[target] / f"{stem}.png"
        found = darknet_labels(str(path), labels)
        if found != [labels[target]]:
            raise OutputError(f"{path}: Darknet would read labels {found}, expected [{labels[target]!r}]")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.repeat(pixels[:, :, None], 3, axis=2)).save(path)
        lists[split].append(str(path))
    for split, paths in lists.items():
        (root / f"{split}.list").write_text("".join(p + "\n" for p in paths))
    (root / "labels.list").write_text("".join(label + "\n" for label in labels))
    (root / "backup").mkdir(exist_ok=True)
    data = root / f"{name}.data"
    data.write_text(
        f"classes={len(labels)}\n"
        f"train={root / 'train.list'}\n"
        f"valid={root / 'valid.list'}\n"
        f"labels={root / 'labels.list'}\n"
        f"backup={root / 'backup'}\n"
        "top=2\n"
    )
    return data


def _check_root(root: Path) -> None:
    text = str(root)
    if re.search(r"\s", text):
        raise OutputError(f"{text}: Darknet strips whitespace from .data paths; "
                          "choose a folder without spaces")
    if len(text) > _MAX_ROOT_CHARS:
        raise OutputError(f"{text}: longer than {_MAX_ROOT_CHARS} characters, "
                          "which overflows Darknet's file-name buffer")


def _to_pixels(images: np.ndarray) -> np.ndarray:
    """0..16 grey levels -> uint8 white-on-black, upscaled to ``IMAGE_SIZE``.

    White on black because Darknet's augmentation fills outside the image with 0.
    """
    grey = (images.astype(np.int64) * 255 + 8) // 16
    factor = IMAGE_SIZE // images.shape[1]
    return grey.repeat(factor, axis=1).repeat(factor, axis=2).astype(np.uint8)


def _validation_mask(targets: np.ndarray, seed: int = SPLIT_SEED) -> np.ndarray:
    rng = np.random.RandomState(seed)
    mask = np.zeros(len(targets), dtype=bool)
    for label in range(len(LABELS)):
        members = rng.permutation(np.flatnonzero(targets == label))
        mask[members[: round(len(members) * VALID_FRACTION)]] = True
    return mask


def classifier_top1(darknet_bin: str | Path, data_file: str | Path, cfg: str | Path,
                    weights: str | Path) -> float:
    """Top-1 accuracy (0..1) of ``darknet classifier valid`` on the ``valid=`` list.

    ``valid`` classifies one centre-cropped image at a time and prints a
    running ``<i>: top 1: <acc>, top <k>: <acc>`` line per image, preceded by
    ``<path>, <class>, <p0>, <p1>,``.  The last running value is the answer,
    but only if a line came for every listed image and every class was found
    (class -1 means no label matched the path).  Darknet exits 0 on a missing
    file, so a missing result is an error here, not a zero.
    """
    command = [str(darknet_bin), "classifier", "valid", str(data_file), str(cfg), str(weights)]
    try:
        run = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
    except OSError as exc:
        raise DarknetRunError(f"cannot run {darknet_bin}: {exc.strerror}") from None
    output = run.stdout + run.stderr

    def fail(reason: str) -> DarknetRunError:
        tail = "\n".join(output.splitlines()[-_TAIL_LINES:])
        return DarknetRunError(f"{' '.join(command)}: {reason}; last output:\n{tail}")

    if run.returncode != 0:
        raise fail(f"exit status {run.returncode}")
    results = _TOP1_LINE.findall(run.stdout)
    if not results:
        raise fail("no top-1 lines")
    expected = _valid_list_length(Path(data_file))
    if len(results) != expected:
        raise fail(f"expected top-1 lines for {expected} images, found {len(results)}")
    unlabelled = [c for c in _CLASS_LINE.findall(run.stdout) if int(c) < 0]
    if unlabelled:
        raise fail(f"{len(unlabelled)} images matched no label")
    return float(results[-1])


def _valid_list_length(data_file: Path) -> int:
    """How many images Darknet's ``valid=`` list names (read as Darknet reads it)."""
    return len(darknet_text.read_lines(darknet_text.read_options(data_file).get("valid", "data/train.list")))
