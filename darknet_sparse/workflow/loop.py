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
never beside the user's images), and ``detector train`` retrains on them.
The retraining cfg of a detector also sets ``random=0`` in its ``[yolo]`` and
``[region]`` sections (``random=1`` resizes the input to up to 608 every 10
batches), the cfg's own input size unless ``train_size`` says otherwise (the
weights do not depend on it, but on yolov3-tiny at 50% sparsity retraining
at 256 lost agreement at 416 where retraining at 416 for the same CPU time
gained it; README "The workflow") and a CPU-sized batch
(:data:`DETECTOR_BATCH`).  Evaluation runs at the user's cfg.

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

Distillation (``teacher``).  The retraining cfg gets ``[net]
distill_cfg=OUT/teacher.cfg`` (the teacher's cfg, or the user's, at the
retraining input and batch), ``distill_weights``, ``distill_temperature`` and
``distill_alpha`` (patches/0020-distill.patch): the teacher's soft targets
weigh ``alpha``, the labels ``1 - alpha``.  With ``alpha`` 1 a detector needs
no labels at all, so no pseudo-labels are made.  By default
(:data:`STARTING`) a classifier is taught by its own starting weights at
:data:`DISTILL_DEFAULTS`' temperature and alpha; ``teacher=None`` retrains
on the labels alone.

The user's cfg, data file and weights are only read.  Darknet trains from a
private copy of the cfg (``OUT/train.cfg``: ``max_batches`` and ``prune=1``
set in ``[net]``, and ``learning_rate``: the given one, else for a
classifier the cfg's times :data:`RETRAIN_RATE_SCALE`) and of the data file
(``OUT/train.data``: ``backup=`` pointing at ``OUT/backup``; for
pseudo-labels, ``train=`` naming ``OUT/pseudo/train.list``).  It runs with
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
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..darknet import images as images_
from .. import reports
from ..format import darknet_text
from ..format.files import load_model
from ..analysis import pseudolabels
from ..darknet import runner
from ..pruning import schedule
from ..structured import slim
from ..errors import CfgError, OutputError, PolicyError, WeightsFormatError
from ..format.layout import Model
from ..pruning.policies import Global, Policy, check_kind
from ..pruning.search import max_sparsity, prune_to, weight_sparsity
from ..format.weightsfile import WeightsFile, atomic_path

STRUCTURED = "structured"
TRAIN_CFG = "train.cfg"
TRAIN_DATA = "train.data"
TEACHER_CFG = "teacher.cfg"
PSEUDO = "pseudo"
#: A detector's retraining batch and subdivisions when the loop sizes them:
#: small enough for a CPU step of a few minutes, big enough for batch norm.
DETECTOR_BATCH = 8
METRICS = ("top1", "map50", "score")
#: Without ``learning_rate``, a classifier retrains at the cfg's rate times
#: this: fine-tuning, not training from scratch (digits: 0.1 -> 0.02); a
#: detector at the cfg's.  Chosen with
#: the other defaults (global mode, the CLI's steps and final fine-tune step)
#: on digits models of other splits: benchmarks/quality.md, (e).
RETRAIN_RATE_SCALE = 0.2
#: The command line's schedule: this many AGP steps, then this many more
#: retraining steps at the final target (its threshold changes nothing).
#: 8 rather than 5 AGP steps: on digits models of split seeds 1 to 5
#: (retrained 2026-12-02; 2 loops each at 0.92 and 200 iterations a step)
#: 5 steps lost 0.25 points of top-1 on average and 1.39 at worst, 8 steps
#: 0.14 and 0.56.  On the worst seed (3), 10 steps did as well as 8; 12
#: steps, and 8 with a second fine-tune step, did worse.  A step costs its
#: iterations: 8 + 1 steps of 200 on digits take about 70 s on a CPU core.
DEFAULT_STEPS, DEFAULT_FINE_TUNE_STEPS = 8, 1
#: ``LoopSettings.teacher``'s default: a classifier is taught by its own
#: starting (dense) weights, a detector by no one (it has its pseudo-labels).
STARTING = "starting"
#: A detector's default images for batch-norm recalibration after each step
#: (``recalibrate``), in passes of RECALIBRATION_BATCH.  Its retraining
#: batches pull Darknet's rolling averages toward the training images'
#: statistics; recalibrating relative to the starting model keeps only the
#: shift the pruned weights make (:mod:`darknet_sparse.analysis.recalibrate`).  A
#: classifier is not recalibrated by default: on the digits models (steps of
#: 200 batches) it cost 0.2 points of top-1 on average.
DETECTOR_RECALIBRATION, RECALIBRATION_BATCH = 64, 8
#: Distillation's defaults per task: (temperature, alpha).  A classifier
#: mixes the teacher's soft targets with the labels; a detector's teacher
#: alone (alpha 1) needs no labels at all.
DISTILL_DEFAULTS = {"classifier": (4.0, 0.7), "detector": (1.0, 1.0)}


@dataclass(frozen=True)
class LoopSettings:
    """Everything one loop needs; see :func:`run`."""

    cfg: Path
    weights: Path
    data: Path | None  # None: a detector with ``images``
    out: Path
    targets: tuple[float, ...]
    iterations: int
    policy: type[Policy] = Global  # one threshold for all layers: the big ones take most of it
    spec: dict | None = None
    task: str = "classifier"
    eval_cmd: str | None = None
    min_score: float | None = None
    darknet: Path | None = None  # None: runner.darknet_binary()
    learning_rate: float | None = None  # None: a classifier's cfg's times RETRAIN_RATE_SCALE
    fork: str = "auto"
    images: Path | None = None  # detector: unlabelled training images (a folder or a list)
    eval_images: Path | None = None  # detector: scored by agreement with ``weights``
    label_conf: float = pseudolabels.LABEL_CONF
    train_size: int | None = None  # detector: the retraining input; None: the cfg's
    batch: int | None = None  # None: the cfg's (classifier), DETECTOR_BATCH (detector)
    subdivisions: int | None = None
    teacher: Path | str | None = STARTING  # distillation: the teacher's weights; None: labels only
    teacher_cfg: Path | None = None  # None: ``cfg``
    temperature: float | None = None  # None: DISTILL_DEFAULTS of the task
    alpha: float | None = None
    slim: float | None = None  # ``[net] slim=λ`` in the retraining cfg (patches/0021); None: not set
    #: After each retraining, batch-norm statistics re-estimated on this many
    #: training images (a detector's ``images``, relative to ``weights``; a
    #: classifier's ``train=`` list, as they are); 0: not; None: the task's
    #: default (:func:`recalibration`).
    recalibrate: int | None = None
    #: Structured: each step removes whole channels (slim, data rank and
    #: refit on ``slim_images`` of ``images``) until ``targets`` (then the
    #: fractions of the starting model's FLOPs removed) instead of zeroing
    #: weights, and retrains the smaller model.
    structured: bool = False
    slim_images: int = 64

    @property
    def metric(self) -> str:
        """The log key of the evaluation: ``top1``, ``map50`` or ``score``."""
        if self.eval_cmd:
            return "score"
        return "map50" if self.task == "detector" else "top1"

    @property
    def mode(self) -> str:
        """The log's ``mode``: the policy's name, or ``structured``."""
        return STRUCTURED if self.structured else self.policy.name

    @property
    def needs_labels(self) -> bool:
        """Whether retraining reads labels (not with a teacher at alpha 1)."""
        settings = with_defaults(self)
        return settings.teacher is None or settings.alpha < 1


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

    Raises :class:`PolicyError` for bad settings, :class:`OutputError` for an
    unusable output folder or log, :class:`DarknetRunError` when Darknet or
    the evaluation command fails.
    """
    if settings.darknet is None:
        settings = dataclasses.replace(settings, darknet=runner.darknet_binary())
    settings = with_defaults(settings)
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
    labelled = _write_training_files(settings, model, out, on_message)
    (out / "backup").mkdir(exist_ok=True)
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
    final = out / "final.weights"
    if accepted:
        _copy(Path(accepted[-1].weights), final)
        if settings.structured:
            _copy(slim.cfg_beside(Path(accepted[-1].weights)), slim.cfg_beside(final))
    else:
        final.unlink(missing_ok=True)
    stopped = _floor_message(failed, accepted, settings) if failed else None
    return LoopResult(steps, len(done), final if accepted else None, stopped, labelled)


def with_defaults(settings: LoopSettings) -> LoopSettings:
    """``settings`` with the task's defaults in place of :data:`STARTING`
    and of no temperature, alpha or recalibration."""
    teacher = settings.teacher
    if isinstance(teacher, str):
        if teacher != STARTING:
            raise PolicyError(f"teacher {teacher!r}: give a weights path, {STARTING!r} or None")
        teacher = settings.weights if settings.task == "classifier" else None
    temperature, alpha = DISTILL_DEFAULTS.get(settings.task, DISTILL_DEFAULTS["detector"])
    return dataclasses.replace(settings, teacher=teacher,
                               temperature=temperature if settings.temperature is None else settings.temperature,
                               alpha=alpha if settings.alpha is None else settings.alpha,
                               recalibrate=recalibration(settings.task, settings.images)
                               if settings.recalibrate is None else settings.recalibrate)


def recalibration(task: str, images: Path | None) -> int:
    """The training images a loop recalibrates on by default: a detector's
    :data:`DETECTOR_RECALIBRATION` of its ``images``; none without them, and
    none for a classifier."""
    return DETECTOR_RECALIBRATION if task == "detector" and images is not None else 0


def _write_training_files(settings: LoopSettings, model: Model, out: Path,
                          on_message: Callable[[str], None] | None) -> pseudolabels.Labelled | None:
    """``OUT/train.cfg``, ``OUT/train.data``, ``OUT/teacher.cfg`` (with a
    teacher) and the pseudo-labels (a detector with ``images``)."""
    net, sections = _retrain_options(settings, model)
    if settings.teacher is not None:
        teacher_cfg = settings.teacher_cfg or settings.cfg
        shape = {k: net[k] for k in ("width", "height", "batch", "subdivisions") if k in net}
        (out / TEACHER_CFG).write_text(runner.set_options(teacher_cfg.read_text(), shape, sections))
    _write_train_cfg(settings, model, settings.cfg)
    labelled, train = None, None
    if settings.images is not None and settings.task == "detector":
        labeller = None
        if settings.needs_labels:
            def labeller():
                from ..darknet.network import Network
                return Network(settings.cfg, settings.weights)
        if on_message:
            on_message(f"pseudo-labels: the starting model's detections above {settings.label_conf:g} "
                       f"in {out / PSEUDO}" if labeller else f"training images: linked into {out / PSEUDO} "
                       "(the teacher needs no labels)")
        labelled = pseudolabels.prepare(labeller, images_.image_paths(settings.images), out / PSEUDO,
                                        settings.label_conf, pseudolabels.file_identity(settings.cfg,
                                                                                        settings.weights))
        if on_message and labeller:
            kept = " (kept from the last run)" if labelled.reused else ""
            on_message(f"pseudo-labels: {labelled.boxes} boxes in {labelled.images} images{kept}")
        train = labelled.train_list
    data = settings.data.read_text() if settings.data else f"classes={_classes(model)}\n"
    (out / TRAIN_DATA).write_text(runner.private_data(data, out / "backup", train))
    return labelled


def _write_train_cfg(settings: LoopSettings, model: Model, cfg: Path) -> None:
    """``OUT/train.cfg``: ``cfg`` (the user's, or a structured step's) with
    the retraining options."""
    net, sections = _retrain_options(settings, model)
    if settings.teacher is not None:
        net.update(distill_cfg=settings.out.resolve() / TEACHER_CFG, distill_weights=settings.teacher.resolve(),
                   distill_temperature=f"{settings.temperature:g}", distill_alpha=f"{settings.alpha:g}")
    (settings.out.resolve() / TRAIN_CFG).write_text(runner.retrain_cfg(cfg.read_text(), settings.iterations,
                                                                      settings.learning_rate, net, sections))


def _retrain_options(settings: LoopSettings, model: Model) -> tuple[dict, dict | None]:
    """The ``[net]`` options and the per-section ones of the retraining cfg
    beyond ``max_batches``, ``prune`` and ``learning_rate``."""
    net: dict = {}
    sections = None
    if settings.learning_rate is None and settings.task == "classifier":  # Darknet's default rate is 0.001
        net["learning_rate"] = f"{model.net.get_float('learning_rate', 0.001) * RETRAIN_RATE_SCALE:g}"
    if "burn_in" in model.net.options:
        net["burn_in"] = 0  # a burn-in longer than the step would keep the rate near 0 throughout
    if settings.task == "detector":
        if settings.train_size is not None:
            net["width"] = net["height"] = settings.train_size
        net["batch"], net["subdivisions"] = DETECTOR_BATCH, 1
        sections = {"yolo": {"random": 0}, "region": {"random": 0}}
    if settings.batch is not None:
        net["batch"] = settings.batch
        net["subdivisions"] = 1
    if settings.subdivisions is not None:
        net["subdivisions"] = settings.subdivisions
    if settings.slim is not None:
        net["slim"] = f"{settings.slim:g}"  # network slimming's L1 on batch-norm scales
    return net, sections


def _classes(model: Model) -> int:
    return model.layers[-1].section.get_int("classes", 20)


def _scorer(settings: LoopSettings) -> Callable[..., tuple[float, dict]]:
    """The evaluation of a step's weights: its value and details."""
    if settings.eval_cmd or settings.task != "detector":
        def score(weights: Path, step: int, cfg: Path | None = None) -> tuple[float, dict]:
            return runner.evaluate(settings.darknet, settings.eval_cmd, cfg or settings.cfg, settings.data, weights,
                                   step), {}
        return score

    from ..darknet.network import Network
    from ..analysis.evaluate import Remembered, evaluate_detector
    paths = images_.image_paths(settings.eval_images)
    reference = []

    def agreement(weights: Path, step: int, cfg: Path | None = None) -> tuple[float, dict]:
        if not reference:  # the starting model's detections, once for every step
            reference.append(Remembered(Network(settings.cfg, settings.weights)))
        report = evaluate_detector(Network(cfg or settings.cfg, weights), paths, reference=reference[0],
                                   reference_name=str(settings.weights))
        if report.map50 is None:
            raise PolicyError(f"the starting model {settings.weights} finds nothing above the reference "
                              f"confidence in {settings.eval_images}: there is no agreement to score")
        return report.map50, {"map": report.map}
    return agreement


def _check(settings: LoopSettings) -> Model:
    """Validate the settings before anything runs; the cfg's model."""
    schedule.explicit(settings.targets)
    kind = check_kind(settings.policy)
    if isinstance(settings.iterations, bool) or not isinstance(settings.iterations, int) \
            or settings.iterations < 1:
        raise PolicyError(f"iterations per step {settings.iterations!r} must be a whole number >= 1")
    if settings.task not in runner.TASKS:
        raise PolicyError(f"unknown task {settings.task!r}: expected one of {', '.join(runner.TASKS)}")
    _check_task(settings)
    if settings.structured:
        _check_structured(settings)
    if settings.learning_rate is not None and not (math.isfinite(settings.learning_rate)
                                                   and settings.learning_rate > 0):
        raise PolicyError(f"learning rate {settings.learning_rate!r} must be a number > 0")
    if settings.slim is not None and not (math.isfinite(settings.slim) and settings.slim >= 0):
        raise PolicyError(f"slim {settings.slim!r} must be a number >= 0")
    _check_paths(settings)
    model = load_model(settings.cfg, settings.fork, settings.weights)
    if not settings.weights.is_file():
        raise WeightsFormatError(f"{settings.weights}: no such weights file")
    wf = WeightsFile(settings.weights, model)  # checks the size against the cfg
    if not settings.structured and (settings.spec is not None or not kind.exact):
        reach = max_sparsity(wf, kind, settings.spec)
        if reach < settings.targets[-1]:
            raise PolicyError(f"mode {kind.name} reaches at most {reach:.4f} total sparsity on "
                              f"{settings.weights} (with its spec, if any), not {settings.targets[-1]:g}")
    return model


def _check_structured(settings: LoopSettings) -> None:
    """A structured loop's targets are FLOPs shares in (0, 1); it needs
    calibration images and no per-layer spec."""
    if settings.targets[0] <= 0 or settings.targets[-1] >= 1:
        raise PolicyError(f"structured targets are shares of the FLOPs removed, in (0, 1): {settings.targets}")
    if settings.images is None:
        raise PolicyError("a structured loop chooses and refits channels on calibration images: give --images")
    if settings.spec is not None:
        raise PolicyError("a structured loop takes no --spec (it removes channels, not weights)")
    if isinstance(settings.slim_images, bool) or not isinstance(settings.slim_images, int) \
            or settings.slim_images < 2:
        raise PolicyError(f"slim images {settings.slim_images!r}: a whole number >= 2")


def _check_task(settings: LoopSettings) -> None:
    """The task's inputs: a classifier's data file, a detector's images,
    evaluation and teacher settings."""
    if settings.task == "detector":
        if settings.data is None and settings.images is None:
            raise PolicyError("task detector needs training images (--images) or a data file (--data)")
        if not settings.eval_cmd and settings.eval_images is None:
            raise PolicyError("task detector needs evaluation images (--eval-images: agreement with the "
                              "starting model) or an evaluation command (--eval-cmd)")
        if settings.train_size is not None and (settings.train_size < 32 or settings.train_size % 32):
            raise PolicyError(f"training input {settings.train_size} must be a multiple of 32")
        if settings.recalibrate and settings.images is None:
            raise PolicyError("recalibration after each step needs the training images (--images)")
    else:
        if settings.data is None:
            raise PolicyError(f"task {settings.task} needs a data file (--data)")
        for given, option in ((None if settings.structured else settings.images, "--images"),
                              (settings.eval_images, "--eval-images"),
                              (settings.train_size, "--train-size")):
            if given is not None:
                raise PolicyError(f"{option} is for detectors (--task detector)")
    if isinstance(settings.recalibrate, bool) or not isinstance(settings.recalibrate, int) \
            or settings.recalibrate < 0 or settings.recalibrate == 1:
        raise PolicyError(f"recalibration images {settings.recalibrate!r}: 0 (none) or a whole number >= 2")
    if not 0 < settings.label_conf < 1:
        raise PolicyError(f"label confidence {settings.label_conf!r} must be in (0, 1)")
    for name, value in (("batch", settings.batch), ("subdivisions", settings.subdivisions)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise PolicyError(f"{name} {value!r} must be a whole number >= 1")
    if settings.teacher is None:
        if settings.teacher_cfg is not None:
            raise PolicyError("a teacher cfg (--teacher-cfg) goes with a teacher (--teacher)")
        return
    if not (math.isfinite(settings.temperature) and settings.temperature > 0):
        raise PolicyError(f"temperature {settings.temperature!r} must be a number > 0")
    if not 0 <= settings.alpha <= 1:
        raise PolicyError(f"alpha {settings.alpha!r} must be in [0, 1]")


def _check_paths(settings: LoopSettings) -> None:
    """Inputs exist and are not among the files the loop writes; Darknet
    can use the output folder, which is created."""
    for what, path in (("data file", settings.data), ("cfg", settings.cfg), ("teacher cfg", settings.teacher_cfg)):
        if path is not None and not path.is_file():
            raise CfgError(f"{path}: no such {what}")
    for path in (settings.cfg, settings.teacher_cfg):
        if path is not None:
            runner.check_cfg(path)
    if settings.recalibrate and settings.task != "detector" \
            and not darknet_text.read_options(settings.data).get("train"):
        raise CfgError(f"{settings.data}: no train= list of images to recalibrate on (--recalibrate 0: not)")
    if settings.teacher is not None:
        teacher_cfg = settings.teacher_cfg or settings.cfg
        if not settings.teacher.is_file():
            raise WeightsFormatError(f"{settings.teacher}: no such teacher weights file")
        WeightsFile(settings.teacher, load_model(teacher_cfg, settings.fork, settings.teacher))
        for path in (settings.teacher, teacher_cfg):
            if re.search(r"\s", str(path.resolve())):
                raise OutputError(f"{path.resolve()}: Darknet reads cfg options without their blanks; "
                                  "the teacher's path must have none")
    out = settings.out.resolve()
    if settings.images is not None and (out / PSEUDO == settings.images.resolve()
                                        or out / PSEUDO in settings.images.resolve().parents):
        raise OutputError(f"{settings.images}: the loop rewrites {out / PSEUDO}; give the original images")
    for what, source in (("training images", settings.images), ("evaluation images", settings.eval_images)):
        if source is not None and not source.exists():
            raise PolicyError(f"{source}: no such folder or list of {what}")
    runner.check_binary(settings.darknet)
    runner.check_folder(out)
    if settings.images is not None:
        pseudolabels.check_folder(out / PSEUDO)
    for path in (settings.cfg, settings.data, settings.weights, settings.teacher, settings.teacher_cfg):
        if path is None:
            continue
        path = path.resolve()
        if path.parent == out / "backup" or out / PSEUDO in path.parents or (path.parent == out and (
                path.name in (TRAIN_CFG, TRAIN_DATA, TEACHER_CFG, "final.weights", "log.jsonl")
                or path.name.startswith("step-"))):
            raise OutputError(f"{path}: the loop writes this file; copy it out of {out} first")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output folder: {exc.strerror}") from None


def _step(settings: LoopSettings, model: Model, step: int, source: Path,
          score: Callable[..., tuple[float, dict]]) -> StepRecord:
    """Threshold ``source``, retrain, measure, evaluate: one log record."""
    started = time.monotonic()
    out = settings.out.resolve()
    target = settings.targets[step - 1]
    pruned = out / f"step-{step:02d}.pruned.weights"
    _, level = prune_to(WeightsFile(source, model), pruned, target, settings.policy, settings.spec)
    trained = _retrain(settings, pruned, step)
    if settings.recalibrate:
        _recalibrate(settings, model, trained)
    revived = reports.diff(WeightsFile(pruned, model), WeightsFile(trained, model)).revived
    pruned.unlink()
    sparsity = weight_sparsity(WeightsFile(trained, model))
    value, details = score(trained, step)
    return StepRecord(step, target, sparsity, settings.metric, value, revived, str(trained),
                      settings.policy.name, level, settings.iterations, round(time.monotonic() - started, 3),
                      details)


def _retrain(settings: LoopSettings, weights: Path, step: int) -> Path:
    """Retrain ``weights`` from the private cfg and data file; the result,
    ``OUT/step-NN.weights`` (Darknet's output in ``OUT/step-NN.log``)."""
    out = settings.out.resolve()
    trained = out / step_name(step)
    runner.train(settings.darknet, settings.task, out / TRAIN_DATA, out / TRAIN_CFG, weights, out / "backup",
                 out / f"step-{step:02d}.log", trained)
    return trained


def _recalibrate(settings: LoopSettings, model: Model, weights: Path, cfg: Path | None = None,
                 reference: Path | None = None) -> None:
    """Recalibrate ``weights`` (of ``cfg``, default the user's) in place on
    ``settings.recalibrate`` of the training images: a detector's relative
    to ``reference`` (default the starting weights; of the same cfg), a
    classifier's on its own training list as they are."""
    from ..analysis import recalibrate
    from ..analysis.sensitivity import default_resize
    cfg = cfg or settings.cfg
    net = recalibrate.calibration_network(cfg, weights, RECALIBRATION_BATCH)
    if settings.task == "detector":
        paths = images_.sample(images_.image_paths(settings.images), settings.recalibrate)
        base = recalibrate.calibration_network(cfg, reference or settings.weights, RECALIBRATION_BATCH)
    else:
        train = darknet_text.read_options(settings.data)["train"]  # checked by _check_paths
        paths, base = images_.sample(images_.image_paths(train), settings.recalibrate), None
    recalibrate.recalibrate(net, model, recalibrate.ImageFiles(paths, net.input_shape, default_resize(model)),
                            reference=base)
    net.save(weights)


def _structured_step(settings: LoopSettings, model: Model, step: int, source: Path, source_cfg: Path,
                     score: Callable[..., tuple[float, dict]]) -> StepRecord:
    """Slim ``source`` until the step's share of the starting model's FLOPs
    is gone (data rank and refit, :func:`darknet_sparse.structured.reconstruct.slim_refit`),
    retrain, recalibrate relative to the slimmed model, evaluate."""
    from ..structured import reconstruct
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
    _write_train_cfg(settings, model, step_cfg)
    trained = _retrain(settings, staged, step)
    if settings.recalibrate:
        _recalibrate(settings, step_model, trained, step_cfg, staged)
    revived = reports.diff(WeightsFile(staged, step_model), WeightsFile(trained, step_model)).revived
    removed = 1 - step_model.flops / model.flops
    value, details = score(trained, step, step_cfg)
    return StepRecord(step, target, removed, settings.metric, value, revived, str(trained), STRUCTURED,
                      removed, settings.iterations, round(time.monotonic() - started, 3),
                      {**details, "cfg": str(step_cfg)})


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
