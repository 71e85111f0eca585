"""make bench-detector: the real COCO yolov3-tiny, pruned, on real images.

Writes ``benchmarks/detector.md`` (through a temp file) with the command
that made it and one section per part:

- *Speed* (:mod:`bench_detector_speed`): forward time at 0/50/70/90%
  magnitude sparsity on stock and patched Darknet (1 and 2 threads) and
  OpenCV's DNN module (1 and 2 threads).
- *Quality* (:mod:`bench_detector_quality`): agreement mAP with the dense
  model on the evaluation split at 30/50/70/80% total weight sparsity for
  one-shot magnitude and global pruning, recalibration, a sensitivity plan
  and the loop (with and without the teacher); the best model at 50, 70
  and 80% is left in ``out/bench-detector``.
- *AlexeyAB* (:mod:`bench_detector_alexeyab`): the dense model and those
  best models run by AlexeyAB's Darknet: agreement mAP@0.5 against the
  fork's own run of the dense model, against pjreddie's (the cross-fork
  number) and against pjreddie's run of the same model, beside pjreddie's
  own column; forward time in the patched fork (1 and 2 threads) and its
  stock build.  A best model not there is made the cheap way (one-shot
  global + recalibration) and named as a stand-in.

A section left out with ``--skip`` keeps its text from the existing
``detector.md``, so one part can be rerun alone.

A section is a function of the parsed arguments that returns Markdown lines
and targets ``(what, met)``; each target is printed and written as PASS or
FAIL.  Always exits 0 after writing: it is a report.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_detector_alexeyab  # noqa: E402
import bench_detector_quality  # noqa: E402
import bench_detector_speed  # noqa: E402
from _common import ROOT, command_line  # noqa: E402

OUT = ROOT / "benchmarks" / "detector.md"


def speed(args) -> tuple[list[str], list[tuple[str, bool]]]:
    return bench_detector_speed.measure(args.cfg, args.weights, bench_detector_speed.LEVELS, args.rounds,
                                        args.repeat, args.omp_wait_policy)


def quality(args) -> tuple[list[str], list[tuple[str, bool]]]:
    args.budget = bench_detector_quality.Budget(
        calibration_images=args.calibration_images, calibration_batch=args.calibration_batch,
        sensitivity_images=args.sensitivity_images, sensitivity_levels=args.sensitivity_levels,
        loop_images=args.loop_images, loop_iterations=args.loop_iterations, loop_levels=args.loop_levels,
        teacher=not args.no_teacher, minutes=args.minutes, loop_minutes=args.loop_minutes)
    return bench_detector_quality.measure(args)


def alexeyab(args) -> tuple[list[str], list[tuple[str, bool]]]:
    return bench_detector_alexeyab.measure(args)


#: (title, section function, what --skip calls it); AlexeyAB after Quality, whose best models it runs.
SECTIONS = (("Speed", speed, "speed"), ("Quality", quality, "quality"), ("AlexeyAB", alexeyab, "alexeyab"))


def old_sections(path: Path) -> dict[str, list[str]]:
    """The ``## `` sections of an existing report, by title."""
    found: dict[str, list[str]] = {}
    title = None
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("## "):
                title = line[3:].strip()
                found[title] = []
            if title is not None:
                found[title].append(line)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", type=Path, default=bench_detector_speed.CFG)
    parser.add_argument("--weights", type=Path, default=bench_detector_speed.WEIGHTS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--skip", action="append", default=[], choices=[key for _, _, key in SECTIONS],
                        help="leave a section out (repeatable)")
    parser.add_argument("--rounds", type=int, default=3, help="speed and alexeyab: interleaved rounds")
    parser.add_argument("--repeat", type=int, default=3, help="speed and alexeyab: forwards per timed run")
    parser.add_argument("--omp-wait-policy", choices=("passive", "active", "default"), default="passive")
    quality_args = parser.add_argument_group("quality")
    quality_args.add_argument("--train", type=Path, default=ROOT / "data" / "images" / "train.txt",
                              help="training/calibration split (list or folder)")
    quality_args.add_argument("--eval", type=Path, default=ROOT / "data" / "images" / "eval.txt",
                              help="evaluation split")
    quality_args.add_argument("--work", type=Path, default=ROOT / "out" / "bench-detector",
                              help="models, logs and best-NN.weights")
    quality_args.add_argument("--levels", type=lambda t: tuple(float(x) for x in t.split(",")),
                              default=bench_detector_quality.LEVELS)
    budget = bench_detector_quality.Budget()
    quality_args.add_argument("--calibration-images", type=int, default=budget.calibration_images)
    quality_args.add_argument("--calibration-batch", type=int, default=budget.calibration_batch)
    quality_args.add_argument("--sensitivity-images", type=int, default=budget.sensitivity_images)
    quality_args.add_argument("--sensitivity-levels", default=budget.sensitivity_levels)
    quality_args.add_argument("--loop-images", type=int, default=budget.loop_images)
    quality_args.add_argument("--loop-iterations", type=int, default=budget.loop_iterations,
                              help="retraining batches per loop step")
    quality_args.add_argument("--workers", type=int, default=2,
                              help="processes for the one-shot, plan and scoring rows (the loops run beside them)")
    quality_args.add_argument("--minutes", type=float, default=budget.minutes,
                              help="quality's time limit: jobs not started by then are reported as not run")
    quality_args.add_argument("--loop-minutes", type=float, default=budget.loop_minutes,
                              help="a loop still running then is stopped; its finished steps are scored")
    quality_args.add_argument("--loop-levels", type=lambda t: tuple(float(x) for x in t.split(",")),
                              default=budget.loop_levels, help="the loops' steps (each scored as a row)")
    quality_args.add_argument("--no-teacher", action="store_true", help="leave out the teacher loop")
    alexeyab_args = parser.add_argument_group("alexeyab (also --eval, --work, --train, --calibration-*)")
    alexeyab_args.add_argument("--alexeyab-max-images", type=int, default=None,
                               help="score on a sample of N evaluation images (a check run; default: all)")
    args = parser.parse_args(argv)

    begun = time.perf_counter()
    command = command_line()
    print(f"$ {command}")
    text = ["# yolov3-tiny (COCO) on real images", "",
            f"Made by `make bench-detector` (`{command}`), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
            ""]
    running = bench_detector_quality.busy(args.work)
    if "quality" not in args.skip and running:
        print(f"Quality: another run (pid {running}) is writing {args.work}; its section is kept as it is")
        args.skip.append("quality")
    if "alexeyab" not in args.skip and running:
        print(f"AlexeyAB: another quality run (pid {running}) is writing the best models in {args.work}; "
              "its section is kept as it is")
        args.skip.append("alexeyab")
    parts = []
    for title, section, key in SECTIONS:
        if key in args.skip:
            parts.append(title)  # its text is read from the file when this one is written
            continue
        start = time.perf_counter()
        lines, targets = section(args)
        made = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
        part = [f"## {title}", "", f"This section: `{command}`, {made}.", "", *lines, ""]
        part += [f"- target {what}: **{'PASS' if met else 'FAIL'}**" for what, met in targets]
        part += ["", f"({time.perf_counter() - start:.0f} s)", ""]
        print("\n".join(part))
        parts.append(part)
    # Skipped sections as the file has them now (another run may have rewritten them meanwhile).
    kept = old_sections(args.out)
    reused = [part for part in parts if isinstance(part, str) and part in kept]
    if reused:
        text += [f"Kept from an earlier run (see the section's own line, if any): {', '.join(reused)}.", ""]
    for part in parts:
        text += kept.get(part, []) if isinstance(part, str) else part
    text += [f"(This run: {time.perf_counter() - begun:.0f} s wall for the sections it made.)", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text("\n".join(text))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
