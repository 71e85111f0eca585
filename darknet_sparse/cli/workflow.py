"""Commands around the patched Darknet: ``loop`` (prune, retrain with the
patched binary, evaluate, repeat) and ``build``, which builds that binary and
the binding into the per-user folder and says where they are."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .. import reports
from ..analysis import pseudolabels
from ..darknet import runner
from ..format.files import find_cfg
from ..pruning import schedule
from ..pruning.policies import POLICIES, read_spec
from ..workflow import loop as loop_
from ..workflow import settings as settings_
from .base import cfg_option, cli, fork_option


def _sparsity_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(item) for item in value.split(",") if item.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None


@cli.command()
@click.option("--weights", "-w", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The dense (or partly pruned) weights to start from; only read.")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path),
              help="Darknet's .data file (train=, valid=, labels=, ...); its backup= is not used.  "
                   "Needed for classifiers; a detector may give --images instead.")
@click.option("--final-sparsity", type=float,
              help="Total sparsity of the prunable weights after the last step, in [0, 1).")
@click.option("--steps", type=click.IntRange(min=1), default=settings_.DEFAULT_STEPS, show_default=True,
              help="Number of prune/retrain steps to reach --final-sparsity.")
@click.option("--fine-tune-steps", type=click.IntRange(min=0), default=settings_.DEFAULT_FINE_TUNE_STEPS,
              show_default=True, help="Extra retraining steps at --final-sparsity after the schedule's "
                                         "(not with --sparsities, which lists every step).")
@click.option("--oneshot", type=click.Choice(("obs",)),
              help="obs: each step prunes with the second-order solver (as `oneshot`, on the training images) "
                   "from the current weights, instead of zeroing the smallest.")
@click.option("--structured", is_flag=True,
              help="Remove whole channels at each step (slim with the data rank and a least-squares refit "
                   "on --images) instead of zeroing weights; the steps reach --target-flops.")
@click.option("--target-flops", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="With --structured: the share of the starting model's FLOPs removed after the last step.")
@click.option("--sparsities", callback=_sparsity_list,
              help="Explicit step targets instead of a schedule, e.g. 0.5,0.7,0.9.")
@click.option("--schedule", "schedule_name", type=click.Choice(schedule.SCHEDULES), default="agp",
              show_default=True, help="agp: Zhu & Gupta's cubic ramp (big steps first); linear: equal steps.")
@click.option("--mode", type=click.Choice(tuple(POLICIES)), default=settings_.LoopSettings.policy.name,
              show_default=True,
              help="How each step's thresholds are chosen; the mode's level is searched so the total "
                   "sparsity reaches the step's target (magnitude and global take it as it is).")
@click.option("--spec", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML or TOML per-layer levels, held at every step (e.g. skip the first layer).")
@click.option("--iterations-per-step", "iterations", required=True, type=click.IntRange(min=1),
              help="Batches of retraining after each threshold (max_batches of the private cfg).")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True),
              help=f"The retraining rate (default: for classifiers the cfg's learning_rate x "
                   f"{settings_.RETRAIN_RATE_SCALE:g}, for detectors the cfg's).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for every step's weights, log.jsonl and final.weights.")
@click.option("--task", type=click.Choice(tuple(runner.TASKS)), default="classifier", show_default=True,
              help="Which `darknet <task> train` retrains.")
@click.option("--images", type=click.Path(path_type=Path),
              help="Detector: unlabelled training images (a folder or list file); the starting model's "
                   "detections above --label-conf become label files in OUT/pseudo.")
@click.option("--label-conf", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=pseudolabels.LABEL_CONF, show_default=True,
              help="Detector: confidence a starting-model detection needs to become a label (the same as "
                   "agreement's reference confidence, so retraining aims at what is scored).")
@click.option("--eval-images", type=click.Path(path_type=Path),
              help="Detector: score each step by agreement mAP@0.5 with the starting model on these "
                   "images (a folder or list file).")
@click.option("--train-size", type=click.IntRange(min=32),
              help="Detector: network width and height while retraining, a multiple of 32 (default: "
                   "the cfg's; smaller is cheaper per batch but, on yolov3-tiny, recovered less).")
@click.option("--batch", type=click.IntRange(min=1),
              help=f"Images per retraining batch (default: the cfg's; detectors {settings_.DETECTOR_BATCH}).")
@click.option("--subdivisions", type=click.IntRange(min=1), help="Split each batch in this many passes.")
@click.option("--teacher", type=click.Path(dir_okay=False, path_type=Path),
              help="Distil: retrain on the soft targets of these (dense) weights (patched Darknet's "
                   "distill_* options); with --alpha 1 a detector needs no labels.  Default: a "
                   "classifier is taught by --weights, a detector by none.")
@click.option("--no-teacher", is_flag=True, help="Retrain on the labels alone (no default teacher).")
@click.option("--teacher-cfg", type=click.Path(dir_okay=False, path_type=Path),
              help="The teacher's cfg (default: --cfg); its heads must have the student's shapes.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True),
              help="Distillation temperature T (soft targets softmax(z/T), sigmoid(z/T) for [yolo]); "
                   "default: " + ", ".join(f"{t:g} for {task}s" for task, (t, _) in settings_.DISTILL_DEFAULTS.items())
                   + ".")
@click.option("--alpha", type=click.FloatRange(0, 1),
              help="Weight of the teacher's term; 1 - alpha weighs the labels; default: "
                   + ", ".join(f"{a:g} for {task}s" for task, (_, a) in settings_.DISTILL_DEFAULTS.items()) + ".")
@click.option("--slim", "slim_lambda", type=click.FloatRange(min=0),
              help="Retrain with [net] slim=λ (the patched Darknet's L1 on batch-norm scales), so that "
                   "`darknet-sparse slim` can then remove channels.")
@click.option("--recalibrate", "recalibrate_images", type=click.IntRange(min=0),
              help="After each retraining, re-estimate batch-norm statistics on this many training images "
                   "(a detector's --images, relative to the starting model; a classifier's train= list, "
                   "which pays when steps are short) (0: not).  Default: "
                   f"{settings_.DETECTOR_RECALIBRATION} for a detector with --images, else 0.")
@click.option("--eval-cmd",
              help="Shell command printing the score as its last line; {weights}, {cfg}, {data}, {step} "
                   "are replaced (also $DARKNET_SPARSE_WEIGHTS etc.).  Default: for classifiers top-1 of "
                   "`darknet classifier valid`, for detectors agreement mAP@0.5 on --eval-images.")
@click.option("--min-score", "--min-top1", "min_score", type=float,
              help="Stop when a step's score (top-1 for classifiers) falls below this; exit status 1.")
@click.option("--resume", is_flag=True, help="Carry on after the last complete step in OUT/log.jsonl.")
@click.option("--darknet", type=click.Path(dir_okay=False, path_type=Path),
              help="The patched Darknet binary (default: the one `darknet-sparse build` made).")
@click.option("--seed", type=click.IntRange(0, settings_.SEED_LIMIT - 1),
              help="Seed the patched Darknet's random numbers while retraining ([net] seed=N), so the same "
                   "command retrains the same way (default: the clock, as upstream).")
@cfg_option
@fork_option
def loop(weights: Path, data: Path | None, final_sparsity: float | None, steps: int, fine_tune_steps: int,
         oneshot: str | None, structured: bool, target_flops: float | None, sparsities: list[float] | None,
         schedule_name: str, mode: str, spec: Path | None, iterations: int,
         learning_rate: float | None, out: Path, task: str, images: Path | None, label_conf: float,
         eval_images: Path | None, train_size: int | None, batch: int | None, subdivisions: int | None,
         teacher: Path | None, no_teacher: bool, teacher_cfg: Path | None, temperature: float | None,
         alpha: float | None, slim_lambda: float | None, recalibrate_images: int | None,
         eval_cmd: str | None, min_score: float | None, resume: bool, darknet: Path | None, seed: int | None,
         cfg: Path | None, fork: str) -> None:
    """Prune and retrain in steps: threshold to each step's target, retrain
    with zero weights frozen (patched Darknet, prune=1), evaluate, log.

    One JSON line per step goes to OUT/log.jsonl; OUT/final.weights is the
    last step that met --min-score.  The given cfg, data, weights and images
    are never written.  A step below --min-score stops the loop with exit
    status 1.

    A detector needs no labels: with --images the starting model labels them
    (OUT/pseudo), with --eval-images each step is scored by agreement mAP@0.5
    with it.  --teacher retrains on a teacher's soft targets instead.

    With no more than --final-sparsity and --iterations-per-step, a
    classifier is pruned in global mode, 8 AGP steps and one fine-tune step,
    at a fifth of its cfg's learning rate, taught by its own starting weights
    (temperature 4, alpha 0.7): the defaults benchmarks/quality.md checks.
    """
    if structured:
        if target_flops is None or final_sparsity is not None or sparsities is not None:
            raise click.UsageError("--structured takes --target-flops (with --steps), not sparsities")
        targets = schedule.targets(target_flops, steps, schedule_name)
        targets += [targets[-1]] * fine_tune_steps
    elif target_flops is not None:
        raise click.UsageError("--target-flops is for --structured")
    elif sparsities is not None:
        targets = schedule.explicit(sparsities)
        if final_sparsity is not None and final_sparsity != targets[-1]:
            raise click.UsageError(f"--final-sparsity {final_sparsity:g} is not the last of --sparsities")
    elif final_sparsity is None:
        raise click.UsageError("give --final-sparsity (with --steps) or --sparsities")
    else:
        targets = schedule.targets(final_sparsity, steps, schedule_name)
        targets += [targets[-1]] * fine_tune_steps
    if no_teacher and teacher is not None:
        raise click.UsageError("--no-teacher and --teacher exclude each other")
    settings = settings_.LoopSettings(
        cfg=cfg or find_cfg(weights), weights=weights, data=data, out=out, targets=tuple(targets),
        iterations=iterations, policy=POLICIES[mode], spec=read_spec(spec) if spec else None, task=task,
        eval_cmd=eval_cmd, min_score=min_score, darknet=darknet, learning_rate=learning_rate, fork=fork,
        images=images, eval_images=eval_images, label_conf=label_conf, train_size=train_size, batch=batch,
        subdivisions=subdivisions,
        teacher=None if no_teacher else teacher or settings_.STARTING, teacher_cfg=teacher_cfg, temperature=temperature,
        alpha=alpha, slim=slim_lambda,
        recalibrate=recalibrate_images, structured=structured, seed=seed, oneshot=oneshot)
    with click.progressbar(length=len(targets), label="prune/retrain steps",
                           file=sys.stderr) as bar:
        result = loop_.run(settings, resume, on_progress=lambda done: bar.update(done - bar.pos),
                           on_message=lambda text: click.echo(text, err=True))
    click.echo(_summary(result))
    if any(r.zeros_revived for r in result.steps):
        click.echo("warning: retraining revived pruned weights: is --darknet the patched build?", err=True)
    if result.stopped:
        click.echo(f"stopped: {result.stopped}", err=True)
        raise SystemExit(1)


def _summary(result: loop_.LoopResult) -> str:
    metric = result.steps[0].metric if result.steps else "top1"
    structured = bool(result.steps) and result.steps[0].mode == settings_.STRUCTURED
    headers = ["step", "target", "FLOPs removed" if structured else "sparsity", metric, "revived", "seconds",
               "weights"]
    rows = [[r.step, f"{r.target_sparsity:.4f}", f"{r.sparsity:.4f}", f"{r.value:.4f}", r.zeros_revived,
             f"{r.seconds:.1f}", r.weights + ("  (resumed)" if r.step <= result.resumed else "")]
            for r in result.steps]
    final = f"final: {result.final}" if result.final else "final: none"
    return "\n".join([reports.render_table(headers, rows, ">>>>>><"), final])


@cli.command()
@click.option("--status", "status_only", is_flag=True, help="Only say where each part is; build nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print where each part is as JSON instead of text.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Parallel compiles (default 2).")
@click.option("--fork", "build_fork", type=click.Choice(["pjreddie", "alexeyab"]), default="pjreddie",
              show_default=True, help="Whose Darknet to build: pjreddie's, or AlexeyAB's (yolov4, yolov7; "
                                      "source from DARKNET_AB_SRC, the cache or a download, content-checked).")
def build(status_only: bool, as_json: bool, jobs: int | None, build_fork: str) -> None:
    """Build the patched Darknet and the Python binding into the per-user
    folder, then say where each part is.

    The folder is $DARKNET_SPARSE_HOME, else $XDG_DATA_HOME/darknet-sparse,
    else ~/.local/share/darknet-sparse.  Upstream is Debian's source package
    (sha256-checked), or DARKNET_SRC=/path/to/checkout; GPU=1 ARCH=...,
    OPENMP=1 pass through to upstream's Makefile.  Run again, it redoes only
    what changed.  In a checkout, `make darknet binding` builds into build/,
    which commands use first.

    --fork alexeyab builds AlexeyAB's fork (one pinned commit, patches/alexeyab/)
    the same way: its source from DARKNET_AB_SRC (a checkout or tarball), the
    cache or a download, checked against the pinned content digest; AVX=1 by
    default.  The list at the end shows every build of both forks.
    """
    from ..darknet import home
    from ..darknet.network import build_info
    if not status_only:
        home.build(lambda line: click.echo(line, err=True), jobs, build_fork)
    info = build_info()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    hint = f"not built: run `{home.BUILD_COMMAND}`"
    click.echo(f"patched darknet: {info['binary']} ({'built' if info['exists'] else hint})")
    if info["exists"]:
        click.echo("new options: " + ", ".join(f"{name}=" for name in info["options"])
                   + "  ([net] prune=1 freezes zero weights; prune_threshold=T zeroes |w| < T on save,"
                   " also per [convolutional]/[deconvolutional]/[connected] section)")
    click.echo(f"python binding: {info['binding_path'] if info['binding'] else hint}")
    click.echo(f"per-user folder: {info['home']}")
    click.echo("builds:")
    for b in info["builds"]:
        state = f"built ({b['flags']})" if b["built"] else "not built"
        click.echo(f"  {b['fork']:<8} {b['variant']:<7} {b['where']:<8} {b['tree']}: {state}")
