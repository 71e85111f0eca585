"""The prune/retrain loop on the example digits model.

The real loop runs the patched Darknet for a few iterations per step; the
tests of the loop's own logic (tasks, evaluation commands, failures) use a
stand-in Darknet that copies its input weights to where ``train`` writes,
and an evaluation command that prints a constant.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from darknet_sparse.cli import cli, workflow  # noqa: F401  (registers `loop`)
from darknet_sparse.darknet import runner
from darknet_sparse.darknet.runner import private_data, retrain_cfg, set_options
from darknet_sparse.errors import CfgError, DarknetRunError, InputError, OutputError, PolicyError, WeightsFormatError
from darknet_sparse.format.cfg import read_cfg
from darknet_sparse.format.files import load
from darknet_sparse.pruning.policies import Absolute, Magnitude, Sensitivity, Triangle
from darknet_sparse.pruning.search import TOLERANCE, prune_to, weight_sparsity
from darknet_sparse.reports import diff
from darknet_sparse.workflow.loop import LoopSettings, run

REPO = Path(__file__).resolve().parent.parent
PATCHED = REPO / "build" / "darknet" / "darknet"
STOCK = Path("/usr/bin/darknet")
LOG_KEYS = {"step", "target_sparsity", "sparsity", "top1", "zeros_revived", "weights", "mode", "level",
            "iterations", "seconds"}
# Stands in for `darknet <task> train DATA CFG WEIGHTS -clear`: records its
# arguments and "trains" by copying WEIGHTS to where Darknet would save.
FAKE_DARKNET = """#!/bin/sh
echo "$@" > "$(dirname "$0")/args"
cp "$4" "$(dirname "$0")/last.cfg"
backup=$(sed -n 's/^backup=//p' "$3")
base=$(basename "$4"); base=${base%%.*}
if [ "$1" = detector ]; then name=${base}_final.weights; else name=$base.weights; fi
cp "$5" "$backup/$name"
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _cli(*args: str):
    """The loop through the CLI, its retraining seeded (--seed: the same steps every run)."""
    return CliRunner().invoke(cli, ["loop", "--seed", "1", *map(str, args)])


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, digits, model_files) -> dict:
    """The real loop, two steps of 10 iterations, through the CLI."""
    cfg, weights = model_files
    before = {p: _sha(p) for p in (cfg, weights, digits)}
    out = tmp_path_factory.mktemp("two") / "run"
    result = _cli("--cfg", cfg, "--weights", weights, "--data", digits, "--sparsities", "0.5,0.7",
                  "--iterations-per-step", 10, "--out", out, "--darknet", PATCHED)
    return {"result": result, "out": out, "before": before}


def test_loop_runs_every_step_and_logs_it(two_steps):
    assert two_steps["result"].exit_code == 0, two_steps["result"].output
    out = two_steps["out"]
    lines = _log(out)
    assert [line["step"] for line in lines] == [1, 2]
    assert [line["target_sparsity"] for line in lines] == [0.5, 0.7]
    for line in lines:
        assert set(line) == LOG_KEYS
        assert line["sparsity"] == pytest.approx(line["target_sparsity"], abs=1e-4)
        assert 0 <= line["top1"] <= 1 and line["mode"] == "global" and line["iterations"] == 10
        assert Path(line["weights"]) == out / f"step-{line['step']:02d}.weights"
    assert (out / "final.weights").read_bytes() == (out / "step-02.weights").read_bytes()
    assert "final: " + str(out / "final.weights") in two_steps["result"].output
    assert not list(out.glob("*.pruned.weights")) and not list((out / "backup").iterdir())


def test_retraining_with_the_patched_darknet_never_revives_a_zero(two_steps, model_files):
    out = two_steps["out"]
    assert [line["zeros_revived"] for line in _log(out)] == [0, 0]
    cfg = model_files[0]
    first, second = load(cfg, out / "step-01.weights"), load(cfg, out / "step-02.weights")
    assert diff(first, second).revived == 0  # step 2's threshold only adds zeros; its retraining keeps them
    assert weight_sparsity(second) >= 0.7 - 1e-4


def test_a_teacher_distils_while_retraining_and_zeros_stay_zero(tmp_path, digits, model_files):
    """--teacher puts patches/0020's options in the retraining cfg; the
    patched Darknet loads the teacher, and prune=1 still freezes the zeros."""
    cfg, weights = model_files
    out = tmp_path / "taught"
    result = _cli("--cfg", cfg, "--weights", weights, "--data", digits, "--sparsities", "0.6",
                  "--iterations-per-step", 5, "--out", out, "--darknet", PATCHED, "--teacher", weights,
                  "--temperature", 3, "--alpha", 0.7)
    assert result.exit_code == 0, result.output
    net = (out / "train.cfg").read_text().split("[convolutional]")[0].splitlines()
    for option in (f"distill_cfg={out / 'teacher.cfg'}", f"distill_weights={weights}", "distill_temperature=3",
                   "distill_alpha=0.7", "prune=1"):
        assert option in net, option
    assert (out / "teacher.cfg").read_text() == cfg.read_text()  # a classifier's teacher runs as it is
    assert "distill: teacher " + str(out / "teacher.cfg") + ", 1 head(s), temperature 3, alpha 0.7" in \
        (out / "step-01.log").read_text()
    line, = _log(out)
    assert line["zeros_revived"] == 0 and 0 <= line["top1"] <= 1
    trained = load(cfg, out / "step-01.weights")
    assert weight_sparsity(trained) >= 0.6 - 1e-4
    assert diff(load(cfg, weights), trained).totals["changed"] > 0


def test_the_revival_check_catches_a_darknet_without_prune(tmp_path, digits, model_files):
    """Stock Darknet ignores prune=1: the same step revives the zeros, and the log says so."""
    cfg, weights = model_files
    settings = LoopSettings(cfg=cfg, weights=weights, data=digits, out=tmp_path / "stock", targets=(0.5,),
                            iterations=5, darknet=STOCK)
    record, = run(settings).steps
    count = sum(s.param.count for s in load(cfg, weights).slots if s.param.role == "weights")
    assert record.zeros_revived > 0.9 * 0.5 * count


def test_user_files_are_unchanged(two_steps):
    assert {p: _sha(p) for p in two_steps["before"]} == two_steps["before"]


def test_resume_skips_the_steps_already_logged(two_steps, tmp_path, model_files, digits):
    out = tmp_path / "moved"
    shutil.copytree(two_steps["out"], out)  # the log's paths name the old folder: resume must not use them
    log_before = (out / "log.jsonl").read_text()
    kept = {name: _sha(out / name) for name in ("step-01.weights", "step-02.weights")}
    cfg, weights = model_files
    result = _cli("--cfg", cfg, "--weights", weights, "--data", digits, "--sparsities", "0.5,0.7,0.9",
                  "--iterations-per-step", 10, "--out", out, "--darknet", PATCHED, "--resume")
    assert result.exit_code == 0, result.output
    assert result.output.count("(resumed)") == 2
    assert (out / "log.jsonl").read_text().startswith(log_before)
    third = _log(out)[2]
    assert (third["step"], third["target_sparsity"], third["zeros_revived"]) == (3, 0.9, 0)
    assert third["sparsity"] >= 0.9 - 1e-4
    assert {name: _sha(out / name) for name in kept} == kept
    assert (out / "final.weights").read_bytes() == (out / "step-03.weights").read_bytes()


def test_the_floor_stops_the_loop(tmp_path, model_files, digits):
    cfg, weights = model_files
    out = tmp_path / "floor"
    result = _cli("--cfg", cfg, "--weights", weights, "--data", digits, "--sparsities", "0.3,0.5",
                  "--iterations-per-step", 5, "--out", out, "--darknet", PATCHED, "--min-top1", "1.01")
    assert result.exit_code == 1, result.output
    assert "below the floor 1.01; stopped (no step met it, so there is no final.weights)" in result.output
    assert [line["step"] for line in _log(out)] == [1]
    assert not (out / "final.weights").exists() and not (out / "step-02.weights").exists()


@pytest.mark.parametrize("darknet, status, last", [
    (PATCHED, 0, "final: {out}/final.weights"),
    (STOCK, 1, "zero weights of {out}/step-01.pruned.weights are non-zero in {out}/step-01.weights"),
])
def test_the_shell_script_loops_and_stops_on_revived_zeros(tmp_path, model_files, digits, darknet, status, last):
    cfg, weights = model_files
    out = tmp_path / "shell"
    env = dict(os.environ, DARKNET=str(darknet), DARKNET_SPARSE=f"{sys.executable} -m darknet_sparse")
    run_ = subprocess.run([REPO / "scripts" / "prune_retrain.sh", cfg, weights, digits, out, "0.5 0.6", "5"],
                          env=env, capture_output=True, text=True, check=False)
    assert run_.returncode == status, run_.stderr
    assert (run_.stdout + run_.stderr).strip().splitlines()[-1].endswith(last.format(out=out))
    if status == 0:
        assert run_.stdout.startswith("step 01: sparsity 0.5, top-1 ")
        assert diff(load(cfg, out / "step-01.weights"), load(cfg, out / "final.weights")).revived == 0


# --------------------------------------------------------------------------
# The loop's own logic, with a stand-in Darknet.


@pytest.fixture()
def fake(tmp_path) -> Path:
    path = tmp_path / "bin" / "darknet"
    path.parent.mkdir()
    path.write_text(FAKE_DARKNET)
    path.chmod(0o755)
    return path


def _settings(tmp_path, digits, model_files, binary, **changes) -> LoopSettings:
    cfg, weights = model_files
    values = {"cfg": cfg, "weights": weights, "data": digits, "out": tmp_path / "out", "targets": (0.5, 0.6),
              "iterations": 7, "darknet": binary, "eval_cmd": "echo 0.5"}
    values.update(changes)
    return LoopSettings(**values)


def test_darknet_gets_a_private_cfg_and_data_and_clears_seen(tmp_path, digits, model_files, fake):
    run(_settings(tmp_path, digits, model_files, fake))
    out = tmp_path / "out"
    task, command, data, cfg, weights, clear = (fake.parent / "args").read_text().split()
    assert (task, command, clear) == ("classifier", "train", "-clear")
    assert (data, cfg, weights) == (str(out / "train.data"), str(out / "train.cfg"),
                                    str(out / "step-02.pruned.weights"))
    text = (fake.parent / "last.cfg").read_text()
    # no learning rate given: the cfg's 0.1 times RETRAIN_RATE_SCALE; then the default teacher's options
    assert "[net]\n# set by darknet-sparse loop\nprune=1\ndistill_cfg=" in text  # the options the cfg lacks
    net = read_cfg(fake.parent / "last.cfg")[0]
    assert (net.get_int("max_batches"), net.get_float("learning_rate")) == (7, 0.02)
    assert "max_batches=1500" not in text and "seed" not in net.options  # no seed given: the clock
    assert f"backup={out / 'backup'}" in (out / "train.data").read_text().splitlines()


def test_a_seed_reaches_the_retraining_cfg(tmp_path, digits, model_files, fake):
    run(_settings(tmp_path, digits, model_files, fake, seed=12345))
    assert read_cfg(fake.parent / "last.cfg")[0].get_int("seed") == 12345
    result = CliRunner().invoke(cli, ["loop", "-w", str(model_files[1]), "--cfg", str(model_files[0]), "--data",
                                      str(digits), "--sparsities", "0.5", "--iterations-per-step", "3",
                                      "--eval-cmd", "echo 0.5", "--darknet", str(fake), "--seed", "99",
                                      "-o", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert read_cfg(fake.parent / "last.cfg")[0].get_int("seed") == 99


@pytest.mark.parametrize("seed", [-1, 2 ** 32, 1.5, True])
def test_a_seed_is_an_unsigned_int(tmp_path, digits, model_files, fake, seed):
    with pytest.raises(InputError, match=f"seed {seed!r} must be a whole number in"):
        run(_settings(tmp_path, digits, model_files, fake, seed=seed))
    assert not (fake.parent / "args").exists()


def test_detector_task_scores_with_the_evaluation_command(tmp_path, digits, model_files, fake):
    command = 'test -f {weights} && echo "mAP@0.5 follows" && echo "$DARKNET_SPARSE_STEP.25"'
    result = run(_settings(tmp_path, digits, model_files, fake, task="detector", eval_cmd=command))
    assert [(r.metric, r.value) for r in result.steps] == [("score", 1.25), ("score", 2.25)]
    lines = _log(tmp_path / "out")
    assert [line["score"] for line in lines] == [1.25, 2.25] and "top1" not in lines[0]


@pytest.mark.parametrize("command, message", [
    ("echo done", r"its last output line is not a number: 'done'"),
    ("true", r"its last output line is not a number: '\(no output\)'"),
    ("echo nope >&2; exit 3", r"exit status 3; last output:\nnope"),
])
def test_a_failing_evaluation_command_is_an_error(tmp_path, digits, model_files, fake, command, message):
    with pytest.raises(DarknetRunError, match=message):
        run(_settings(tmp_path, digits, model_files, fake, eval_cmd=command))


@pytest.mark.parametrize("script, message", [
    ("#!/bin/sh\necho loading; echo out of memory; exit 1\n",
     r"exit status 1; last output .*\nloading\nout of memory"),
    ("#!/bin/sh\nkill -SEGV $$\n", "killed by SIGSEGV"),
    ("#!/bin/sh\necho \"Couldn't open file\"\n", "it wrote no train.weights; last output .*\nCouldn't open file"),
])
def test_darknet_failures_name_the_command_and_show_its_output(tmp_path, digits, model_files, script, message):
    darknet = tmp_path / "darknet"
    darknet.write_text(script)
    darknet.chmod(0o755)
    with pytest.raises(DarknetRunError, match=message):
        run(_settings(tmp_path, digits, model_files, darknet))
    assert not (tmp_path / "out" / "log.jsonl").exists()


def test_an_interrupted_log_line_is_dropped_on_resume(tmp_path, digits, model_files, fake):
    settings = _settings(tmp_path, digits, model_files, fake, targets=(0.5,))
    run(settings)
    log = tmp_path / "out" / "log.jsonl"
    first = log.read_text()
    with open(log, "a") as fp:
        fp.write('{"step": 2, "target_spar')
    result = run(_settings(tmp_path, digits, model_files, fake, targets=(0.5, 0.6)), resume=True)
    assert result.resumed == 1 and [r.step for r in result.steps] == [1, 2]
    assert log.read_text().startswith(first) and [line["step"] for line in _log(tmp_path / "out")] == [1, 2]


def test_an_existing_loop_is_not_overwritten(tmp_path, digits, model_files, fake):
    run(_settings(tmp_path, digits, model_files, fake))
    with pytest.raises(OutputError, match="already holds a loop; pass resume"):
        run(_settings(tmp_path, digits, model_files, fake))


def test_resume_refuses_a_different_schedule(tmp_path, digits, model_files, fake):
    run(_settings(tmp_path, digits, model_files, fake))
    with pytest.raises(PolicyError, match="step 1 was global to 0.5 .*now global to 0.4"):
        run(_settings(tmp_path, digits, model_files, fake, targets=(0.4, 0.6)), resume=True)


def test_resume_of_a_finished_loop_runs_nothing(tmp_path, digits, model_files, fake):
    run(_settings(tmp_path, digits, model_files, fake))
    (fake.parent / "args").unlink()
    result = run(_settings(tmp_path, digits, model_files, fake), resume=True)
    assert result.resumed == 2 and not (fake.parent / "args").exists()


@pytest.mark.parametrize("changes, error, message", [
    ({"task": "detector", "eval_cmd": None}, InputError,
     r"task detector needs evaluation images \(--eval-images: .*\) or an evaluation command \(--eval-cmd\)"),
    ({"task": "detector", "data": None}, InputError, r"task detector needs training images \(--images\)"),
    ({"data": None}, InputError, r"task classifier needs a data file \(--data\)"),
    ({"eval_images": Path("x")}, InputError, r"--eval-images is for detectors"),
    ({"teacher_cfg": Path("x.cfg"), "teacher": None}, InputError, r"--teacher-cfg\) goes with a teacher"),
    ({"teacher": Path("/nonexistent/t.weights")}, WeightsFormatError, "no such teacher weights file"),
    ({"teacher": Path(__file__), "alpha": 1.5}, InputError, r"alpha 1.5 must be in \[0, 1\]"),
    ({"teacher": Path(__file__), "temperature": 0.0}, InputError, "temperature 0.0 must be a number > 0"),
    ({"iterations": 0}, InputError, "iterations per step 0 must be a whole number >= 1"),
    ({"targets": (0.7, 0.5)}, PolicyError, "must not decrease: 0.7 then 0.5"),
    ({"policy": "random"}, PolicyError, "unknown mode 'random'"),
    ({"darknet": Path("/nonexistent/darknet")}, DarknetRunError, "build the patched one with `darknet-sparse build`"),
    ({"data": Path("/nonexistent/x.data")}, CfgError, "no such data file"),
    ({"policy": Triangle, "targets": (0.8,)}, PolicyError, "mode triangle reaches at most 0.6922 total sparsity"),
])
def test_bad_settings_fail_before_darknet_runs(tmp_path, digits, model_files, fake, changes, error, message):
    with pytest.raises(error, match=message):
        run(_settings(tmp_path, digits, model_files, fake, **changes))
    assert not (fake.parent / "args").exists()


def test_an_alexeyab_cfg_is_refused_before_darknet_runs(tmp_path, digits, model_files, fake):
    """pjreddie's `classifier train` would take mish for relu and train on.
    (With fork auto such a cfg goes to AlexeyAB's fork, whose `classifier
    train` runs it: the stand-in gets its -dont_show, and writes pjreddie's
    file name rather than the fork's train_final.weights.)"""
    cfg = tmp_path / "mish.cfg"
    cfg.write_text(model_files[0].read_text().replace("activation=leaky", "activation=mish", 1))
    for changes in ({"cfg": cfg, "fork": "pjreddie"}, {"teacher": model_files[1], "teacher_cfg": cfg}):
        with pytest.raises(CfgError, match=r"mish.cfg: uses AlexeyAB-only features \(activation=mish"):
            run(_settings(tmp_path, digits, model_files, fake, **changes))
        assert not (fake.parent / "args").exists()
    with pytest.raises(DarknetRunError, match=r"-clear -dont_show: it wrote no train_final.weights"):
        run(_settings(tmp_path, digits, model_files, fake, cfg=cfg))
    assert (fake.parent / "args").read_text().split()[:2] == ["classifier", "train"]


def test_an_output_folder_darknet_cannot_use_is_refused(tmp_path, digits, model_files, fake):
    with pytest.raises(OutputError, match="without whitespace"):
        run(_settings(tmp_path, digits, model_files, fake, out=tmp_path / "my run"))


def test_the_loop_never_writes_over_its_inputs(tmp_path, digits, model_files, fake):
    settings = _settings(tmp_path, digits, model_files, fake)
    run(settings)
    final = settings.out / "final.weights"
    with pytest.raises(OutputError, match="final.weights: the loop writes this file; copy it out of"):
        run(_settings(tmp_path, digits, model_files, fake, weights=final), resume=True)


@pytest.mark.parametrize("args, message", [
    (["--sparsities", "0.5,0.7", "--final-sparsity", "0.8"], "--final-sparsity 0.8 is not the last of --sparsities"),
    ([], "give --final-sparsity (with --steps) or --sparsities"),
    (["--sparsities", "0.5,x"], "is not a comma-separated list of numbers"),
    (["--final-sparsity", "1.5"], "final sparsity 1.5 outside [0, 1)"),
])
def test_cli_rejects_bad_schedules(tmp_path, digits, model_files, fake, args, message):
    cfg, weights = model_files
    result = _cli("--cfg", cfg, "--weights", weights, "--data", digits, "--iterations-per-step", 5,
                  "--out", tmp_path / "out", "--darknet", fake, *args)
    assert result.exit_code == 2 and message in result.output


# --------------------------------------------------------------------------
# Pieces.


def test_retrain_cfg_overrides_the_net_section_only():
    text = "# comment\n[net]\nbatch=4\nmax_batches = 900\nlearning_rate=0.1\n[connected]\nmax_batches=3\n"
    assert retrain_cfg(text, 20, 0.01) == ("# comment\n[net]\n# set by darknet-sparse loop\nprune=1\nbatch=4\n"
                                           "max_batches = 20\nlearning_rate=0.01\n[connected]\nmax_batches=3\n")
    assert "learning_rate=0.1" in retrain_cfg(text, 20)
    assert retrain_cfg("[network]\nprune=0\n", 3) == ("[network]\n# set by darknet-sparse loop\n"
                                                      "max_batches=3\nprune=1\n")
    assert retrain_cfg("[net]\nbatch=1\n", 3, net={"seed": 7}) == ("[net]\n# set by darknet-sparse loop\n"
                                                                  "max_batches=3\nprune=1\nseed=7\nbatch=1\n")
    with pytest.raises(CfgError, match=r"first section must be \[net\]"):
        retrain_cfg("[convolutional]\nfilters=3\n[net]\n", 3)


def test_set_options_sets_every_section_of_a_type():
    text = "[net]\nwidth=416\n[yolo]\nrandom = 1\nclasses=80\n[route]\nrandom=1\n[yolo]\nclasses=80\n"
    assert set_options(text, {"width": 256}, {"yolo": {"random": 0}}) == (
        "[net]\nwidth=256\n"
        "[yolo]\nrandom = 0\nclasses=80\n[route]\nrandom=1\n"
        "[yolo]\n# set by darknet-sparse loop\nrandom=0\nclasses=80\n")
    assert set_options(text, {}) == text


def test_private_data_points_backup_into_the_loop_folder():
    text = "classes=10\n backup = /elsewhere\ntrain=t.list\n"
    assert private_data(text, Path("/loop/backup")) == "classes=10\ntrain=t.list\nbackup=/loop/backup\n"
    assert private_data(text, Path("/b"), Path("/loop/pseudo/train.list")) == (
        "classes=10\ntrain=/loop/pseudo/train.list\nbackup=/b\n")


@pytest.mark.parametrize("kind, spec", [(Sensitivity, None), (Triangle, None), (Absolute, None),
                                        (Magnitude, {"layers": {"0": "skip"}})])
def test_prune_to_searches_the_level_that_reaches_the_target(tmp_path, model_files, kind, spec):
    wf = load(*model_files)
    result, level = prune_to(wf, tmp_path / "out.weights", 0.6, kind, spec)
    assert 0.6 <= result.sparsity <= 0.6 + TOLERANCE
    assert weight_sparsity(load(model_files[0], tmp_path / "out.weights")) == result.sparsity
    if spec:
        assert result.arrays[0].zeros_after == 0 and level > 0.6


def test_prune_to_refuses_a_target_out_of_reach(model_files):
    with pytest.raises(PolicyError, match="mode sensitivity reaches at most 0.1991 total sparsity"):
        prune_to(load(*model_files), None, 0.6, Sensitivity, {"layers": {"6": "skip"}})


def test_a_score_below_min_score_exits_1_with_the_reason(tmp_path, digits, model_files, fake):
    cfg, weights = model_files
    out = tmp_path / "out"
    result = _cli("--cfg", cfg, "--weights", weights, "--data", digits, "--sparsities", "0.3,0.5",
                  "--iterations-per-step", 5, "--out", out, "--darknet", fake, "--eval-cmd", "echo 0.5",
                  "--min-score", "0.6")
    assert result.exit_code == 1, result.output
    assert "stopped: step 1 (0.3000 sparse): score 0.5000 is below the floor 0.6" in result.stderr
    assert "Traceback" not in result.output and [line["step"] for line in _log(out)] == [1]


def test_without_darknet_the_loop_runs_the_one_the_runner_finds(tmp_path, digits, model_files, fake, monkeypatch):
    monkeypatch.setattr(runner, "darknet_binary", lambda fork="pjreddie": fake)
    settings = _settings(tmp_path, digits, model_files, fake, targets=(0.5,))
    run(dataclasses.replace(settings, darknet=None))
    assert (fake.parent / "args").read_text().startswith("classifier train ")
