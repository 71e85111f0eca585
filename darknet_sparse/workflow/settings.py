"""The loop's settings, their defaults and their validation
(:func:`check`, before anything runs); the loop itself is
:mod:`darknet_sparse.workflow.loop`, the files it retrains from
:mod:`darknet_sparse.workflow.retrain`."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..analysis import pseudolabels
from ..darknet import runner
from ..errors import CfgError, InputError, OutputError, PolicyError, WeightsFormatError
from ..format import darknet_text
from ..format.files import load_model
from ..format.layout import Model
from ..format.weightsfile import WeightsFile
from ..pruning import schedule
from ..pruning.policies import Global, Policy, check_kind
from ..pruning.search import max_sparsity

STRUCTURED = "structured"
#: The files the loop writes in its output folder (module docstring of
#: :mod:`darknet_sparse.workflow.loop`), which no input may be.
TRAIN_CFG, TRAIN_DATA, TEACHER_CFG, PSEUDO, BACKUP = "train.cfg", "train.data", "teacher.cfg", "pseudo", "backup"
FINAL, LOG = "final.weights", "log.jsonl"
#: Darknet's ``srand`` takes an unsigned int.
SEED_LIMIT = 2 ** 32
#: A detector's retraining batch and subdivisions when the loop sizes them:
#: small enough for a CPU step of a few minutes, big enough for batch norm.
DETECTOR_BATCH = 8
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
    #: "obs": each step prunes with the second-order solver (workflow/oneshot) from the current weights.
    oneshot: str | None = None
    #: ``[net] seed=N`` in the retraining cfg: the patched Darknet seeds its
    #: random numbers with it, so a step retrains the same way every run;
    #: None: the clock, as upstream Darknet.
    seed: int | None = None

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


def with_defaults(settings: LoopSettings) -> LoopSettings:
    """``settings`` with the task's defaults in place of :data:`STARTING`
    and of no temperature, alpha or recalibration."""
    teacher = settings.teacher
    if isinstance(teacher, str):
        if teacher != STARTING:
            raise InputError(f"teacher {teacher!r}: give a weights path, {STARTING!r} or None")
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


def check(settings: LoopSettings) -> Model:
    """Validate the settings before anything runs; the cfg's model."""
    schedule.explicit(settings.targets)
    kind = check_kind(settings.policy)
    if isinstance(settings.iterations, bool) or not isinstance(settings.iterations, int) \
            or settings.iterations < 1:
        raise InputError(f"iterations per step {settings.iterations!r} must be a whole number >= 1")
    if settings.task not in runner.TASKS:
        raise InputError(f"unknown task {settings.task!r}: expected one of {', '.join(runner.TASKS)}")
    _check_task(settings)
    if settings.seed is not None and (isinstance(settings.seed, bool) or not isinstance(settings.seed, int)
                                      or not 0 <= settings.seed < SEED_LIMIT):
        raise InputError(f"seed {settings.seed!r} must be a whole number in [0, {SEED_LIMIT})")
    if settings.structured:
        _check_structured(settings)
    if settings.learning_rate is not None and not (math.isfinite(settings.learning_rate)
                                                   and settings.learning_rate > 0):
        raise InputError(f"learning rate {settings.learning_rate!r} must be a number > 0")
    if settings.slim is not None and not (math.isfinite(settings.slim) and settings.slim >= 0):
        raise InputError(f"slim {settings.slim!r} must be a number >= 0")
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
        raise InputError("a structured loop chooses and refits channels on calibration images: give --images")
    if settings.spec is not None:
        raise PolicyError("a structured loop takes no --spec (it removes channels, not weights)")
    if isinstance(settings.slim_images, bool) or not isinstance(settings.slim_images, int) \
            or settings.slim_images < 2:
        raise InputError(f"slim images {settings.slim_images!r}: a whole number >= 2")


def _check_task(settings: LoopSettings) -> None:
    """The task's inputs: a classifier's data file, a detector's images,
    evaluation and teacher settings."""
    if settings.task == "detector":
        if settings.data is None and settings.images is None:
            raise InputError("task detector needs training images (--images) or a data file (--data)")
        if not settings.eval_cmd and settings.eval_images is None:
            raise InputError("task detector needs evaluation images (--eval-images: agreement with the "
                             "starting model) or an evaluation command (--eval-cmd)")
        if settings.train_size is not None and (settings.train_size < 32 or settings.train_size % 32):
            raise InputError(f"training input {settings.train_size} must be a multiple of 32")
        if settings.recalibrate and settings.images is None:
            raise InputError("recalibration after each step needs the training images (--images)")
    else:
        if settings.data is None:
            raise InputError(f"task {settings.task} needs a data file (--data)")
        for given, option in ((None if settings.structured else settings.images, "--images"),
                              (settings.eval_images, "--eval-images"),
                              (settings.train_size, "--train-size")):
            if given is not None:
                raise InputError(f"{option} is for detectors (--task detector)")
    if isinstance(settings.recalibrate, bool) or not isinstance(settings.recalibrate, int) \
            or settings.recalibrate < 0 or settings.recalibrate == 1:
        raise InputError(f"recalibration images {settings.recalibrate!r}: 0 (none) or a whole number >= 2")
    if not 0 < settings.label_conf < 1:
        raise InputError(f"label confidence {settings.label_conf!r} must be in (0, 1)")
    for name, value in (("batch", settings.batch), ("subdivisions", settings.subdivisions)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name} {value!r} must be a whole number >= 1")
    if settings.teacher is None:
        if settings.teacher_cfg is not None:
            raise InputError("a teacher cfg (--teacher-cfg) goes with a teacher (--teacher)")
        return
    if not (math.isfinite(settings.temperature) and settings.temperature > 0):
        raise InputError(f"temperature {settings.temperature!r} must be a number > 0")
    if not 0 <= settings.alpha <= 1:
        raise InputError(f"alpha {settings.alpha!r} must be in [0, 1]")


def _check_alexeyab(settings: LoopSettings) -> None:
    """What the loop can do in AlexeyAB's Darknet (patches/alexeyab: prune=1,
    prune_threshold, slim, distillation and seed=, 0006-seed): a
    classifier (``classifier train``) or a detector (``detector train``, on
    pseudo-labels or taught by a teacher, 0005-distill), thresholded or
    slimmed (``structured``), each step pruned by magnitude or by the
    solver (``oneshot``, through the fork's binding).  Not a model whose
    weights are all in layers the fork never updates
    (:data:`~darknet_sparse.darknet.runner.ALEXEYAB_UNTRAINED`)."""
    layers = [layer for layer in load_model(settings.cfg, "alexeyab").layers
              if any(p.role == "weights" for p in layer.params)]
    untrained = sorted({f"[{layer.type}]" for layer in layers if layer.type in runner.ALEXEYAB_UNTRAINED})
    if untrained and all(layer.type in runner.ALEXEYAB_UNTRAINED for layer in layers):
        raise InputError(f"{settings.cfg}: AlexeyAB's Darknet (fork alexeyab) never updates {', '.join(untrained)} "
                         "weights and the model has no other layer with weights: retraining in the fork would "
                         "change nothing")


def _check_paths(settings: LoopSettings) -> None:
    """Inputs exist and are not among the files the loop writes; Darknet
    can use the output folder, which is created."""
    for what, path in (("data file", settings.data), ("cfg", settings.cfg), ("teacher cfg", settings.teacher_cfg)):
        if path is not None and not path.is_file():
            raise CfgError(f"{path}: no such {what}")
    for path in (settings.cfg, settings.teacher_cfg):
        if path is not None and settings.fork != "alexeyab":  # pjreddie's Darknet trains it
            runner.check_cfg(path)
    if settings.fork == "alexeyab":
        _check_alexeyab(settings)
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
            raise InputError(f"{source}: no such folder or list of {what}")
    runner.check_binary(settings.darknet)
    runner.check_folder(out)
    if settings.images is not None:
        pseudolabels.check_folder(out / PSEUDO, settings.fork)
    for path in (settings.cfg, settings.data, settings.weights, settings.teacher, settings.teacher_cfg):
        if path is None:
            continue
        path = path.resolve()
        if path.parent == out / BACKUP or out / PSEUDO in path.parents or (path.parent == out and (
                path.name in (TRAIN_CFG, TRAIN_DATA, TEACHER_CFG, FINAL, LOG)
                or path.name.startswith("step-"))):
            raise OutputError(f"{path}: the loop writes this file; copy it out of {out} first")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output folder: {exc.strerror}") from None


def step_name(step: int) -> str:
    """``step-NN.weights``: where step ``step`` keeps its retrained weights."""
    return f"step-{step:02d}.weights"
