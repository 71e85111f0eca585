"""Structured pruning (``slim``) of the real COCO yolov3-tiny: quality and speed.

At each level (30% and 50% of the dense FLOPs removed):

(a) one-shot ``slim --target-flops``, channels ranked by batch-norm |gamma|;
(b) (a) recalibrated relative to the dense model through the kept channels
    (``darknet_sparse.analysis.recalibrate``, ``channels=``) on training images;
(c) ``slim --images``: channels in the data rank's order (downstream error
    per FLOP saved) and the layers after them refit by least squares, on
    training images;
(d) (c) retrained: ``loop --structured`` (one step, which makes (c) and keeps
    it as ``step-01.slimmed.weights``), distilled from the dense model
    (``--teacher``, alpha 1: no labels) for ``--iterations`` batches of 8 at
    416x416, then recalibrated relative to (c);
(e) (d) at 50%, then 50% of its weights zeroed by magnitude and recalibrated
    relative to (d): the patched Darknet's sparse forward on top of slim.

The issue's (c), ``slim=λ`` sparsity training before slimming, was measured
by the previous version of this script: ten iterations shrink every |gamma|
(median 1.68 -> 0.36) and retraining did not recover (agreement 0); with the
data rank no sparsity training is needed, so it is not repeated here.

Quality is agreement mAP@0.5 (and @0.5:0.95) with the dense model on
``data/images/eval`` (its detections above 0.5 are the ground truth); every
image that chooses, fits or trains anything is from ``data/images/train``.
Speed is the median seconds of one 416x416 forward in stock Darknet (one
thread: the stock build has no OpenMP), OpenCV's DNN (1 and 2 threads) and
the patched Darknet (1 thread, and 2 threads in the OPENMP=1 build) for
the dense model and (e), interleaved rounds as in ``bench_detector_speed.py``.

Needs ``make models images darknet darknet-stock darknet-omp binding``.
Writes ``benchmarks/slim.md`` (``--output``) and exits 0: it is a report.
``--reuse-loops`` keeps ``--work`` and its finished loops of the same
command (the half hour of the run), and makes, scores and times the rest
again: a rerun of the timings that a busy machine spoilt.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import darknet_sparse as ds
from darknet_sparse.analysis import recalibrate as recalibrate_
from darknet_sparse.darknet import images as images_
from darknet_sparse.structured.slim import apply, choose

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (PARTS, ROOT, Clock, OpenCV, agreement, command_line, compile_driver,  # noqa: E402
                     driver_timer, machine, median_run, parts)

CFG = ROOT / "models" / "yolov3-tiny.cfg"
WEIGHTS = ROOT / "models" / "yolov3-tiny.weights"
TRAIN = ROOT / "data" / "images" / "train"
EVAL = ROOT / "data" / "images" / "eval"
DS = str(ROOT / ".venv" / "bin" / "darknet-sparse")
LEVELS = (0.3, 0.5)
TARGET_LEVEL, TARGET_MAP, TARGET_SPEEDUP = 0.5, 0.85, 1.8
#: Columns: (name, Darknet build or None for OpenCV, threads).
ENGINES = (("stock 1t", "stock", 1), ("OpenCV 1t", None, 1), ("OpenCV 2t", None, 2),
           ("patched 1t", "patched", 1), ("patched 2t", "patched-omp", 2))
SPARSE = 0.5
#: OpenCV's names for Darknet's activations (``leaky_1`` belongs to layer 0).
ACTIVATIONS = ("leaky", "relu", "mish", "swish", "logistic", "tanh", "elu", "selu", "gelu", "relu6", "hardswish",
               "hard_sigmoid", "identity_act")
CALIBRATION = 64


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default=",".join(f"{lv:g}" for lv in LEVELS))
    parser.add_argument("--iterations", type=int, default=100, help="retraining batches of (d)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5, help="forwards per timed run")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench-slim")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "slim.md")
    parser.add_argument("--reuse-loops", action="store_true",
                        help="keep --work and take (c) and (d) from its finished loops of the same command "
                             "(the half hour they take); everything else is made, scored and timed again")
    args = parser.parse_args(argv)
    levels = [float(v) for v in args.levels.split(",")]
    for needed in (CFG, WEIGHTS, TRAIN, EVAL):
        if not needed.exists():
            raise SystemExit(f"Error: {needed} missing: run make models images")
    os.environ["OMP_WAIT_POLICY"] = "passive"
    started, load_before = Clock(), machine()
    work = args.work.resolve()
    if not args.reuse_loops:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    from darknet_sparse.analysis.metrics import Remembered
    from darknet_sparse.darknet.network import Network
    eval_paths = images_.image_paths(EVAL)
    train = work / "train.txt"
    train.write_text("".join(f"{p}\n" for p in images_.image_paths(TRAIN)))
    calibration = images_.sample(images_.image_paths(TRAIN), CALIBRATION, seed=1)
    loop_eval = work / "loop-eval.txt"  # the loop's own score of its step; the rows are scored below
    loop_eval.write_text("".join(f"{p}\n" for p in eval_paths[:4]))

    # (c) and (d): one structured loop per level, beside the one-shot rows.
    loops = {}
    for level in levels:
        out = work / f"loop-{level:.0%}"
        command = [DS, "loop", "--task", "detector", "--cfg", str(CFG), "-w", str(WEIGHTS), "--images", str(train),
                   "--eval-images", str(loop_eval), "--structured", "--target-flops", f"{level:g}", "--steps", "1",
                   "--fine-tune-steps", "0", "--iterations-per-step", str(args.iterations), "--teacher",
                   str(WEIGHTS), "-o", str(out)]
        if args.reuse_loops and finished(out, command):
            loops[level] = (command, None, None, time.perf_counter())
            continue
        shutil.rmtree(out, ignore_errors=True)
        log = open(work / f"loop-{level:.0%}.log", "w")
        loops[level] = (command, subprocess.Popen(["nice", *command], stdout=log, stderr=subprocess.STDOUT), log,
                        time.perf_counter())
        (work / f"loop-{level:.0%}.command").write_text(json.dumps(command))

    reference = Remembered(Network(CFG, WEIGHTS))
    rows: list[dict] = []
    stages: list[tuple[str, float, float]] = []

    def score(row: dict) -> dict:
        clock = Clock()
        report, row["parts"] = agreement(Network(row["cfg"], row["weights"]), eval_paths, reference,
                                         reference_name=str(WEIGHTS))
        row["map50"], row["map"] = report.map50, report.map
        model = ds.load_model(row["cfg"])
        row["params"] = model.param_count
        row["bflops"] = model.flops / 1e9
        row["removed"] = 1 - model.flops / dense_model.flops
        stages.append((f"evaluate {row['name']}", *clock.read()))
        rows.append(row)
        print(f"{row['name']}: agreement mAP@0.5 {row['map50']:.4f}", file=sys.stderr, flush=True)
        return row

    def recalibrated(row: dict, name: str, reference_weights: Path, reference_cfg: Path,
                     channels: dict | None) -> dict:
        clock = Clock()
        target = work / f"{name}.weights"
        recalibrate_.recalibrate_file(row["cfg"], row["weights"], calibration, target, batch=8,
                                      reference=reference_weights, reference_cfg=reference_cfg, resize="letterbox",
                                      channels=channels)
        shutil.copy(row["cfg"], work / f"{name}.cfg")
        stages.append((f"recalibrate {row['name']} ({len(calibration)} images)", *clock.read()))
        return dict(row, name=name, weights=target, cfg=work / f"{name}.cfg")

    dense_model = ds.load_model(CFG)
    rows.append({"name": "dense", "weights": WEIGHTS, "cfg": CFG, "arch": "dense", "map50": None, "map": None,
                 "params": dense_model.param_count,
                 "bflops": dense_model.flops / 1e9, "removed": 0.0})
    for level in levels:  # (a), (b)
        clock = Clock()
        wf = ds.load(CFG, WEIGHTS)
        choice = choose(wf, target_flops=level)
        name = f"a-{level:.0%}"
        apply(wf, choice, work / f"{name}.weights")
        stages.append((f"slim {name}", *clock.read()))
        row = score({"name": name, "weights": work / f"{name}.weights", "cfg": work / f"{name}.cfg", "arch": name})
        channels = {e.index: choice.kept_channels(e.index) for e in choice.graph.layers if e.role == "conv"}
        score(dict(recalibrated(row, f"b-{level:.0%}", WEIGHTS, CFG, channels), arch=name))

    sparse_row = None
    for level in levels:  # (c), (d), (e): the loops' results
        command, process, log, start = loops[level]
        out = work / f"loop-{level:.0%}"
        if process is not None:
            process.wait()
            log.close()
            if process.returncode:
                raise SystemExit(f"the structured loop at {level:.0%} failed (exit {process.returncode}): "
                                 f"see {work / f'loop-{level:.0%}.log'}")
        line = json.loads((out / "log.jsonl").read_text().splitlines()[0])
        if process is None:
            stages.append((f"loop --structured at {level:.0%}: reused from an earlier run (its step took "
                           f"{line['seconds']:.0f} s)", 0.0, 0.0))
        else:
            stages.append((f"loop --structured at {level:.0%} (slim --images + {args.iterations} iterations)",
                           time.perf_counter() - start, float("nan")))
        arch = f"c-{level:.0%}"
        score({"name": arch, "weights": out / "step-01.slimmed.weights", "cfg": out / "step-01.cfg", "arch": arch})
        d = score({"name": f"d-{level:.0%}", "weights": out / "step-01.weights", "cfg": out / "step-01.cfg",
                   "arch": arch, "loop_seconds": line["seconds"]})
        if level == TARGET_LEVEL:
            clock = Clock()
            name = f"e-{level:.0%}+{SPARSE:.0%}"
            zeroed = work / f"{name}.zeroed.weights"
            ds.threshold(ds.load(d["cfg"], d["weights"]), zeroed, ds.Magnitude(SPARSE))
            stages.append((f"magnitude {SPARSE:.0%} on {d['name']}", *clock.read()))
            row = dict(d, name=name, weights=zeroed)
            sparse_row = score(dict(recalibrated(row, name, d["weights"], d["cfg"], None), arch=name))

    # Speed: one file per architecture; (b) shares (a)'s, (d) (c)'s.
    clock = Clock()
    archs = {row["arch"]: row for row in rows if row["arch"] == row["name"]}
    drivers = {build: compile_driver(build, work) for _, build, _ in ENGINES if build}
    dnns = {name: OpenCV(row["cfg"]) for name, row in archs.items()}
    runs = {arch: {engine: [] for engine, _, _ in ENGINES} for arch in archs}
    for r in range(args.rounds):
        forward = r % 2 == 0
        for arch in list(archs) if forward else list(archs)[::-1]:
            row = archs[arch]
            for engine, build, threads in ENGINES if forward else ENGINES[::-1]:
                if build and build.startswith("patched") and arch != "dense" and row is not sparse_row:
                    continue  # the patched build matters where there are zeros to skip
                timer = (driver_timer(drivers[build], row["cfg"], args.repeat, threads) if build
                         else dnns[arch].timer(args.repeat, threads))
                runs[arch][engine].append(timer(row["weights"]))
    cells = {arch: {engine: median_run(r) if r else None for engine, r in by.items()}
             for arch, by in runs.items()}
    stages.append((f"time {len(archs)} files x {len(ENGINES)} engines x {args.rounds} rounds", *clock.read()))
    target_arch = f"c-{TARGET_LEVEL:.0%}"
    profiled = [arch for arch in ("dense", target_arch) if arch in archs]
    profile = {arch: (ds.load_model(archs[arch]["cfg"]),
                      dnns[arch].layer_milliseconds(archs[arch]["weights"], args.rounds * args.repeat))
               for arch in profiled}
    write(args, rows, cells, stages, started.read(), load_before, eval_paths, dnns["dense"].version,
          {level: loops[level][0] for level in levels}, profile)


def finished(out: Path, command: list[str]) -> bool:
    """Whether the loop in ``out`` ran ``command`` to the end (for --reuse-loops)."""
    made = out.parent / f"{out.name}.command"
    return ((out / "step-01.weights").exists() and (out / "log.jsonl").exists() and made.exists()
            and json.loads(made.read_text()) == command)


def darknet_layers(milliseconds: dict[str, float]) -> dict[int, float]:
    """OpenCV's per-layer times summed per Darknet layer.  OpenCV names its
    layers ``conv_0``, ``bn_0``, ``leaky_1``, ``pool_1``, ...: the suffix is
    the Darknet layer's index, except that an activation takes the next
    number while belonging to the layer before it."""
    totals: dict[int, float] = {}
    index = 0
    for name, ms in milliseconds.items():
        kind, _, number = name.rpartition("_")
        if kind not in ACTIVATIONS:
            index = int(number)
        totals[index] = totals.get(index, 0.0) + ms
    return totals


def profile_lines(profile: dict, forwards: int) -> list[str]:
    """OpenCV's per-layer time beside each layer's FLOPs: where the time goes."""
    if len(profile) < 2:
        return []
    (first, (model, dense_ms)), (second, (slim_model, slim_ms)) = profile.items()
    lines = ["", f"OpenCV's own profile at 1 thread (median of {forwards} forwards, `getPerfProfile`), "
             f"milliseconds per layer, {first} against {second}; layers under 0.05 ms in both are left out:", "",
             f"| layer | type | {first} BFLOPs | {first} ms | {second} BFLOPs | {second} ms | ms per BFLOP "
             f"({first}) |", "|---:|---|---:|---:|---:|---:|---:|"]
    by_layer, by_layer2 = darknet_layers(dense_ms), darknet_layers(slim_ms)
    totals = [0.0, 0.0, 0.0, 0.0]
    for layer, slim_layer in zip(model.layers, slim_model.layers):
        ms, ms2 = by_layer.get(layer.index, 0.0), by_layer2.get(layer.index, 0.0)
        cells = (layer.flops / 1e9, ms, slim_layer.flops / 1e9, ms2)
        totals = [t + c for t, c in zip(totals, cells)]
        if max(ms, ms2) >= 0.05:
            per = f"{ms / cells[0]:.1f}" if cells[0] else "-"
            lines.append(f"| {layer.index} | {layer.type} | {cells[0]:.3f} | {ms:.2f} | {cells[2]:.3f} | "
                         f"{ms2:.2f} | {per} |")
    lines.append(f"| all | | {totals[0]:.3f} | {totals[1]:.2f} | {totals[2]:.3f} | {totals[3]:.2f} | "
                 f"{totals[1] / totals[0]:.1f} |")
    return lines


def write(args, rows, cells, stages, total, load_before, eval_paths, cv_version, commands, profile) -> None:
    counts = {name: len(chosen) for name, chosen in parts(eval_paths).items()}
    names = [engine for engine, _, _ in ENGINES]
    dense = cells["dense"]
    lines = [
        "# Structured pruning (slim) of yolov3-tiny",
        "",
        f"Made by `{command_line()}` (`make bench-slim`) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{machine()} (at the start: {load_before.split('load average ')[1]}); {total[0]:.0f} s wall, "
        f"{total[1]:.0f} s CPU of this process and its finished children.",
        "",
        f"models/yolov3-tiny.cfg + yolov3-tiny.weights (COCO). Agreement with the dense model on the "
        f"{len(eval_paths)} images of data/images/eval (its detections above 0.5 are the ground truth), and on "
        f"its two parts apart: the {counts['video frames']} video frames (later frames of the two videos the "
        f"training split comes from) and the {counts['photos']} photos (mostly objects no training frame "
        "shows); "
        "everything chosen, fitted or trained uses data/images/train only. (a) one-shot `slim --target-flops`, "
        "channels by |γ|; (b) (a) "
        f"recalibrated relative to the dense model through the kept channels on {CALIBRATION} training images; "
        "(c) `slim --images` (the data rank and the least-squares refit on 64 training images); (d) (c) "
        f"retrained {args.iterations} batches of 8 at 416x416, distilled from the dense model (alpha 1, no "
        "labels), recalibrated relative to (c); (e) (d) with "
        f"{SPARSE:.0%} of its weights zeroed by magnitude, recalibrated relative to (d). (c) and (d) are one "
        "`loop --structured` step per level:",
        "",
        *[f"- {level:.0%}: `{' '.join(['darknet-sparse', *[str(c) for c in command[1:]]])}`"
          for level, command in commands.items()],
        "",
        "Seconds per 416x416 forward (wall clock, median of "
        f"{args.rounds} interleaved rounds of {args.repeat} forwards); speed-up over the dense model in the "
        f"same engine. OpenCV {cv_version}; stock Darknet has no OpenMP build here (1 thread only); "
        "patched 2t is the OPENMP=1 build.",
        "",
        "| model | FLOPs removed | BFLOPs | agreement mAP@0.5 | mAP@0.5:0.95 | "
        + " | ".join(f"mAP@0.5 {part}" for part in PARTS) + " | params | file MB | "
        + " | ".join(names) + " | stock speed-up | OpenCV 1t speed-up | OpenCV 2t speed-up |",
        "|---|" + "---:|" * (len(names) + 9 + len(PARTS)),
    ]
    for row in rows:
        c = cells[row["arch"]]
        size = os.path.getsize(row["weights"]) / 1e6
        speed = " | ".join("-" if c[n] is None else f"{c[n].wall:.3f}" for n in names)
        ups = " | ".join(f"{dense[n].wall / c[n].wall:.2f}x" for n in ("stock 1t", "OpenCV 1t", "OpenCV 2t"))
        m50 = "(reference)" if row["name"] == "dense" else f"{row['map50']:.4f}"
        m = "(reference)" if row["name"] == "dense" else f"{row['map']:.4f}"
        by_part = " | ".join("(reference)" if row["name"] == "dense" else f"{row['parts'][part]:.4f}"
                             for part in PARTS)
        lines.append(f"| {row['name']} | {row['removed']:.1%} | {row['bflops']:.3f} | {m50} | {m} | {by_part} | "
                     f"{row['params']:,} | {size:.2f} | {speed} | {ups} |")
    lines += ["", "CPU seconds per forward (the process's, all threads):", "",
              "| file | " + " | ".join(names) + " | stock speed-up | OpenCV 1t speed-up |",
              "|---|" + "---:|" * (len(names) + 2)]
    for arch, c in cells.items():
        lines.append(f"| {arch} | " + " | ".join("-" if c[n] is None else f"{c[n].cpu:.3f}" for n in names)
                     + f" | {dense['stock 1t'].cpu / c['stock 1t'].cpu:.2f}x"
                     f" | {dense['OpenCV 1t'].cpu / c['OpenCV 1t'].cpu:.2f}x |")
    lines += profile_lines(profile, args.rounds * args.repeat)
    lines += ["", "Stages (wall and CPU seconds; a loop's CPU is not counted until it ends, so it shows as nan):",
              "", "| stage | wall s | CPU s |", "|---|---:|---:|"]
    lines += [f"| {what} | {wall:.0f} | {cpu:.0f} |" for what, wall, cpu in stages]
    lines += ["", "## Targets", ""]
    by_name = {row["name"]: row for row in rows}
    d = by_name.get(f"d-{TARGET_LEVEL:.0%}")
    if d is not None:
        ok = d["map50"] >= TARGET_MAP
        lines.append(f"- {TARGET_LEVEL:.0%} FLOPs removed, agreement mAP@0.5 >= {TARGET_MAP} after retraining "
                     f"(d): {d['map50']:.4f}: **{'PASS' if ok else 'FAIL'}** (not a target, the parts apart: "
                     + ", ".join(f"{part} {d['parts'][part]:.4f}" for part in PARTS) + ")")
        for engine in ("stock 1t", "OpenCV 1t", "OpenCV 2t"):
            for kind in ("wall", "cpu"):
                up = getattr(dense[engine], kind) / getattr(cells[d["arch"]][engine], kind)
                lines.append(f"- {TARGET_LEVEL:.0%} FLOPs removed, >= {TARGET_SPEEDUP}x faster in {engine} "
                             f"({kind}): {up:.3f}x: **{'PASS' if up >= TARGET_SPEEDUP else 'FAIL'}**")
    text = "\n".join(lines) + "\n"
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
