"""What the speed benchmarks share: FLOPs of a weights file, timing rounds
in alternating order, OpenCV's DNN forward, and the machine's state.

A timer is a function of a weights file that makes one timed run and
returns its :class:`Run`: the median wall-clock and process-CPU seconds of
its forwards.  :func:`rounds_of` runs every timer once per round, the order
reversed on every other round, so a slow spell of a shared machine does not
land on one contestant only.  On a loaded machine the CPU seconds of a
one-thread run stay close to what it would take alone, where the wall clock
does not.
"""
from __future__ import annotations

import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

import darknet_sparse as ds

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers.forward_driver import BUILDS, Driver, compile_driver  # noqa: E402,F401  (re-exported)

class Run(NamedTuple):
    """Median seconds per forward of one timed run."""

    wall: float
    cpu: float  # the process's CPU time, all its threads


Timer = Callable[[Path], Run]


def flops(cfg: Path, weights: Path) -> tuple[int, int]:
    """Dense and effective FLOPs of one image (non-zero weights only)."""
    wf = ds.load(cfg, weights)
    dense = effective = 0
    for layer in wf.model.layers:
        arrays = wf.arrays(layer.index)
        for param in layer.prunable():
            dense += 2 * param.count * param.macs
            effective += 2 * int(np.count_nonzero(arrays[param.name])) * param.macs
    return dense, effective


def rounds_of(timers: dict[str, Timer], weights: Path, rounds: int) -> dict[str, list[Run]]:
    """Every timer's runs on ``weights``, the order alternating per round."""
    names = list(timers)
    times: dict[str, list[Run]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timers[name](weights))
    return times


def best_of_rounds(timers: dict[str, Timer], weights: Path, rounds: int) -> dict[str, float]:
    """Every timer's fastest run (wall clock)."""
    return {name: min(run.wall for run in runs) for name, runs in rounds_of(timers, weights, rounds).items()}


def median_run(runs: list[Run]) -> Run:
    """Wall and CPU seconds, each the median over ``runs``."""
    return Run(statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs))


def driver_timer(driver: Driver, cfg: Path, repeat: int, threads: int = 1) -> Timer:
    """A forward_driver's median of ``repeat`` forwards, at ``threads`` OpenMP threads."""
    def run(weights: Path) -> float:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        return Run(*driver.times(cfg, weights, repeat))
    return run


class OpenCV:
    """OpenCV's DNN module on one cfg: one loaded net per weights file."""

    def __init__(self, cfg: Path, size: tuple[int, int] = (416, 416)):
        import cv2
        self.cv2, self.cfg = cv2, cfg
        self.blob = np.random.default_rng(0).random((1, 3, size[1], size[0]), dtype=np.float32)
        self.nets: dict[Path, object] = {}

    @property
    def version(self) -> str:
        return self.cv2.__version__

    def _net(self, weights: Path):
        if weights not in self.nets:
            net = self.cv2.dnn.readNetFromDarknet(str(self.cfg), str(weights))
            net.setPreferableBackend(self.cv2.dnn.DNN_BACKEND_OPENCV)
            net.setPreferableTarget(self.cv2.dnn.DNN_TARGET_CPU)
            self.nets[weights] = net
        return self.nets[weights]

    def timer(self, repeat: int, threads: int) -> Timer:
        """Median seconds of ``repeat`` forwards (after one untimed), at ``threads``."""
        def run(weights: Path) -> Run:
            self.cv2.setNumThreads(threads)
            net = self._net(weights)
            names = net.getUnconnectedOutLayersNames()
            net.setInput(self.blob)
            net.forward(names)
            wall, cpu = [], []
            for _ in range(repeat):
                start, cpu_start = time.perf_counter(), time.process_time()
                net.setInput(self.blob)
                net.forward(names)
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - cpu_start)
            return Run(statistics.median(wall), statistics.median(cpu))
        return run

    def layer_milliseconds(self, weights: Path, repeat: int, threads: int = 1) -> dict[str, float]:
        """Median milliseconds per layer over ``repeat`` forwards, from
        OpenCV's own profile (``getPerfProfile``), by OpenCV's layer name."""
        self.cv2.setNumThreads(threads)
        net = self._net(weights)
        names = net.getUnconnectedOutLayersNames()
        samples = []
        for _ in range(repeat + 1):  # the first, untimed, warms up
            net.setInput(self.blob)
            net.forward(names)
            samples.append(net.getPerfProfile()[1].ravel() / self.cv2.getTickFrequency() * 1000)
        return dict(zip(net.getLayerNames(), np.median(samples[1:], axis=0).tolist()))


def machine() -> str:
    """CPU count and load, to read a table from a shared machine by."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


def command_line() -> str:
    """The command that is running, to print beside its results."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])
