"""One-shot pruning with the second-order solver (``darknet-sparse
oneshot``), no retraining: rows for benchmarks/detector.md and quality.md.

yolov3-tiny (models/yolov3-tiny.{cfg,weights}): calibrated on
``--max-images`` images of the *training* split (data/images/train, a
seeded sample), scored by agreement mAP@0.5 with the dense model on the
*evaluation* split (data/images/eval; the dense model's detections above
0.5 are the ground truth, COCO's evaluator), the whole split and its two
parts (video frames, photos) apart, as bench_detector_quality.py scores
its rows.  Fashion-MNIST (cfg/fashion.{cfg,weights}, after ``make
fashion``): calibrated on training images, top-1 of ``darknet classifier
valid`` on the 10,000 test images.  Minutes are the wall time of the
``oneshot`` call (calibration, solving, recalibration, writing), not of
the scoring.

    .venv/bin/python benchmarks/bench_oneshot.py --levels 0.7,0.8 --fashion-levels 0.9

prints one Markdown table per model and writes them to ``--out``/oneshot.md.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import PARTS, agreement, machine  # noqa: E402

from darknet_sparse.darknet import images  # noqa: E402
from darknet_sparse.darknet.examples import classifier_top1  # noqa: E402
from darknet_sparse.darknet.home import find_darknet  # noqa: E402
from darknet_sparse.darknet.network import Network  # noqa: E402
from darknet_sparse.format.files import load  # noqa: E402
from darknet_sparse.pruning import policies  # noqa: E402
from darknet_sparse.workflow import oneshot  # noqa: E402

YOLO_CFG, YOLO_WEIGHTS = ROOT / "models" / "yolov3-tiny.cfg", ROOT / "models" / "yolov3-tiny.weights"
FASHION_CFG, FASHION_WEIGHTS = ROOT / "cfg" / "fashion.cfg", ROOT / "cfg" / "fashion.weights"
FASHION_DATA = ROOT / "data" / "fashion" / "fashion.data"
FASHION_DENSE = 0.9103  # cfg/fashion.top1
DAMP: list = [None]  # --damp (None: the command's default for the model)
RECALIBRATE = [True]  # not --no-recalibrate
CORRECT: list = [None]  # None: as the recalibration; --no-correct-stats: False


def _recal() -> str:
    return (("" if RECALIBRATE[0] else ", no recalibration")
            + (", statistics not corrected per layer" if CORRECT[0] is False else ""))


def _levels(text: str) -> list[float]:
    return [float(item) for item in text.split(",") if item.strip()]


def _prune(cfg: Path, weights: Path, calibration: list[Path], mode: str, level: float, out: Path,
           exclude: str | None, spec: Path | None = None) -> tuple[oneshot.OneshotResult, float]:
    wf = load(cfg, weights)
    start = time.perf_counter()
    if spec is not None:  # --mode plan: the plan's per-layer levels
        kwargs = dict(policy=None, spec=policies.read_spec(spec))
    elif mode == "obs":
        kwargs = dict(allocate="obs", sparsity=level)
    else:
        kwargs = dict(policy=policies.POLICIES[mode](level))
    result = oneshot.oneshot(wf, out, calibration, exclude=exclude, damp=DAMP[0], recalibrate=RECALIBRATE[0],
                             correct_stats=CORRECT[0],
                             on_stage=lambda text: print(f"  {time.perf_counter() - start:7.1f}s {text}",
                                                         file=sys.stderr, flush=True), **kwargs)
    print(oneshot.table(result), file=sys.stderr, flush=True)
    return result, (time.perf_counter() - start) / 60


def plans(args) -> dict[float, Path]:
    """``--mode plan``: the sensitivity sweep bench_detector_quality.py runs
    (deviation of every yolo head on 8 training images drawn with seed 2, levels
    0.5, 0.7, 0.9), once, then ``plan --target-sparsity L`` for each level."""
    sample = args.out / "sensitivity.txt"
    sample.write_text("".join(f"{p}\n" for p in images.sample(images.image_paths(args.train), 8, seed=2)))
    csv = args.out / "sensitivity.csv"
    ds = [sys.executable, "-m", "darknet_sparse"]
    start = time.perf_counter()
    subprocess.run(ds + ["sensitivity", "--cfg", str(YOLO_CFG), "-w", str(YOLO_WEIGHTS), "--images", str(sample),
                         "--levels", "0.5,0.7,0.9", "--csv", str(csv)], check=True, stdout=subprocess.DEVNULL)
    print(f"  sensitivity sweep: {(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr, flush=True)
    found = {}
    for level in args.levels:
        found[level] = args.out / f"plan-{level:g}.yaml"
        subprocess.run(ds + ["plan", str(csv), "--target-sparsity", f"{level:g}", "-o", str(found[level])],
                       check=True, stdout=subprocess.DEVNULL)
    return found


def yolo(args) -> list[str]:
    calibration = images.sample(images.image_paths(args.train), args.max_images)
    evaluation = images.image_paths(args.eval)
    reference = Network(YOLO_CFG, YOLO_WEIGHTS)
    specs = plans(args) if args.mode == "plan" else {}
    rows = []
    for level in args.levels:
        out = args.out / f"yolov3-tiny-oneshot-{args.mode}-{level:g}.weights"
        result, minutes = _prune(YOLO_CFG, YOLO_WEIGHTS, calibration, args.mode, level, out, args.exclude,
                                 specs.get(level))
        report, by_part = agreement(Network(YOLO_CFG, out), evaluation, reference,
                                    reference_name=str(YOLO_WEIGHTS))
        row = (f"| oneshot {args.mode}, damp {result.damp:g} ({len(calibration)} calibration images{_recal()}) | {level:.0%} | "
               f"{result.sparsity:.4f} | {report.map50:.3f} | "
               + " | ".join(f"{by_part[part]:.3f}" for part in PARTS) + f" | {minutes:.1f} |")
        print(row, flush=True)
        rows.append(row)
    header = ["| method | target | sparsity | agreement mAP@0.5 (whole) | "
              + " | ".join(PARTS) + " | minutes |", "|---" * (5 + len(PARTS)) + "|"]
    return [f"yolov3-tiny, {len(evaluation)} evaluation images; {machine()}", ""] + header + rows


def fashion(args) -> list[str]:
    train = [line for line in (ROOT / "data" / "fashion" / "train.list").read_text().splitlines() if line]
    calibration = images.sample([Path(p) for p in train], args.max_images)
    darknet = find_darknet()
    rows = []
    for level in args.fashion_levels:
        out = args.out / f"fashion-oneshot-{args.mode}-{level:g}.weights"
        result, minutes = _prune(FASHION_CFG, FASHION_WEIGHTS, calibration, args.mode, level, out, None)
        top1 = classifier_top1(darknet, FASHION_DATA, FASHION_CFG, out)
        row = (f"| oneshot {args.mode}, damp {result.damp:g} ({len(calibration)} calibration images{_recal()}) | {level:.0%} | "
               f"{result.sparsity:.4f} | {top1:.4f} | {top1 - FASHION_DENSE:+.4f} | {minutes:.1f} |")
        print(row, flush=True)
        rows.append(row)
    return ([f"Fashion-MNIST, top-1 on 10,000 test images (dense {FASHION_DENSE}); {machine()}", "",
             "| method | target | sparsity | top-1 | vs dense | minutes |", "|---|---|---|---|---|---|"] + rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=_levels, default=[0.5, 0.7, 0.8, 0.9], help="yolov3-tiny sparsities")
    parser.add_argument("--fashion-levels", type=_levels, default=[0.9, 0.95], help="Fashion-MNIST sparsities")
    parser.add_argument("--mode", default="global", choices=tuple(policies.POLICIES) + ("obs", "plan"),
                        help="How the layers' levels are chosen (obs: the OBS allocation; plan: a sensitivity "
                             "plan's, yolov3-tiny only).")
    parser.add_argument("--exclude", help="yolov3-tiny layers to leave alone (oneshot --exclude).")
    parser.add_argument("--max-images", type=int, default=oneshot.MAX_IMAGES)
    parser.add_argument("--damp", type=float, default=None,
                        help="default: the command's for the model (1 for yolov3-tiny, 0.01 for Fashion-MNIST)")
    parser.add_argument("--no-recalibrate", action="store_true", help="leave out the batch-norm recalibration")
    parser.add_argument("--no-correct-stats", action="store_true",
                        help="solve without moving each solved layer's batch-norm statistics first")
    parser.add_argument("--train", type=Path, default=ROOT / "data" / "images" / "train")
    parser.add_argument("--eval", type=Path, default=ROOT / "data" / "images" / "eval")
    parser.add_argument("--only", choices=("yolo", "fashion"))
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench-oneshot")
    args = parser.parse_args()
    if args.mode == "plan" and args.only != "yolo":
        parser.error("--mode plan is for yolov3-tiny: give --only yolo")
    DAMP[0] = args.damp
    RECALIBRATE[0] = not args.no_recalibrate
    CORRECT[0] = False if args.no_correct_stats else None
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []
    if args.only in (None, "yolo") and args.levels:
        lines += yolo(args) + [""]
    if args.only in (None, "fashion") and args.fashion_levels:
        lines += fashion(args)
    text = "\n".join(lines) + "\n"
    (args.out / "oneshot.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
