"""Training-iteration time of the patched Darknet with prune=1 against prune=0.

The networks start from the example model (``cfg/digits.cfg`` and its
weights) with half of every weights array zeroed, and train in this process
through the binding on the same random batch, interleaved round by round
(the order rotates).  One iteration is one weight update: a pass of
Darknet's ``train_network`` over batch x subdivisions images.  Times are
this process's CPU time (Darknet runs on one thread here, so other load on a
shared machine inflates neither side), with ``[net] sparse_forward=dense``
so that only the prune phase differs (without it, prune=1 keeps the layers
sparse enough for the faster sparse forward pass, and wins), the median per iteration over the
rounds; a ratio is the median of each round's own ratio.  A second prune=0
network, timed the same way, shows how large a ratio noise alone makes (on
a busy 2-core machine, about 1-2%).  The prune phase adds one vectorised
pass over each layer's weights per update; the target is an overhead of at
most 1%.

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

from darknet_sparse.darknet import network as darknet

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.01
#: The runs, rotated round by round: a second prune=0 copy measures the noise.
RUNS = ("prune=0", "prune=1", "prune=0 again")


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
    start = time.process_time()
    net.train(x, y, iterations)
    return (time.process_time() - start) / iterations


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", type=Path, default=ROOT / "cfg" / "digits.cfg")
    parser.add_argument("--weights", type=Path, default=ROOT / "cfg" / "digits.weights")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iterations", type=int, default=5, help="weight updates per timed run")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / args.cfg.name
        cfg.write_text(args.cfg.read_text().replace("[net]\n", "[net]\nsparse_forward=dense\n", 1))
        start = sparse_copy(cfg, args.weights, Path(tmp) / "start.weights")
        nets = {name: darknet.Network(cfg, start) for name in RUNS}
    nets["prune=1"].set_prune(True)
    net = nets["prune=0"]
    rows = net.batch * net.subdivisions
    rng = np.random.default_rng(1)
    x = rng.random((rows, net.inputs), dtype=np.float32)
    y = np.eye(net.outputs, dtype=np.float32)[rng.integers(0, net.outputs, rows)]
    for each in nets.values():  # warm caches and allocations
        each.train(x, y, 2)
    times: dict[str, list[float]] = {name: [] for name in RUNS}
    for r in range(args.rounds):
        for name in RUNS[r % 3:] + RUNS[:r % 3]:
            times[name].append(seconds_per_iteration(nets[name], x, y, args.iterations))

    print(f"{args.cfg.name}: {rows} images per iteration, {args.rounds} rounds of {args.iterations} iterations")
    for name in RUNS:
        print(f"{name:>18} {statistics.median(times[name]) * 1e3:9.2f} ms/iteration (CPU)")
    ratio = _ratio(times["prune=1"], times["prune=0"])
    print(f"{'prune=1 / prune=0':>18} {ratio:9.4f}  (target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'})")
    print(f"{'noise (A/A)':>18} {_ratio(times['prune=0 again'], times['prune=0']):9.4f}  "
          "(the same ratio between two prune=0 copies)")


def _ratio(a: list[float], b: list[float]) -> float:
    """The median of the per-round ratios a/b."""
    return statistics.median(x / y for x, y in zip(a, b))


if __name__ == "__main__":
    main()
