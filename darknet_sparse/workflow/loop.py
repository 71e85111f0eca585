"""The prune/retrain loop: threshold, retrain with zeros frozen, evaluate, log.

Each step of :func:`run`

1. thresholds the previous step's weights (the user's, for step 1) until the
   total sparsity of the prunable weights reaches the step's target
   (:func:`darknet_sparse.pruning.search.prune_to`),
2. retrains them for ``iterations`` batches with the patched Darknet and
   ``[net] prune=1``, so weights that are 0 stay exactly 0
   (:func:`darknet_sparse.darknet.runner.train`),
3. counts the zeros retraining revived (0 with the patched binary; stock
   Darknet ignores ``prune=1`` and revives nearly all of them),
4. evaluates: ``darknet classifier valid`` top-1 for classifiers, a
   detector's agreement mAP@0.5 with the starting model on evaluation images
   (:func:`darknet_sparse.analysis.evaluate.evaluate_detector`, in-process), or the
   user's evaluation command, and
5. appends one JSON line to ``OUT/log.jsonl``.

Detectors without labels (``images``).  The starting model labels the
training images before step 1: its detections above ``label_conf`` become
Darknet label files in ``OUT/pseudo`` (:mod:`darknet_sparse.analysis.pseudolabels`;
never beside the user's images), and ``detector train`` retrains on them
(at a CPU-sized batch, :mod:`darknet_sparse.workflow.retrain`).  Evaluation
runs at the user's cfg.

Structured (``structured``).  Each step removes whole channels instead of
zeroing weights: the previous step's model is slimmed until the step's
target share of the *starting* model's FLOPs is gone, channels chosen by the
data rank and the layers after them refit by least squares on
``slim_images`` of the training images
(:func:`darknet_sparse.structured.reconstruct.slim_refit`); the smaller model (its cfg
``OUT/step-NN.cfg``, kept before retraining as ``OUT/step-NN.slimmed.weights``;
the retraining cfg rewritten from it) is retrained,
recalibrated relative to itself before retraining, and scored against the
starting model.  Its log lines carry the FLOPs shares in ``target_sparsity``
and ``sparsity``, ``mode`` ``structured`` and the step's ``cfg``; the last
accepted step is also ``final.weights`` with ``final.cfg``.  A teacher
(``teacher``, ``teacher_cfg`` the starting model's) distils into the
channel-pruned student; the heads keep their shapes.

Batch-norm recalibration (``recalibrate``; a detector with ``images`` by
default).  After each retraining, the rolling statistics are re-estimated on
that many training images (:mod:`darknet_sparse.analysis.recalibrate`).  A
detector's are measured relative to the starting model: retraining batches
pull Darknet's rolling averages toward the training images, which are rarely
what the model was trained for (two videos, here).  A classifier's are
measured on its own ``train=`` list as they are, which pays in short steps:
Darknet's rolling averages keep 0.99 of themselves per batch, so after 100
batches 37% of the previous step's statistics are still in them.

Distillation (``teacher``) and the private cfg and data file Darknet
retrains from: :mod:`darknet_sparse.workflow.retrain`.  The user's cfg, data
file and weights are only read.

Files in ``OUT``: ``step-NN.weights`` (every step's retrained weights),
``step-NN.log`` (Darknet's training output), ``log.jsonl``, ``final.weights``
(a copy of the last step that met the floor), ``train.cfg``, ``train.data``,
``backup/`` (Darknet's scratch, emptied after every step).

A log line holds ``step``, ``target_sparsity``, ``sparsity`` (measured on
the retrained weights), ``top1`` (classifier), ``map50`` and ``map`` (a
detector's agreement mAP@0.5 and @0.5:0.95) or ``score`` (evaluation
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
``_STEP`` (:func:`darknet_sparse.darknet.runner.evaluate`).  Its last line of
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
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import reports
from ..analysis import pseudolabels
from ..analysis import recalibrate as recalibrate_
from ..analysis.evaluate import evaluate_detector
from ..analysis.metrics import Remembered
from ..darknet import images as images_
from ..darknet import runner
from ..darknet.network import Network, choose_fork
from ..errors import InputError, OutputError, PolicyError
from ..format import darknet_text
from ..format.files import load_model
from ..format.layout import Model
from ..format.weightsfile import WeightsFile, atomic_path
from ..pruning.search import prune_to, weight_sparsity
from ..structured import reconstruct, slim
from .retrain import retrain, write_train_cfg, write_training_files
from .settings import BACKUP, FINAL, LOG, RECALIBRATION_BATCH, STRUCTURED, LoopSettings, check, step_name, with_defaults

METRICS = ("top1", "map50", "score")


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
    details: dict = field(default_factory=dict)  # more of the evaluation: a detector's ``map``

    def to_line(self) -> str:
        data = asdict(self)
        data[data.pop("metric")] = data.pop("value")
        data.update(data.pop("details"))
        return json.dumps(data) + "\n"

    @classmethod
    def from_line(cls, data: dict) -> StepRecord:
        metric = next(m for m in METRICS if m in data)
        own = [k for k in cls.__dataclass_fields__ if k not in ("metric", "value", "details")]
        details = {k: v for k, v in data.items() if k not in own and k != metric}
        return cls(metric=metric, value=data[metric], details=details, **{k: data[k] for k in own})


@dataclass
class LoopResult:
    """Every step of the loop, resumed ones first."""

    steps: list[StepRecord]
    resumed: int
    final: Path | None
    stopped: str | None = None
    labels: pseudolabels.Labelled | None = None


def run(settings: LoopSettings, resume: bool = False,
        on_progress: Callable[[int], None] | None = None,
        on_message: Callable[[str], None] | None = None) -> LoopResult:
    """Run (or, with ``resume``, continue) the loop; ``on_progress(n)`` is
    told the number of finished steps at the start and after each step,
    ``on_message`` what the loop prepares (pseudo-labels) in words.

    Raises :class:`InputError` for bad settings or inputs
    (:func:`~darknet_sparse.workflow.settings.check`), :class:`PolicyError`
    for a schedule or mode the model cannot follow, :class:`OutputError` for
    an unusable output folder or log, :class:`DarknetRunError` when Darknet
    or the evaluation command fails.
    """
    if settings.fork == "auto" and settings.cfg.is_file():  # one fork runs and trains it, resolved once
        settings = dataclasses.replace(settings, fork=choose_fork(settings.cfg, settings.weights)[0])
    if settings.darknet is None:
        settings = dataclasses.replace(settings, darknet=runner.darknet_binary(
            "alexeyab" if settings.fork == "alexeyab" else "pjreddie"))
    settings = with_defaults(settings)
    model = check(settings)
    out = settings.out.resolve()
    log = out / LOG
    done: list[StepRecord] = []
    if log.exists():
        if not resume:
            raise OutputError(f"{log}: the folder already holds a loop; pass resume (--resume) "
                              "to carry on or choose a new output folder")
        done = read_log(log, settings)
        _drop_partial_line(log)
    labelled = write_training_files(settings, model, out, on_message)
    (out / BACKUP).mkdir(exist_ok=True)
    if on_progress:
        on_progress(len(done))

    steps = list(done)
    failed = next((r for r in steps if not _meets_floor(r, settings)), None)
    score = _scorer(settings)
    while failed is None and len(steps) < len(settings.targets):
        source = Path(steps[-1].weights) if steps else settings.weights
        if settings.structured:
            source_cfg = slim.cfg_beside(source) if steps else settings.cfg
            record = _structured_step(settings, model, len(steps) + 1, source, source_cfg, score)
        else:
            record = _step(settings, model, len(steps) + 1, source, score)
        with open(log, "a", encoding="utf-8") as fp:
            fp.write(record.to_line())
            fp.flush()
            os.fsync(fp.fileno())
        steps.append(record)
        if on_progress:
            on_progress(len(steps))
        failed = None if _meets_floor(record, settings) else record

    accepted = steps[:steps.index(failed)] if failed else steps
    final = out / FINAL
    if accepted:
        _copy(Path(accepted[-1].weights), final)
        if settings.structured:
            _copy(slim.cfg_beside(Path(accepted[-1].weights)), slim.cfg_beside(final))
    else:
        final.unlink(missing_ok=True)
    stopped = _floor_message(failed, accepted, settings) if failed else None
    return LoopResult(steps, len(done), final if accepted else None, stopped, labelled)


def _scorer(settings: LoopSettings) -> Callable[..., tuple[float, dict]]:
    """The evaluation of a step's weights: its value and details."""
    if settings.eval_cmd or settings.task != "detector":
        def score(weights: Path, step: int, cfg: Path | None = None) -> tuple[float, dict]:
            return runner.evaluate(settings.darknet, settings.eval_cmd, cfg or settings.cfg, settings.data, weights,
                                   step), {}
        return score

    paths = images_.image_paths(settings.eval_images)
    reference = []

    def agreement(weights: Path, step: int, cfg: Path | None = None) -> tuple[float, dict]:
        if not reference:  # the starting model's detections, once for every step
            reference.append(Remembered(Network(settings.cfg, settings.weights, fork=settings.fork)))
        report = evaluate_detector(Network(cfg or settings.cfg, weights, fork=settings.fork), paths,
                                   reference=reference[0],
                                   reference_name=str(settings.weights))
        if report.map50 is None:
            raise InputError(f"the starting model {settings.weights} finds nothing above the reference "
                             f"confidence in {settings.eval_images}: there is no agreement to score")
        return report.map50, {"map": report.map}
    return agreement


def _step(settings: LoopSettings, model: Model, step: int, source: Path,
          score: Callable[..., tuple[float, dict]]) -> StepRecord:
    """Threshold ``source``, retrain, measure, evaluate: one log record."""
    started = time.monotonic()
    out = settings.out.resolve()
    target = settings.targets[step - 1]
    pruned = out / f"step-{step:02d}.pruned.weights"
    if settings.oneshot:
        level = _oneshot_prune(settings, model, source, pruned, target)
    else:
        _, level = prune_to(WeightsFile(source, model), pruned, target, settings.policy, settings.spec)
    trained = retrain(settings, pruned, step)
    if settings.recalibrate:
        _recalibrate(settings, trained)
    revived = reports.diff(WeightsFile(pruned, model), WeightsFile(trained, model)).revived
    pruned.unlink()
    sparsity = weight_sparsity(WeightsFile(trained, model))
    value, details = score(trained, step)
    return StepRecord(step, target, sparsity, settings.metric, value, revived, str(trained),
                      settings.policy.name, level, settings.iterations, round(time.monotonic() - started, 3),
                      details)


def _oneshot_prune(settings: LoopSettings, model: Model, source: Path, pruned: Path, target: float) -> float:
    """The step's pruning by the second-order solver (``oneshot="obs"``):
    the policy's level that reaches ``target`` (searched on the magnitudes,
    as :func:`prune_to` does) sets each layer's count, and the solver
    re-solves ``source`` (the current weights) to it on the calibration
    images of :func:`_recalibrate`; the step's recalibration comes after
    retraining, as without it."""
    from . import oneshot as oneshot_

    if settings.oneshot != oneshot_.ALLOCATE_OBS:
        raise PolicyError(f"unknown oneshot solver {settings.oneshot!r}: expected {oneshot_.ALLOCATE_OBS!r}")
    wf = WeightsFile(source, model)
    _, level = prune_to(wf, None, target, settings.policy, settings.spec)
    source_images = settings.images if settings.task == "detector" else \
        darknet_text.read_options(settings.data)["train"]
    paths = images_.sample(images_.image_paths(source_images), oneshot_.MAX_IMAGES)
    oneshot_.oneshot(wf, pruned, paths, settings.policy.at(level), spec=settings.spec, recalibrate=False)
    return level


def _recalibrate(settings: LoopSettings, weights: Path, cfg: Path | None = None,
                 reference: Path | None = None) -> None:
    """Recalibrate ``weights`` (of ``cfg``, default the user's) in place on
    ``settings.recalibrate`` of the training images: a detector's relative
    to ``reference`` (default the starting weights; of the same cfg), a
    classifier's on its own training list as they are."""
    cfg = cfg or settings.cfg
    if settings.task == "detector":
        source, reference = settings.images, reference or settings.weights
    else:
        source, reference = darknet_text.read_options(settings.data)["train"], None  # checked by check()
    paths = images_.sample(images_.image_paths(source), settings.recalibrate)
    recalibrate_.recalibrate_file(cfg, weights, paths, weights, batch=RECALIBRATION_BATCH, reference=reference,
                                  fork=settings.fork)


def _structured_step(settings: LoopSettings, model: Model, step: int, source: Path, source_cfg: Path,
                     score: Callable[..., tuple[float, dict]]) -> StepRecord:
    """Slim ``source`` until the step's share of the starting model's FLOPs
    is gone (data rank and refit, :func:`darknet_sparse.structured.reconstruct.slim_refit`),
    retrain, recalibrate relative to the slimmed model, evaluate."""
    started = time.monotonic()
    out = settings.out.resolve()
    target = settings.targets[step - 1]
    wf = WeightsFile(source, load_model(source_cfg, settings.fork, source))
    left = (1 - target) * model.flops  # what the step may keep
    staged = out / f"step-{step:02d}.slimmed.weights"
    if wf.model.flops > left * (1 + 1e-9):
        paths = images_.sample(images_.image_paths(settings.images), settings.slim_images)
        reconstruct.slim_refit(wf, staged, paths, target_flops=1 - left / wf.model.flops)
    else:  # a fine-tune step: nothing more to remove
        _copy(source, staged)
        _copy(source_cfg, slim.cfg_beside(staged))
    step_cfg = out / f"step-{step:02d}.cfg"
    os.replace(slim.cfg_beside(staged), step_cfg)
    step_model = load_model(step_cfg, settings.fork, staged)
    write_train_cfg(settings, model, step_cfg)
    trained = retrain(settings, staged, step)
    if settings.recalibrate:
        _recalibrate(settings, trained, step_cfg, staged)
    revived = reports.diff(WeightsFile(staged, step_model), WeightsFile(trained, step_model)).revived
    removed = 1 - step_model.flops / model.flops
    value, details = score(trained, step, step_cfg)
    return StepRecord(step, target, removed, settings.metric, value, revived, str(trained), STRUCTURED,
                      removed, settings.iterations, round(time.monotonic() - started, 3),
                      {**details, "cfg": str(step_cfg)})


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
        mode = settings.mode
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
