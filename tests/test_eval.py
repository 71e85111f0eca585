"""``eval``: detections equal stock ``detector test``; agreement mAP; label files;
classifier top-1/top-k equal ``classifier valid``; bad input is one Error line.

The oracle for detections is the stock build of the same upstream commit
(``build/darknet-stock``, no OpenCV, so it decodes JPEGs with stb_image as
the binding does): its ``darknet detector test`` for the printed classes and
percentages, and ``helpers/stock_detect.c`` (test_detector's steps, linked
with the stock library) for the boxes the binary only draws.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import darknet_sparse as ds
from darknet_sparse.analysis import evaluate
from darknet_sparse.analysis.evaluate import evaluate_classifier, evaluate_detector, label_path, read_labels
from darknet_sparse.analysis.metrics import Remembered
from darknet_sparse.cli import cli
from darknet_sparse.darknet.detect import detect
from darknet_sparse.darknet.examples import classifier_top1, write_digits
from darknet_sparse.darknet.network import Network
from darknet_sparse.errors import BindingError, InputError
from darknet_sparse.pruning.policies import Global, Magnitude

REPO = Path(__file__).resolve().parent.parent
UPSTREAM = Path("/usr/share/darknet")
YOLO_CFG = UPSTREAM / "cfg" / "yolov3-tiny.cfg"
YOLO_WEIGHTS = REPO / "models" / "yolov3-tiny.weights"  # `make models`
NAMES = UPSTREAM / "data" / "coco.names"
DOG = UPSTREAM / "data" / "dog.jpg"
PERSON = UPSTREAM / "data" / "person.jpg"
STOCK = REPO / "build" / "darknet-stock"
DIGITS_CFG = REPO / "cfg" / "digits.cfg"
DIGITS_WEIGHTS = REPO / "cfg" / "digits.weights"
#: The 1x1 convolutions that feed yolov3-tiny's two [yolo] layers (16 and 23).
HEAD_OUTPUTS = (15, 22)
#: What detector test prints for each detection.
PRINTED = re.compile(r"^(.+): (\d+)%$", re.MULTILINE)


def names() -> list[str]:
    return NAMES.read_text().splitlines()


def percent(prob: float) -> str:
    """draw_detections' ``%.0f`` of ``prob*100``, a float product."""
    return f"{np.float32(prob) * np.float32(100):.0f}"


@pytest.fixture(scope="module")
def dense() -> Network:
    return Network(YOLO_CFG, YOLO_WEIGHTS)


@pytest.fixture(scope="module")
def stock_printed(tmp_path_factory) -> list[tuple[str, str]]:
    """Stock ``detector test`` on dog.jpg at 0.5: its (name, percent) lines.
    It draws with the alphabet under ./data/labels and writes predictions.*
    into the folder it runs in."""
    work = tmp_path_factory.mktemp("detector_test")
    (work / "coco.data").write_text(f"classes=80\nnames={NAMES}\n")
    (work / "data").mkdir()
    (work / "data" / "labels").symlink_to(STOCK / "data" / "labels")
    done = subprocess.run([str(STOCK / "darknet"), "detector", "test", "coco.data", str(YOLO_CFG),
                           str(YOLO_WEIGHTS), str(DOG), "-thresh", "0.5"],
                          cwd=work, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "Predicted in" in done.stdout, done.stdout + done.stderr[-2000:]
    return PRINTED.findall(done.stdout)


@pytest.fixture(scope="module")
def stock_boxes(tmp_path_factory) -> list[list[int]]:
    """helpers/stock_detect.c on dog.jpg at 0.5: class, percent, left, right, top, bottom."""
    binary = tmp_path_factory.mktemp("stock_detect") / "stock_detect"
    flags = (STOCK / "binding-cflags").read_text().split()
    links = (STOCK / "link-flags").read_text().split()
    subprocess.run(["gcc", "-O1", "-Wall", *flags, f"-I{STOCK / 'include'}", "-o", str(binary),
                    str(REPO / "tests" / "helpers" / "stock_detect.c"), str(STOCK / "libdarknet.a"), *links],
                   check=True)
    done = subprocess.run([str(binary), str(YOLO_CFG), str(YOLO_WEIGHTS), str(DOG), "0.5"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return [[int(v) for v in line.split()] for line in done.stdout.splitlines()]


# Detections against stock Darknet.

def test_detections_on_dog_are_what_stock_detector_test_prints(dense, stock_printed):
    found = detect(dense, DOG, 0.5).found(0.5)
    assert len(stock_printed) >= 3  # dog, bicycle, car (and truck) on the real weights
    assert [(names()[j], percent(p)) for _, j, p in found] == stock_printed


def test_boxes_match_stock_within_a_pixel(dense, stock_printed, stock_boxes):
    # The driver prints what the binary prints, so its boxes are the binary's.
    assert [(names()[row[0]], str(row[1])) for row in stock_boxes] == stock_printed
    dets = detect(dense, DOG, 0.5)
    corners = dets.corners()
    ours = [[j, corners[i, 0], corners[i, 2], corners[i, 1], corners[i, 3]] for i, j, _ in dets.found(0.5)]
    assert [row[0] for row in ours] == [row[0] for row in stock_boxes]
    assert np.abs(np.array(ours)[:, 1:] - np.array(stock_boxes)[:, 2:]).max() <= 1.0
    assert (dets.width, dets.height) == (768, 576)


def test_every_box_comes_with_upstreams_probabilities(dense):
    dets = detect(dense, DOG, 0.005)
    assert dets.classes == 80 and len(dets) > len(detect(dense, DOG, 0.5))
    assert np.all((dets.probs == 0) | (dets.probs > 0.005))
    assert np.all(dets.probs <= dets.objectness[:, None] + 1e-6)  # prob = objectness * class score


def test_edits_through_the_views_reach_the_sparse_forward_pass(tmp_path):
    # At 60% every layer takes the patched sparse path, whose compressed copy
    # of the weights is made at the first forward pass: a later edit must
    # rebuild it, so detect sees what a net edited before any pass sees.
    pruned = tmp_path / "y60.weights"
    ds.threshold(ds.load(YOLO_CFG, YOLO_WEIGHTS), pruned, Magnitude(0.6))
    used, fresh = Network(YOLO_CFG, pruned), Network(YOLO_CFG, pruned)
    before = detect(used, DOG, 0.005)
    for net in (used, fresh):
        net.params(15)["weights"][:] = 0
    after, expected = detect(used, DOG, 0.005), detect(fresh, DOG, 0.005)
    assert not np.array_equal(before.boxes, after.boxes) or not np.array_equal(before.probs, after.probs)
    assert np.array_equal(after.boxes, expected.boxes) and np.array_equal(after.probs, expected.probs)


# Agreement with a reference model.

def test_agreement_of_the_dense_model_with_itself_is_one(dense):
    report = evaluate_detector(dense, [DOG, PERSON], reference=dense, names=names())
    assert report.truth == "reference" and "agreement" in report.truth_source
    assert report.map50 == pytest.approx(1.0) and report.map == pytest.approx(1.0)
    assert report.truths >= 6 and report.detections > report.truths
    assert {c.name for c in report.classes} >= {"dog", "bicycle", "person", "horse"}
    assert all(c.ap50 == pytest.approx(1.0) for c in report.classes)


def test_a_remembered_reference_runs_once_per_image(dense):
    """Scoring several models against one reference (a loop's steps) runs
    the reference on each image once; the reports are the same."""
    calls = []

    class Counting:
        detector_classes = dense.detector_classes

        def detector_error(self):
            return dense.detector_error()

        def detect(self, image, *args):
            calls.append(Path(image).name)
            return dense.detect(image, *args)

    reference = Remembered(Counting())
    first = evaluate_detector(dense, [DOG, PERSON], reference=reference)
    second = evaluate_detector(dense, [DOG, PERSON], reference=reference)
    assert sorted(calls) == ["dog.jpg", "person.jpg"]
    assert dataclasses.replace(first, seconds_per_image=0) == dataclasses.replace(second, seconds_per_image=0)
    assert first.map50 == pytest.approx(1.0)


@pytest.mark.parametrize("layer", HEAD_OUTPUTS)
def test_zeroing_either_heads_output_layer_drops_agreement(dense, layer):
    broken = Network(YOLO_CFG, YOLO_WEIGHTS)
    broken.params(layer)["weights"][:] = 0
    report = evaluate_detector(broken, [DOG, PERSON], reference=dense)
    assert report.map50 < 0.9 and report.map < 0.9


# Darknet label files.

@pytest.mark.parametrize("image, labels", [
    ("data/images/a.jpg", "data/labels/a.txt"),
    ("voc/JPEGImages/b.JPEG", "voc/labels/b.txt"),
    ("raw/c.png", "labels/c.txt"),
    ("images/images/d.JPG", "labels/images/d.txt"),  # first occurrence only, as find_replace
])
def test_label_path_follows_fill_truth_detection(image, labels):
    assert label_path(image) == Path(labels)


@pytest.mark.parametrize("image, labels", [
    ("/d/images/a.jpg", "/d/images/a.txt"),  # no plain images -> labels: beside the image
    ("/d/JPEGImages/a.png", "/d/labels/a.txt"),
    ("/coco/images/train2017/a.jpg", "/coco/labels/train2017/a.txt"),
    ("/d/a.jpg.JPEG", "/d/a.jpg.txt"),  # only the extension at the end
])
def test_label_path_follows_alexeyabs_replace_image_to_label(image, labels):
    assert label_path(image, "alexeyab") == Path(labels)


def test_label_path_refuses_a_name_darknet_derives_nothing_from():
    with pytest.raises(InputError, match="derives no label file"):
        label_path("images/e.jpeg")


def _labelled_copy(root: Path, dense: Network) -> Path:
    """dog.jpg under root/images with the dense model's detections as its labels."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    image = root / "images" / "dog.jpg"
    shutil.copyfile(DOG, image)
    dets = detect(dense, image, 0.5)
    (root / "labels" / "dog.txt").write_text("".join(
        f"{j} {' '.join(f'{v:.7f}' for v in dets.boxes[i])}\n" for i, j, _ in dets.found()))
    return image


def test_label_files_are_the_ground_truth(dense, tmp_path):
    # (tmp_path is named after the test: no "images" or "raw" in the name, which Darknet would rewrite)
    image = _labelled_copy(tmp_path, dense)
    report = evaluate_detector(dense, [image])
    assert report.truth == "labels" and report.truths == 5
    assert report.map50 == pytest.approx(1.0) and report.map == pytest.approx(1.0)
    (tmp_path / "labels" / "dog.txt").write_text("16 0.5 0.5 0.2 0.2\n")  # a dog where there is none
    assert evaluate_detector(dense, [image]).map50 == 0


@pytest.mark.parametrize("text, message", [
    ("80 0.5 0.5 0.1 0.1\n", "class 80, the network has classes 0..79"),
    ("1 0.5 0.5 0.1\n", ":1: expected 'class cx cy w h'"),
    ("1 0.5 0.5 0.1 0.1\n2 0.5 nan 0.1 0.1\n", ":2: box"),
])
def test_bad_label_files_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "x.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(message)):
        read_labels(path, 80)


def test_a_missing_label_file_is_an_error(dense, tmp_path):
    image = _labelled_copy(tmp_path, dense)
    (tmp_path / "labels" / "dog.txt").unlink()
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'labels' / 'dog.txt'}: cannot read")):
        evaluate_detector(dense, [image])


# Classifiers.

@pytest.fixture(scope="module")
def digits_top5(tmp_path_factory) -> Path:
    data = write_digits(tmp_path_factory.mktemp("eval") / "digits")
    data.write_text(data.read_text().replace("top=2", "top=5"))
    return data


def test_classifier_top1_and_top5_equal_classifier_valid(digits_top5, tmp_path):
    # 85% global pruning: top-1 about 0.3, top-5 just under 1 (the dense model scores 1.0 on both).
    weights = tmp_path / "digits85.weights"
    ds.threshold(ds.load(DIGITS_CFG, DIGITS_WEIGHTS), weights, Global(0.85))
    binary = REPO / "build" / "darknet" / "darknet"
    done = subprocess.run([str(binary), "classifier", "valid", str(digits_top5), str(DIGITS_CFG), str(weights)],
                          capture_output=True, text=True, timeout=600)
    top5 = float(re.findall(r"top 5: ([0-9.]+)$", done.stdout, re.MULTILINE)[-1])
    report = evaluate_classifier(Network(DIGITS_CFG, weights), digits_top5, 5)
    assert report.images == 359 and report.k == 5
    assert report.top1 == pytest.approx(classifier_top1(binary, digits_top5, DIGITS_CFG, weights), abs=1e-6)
    assert report.topk == pytest.approx(top5, abs=1e-6)
    assert 0.1 < report.top1 < report.topk < 1


def test_a_classifier_cannot_detect():
    with pytest.raises(BindingError, match=r"cannot detect: the last layer is not \[yolo\]"):
        Network(DIGITS_CFG, DIGITS_WEIGHTS).detect(DOG, 0.5)


# The command.

def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_agreement_in_words_and_per_class_ap_in_json():
    result = run("eval", YOLO_WEIGHTS, "--cfg", YOLO_CFG, "--images", DOG, "--reference", YOLO_WEIGHTS,
                 "--names", NAMES)
    assert result.exit_code == 0, result.output
    assert "its detections with confidence above 0.5 are the ground truth" in result.output
    assert "not accuracy against human labels" in result.output
    assert re.search(r"^mAP@0\.5 +1\.0000$", result.output, re.MULTILINE)
    result = run("eval", YOLO_WEIGHTS, "--cfg", YOLO_CFG, "--images", DOG, "--reference", YOLO_WEIGHTS,
                 "--names", NAMES, "--json")
    report = json.loads(result.stdout)
    assert report["truth"] == "reference" and report["map"] == pytest.approx(1.0)
    assert {c["name"]: c["ap50"] for c in report["classes"]} == pytest.approx(
        {"bicycle": 1.0, "car": 1.0, "dog": 1.0, "truck": 1.0})


def test_eval_finds_the_class_names_beside_the_model(tmp_path):
    """No --names: coco.names beside yolov3-tiny.weights names the classes
    (text and JSON); names of another class count beside it are passed over."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "yolov3-tiny.weights").symlink_to(YOLO_WEIGHTS)
    shutil.copyfile(YOLO_CFG, model / "yolov3-tiny.cfg")  # not upstream's cfg folder, which has coco.data
    (model / "aaa.names").write_text("a\nb\nc\n")  # sorted first, but 3 classes: not these
    args = ("eval", model / "yolov3-tiny.weights", "--images", DOG, "--reference", YOLO_WEIGHTS)
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert not re.search(r"^ +16  dog ", result.output, re.MULTILINE) and "class names:" not in result.output
    shutil.copyfile(NAMES, model / "coco.names")
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert re.search(r"^ +16  dog +1 +1\.0000 +1\.0000$", result.output, re.MULTILINE), result.output
    assert f"class names: {model / 'coco.names'} (beside the model" in result.output
    report = json.loads(run(*args, "--json").stdout)
    assert {c["name"] for c in report["classes"]} == {"bicycle", "car", "dog", "truck"}


def test_find_names_reads_the_data_file_beside_the_model(tmp_path):
    weights, cfg = tmp_path / "m.weights", tmp_path / "cfgs" / "yolo.cfg"
    cfg.parent.mkdir()
    cfg.write_bytes(b"")
    weights.write_bytes(b"")
    assert evaluate.find_names(weights, cfg, 80) is None
    (tmp_path / "m.data").write_text(f"classes=80\nnames={NAMES}\n")
    assert evaluate.find_names(weights, cfg, 80) == NAMES
    assert evaluate.find_names(weights, cfg, 20) is None
    (cfg.parent / "voc.names").write_text("".join(f"v{i}\n" for i in range(20)))  # beside the cfg
    assert evaluate.find_names(weights, cfg, 20) == cfg.parent / "voc.names"
    (tmp_path / "m.names").write_text("".join(f"c{i}\n" for i in range(80)))
    assert evaluate.find_names(weights, cfg, 80) == tmp_path / "m.names"
    # the upstream cfg folder's coco.data names yolov3-tiny's 80 classes
    assert evaluate.find_names(tmp_path / "y70.weights", YOLO_CFG, 80).name == "coco.names"


def test_cli_classifier(digits_top5):
    result = run("eval", DIGITS_WEIGHTS, "--cfg", DIGITS_CFG, "--data", digits_top5, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["k"] == 5


@pytest.mark.parametrize("args, message", [
    (("--images", "/no/such/folder"), "/no/such/folder: cannot read"),
    (("--reference-cfg", YOLO_CFG, "--images", DOG), "--reference-cfg goes with --reference"),
    ((), "give --images"),
    (("--images", DOG, "--names", "{three}"), "3 class names for a model with 80 classes"),
])
def test_cli_bad_detector_input_is_one_error_line(tmp_path, args, message):
    three = tmp_path / "three.names"
    three.write_text("a\nb\nc\n")
    result = run("eval", YOLO_WEIGHTS, "--cfg", YOLO_CFG, *(str(a).format(three=three) for a in args))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert message in lines[0]


def test_cli_missing_label_file_is_one_error_line(tmp_path):
    (tmp_path / "images").mkdir()
    shutil.copyfile(DOG, tmp_path / "images" / "dog.jpg")
    result = run("eval", YOLO_WEIGHTS, "--cfg", YOLO_CFG, "--images", tmp_path / "images")
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'labels' / 'dog.txt'}: cannot read the label file: No such file or directory"]


@pytest.mark.parametrize("args, message", [
    (("--reference", DIGITS_WEIGHTS), "is a classifier"),
    (("--images", DOG), "--images is for detectors"),
    ((), "give --data"),
])
def test_cli_bad_classifier_input_is_one_error_line(args, message):
    result = run("eval", DIGITS_WEIGHTS, "--cfg", DIGITS_CFG, *args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert message in lines[0]


def test_an_unreadable_image_is_an_error_not_darknets_exit(tmp_path):
    # Darknet's loader exit(0)s on a file it cannot decode: run in a process of its own.
    fake = tmp_path / "images" / "fake.jpg"
    fake.parent.mkdir()
    fake.write_text("not a JPEG\n")
    done = subprocess.run([sys.executable, "-m", "darknet_sparse", "eval", str(YOLO_WEIGHTS), "--cfg", str(YOLO_CFG),
                           "--images", str(fake.parent), "--reference", str(YOLO_WEIGHTS)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert f"Error: {fake}: Darknet cannot read the image" in done.stderr
