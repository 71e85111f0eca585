"""The files the loop retrains from, in its output folder, and one
retraining run of Darknet on them (:mod:`darknet_sparse.workflow.loop`).

Distillation (``teacher``).  The retraining cfg gets ``[net]
distill_cfg=OUT/teacher.cfg`` (the teacher's cfg, or the user's, at the
retraining input and batch), ``distill_weights``, ``distill_temperature`` and
``distill_alpha`` (patches/0020-distill.patch): the teacher's soft targets
weigh ``alpha``, the labels ``1 - alpha``.  With ``alpha`` 1 a detector needs
no labels at all, so no pseudo-labels are made.  By default
(:data:`~.settings.STARTING`) a classifier is taught by its own starting
weights at :data:`~.settings.DISTILL_DEFAULTS`' temperature and alpha;
``teacher=None`` retrains on the labels alone.

The user's cfg, data file and weights are only read.  Darknet trains from a
private copy of the cfg (``OUT/train.cfg``: ``max_batches`` and ``prune=1``
set in ``[net]``, and ``learning_rate``: the given one, else for a
classifier the cfg's times :data:`~.settings.RETRAIN_RATE_SCALE`) and of
the data file (``OUT/train.data``: ``backup=`` pointing at ``OUT/backup``; for
pseudo-labels, ``train=`` naming ``OUT/pseudo/train.list``).  It runs with
``-clear``: otherwise ``train`` would carry on from the ``seen`` stored in the
weights and stop at once, since that is past the new ``max_batches``.  The
learning-rate schedule of the cfg (burn-in, steps, poly) starts afresh at
every step.  Darknet runs in the caller's working folder, so relative paths
in the data file mean what they mean to the user.

A detector's retraining cfg also sets ``random=0`` in its ``[yolo]`` and
``[region]`` sections (``random=1`` resizes the input to up to 608 every 10
batches), the cfg's own input size unless ``train_size`` says otherwise (the
weights do not depend on it, but on yolov3-tiny at 50% sparsity retraining
at 256 lost agreement at 416 where retraining at 416 for the same CPU time
gained it; README "The workflow") and a CPU-sized batch
(:data:`~.settings.DETECTOR_BATCH`).  With ``seed``,
``[net] seed=N`` makes the patched Darknet retrain the same way every run
(without it, Darknet seeds from the clock, as upstream).

In AlexeyAB's fork the same files drive its ``detector train -dont_show
-nomap`` or ``classifier train -dont_show``
(:data:`~darknet_sparse.darknet.runner.ALEXEYAB_TRAIN_OPTIONS`), with the
options of :data:`ALEXEYAB_OFF` turned off; a structured step's retraining cfg
is its slimmed cfg, the fork's own options kept.  The fork never updates the
weights of some layer types
(:data:`~darknet_sparse.darknet.runner.ALEXEYAB_UNTRAINED`: ``[connected]``
and kin), so a classifier retrains its convolutions only; the loop says so
(:func:`alexeyab_message`).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..analysis import pseudolabels
from ..darknet import images as images_
from ..darknet import runner
from ..darknet.network import Network
from ..format import darknet_text
from ..format.layout import Model
from .settings import (
    BACKUP,
    DETECTOR_BATCH,
    PSEUDO,
    RETRAIN_RATE_SCALE,
    TEACHER_CFG,
    TRAIN_CFG,
    TRAIN_DATA,
    LoopSettings,
    step_name,
)


def write_training_files(settings: LoopSettings, model: Model, out: Path,
                          on_message: Callable[[str], None] | None) -> pseudolabels.Labelled | None:
    """``OUT/train.cfg``, ``OUT/train.data``, ``OUT/teacher.cfg`` (with a
    teacher) and the pseudo-labels (a detector with ``images``)."""
    net, sections = retrain_options(settings, model)
    if settings.teacher is not None:
        teacher_cfg = settings.teacher_cfg or settings.cfg
        shape = {k: net[k] for k in ("width", "height", "batch", "subdivisions") if k in net}
        _write(out / TEACHER_CFG, runner.set_options(darknet_text.read_text(teacher_cfg, "the teacher cfg"), shape,
                                                     sections))
    write_train_cfg(settings, model, settings.cfg)
    if on_message and model.fork == "alexeyab":
        on_message(alexeyab_message(settings, model, net, sections))
    labelled, train = None, None
    if settings.images is not None and settings.task == "detector":
        labeller = None
        if settings.needs_labels:
            def labeller() -> Network:
                return Network(settings.cfg, settings.weights, fork=settings.fork)
        if on_message:
            on_message(f"pseudo-labels: the starting model's detections above {settings.label_conf:g} "
                       f"in {out / PSEUDO}" if labeller else f"training images: linked into {out / PSEUDO} "
                       "(the teacher needs no labels)")
        labelled = pseudolabels.prepare(labeller, images_.image_paths(settings.images), out / PSEUDO,
                                        settings.label_conf, pseudolabels.file_identity(settings.cfg,
                                                                                        settings.weights),
                                        fork=model.fork)
        if on_message and labeller:
            kept = " (kept from the last run)" if labelled.reused else ""
            on_message(f"pseudo-labels: {labelled.boxes} boxes in {labelled.images} images{kept}")
        train = labelled.train_list
    data = darknet_text.read_text(settings.data, "the .data file") if settings.data else \
        f"classes={_classes(model)}\n"
    _write(out / TRAIN_DATA, runner.private_data(data, out / BACKUP, train))
    return labelled


def write_train_cfg(settings: LoopSettings, model: Model, cfg: Path) -> None:
    """``OUT/train.cfg``: ``cfg`` (the user's, or a structured step's) with
    the retraining options."""
    net, sections = retrain_options(settings, model)
    if settings.teacher is not None:
        net.update(distill_cfg=settings.out.resolve() / TEACHER_CFG, distill_weights=settings.teacher.resolve(),
                   distill_temperature=f"{settings.temperature:g}", distill_alpha=f"{settings.alpha:g}")
    text = darknet_text.read_text(cfg, "the cfg")
    _write(settings.out.resolve() / TRAIN_CFG, runner.retrain_cfg(text, settings.iterations, settings.learning_rate,
                                                                  net, sections))


def retrain_options(settings: LoopSettings, model: Model) -> tuple[dict, dict | None]:
    """The ``[net]`` options and the per-section ones of the retraining cfg
    beyond ``max_batches``, ``prune`` and ``learning_rate`` (and ``seed``,
    when the settings give one)."""
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
    if settings.seed is not None:
        net["seed"] = settings.seed  # the patched Darknet's srand: the same step every run
    if model.fork == "alexeyab":
        net.update(alexeyab_options(model))
    return net, sections


#: AlexeyAB's training options a short CPU retraining turns off where the cfg
#: sets them: mosaic, cutmix and mixup (4-image and blended samples, which
#: need OpenCV), the EMA copy (ema_alpha: its average would lag the few
#: updates of a step, and replace the weights at the end), and the
#: adversarial and contrastive passes (extra forward passes per batch).
ALEXEYAB_OFF = ("mosaic", "cutmix", "mixup", "ema_alpha", "adversarial_lr", "contrastive")


def alexeyab_options(model: Model) -> dict:
    """The ``[net]`` options of AlexeyAB's fork the retraining cfg turns off
    (those of :data:`ALEXEYAB_OFF` the cfg sets); ``random=0`` in ``[yolo]``,
    ``burn_in=0``, ``max_batches`` and ``-dont_show -nomap`` apply as for
    every detector (:func:`retrain_options`, :func:`retrain`)."""
    return {key: 0 for key in ALEXEYAB_OFF if key in model.net.options}


def alexeyab_message(settings: LoopSettings, model: Model, net: dict, sections: dict | None) -> str:
    """What the loop tells a user of AlexeyAB's fork before it retrains: the
    command's options, what the retraining cfg sets, and the layers whose
    weights the fork never updates."""
    changed = "".join(f", {key}={value}" for key, value in net.items())
    message = (f"retraining in AlexeyAB's Darknet ({settings.darknet}): {settings.task} train "
               f"{' '.join(runner.ALEXEYAB_TRAIN_OPTIONS[settings.task])}; {settings.out.resolve() / TRAIN_CFG}"
               + (" (rewritten from each step's slimmed cfg)" if settings.structured else "")
               + f" sets prune=1, max_batches={settings.iterations}{changed}"
               + (" and random=0 in [yolo]" if sections else ""))
    if settings.teacher is not None:
        message += (f"; distill_cfg={settings.out.resolve() / TEACHER_CFG}, distill_weights={settings.teacher},"
                    f" distill_temperature={settings.temperature:g}, distill_alpha={settings.alpha:g}")
    untrained = [layer for layer in model.layers if layer.type in runner.ALEXEYAB_UNTRAINED and layer.params]
    if untrained:
        kinds = ", ".join(sorted({f"[{layer.type}]" for layer in untrained}))
        message += (f"; the fork never updates {kinds} weights (its update_network skips them): layer(s) "
                    f"{', '.join(str(layer.index) for layer in untrained)} are not retrained")
    return message


def _write(path: Path, text: str) -> None:
    """A private file for Darknet, its bytes as read (no newline translation)."""
    path.write_text(text, encoding="utf-8", errors="surrogateescape", newline="")


def _classes(model: Model) -> int:
    return model.layers[-1].section.get_int("classes", 20)


def retrain(settings: LoopSettings, weights: Path, step: int) -> Path:
    """Retrain ``weights`` from the private cfg and data file; the result,
    ``OUT/step-NN.weights`` (Darknet's output in ``OUT/step-NN.log``)."""
    out = settings.out.resolve()
    trained = out / step_name(step)
    options = runner.ALEXEYAB_TRAIN_OPTIONS[settings.task] if settings.fork == "alexeyab" else ()
    runner.train(settings.darknet, settings.task, out / TRAIN_DATA, out / TRAIN_CFG, weights, out / BACKUP,
                 out / f"step-{step:02d}.log", trained, options)
    return trained
