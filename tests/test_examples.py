"""The example model: its dataset writer and the committed cfg/digits.weights."""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

import numpy as np

from darknet_sparse.format.files import load_model
from darknet_sparse.errors import DarknetRunError, OutputError
from darknet_sparse.darknet.examples import IMAGE_SIZE, classifier_top1, write_digits
from darknet_sparse.format.weightsfile import expected_size

REPO = Path(__file__).resolve().parent.parent
CFG = REPO / "cfg" / "digits.cfg"
WEIGHTS = REPO / "cfg" / "digits.weights"
# The patched build when `make darknet` has run, else Debian's build of the same commit.
DARKNET = REPO / "build" / "darknet" / "darknet"
DARKNET = DARKNET if DARKNET.is_file() else Path("/usr/bin/darknet")
# sha256 of valid.list with the output folder removed: the held-out split the
# committed weights never trained on.  A change here means retraining.
VALID_SPLIT_SHA256 = "85a41efdf1dccf48f5bd008e35ad3e42f838c775ac3ab19fffe1b8f7a2030699"


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read_list(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_writes_every_digit_once_in_a_stratified_split(digits):
    root = digits.parent
    train, valid = _read_list(root / "train.list"), _read_list(root / "valid.list")
    assert len(train) + len(valid) == 1797
    assert len(valid) == 359
    assert {Path(p).name for p in train}.isdisjoint(Path(p).name for p in valid)
    for label in _read_list(root / "labels.list"):
        in_valid = sum(f"/{label}/" in p for p in valid)
        in_all = in_valid + sum(f"/{label}/" in p for p in train)
        assert abs(in_valid - 0.2 * in_all) <= 0.5


def test_data_file_is_what_darknet_reads(digits):
    root = digits.parent
    options = dict(line.split("=", 1) for line in _read_list(digits))
    assert options == {"classes": "10", "train": str(root / "train.list"), "valid": str(root / "valid.list"),
                       "labels": str(root / "labels.list"), "backup": str(root / "backup"), "top": "2"}
    assert (root / "backup").is_dir()


def test_every_path_has_exactly_its_own_label_by_darknets_substring_rule(digits):
    root = digits.parent
    labels = _read_list(root / "labels.list")
    assert labels == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for path in _read_list(root / "train.list") + _read_list(root / "valid.list"):
        found = [label for label in labels if label in path]
        assert found == [Path(path).parent.name], path


def test_images_are_3_channel_grey_at_the_cfg_size(digits):
    from PIL import Image

    first = Path(_read_list(digits.parent / "valid.list")[0])
    with Image.open(first) as image:
        assert image.mode == "RGB" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
        red, green, blue = image.split()
        assert red.tobytes() == green.tobytes() == blue.tobytes()
    net = load_model(CFG, "pjreddie").net
    assert (net.get_int("width"), net.get_int("height"), net.get_int("channels")) == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_writing_again_gives_the_same_bytes(digits):
    root = digits.parent
    before = _tree(root)
    write_digits(root)
    assert _tree(root) == before


def test_validation_split_is_pinned(digits):
    root = digits.parent
    text = (root / "valid.list").read_text().replace(str(root), "")
    assert hashlib.sha256(text.encode()).hexdigest() == VALID_SPLIT_SHA256


@pytest.mark.parametrize("name", ["someone", "with space"])
def test_refuses_an_output_folder_darknet_would_misread(tmp_path, name):
    with pytest.raises(OutputError, match=name):
        write_digits(tmp_path / name / "digits")
    assert not (tmp_path / name).exists()


def test_committed_weights_have_the_size_the_cfg_implies():
    data = WEIGHTS.read_bytes()
    assert struct.unpack("<3i", data[:12]) == (0, 2, 0)  # pjreddie's header: 20 bytes
    assert len(data) == expected_size(load_model(CFG, "pjreddie"), 20)


def test_committed_weights_reach_the_recorded_accuracy(digits):
    assert classifier_top1(DARKNET, digits, CFG, WEIGHTS) >= 0.96


def test_top1_failure_names_the_command_and_shows_darknets_output(digits, tmp_path):
    missing = tmp_path / "missing.weights"
    with pytest.raises(DarknetRunError, match=r"(?s)no top-1 lines.*Couldn't open file: .*missing\.weights"):
        classifier_top1(DARKNET, digits, CFG, missing)


def _idx(path: Path, array) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file, as Fashion-MNIST ships."""
    import gzip

    array = np.asarray(array, np.uint8)
    header = b"\0\0\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.tobytes())


def _fashion_source(folder: Path, train: int = 7, test: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for prefix, count in (("train", train), ("t10k", test)):
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.randint(0, 256, (count, 28, 28)))
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    return folder


def test_fashion_writes_the_data_sets_own_split_with_path_word_labels(tmp_path):
    from PIL import Image

    from darknet_sparse.darknet.examples import FASHION_LABELS, darknet_labels, read_idx, write_fashion

    source = _fashion_source(tmp_path / "src")
    data = write_fashion(tmp_path / "fashion", source)
    assert data.name == "fashion.data"
    train = _read_list(data.parent / "train.list")
    valid = _read_list(data.parent / "valid.list")
    assert len(train) == 7 and len(valid) == 3
    assert _read_list(data.parent / "labels.list") == list(FASHION_LABELS)
    images = read_idx(source / "t10k-images-idx3-ubyte.gz")
    for index, path in enumerate(valid):
        assert darknet_labels(path, FASHION_LABELS) == [FASHION_LABELS[index % 10]]
        pixels = np.asarray(Image.open(path))
        assert pixels.shape == (28, 28, 3)
        assert (pixels == images[index][:, :, None]).all()


def test_fashion_bad_source_is_one_error(tmp_path):
    from darknet_sparse.darknet.examples import write_fashion

    with pytest.raises(OutputError, match="dataset-fashion-mnist"):
        write_fashion(tmp_path / "out", tmp_path / "missing")

    source = _fashion_source(tmp_path / "bad")
    _idx(source / "t10k-labels-idx1-ubyte.gz", [1, 2])  # 3 images, 2 labels
    with pytest.raises(OutputError, match="3 images and 2 labels|expected N"):
        write_fashion(tmp_path / "out2", source)


def test_fashion_labels_never_contain_each_other():
    from darknet_sparse.darknet.examples import FASHION_LABELS

    for a in FASHION_LABELS:
        assert [b for b in FASHION_LABELS if a in b] == [a]


FASHION_CFG = REPO / "cfg" / "fashion.cfg"
FASHION_WEIGHTS = REPO / "cfg" / "fashion.weights"
# Written by `make fashion` (make test depends on it): the 10,000 test images.
FASHION_DATA = REPO / "data" / "fashion" / "fashion.data"


def test_committed_fashion_weights_reach_their_recorded_top1_on_the_test_images():
    assert FASHION_DATA.is_file(), f"{FASHION_DATA} is missing: run `make fashion`"
    recorded = dict(line.split("=", 1) for line in (REPO / "cfg" / "fashion.top1").read_text().splitlines()
                    if "=" in line and not line.startswith("#"))
    assert int(recorded["valid_images"]) == len(_read_list(FASHION_DATA.parent / "valid.list")) == 10000
    data = FASHION_WEIGHTS.read_bytes()
    assert len(data) == expected_size(load_model(FASHION_CFG, "pjreddie"), 20)
    top1 = classifier_top1(DARKNET, FASHION_DATA, FASHION_CFG, FASHION_WEIGHTS)
    assert top1 == pytest.approx(float(recorded["top1"]), abs=1e-4)
    assert top1 >= 0.90
