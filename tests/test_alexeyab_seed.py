"""[net] seed=N in AlexeyAB's Darknet (patches/alexeyab/0006-seed.patch):
the same `detector train` or `classifier train` command with the same files
saves the same bytes (CPU build), another seed other bytes; ``loop --seed``
through the fork ends with the same weights twice.

What makes it hard: the fork seeds rand() from the clock (in train_detector,
train_classifier and every [yolo] layer) and loads each batch in 64 (detector)
or 32 (classifier) threads drawing from the C library's one state in whatever
order the scheduler runs them.  The runs below draw in every way the loaders
do: random paths, crops (jitter, min_crop/max_crop), flips, hue, saturation and
exposure, angle and aspect, and (random=1) the input size every 10 batches.

The guard: the same tests fail on the fork without 0006 (make the build folder
point at it, DARKNET_SPARSE_TEST_AB_BUILD, see tests/helpers/ab_darknet.py):
it ignores seed=, seeds from the clock and races its loading threads.  The
two train tests also fail on a build whose seed= only calls srand(N), with no
stream per loading thread.  That without seed= nothing changes is
tests/test_alexeyab_saves.py's (the fork's initialisation byte for byte).
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from darknet_sparse.workflow.loop import LoopSettings, run as run_loop
from helpers.ab_darknet import CFGS, PATCHED, REPO, TINY_TRAIN, copy_photos, edit_cfg, require, run, write_detection_set

YOLO_CFG = REPO / "models" / "yolov3-tiny.cfg"
YOLO_WEIGHTS = REPO / "models" / "yolov3-tiny.weights"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def detection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """yolov4-tiny at 96x96, 8 images of 8 tinted frames (made-up boxes), the
    fork's augmentation on (jitter, hue, saturation, exposure, flip) and
    random=1; the .data file."""
    require(PATCHED)
    folder = tmp_path_factory.mktemp("ab_seed_detector")
    cfg = folder / "yolov4-tiny.cfg"
    cfg.write_text(edit_cfg((CFGS / "yolov4-tiny.cfg").read_text(), dict(TINY_TRAIN, batch=8, max_batches=3),
                            {"yolo": {"random": 1}}))
    return cfg, write_detection_set(folder / "set", images=8).data


def detector_train(cfg: Path, data: Path, work: Path, net: dict, weights: Path | None = None,
                   darknet: Path | None = None) -> Path:
    """`detector train` in a fresh folder ``work`` of ``cfg`` with the [net]
    keys ``net`` (from the cfg's own initialisation when no ``weights``); its
    final weights."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    train_cfg = work / "train.cfg"
    train_cfg.write_text(edit_cfg(cfg.read_text(), net))
    (work / "set.data").write_text("".join(line + "\n" for line in data.read_text().splitlines()
                                           if not line.startswith("backup=")) + f"backup={work}\n")
    command = [darknet or require(PATCHED), "detector", "train", work / "set.data", train_cfg]
    run(command + ([weights, "-dont_show", "-nomap"] if weights else ["-dont_show"]), work)
    return work / "train_final.weights"


def test_detector_train_with_a_seed_saves_the_same_bytes(detection, tmp_path: Path) -> None:
    """From the cfg's own initialisation (seed= reaches the initial weights,
    which a [yolo] layer reseeds from the clock in stock) and from a weights
    file (the data loading alone; the file has done its 3 batches, so 3 more)."""
    cfg, data = detection
    first = detector_train(cfg, data, tmp_path / "a", {"seed": 7})
    again = detector_train(cfg, data, tmp_path / "b", {"seed": 7})
    other = detector_train(cfg, data, tmp_path / "c", {"seed": 8})
    assert digest(first) == digest(again)
    assert digest(first) != digest(other)
    assert (tmp_path / "a" / "train_last.weights").read_bytes() == (tmp_path / "b" / "train_last.weights").read_bytes()
    start = tmp_path / "start.weights"
    shutil.copy(other, start)
    trained = [detector_train(cfg, data, tmp_path / name, {"seed": seed, "max_batches": 6}, weights=start)
               for name, seed in (("d", 3), ("e", 3), ("f", 4))]
    assert digest(trained[0]) == digest(trained[1])
    assert digest(trained[0]) != digest(trained[2])
    assert digest(trained[0]) != digest(start)  # it trained


@pytest.fixture(scope="module")
def classification(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The digits classifier (augmented: crops, angle, aspect, exposure) at
    batch 32, 3 batches, and its .data file."""
    require(PATCHED)
    folder = tmp_path_factory.mktemp("ab_seed_classifier")
    cfg = folder / "digits.cfg"
    cfg.write_text(edit_cfg((REPO / "cfg" / "digits.cfg").read_text(),
                            {"batch": 32, "max_batches": 3, "learning_rate": 0.01, "policy": "constant"}))
    return cfg, digits


def classifier_train(cfg: Path, digits: Path, work: Path, net: dict) -> Path:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    train_cfg = work / "train.cfg"
    train_cfg.write_text(edit_cfg(cfg.read_text(), net))
    lines = [line for line in digits.read_text().splitlines() if not line.startswith("backup")]
    (work / "set.data").write_text("\n".join(lines + [f"backup={work}"]) + "\n")
    run([require(PATCHED), "classifier", "train", work / "set.data", train_cfg, "-dont_show"], work)
    return work / "train_final.weights"


def test_classifier_train_with_a_seed_saves_the_same_bytes(classification, tmp_path: Path) -> None:
    cfg, digits = classification
    first, again, other = (classifier_train(cfg, digits, tmp_path / name, {"seed": seed})
                           for name, seed in (("a", 11), ("b", 11), ("c", 12)))
    assert digest(first) == digest(again)
    assert digest(first) != digest(other)


@pytest.mark.parametrize("value", ["-1", "4294967296", "seven", "1.5", "0x10"])
def test_a_bad_seed_is_one_error_line(detection, tmp_path: Path, value: str) -> None:
    """(A bare ``seed=`` never reaches the patch: the fork's cfg reader drops
    a line ending in ``=`` with its own "Config file error" message.)"""
    cfg, data = detection
    bad = tmp_path / "bad.cfg"
    bad.write_text(edit_cfg(cfg.read_text(), {"seed": value}))
    done = subprocess.run([str(require(PATCHED)), "detector", "train", str(data), str(bad), "-dont_show"],
                          cwd=tmp_path, capture_output=True, text=True, errors="replace", timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: seed: [net] seed={value}: expected a whole number from 0 to 4294967295"], \
        done.stderr[-2000:]


def test_the_largest_seed_is_taken(detection, tmp_path: Path) -> None:
    cfg, data = detection
    first, again = (detector_train(cfg, data, tmp_path / name, {"seed": 4294967295, "max_batches": 1})
                    for name in ("a", "b"))
    assert digest(first) == digest(again)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Eight training and four evaluation frames (as tests/test_alexeyab_loop.py)."""
    return copy_photos(tmp_path_factory.mktemp("user"))


def test_loop_with_a_seed_ends_with_the_same_weights_in_alexeyabs_fork(photos, tmp_path: Path) -> None:
    """One step (50%) of the real yolov3-tiny retrained at 128x128 on
    pseudo-labels by the fork's detector train (prune=1, seed=5 in the
    retraining cfg), twice."""
    settings = LoopSettings(cfg=YOLO_CFG, weights=YOLO_WEIGHTS, data=None, out=tmp_path / "a", targets=(0.5,),
                            iterations=2, task="detector", images=photos["train"], eval_images=photos["eval"],
                            darknet=require(PATCHED), fork="alexeyab", train_size=128, seed=5)
    runs = [run_loop(dataclasses.replace(settings, out=tmp_path / name)) for name in ("a", "b")]
    assert [step.zeros_revived for step in runs[0].steps] == [0]
    assert "seed=5" in (tmp_path / "a" / "train.cfg").read_text().splitlines()
    for name in ("step-01.weights", "final.weights"):
        assert digest(tmp_path / "a" / name) == digest(tmp_path / "b" / name), name
    assert digest(tmp_path / "a" / "step-01.weights") != digest(YOLO_WEIGHTS)


def test_the_bindings_seed_draws_as_the_cfgs_seed(detection, tmp_path: Path) -> None:
    """darknet.seed(N) before loading a cfg (the binding's ds_seed, which
    calls ds_seed_set) initialises the same weights as ``seed=N`` in the
    cfg's [net] section after another darknet.seed; another N others."""
    from darknet_sparse import darknet
    cfg, _ = detection
    plain = tmp_path / "plain.cfg"
    plain.write_text(edit_cfg(cfg.read_text(), {"batch": 1}))
    seeded = tmp_path / "seeded.cfg"
    seeded.write_text(edit_cfg(cfg.read_text(), {"batch": 1, "seed": 5}))
    made = {}
    for name, before, path in (("binding", 5, plain), ("cfg", 99, seeded), ("other", 6, plain)):
        darknet.seed(before, darknet.backend(fork="alexeyab"))
        darknet.Network(path, fork="alexeyab").save(tmp_path / f"{name}.weights")
        made[name] = digest(tmp_path / f"{name}.weights")
    assert made["binding"] == made["cfg"]
    assert made["binding"] != made["other"]
