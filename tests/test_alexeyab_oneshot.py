"""``oneshot`` (the second-order solver, workflow/oneshot) through the
AlexeyAB binding: yolov4-tiny and yolov7-tiny with the fork's own initial
weights at 128x128 (no pretrained weights for them are reachable here),
the real yolov3-tiny with ``--fork alexeyab``, and ``loop --oneshot obs`` in
the fork.  The calibration images are also the images each layer's error is
measured on, as in tests/test_oneshot.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from darknet_sparse.cli import cli
from darknet_sparse.darknet import images
from darknet_sparse.darknet.network import Network
from darknet_sparse.format.files import load
from darknet_sparse.pruning import policies
from darknet_sparse.workflow import oneshot
from helpers.ab_darknet import PATCHED, REPO, STOCK, compile_tool, require, run
from test_alexeyab_binding import ab_model

TRAIN = REPO / "data" / "images" / "train"
YOLO_CFG = REPO / "models" / "yolov3-tiny.cfg"
YOLO_WEIGHTS = REPO / "models" / "yolov3-tiny.weights"


@pytest.fixture(scope="module")
def calibration() -> list[Path]:
    return images.sample(images.image_paths(TRAIN), 8, seed=4)


@pytest.fixture(scope="module")
def fork_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    require(PATCHED)
    folder = tmp_path_factory.mktemp("ab-oneshot")
    return {name: ab_model(name, folder) for name in ("yolov4-tiny", "yolov7-tiny")}


@pytest.mark.parametrize("name", ["yolov4-tiny", "yolov7-tiny"])
def test_the_solver_runs_in_the_fork(fork_models, calibration, tmp_path: Path, name: str):
    """Every convolution (those behind ``[route] groups`` and before each
    head included) is solved, each with less error than magnitude's mask on
    the same inputs, to exactly round(0.6 n) zeros; without recalibration
    every other array is byte-identical; the stock fork reads the file back
    byte for byte; the report names the fork and its resize."""
    cfg, weights = fork_models[name]
    wf = load(cfg, weights, "alexeyab")
    out = tmp_path / "obs.weights"
    result = oneshot.oneshot(wf, out, calibration, policies.Magnitude(0.6), recalibrate=False)
    convs = [layer.index for layer in wf.model.layers if layer.type == "convolutional"]
    assert [r.layer for r in result.layers if r.method == "obs"] == convs
    assert result.fork == "alexeyab" and result.resize == "resize"
    assert "run by AlexeyAB's (fork alexeyab)" in oneshot.table(result)
    for r in result.layers:
        assert r.zeros == round(0.6 * r.weights), r
        assert r.error < r.magnitude_error, r
    after = load(cfg, out, "alexeyab")
    for slot in wf.slots:
        if slot.param.role != "weights":
            assert wf.array(slot).tobytes() == after.array(after.slot(*slot.key)).tobytes(), slot.key
    require(STOCK)
    tool = compile_tool(STOCK, tmp_path / "ab_tool")
    run([tool, "resave", cfg, out, tmp_path / "resaved.weights"], tmp_path)
    assert (tmp_path / "resaved.weights").read_bytes() == out.read_bytes()


def test_zero_sparsity_is_the_identity_in_the_fork(fork_models, calibration, tmp_path: Path):
    cfg, weights = fork_models["yolov4-tiny"]
    out = tmp_path / "same.weights"
    oneshot.oneshot(load(cfg, weights, "alexeyab"), out, calibration, policies.Magnitude(0.0), recalibrate=False)
    assert out.read_bytes() == weights.read_bytes()


def test_the_real_model_through_the_fork(calibration, tmp_path: Path):
    """``darknet-sparse oneshot --fork alexeyab`` on the official yolov3-tiny:
    exit 0, the fork's resize (its detector test's), the requested sparsity,
    rolling statistics changed only by the recalibration it reports, and the
    pruned model's detections (through the fork) agree with the dense
    model's better than magnitude pruning's at the same level do (on so few
    images only with the heavier dampening: at 0.01 the fit to eight
    images carries over worse than magnitude's mask, 0.69 against 0.74)."""
    folder = tmp_path / "calibration"
    folder.mkdir()
    for path in calibration:
        shutil.copy(path, folder)
    out = tmp_path / "y50.weights"
    done = CliRunner().invoke(cli, ["oneshot", str(YOLO_WEIGHTS), "--cfg", str(YOLO_CFG), "--fork", "alexeyab",
                                    "--images", str(folder), "-s", "0.5", "--damp", "1", "-o", str(out), "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["fork"] == "alexeyab" and report["resize"] == "resize" and report["images"] == 8
    assert report["sparsity"] == pytest.approx(0.5, abs=1e-3)
    before, after = load(YOLO_CFG, YOLO_WEIGHTS, "alexeyab"), load(YOLO_CFG, out, "alexeyab")
    recalibrated = {change["layer"] for change in report["recalibration"]["layers"]}
    assert recalibrated
    for slot in before.slots:
        same = before.array(slot).tobytes() == after.array(after.slot(*slot.key)).tobytes()
        if slot.param.role == "weights":
            assert not same
        elif slot.param.role in ("rolling_mean", "rolling_variance") and slot.layer.index in recalibrated:
            assert not same, slot.key
        else:
            assert same, slot.key
    from darknet_sparse.analysis.evaluate import evaluate_detector
    from darknet_sparse.pruning.prune import threshold

    magnitude = tmp_path / "m50.weights"
    threshold(load(YOLO_CFG, YOLO_WEIGHTS, "alexeyab"), magnitude, policies.Magnitude(0.5))
    dense = Network(YOLO_CFG, YOLO_WEIGHTS, fork="alexeyab")
    ours = evaluate_detector(Network(YOLO_CFG, out, fork="alexeyab"), calibration, reference=dense).map50
    theirs = evaluate_detector(Network(YOLO_CFG, magnitude, fork="alexeyab"), calibration, reference=dense).map50
    assert ours > theirs, (ours, theirs)
