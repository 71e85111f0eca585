"""CPU forward time of pruned yolov3-tiny with Darknet's initial weights:
stock Darknet, patched Darknet at 1 and 2 threads, OpenCV at 1 and 2.

Stock Darknet initialises and saves the weights of upstream's
``yolov3-tiny.cfg`` (416x416), so this needs no download; every conv layer's
weights are then pruned by magnitude to each level and the files run as in
``bench_detector_speed.py`` (the same engines, interleaved rounds, medians,
spreads, GFLOP/s of useful work, share of time outside the convolutions,
and issue 22's targets, each PASS, FAIL or INSIDE SPREAD).  The real
weights' run (``make bench-detector``) is the one the targets are about;
this one shows the same on weights of another distribution.

Needs ``make darknet darknet-stock darknet-omp``.  Always exits 0 after
printing its table: it is a report.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_detector_speed  # noqa: E402
from _common import command_line, compile_driver  # noqa: E402

CFG = Path("/usr/share/darknet/cfg/yolov3-tiny.cfg")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", type=Path, default=CFG)
    parser.add_argument("--levels", default=",".join(f"{lv:g}" for lv in bench_detector_speed.LEVELS),
                        help="comma-separated sparsities (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="forwards per timed run")
    parser.add_argument("--omp-wait-policy", choices=("passive", "active", "default"), default="passive")
    args = parser.parse_args(argv)
    levels = tuple(float(x) for x in args.levels.split(","))
    print(f"$ {command_line()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = folder / "initial.weights"
        compile_driver("stock", folder).run("init", args.cfg, weights)
        verdicts: list = []
        lines, _ = bench_detector_speed.measure(args.cfg, weights, levels, args.rounds, args.repeat,
                                                args.omp_wait_policy, verdicts)
    print("\n".join(lines))
    for what, verdict in verdicts:
        print(f"target {what}: {verdict}")


if __name__ == "__main__":
    main()
