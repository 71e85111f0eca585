"""CPU forward time of the real COCO yolov3-tiny, pruned, on five engines.

The official weights (``make models``) are pruned by magnitude to each level
(``ds.Magnitude``: the same sparsity in every conv layer).  Each level's file
then runs, one 416x416 image per forward, on:

- stock Darknet (``build/darknet-stock``), one thread;
- patched Darknet (``build/darknet``, OPENMP=0; ``sparse_forward=auto``, the
  default: the FAST kernels of ``patches/kernels``), one thread;
- patched Darknet built with OPENMP=1 (``build/darknet-omp``), two threads
  (``OMP_NUM_THREADS=2``, ``OMP_WAIT_POLICY=passive`` unless
  ``--omp-wait-policy`` says otherwise: on a machine whose cores other work
  shares, libgomp's default spinning at each barrier makes two threads
  slower than one);
- OpenCV's DNN module (dense: it does not skip zeros) at one and at two
  threads (``cv2.setNumThreads``).

Darknet runs through ``darknet_sparse/darknet/_forward_driver.c``; OpenCV in-process on
the same files.  A run is the median of ``--repeat`` forwards after an
untimed one; every engine runs once per round, the order reversed every
other round, and each cell is the median of ``--rounds`` runs.  The spread
of a cell is (slowest - fastest) / median of its runs.  Ratios are OpenCV's
time over patched Darknet's at the same thread count (> 1: patched is
faster) and stock's over patched's.  GFLOP/s counts useful work only (the
non-zero weights' multiply-adds, 2 FLOPs each).  The share outside the
convolutions is patched Darknet's (one thread), from ``forward_driver
layers`` (each layer's step of a forward timed on its own, medians).

Targets (issue 22): 70%: >= 1.3x OpenCV at 1 thread, >= 1.0x at 2; 90%:
>= 2.2x at 1, >= 1.5x at 2; break-even with OpenCV at 1 thread at 60% or
less; 0%: patched no slower than stock.  A target is judged on the ratio
of the two engines' runs *in each round* (they run a few seconds apart, so
load the shared machine puts on both cancels out of the ratio, where it
does not out of the two cells' medians): PASS only when the rounds' lower
quartile of that ratio meets the target, FAIL only when their upper
quartile misses it, and otherwise INSIDE SPREAD: never by a margin inside
the run-to-run spread, which is printed with it (the rounds' quartiles, and
their lowest and highest ratio).

Needs ``make models darknet darknet-stock darknet-omp``.  Always exits 0
after its table: it is a report.  :func:`measure` returns the table as
Markdown and the targets as ``(what, passed)`` for ``bench_detector.py``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import darknet_sparse as ds  # noqa: E402
from _common import (BUILDS, ROOT, OpenCV, Run, command_line, compile_driver, driver_timer, flops,  # noqa: E402
                     machine)

CFG = ROOT / "models" / "yolov3-tiny.cfg"
WEIGHTS = ROOT / "models" / "yolov3-tiny.weights"
LEVELS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
#: Columns: (name, Darknet build or None for OpenCV, threads).
ENGINES = (("stock 1t", "stock", 1), ("patched 1t", "patched", 1), ("patched 2t", "patched-omp", 2),
           ("OpenCV 1t", None, 1), ("OpenCV 2t", None, 2))
#: (level, threads, least OpenCV/patched ratio).
OPENCV_TARGETS = ((0.7, 1, 1.3), (0.7, 2, 1.0), (0.9, 1, 2.2), (0.9, 2, 1.5))
BREAK_EVEN_BY = 0.6


class Cell:
    """One engine at one level: its runs' median and spread."""

    def __init__(self, runs: list[Run]):
        walls = self.walls = [r.wall for r in runs]  # in round order
        self.wall = statistics.median(walls)
        self.cpu = statistics.median(r.cpu for r in runs)
        self.spread = (max(walls) - min(walls)) / self.wall if self.wall else 0.0
        self.runs = len(runs)


def ratio_verdict(fast: Cell, slow: Cell, target: float) -> tuple[str, float, str]:
    """slow.wall / fast.wall against ``target``: PASS, FAIL or INSIDE SPREAD
    by the quartiles of the rounds' paired ratios (see the module's
    docstring), the ratio of the medians, and the spread in words; with
    fewer than two rounds there is no spread to judge by: NO SPREAD (ONE ROUND)."""
    ratio = slow.wall / fast.wall
    paired = sorted(s / f for s, f in zip(slow.walls, fast.walls))
    if len(paired) < 2:
        return "NO SPREAD (ONE ROUND)", ratio, "one round"
    low, _, high = statistics.quantiles(paired, n=4, method="inclusive")
    spread = (f"rounds' ratio {statistics.median(paired):.2f}x, quartiles {low:.2f}-{high:.2f}x, "
              f"range {paired[0]:.2f}-{paired[-1]:.2f}x over {len(paired)} rounds")
    return ("PASS" if low >= target else "FAIL" if high < target else "INSIDE SPREAD"), ratio, spread


def outside_conv_share(driver, cfg: Path, weights: Path, repeat: int) -> float:
    """Patched Darknet's share of a forward outside convolutional layers."""
    os.environ["OMP_NUM_THREADS"] = "1"
    rows = [line.split() for line in driver.run("layers", cfg, weights, repeat).stdout.splitlines() if line]
    total = sum(float(seconds) for _, seconds in rows)
    other = sum(float(seconds) for kind, seconds in rows if kind != "convolutional")
    return other / total if total else 0.0


def sparse_convs(driver, cfg: Path, weights: Path) -> tuple[int, int]:
    """Conv layers that take the patched build's sparse path, of all conv layers."""
    paths = driver.run("paths", cfg, weights).stdout.split()
    convs = [p for p, layer in zip(paths, ds.load_model(cfg).layers) if layer.type == "convolutional"]
    return convs.count("1"), len(convs)


def measure(cfg: Path = CFG, weights: Path = WEIGHTS, levels=LEVELS, rounds: int = 3, repeat: int = 3,
            omp_wait_policy: str = "passive", verdicts: list | None = None
            ) -> tuple[list[str], list[tuple[str, bool]]]:
    """The table (Markdown lines) and the targets (what, PASS); ``verdicts``,
    if given, gets (what, PASS|FAIL|INSIDE SPREAD)."""
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
            if level:
                ds.threshold(ds.load(cfg, weights), files[level], ds.Magnitude(level))
            else:
                files[level] = weights
        runs = {level: {name: [] for name in timers} for level in levels}
        # Rounds outermost, so each level's runs spread over the whole benchmark;
        # levels and engines in the other order every other round.
        for r in range(rounds):
            forward = r % 2 == 0
            for level in levels if forward else levels[::-1]:
                for name in list(timers) if forward else list(timers)[::-1]:
                    runs[level][name].append(timers[name](files[level]))
        cells = {level: {name: Cell(times) for name, times in by_name.items()} for level, by_name in runs.items()}
        extra = {level: (flops(cfg, files[level]), sparse_convs(drivers["patched"], cfg, files[level]),
                         outside_conv_share(drivers["patched"], cfg, files[level], max(repeat, 5)))
                 for level in levels}

    names = [name for name, _, _ in ENGINES]
    lines = [
        f"{cfg.name} + {weights.name}, 416x416, one image per forward; median of {rounds} "
        f"interleaved rounds of {repeat} forwards (median); OMP_WAIT_POLICY={omp_wait_policy}; "
        f"OpenCV {dnn.version}; {machine()} "
        f"(at the start: {load_before.split('load average ')[1]}); {time.perf_counter() - start:.0f} s in all.",
        "",
        "Wall-clock seconds per forward (spread: slowest - fastest run over the median); ratios: OpenCV's "
        "time over patched Darknet's at the same thread count, stock's over patched's (> 1: patched is "
        "faster); GFLOP/s of useful work (non-zero weights only); patched 1t's share of time outside "
        "the convolutions.",
        "",
        "| pruned | " + " | ".join(names)
        + " | OpenCV/patched 1t | OpenCV/patched 2t | stock/patched 1t | GFLOP/s 1t | GFLOP/s 2t"
        " | outside convs | sparse convs |",
        "|" + "---:|" * (len(names) + 8),
    ]
    for level in levels:
        c = cells[level]
        (dense, effective), (sparse, convs), share = extra[level]
        lines.append(
            f"| {level:.0%} | " + " | ".join(f"{c[name].wall:.4f} ±{c[name].spread / 2:.0%}" for name in names)
            + f" | {c['OpenCV 1t'].wall / c['patched 1t'].wall:.2f}x"
            f" | {c['OpenCV 2t'].wall / c['patched 2t'].wall:.2f}x"
            f" | {c['stock 1t'].wall / c['patched 1t'].wall:.2f}x"
            f" | {effective / c['patched 1t'].wall / 1e9:.1f} | {effective / c['patched 2t'].wall / 1e9:.1f}"
            f" | {share:.0%} | {sparse} of {convs} |")
    lines += [
        "",
        "CPU seconds per forward (the process's, all threads): on a shared machine a one-thread "
        "engine's CPU time is close to what it takes alone.",
        "",
        "| pruned | " + " | ".join(names) + " | OpenCV/patched 1t |",
        "|" + "---:|" * (len(names) + 2),
    ]
    for level in levels:
        c = cells[level]
        lines.append(f"| {level:.0%} | " + " | ".join(f"{c[name].cpu:.4f}" for name in names)
                     + f" | {c['OpenCV 1t'].cpu / c['patched 1t'].cpu:.2f}x |")

    found = []
    for level, threads, least in OPENCV_TARGETS:
        if level not in cells:
            continue
        verdict, ratio, spread = ratio_verdict(cells[level][f"patched {threads}t"],
                                               cells[level][f"OpenCV {threads}t"], least)
        found.append((f"{level:.0%}, {threads} thread{'s' * (threads > 1)}: patched >= {least}x OpenCV "
                      f"(measured {ratio:.2f}x; {spread})", verdict))
    if BREAK_EVEN_BY in cells:
        even = [lv for lv in levels if cells[lv]["OpenCV 1t"].wall >= cells[lv]["patched 1t"].wall]
        first = f"; faster from {min(even):.0%} of the levels run" if even else "; slower at every level run"
        verdict, ratio, spread = ratio_verdict(cells[BREAK_EVEN_BY]["patched 1t"],
                                               cells[BREAK_EVEN_BY]["OpenCV 1t"], 1.0)
        found.append((f"break-even with OpenCV at 1 thread by {BREAK_EVEN_BY:.0%} (measured {ratio:.2f}x there"
                      f"{first}; {spread})", verdict))
    if 0.0 in cells:
        verdict, ratio, spread = ratio_verdict(cells[0.0]["patched 1t"], cells[0.0]["stock 1t"], 1.0)
        found.append((f"0%: patched no slower than stock (stock/patched {ratio:.2f}x; {spread})", verdict))
    if verdicts is not None:
        verdicts.extend(found)
    return lines, [(f"{what} [{verdict}]", verdict == "PASS") for what, verdict in found]


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
    verdicts: list = []
    lines, _ = measure(args.cfg, args.weights, levels, args.rounds, args.repeat, args.omp_wait_policy, verdicts)
    print("\n".join(lines))
    for what, verdict in verdicts:
        print(f"target {what}: {verdict}")


if __name__ == "__main__":
    main()
