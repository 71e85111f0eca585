"""The example model's data and its accuracy, measured by Darknet itself.

:func:`write_digits` turns scikit-learn's handwritten digits (1797 8x8 images,
shipped inside the package) into a Darknet classification set; the example
model ``cfg/digits.cfg`` / ``cfg/digits.weights`` is trained on it by
``scripts/train_example.sh``.  :func:`classifier_top1` runs
``darknet classifier valid`` and returns its top-1, so a pruned model is
judged by the same code that trained it.

Darknet finds an image's class by substring match: the first label, in
labels-file order, that occurs anywhere in the image's *path* (``strstr`` in
``validate_classifier_single``; ``fill_truth`` in data.c while training).
Labels are therefore the words ``zero`` .. ``nine`` (none contains another,
unlike ``1`` and ``10``), images sit in a folder named by their label, and
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
from pathlib import Path

import numpy as np

from . import darknet_text
from .errors import DarknetRunError, OutputError

LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Must equal width= and height= in cfg/digits.cfg: 2x nearest-neighbour
# upscale of the 8x8 originals, so `classifier valid` sees them unresampled.
IMAGE_SIZE = 16
VALID_FRACTION = 0.2
SPLIT_SEED = 2018
DEFAULT_OUTDIR = Path("data/digits")
# Darknet writes backup/<cfg base>_<epoch>.weights into char[256].
_MAX_ROOT_CHARS = 160
_TOP1_LINE = re.compile(r"^\d+: top 1: ([0-9.]+), top \d+: [0-9.]+$", re.MULTILINE)
_CLASS_LINE = re.compile(r"^.*, (-?\d+), \S+, \S+, $", re.MULTILINE)
_TAIL_LINES = 15


def darknet_labels(path: str) -> list[str]:
    """The labels Darknet's substring rule finds in ``path``, in label order."""
    return [label for label in LABELS if label in path]


def write_digits(outdir: str | Path = DEFAULT_OUTDIR) -> Path:
    """Write the digits as 3-channel PNGs plus Darknet's lists; return the ``.data`` path.

    Layout under ``outdir``: ``train/<label>/NNNN.png`` and
    ``valid/<label>/NNNN.png`` (NNNN is the index in ``load_digits()``),
    ``train.list``, ``valid.list``, ``labels.list``, ``digits.data`` (absolute
    paths, so Darknet can run from any folder) and an empty ``backup/``.
    The split is stratified: ``VALID_FRACTION`` of each class is held out.
    """
    from PIL import Image
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise OutputError("the digits example needs scikit-learn: pip install 'darknet-sparse[examples]'") from None

    root = Path(outdir).resolve()
    _check_root(root)
    digits = load_digits()
    targets = digits.target
    images = _to_pixels(digits.images)
    held_out = _validation_mask(targets)
    lists: dict[str, list[str]] = {"train": [], "valid": []}
    for index, (pixels, target, valid) in enumerate(zip(images, targets, held_out)):
        split = "valid" if valid else "train"
        path = root / split / LABELS[target] / f"{index:04d}.png"
        found = darknet_labels(str(path))
        if found != [LABELS[target]]:
            raise OutputError(f"{path}: Darknet would read labels {found}, expected [{LABELS[target]!r}]")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.repeat(pixels[:, :, None], 3, axis=2)).save(path)
        lists[split].append(str(path))
    for split, paths in lists.items():
        (root / f"{split}.list").write_text("".join(p + "\n" for p in paths))
    (root / "labels.list").write_text("".join(label + "\n" for label in LABELS))
    (root / "backup").mkdir(exist_ok=True)
    data = root / "digits.data"
    data.write_text(
        f"classes={len(LABELS)}\n"
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


def _validation_mask(targets: np.ndarray) -> np.ndarray:
    rng = np.random.RandomState(SPLIT_SEED)
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
