"""``loop --fork alexeyab`` beyond the detector on pseudo-labels
(tests/test_alexeyab_loop.py): ``--task classifier`` through the patched
fork's ``classifier train`` (prune=1), and ``--task detector --structured``
(channel slimming between steps) through its ``detector train``.

The classifier is the digits example (cfg/digits.cfg, cfg/digits.weights),
two steps of 10 batches to 50% and 70%; the fork never updates ``[connected]``
weights (patches/alexeyab/README.md), so what it trains are the
convolutions, and the loop says so.  The detector is a small two-head cfg of
the fork's own features (``[route] groups``, ``scale_x_y``, ``iou_loss``,
``nms_kind``, ``mosaic``, ``ema_alpha``) with the fork's seeded initial
weights, half of its first convolution zeroed: that layer reads the image,
so slimming never refits it and its zeros reach every step's retraining.

The loops run with ``--seed 1`` (patches/alexeyab/0006-seed), and every
assertion would hold whatever the draw anyway: zeros stay zero (the per-layer
zero masks of each step's input and output), it trained, which files it
wrote.  The guards: the same loops through the stock fork (no prune=1 patch;
it ignores seed= and draws from the clock) revive the zeros, and the same
per-layer count sees it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from darknet_sparse.cli import cli, workflow  # noqa: F401  (registers `loop`)
from darknet_sparse.darknet.network import Network, backend, seed
from darknet_sparse.format.files import load, load_model
from darknet_sparse.format.weightsfile import new_file
from darknet_sparse.pruning.policies import Global
from darknet_sparse.pruning.search import prune_to, weight_sparsity
from darknet_sparse.workflow.loop import LoopSettings, run
from helpers.ab_darknet import PATCHED, STOCK, require
from tiny_models import write_photos

DETECTOR_CFG = """\
[net]
batch=4
subdivisions=1
width=64
height=64
channels=3
momentum=0.9
decay=0.0005
learning_rate=0.001
burn_in=100
max_batches=1000
policy=constant
mosaic=1
ema_alpha=0.9998

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[route]
layers=-1
groups=2
group_id=1

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[route]
layers=-1,-2

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[route]
layers=2,6

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=3,4,5
anchors=6,8, 10,12, 14,18, 20,24, 28,32, 40,44
classes=2
num=6
jitter=.2
scale_x_y=1.05
iou_thresh=0.213
iou_normalizer=0.07
iou_loss=ciou
nms_kind=greedynms
beta_nms=0.6
ignore_thresh=.7
truth_thresh=1
random=1

[route]
layers=11

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers=-1,9

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=6,8, 10,12, 14,18, 20,24, 28,32, 40,44
classes=2
num=6
jitter=.2
scale_x_y=1.05
iou_thresh=0.213
iou_normalizer=0.07
iou_loss=ciou
nms_kind=greedynms
beta_nms=0.6
ignore_thresh=.7
truth_thresh=1
random=1
"""
#: The fork's own options of DETECTOR_CFG that every slimmed cfg keeps as they are.
AB_OPTIONS = ("groups=2", "group_id=1", "scale_x_y=1.05", "iou_loss=ciou", "iou_normalizer=0.07",
              "nms_kind=greedynms", "beta_nms=0.6", "mosaic=1", "ema_alpha=0.9998")
CLASSIFIER_TARGETS, CLASSIFIER_ITERATIONS = (0.5, 0.7), 10


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def revived_by_layer(cfg: Path, before: Path, after: Path) -> dict[int, tuple[int, int, int]]:
    """Per layer with weights: (its weights, those 0 in ``before``, how many of them are not 0 in ``after``)."""
    a, b = load(cfg, before, fork="alexeyab"), load(cfg, after, fork="alexeyab")
    found = {}
    for layer in a.model.layers:
        if any(p.role == "weights" for p in layer.params):
            x, y = np.asarray(a.arrays(layer.index)["weights"]), np.asarray(b.arrays(layer.index)["weights"])
            found[layer.index] = (x.size, int(np.sum(x == 0)), int(np.sum((x == 0) & (y != 0))))
    return found


def moved_share(cfg: Path, before: Path, after: Path, layers: set[int]) -> float:
    """The share of the non-zero weights of ``layers`` in ``before`` that ``after`` changed."""
    a, b = load(cfg, before, fork="alexeyab"), load(cfg, after, fork="alexeyab")
    live = moved = 0
    for index in layers:
        x, y = np.asarray(a.arrays(index)["weights"]), np.asarray(b.arrays(index)["weights"])
        live += int(np.sum(x != 0))
        moved += int(np.sum((x != 0) & (x != y)))
    return moved / live


def layers_of(cfg: Path, kind: str) -> set[int]:
    return {layer.index for layer in load_model(cfg, "alexeyab").layers if layer.type == kind}


def _loop(*args: object):
    return CliRunner().invoke(cli, ["loop", "--fork", "alexeyab", "--seed", "1", *map(str, args)])


# ---------------------------------------------------------------- classifier

@pytest.fixture(scope="module")
def classifier(digits: Path, model_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two steps of the digits classifier through the CLI, by the patched fork's classifier train."""
    require(PATCHED)
    cfg, weights = model_files
    before = {"data": _tree(digits.parent), "model": _tree(cfg.parent)}
    out = tmp_path_factory.mktemp("ab-classifier") / "run"
    result = _loop("--task", "classifier", "--cfg", cfg, "-w", weights, "--data", digits, "--sparsities",
                   ",".join(map(str, CLASSIFIER_TARGETS)), "--iterations-per-step", CLASSIFIER_ITERATIONS,
                   "--out", out)
    return {"result": result, "out": out, "cfg": cfg, "weights": weights, "digits": digits, "before": before}


def _step_inputs(cfg: Path, weights: Path, out: Path, targets: tuple[float, ...], into: Path) -> list[Path]:
    """Each step's input again: the previous step's weights (the user's for
    step 1) thresholded to the step's target, as the loop does (global mode
    is deterministic), so its zero mask can be compared with the step's output."""
    inputs, source = [], weights
    for step, target in enumerate(targets, 1):
        pruned = into / f"input-{step:02d}.weights"
        prune_to(load(cfg, source, fork="alexeyab"), pruned, target, Global)
        inputs.append(pruned)
        source = out / f"step-{step:02d}.weights"
    return inputs


def test_the_classifier_loop_runs_in_alexeyabs_classifier_train(classifier) -> None:
    result, out = classifier["result"], classifier["out"]
    assert result.exit_code == 0, result.output
    lines = _log(out)
    assert [line["step"] for line in lines] == [1, 2]
    for line, target in zip(lines, CLASSIFIER_TARGETS):
        assert line["zeros_revived"] == 0 and line["mode"] == "global" and 0 <= line["top1"] <= 1
        assert line["sparsity"] == pytest.approx(target, abs=1e-4)
    assert (out / "final.weights").read_bytes() == (out / "step-02.weights").read_bytes()
    log = (out / "step-01.log").read_text(errors="replace")
    assert "mini_batch = " in log  # AlexeyAB's parser (pjreddie's prints no such line)
    assert "train_final.weights" in log  # the fork's name for the last weights of a classifier too
    assert not list((out / "backup").iterdir()) and not list(out.glob("*.pruned.weights"))


def test_the_classifier_loop_never_revives_a_zero_and_trains_the_convolutions(classifier, tmp_path: Path) -> None:
    cfg, out = classifier["cfg"], classifier["out"]
    inputs = _step_inputs(cfg, classifier["weights"], out, CLASSIFIER_TARGETS, tmp_path)
    for step, pruned in enumerate(inputs, 1):
        trained = out / f"step-{step:02d}.weights"
        counts = revived_by_layer(cfg, pruned, trained)
        assert sum(zeros for _, zeros, _ in counts.values()) >= \
            (CLASSIFIER_TARGETS[step - 1] - 1e-4) * sum(size for size, _, _ in counts.values())
        assert {index: revived for index, (_, _, revived) in counts.items() if revived} == {}, step
        assert moved_share(cfg, pruned, trained, layers_of(cfg, "convolutional")) > 0.5, step  # it trained
        assert moved_share(cfg, pruned, trained, layers_of(cfg, "connected")) == 0  # the fork's update skips them
        assert weight_sparsity(load(cfg, trained)) >= CLASSIFIER_TARGETS[step - 1] - 1e-4


def test_the_classifier_loop_says_what_it_changed(classifier) -> None:
    """The retraining cfg: prune=1, max_batches, a fifth of the cfg's rate,
    the teacher's distill_* options; the loop says so, that the fork's
    classifier train runs with -dont_show (no chart window; no -topk, so no
    accuracy passes while training), and that it never trains [connected]."""
    out = classifier["out"]
    net = (out / "train.cfg").read_text().split("[convolutional]")[0].splitlines()
    for option in ("prune=1", f"max_batches={CLASSIFIER_ITERATIONS}", "learning_rate=0.02",
                   f"distill_weights={classifier['weights']}", "distill_alpha=0.7"):
        assert option in net, option
    said = [line for line in classifier["result"].output.splitlines()
            if line.startswith("retraining in AlexeyAB's Darknet")]
    assert len(said) == 1, classifier["result"].output
    assert "classifier train -dont_show;" in said[0] and "-topk" not in said[0] and "-nomap" not in said[0]
    assert f"prune=1, max_batches={CLASSIFIER_ITERATIONS}, learning_rate=0.02" in said[0]
    assert "never updates [connected] weights" in said[0] and "layer(s) 6, 7 are not retrained" in said[0]


def test_the_classifier_loop_writes_only_in_its_folder(classifier) -> None:
    assert _tree(classifier["digits"].parent) == classifier["before"]["data"]
    assert _tree(classifier["cfg"].parent) == classifier["before"]["model"]
    assert {p.name for p in classifier["out"].iterdir()} == {
        "backup", "final.weights", "log.jsonl", "step-01.log", "step-01.weights", "step-02.log", "step-02.weights",
        "teacher.cfg", "train.cfg", "train.data"}


def test_the_classifier_revival_check_catches_the_stock_fork(classifier, tmp_path: Path) -> None:
    """The first step through the stock fork (which ignores prune=1): the
    convolutions' zeros come back, the loop counts them, and so does the
    per-layer check above."""
    cfg, weights = classifier["cfg"], classifier["weights"]
    out = tmp_path / "stock"
    record, = run(LoopSettings(cfg=cfg, weights=weights, data=classifier["digits"], out=out, targets=(0.5,),
                               iterations=CLASSIFIER_ITERATIONS, fork="alexeyab", darknet=require(STOCK))).steps
    pruned, = _step_inputs(cfg, weights, out, (0.5,), tmp_path)
    counts = revived_by_layer(cfg, pruned, out / "step-01.weights")
    convolutions = layers_of(cfg, "convolutional")
    zeros = sum(counts[i][1] for i in convolutions)
    revived = sum(counts[i][2] for i in convolutions)
    assert zeros > 0 and revived > 0.5 * zeros
    assert record.zeros_revived == sum(r for _, _, r in counts.values()) == revived  # [connected]: never updated


# ------------------------------------------------------ detector, structured

@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """DETECTOR_CFG with the fork's initial weights (seeded; rolling
    variances 1, the coarse head's first anchor biased to class 0, so the
    model finds boxes to label and agree with) and half of layer 0's weights
    zeroed; random photos to train on and evaluate with."""
    folder = tmp_path_factory.mktemp("ab-detector")
    cfg = folder / "tiny-ab.cfg"
    cfg.write_text(DETECTOR_CFG)
    seed(11, backend(fork="alexeyab"))
    net = Network(cfg, None, fork="alexeyab")
    for i in range(net.num_layers):
        for name, view in net.params(i).items():
            if name.endswith("rolling_variance"):
                view[:] = 1
        if net.layer_type(i) == "yolo":  # 3 anchors of (x, y, w, h, objectness, class 0, class 1)
            biases = net.params(i - 1)["biases"]
            biases[:] = 0
            if i == 13:
                biases[4], biases[5], biases[6] = 1.5, 3, -3
            else:
                biases[4::7] = -4
    first = net.params(0)["weights"]
    first[np.abs(first) < np.median(np.abs(first))] = 0
    weights = folder / "tiny-ab.weights"
    net.save(weights)
    return {"cfg": cfg, "weights": weights, "train": write_photos(folder / "user" / "photos", 12, 1),
            "eval": write_photos(folder / "held-out", 4, 2), "folder": folder}


def _structured(detector: dict, out: Path, *args: object):
    return _loop("--task", "detector", "--structured", "--cfg", detector["cfg"], "-w", detector["weights"],
                 "--images", detector["train"], "--eval-images", detector["eval"], "--out", out,
                 "--recalibrate", 8, *args)


@pytest.fixture(scope="module")
def structured(detector: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two AGP steps to 40% of the FLOPs removed and one fine-tune step, 3 batches each."""
    require(PATCHED)
    before = _tree(detector["folder"])
    out = tmp_path_factory.mktemp("ab-structured") / "run"
    result = _structured(detector, out, "--target-flops", 0.4, "--steps", 2, "--fine-tune-steps", 1,
                         "--iterations-per-step", 3)
    return {"result": result, "out": out, "before": before}


def test_the_structured_loop_runs_in_alexeyabs_detector_train(structured) -> None:
    result, out = structured["result"], structured["out"]
    assert result.exit_code == 0, result.output
    lines = _log(out)
    assert [line["mode"] for line in lines] == ["structured"] * 3
    assert [line["target_sparsity"] for line in lines] == pytest.approx([0.35, 0.4, 0.4])
    assert all(0 <= line["map"] <= line["map50"] <= 1 and line["zeros_revived"] == 0 for line in lines)
    for step in (1, 2, 3):
        log = (out / f"step-{step:02d}.log").read_text(errors="replace")
        assert "mini_batch = " in log and "Can't open label file" not in log
    assert (out / "final.cfg").read_text() == (out / "step-03.cfg").read_text()
    assert (out / "final.weights").read_bytes() == (out / "step-03.weights").read_bytes()
    said = [line for line in result.output.splitlines() if line.startswith("retraining in AlexeyAB's Darknet")]
    assert len(said) == 1 and "detector train -dont_show -nomap" in said[0]
    assert "(rewritten from each step's slimmed cfg)" in said[0] and "mosaic=0, ema_alpha=0" in said[0]


def test_the_structured_loop_removes_channels_and_keeps_the_forks_options(structured, detector) -> None:
    """Each step's cfg has fewer filters (the FLOPs share logged), keeps the
    fork's options, loads in the fork with its weights, and the heads keep
    their outputs; the retraining cfg is the last step's with the loop's
    options."""
    out = structured["out"]
    dense = load_model(detector["cfg"], "alexeyab")
    heads = [layer.index for layer in dense.layers if layer.type == "yolo"]
    for line in _log(out):
        cfg = Path(line["cfg"])
        assert cfg == out / f"step-{line['step']:02d}.cfg"
        model = load(cfg, out / f"step-{line['step']:02d}.weights", fork="alexeyab").model  # the sizes agree
        assert line["sparsity"] == pytest.approx(1 - model.flops / dense.flops)
        assert line["sparsity"] >= line["target_sparsity"] - 1e-9
        assert sum(layer.output[0] for layer in model.layers if layer.type == "convolutional") < \
            sum(layer.output[0] for layer in dense.layers if layer.type == "convolutional")
        text = cfg.read_text()
        for option in AB_OPTIONS:
            assert text.count(option) == DETECTOR_CFG.count(option), (cfg, option)
        net = Network(cfg, out / f"step-{line['step']:02d}.weights", fork="alexeyab")
        assert [net.layer_type(i) for i in heads] == ["yolo", "yolo"]
        outputs = net.layer_outputs(np.zeros((1, 3, 64, 64), np.float32), heads)
        assert [o.size for o in outputs] == [int(np.prod(dense.layers[i].output)) for i in heads]
    train = (out / "train.cfg").read_text()
    assert "prune=1" in train and "mosaic=0" in train and "ema_alpha=0" in train and "random=1" not in train
    assert "groups=2" in train and "scale_x_y=1.05" in train


def test_the_structured_loop_never_revives_a_zero_and_trains(structured, detector) -> None:
    """Per layer, every weight 0 in a step's slimmed input is 0 after its
    retraining; layer 0 (never refit) carries the fixture's zeros into every
    step, so the check has zeros to watch; the retraining changed weights."""
    out = structured["out"]
    for step in (1, 2, 3):
        cfg, staged, trained = (out / f"step-{step:02d}{suffix}" for suffix in (".cfg", ".slimmed.weights",
                                                                                 ".weights"))
        counts = revived_by_layer(cfg, staged, trained)
        size, zeros, _ = counts[0]
        assert zeros > 0.3 * size, (step, counts[0])
        assert {index: revived for index, (_, _, revived) in counts.items() if revived} == {}, step
        assert moved_share(cfg, staged, trained, layers_of(cfg, "convolutional")) > 0.5, step


def test_the_structured_loop_writes_only_in_its_folder(structured, detector) -> None:
    assert _tree(detector["folder"]) == structured["before"]
    labels = sorted((structured["out"] / "pseudo" / "images").glob("*.txt"))
    assert len(labels) == 12


def test_the_structured_revival_check_catches_the_stock_fork(structured, detector, tmp_path: Path) -> None:
    """One structured step through the stock fork: layer 0's zeros come back."""
    out = tmp_path / "stock"
    result = _structured(detector, out, "--target-flops", 0.4, "--steps", 1, "--fine-tune-steps", 0,
                         "--iterations-per-step", 3, "--darknet", require(STOCK))
    assert result.exit_code == 0, result.output
    counts = revived_by_layer(out / "step-01.cfg", out / "step-01.slimmed.weights", out / "step-01.weights")
    _, zeros, revived = counts[0]
    assert zeros > 0 and revived > 0.5 * zeros
    assert _log(out)[0]["zeros_revived"] >= revived
    assert "warning: retraining revived pruned weights" in result.output


# ------------------------------------------------------- what it cannot do

MLP_CFG = """\
[net]
batch=16
height=16
width=16
channels=3
learning_rate=0.01
max_batches=10

[connected]
output=10
activation=linear

[softmax]
"""


def test_what_the_fork_cannot_retrain_is_one_error_line(classifier, tmp_path: Path) -> None:
    """A model whose only weights sit in [connected] layers, which the fork
    never updates: one Error: line, exit status 2, before anything is
    written (--oneshot runs in the fork: tests/test_alexeyab_oneshot.py)."""
    mlp = tmp_path / "mlp.cfg"
    mlp.write_text(MLP_CFG)
    model = load_model(mlp, "alexeyab")
    arrays = {(layer.index, p.name): np.full(p.count, 0.1, np.float32) for layer in model.layers for p in layer.params}
    new_file(model, tmp_path / "mlp.weights", arrays)
    for args, words in ((("--cfg", mlp, "-w", tmp_path / "mlp.weights"), "never updates [connected] weights and the "
                                                                           "model has no other layer with weights"),):
        out = tmp_path / f"out-{len(args)}"
        result = _loop("--task", "classifier", *args, "--data", classifier["digits"], "--sparsities", "0.5",
                       "--iterations-per-step", 1, "--out", out)
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert result.exit_code == 2 and len(errors) == 1 and words in errors[0], result.output
        assert "Traceback" not in result.output and not out.exists()


def test_the_loop_starts_from_the_solver_in_the_fork(classifier, tmp_path: Path) -> None:
    """``loop --oneshot obs`` in the fork: the step's pruning is the solver's
    (through the AlexeyAB binding), then the fork's classifier train; it
    reaches its target and revives no zero."""
    out = tmp_path / "oneshot"
    result = _loop("--task", "classifier", "--cfg", classifier["cfg"], "-w", classifier["weights"], "--data",
                   classifier["digits"], "--sparsities", "0.5", "--iterations-per-step", 2, "--oneshot", "obs",
                   "--out", out)
    assert result.exit_code == 0, result.output
    (line,) = _log(out)
    assert line["zeros_revived"] == 0 and line["sparsity"] == pytest.approx(0.5, abs=0.01), line
