"""The prune/retrain loop on a detector with no labels, and with a teacher.

The detector is ``tests/cfgs/tiny_detector.cfg`` (64x64, two [yolo] heads)
with seeded random weights whose coarse head is biased towards class 0, so
the "dense" model finds a few dozen boxes per image at the default label
confidence: good enough to label and to be agreed with, which is all the
loop needs.  The images are random JPEGs in a folder the loop must leave
alone.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from darknet_sparse.cli import cli, workflow  # noqa: F401  (registers `loop`)
from darknet_sparse.darknet import network as darknet
from darknet_sparse.errors import InputError, OutputError
from darknet_sparse.format.files import load
from darknet_sparse.pruning.search import weight_sparsity
from darknet_sparse.reports import diff
from darknet_sparse.workflow.loop import LoopSettings, run
from tiny_models import write_photos

REPO = Path(__file__).resolve().parent.parent
PATCHED = REPO / "build" / "darknet" / "darknet"
STOCK = Path("/usr/bin/darknet")
CFG = REPO / "tests" / "cfgs" / "tiny_detector.cfg"
DETECTOR_KEYS = {"step", "target_sparsity", "sparsity", "map50", "map", "zeros_revived", "weights", "mode",
                 "level", "iterations", "seconds"}


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (and the folder beside it) with its sha256."""
    return {str(p.relative_to(folder.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.parent.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> dict:
    """The cfg, its "dense" weights, training and evaluation photos."""
    folder = tmp_path_factory.mktemp("det")
    cfg = folder / "tiny_detector.cfg"
    shutil.copy(CFG, cfg)
    darknet.seed(11)
    net = darknet.Network(cfg)
    for i in range(net.num_layers):
        for name, view in net.params(i).items():
            if name.endswith("rolling_variance"):
                view[:] = 1  # not Darknet's initial 0, which blows activations up
        if net.layer_type(i) == "yolo":  # 3 anchors of (x, y, w, h, objectness, class 0, class 1)
            biases = net.params(i - 1)["biases"]
            biases[:] = 0
            if i == 8:
                biases[4], biases[5], biases[6] = 1.5, 3, -3  # the coarse head's first anchor: class 0
            else:
                biases[4::7] = -4
    weights = folder / "tiny_detector.weights"
    net.save(weights)
    train = write_photos(folder / "user" / "photos", 12, seed=1)
    evaluation = write_photos(folder / "held-out", 4, seed=2)
    return {"cfg": cfg, "weights": weights, "train": train, "eval": evaluation, "folder": folder}


def _cli(detector: dict, out: Path, *args: object):
    return CliRunner().invoke(cli, ["loop", "--task", "detector", "--seed", "1", "--cfg", detector["cfg"], "-w",
                                    detector["weights"], "--images", detector["train"], "--eval-images",
                                    detector["eval"], "--out", out, *map(str, args)])


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, detector) -> dict:
    before = _tree(detector["train"]), _tree(detector["eval"])
    out = tmp_path_factory.mktemp("loop") / "run"
    result = _cli(detector, out, "--sparsities", "0.3,0.5", "--iterations-per-step", 3, "--darknet", PATCHED)
    return {"result": result, "out": out, "before": before}


def test_the_detector_loop_runs_two_steps_scored_by_agreement(two_steps):
    result, out = two_steps["result"], two_steps["out"]
    assert result.exit_code == 0, result.output
    lines = _log(out)
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        assert set(line) == DETECTOR_KEYS
        assert line["sparsity"] == pytest.approx(line["target_sparsity"], abs=1e-4)
        assert 0 <= line["map"] <= line["map50"] <= 1 and line["iterations"] == 3
    assert "map50" in result.output and "pseudo-labels: " in result.output
    assert (out / "final.weights").read_bytes() == (out / "step-02.weights").read_bytes()


def test_detector_retraining_never_revives_a_zero(two_steps, detector):
    out = two_steps["out"]
    assert [line["zeros_revived"] for line in _log(out)] == [0, 0]
    first, second = load(detector["cfg"], out / "step-01.weights"), load(detector["cfg"], out / "step-02.weights")
    assert diff(first, second).revived == 0
    assert diff(first, second).totals["changed"] > 0  # it did train
    assert weight_sparsity(second) >= 0.5 - 1e-4


def test_the_revival_check_catches_stock_darknet_on_a_detector(tmp_path, detector, two_steps):
    out = tmp_path / "stock"
    out.mkdir()
    shutil.copytree(two_steps["out"] / "pseudo", out / "pseudo", symlinks=True)  # the same labels, kept
    settings = LoopSettings(cfg=detector["cfg"], weights=detector["weights"], data=None, out=out, targets=(0.5,),
                            iterations=3, task="detector", images=detector["train"], eval_images=detector["eval"],
                            darknet=STOCK)
    result = run(settings)
    assert result.labels.reused
    assert result.steps[0].zeros_revived > 0.5 * 0.5 * sum(
        s.param.count for s in load(detector["cfg"], detector["weights"]).slots if s.param.role == "weights")


def test_pseudo_labels_are_written_in_the_loop_folder_only(two_steps, detector):
    assert (_tree(detector["train"]), _tree(detector["eval"])) == two_steps["before"]
    pseudo = two_steps["out"] / "pseudo"
    photos = sorted(detector["train"].iterdir())
    links = [Path(line) for line in (pseudo / "train.list").read_text().splitlines()]
    assert [link.resolve() for link in links] == photos
    assert all(link.parent == pseudo / "images" and link.is_symlink() for link in links)
    labels = sorted((pseudo / "labels").iterdir())
    assert [p.stem for p in labels] == [link.stem for link in links]
    rows = [line.split() for p in labels for line in p.read_text().splitlines()]
    assert len(rows) >= len(photos)  # the dense model finds boxes in every photo
    for row in rows:
        assert len(row) == 5 and row[0] in ("0", "1")
        assert all(0 <= float(v) <= 1 for v in row[1:]) and float(row[3]) > 0 and float(row[4]) > 0
    log = (two_steps["out"] / "step-01.log").read_text()
    counts = [int(c) for c in re.findall(r"count: (\d+)", log)]
    assert counts and max(counts) > 0, "Darknet read no label boxes"


def test_the_retraining_cfg_is_sized_for_a_cpu(two_steps):
    text = (two_steps["out"] / "train.cfg").read_text()
    net = text.split("[convolutional]")[0]
    for option in ("max_batches=3", "prune=1", "burn_in=0", "width=64", "height=64", "batch=8", "subdivisions=1"):
        assert option in net.splitlines(), option
    assert net.count("width=") == 1 and net.count("batch=") == 1
    assert "burn_in=100" not in text
    heads = text.split("\n[yolo]\n")[1:]
    assert len(heads) == 2
    for head in heads:
        options = head.split("[")[0].splitlines()
        assert "random=0" in options and "random=1" not in options
    data = (two_steps["out"] / "train.data").read_text().splitlines()
    assert data == ["classes=2", f"train={two_steps['out'] / 'pseudo' / 'train.list'}",
                    f"backup={two_steps['out'] / 'backup'}"]


def test_a_second_run_keeps_the_labels(two_steps, detector, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(two_steps["out"], out, symlinks=True)
    (out / "log.jsonl").unlink()
    for path in out.glob("step-*"):
        path.unlink()
    stamp = (out / "pseudo" / "labels.json").read_text()
    settings = LoopSettings(cfg=detector["cfg"], weights=detector["weights"], data=None, out=out, targets=(0.3,),
                            iterations=1, task="detector", images=detector["train"], eval_images=detector["eval"],
                            darknet=PATCHED, label_conf=0.6)
    result = run(settings)  # another confidence: labelled afresh
    assert not result.labels.reused and (out / "pseudo" / "labels.json").read_text() != stamp


@pytest.mark.parametrize("name", ["images", "JPEGImages", "raw", "a.jpg"])
def test_a_loop_folder_that_misleads_darknet_is_refused(tmp_path, detector, name):
    out = tmp_path / name / "run"
    result = _cli(detector, out, "--sparsities", "0.3", "--iterations-per-step", 1, "--darknet", PATCHED)
    assert result.exit_code == 2, result.output
    assert "Darknet would read the labels of" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_a_teacher_needs_no_labels(tmp_path, detector):
    """... and runs at the student's retraining input (32 here: Darknet
    refuses a teacher whose input differs)."""
    out = tmp_path / "taught"
    result = _cli(detector, out, "--sparsities", "0.5", "--iterations-per-step", 3, "--darknet", PATCHED,
                  "--teacher", detector["weights"], "--temperature", 2, "--train-size", 32)
    assert result.exit_code == 0, result.output
    assert not list((out / "pseudo" / "labels").iterdir())  # alpha 1: nothing labelled
    line, = _log(out)
    assert line["zeros_revived"] == 0 and 0 <= line["map50"] <= 1
    text = (out / "train.cfg").read_text().split("[convolutional]")[0].splitlines()
    assert f"distill_cfg={out / 'teacher.cfg'}" in text and f"distill_weights={detector['weights']}" in text
    assert "distill_temperature=2" in text and "distill_alpha=1" in text and "width=32" in text
    teacher = (out / "teacher.cfg").read_text().split("[convolutional]")[0].splitlines()
    assert {"width=32", "height=32", "batch=8", "subdivisions=1"} <= set(teacher)
    assert not any(option.startswith(("prune", "distill")) for option in teacher)
    assert "distill: teacher" in (out / "step-01.log").read_text()


def test_without_eval_images_or_a_command_a_detector_loop_is_refused(tmp_path, detector):
    result = CliRunner().invoke(cli, ["loop", "--task", "detector", "--cfg", detector["cfg"], "-w",
                                      detector["weights"], "--images", detector["train"], "--out", tmp_path / "o",
                                      "--sparsities", "0.3", "--iterations-per-step", 1, "--darknet", PATCHED])
    assert result.exit_code == 2 and "needs evaluation images (--eval-images" in result.output


def test_outputs_under_the_user_images_are_refused(tmp_path, detector):
    with pytest.raises(OutputError):
        run(LoopSettings(cfg=detector["cfg"], weights=detector["weights"], data=None,
                         out=tmp_path / "run", targets=(0.3,), iterations=1, task="detector",
                         images=tmp_path / "run" / "pseudo" / "images", eval_images=detector["eval"],
                         darknet=PATCHED))


def test_each_step_is_recalibrated_relative_to_the_starting_model(tmp_path, detector, monkeypatch):
    """With retraining replaced by a copy, a step's weights are exactly the
    pruned weights recalibrated relative to the starting model on the
    training images; weights and biases are the pruned ones."""
    from darknet_sparse.analysis import recalibrate
    from darknet_sparse.darknet import images
    from darknet_sparse.format.files import load_model
    from darknet_sparse.workflow import loop

    monkeypatch.setattr(loop, "retrain", lambda settings, weights, step: Path(shutil.copy(
        weights, settings.out.resolve() / loop.step_name(step))))
    out = tmp_path / "recalibrated"
    result = _cli(detector, out, "--sparsities", "0.5", "--iterations-per-step", 1, "--darknet", PATCHED,
                  "--teacher", detector["weights"], "--recalibrate", 8)
    assert result.exit_code == 0, result.output
    pruned = tmp_path / "pruned.weights"
    from darknet_sparse.pruning.policies import Global
    from darknet_sparse.pruning.search import prune_to
    model = load_model(detector["cfg"], "pjreddie")
    prune_to(load(detector["cfg"], detector["weights"]), pruned, 0.5, Global)
    net = recalibrate.calibration_network(detector["cfg"], pruned, 8)
    reference = recalibrate.calibration_network(detector["cfg"], detector["weights"], 8)
    paths = images.sample(images.image_paths(detector["train"]), 8)
    recalibrate.recalibrate(net, model, recalibrate.ImageFiles(paths, net.input_shape, "letterbox"),
                            reference=reference)
    expected = tmp_path / "expected.weights"
    net.save(expected)
    assert (out / "step-01.weights").read_bytes() == expected.read_bytes()
    assert expected.read_bytes() != pruned.read_bytes()


def test_recalibration_needs_the_training_images(tmp_path, detector):
    with pytest.raises(InputError, match="needs the training images"):
        run(LoopSettings(cfg=detector["cfg"], weights=detector["weights"], data=detector["folder"] / "x.data",
                         out=tmp_path / "run", targets=(0.3,), iterations=1, task="detector",
                         eval_images=detector["eval"], darknet=PATCHED, recalibrate=8))


def test_a_structured_loop_removes_channels_step_by_step(tmp_path, detector):
    """Two steps to 40% of the FLOPs removed: each step's cfg has fewer
    filters, its weights fit it, the heads keep theirs, and the last step is
    final.weights with final.cfg; the user's files are untouched."""
    before = _tree(detector["train"])
    out = tmp_path / "structured"
    result = _cli(detector, out, "--structured", "--target-flops", 0.4, "--steps", 2, "--fine-tune-steps", 1,
                  "--iterations-per-step", 2, "--darknet", PATCHED, "--recalibrate", 8)
    assert result.exit_code == 0, result.output
    lines = _log(out)
    assert [line["mode"] for line in lines] == ["structured"] * 3
    assert [line["target_sparsity"] for line in lines] == pytest.approx([0.35, 0.4, 0.4])  # AGP, then fine-tune
    dense = load(detector["cfg"], detector["weights"]).model
    for line in lines:
        cfg = Path(line["cfg"])
        assert cfg == out / f"step-{line['step']:02d}.cfg"
        model = load(cfg, out / f"step-{line['step']:02d}.weights").model  # the sizes agree
        assert line["sparsity"] == pytest.approx(1 - model.flops / dense.flops)
        assert line["sparsity"] >= line["target_sparsity"] - 1e-9 and line["zeros_revived"] == 0
        heads = [layer.index - 1 for layer in model.layers if layer.type == "yolo"]
        assert [model.layers[i].output[0] for i in heads] == [dense.layers[i].output[0] for i in heads]
    assert lines[2]["sparsity"] == lines[1]["sparsity"]  # the fine-tune step removes nothing more
    for step in (1, 2, 3):  # the slimmed model before retraining is kept, and differs from the retrained one
        slimmed = out / f"step-{step:02d}.slimmed.weights"
        load(out / f"step-{step:02d}.cfg", slimmed)
        assert slimmed.read_bytes() != (out / f"step-{step:02d}.weights").read_bytes()
    assert (out / "final.cfg").read_text() == (out / "step-03.cfg").read_text()
    assert (out / "final.weights").read_bytes() == (out / "step-03.weights").read_bytes()
    assert "FLOPs removed" in result.output
    assert _tree(detector["train"]) == before


def test_a_structured_loop_needs_flops_targets_and_images(tmp_path, detector):
    result = _cli(detector, tmp_path / "a", "--structured", "--final-sparsity", 0.5, "--iterations-per-step", 1)
    assert result.exit_code == 2 and "--structured takes --target-flops" in result.output
    result = _cli(detector, tmp_path / "b", "--target-flops", 0.5, "--iterations-per-step", 1)
    assert result.exit_code == 2 and "--target-flops is for --structured" in result.output
    with pytest.raises(InputError, match="give --images"):
        run(LoopSettings(cfg=detector["cfg"], weights=detector["weights"], data=detector["folder"] / "x.data",
                         out=tmp_path / "c", targets=(0.3,), iterations=1, task="detector",
                         eval_images=detector["eval"], darknet=PATCHED, structured=True))
