"""make bench-detector: the real COCO yolov3-tiny, pruned, on real images.

Writes ``benchmarks/detector.md`` (through a temp file) with the command
that made it and one section per part:

- *Speed* (:mod:`bench_detector_speed`): forward time at 0/50/70/90%
  magnitude sparsity on stock and patched Darknet (1 and 2 threads) and
  OpenCV's DNN module (1 and 2 threads).

A section is a function of the parsed arguments that returns Markdown lines
and targets ``(what, met)``; each target is printed and written as met or
MISSED.  Always exits 0 after writing: it is a report.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_detector_speed  # noqa: E402
from _common import ROOT, command_line  # noqa: E402

OUT = ROOT / "benchmarks" / "detector.md"


def speed(args) -> tuple[list[str], list[tuple[str, bool]]]:
    return bench_detector_speed.measure(args.cfg, args.weights, bench_detector_speed.LEVELS, args.rounds,
                                        args.repeat, args.omp_wait_policy)


#: (title, section function, what --skip calls it)
SECTIONS = (("Speed", speed, "speed"),)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", type=Path, default=bench_detector_speed.CFG)
    parser.add_argument("--weights", type=Path, default=bench_detector_speed.WEIGHTS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--skip", action="append", default=[], choices=[key for _, _, key in SECTIONS],
                        help="leave a section out (repeatable)")
    parser.add_argument("--rounds", type=int, default=3, help="speed: interleaved rounds")
    parser.add_argument("--repeat", type=int, default=3, help="speed: forwards per timed run")
    parser.add_argument("--omp-wait-policy", choices=("passive", "active", "default"), default="passive")
    args = parser.parse_args(argv)

    command = command_line()
    print(f"$ {command}")
    text = ["# yolov3-tiny (COCO) on real images", "",
            f"Made by `make bench-detector` (`{command}`), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
            ""]
    for title, section, key in SECTIONS:
        if key in args.skip:
            continue
        start = time.perf_counter()
        lines, targets = section(args)
        part = [f"## {title}", "", *lines, ""]
        part += [f"- target {what}: **{'met' if met else 'MISSED'}**" for what, met in targets]
        part += ["", f"({time.perf_counter() - start:.0f} s)", ""]
        print("\n".join(part))
        text += part
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text("\n".join(text))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
