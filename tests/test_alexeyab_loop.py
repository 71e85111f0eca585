"""``loop --task detector --fork alexeyab``: the prune/retrain loop through
the patched AlexeyAB fork's ``detector train`` (prune=1), on the real
yolov3-tiny retrained at 128x128 on pseudo-labels.

What is checked is that zeros stay zero, that it trained, and which files
it wrote.  The loop runs unseeded here (the fork then draws from the clock, as
upstream), so every assertion holds whatever the draw; ``loop --seed``
(patches/alexeyab/0006-seed) is tests/test_alexeyab_seed.py's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from darknet_sparse.format.files import load
from darknet_sparse.pruning.search import weight_sparsity
from darknet_sparse.reports import diff
from darknet_sparse.workflow.loop import LoopSettings, run
from helpers.ab_darknet import PATCHED, REPO, STOCK, copy_photos, require

YOLO_CFG = REPO / "models" / "yolov3-tiny.cfg"
YOLO_WEIGHTS = REPO / "models" / "yolov3-tiny.weights"


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Eight training and four evaluation frames, copied into folders of the user's."""
    return copy_photos(tmp_path_factory.mktemp("user"))


def _settings(photos: dict, out: Path, darknet: Path | None = None, **extra) -> LoopSettings:
    return LoopSettings(cfg=YOLO_CFG, weights=YOLO_WEIGHTS, data=None, out=out, targets=(0.3, 0.5), iterations=2,
                        task="detector", images=photos["train"], eval_images=photos["eval"], darknet=darknet,
                        fork="alexeyab", train_size=128, **extra)


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory: pytest.TempPathFactory, photos: dict) -> dict:
    require(PATCHED)
    before = {name: _tree(folder) for name, folder in photos.items()}
    out = tmp_path_factory.mktemp("loop") / "run"
    messages: list[str] = []
    result = run(_settings(photos, out), on_message=messages.append)
    return {"result": result, "out": out, "before": before, "messages": messages}


def test_the_loop_retrains_in_alexeyabs_detector_train_and_never_revives_a_zero(two_steps) -> None:
    result, out = two_steps["result"], two_steps["out"]
    assert [step.zeros_revived for step in result.steps] == [0, 0]
    first, second = (load(YOLO_CFG, out / name, fork="alexeyab") for name in ("step-01.weights", "step-02.weights"))
    assert diff(first, second).revived == 0
    assert diff(first, second).totals["changed"] > 0  # it did train
    assert weight_sparsity(second) >= 0.5 - 1e-4
    log = (out / "step-01.log").read_text()
    assert "mini_batch = " in log  # AlexeyAB's parser (pjreddie's prints no such line)
    assert [json.loads(line)["map50"] for line in (out / "log.jsonl").read_text().splitlines()] \
        == [step.value for step in result.steps]


def test_the_retraining_cfg_says_what_it_changed_for_the_fork(two_steps) -> None:
    """prune=1, max_batches, burn_in=0, the 128x128 input and random=0 in
    both [yolo] heads, each under the loop's comment line; the loop says so,
    and that the fork's train runs with -dont_show -nomap."""
    text = (two_steps["out"] / "train.cfg").read_text()
    net = text.split("[convolutional]")[0].splitlines()
    assert "# set by darknet-sparse loop" in net
    for option in ("prune=1", "width=128", "height=128", "burn_in=0"):
        assert option in net, option
    assert any(line.replace(" ", "") == "max_batches=2" for line in net)
    heads = text.split("\n[yolo]\n")[1:]
    assert len(heads) == 2 and all("random=0" in head.split("[")[0].splitlines() for head in heads)
    said = [m for m in two_steps["messages"] if m.startswith("retraining in AlexeyAB's Darknet")]
    assert len(said) == 1 and "detector train -dont_show -nomap" in said[0], two_steps["messages"]
    assert "prune=1, max_batches=2, burn_in=0, width=128, height=128" in said[0] and "random=0" in said[0]


def test_pseudo_labels_only_in_the_loop_folder(two_steps, photos) -> None:
    """AlexeyAB's detector train reads an image's labels beside it (its
    replace_image_to_label rewrites no plain ``images`` folder): the label
    files sit beside the links, and the fork found every one of them (it
    prints "Can't open label file" and appends to ./bad.list otherwise)."""
    assert {name: _tree(folder) for name, folder in photos.items()} == two_steps["before"]
    labels = sorted((two_steps["out"] / "pseudo" / "images").glob("*.txt"))
    assert len(labels) == 8 and sum(len(p.read_text().splitlines()) for p in labels) > 0
    for log in sorted(two_steps["out"].glob("step-*.log")):
        assert "Can't open label file" not in log.read_text(errors="replace"), log


def test_the_revival_check_catches_the_stock_fork(two_steps, photos, tmp_path: Path) -> None:
    """The same loop through the stock fork (no prune=1 patch): the zeros
    come back, and the loop counts them (the guard the patch is)."""
    out = tmp_path / "stock"
    out.mkdir()
    shutil.copytree(two_steps["out"] / "pseudo", out / "pseudo", symlinks=True)
    settings = _settings(photos, out, darknet=require(STOCK))
    result = run(dataclasses.replace(settings, targets=(0.5,)))
    total = sum(s.param.count for s in load(YOLO_CFG, YOLO_WEIGHTS).slots if s.param.role == "weights")
    assert result.steps[0].zeros_revived > 0.1 * 0.5 * total
