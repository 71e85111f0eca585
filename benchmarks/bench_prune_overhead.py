"""Training-iteration time of the patched Darknet with prune=1 against prune=0.

Both networks start from the example model (``cfg/digits.cfg`` and its
weights) with half of every weights array zeroed, and train in this process
through the binding on the same random batch, interleaved round by round
(the order alternates).  One iteration is one weight update: a pass of
Darknet's ``train_network`` over batch x subdivisions images.  Times are
the median per-iteration wall clock over the rounds.  The prune phase adds
one pass over each layer's weights per update; the target is an overhead of
at most 1%.

Needs ``make darknet binding``.  Always exits 0 after printing its table: it
is a report.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from darknet_sparse import darknet

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.01


def sparse_copy(cfg: Path, weights: Path, out: Path, fraction: float = 0.5) -> Path:
    """``weights`` with ``fraction`` of every weights array set to 0."""
    net = darknet.Network(cfg, weights)
    rng = np.random.default_rng(0)
    for i in range(net.num_layers):
        for name, view in net.params(i).items():
            if name.endswith("weights"):
                view[rng.random(view.size) < fraction] = 0
    net.save(out)
    return out


def seconds_per_iteration(net: darknet.Network, x: np.ndarray, y: np.ndarray, iterations: int) -> float:
    start = time.perf_counter()
    net.train(x, y, iterations)
    return (time.perf_counter() - start) / iterations


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", type=Path, default=ROOT / "cfg" / "digits.cfg")
    parser.add_argument("--weights", type=Path, default=ROOT / "cfg" / "digits.weights")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--iterations", type=int, default=10, help="weight updates per timed run")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        start = sparse_copy(args.cfg, args.weights, Path(tmp) / "start.weights")
        nets = {}
        for prune in (False, True):
            nets[prune] = darknet.Network(args.cfg, start)
            nets[prune].set_prune(prune)
    net = nets[False]
    rows = net.batch * net.subdivisions
    rng = np.random.default_rng(1)
    x = rng.random((rows, net.inputs), dtype=np.float32)
    y = np.eye(net.outputs, dtype=np.float32)[rng.integers(0, net.outputs, rows)]
    for each in nets.values():  # warm caches and allocations
        each.train(x, y, 2)
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for prune in ((False, True) if r % 2 == 0 else (True, False)):
            times[prune].append(seconds_per_iteration(nets[prune], x, y, args.iterations))

    off, on = (statistics.median(times[p]) for p in (False, True))
    ratio = on / off
    print(f"{args.cfg.name}: {rows} images per iteration, {args.rounds} rounds of {args.iterations} iterations")
    print(f"{'prune=0':>10} {off * 1e3:9.2f} ms/iteration")
    print(f"{'prune=1':>10} {on * 1e3:9.2f} ms/iteration")
    print(f"{'ratio':>10} {ratio:9.4f}  (target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
