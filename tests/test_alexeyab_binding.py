"""AlexeyAB's Darknet in-process: the binding compiled against the fork's
patched build (``_darknet_alexeyab``, darknet/_fork_alexeyab.c), picked by
``Network(cfg, weights, fork=...)`` and every in-process command's ``--fork``.

- The two bindings are the fork they say, and ``fork=auto`` picks AlexeyAB's
  for a cfg only it reads; a cfg the chosen fork cannot run is one ``Error:``
  line naming the feature.
- ``eval``'s detections (:func:`darknet_sparse.darknet.detect.detect`, what
  ``evaluate_detector`` scores) are those of the fork's own ``detector test``
  (stock build, the oracle): classes, percentages, boxes within a pixel.
- The real yolov3-tiny through both forks, dense and 70%: the same detections
  where the preprocessing is the same; with each fork's own preprocessing
  (AlexeyAB: plain resize) they agree less, and the output says which.
- ``recalibrate`` and ``sensitivity`` on yolov4-tiny, yolov7-tiny (AlexeyAB-
  initialised, 128x128) and the real yolov3-tiny with ``--fork alexeyab``.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import darknet_sparse as ds
from darknet_sparse import darknet
from darknet_sparse.darknet import images
from darknet_sparse.darknet.detect import detect
from darknet_sparse.darknet.runner import set_options
from darknet_sparse.errors import BindingError, CfgError
from darknet_sparse.format.files import load_model
from darknet_sparse.format.layout import conv_padding, conv_strides
from helpers.ab_darknet import CFGS, REPO, STOCK, require

DOG = Path("/usr/share/darknet/data/dog.jpg")
YOLO_CFG = REPO / "models" / "yolov3-tiny.cfg"
YOLO_WEIGHTS = REPO / "models" / "yolov3-tiny.weights"
EVAL_IMAGES = REPO / "data" / "images" / "eval"
TRAIN_IMAGES = REPO / "data" / "images" / "train"
#: AlexeyAB's detector test: its default -thresh, and the NMS it uses.
AB_THRESH = 0.25


def cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    """The command line in a child process: Darknet's own prints on stdout
    would show there (a report or JSON must be all that stdout holds)."""
    done = subprocess.run([sys.executable, "-m", "darknet_sparse", *map(str, args)], capture_output=True,
                          text=True, errors="replace", timeout=900)
    if check:
        assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def ab_model(name: str, folder: Path, size: int = 128, seed: int = 5) -> tuple[Path, Path]:
    """``name``.cfg of tests/data/alexeyab-cfg at size x size, batch 2, and
    weights the fork initialises itself (through the binding, seeded), with
    rolling variances 1 instead of the fork's initial 0 (so inference does not
    divide by ~0)."""
    cfg = folder / f"{name}.cfg"
    cfg.write_text(set_options((CFGS / f"{name}.cfg").read_text(),
                               {"width": size, "height": size, "batch": 2, "subdivisions": 1}))
    darknet.seed(seed, darknet.backend(fork="alexeyab"))
    net = darknet.Network(cfg, fork="alexeyab")
    for index in range(net.num_layers):
        arrays = net.params(index)
        if "rolling_variance" in arrays:
            arrays["rolling_variance"][:] = 1
    weights = folder / f"{name}.weights"
    net.save(weights)
    return cfg, weights


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    require(STOCK)
    folder = tmp_path_factory.mktemp("ab-models")
    return {name: ab_model(name, folder) for name in ("yolov4-tiny", "yolov7-tiny")}


@pytest.fixture(scope="module")
def few_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four training frames, as a list file."""
    listing = tmp_path_factory.mktemp("few") / "few.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(TRAIN_IMAGES.glob("*.jpg"))[:4]))
    return listing


@pytest.fixture(scope="module")
def pruned70(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real yolov3-tiny at 70% (threshold -s 0.7 --mode global)."""
    out = tmp_path_factory.mktemp("p70") / "yolov3-tiny-70.weights"
    cli("threshold", YOLO_WEIGHTS, "--cfg", YOLO_CFG, "-s", "0.7", "--mode", "global", "-o", out)
    return out


def test_each_fork_has_its_binding_and_auto_picks_by_the_cfg(tiny_models) -> None:
    assert darknet.backend(fork="pjreddie").fork == "pjreddie"
    assert darknet.backend(fork="alexeyab").fork == "alexeyab"
    cfg, weights = tiny_models["yolov4-tiny"]
    net = darknet.Network(cfg, weights)
    assert net.fork == "alexeyab" and "[route] groups=" in net.fork_reason
    assert net.layer_type(net.num_layers - 1) == "yolo"
    real = darknet.Network(YOLO_CFG, YOLO_WEIGHTS)
    assert real.fork == "pjreddie" and real.fork_reason == "header version 0.2.0"
    assert darknet.Network(YOLO_CFG, YOLO_WEIGHTS, fork="alexeyab").fork == "alexeyab"
    with pytest.raises(CfgError, match=r"uses AlexeyAB-only features \(.*\[route\] groups="):
        darknet.Network(cfg, weights, fork="pjreddie")


def test_a_cfg_the_chosen_fork_cannot_run_is_one_error_line(tiny_models, tmp_path: Path) -> None:
    """Each fork refuses, in one line naming the feature, what it cannot
    run: AlexeyAB's [route] groups= under --fork pjreddie, pjreddie's
    [l2norm] under --fork alexeyab."""
    cfg, weights = tiny_models["yolov4-tiny"]
    done = cli("eval", weights, "--cfg", cfg, "--images", DOG, "--fork", "pjreddie", check=False)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "[route] groups=" in lines[0], done.stderr
    l2 = tmp_path / "l2.cfg"
    l2.write_text("[net]\nwidth=16\nheight=16\nchannels=3\n[convolutional]\nfilters=4\nsize=3\nactivation=leaky\n"
                  "[l2norm]\n")
    net = darknet.Network(l2, fork="pjreddie")
    net.save(tmp_path / "l2.weights")
    done = cli("sensitivity", "-w", tmp_path / "l2.weights", "--cfg", l2, "--images", DOG, "--fork", "alexeyab",
               check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ") and "[l2norm]" in lines[0] and "alexeyab fork" in lines[0]


def _detector_test(tmp_path: Path, cfg: Path, weights: Path, image: Path) -> list[tuple[str, int, tuple]]:
    """(class name, percent, (left, top, width, height)) for every line the
    stock fork's ``detector test -ext_output`` prints."""
    data = tmp_path / "coco.data"
    data.write_text(f"classes=80\nnames={STOCK / 'data' / 'coco.names'}\n")
    done = subprocess.run([str(require(STOCK)), "detector", "test", str(data), str(cfg), str(weights), str(image),
                           "-thresh", str(AB_THRESH), "-dont_show", "-ext_output"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    pattern = re.compile(r"^(.+): (\d+)%\s+\(left_x:\s+(-?\d+)\s+top_y:\s+(-?\d+)\s+width:\s+(\d+)\s+height:\s+(\d+)\)")
    found = [m.groups() for m in map(pattern.match, done.stdout.splitlines()) if m]
    return [(name, int(p), tuple(map(int, box))) for name, p, *box in found]


def test_eval_detections_are_the_forks_detector_test(tmp_path: Path) -> None:
    """The real yolov3-tiny on dog.jpg through the AlexeyAB binding: the
    classes, rounded percentages and boxes (as detector test rounds them,
    within a pixel) of the stock fork's detector test.  (detector test also
    fuses batch norm into the weights first: only rounding differs.)"""
    expected = _detector_test(tmp_path, YOLO_CFG, YOLO_WEIGHTS, DOG)
    assert len(expected) >= 4  # dog, bicycle, car, truck (and more) at 0.25
    net = darknet.Network(YOLO_CFG, YOLO_WEIGHTS, fork="alexeyab")
    assert not net.letterbox
    dets = detect(net, DOG, thresh=AB_THRESH)
    names = (STOCK / "data" / "coco.names").read_text().splitlines()
    found = []
    for i, j, p in dets.found(AB_THRESH):
        x, y, w, h = dets.boxes[i].astype(np.float64)
        box = ((x - w / 2) * dets.width, (y - h / 2) * dets.height, w * dets.width, h * dets.height)
        found.append((names[j], int(np.round(p * 100)), box))
    assert len(found) == len(expected)
    for name, percent, box in expected:
        match = [f for f in found if f[0] == name and f[1] == percent
                 and max(abs(a - b) for a, b in zip(f[2], box)) <= 1]
        assert match, f"{name} {percent}% {box} not found in {found}"


def _agreement(weights: Path, cfg: Path, fork: str, reference_cfg: Path, reference_fork: str) -> dict:
    done = cli("eval", weights, "--cfg", cfg, "--images", EVAL_IMAGES, "--max-images", 8, "--reference", weights,
               "--reference-cfg", reference_cfg, "--fork", fork, "--reference-fork", reference_fork, "--json")
    return json.loads(done.stdout)


@pytest.mark.parametrize("model", ["dense", "70%"])
def test_the_real_model_agrees_through_both_forks(model: str, pruned70: Path, tmp_path: Path) -> None:
    """eval --fork alexeyab against --fork pjreddie (and back) on 8 frames:
    agreement mAP@0.5 >= 0.95, dense and at 70%.  What differs between the
    forks is the preprocessing (pjreddie letterboxes; AlexeyAB's detector test
    stretches the image to 416x416 unless letter_box=1 in [net]) and the
    decode (AlexeyAB's get_network_boxes with `letter`, its yolo layer's
    scale_x_y and new_coords, which yolov3-tiny leaves at 1 and 0).  With
    the same preprocessing (letter_box=1 on AlexeyAB's side) only the decode
    differs and the detections agree at >= 0.95 (here: 1.0, the same boxes);
    with each fork's own preprocessing they still agree at >= 0.7 (0.75 to
    0.95 measured), and the report says how each side prepared its images."""
    weights = YOLO_WEIGHTS if model == "dense" else pruned70
    letterboxed = tmp_path / "yolov3-tiny-letterbox.cfg"
    letterboxed.write_text(set_options(YOLO_CFG.read_text(), {"letter_box": 1}))
    one = _agreement(weights, letterboxed, "alexeyab", YOLO_CFG, "pjreddie")
    other = _agreement(weights, YOLO_CFG, "pjreddie", letterboxed, "alexeyab")
    assert (one["fork"], one["reference_fork"], other["fork"], other["reference_fork"]) == (
        "alexeyab", "pjreddie", "pjreddie", "alexeyab")
    assert "letter_box=1" in one["preprocessing"] and "pjreddie" in one["reference_preprocessing"]
    assert one["truths"] > 0 and other["truths"] > 0
    assert one["map50"] >= 0.95 and other["map50"] >= 0.95, (one["map50"], other["map50"])
    own = _agreement(weights, YOLO_CFG, "alexeyab", YOLO_CFG, "pjreddie")
    assert "without letterbox" in own["preprocessing"]
    assert own["map50"] >= 0.7, own["map50"]


def _arrays(cfg: Path, weights: Path) -> dict[tuple[int, str], tuple[str, np.ndarray]]:
    wf = ds.load(cfg, weights, fork="alexeyab")
    return {(s.layer.index, s.param.name): (s.param.role, np.array(wf.array(s))) for s in wf.slots}


@pytest.mark.parametrize("name", ["yolov4-tiny", "yolov7-tiny", "yolov3-tiny"])
def test_recalibrate_changes_only_rolling_statistics(name: str, tiny_models, few_images: Path,
                                                     tmp_path: Path) -> None:
    """recalibrate --fork (auto for the AlexeyAB cfgs, alexeyab for the real
    yolov3-tiny): every array but the rolling mean and variance is written
    bit for bit as it was; the statistics of every batch-norm layer moved."""
    cfg, weights = tiny_models[name] if name in tiny_models else (YOLO_CFG, YOLO_WEIGHTS)
    out = tmp_path / "recalibrated.weights"
    fork = "alexeyab" if name == "yolov3-tiny" else "auto"
    done = cli("recalibrate", "-w", weights, "--cfg", cfg, "--images", few_images, "--batch", 2, "-o", out,
               "--fork", fork, "--json")
    report = json.loads(done.stdout)
    assert report["fork"] == "alexeyab" and report["images"] == 4
    before, after = _arrays(cfg, weights), _arrays(cfg, out)
    assert before.keys() == after.keys()
    moved = set()
    for key, (role, array) in before.items():
        if role in ("rolling_mean", "rolling_variance"):
            if not np.array_equal(array, after[key][1]):
                moved.add(key[0])
        else:
            np.testing.assert_array_equal(after[key][1], array, err_msg=str(key))
    bn_layers = {key[0] for key, (role, _) in before.items() if role == "rolling_mean"}
    assert bn_layers and moved == bn_layers
    # The first convolution's new rolling mean is its output's mean over the
    # images, prepared as the fork does (numpy here): this catches a wrong
    # rolling rate (AlexeyAB's batch norm moves by 0.1, pjreddie's by 0.01).
    np.testing.assert_allclose(after[(0, "rolling_mean")][1], _first_conv_mean(cfg, weights, few_images),
                               rtol=2e-3, atol=1e-4)
    assert np.all(after[(0, "rolling_variance")][1] > 0)


def _first_conv_mean(cfg: Path, weights: Path, listing: Path) -> np.ndarray:
    """Per filter, the mean of layer 0's output (before batch norm) over the
    images as AlexeyAB's Darknet prepares them: a plain convolution in numpy."""
    model = load_model(cfg, "alexeyab", weights)
    layer, section = model.layers[0], model.layers[0].section
    assert layer.type == "convolutional" and section.get_int("groups", 1) == 1
    size = section.get_int("size", 1)
    stride_x, stride_y = conv_strides(section, "alexeyab")
    pad = conv_padding(section, size)
    x = images.load_batch(images.image_paths(listing), (model.net.get_int("channels"), model.net.get_int("height"),
                          model.net.get_int("width")), images.default_resize(model)).astype(np.float64)
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    _, out_h, out_w = layer.output
    windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(2, 3))
    windows = windows[:, :, ::stride_y, ::stride_x][:, :, :out_h, :out_w]
    w = ds.load(cfg, weights, fork="alexeyab")
    kernel = next(np.array(w.array(slot)) for slot in w.slots if slot.layer.index == 0 and slot.param.role == "weights")
    return kernel.reshape(layer.output[0], -1).astype(np.float64) @ windows.mean(axis=(0, 2, 3)).reshape(-1)


def _heads_and_feeders(cfg: Path) -> list[tuple[int, int]]:
    """(yolo head, the convolution right before it, which feeds only it)."""
    model = load_model(cfg, "alexeyab")
    return [(layer.index, layer.index - 1) for layer in model.layers
            if layer.type == "yolo" and model.layers[layer.index - 1].type == "convolutional"]


@pytest.mark.parametrize("name", ["yolov4-tiny", "yolov7-tiny", "yolov3-tiny"])
def test_sensitivity_sees_every_head(name: str, tiny_models, few_images: Path) -> None:
    """sensitivity --images measures every [yolo] head: pruning the
    convolution that feeds only one head (the first as well as the last)
    moves the deviation; the model ran in AlexeyAB's Darknet."""
    cfg, weights = tiny_models[name] if name in tiny_models else (YOLO_CFG, YOLO_WEIGHTS)
    pairs = _heads_and_feeders(cfg)
    assert len(pairs) >= 2
    feeders = [feeder for _, feeder in pairs]
    done = cli("sensitivity", "-w", weights, "--cfg", cfg, "--images", few_images, "--levels", "0.9", "--layers",
               ",".join(map(str, feeders)), "--fork", "alexeyab", "--json")
    report = json.loads(done.stdout)
    assert report["fork"] == "alexeyab"
    moved = {row["layer"]: row["metrics"]["rel_l2"] for row in report["rows"] if row["level"] > 0}
    assert moved.keys() == set(feeders)
    for feeder, value in moved.items():
        assert np.isfinite(value) and value > 0, f"pruning layer {feeder} (feeding one head) moved nothing: {moved}"


def test_eval_on_alexeyab_cfgs_says_fork_and_preprocessing(tiny_models, tmp_path: Path) -> None:
    """eval on yolov4-tiny and yolov7-tiny (fork auto): exit 0, the report
    names AlexeyAB's Darknet and its plain resize; with letter_box=1 in
    [net], or --letter-box (detector test's -letter_box), the letterbox."""
    for name in ("yolov4-tiny", "yolov7-tiny"):
        cfg, weights = tiny_models[name]
        text = cli("eval", weights, "--cfg", cfg, "--images", DOG, "--reference", weights).stdout
        assert "fork: alexeyab (cfg uses" in text and "the model ran in AlexeyAB's Darknet" in text
        assert "resized to 128x128 without letterbox" in text
    cfg, weights = tiny_models["yolov4-tiny"]
    boxed = tmp_path / "yolov4-tiny-letterbox.cfg"
    boxed.write_text(set_options(cfg.read_text(), {"letter_box": 1}))
    assert darknet.Network(boxed, weights).letterbox
    text = cli("eval", weights, "--cfg", boxed, "--images", DOG, "--reference", weights).stdout
    assert "letterboxed to 128x128 (AlexeyAB's detector test with letter_box=1 in [net] or -letter_box)" in text
    cfg, weights = tiny_models["yolov7-tiny"]
    text = cli("eval", weights, "--cfg", cfg, "--images", DOG, "--reference", weights, "--letter-box").stdout
    assert "letterboxed to 128x128 (AlexeyAB's detector test with letter_box=1 in [net] or -letter_box)" in text
    net = darknet.Network(cfg, weights)
    net.set_letterbox()
    assert net.letterbox
    with pytest.raises(BindingError, match="always letterboxes"):
        darknet.Network(YOLO_CFG, YOLO_WEIGHTS, fork="pjreddie").set_letterbox(False)


def test_eval_map_is_the_forks_detector_map(pruned70: Path, tmp_path: Path) -> None:
    """eval --fork alexeyab of the 70% yolov3-tiny on Darknet's seven sample
    photos, against labels made from the dense model's detections (pjreddie,
    above 0.3; any fixed labels serve), and the fork's own ``detector map
    -points 101`` (COCO's 101-point interpolation, pycocotools' too) on the
    same files: every class's AP@0.5 within 0.005, and the fork's mAP@0.5 is
    their sum over all 80 classes / 80 (the fork counts a class without
    ground truth as AP 0; eval averages the classes with ground truth)."""
    folder = tmp_path / "JPEGImages"  # both forks' label rule: JPEGImages/x.jpg -> labels/x.txt
    folder.mkdir()
    (tmp_path / "labels").mkdir()
    dense = darknet.Network(YOLO_CFG, YOLO_WEIGHTS, fork="pjreddie")
    for photo in sorted(DOG.parent.glob("*.jpg")):
        shutil.copy(photo, folder)
        dets = detect(dense, photo, thresh=0.3)
        (tmp_path / "labels" / f"{photo.stem}.txt").write_text("".join(
            f"{j} {' '.join(f'{v:.6f}' for v in dets.boxes[i])}\n" for i, j, _ in dets.found(0.3)))
    listing = tmp_path / "valid.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(folder.glob("*.jpg"))))
    data = tmp_path / "map.data"
    data.write_text(f"classes=80\nvalid={listing}\nnames={STOCK / 'data' / 'coco.names'}\nbackup={tmp_path}\n")
    done = subprocess.run([str(require(STOCK)), "detector", "map", str(data), str(YOLO_CFG), str(pruned70),
                           "-points", "101", "-dont_show"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = {int(m[1]): float(m[2]) / 100 for m in re.finditer(r"class_id = (\d+), name = [^,]*, ap = ([\d.]+)%",
                                                                  done.stdout)}
    their_map = float(re.search(r"mean average precision \(mAP@0\.50\) = ([\d.]+)", done.stdout)[1])
    assert len(theirs) == 80
    ours = json.loads(cli("eval", pruned70, "--cfg", YOLO_CFG, "--images", listing, "--fork", "alexeyab",
                          "--json").stdout)
    assert ours["fork"] == "alexeyab" and ours["truths"] >= 10 and len(ours["classes"]) >= 5
    for c in ours["classes"]:
        assert abs(c["ap50"] - theirs[c["index"]]) <= 0.005, (c, theirs[c["index"]])
    assert abs(sum(c["ap50"] for c in ours["classes"]) / 80 - their_map) <= 0.005
    assert 0 < ours["map50"] < 1



def test_network_train_is_refused_in_alexeyabs_fork(tiny_models) -> None:
    """Network.train through the AlexeyAB binding is refused in one line (it
    diverged from run to run there); the loop trains with the fork's binary."""
    cfg, weights = tiny_models["yolov4-tiny"]
    net = darknet.Network(cfg, weights)
    with pytest.raises(BindingError, match="pjreddie's train_network only"):
        net.train(np.zeros((2, net.inputs), np.float32), np.zeros((2, 1), np.float32))
