"""The prune/retrain loop: threshold, retrain with zeros frozen, evaluate, log.

Each step of :func:`run`

1. thresholds the previous step's weights (the user's, for step 1) until the
   total sparsity of the prunable weights reaches the step's target
   (:func:`prune_to`),
2. retrains them for ``iterations`` batches with the patched Darknet and
   ``[net] prune=1``, so weights that are 0 stay exactly 0,
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
command), ``zeros_revived``, ``weights`` (path), ``mode``, ``level`` (the
value the mode was given: a sparsity, an ``end``, or a threshold),
``iterations`` and ``seconds``.  A line is written only once its step's
weights are in place, so after an interruption ``resume`` starts at the step
after the last complete line.  An existing log without ``resume`` is an
error rather than being overwritten.

The evaluation command runs through ``sh``; ``{weights}``, ``{cfg}``,
``{data}`` and ``{step}`` in it are replaced by the (shell-quoted) step
weights, the user's cfg and data file and the step number, which are also in
the environment as ``DARKNET_SPARSE_WEIGHTS``, ``_CFG``, ``_DATA`` and
``_STEP``.  Its last line of standard output must be the score, a number
where higher is better (top-1, mAP).

A step whose score falls below ``min_score`` stops the loop: its weights and
log line are kept, but ``final.weights`` stays the last step that met the
floor, and :attr:`LoopResult.stopped` says why.  That is an outcome, not an
error; the command line turns it into exit status 2.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import darknet_text, load_model, prune, reports, schedule
from .errors import CfgError, DarknetRunError, OutputError, PolicyError, WeightsFormatError
from .layout import PRUNABLE_ROLES, Model
from .policies import MODES
from .stats import nonzero
from .weightsfile import WeightsFile, atomic_path

#: The patched build ``make darknet`` makes (``scripts/build_darknet.sh``).
DEFAULT_DARKNET = Path(__file__).resolve().parent.parent / "build" / "darknet" / "darknet"
#: Darknet subcommand and the name ``train`` gives its last weights (``base``
#: is the cfg's file name up to its first dot: ``basecfg`` in utils.c).
TASKS = {"classifier": "{base}.weights", "detector": "{base}_final.weights"}
#: The mode option each mode's level is passed as.
KNOBS = {"absolute": "threshold", "magnitude": "sparsity", "sensitivity": "threshold",
         "triangle": "end", "global": "sparsity"}
#: The search stops once the total sparsity is this close above the target.
TOLERANCE = 1e-4
SEARCH_STEPS = 60
#: A threshold above any float32 |w|: thresholds are searched up to it.
UNBOUNDED = float(np.finfo(np.float32).max)
TRAIN_CFG = "train.cfg"
# Darknet builds backup file names in char[256] and strips all whitespace
# from .data lines.
_MAX_OUT_CHARS = 200
_TAIL_LINES = 15


@dataclass(frozen=True)
class LoopSettings:
    """Everything one loop needs; see :func:`run`."""

    cfg: Path
    weights: Path
    data: Path
    out: Path
    targets: tuple[float, ...]
    iterations: int
    mode: str = "magnitude"
    spec: dict | None = None
    task: str = "classifier"
    eval_cmd: str | None = None
    min_score: float | None = None
    darknet: Path = DEFAULT_DARKNET
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
    (out / TRAIN_CFG).write_text(retrain_cfg(settings.cfg.read_text(), settings.iterations,
                                             settings.learning_rate))
    (out / "train.data").write_text(private_data(settings.data.read_text(), out / "backup"))
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
    if settings.mode not in MODES:
        raise PolicyError(f"unknown mode {settings.mode!r}: expected one of {', '.join(MODES)}")
    if isinstance(settings.iterations, bool) or not isinstance(settings.iterations, int) \
            or settings.iterations < 1:
        raise PolicyError(f"iterations per step {settings.iterations!r} must be a whole number >= 1")
    if settings.task not in TASKS:
        raise PolicyError(f"unknown task {settings.task!r}: expected one of {', '.join(TASKS)}")
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
    if settings.spec is not None or settings.mode not in ("magnitude", "global"):
        reach = max_sparsity(wf, settings.mode, settings.spec)
        if reach < settings.targets[-1]:
            raise PolicyError(f"mode {settings.mode} reaches at most {reach:.4f} total sparsity on "
                              f"{settings.weights} (with its spec, if any), not {settings.targets[-1]:g}")
    return model


def _check_paths(settings: LoopSettings) -> None:
    """Inputs exist and are not among the files the loop writes; Darknet
    can use the output folder, which is created."""
    for what, path in (("data file", settings.data), ("cfg", settings.cfg)):
        if not path.is_file():
            raise CfgError(f"{path}: no such {what}")
    if not (settings.darknet.is_file() and os.access(settings.darknet, os.X_OK)):
        raise DarknetRunError(f"{settings.darknet}: no Darknet binary there; build the patched one "
                              "with `make darknet` or pass its path (--darknet)")
    out = settings.out.resolve()
    if re.search(r"\s", str(out)) or len(str(out)) > _MAX_OUT_CHARS:
        raise OutputError(f"{out}: Darknet needs an output folder without whitespace and at most "
                          f"{_MAX_OUT_CHARS} characters long")
    for path in (settings.cfg, settings.data, settings.weights):
        path = path.resolve()
        if path.parent == out / "backup" or (path.parent == out and (
                path.name in (TRAIN_CFG, "train.data", "final.weights", "log.jsonl")
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
    _, level = prune_to(WeightsFile(source, model), pruned, target, settings.mode, settings.spec)
    trained = retrain(settings, pruned, step)
    revived = reports.diff(WeightsFile(pruned, model), WeightsFile(trained, model)).revived
    pruned.unlink()
    sparsity = weight_sparsity(WeightsFile(trained, model))
    value = evaluate(settings, trained, step)
    return StepRecord(step, target, sparsity, settings.metric, value, revived, str(trained), settings.mode,
                      level, settings.iterations, round(time.monotonic() - started, 3))


def prune_to(wf: WeightsFile, output: Path | None, target: float, mode: str = "magnitude",
             spec: dict | None = None) -> tuple[prune.PruneResult, float]:
    """Threshold ``wf`` so the total sparsity of its prunable weights is at
    least ``target``; the result and the level the mode was given.

    ``magnitude`` and ``global`` without a spec take ``target`` as their own
    level.  Otherwise (``sensitivity``'s std multiple, ``triangle``'s end with
    start 0, ``absolute``'s threshold, or a spec that fixes some layers) the
    level is bisected until the total lands within :data:`TOLERANCE` above
    the target.  A spec's own levels (``skip``, fixed sparsities) hold at
    every step.
    """
    measure = _measure(wf, mode, spec)
    if spec is None and mode in ("magnitude", "global"):
        level = target
    else:
        level = _search(measure, target, _max_level(wf, mode), mode)
    return measure(level, output), level


def max_sparsity(wf: WeightsFile, mode: str = "magnitude", spec: dict | None = None) -> float:
    """The highest total sparsity :func:`prune_to` can reach on ``wf``
    (below 1 for ``triangle`` or a spec that skips layers)."""
    return _measure(wf, mode, spec)(_max_level(wf, mode)).sparsity


def _measure(wf: WeightsFile, mode: str, spec: dict | None) -> Callable[..., prune.PruneResult]:
    """Threshold ``wf`` at a level of ``mode`` (a dry run without ``into``)."""
    if mode not in KNOBS:
        raise PolicyError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")

    def apply(level: float, into: Path | None = None) -> prune.PruneResult:
        return prune.threshold(wf, into, mode, spec=spec, **{KNOBS[mode]: level})
    return apply


def _max_level(wf: WeightsFile, mode: str) -> float:
    """The highest level worth trying.  Thresholds: one above every |w|.
    Sparsities: ``round(s * n)`` must stay below every array's ``n``, or the
    k-th smallest |w| of a small array does not exist."""
    if KNOBS[mode] == "threshold":
        return UNBOUNDED
    smallest = min(s.param.count for s in wf.slots if s.param.role in PRUNABLE_ROLES and s.param.count)
    return (smallest - 0.5) / smallest - 1e-9


def _search(measure: Callable[[float], prune.PruneResult], target: float, high: float, mode: str) -> float:
    """The smallest level in ``[0, high]`` (to within the bisection) whose
    total sparsity reaches ``target``."""
    if measure(0.0).sparsity >= target:
        return 0.0
    reached = measure(high).sparsity
    if reached < target:
        raise PolicyError(f"mode {mode} reaches at most {reached:.4f} total sparsity here (with its spec, if "
                          f"any), not the target {target:.4f}")
    low = 0.0
    for _ in range(SEARCH_STEPS):
        if reached - target <= TOLERANCE:
            break
        middle = (low + high) / 2 if high < UNBOUNDED else max(1.0, low * 2)
        sparsity = measure(middle).sparsity
        if sparsity >= target:
            high, reached = middle, sparsity
        else:
            low = middle
    return high


def weight_sparsity(wf: WeightsFile) -> float:
    """Share of exact zeros among the prunable weights of ``wf``."""
    slots = [s for s in wf.slots if s.param.role in PRUNABLE_ROLES]
    count = sum(s.param.count for s in slots)
    return 1 - sum(nonzero(wf, s) for s in slots) / count if count else 0.0


def retrain_cfg(text: str, iterations: int, learning_rate: float | None = None) -> str:
    """The cfg text with ``max_batches``, ``prune=1`` (and ``learning_rate``)
    set at the top of its ``[net]`` section, earlier values of them removed."""
    lines = text.splitlines()
    keys = {"max_batches", "prune"} | ({"learning_rate"} if learning_rate is not None else set())
    start = next((i for i, line in enumerate(lines) if _key(line).startswith("[")), None)
    if start is None or _key(lines[start]) not in ("[net]", "[network]"):
        raise PolicyError("the cfg's first section must be [net] or [network]")
    end = next((i for i in range(start + 1, len(lines)) if _key(lines[i]).startswith("[")), len(lines))
    net = [line for line in lines[start + 1:end] if _key(line).split("=", 1)[0] not in keys]
    added = [f"max_batches={iterations}", "prune=1"]
    added += [f"learning_rate={learning_rate:g}"] if learning_rate is not None else []
    return "\n".join(lines[:start + 1] + ["# set by darknet-sparse loop"] + added + net + lines[end:]) + "\n"


def private_data(text: str, backup: Path) -> str:
    """The data file's text with ``backup=`` pointing at ``backup``."""
    kept = [line for line in text.splitlines() if _key(line).split("=", 1)[0] != "backup"]
    return "\n".join(kept + [f"backup={backup}"]) + "\n"


def _key(line: str) -> str:
    """A cfg or data line as Darknet reads it: every space and tab removed."""
    return darknet_text.strip(line)


def retrain(settings: LoopSettings, weights: Path, step: int) -> Path:
    """Run ``darknet <task> train`` from ``weights``; the trained file,
    moved to ``OUT/step-NN.weights``."""
    out = settings.out.resolve()
    backup = out / "backup"
    for stale in backup.iterdir():
        stale.unlink()
    log = out / f"step-{step:02d}.log"
    command = [str(settings.darknet), settings.task, "train", str(out / "train.data"), str(out / TRAIN_CFG),
               str(weights), "-clear"]
    with open(log, "wb") as fp:
        try:
            status = subprocess.run(command, stdout=fp, stderr=subprocess.STDOUT, check=False).returncode
        except OSError as exc:
            raise DarknetRunError(f"cannot run {settings.darknet}: {exc.strerror}") from None
    produced = backup / TASKS[settings.task].format(base=TRAIN_CFG.split(".")[0])
    if status != 0 or not produced.is_file():
        reason = _status(status) if status != 0 else f"it wrote no {produced.name}"
        raise DarknetRunError(f"{' '.join(command)}: {reason}; last output ({log}):\n{_tail(log)}")
    trained = out / step_name(step)
    os.replace(produced, trained)
    for snapshot in backup.iterdir():
        snapshot.unlink()
    return trained


def step_name(step: int) -> str:
    """``step-NN.weights``: where step ``step`` keeps its retrained weights."""
    return f"step-{step:02d}.weights"


def evaluate(settings: LoopSettings, weights: Path, step: int) -> float:
    """The step's score: the evaluation command's, else Darknet's top-1."""
    if not settings.eval_cmd:
        from .examples import classifier_top1
        return classifier_top1(settings.darknet, settings.data, settings.cfg, weights)
    values = {"weights": weights, "cfg": settings.cfg, "data": settings.data, "step": step}
    command = settings.eval_cmd
    for name, value in values.items():
        command = command.replace("{" + name + "}", shlex.quote(str(value)))
    env = dict(os.environ, **{f"DARKNET_SPARSE_{k.upper()}": str(v) for k, v in values.items()})
    run_ = subprocess.run(command, shell=True, capture_output=True, text=True, errors="replace", env=env,
                          check=False)
    output = (run_.stdout + run_.stderr).splitlines()
    if run_.returncode != 0:
        raise DarknetRunError(f"evaluation command {command!r}: {_status(run_.returncode)}; last output:\n"
                              + "\n".join(output[-_TAIL_LINES:]))
    lines = [line.strip() for line in run_.stdout.splitlines() if line.strip()]
    try:
        score = float(lines[-1])
    except (IndexError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        raise DarknetRunError(f"evaluation command {command!r}: its last output line is not a number: "
                              f"{lines[-1] if lines else '(no output)'!r}")
    return score


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
        if abs(record.target_sparsity - settings.targets[step - 1]) > 1e-9 or record.mode != settings.mode \
                or record.metric != settings.metric:
            raise PolicyError(f"{log}: step {step} was {record.mode} to {record.target_sparsity:g} "
                              f"({record.metric}), now {settings.mode} to {settings.targets[step - 1]:g} "
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


def _status(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-_TAIL_LINES:])
