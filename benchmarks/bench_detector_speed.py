"""CPU forward time of the real COCO yolov3-tiny, pruned, on five engines.

The official weights (``make models``) are pruned by magnitude to each level
(``ds.Magnitude``: the same sparsity in every conv layer).  Each level's file
then runs, one 416x416 image per forward, on:

- stock Darknet (``build/darknet-stock``), one thread;
- patched Darknet (``build/darknet``, OPENMP=0), one thread;
- patched Darknet built with OPENMP=1 (``build/darknet-omp``), two threads
  (``OMP_NUM_THREADS=2``, ``OMP_WAIT_POLICY=passive`` unless
  ``--omp-wait-policy`` says otherwise: on a machine whose cores other work
  shares, libgomp's default spinning at each barrier makes two threads
  slower than one);
- OpenCV's DNN module (dense: it does not skip zeros) at one and at two
  threads (``cv2.setNumThreads``).

Darknet runs through ``tests/helpers/forward_driver.c``; OpenCV in-process on
the same files.  A run is the median of ``--repeat`` forwards after an
untimed one; every engine runs once per round, the order reversed every
other round, and each cell is the median of ``--rounds`` runs.  Ratios are
OpenCV's time over patched Darknet's at the same thread count (> 1: patched
is faster) and stock's over patched's.  Targets: patched faster than OpenCV
at both thread counts from 70% on.

Needs ``make models darknet darknet-stock darknet-omp``.  Always exits 0
after its table: it is a report.  :func:`measure` returns the table as
Markdown for ``bench_detector.py``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import darknet_sparse as ds  # noqa: E402
from _common import (BUILDS, ROOT, OpenCV, command_line, compile_driver, driver_timer, flops, machine,  # noqa: E402
                     median_run)

CFG = ROOT / "models" / "yolov3-tiny.cfg"
WEIGHTS = ROOT / "models" / "yolov3-tiny.weights"
LEVELS = (0.0, 0.5, 0.7, 0.9)
#: Columns: (name, Darknet build or None for OpenCV, threads).
ENGINES = (("stock 1t", "stock", 1), ("patched 1t", "patched", 1), ("patched 2t", "patched-omp", 2),
           ("OpenCV 1t", None, 1), ("OpenCV 2t", None, 2))
TARGET_FROM = 0.7


def sparse_convs(driver, cfg: Path, weights: Path) -> tuple[int, int]:
    """Conv layers that take the patched build's sparse path, of all conv layers."""
    paths = driver.run("paths", cfg, weights).stdout.split()
    convs = [p for p, layer in zip(paths, ds.load_model(cfg).layers) if layer.type == "convolutional"]
    return convs.count("1"), len(convs)


def measure(cfg: Path = CFG, weights: Path = WEIGHTS, levels=LEVELS, rounds: int = 3, repeat: int = 3,
            omp_wait_policy: str = "passive") -> tuple[list[str], list[tuple[str, bool]]]:
    """The table (Markdown lines) and the targets (what, met)."""
    if omp_wait_policy == "default":
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = omp_wait_policy
    for needed in (cfg, weights):
        if not needed.is_file():
            raise SystemExit(f"Error: {needed} missing: run make models")
    for build in {build for _, build, _ in ENGINES if build}:
        if not (BUILDS[build] / "libdarknet.a").is_file():
            raise SystemExit(f"Error: {BUILDS[build]} not built: run make {BUILDS[build].name}")
    start = time.perf_counter()
    load_before = machine()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        drivers = {build: compile_driver(build, folder) for _, build, _ in ENGINES if build}
        dnn = OpenCV(cfg)
        timers = {name: driver_timer(drivers[build], cfg, repeat, threads) if build else dnn.timer(repeat, threads)
                  for name, build, threads in ENGINES}
        files = {}
        for level in levels:
            files[level] = folder / f"yolov3-tiny-{round(level * 100)}.weights"
            ds.threshold(ds.load(cfg, weights), files[level], ds.Magnitude(level))
        runs = {level: {name: [] for name in timers} for level in levels}
        # Rounds outermost, so each level's runs spread over the whole benchmark;
        # levels and engines in the other order every other round.
        for r in range(rounds):
            forward = r % 2 == 0
            for level in levels if forward else levels[::-1]:
                for name in list(timers) if forward else list(timers)[::-1]:
                    runs[level][name].append(timers[name](files[level]))
        cells = {level: {name: median_run(times) for name, times in by_name.items()}
                 for level, by_name in runs.items()}
        extra = {level: (flops(cfg, files[level]), sparse_convs(drivers["patched"], cfg, files[level]))
                 for level in levels}

    names = [name for name, _, _ in ENGINES]
    lines = [
        f"{cfg.name} + {weights.name} (COCO, 416x416), one image per forward; median of {rounds} "
        f"interleaved rounds of {repeat} forwards (median); OMP_WAIT_POLICY={omp_wait_policy}; "
        f"OpenCV {dnn.version}; {machine()} "
        f"(at the start: {load_before.split('load average ')[1]}); {time.perf_counter() - start:.0f} s in all.",
        "",
        "Wall-clock seconds per forward; ratios: OpenCV's time over patched Darknet's at the same thread "
        "count, stock's over patched's (> 1: patched is faster).",
        "",
        "| pruned | " + " | ".join(names)
        + " | OpenCV/patched 1t | OpenCV/patched 2t | stock/patched 1t | FLOPs ratio | sparse convs |",
        "|" + "---:|" * (len(names) + 6),
    ]
    for level in levels:
        c = {name: run.wall for name, run in cells[level].items()}
        (dense, effective), (sparse, convs) = extra[level]
        lines.append(
            f"| {level:.0%} | " + " | ".join(f"{c[name]:.3f}" for name in names)
            + f" | {c['OpenCV 1t'] / c['patched 1t']:.2f}x | {c['OpenCV 2t'] / c['patched 2t']:.2f}x"
            f" | {c['stock 1t'] / c['patched 1t']:.2f}x | {dense / max(effective, 1):.1f}x | {sparse} of {convs} |")
    lines += [
        "",
        "CPU seconds per forward (the process's, all threads): on a shared machine a one-thread "
        "engine's CPU time is close to what it takes alone.",
        "",
        "| pruned | " + " | ".join(names) + " | OpenCV/patched 1t |",
        "|" + "---:|" * (len(names) + 2),
    ]
    for level in levels:
        c = {name: run.cpu for name, run in cells[level].items()}
        lines.append(f"| {level:.0%} | " + " | ".join(f"{c[name]:.3f}" for name in names)
                     + f" | {c['OpenCV 1t'] / c['patched 1t']:.2f}x |")
    targets = []
    for level in (lv for lv in levels if lv >= TARGET_FROM):
        for threads in (1, 2):
            patched, opencv = cells[level][f"patched {threads}t"], cells[level][f"OpenCV {threads}t"]
            targets.append((f"{level:.0%}, {threads} thread{'s' * (threads > 1)}: patched faster than OpenCV "
                            f"(wall {patched.wall:.3f} s vs {opencv.wall:.3f} s)", patched.wall < opencv.wall))
        patched, opencv = cells[level]["patched 1t"], cells[level]["OpenCV 1t"]
        targets.append((f"{level:.0%}, 1 thread, by CPU time: patched faster than OpenCV "
                        f"({patched.cpu:.3f} s vs {opencv.cpu:.3f} s)", patched.cpu < opencv.cpu))
    return lines, targets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", type=Path, default=CFG)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--levels", default=",".join(f"{lv:g}" for lv in LEVELS),
                        help="comma-separated sparsities (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="forwards per timed run")
    parser.add_argument("--omp-wait-policy", choices=("passive", "active", "default"), default="passive",
                        help="OMP_WAIT_POLICY of the OpenMP build (default %(default)s)")
    args = parser.parse_args(argv)
    levels = tuple(float(x) for x in args.levels.split(","))
    print(f"$ {command_line()}")
    lines, targets = measure(args.cfg, args.weights, levels, args.rounds, args.repeat, args.omp_wait_policy)
    print("\n".join(lines))
    for what, met in targets:
        print(f"target {what}: {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
