"""The quality section of ``make bench-detector``: what each way of pruning
the real yolov3-tiny keeps of the dense model's detections.

Every row is scored the same way: agreement mAP@0.5 and @0.5:0.95 with the
dense model on the *evaluation* split (its detections above 0.5 are the
ground truth; :func:`darknet_sparse.analysis.evaluate.evaluate_detector`, COCO's
evaluator).  Everything that is chosen or fitted uses the *training* split
only: calibration images, sensitivity images, the loop's training images.

Rows, at each total weight sparsity of ``LEVELS``:

- one-shot magnitude (every layer at the level) and one-shot global (one
  threshold over all layers): ``darknet-sparse threshold``;
- each of them + batch-norm recalibration on training images relative to
  the dense model (``darknet-sparse recalibrate --reference``);
- a sensitivity plan: ``sensitivity --images`` (deviation of every yolo
  head) on a sample of training images, once, then ``plan
  --target-sparsity`` and ``threshold --spec`` per level, alone and
  recalibrated;
- the loop (``loop --task detector``: the dense model's pseudo-labels on
  training images, ``prune=1`` retraining, one step per level of
  ``Budget.loop_levels`` in order, each step a row) and,
  with ``teacher``, the same loop with the dense model as teacher (alpha 1,
  the same iterations): each step's weights are a row.

The loops run in worker processes (this file with ``--loop-worker``) beside
the one-shot rows, so the two cores are both used; each worker records its
wall-clock and CPU time (its own and its children's, Darknet's training) at
every step.  Minutes are what making a row's model took, evaluation left
out; a plan row includes the whole sensitivity sweep, a loop row every step
up to it.  The dense model's detections on the evaluation images are
computed once and reused by every score.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import PARTS, Clock, SharedReference, agreement, flops, machine, parts  # noqa: E402

LEVELS = (0.3, 0.5, 0.7, 0.8)
#: agreement mAP@0.5 the issue asks for (level -> floor); 80% is reported as it comes.
TARGETS = {0.5: 0.90, 0.7: 0.80}
#: Levels whose best model is left as OUT/best-NN.weights (with the cfg beside it).
KEPT = (0.5, 0.7, 0.8)
#: The levels of the teacher loop's rows (issue 10: 70 and 80%).
TEACHER_ROWS = (0.7, 0.8)
DS = str(ROOT / ".venv" / "bin" / "darknet-sparse")


@dataclass
class Budget:
    """How much of the training split each method may use."""

    calibration_images: int = 64
    calibration_batch: int = 8
    sensitivity_images: int = 8
    sensitivity_levels: str = "0.5,0.7,0.9"
    loop_images: int = 64
    loop_iterations: int = 20
    loop_levels: tuple[float, ...] = (0.7, 0.8)  # the loops' steps, in order (each a row)
    choice_images: int = 8  # training images that choose the loops' mode (magnitude or global)
    teacher: bool = True
    minutes: float = 33.0  # after this, jobs not started are left out (reported as not run)
    loop_minutes: float = 27.0  # after this, a loop still running is stopped (its steps so far are scored)


@dataclass
class Row:
    method: str
    level: float
    weights: Path
    wall: float  # seconds making the model
    cpu: float
    map50: float | None = None
    map: float | None = None
    parts: dict[str, float] = field(default_factory=dict)  # mAP@0.5 on each part of the evaluation split
    sparsity: float = 0.0
    effective: float = 0.0  # effective FLOPs over dense


def run(command: list[str], log: Path) -> None:
    """One darknet-sparse command, its output appended to ``log``."""
    with open(log, "a", encoding="utf-8") as fp:
        fp.write(f"$ {shlex.join(command)}\n")
        fp.flush()
        done = subprocess.run(command, stdout=fp, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{shlex.join(command)} exited {done.returncode}; see {log}")


def pct(level: float) -> int:
    return round(level * 100)


def write_list(paths, path: Path) -> Path:
    path.write_text("".join(f"{p}\n" for p in paths))
    return path


def loop_command(args, budget: Budget, out: Path, train_list: Path, eval_list: Path, teacher: bool) -> list[str]:
    command = [DS, "loop", "--task", "detector", "--cfg", str(args.cfg), "-w", str(args.weights),
               "--images", str(train_list), "--eval-images", str(eval_list),
               "--sparsities", ",".join(f"{x:g}" for x in budget.loop_levels),
               "--iterations-per-step", str(budget.loop_iterations), "--mode", args.loop_mode, "-o", str(out)]
    return command + (["--teacher", str(args.weights)] if teacher else [])


def loop_worker(argv: list[str]) -> None:
    """``--loop-worker TIMES.json LOOP ARGS...``: run the loop in-process
    (through the CLI's own function), writing wall and CPU seconds at the
    start and after every step."""
    from darknet_sparse.workflow import loop as loop_

    times_path, command = Path(argv[0]), argv[1:]
    clock, marks = Clock(), []
    original = loop_.run

    def timed(settings, resume=False, on_progress=None, on_message=None):
        def progress(n):
            marks.append((n, *clock.read()))
            tmp = times_path.with_name(times_path.name + ".tmp")
            tmp.write_text(json.dumps(marks))
            tmp.replace(times_path)
            if on_progress:
                on_progress(n)
        return original(settings, resume, progress, on_message)

    loop_.run = timed
    from darknet_sparse.cli import main
    sys.argv = ["darknet-sparse", *command]
    main()


def start_loop(args, budget: Budget, out: Path, train_list: Path, eval_list: Path, teacher: bool, log: Path):
    command = loop_command(args, budget, out, train_list, eval_list, teacher)
    shutil.rmtree(out, ignore_errors=True)
    times = out.with_name(out.name + ".times.json")
    times.unlink(missing_ok=True)
    fp = open(log, "w", encoding="utf-8")
    fp.write(f"$ {shlex.join(command)}\n")
    fp.flush()
    process = subprocess.Popen(["nice", sys.executable, __file__, "--loop-worker", str(times), *command[1:]],
                               stdout=fp, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    return process, fp, times, command


# The worker processes of the one-shot, plan and scoring tasks: each holds
# the evaluation images and the dense model's detections on them.
_WORKER: dict = {}


def _init_worker(cfg: Path, dense: Path, evaluation: list[Path], seen: dict, log: Path) -> None:
    _WORKER.update(cfg=cfg, dense=dense, evaluation=evaluation, seen=seen, log=log)


def score(row: Row) -> Row:
    """``row`` with its agreement mAP, measured sparsity and effective FLOPs."""
    import darknet_sparse as ds
    from darknet_sparse.darknet.network import Network

    cfg = _WORKER["cfg"]
    clock = Clock()
    net = Network(cfg, row.weights)
    reference = SharedReference(None, _WORKER["seen"], net.detector_classes)
    report, row.parts = agreement(net, _WORKER["evaluation"], reference, reference_name=str(_WORKER["dense"]))
    row.map50, row.map = report.map50, report.map
    wf = ds.load(cfg, row.weights)
    row.sparsity = 1 - sum(int((wf.arrays(l.index)[p.name] != 0).sum()) for l in wf.model.layers
                           for p in l.prunable()) / sum(p.count for l in wf.model.layers for p in l.prunable())
    dense_flops, effective = flops(cfg, row.weights)
    row.effective = effective / dense_flops
    wall, cpu = clock.read()
    print(f"  {row.method:<40} {pct(row.level):>3}%  mAP@0.5 {fmt(row.map50)}  @.5:.95 {fmt(row.map)}  "
          f"sparsity {row.sparsity:.4f}  made in {row.wall / 60:.1f} min ({row.cpu / 60:.1f} CPU); "
          f"scored in {wall:.0f} s ({cpu:.0f} CPU)", flush=True)
    return row


def _made(method: str, level: float, weights: Path, clock: Clock, before: tuple[float, float] = (0, 0)) -> Row:
    wall, cpu = clock.read()
    return score(Row(method, level, weights, wall + before[0], cpu + before[1]))


def _recalibrated(row: Row, calibration: Path, batch: int) -> Row:
    clock = Clock()
    target = row.weights.with_name(row.weights.stem + "-recal.weights")
    run([DS, "recalibrate", "--cfg", str(_WORKER["cfg"]), "-w", str(row.weights), "--images", str(calibration),
         "--batch", str(batch), "--reference", str(_WORKER["dense"]), "-o", str(target)], _WORKER["log"])
    return _made(row.method + " + recalibration", row.level, target, clock, (row.wall, row.cpu))


def oneshot_task(mode: str, level: float, out: Path, calibration: Path, batch: int) -> list[Row]:
    """One-shot ``mode`` pruning at ``level``, then recalibrated: two rows."""
    clock = Clock()
    target = out / f"{mode}-{pct(level)}.weights"
    run([DS, "threshold", str(_WORKER["dense"]), "--cfg", str(_WORKER["cfg"]), "--mode", mode,
         "--sparsity", f"{level:g}", "-o", str(target)], _WORKER["log"])
    row = _made(f"one-shot {mode}", level, target, clock)
    return [row, _recalibrated(row, calibration, batch)]


def sensitivity_task(sample: Path, levels: str, csv: Path) -> tuple[float, float]:
    """The sweep (deviation of every head on ``sample``); its wall and CPU seconds."""
    clock = Clock()
    run([DS, "sensitivity", "--cfg", str(_WORKER["cfg"]), "-w", str(_WORKER["dense"]), "--images", str(sample),
         "--levels", levels, "--csv", str(csv)], _WORKER["log"])
    sweep = clock.read()
    print(f"  sensitivity sweep: {sweep[0] / 60:.1f} min ({sweep[1] / 60:.1f} CPU)", flush=True)
    return sweep


def plan_task(level: float, csv: Path, sweep: tuple[float, float], out: Path, calibration: Path,
              batch: int) -> list[Row]:
    """The plan for ``level`` from the sweep, pruned, then recalibrated: two rows."""
    clock = Clock()
    spec, target = out / f"plan-{pct(level)}.yaml", out / f"plan-{pct(level)}.weights"
    run([DS, "plan", str(csv), "--target-sparsity", f"{level:g}", "-o", str(spec)], _WORKER["log"])
    run([DS, "threshold", str(_WORKER["dense"]), "--cfg", str(_WORKER["cfg"]), "--spec", str(spec),
         "-o", str(target)], _WORKER["log"])
    row = _made("sensitivity plan", level, target, clock, sweep)
    return [row, _recalibrated(row, calibration, batch)]


LOCK = "quality.pid"


def busy(work: Path) -> int | None:
    """The process id of a quality run still going in ``work``, if any."""
    try:
        pid = int((work / LOCK).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid if pid != os.getpid() else None


def measure(args) -> tuple[list[str], list[tuple[str, bool]]]:
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / LOCK).write_text(str(os.getpid()))
    try:
        return _measure(args)
    finally:
        (args.work / LOCK).unlink(missing_ok=True)


def _measure(args) -> tuple[list[str], list[tuple[str, bool]]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from darknet_sparse.analysis.evaluate import REFERENCE_CONF, evaluate_detector
    from darknet_sparse.analysis.metrics import Remembered
    from darknet_sparse.darknet import images
    from darknet_sparse.darknet.detect import HIER, NMS, detect
    from darknet_sparse.darknet.network import Network

    budget = args.budget
    started = Clock()
    out = args.work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    log.write_text("")
    cfg, dense = args.cfg.resolve(), args.weights.resolve()
    train = images.image_paths(args.train)
    evaluation = images.image_paths(args.eval)

    # The dense model's own detections on the evaluation images, once.
    clock = Clock()
    reference = SharedReference(Network(cfg, dense))
    found = [p for p in evaluation if detect(reference, p, REFERENCE_CONF, HIER, NMS).found()]
    reference_seconds = clock.read()
    print(f"quality: {len(evaluation)} evaluation images ({len(found)} with dense detections), {len(train)} "
          f"training images; the dense model's detections in {reference_seconds[0]:.0f} s", flush=True)
    loop_eval = write_list(found[:4], out / "loop-eval.txt")
    loop_train = write_list(images.sample(train, budget.loop_images), out / "loop-train.txt")
    calibration = write_list(images.sample(train, budget.calibration_images, seed=1), out / "calibration.txt")
    sample = write_list(images.sample(train, budget.sensitivity_images, seed=2), out / "sensitivity.txt")

    # The loops' policy, chosen on training images: the one-shot mode that
    # agrees better with the dense model at the loops' first level.
    clock = Clock()
    choice = {}
    for mode in ("magnitude", "global"):
        target = out / f"choose-{mode}.weights"
        run([DS, "threshold", str(dense), "--cfg", str(cfg), "--mode", mode, "--sparsity",
             f"{budget.loop_levels[0]:g}", "-o", str(target)], log)
        choice[mode] = evaluate_detector(Network(cfg, target), images.sample(train, budget.choice_images, seed=3),
                                         reference=Remembered(reference.net)).map50 or 0.0
        target.unlink()
    args.loop_mode = max(choice, key=choice.get)
    args.loop_choice = (f"the loops' mode, {args.loop_mode}, chosen on {budget.choice_images} training images: "
                        f"one-shot agreement mAP@0.5 at {pct(budget.loop_levels[0])}% "
                        + ", ".join(f"{m} {v:.4f}" for m, v in choice.items())
                        + f" ({clock.read()[0] / 60:.1f} min)")
    print(f"  {args.loop_choice}", flush=True)
    loops = {"loop (pseudo-labels)": start_loop(args, budget, out / "loop", loop_train, loop_eval, False,
                                                out / "loop.log")}
    if budget.teacher:
        loops["loop with teacher (alpha 1)"] = start_loop(args, budget, out / "loop-teacher", loop_train,
                                                          loop_eval, True, out / "loop-teacher.log")

    rows: list[Row] = []
    batch = budget.calibration_batch
    # Most wanted first: the pool runs its jobs in order, and what the time
    # limit leaves undone is reported as not run.
    levels = sorted(args.levels, key=lambda x: (x not in TARGETS, x not in KEPT, x))
    deadline = started.wall + budget.minutes * 60
    loop_deadline = started.wall + budget.loop_minutes * 60
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(args.workers, context, initializer=_init_worker,
                               initargs=(cfg, dense, evaluation, reference.seen, log))
    csv = out / "sensitivity.csv"
    sweep_job = pool.submit(sensitivity_task, sample, budget.sensitivity_levels, csv)
    jobs = {pool.submit(oneshot_task, mode, level, out, calibration, batch): (f"one-shot {mode}", level)
            for level in levels for mode in ("magnitude", "global")}
    sweep, planned, scored, loop_notes, late = None, False, {}, [], []
    while True:
        if sweep_job.done() and not planned:
            planned = True
            if sweep_job.exception() is None:
                sweep = sweep_job.result()
                jobs.update({pool.submit(plan_task, level, csv, sweep, out, calibration, batch):
                             ("sensitivity plan", level) for level in levels})
            else:
                late.append(f"- sensitivity sweep failed: {sweep_job.exception()}")
        for method, (process, fp, times, command) in loops.items():
            marks = json.loads(times.read_text()) if times.exists() and times.read_text() else []
            folder = Path(command[command.index("-o") + 1])
            for step, wall, cpu in marks[1:]:
                if (method, step) not in scored:
                    level = budget.loop_levels[min(step, len(budget.loop_levels)) - 1]
                    row = Row(method, level, folder / f"step-{step:02d}.weights", wall - marks[0][1],
                              cpu - marks[0][2])
                    scored[method, step] = pool.submit(score, row)
                    jobs[scored[method, step]] = (method, row.level)
            if process.poll() is None and time.perf_counter() > loop_deadline:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait()
                late.append(f"- {method}: stopped at the time limit ({budget.loop_minutes:g} min) "
                            f"after {max(len(marks) - 1, 0)} of {len(budget.loop_levels)} steps")
        loops_done = all(p.poll() is not None for p, *_ in loops.values())
        if time.perf_counter() > deadline:
            for job, (method, level) in jobs.items():
                if not job.cancelled() and job.cancel():  # cancel() is True again for a cancelled job
                    late.append(f"- {method} at {pct(level)}%: not run (time limit, {budget.minutes:g} min)")
        if loops_done and planned and all(job.done() for job in jobs):
            break
        time.sleep(5)
    for method, (process, fp, times, command) in loops.items():
        fp.close()
        steps = sum(1 for m, _ in scored if m == method)
        if process.returncode and process.returncode != -signal.SIGTERM:
            loop_notes.append(f"- {method}: **failed** (exit {process.returncode} after {steps} steps); "
                              f"see `{Path(command[command.index('-o') + 1]).with_suffix('.log')}`")
        loop_notes.append(f"- {method}: `{shlex.join(['darknet-sparse', *command[1:]])}`")
    for job, (method, level) in jobs.items():
        if job.cancelled():
            continue
        if job.exception() is not None:
            late.append(f"- {method} at {pct(level)}%: **failed**: {job.exception()}")
            continue
        result = job.result()
        rows += result if isinstance(result, list) else [result]
    pool.shutdown()
    args.late = late
    if sweep is None:
        sweep = (0.0, 0.0)
    return report(args, rows, loop_notes, started, reference_seconds, sweep, evaluation, len(train))


def report(args, rows: list[Row], loop_notes: list[str], started: Clock, reference_seconds, sweep,
           evaluation: list, n_train: int) -> tuple[list[str], list[tuple[str, bool]]]:
    budget = args.budget
    best: dict[float, Row] = {}
    for row in rows:
        if row.map50 is not None and (row.level not in best or row.map50 > best[row.level].map50):
            best[row.level] = row
    kept = []
    for level in KEPT:
        if level in best:
            target = args.work / f"best-{pct(level)}.weights"
            shutil.copyfile(best[level].weights, target)
            shutil.copyfile(args.cfg, target.with_suffix(".cfg"))
            kept.append(f"`{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}` "
                        f"({best[level].method}, {best[level].map50:.4f})")

    wall, cpu = started.read()
    lines = [f"{args.cfg.name} + {args.weights.name} (COCO), scored by **agreement with the dense model**: "
             f"its detections above 0.5 on the {len(evaluation)} images of the evaluation split are the ground "
             "truth (COCO's evaluator through `darknet-sparse eval`'s code; not accuracy against human labels), "
             "also on its two parts apart: "
             + " and ".join(f"{len(chosen)} {part}" for part, chosen in parts(evaluation).items())
             + " (the video frames come from the two videos the training frames do; the photos show mostly "
             "objects no training frame shows). "
             f"Everything fitted or chosen uses the training split ({n_train} frames) only: "
             f"recalibration on {budget.calibration_images} of its images (passes of "
             f"{budget.calibration_batch}), the sensitivity sweep on {budget.sensitivity_images} "
             f"(levels {budget.sensitivity_levels}, deviation of both yolo heads), the loops on "
             f"{budget.loop_images} (pseudo-labels of the dense model above 0.5, or the dense model as "
             f"teacher with alpha 1), with steps at {', '.join(f'{pct(x)}%' for x in budget.loop_levels)} "
             f"in order from the dense model, {budget.loop_iterations} iterations each (batch 8 at the cfg's "
             "input, `prune=1`, then batch norm recalibrated relative to the dense model on 64 of the loop's "
             "training images); the budget leaves the loops no rows at other levels.",
             "",
             f"Machine: {machine()} at the end (shared with other work; read the CPU minutes). "
             f"Section: {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU (this process and its children; "
             "the loops ran in parallel with the one-shot rows).",
             "",
             "Minutes: making the model (evaluation not counted); plan rows include the whole sensitivity "
             f"sweep ({sweep[0] / 60:.1f} min, {sweep[1] / 60:.1f} CPU), loop rows every step up to that "
             "level, recalibration rows the one-shot before them. Effective FLOPs: the multiply-adds of "
             "non-zero weights over the dense model's.",
             "",
             "| sparsity | method | mAP@0.5 | mAP@0.5:0.95 | "
             + " | ".join(f"mAP@0.5 {part}" for part in PARTS) + " | measured sparsity | effective FLOPs | "
             "minutes (wall) | minutes (CPU) |",
             "|---:|:---|---:|---:|" + "---:|" * len(PARTS) + "---:|---:|---:|---:|"]
    for level in args.levels:
        for row in [r for r in rows if r.level == level]:
            mark = " **(best)**" if best.get(level) is row else ""
            by_part = " | ".join(fmt(row.parts.get(part)) for part in PARTS)
            lines.append(f"| {pct(level)}% | {row.method}{mark} | {fmt(row.map50)} | {fmt(row.map)} | {by_part} | "
                         f"{row.sparsity:.2%} | {row.effective:.1%} | {row.wall / 60:.2f} | "
                         f"{row.cpu / 60:.2f} |")
    if args.late:
        lines += ["", "Not run or failed:", *args.late]
    lines += ["", "Loops (" + args.loop_choice + "):", *loop_notes, "",
              "Best model at each level (by agreement mAP@0.5 on the evaluation split), with the cfg beside it: "
              + ("; ".join(kept) or "none"), ""]
    teacher_rows = [(r, next((p for p in rows if p.method.startswith("loop (") and p.level == r.level), None))
                    for r in rows if "teacher" in r.method and r.level in TEACHER_ROWS]
    for with_teacher, pseudo in teacher_rows:
        if pseudo is not None and with_teacher.map50 is not None and pseudo.map50 is not None:
            gap, left = 1 - pseudo.map50, 1 - with_teacher.map50
            lines.append(f"- {pct(with_teacher.level)}%, the same {budget.loop_iterations} iterations a step: "
                         f"pseudo-labels {pseudo.map50:.4f}, teacher {with_teacher.map50:.4f} (the teacher "
                         f"closes {(gap - left) / gap:.0%} of the pseudo-label loop's gap to 1; on the parts "
                         "apart, pseudo-labels against teacher: "
                         + ", ".join(f"{part} {fmt(pseudo.parts.get(part))} against "
                                     f"{fmt(with_teacher.parts.get(part))}" for part in PARTS) + ")"
                         if gap > 0 else f"- {pct(with_teacher.level)}%: pseudo-labels reach 1.0")
    targets = []
    for level, floor in TARGETS.items():
        if level in best:
            targets.append((f"{pct(level)}%: agreement mAP@0.5 >= {floor:.2f} (best: {best[level].method}, "
                            f"{best[level].map50:.4f})", best[level].map50 >= floor))
        elif level in args.levels:
            targets.append((f"{pct(level)}%: agreement mAP@0.5 >= {floor:.2f} (no row scored)", False))
    if 0.8 in best:
        lines.append(f"- 80% (no target, reported as it comes): best {best[0.8].method}, "
                     f"mAP@0.5 {best[0.8].map50:.4f}")
    return lines, targets


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--loop-worker":
    loop_worker(sys.argv[2:])
