"""Structured pruning (``slim``) of the real COCO yolov3-tiny: quality and speed.

At each level (30% and 50% of the dense FLOPs removed, ``--target-flops``):

(a) one-shot: ``darknet_sparse.slim.slim`` on the official weights;
(b) (a) recalibrated: batch-norm statistics re-estimated on training images
    (``darknet_sparse.recalibrate``; weights, biases, scales unchanged);
(c) sparsity training, then slim, then retraining: the dense model trained
    with ``[net] slim=λ`` (patches/0021) for a few iterations, slimmed to
    the level, retrained, both trainings distilled from the dense model
    (``distill_alpha=1``, patches/0020: no labels needed) in the patched
    Darknet on ``data/images/train``, at a reduced input and batch (as the
    loop's retraining cfg: random=0, burn_in=0) and a fixed number of
    iterations.  λ is chosen so that the penalty alone (with the cfg's
    momentum) would move every |γ| by the |γ| threshold of the dense
    model's 50% choice: the channels slim then removes are driven to 0
    while distillation keeps the others' outputs.  The retrained model is
    then recalibrated as in (b) (training ran at a smaller input).

Quality is agreement mAP@0.5 (and @0.5:0.95) with the dense model on
``data/images/eval`` (``darknet_sparse.evaluate.evaluate_detector``: the
dense model's detections above 0.5 are the ground truth).  Speed is the
median seconds of one 416x416 forward in stock Darknet (one thread: the
stock build has no OpenMP), OpenCV's DNN (1 and 2 threads) and the patched
Darknet (1 thread, and 2 threads in the OPENMP=1 build), interleaved rounds
as in ``bench_detector_speed.py``; the last row is (c) at 50% then pruned
50% by magnitude, so the patched sparse forward skips its zeros.  Training
and evaluation record wall and CPU seconds: the machine is shared.

Needs ``make models images darknet darknet-stock darknet-omp binding``.
Writes ``benchmarks/slim.md`` (``--output``) and exits 0: it is a report.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import darknet_sparse as ds  # noqa: E402
from _common import (BUILDS, ROOT, OpenCV, command_line, compile_driver, driver_timer, machine,  # noqa: E402
                     median_run)
from darknet_sparse import images as images_  # noqa: E402
from darknet_sparse import pseudolabels, runner  # noqa: E402
from darknet_sparse import recalibrate as recalibrate_  # noqa: E402
from darknet_sparse.slim import choose, slim  # noqa: E402

CFG = ROOT / "models" / "yolov3-tiny.cfg"
WEIGHTS = ROOT / "models" / "yolov3-tiny.weights"
TRAIN = ROOT / "data" / "images" / "train"
EVAL = ROOT / "data" / "images" / "eval"
LEVELS = (0.3, 0.5)
TARGET_LEVEL, TARGET_MAP, TARGET_SPEEDUP = 0.5, 0.85, 1.8
#: Columns: (name, Darknet build or None for OpenCV, threads).
ENGINES = (("stock 1t", "stock", 1), ("OpenCV 1t", None, 1), ("OpenCV 2t", None, 2),
           ("patched 1t", "patched", 1), ("patched 2t", "patched-omp", 2))
SPARSE = 0.5
SPARSE_ROW = f"c-{TARGET_LEVEL:.0%}+{SPARSE:.0%}"


class Remembered:
    """A reference network whose detections are computed once per image."""

    def __init__(self, net):
        self.net, self.seen = net, {}

    def detect(self, image, thresh, hier=0.5, nms=0.45):
        key = (str(image), thresh, hier, nms)
        if key not in self.seen:
            boxes, probs, objectness, size = self.net.detect(image, thresh, hier, nms)
            self.seen[key] = (boxes.copy(), probs.copy(), objectness.copy(), size)
        return self.seen[key]

    def detector_error(self):
        return self.net.detector_error()

    @property
    def detector_classes(self):
        return self.net.detector_classes


class Clock:
    """Wall seconds and CPU seconds (this process and its finished children)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, self._cpu() - self.cpu


def gammas(cfg: Path, weights: Path) -> np.ndarray:
    wf = ds.load(cfg, weights)
    return np.concatenate([np.abs(wf.arrays(layer.index)["scales"]) for layer in wf.model.layers
                           if "scales" in wf.arrays(layer.index)])


def momentum_gain(momentum: float, iterations: int) -> float:
    """How far a constant gradient g moves a value in ``iterations`` Darknet
    updates with momentum, in units of rate * g."""
    return sum((1 - momentum ** k) / (1 - momentum) for k in range(1, iterations + 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default=",".join(f"{lv:g}" for lv in LEVELS))
    parser.add_argument("--train-images", type=int, default=200, help="training images used (evenly spaced)")
    parser.add_argument("--calibration-images", type=int, default=24)
    parser.add_argument("--eval-images", type=int, default=0, help="0: all of data/images/eval")
    parser.add_argument("--size", type=int, default=160, help="training input (multiple of 32)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sparsity-iterations", type=int, default=10)
    parser.add_argument("--retrain-iterations", type=int, default=12)
    parser.add_argument("--rate", type=float, default=0.001, help="learning rate of both trainings")
    parser.add_argument("--rank", choices=("gamma", "layer"), default="gamma",
                        help="slim's channel score: |gamma|, or |gamma| over its layer's mean")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="forwards per timed run")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-slim")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "slim.md")
    args = parser.parse_args(argv)
    levels = [float(v) for v in args.levels.split(",")]
    for needed in (CFG, WEIGHTS, TRAIN, EVAL):
        if not needed.exists():
            raise SystemExit(f"Error: {needed} missing: run make models images")
    darknet = BUILDS["patched"] / "darknet"
    runner.check_binary(darknet)
    os.environ["OMP_WAIT_POLICY"] = "passive"
    started, load_before = Clock(), machine()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "backup").mkdir()

    from darknet_sparse.darknet import Network
    from darknet_sparse.evaluate import evaluate_detector
    eval_paths = images_.image_paths(EVAL)
    if args.eval_images:
        eval_paths = eval_paths[:args.eval_images]
    train_all = images_.image_paths(TRAIN)
    pick = np.linspace(0, len(train_all) - 1, min(args.train_images, len(train_all))).round().astype(int)
    train_paths = [train_all[i] for i in pick]
    calib = np.linspace(0, len(train_all) - 1, min(args.calibration_images, len(train_all))).round().astype(int)
    calib_paths = [train_all[i] for i in calib]

    reference = Remembered(Network(CFG, WEIGHTS))
    rows: list[dict] = []
    stages: list[tuple[str, float, float]] = []

    def score(row: dict) -> dict:
        clock = Clock()
        report = evaluate_detector(Network(row["cfg"], row["weights"]), eval_paths, reference=reference,
                                   reference_name=str(WEIGHTS))
        row["map50"], row["map"] = report.map50, report.map
        stages.append((f"evaluate {row['name']}", *clock.read()))
        rows.append(row)
        print(f"{row['name']}: agreement mAP@0.5 {row['map50']:.4f}", file=sys.stderr, flush=True)
        return row

    def slimmed(name: str, weights: Path, level: float, cfg: Path = CFG) -> dict:
        target = work / f"{name}.weights"
        result = slim(ds.load(cfg, weights), target, target_flops=level, rank=args.rank)
        totals = result.totals
        return {"name": name, "weights": target, "cfg": result.cfg, "level": level,
                "params": totals["params_after"], "bflops": totals["bflops_after"],
                "removed": totals["flops_removed"], "arch": name}

    labelled = pseudolabels.prepare(None, train_paths, work / "pseudo")  # links and train.list; A=1: no labels
    (work / "train.data").write_text(runner.private_data("classes=80\n", work / "backup", labelled.train_list))
    shape = {"width": args.size, "height": args.size, "batch": args.batch, "subdivisions": 1}
    sections = {"yolo": {"random": 0}}
    (work / "teacher.cfg").write_text(runner.set_options(CFG.read_text(), shape, sections))
    momentum = ds.load_model(CFG).net.get_float("momentum", 0.9)

    def train(name: str, cfg: Path, weights: Path, iterations: int, extra: dict) -> Path:
        clock = Clock()
        options = dict(shape, burn_in=0, distill_cfg=work / "teacher.cfg", distill_weights=WEIGHTS,
                       distill_temperature=1, distill_alpha=1, **extra)
        train_cfg = work / f"{name}.train.cfg"
        train_cfg.write_text(runner.retrain_cfg(cfg.read_text(), iterations, args.rate, options, sections))
        into = work / f"{name}.weights"
        runner.train(darknet, "detector", work / "train.data", train_cfg, weights, work / "backup",
                     work / f"{name}.log", into)
        stages.append((f"train {name} ({iterations} iterations)", *clock.read()))
        return into

    # The dense model and the one-shot rows.
    dense_model = ds.load(CFG, WEIGHTS)
    dense_params = sum(p.count for layer in dense_model.model.layers for p in layer.params)
    first = slim(dense_model, None, target_flops=levels[0]).totals
    # The reference: its agreement with itself is 1 by definition, so it is not run.
    rows.append({"name": "dense", "weights": WEIGHTS, "cfg": CFG, "level": 0.0, "params": dense_params,
                 "bflops": first["bflops_before"], "removed": 0.0, "arch": "dense", "map50": None, "map": None})

    def recalibrated(row: dict, name: str) -> dict:
        clock = Clock()
        net = recalibrate_.calibration_network(row["cfg"], row["weights"], batch=8)
        x = recalibrate_.ImageFiles(calib_paths, net.input_shape, "letterbox")
        recalibrate_.recalibrate(net, ds.load_model(row["cfg"]), x)
        target = work / f"{name}.weights"
        net.save(target)
        shutil.copy(row["cfg"], work / f"{name}.cfg")
        stages.append((f"recalibrate {row['name']} ({len(x)} images)", *clock.read()))
        return dict(row, name=name, weights=target, cfg=work / f"{name}.cfg")

    for level in levels:
        one_shot = score(slimmed(f"a-{level:.0%}", WEIGHTS, level))
        score(recalibrated(one_shot, f"b-{level:.0%}"))

    # (c): sparsity training, slim, retrain.
    threshold = choose(dense_model, target_flops=TARGET_LEVEL).threshold  # in |gamma|: what slim=λ moves
    lam = threshold / (args.rate * momentum_gain(momentum, args.sparsity_iterations))
    before = gammas(CFG, WEIGHTS)
    sparse_trained = train("sparsity", CFG, WEIGHTS, args.sparsity_iterations, {"slim": f"{lam:.6g}"})
    after = gammas(CFG, sparse_trained)
    c50 = None
    for level in levels:
        row = slimmed(f"c-{level:.0%}.slim", sparse_trained, level)
        retrained = train(f"c-{level:.0%}", row["cfg"], row["weights"], args.retrain_iterations, {})
        shutil.copy(row["cfg"], work / f"c-{level:.0%}.retrained.cfg")
        row = dict(row, name=f"c-{level:.0%}.retrained", weights=retrained, cfg=work / f"c-{level:.0%}.retrained.cfg")
        row = score(dict(recalibrated(row, f"c-{level:.0%}"), arch=f"c-{level:.0%}"))
        if level == TARGET_LEVEL:
            c50 = row
    if c50 is not None:
        name = SPARSE_ROW
        target = work / f"{name}.weights"
        ds.threshold(ds.load(c50["cfg"], c50["weights"]), target, ds.Magnitude(SPARSE))
        shutil.copy(c50["cfg"], work / f"{name}.cfg")
        score(dict(c50, name=name, weights=target, cfg=work / f"{name}.cfg", arch=name))

    # Speed: one file per architecture; (b) shares (a)'s.
    clock = Clock()
    archs = {row["arch"]: row for row in rows if row["arch"] == row["name"] or row["name"] == "dense"}
    drivers = {build: compile_driver(build, work) for _, build, _ in ENGINES if build}
    dnns = {name: OpenCV(row["cfg"]) for name, row in archs.items()}
    runs = {arch: {engine: [] for engine, _, _ in ENGINES} for arch in archs}
    for r in range(args.rounds):
        forward = r % 2 == 0
        for arch in list(archs) if forward else list(archs)[::-1]:
            row = archs[arch]
            for engine, build, threads in ENGINES if forward else ENGINES[::-1]:
                if build and build.startswith("patched") and arch not in ("dense", SPARSE_ROW):
                    continue  # the patched build matters where there are zeros to skip
                timer = (driver_timer(drivers[build], row["cfg"], args.repeat, threads) if build
                         else dnns[arch].timer(args.repeat, threads))
                runs[arch][engine].append(timer(row["weights"]))
    cells = {arch: {engine: median_run(r) if r else None for engine, r in by.items()}
             for arch, by in runs.items()}
    stages.append((f"time {len(archs)} files x {len(ENGINES)} engines x {args.rounds} rounds", *clock.read()))
    total = started.read()
    write(args, rows, cells, stages, total, load_before, before, after, lam, threshold, momentum,
          len(train_paths), len(eval_paths), dnns["dense"].version)


def write(args, rows, cells, stages, total, load_before, before, after, lam, threshold, momentum,
          n_train, n_eval, cv_version) -> None:
    names = [engine for engine, _, _ in ENGINES]
    dense = cells["dense"]
    lines = [
        "# Structured pruning (slim) of yolov3-tiny",
        "",
        f"Made by `{command_line()}` (`make bench-slim`) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{machine()} (at the start: {load_before.split('load average ')[1]}); {total[0]:.0f} s wall, "
        f"{total[1]:.0f} s CPU in all.",
        "",
        f"models/yolov3-tiny.cfg + yolov3-tiny.weights (COCO). Agreement with the dense model on the {n_eval} "
        "images of data/images/eval (its detections above 0.5 are the ground truth). (a) one-shot "
        f"`slim --target-flops --rank {args.rank}`; (b) (a) with batch-norm statistics recalibrated on "
        f"{args.calibration_images} training images; (c) the dense model trained {args.sparsity_iterations} "
        f"iterations with `slim={lam:.4g}` (λ such that the penalty alone moves |γ| by {threshold:.3f}, "
        f"the |γ| threshold of the dense model's 50% choice, at rate {args.rate:g} and momentum {momentum:g}), "
        f"slimmed, then retrained {args.retrain_iterations} iterations and recalibrated as (b); both trainings in the patched Darknet, "
        f"distilled from the dense model (distill_alpha=1, no labels), {args.size}x{args.size} input, batch "
        f"{args.batch}, random=0, on {n_train} of data/images/train. "
        f"Last row: (c) at 50% then {SPARSE:.0%} of every conv layer's weights zeroed by magnitude.",
        "",
        f"|γ| of the dense model: median {np.median(before):.3f}, below 0.1: {np.mean(before < 0.1):.1%}; "
        f"after sparsity training: median {np.median(after):.3f}, below 0.1: {np.mean(after < 0.1):.1%}.",
        "",
        "Seconds per 416x416 forward (wall clock, median of "
        f"{args.rounds} interleaved rounds of {args.repeat} forwards); speed-up over the dense model in the "
        f"same engine. OpenCV {cv_version}; stock Darknet has no OpenMP build here (1 thread only); "
        "patched 2t is the OPENMP=1 build.",
        "",
        "| model | FLOPs removed | BFLOPs | agreement mAP@0.5 | mAP@0.5:0.95 | params | file MB | "
        + " | ".join(names) + " | stock speed-up | OpenCV 1t speed-up | OpenCV 2t speed-up |",
        "|---|" + "---:|" * (len(names) + 9),
    ]
    for row in rows:
        c = cells[row["arch"]]
        size = os.path.getsize(row["weights"]) / 1e6
        speed = " | ".join("-" if c[n] is None else f"{c[n].wall:.3f}" for n in names)
        ups = " | ".join(f"{dense[n].wall / c[n].wall:.2f}x" for n in ("stock 1t", "OpenCV 1t", "OpenCV 2t"))
        m50 = "(reference)" if row["name"] == "dense" else "n/a" if row["map50"] is None else f"{row['map50']:.4f}"
        m = "(reference)" if row["name"] == "dense" else "n/a" if row["map"] is None else f"{row['map']:.4f}"
        lines.append(f"| {row['name']} | {row['removed']:.1%} | {row['bflops']:.3f} | {m50} | {m} | "
                     f"{row['params']:,} | {size:.2f} | {speed} | {ups} |")
    lines += ["", "CPU seconds per forward (the process's, all threads):", "",
              "| file | " + " | ".join(names) + " | stock speed-up | OpenCV 1t speed-up |",
              "|---|" + "---:|" * (len(names) + 2)]
    for arch, c in cells.items():
        lines.append(f"| {arch} | " + " | ".join("-" if c[n] is None else f"{c[n].cpu:.3f}" for n in names)
                     + f" | {dense['stock 1t'].cpu / c['stock 1t'].cpu:.2f}x"
                     f" | {dense['OpenCV 1t'].cpu / c['OpenCV 1t'].cpu:.2f}x |")
    lines += ["", "Stages (wall and CPU seconds; CPU includes Darknet's training processes):", "",
              "| stage | wall s | CPU s |", "|---|---:|---:|"]
    lines += [f"| {what} | {wall:.0f} | {cpu:.0f} |" for what, wall, cpu in stages]
    lines += ["", "## Targets", ""]
    by_name = {row["name"]: row for row in rows}
    c = by_name.get(f"c-{TARGET_LEVEL:.0%}")
    if c is not None:
        ok = c["map50"] is not None and c["map50"] >= TARGET_MAP
        lines.append(f"- {TARGET_LEVEL:.0%} FLOPs removed, agreement mAP@0.5 >= {TARGET_MAP} after retraining: "
                     f"{c['map50']:.4f}: **{'PASS' if ok else 'FAIL'}**")
        for engine in ("stock 1t", "OpenCV 1t", "OpenCV 2t"):
            for kind in ("wall", "cpu"):
                up = getattr(dense[engine], kind) / getattr(cells[c["arch"]][engine], kind)
                lines.append(f"- {TARGET_LEVEL:.0%} FLOPs removed, >= {TARGET_SPEEDUP}x faster in {engine} "
                             f"({kind}): {up:.2f}x: **{'PASS' if up >= TARGET_SPEEDUP else 'FAIL'}**")
    text = "\n".join(lines) + "\n"
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
