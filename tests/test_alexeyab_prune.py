"""[net] prune=1 in AlexeyAB's Darknet (patches/alexeyab/0001-prune.patch):
zero weights stay zero through `detector train` (yolov4-tiny) and `classifier
train` (the digits classifier: convolutional and connected layers), SGD with
momentum and decay on the CPU, and through the EMA copies.

The weights are the fork's own initialisation (``ab_tool init``, stock build),
pruned by ``darknet-sparse threshold --fork alexeyab --mode magnitude -s 0.5``.
The training runs are seeded (seed=1, patches/alexeyab/0006-seed; stock
ignores the key), so each draws the same every time, and every assertion
would hold whatever the draw: with prune=1 no zero may move,
with prune=0 (patched) or in the stock build (which ignores prune=1) zeros are
revived, and the live weights all move in every run (learning rate > 0, the
gradient of a live weight is never exactly 0 here).  Every run is checked to
be finite: the training images are tinted so that no pixel is grey (see
``write_detection_set``: the fork's rgb_to_hsv makes a NaN hue of a grey
pixel, which turned about one run in four NaN, in stock too); ``jitter=0`` and
``random=0`` keep the crops and the input size fixed.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.ab_darknet import CFGS, REPO, TINY_TRAIN, edit_cfg, run, weight_arrays, write_detection_set
from helpers.ab_fixtures import ab  # noqa: F401


def prune_file(cfg: Path, weights: Path, out: Path, sparsity: float = 0.5) -> Path:
    command = [sys.executable, "-m", "darknet_sparse", "threshold", "--fork", "alexeyab", "--mode", "magnitude",
               "-s", str(sparsity), "--cfg", str(cfg), str(weights), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return out


def revived_and_moved(cfg: Path, before: Path, after: Path, layers: set[int] | None = None) -> tuple[int, int, int, int]:
    """(zeros before, zeros revived, live weights before, live weights moved)
    over ``layers`` (default all); asserts every array finite."""
    a, b = weight_arrays(cfg, before), weight_arrays(cfg, after)
    assert a.keys() == b.keys()
    zeros = revived = live = moved = 0
    for key in a:
        if layers is not None and key[0] not in layers:
            continue
        assert np.isfinite(b[key]).all(), f"layer {key}: NaN or Inf after training"
        zero = a[key] == 0
        zeros += int(zero.sum())
        revived += int((zero & (b[key] != 0)).sum())
        live += int((~zero).sum())
        moved += int((~zero & (b[key] != a[key])).sum())
    return zeros, revived, live, moved


@pytest.fixture(scope="module")
def yolo(ab, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    folder = tmp_path_factory.mktemp("ab_yolo")
    cfg = folder / "yolov4-tiny.cfg"
    cfg.write_text(edit_cfg((CFGS / "yolov4-tiny.cfg").read_text(), dict(TINY_TRAIN, learning_rate=0.0001),
                            {"yolo": {"random": 0, "jitter": 0}}))
    dense = folder / "dense.weights"
    run([ab.stock_tool, "init", cfg, dense], folder)
    pruned = prune_file(cfg, dense, folder / "pruned.weights")
    return folder, cfg, pruned, write_detection_set(folder / "set")


def detector_train(darknet: Path, folder: Path, cfg: Path, weights: Path, net: dict, name: str) -> Path:
    """`detector train` of ``weights`` with the [net] keys ``net`` added; the final weights."""
    work = folder / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    train_cfg = work / f"{name}.cfg"
    train_cfg.write_text(edit_cfg(cfg.read_text(), {"seed": 1, **net}))
    data = (folder / "set" / "set.data").read_text().replace(str(folder / "set" / "backup"), str(work))
    (work / "set.data").write_text(data)
    run([darknet, "detector", "train", work / "set.data", train_cfg, weights, "-dont_show", "-nomap"], work)
    final = work / f"{name}_final.weights"
    assert final.is_file(), f"{darknet} wrote no {final.name}"
    return final


def test_detector_train_prune_keeps_zeros(ab, yolo):  # noqa: F811
    folder, cfg, pruned, _ = yolo
    final = detector_train(ab.patched, folder, cfg, pruned, {"prune": 1}, "prune1")
    zeros, revived, live, moved = revived_and_moved(cfg, pruned, final)
    assert zeros > 0.45 * (zeros + live)
    assert revived == 0
    assert moved > 0.9 * live  # it did train


def test_detector_train_without_prune_revives_zeros(ab, yolo):  # noqa: F811
    """The guard matters: the same run with prune=0, and stock with prune=1, revive zeros."""
    folder, cfg, pruned, _ = yolo
    for darknet, net, name in ((ab.patched, {"prune": 0}, "prune0"), (ab.stock, {"prune": 1}, "stock")):
        zeros, revived, live, moved = revived_and_moved(cfg, pruned, detector_train(darknet, folder, cfg, pruned,
                                                                                    net, name))
        assert revived > 0.5 * zeros, name
        assert moved > 0.9 * live, name


def test_detector_train_ema_keeps_zeros(ab, yolo):  # noqa: F811
    """ema_alpha: the EMA copies start at max_batches/2 and are saved with every
    _last file (savelast=1 in the .data file): they keep the zeros too."""
    folder, cfg, pruned, _ = yolo
    final = detector_train(ab.patched, folder, cfg, pruned, {"prune": 1, "ema_alpha": 0.5}, "ema")
    ema = final.with_name("ema_ema.weights")
    assert ema.is_file()
    assert ema.read_bytes() != final.read_bytes()
    for path in (final, ema):
        _, revived, live, moved = revived_and_moved(cfg, pruned, path)
        assert revived == 0, path.name
        assert moved > 0.9 * live, path.name


@pytest.mark.parametrize("prune", [1, 0])
def test_ema_apply_keeps_zeros(ab, yolo, prune):  # noqa: F811
    """EMA copies gone stale on zero weights (set to 1) are zeroed before
    ema_apply writes them back with prune=1; with prune=0 they revive the zeros."""
    folder, cfg, pruned, _ = yolo
    ema_cfg = folder / f"ema{prune}.cfg"
    ema_cfg.write_text(edit_cfg(cfg.read_text(), {"prune": prune, "ema_alpha": 0.5}))
    out = folder / f"ema_apply{prune}.weights"
    run([ab.patched_tool, "ema", ema_cfg, pruned, out], folder)
    zeros, revived, _, _ = revived_and_moved(cfg, pruned, out)
    if prune:
        assert revived == 0
    else:
        assert revived == zeros


def layers_of(cfg: Path, kind: str) -> set[int]:
    import darknet_sparse as ds
    return {layer.index for layer in ds.load_model(cfg, fork="alexeyab").layers if layer.type == kind}


@pytest.fixture(scope="module")
def classifier(ab, digits: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    folder = tmp_path_factory.mktemp("ab_classifier")
    cfg = folder / "digits.cfg"
    cfg.write_text(edit_cfg((REPO / "cfg" / "digits.cfg").read_text(),
                            {"batch": 16, "max_batches": 4, "learning_rate": 0.01, "policy": "constant"}))
    dense = folder / "dense.weights"
    run([ab.stock_tool, "init", cfg, dense], folder)
    return folder, cfg, prune_file(cfg, dense, folder / "pruned.weights"), digits


def classifier_train(darknet: Path, folder: Path, cfg: Path, weights: Path, digits: Path, net: dict,
                     name: str) -> Path:
    work = folder / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    train_cfg = work / f"{name}.cfg"
    train_cfg.write_text(edit_cfg(cfg.read_text(), {"seed": 1, **net}))
    data = [line for line in digits.read_text().splitlines() if not line.startswith("backup")]
    (work / "set.data").write_text("\n".join(data + [f"backup={work}"]) + "\n")
    run([darknet, "classifier", "train", work / "set.data", train_cfg, weights, "-dont_show"], work)
    final = work / f"{name}_final.weights"
    assert final.is_file(), f"{darknet} wrote no {final.name}"
    return final


# The fork's update_network (CPU and GPU) skips every layer with l.train == 0,
# and only convolutional, crnn, conv_lstm, shortcut and maxpool layers set it:
# `classifier train` never changes the digits model's [connected] weights, in
# either build.  The zeros are checked in every layer, the training in the
# convolutional ones, and the connected ones are checked to be untouched.


def test_classifier_train_prune_keeps_zeros(ab, classifier):  # noqa: F811
    folder, cfg, pruned, digits = classifier
    final = classifier_train(ab.patched, folder, cfg, pruned, digits, {"prune": 1}, "prune1")
    zeros, revived, live, moved = revived_and_moved(cfg, pruned, final)
    assert zeros > 0.45 * (zeros + live)
    assert revived == 0
    zeros, revived, live, moved = revived_and_moved(cfg, pruned, final, layers_of(cfg, "convolutional"))
    assert moved > 0.9 * live
    assert revived_and_moved(cfg, pruned, final, layers_of(cfg, "connected"))[1:4:2] == (0, 0)


def test_classifier_train_without_prune_revives_zeros(ab, classifier):  # noqa: F811
    folder, cfg, pruned, digits = classifier
    for darknet, net, name in ((ab.patched, {"prune": 0}, "prune0"), (ab.stock, {"prune": 1}, "stock")):
        zeros, revived, live, moved = revived_and_moved(
            cfg, pruned, classifier_train(darknet, folder, cfg, pruned, digits, net, name),
            layers_of(cfg, "convolutional"))
        assert revived > 0.5 * zeros, name
        assert moved > 0.9 * live, name
