"""The prune/retrain loop: threshold, retrain with zeros frozen, evaluate, log.

Each step of :func:`run`

1. thresholds the previous step's weights (the user's, for step 1) until the
   total sparsity of the prunable weights reaches the step's target
   (:func:`darknet_sparse.search.prune_to`),
2. retrains them for ``iterations`` batches with the patched Darknet and
   ``[net] prune=1``, so weights that are 0 stay exactly 0
   (:func:`darknet_sparse.runner.train`),
3. counts the zeros retraining revived (0 with the patched binary; stock
   Darknet ignores ``prune=1`` and revives nearly all of them),
4. evaluates: ``darknet classifier valid`` top-1 for classifiers, else the
   user's evaluation command, and
5. appends one JSON line to ``OUT/log.jsonl``.

The user's cfg, data file and weights are only read.  Darknet trains from a
private copy of the cfg (``OUT/train.cfg``: ``max_batches`` and ``prune=1``
set in ``[net]``, and ``learning_rate`` when given) and of the data file
(``OUT/train.data``: ``backup=`` pointing at ``OUT/backup``).  It runs with
``-clear``: otherwise ``train`` would carry on from the ``seen`` stored in the
weights and stop at once, since that is past the new ``max_batches``.  The
learning-rate schedule of the cfg (burn-in, steps, poly) starts afresh at
every step.  Darknet runs in the caller's working folder, so relative paths
in the data file mean what they mean to the user.

Files in ``OUT``: ``step-NN.weights`` (every step's retrained weights),
``step-NN.log`` (Darknet's training output), ``log.jsonl``, ``final.weights``
(a copy of the last step that met the floor), ``train.cfg``, ``train.data``,
``backup/`` (Darknet's scratch, emptied after every step).

A log line holds ``step``, ``target_sparsity``, ``sparsity`` (measured on
the retrained weights), ``top1`` (classifier) or ``score`` (evaluation
command), ``zeros_revived``, ``weights`` (path), ``mode`` (the policy's
name), ``level`` (the value its knob was given: a sparsity, an ``end``, or a
threshold),
``iterations`` and ``seconds``.  A line is written only once its step's
weights are in place, so after an interruption ``resume`` starts at the step
after the last complete line.  An existing log without ``resume`` is an
error rather than being overwritten.

The evaluation command runs through ``sh``; ``{weights}``, ``{cfg}``,
``{data}`` and ``{step}`` in it are replaced by the (shell-quoted) step
weights, the user's cfg and data file and the step number, which are also in
the environment as ``DARKNET_SPARSE_WEIGHTS``, ``_CFG``, ``_DATA`` and
``_STEP`` (:func:`darknet_sparse.runner.evaluate`).  Its last line of
standard output must be the score, a number where higher is better (top-1,
mAP).

A step whose score falls below ``min_score`` stops the loop: its weights and
log line are kept, but ``final.weights`` stays the last step that met the
floor, and :attr:`LoopResult.stopped` says why.  That is an outcome, not an
error; the command line turns it into exit status 1.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from . import load_model, reports, runner, schedule
from .errors import CfgError, OutputError, PolicyError, WeightsFormatError
from .layout import Model
from .policies import Magnitude, Policy, check_kind
from .search import max_sparsity, prune_to, weight_sparsity
from .weightsfile import WeightsFile, atomic_path

TRAIN_CFG = "train.cfg"
TRAIN_DATA = "train.data"


@dataclass(frozen=True)
class LoopSettings:
    """Everything one loop needs; see :func:`run`."""

    cfg: Path
    weights: Path
    data: Path
    out: Path
    targets: tuple[float, ...]
    iterations: int
    policy: type[Policy] = Magnitude
    spec: dict | None = None
    task: str = "classifier"
    eval_cmd: str | None = None
    min_score: float | None = None
    darknet: Path | None = None  # None: runner.darknet_binary()
    learning_rate: float | None = None
    fork: str = "auto"

    @property
    def metric(self) -> str:
        """The log key of the evaluation: ``top1`` or ``score``."""
        return "score" if self.eval_cmd else "top1"


@dataclass
class StepRecord:
    """One line of ``log.jsonl``."""

    step: int
    target_sparsity: float
    sparsity: float
    metric: str
    value: float
    zeros_revived: int
    weights: str
    mode: str
    level: float
    iterations: int
    seconds: float

    def to_line(self) -> str:
        data = asdict(self)
        data[data.pop("metric")] = data.pop("value")
        return json.dumps(data) + "\n"

    @classmethod
    def from_line(cls, data: dict) -> StepRecord:
        metric = "top1" if "top1" in data else "score"
        return cls(metric=metric, value=data[metric],
                   **{k: data[k] for k in cls.__dataclass_fields__ if k not in ("metric", "value")})


@dataclass
class LoopResult:
    """Every step of the loop, resumed ones first."""

    steps: list[StepRecord]
    resumed: int
    final: Path | None
    stopped: str | None = None


def run(settings: LoopSettings, resume: bool = False,
        on_progress: Callable[[int], None] | None = None) -> LoopResult:
    """Run (or, with ``resume``, continue) the loop; ``on_progress(n)`` is
    told the number of finished steps at the start and after each step.

    Raises :class:`PolicyError` for bad settings, :class:`OutputError` for an
    unusable output folder or log, :class:`DarknetRunError` when Darknet or
    the evaluation command fails.
    """
    if settings.darknet is None:
        settings = dataclasses.replace(settings, darknet=runner.darknet_binary())
    model = _check(settings)
    out = settings.out.resolve()
    log = out / "log.jsonl"
    done: list[StepRecord] = []
    if log.exists():
        if not resume:
            raise OutputError(f"{log}: the folder already holds a loop; pass resume (--resume) "
                              "to carry on or choose a new output folder")
        done = read_log(log, settings)
        _drop_partial_line(log)
    (out / TRAIN_CFG).write_text(runner.retrain_cfg(settings.cfg.read_text(), settings.iterations,
                                                    settings.learning_rate))
    (out / TRAIN_DATA).write_text(runner.private_data(settings.data.read_text(), out / "backup"))
    (out / "backup").mkdir(exist_ok=True)
    if on_progress:
        on_progress(len(done))

    steps = list(done)
    failed = next((r for r in steps if not _meets_floor(r, settings)), None)
    while failed is None and len(steps) < len(settings.targets):
        source = Path(steps[-1].weights) if steps else settings.weights
        record = _step(settings, model, len(steps) + 1, source)
        with open(log, "a", encoding="utf-8") as fp:
            fp.write(record.to_line())
            fp.flush()
            os.fsync(fp.fileno())
        steps.append(record)
        if on_progress:
            on_progress(len(steps))
        failed = None if _meets_floor(record, settings) else record

    accepted = steps[:steps.index(failed)] if failed else steps
    final = out / "final.weights"
    if accepted:
        _copy(Path(accepted[-1].weights), final)
    else:
        final.unlink(missing_ok=True)
    stopped = _floor_message(failed, accepted, settings) if failed else None
    return LoopResult(steps, len(done), final if accepted else None, stopped)


def _check(settings: LoopSettings) -> Model:
    """Validate the settings before anything runs; the cfg's model."""
    schedule.explicit(settings.targets)
    kind = check_kind(settings.policy)
    if isinstance(settings.iterations, bool) or not isinstance(settings.iterations, int) \
            or settings.iterations < 1:
        raise PolicyError(f"iterations per step {settings.iterations!r} must be a whole number >= 1")
    if settings.task not in runner.TASKS:
        raise PolicyError(f"unknown task {settings.task!r}: expected one of {', '.join(runner.TASKS)}")
    if settings.task != "classifier" and not settings.eval_cmd:
        raise PolicyError(f"task {settings.task} needs an evaluation command (--eval-cmd)")
    if settings.learning_rate is not None and not (math.isfinite(settings.learning_rate)
                                                   and settings.learning_rate > 0):
        raise PolicyError(f"learning rate {settings.learning_rate!r} must be a number > 0")
    _check_paths(settings)
    model = load_model(settings.cfg, settings.fork, settings.weights)
    if not settings.weights.is_file():
        raise WeightsFormatError(f"{settings.weights}: no such weights file")
    wf = WeightsFile(settings.weights, model)  # checks the size against the cfg
    if settings.spec is not None or not kind.exact:
        reach = max_sparsity(wf, kind, settings.spec)
        if reach < settings.targets[-1]:
            raise PolicyError(f"mode {kind.name} reaches at most {reach:.4f} total sparsity on "
                              f"{settings.weights} (with its spec, if any), not {settings.targets[-1]:g}")
    return model


def _check_paths(settings: LoopSettings) -> None:
    """Inputs exist and are not among the files the loop writes; Darknet
    can use the output folder, which is created."""
    for what, path in (("data file", settings.data), ("cfg", settings.cfg)):
        if not path.is_file():
            raise CfgError(f"{path}: no such {what}")
    runner.check_binary(settings.darknet)
    out = settings.out.resolve()
    runner.check_folder(out)
    for path in (settings.cfg, settings.data, settings.weights):
        path = path.resolve()
        if path.parent == out / "backup" or (path.parent == out and (
                path.name in (TRAIN_CFG, TRAIN_DATA, "final.weights", "log.jsonl")
                or path.name.startswith("step-"))):
            raise OutputError(f"{path}: the loop writes this file; copy it out of {out} first")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output folder: {exc.strerror}") from None


def _step(settings: LoopSettings, model: Model, step: int, source: Path) -> StepRecord:
    """Threshold ``source``, retrain, measure, evaluate: one log record."""
    started = time.monotonic()
    out = settings.out.resolve()
    target = settings.targets[step - 1]
    pruned = out / f"step-{step:02d}.pruned.weights"
    _, level = prune_to(WeightsFile(source, model), pruned, target, settings.policy, settings.spec)
    trained = _retrain(settings, pruned, step)
    revived = reports.diff(WeightsFile(pruned, model), WeightsFile(trained, model)).revived
    pruned.unlink()
    sparsity = weight_sparsity(WeightsFile(trained, model))
    value = runner.evaluate(settings.darknet, settings.eval_cmd, settings.cfg, settings.data, trained, step)
    return StepRecord(step, target, sparsity, settings.metric, value, revived, str(trained),
                      settings.policy.name, level, settings.iterations, round(time.monotonic() - started, 3))


def _retrain(settings: LoopSettings, weights: Path, step: int) -> Path:
    """Retrain ``weights`` from the private cfg and data file; the result,
    ``OUT/step-NN.weights`` (Darknet's output in ``OUT/step-NN.log``)."""
    out = settings.out.resolve()
    trained = out / step_name(step)
    runner.train(settings.darknet, settings.task, out / TRAIN_DATA, out / TRAIN_CFG, weights, out / "backup",
                 out / f"step-{step:02d}.log", trained)
    return trained


def step_name(step: int) -> str:
    """``step-NN.weights``: where step ``step`` keeps its retrained weights."""
    return f"step-{step:02d}.weights"


def read_log(log: Path, settings: LoopSettings) -> list[StepRecord]:
    """The complete records of ``log``, checked against ``settings``.

    A last line without its newline is an interrupted write and is ignored.
    """
    records = []
    text = log.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if not line.endswith("\n"):
            break
        try:
            record = StepRecord.from_line(json.loads(line))
        except (ValueError, KeyError, TypeError):
            raise OutputError(f"{log}:{number}: not a loop record; fix or remove the line") from None
        step = len(records) + 1
        if record.step != step:
            raise OutputError(f"{log}:{number}: step {record.step}, expected {step}")
        if step > len(settings.targets):
            raise PolicyError(f"{log}: holds {step} or more steps, this schedule only {len(settings.targets)}")
        mode = settings.policy.name
        if abs(record.target_sparsity - settings.targets[step - 1]) > 1e-9 or record.mode != mode \
                or record.metric != settings.metric:
            raise PolicyError(f"{log}: step {step} was {record.mode} to {record.target_sparsity:g} "
                              f"({record.metric}), now {mode} to {settings.targets[step - 1]:g} "
                              f"({settings.metric}); resume with the same schedule, mode and evaluation")
        record.weights = str(log.parent / step_name(step))  # the folder may have moved
        if not Path(record.weights).is_file():
            raise OutputError(f"{log}: step {step}'s weights {record.weights} are missing")
        records.append(record)
    return records


def _drop_partial_line(log: Path) -> None:
    """Cut an interrupted last line, so the next record starts a line."""
    data = log.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        os.truncate(log, complete)


def _meets_floor(record: StepRecord, settings: LoopSettings) -> bool:
    return settings.min_score is None or record.value >= settings.min_score


def _floor_message(failed: StepRecord, accepted: list[StepRecord], settings: LoopSettings) -> str:
    final = (f"final.weights is step {accepted[-1].step}" if accepted
             else "no step met it, so there is no final.weights")
    return (f"step {failed.step} ({failed.sparsity:.4f} sparse): {failed.metric} {failed.value:.4f} is below "
            f"the floor {settings.min_score:g}; stopped ({final})")


def _copy(source: Path, target: Path) -> None:
    """Copy via a temporary file, so ``target`` is never half written."""
    with atomic_path(target) as partial:
        shutil.copyfile(source, partial)
