"""The loop's defaults (issue 10, item 3): what ``loop`` does when given
nothing beyond ``--final-sparsity`` and ``--iterations-per-step``.

The command line and :class:`LoopSettings` agree on them (global mode, AGP
in :data:`DEFAULT_STEPS` steps plus a fine-tune step, a classifier's rate
scaled down, its own starting weights as teacher), and a real loop with them
on the digits model puts the teacher into Darknet's retraining cfg.  How
well the defaults do is measured in ``benchmarks/quality.md`` (e).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from darknet_sparse.cli import cli, workflow  # noqa: F401  (registers `loop`)
from darknet_sparse.darknet.examples import write_digits
from darknet_sparse.format.files import load
from darknet_sparse.pruning import schedule
from darknet_sparse.pruning.policies import Global
from darknet_sparse.pruning.search import weight_sparsity
from darknet_sparse.workflow import loop as loop_
from darknet_sparse.workflow import settings as settings_

REPO = Path(__file__).resolve().parent.parent
PATCHED = REPO / "build" / "darknet" / "darknet"


def _settings_of(monkeypatch, *args) -> settings_.LoopSettings:
    """The settings the CLI hands to the loop, which is not run."""
    seen = []

    def fake_run(settings, resume=False, on_progress=None, on_message=None):
        seen.append(settings)
        return loop_.LoopResult([], 0, None)

    monkeypatch.setattr(loop_, "run", fake_run)
    result = CliRunner().invoke(cli, ["loop", *map(str, args)])
    assert result.exit_code == 0, result.output
    return seen[0]


def test_help_shows_the_defaults():
    text = " ".join(CliRunner().invoke(cli, ["loop", "--help"]).output.split())
    for shown in ("[default: global]", "--final-sparsity. [default: 8; x>=1]", "[default: 1; x>=0]",
                  "the cfg's learning_rate x 0.2", "Default: a classifier is taught by --weights",
                  "default: 4 for classifiers, 1 for detectors", "default: 0.7 for classifiers, 1 for detectors"):
        assert shown in text, shown


def test_the_cli_defaults_are_the_settings_defaults(monkeypatch, tmp_path, digits, model_files):
    cfg, weights = model_files
    settings = _settings_of(monkeypatch, "--cfg", cfg, "--weights", weights, "--data", digits,
                            "--final-sparsity", 0.92, "--iterations-per-step", 200, "--out", tmp_path / "o")
    assert settings.targets == tuple(schedule.targets(0.92, 8, "agp") + [0.92])  # eight AGP steps, one fine-tune
    assert len(settings.targets) == settings_.DEFAULT_STEPS + settings_.DEFAULT_FINE_TUNE_STEPS
    bare = settings_.LoopSettings(cfg=cfg, weights=weights, data=digits, out=tmp_path / "o",
                              targets=settings.targets, iterations=200)
    assert settings == dataclasses.replace(bare, fork=settings.fork)
    assert settings.policy is Global and settings.learning_rate is None and settings.teacher == settings_.STARTING
    resolved = settings_.with_defaults(settings)
    assert (resolved.teacher, resolved.temperature, resolved.alpha) == (weights, 4.0, 0.7)
    assert resolved.recalibrate == 0  # a classifier: not by default


def test_no_teacher_and_explicit_settings_override_the_defaults(monkeypatch, tmp_path, digits, model_files):
    cfg, weights = model_files
    common = ("--cfg", cfg, "--weights", weights, "--data", digits, "--iterations-per-step", 9,
              "--out", tmp_path / "o")
    plain = _settings_of(monkeypatch, *common, "--final-sparsity", 0.9, "--no-teacher", "--steps", 3,
                         "--fine-tune-steps", 0, "--mode", "magnitude", "--learning-rate", 0.05)
    assert plain.targets == tuple(schedule.targets(0.9, 3, "agp")) and plain.teacher is None
    assert plain.policy.name == "magnitude" and plain.learning_rate == 0.05
    assert settings_.with_defaults(plain).teacher is None
    listed = _settings_of(monkeypatch, *common, "--sparsities", "0.5,0.7")  # an explicit list gets no extra step
    assert listed.targets == (0.5, 0.7)
    detector = settings_.with_defaults(dataclasses.replace(listed, task="detector"))
    assert (detector.teacher, detector.temperature, detector.alpha) == (None, 1.0, 1.0)
    assert detector.recalibrate == 0  # no --images: nothing to recalibrate on
    with_images = settings_.with_defaults(dataclasses.replace(listed, task="detector", images=tmp_path))
    assert with_images.recalibrate == settings_.DETECTOR_RECALIBRATION
    assert _settings_of(monkeypatch, *common, "--sparsities", "0.5", "--recalibrate", 0).recalibrate == 0
    result = CliRunner().invoke(cli, ["loop", *map(str, common), "--sparsities", "0.5", "--no-teacher",
                                      "--teacher", weights])
    assert result.exit_code == 2 and "--no-teacher and --teacher exclude each other" in result.output


def test_a_loop_with_the_defaults_distils_from_its_starting_weights(tmp_path, digits, model_files):
    """The real patched Darknet, two iterations per step: the retraining cfg
    carries the default teacher, rate and distillation options, and the
    zeros stay frozen."""
    cfg, weights = model_files
    out = tmp_path / "defaults"
    result = CliRunner().invoke(cli, ["loop", "--cfg", str(cfg), "--weights", str(weights), "--data", str(digits),
                                      "--final-sparsity", "0.92", "--iterations-per-step", "2", "--out", str(out),
                                      "--darknet", str(PATCHED), "--seed", "1"])
    assert result.exit_code == 0, result.output
    net = (out / "train.cfg").read_text().split("[convolutional]")[0].splitlines()
    for option in ("prune=1", "max_batches=2", "learning_rate=0.02", f"distill_weights={weights}",
                   f"distill_cfg={out / 'teacher.cfg'}", "distill_temperature=4", "distill_alpha=0.7"):
        assert option in net, option
    assert "distill: teacher " + str(out / "teacher.cfg") + ", 1 head(s), temperature 4, alpha 0.7" in \
        (out / "step-01.log").read_text()
    lines = (out / "log.jsonl").read_text().splitlines()
    assert len(lines) == settings_.DEFAULT_STEPS + settings_.DEFAULT_FINE_TUNE_STEPS
    assert '"mode": "global"' in lines[0] and '"zeros_revived": 0' in lines[-1]
    assert weight_sparsity(load(cfg, out / "final.weights")) >= 0.92 - 1e-4


def test_another_split_seed_draws_another_split_of_the_same_images(tmp_path, digits):
    """The held-out models of (e) come from ``write_digits(split_seed=N)``:
    the same images, another 20% of each class held out."""
    other = write_digits(tmp_path / "digits", split_seed=4)

    def split(data: Path, name: str) -> set[str]:
        return {str(Path(p).relative_to(data.parent).with_suffix("").parts[1:])
                for p in (data.parent / f"{name}.list").read_text().split()}

    for name in ("train", "valid"):
        assert len(split(other, name)) == len(split(digits, name))
    assert split(other, "valid") != split(digits, "valid")
    assert split(other, "train") | split(other, "valid") == split(digits, "train") | split(digits, "valid")


def test_each_classifier_step_is_recalibrated_on_its_training_list(tmp_path, digits, model_files, monkeypatch):
    """With retraining replaced by a copy, a step's weights are exactly the
    pruned weights with batch-norm statistics re-estimated on a sample of
    the data file's train= list, as they are (relative to the starting
    model, as a detector's, they lost points on digits and Fashion-MNIST);
    without recalibration
    they would be the pruned weights themselves."""
    from darknet_sparse.analysis import recalibrate
    from darknet_sparse.darknet import images
    from darknet_sparse.pruning.search import prune_to

    cfg, weights = model_files
    monkeypatch.setattr(loop_, "retrain", lambda settings, source, step: Path(shutil.copy(
        source, settings.out.resolve() / settings_.step_name(step))))
    out = tmp_path / "recalibrated"
    result = CliRunner().invoke(cli, ["loop", "--cfg", str(cfg), "--weights", str(weights), "--data", str(digits),
                                      "--sparsities", "0.6", "--iterations-per-step", "1", "--out", str(out),
                                      "--darknet", str(PATCHED), "--no-teacher", "--recalibrate", "300"])
    assert result.exit_code == 0, result.output
    pruned = tmp_path / "pruned.weights"
    prune_to(load(cfg, weights), pruned, 0.6, Global)
    net = recalibrate.calibration_network(cfg, pruned, settings_.RECALIBRATION_BATCH)
    paths = images.sample([Path(p) for p in (digits.parent / "train.list").read_text().split()], 300)
    recalibrate.recalibrate(net, load(cfg, pruned).model, recalibrate.ImageFiles(paths, net.input_shape, "crop"))
    expected = tmp_path / "expected.weights"
    net.save(expected)
    assert (out / "step-01.weights").read_bytes() == expected.read_bytes()
    assert expected.read_bytes() != pruned.read_bytes()


def test_recalibrating_a_classifier_needs_a_train_list(tmp_path, digits, model_files):
    from darknet_sparse.errors import CfgError

    cfg, weights = model_files
    data = tmp_path / "no-train.data"
    data.write_text("".join(line + "\n" for line in digits.read_text().splitlines()
                            if not line.startswith("train")))
    settings = settings_.LoopSettings(cfg=cfg, weights=weights, data=data, out=tmp_path / "o", targets=(0.5,),
                                  iterations=1, darknet=PATCHED, recalibrate=100)
    with pytest.raises(CfgError, match="no train= list of images to recalibrate on"):
        loop_.run(settings)
    assert not (tmp_path / "o" / "train.cfg").exists()  # refused before anything ran
