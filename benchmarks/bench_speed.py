"""CPU forward time of pruned yolov3-tiny: stock Darknet, patched Darknet, OpenCV.

Stock Darknet initialises and saves the weights of upstream's
``yolov3-tiny.cfg`` (416x416); every layer's weights are then pruned by
magnitude to each level.  Stock and patched Darknet run the same files
through ``tests/helpers/forward_driver.c`` (one image, one thread), round by
round in alternating order; a run's time is the median of its forwards and
each cell is the best run.  Beside each level: the speed-up over stock and
the effective-FLOPs ratio (conv FLOPs ``2*n*size^2*c/groups*out_h*out_w``,
each layer's scaled by its fraction of non-zero weights), and how many conv
layers took the sparse path.  OpenCV's DNN module runs the dense model
(``cv2.setNumThreads(1)``).  Targets: at 90% at least 8x faster than stock
and faster than OpenCV dense; at 0% no slower than stock.

Needs ``make darknet darknet-stock``.  Always exits 0 after printing its
table: it is a report.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import darknet_sparse as ds  # noqa: E402
from _common import OpenCV, best_of_rounds, compile_driver, driver_timer, flops, machine  # noqa: E402

CFG = Path("/usr/share/darknet/cfg/yolov3-tiny.cfg")
LEVELS = (0.0, 0.5, 0.8, 0.9, 0.95)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", type=Path, default=CFG)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5, help="forwards per timed run")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        drivers = [compile_driver(name, folder) for name in ("stock", "patched")]
        files = {0.0: folder / "level-0.weights"}
        drivers[0].run("init", args.cfg, files[0.0])
        for level in LEVELS[1:]:
            files[level] = folder / f"level-{round(level * 100)}.weights"
            ds.threshold(ds.load(args.cfg, files[0.0]), files[level], ds.Magnitude(level))

        print(f"{args.cfg.name}, one image, one thread; best of {args.rounds} runs of "
              f"{args.repeat} forwards (median); {machine()}")
        print(f"{'pruned':>6} {'stock s':>8} {'patched s':>9} {'speed-up':>8} {'FLOPs ratio':>11} {'sparse convs':>12}")
        times = {}
        for level, weights in files.items():
            timers = {d.name: driver_timer(d, args.cfg, args.repeat) for d in drivers}
            times[level] = best_of_rounds(timers, weights, args.rounds)
            dense, effective = flops(args.cfg, weights)
            paths = drivers[1].run("paths", args.cfg, weights).stdout.split()
            convs = [p for p, layer in zip(paths, ds.load_model(args.cfg).layers) if layer.type == "convolutional"]
            stock, patched = times[level]["stock"], times[level]["patched"]
            print(f"{level:>6.0%} {stock:>8.3f} {patched:>9.3f} {stock / patched:>7.1f}x "
                  f"{dense / max(effective, 1):>10.1f}x {convs.count('1'):>5} of {len(convs):<3}")
        dnn = OpenCV(args.cfg)
        opencv = best_of_rounds({"opencv": dnn.timer(args.repeat, threads=1)}, files[0.0], args.rounds)["opencv"]
        print(f"OpenCV {dnn.version} DNN, dense model: {opencv:.3f} s")

    at90, at0 = times[0.9], times[0.0]
    checks = [
        ("90%: >= 8x faster than stock", at90["stock"] / at90["patched"] >= 8),
        ("90%: faster than OpenCV dense", at90["patched"] < opencv),
        ("0%: no slower than stock (5% noise allowed)", at0["patched"] <= 1.05 * at0["stock"]),
    ]
    for what, met in checks:
        print(f"target {what}: {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
