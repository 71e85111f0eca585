"""Knowledge distillation in AlexeyAB's Darknet (patches/alexeyab/0005-distill.patch).

The digits classifier (cfg/digits.weights, top-1 1.0 on its validation set)
is the teacher; the student starts from the same weights and is trained by
the patched fork's `classifier train` on *rotated* labels (class i labelled
i+1), so the teacher and the labels disagree on every image.  With
distill_alpha=1 the student keeps the teacher's predictions; with
distill_alpha=0 (the labels only: the teacher is not even loaded) the same
training moves it off them.  The fork seeds its data loading from the clock
and trains only the convolutional layers (its update_network skips
[connected]); over 5 runs each (02:55 UTC, this machine): alpha=1 kept top-1
0.99-1.00 on the true labels, alpha=0 fell to 0.1-0.4; the bounds (>= 0.9,
<= 0.75) sit far outside both spreads.  A teacher whose [softmax] head has
another size is one Error: line and exit status 2.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.ab_darknet import REPO, edit_cfg, run
from helpers.ab_fixtures import ab  # noqa: F401

TEACHER_CFG = REPO / "cfg" / "digits.cfg"
TEACHER_WEIGHTS = REPO / "cfg" / "digits.weights"


@pytest.fixture(scope="module")
def sets(digits: Path) -> dict[str, Path]:
    labels = (digits.parent / "labels.list").read_text().splitlines()
    (digits.parent / "rotated.list").write_text("\n".join(labels[1:] + labels[:1]) + "\n")
    rotated = digits.parent / "rotated.data"
    rotated.write_text(digits.read_text().replace(f"labels={digits.parent / 'labels.list'}",
                                                  f"labels={digits.parent / 'rotated.list'}"))
    return {"true": digits, "rotated": rotated}


def top1(darknet: Path, data: Path, cfg: Path, weights: Path) -> float:
    done = subprocess.run([darknet, "classifier", "valid", data, cfg, weights], capture_output=True, text=True,
                          timeout=300)
    found = re.findall(r"top 1: ([0-9.]+)", done.stdout)
    assert done.returncode == 0 and found, done.stdout[-2000:] + done.stderr[-2000:]
    return float(found[-1])


def student(work: Path, sets: dict[str, Path], net: dict) -> tuple[Path, Path]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = work / "student.cfg"
    cfg.write_text(edit_cfg(TEACHER_CFG.read_text(), {"batch": 16, "max_batches": 100, "learning_rate": 0.001,
                                                      "policy": "constant", "prune": 1, **net}))
    data = [line for line in sets["rotated"].read_text().splitlines() if not line.startswith("backup")]
    (work / "set.data").write_text("\n".join(data + [f"backup={work}"]) + "\n")
    return cfg, work / "set.data"


@pytest.mark.parametrize("alpha", [1, 0])
def test_classifier_follows_teacher_or_labels(ab, sets, tmp_path: Path, alpha: int):  # noqa: F811
    assert top1(ab.patched, sets["true"], TEACHER_CFG, TEACHER_WEIGHTS) == 1.0  # the teacher is right
    cfg, data = student(tmp_path / f"a{alpha}", sets, {"distill_cfg": TEACHER_CFG, "distill_weights": TEACHER_WEIGHTS,
                                                        "distill_alpha": alpha, "distill_temperature": 2})
    run([ab.patched, "classifier", "train", data, cfg, TEACHER_WEIGHTS, "-dont_show", "-clear"], cfg.parent)
    final = cfg.parent / "student_final.weights"
    assert final.is_file()
    true = top1(ab.patched, sets["true"], cfg, final)
    if alpha == 1:
        assert true >= 0.9, true
    else:
        assert true <= 0.75, true


def test_mismatched_teacher_head_is_one_error(ab, sets, tmp_path: Path):  # noqa: F811
    teacher = tmp_path / "teacher.cfg"
    text = TEACHER_CFG.read_text()
    assert "\noutput=10\n" in text
    teacher.write_text(text.replace("\noutput=10\n", "\noutput=12\n"))
    cfg, data = student(tmp_path / "bad", sets, {"distill_cfg": teacher, "distill_weights": TEACHER_WEIGHTS})
    done = subprocess.run([ab.patched, "classifier", "train", data, cfg, TEACHER_WEIGHTS, "-dont_show", "-clear"],
                          cwd=cfg.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(teacher) in errors[0] and "softmax" in errors[0], errors
    assert not (cfg.parent / "student_final.weights").exists()
