"""What the benchmarks share: FLOPs of a weights file, timing rounds in
alternating order, OpenCV's DNN forward, the machine's state, and the
agreement scores of the detector benchmarks (the evaluation split's parts,
a reference model's detections handed to worker processes).

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
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

import darknet_sparse as ds
from darknet_sparse.analysis.evaluate import DetectorReport, evaluate_detector
from darknet_sparse.analysis.metrics import Remembered
from darknet_sparse.darknet.driver import BUILDS, Driver, compile_driver  # noqa: F401  (re-exported)

ROOT = Path(__file__).resolve().parent.parent
#: How ``make images`` names video frames (``vtest_00500.jpg``); the rest of
#: the evaluation split are photos.
VIDEO_PREFIXES = ("vtest_", "Megamind_")
PARTS = ("video frames", "photos")

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


class Clock:
    """Wall-clock and CPU seconds (this process's and its finished children's) since it was made."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), cpu_now()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, cpu_now() - self.cpu


def cpu_now() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


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


# The evaluation split's two parts, scored apart.  ``make images``' evaluation
# split mixes two kinds of image: later frames of the two videos whose earlier
# frames are the whole training split (a street with pedestrians; a cartoon),
# and the photos, mostly of things no training frame shows (the dense model
# finds person, car and truck in the training frames; in the photos also
# animals, fruit, a bicycle, a kite).  Everything a benchmark ranks, fits or
# trains sees the training frames only, so one agreement score over the whole
# split averages an in-domain part and an out-of-domain one: :func:`agreement`
# reports both beside the whole, running the model once per image.

def parts(paths: Sequence[str | Path]) -> dict[str, list]:
    """The paths of each part, in their order."""
    frame = [Path(p).name.startswith(VIDEO_PREFIXES) for p in paths]
    return {"video frames": [p for p, f in zip(paths, frame) if f],
            "photos": [p for p, f in zip(paths, frame) if not f]}


def agreement(net, paths: Sequence[str | Path], reference, **options) -> tuple[DetectorReport, dict[str, float]]:
    """``evaluate_detector`` on all of ``paths``, and each part's mAP@0.5
    (NaN for a part with no image or no reference detection)."""
    model = Remembered(net)
    whole = evaluate_detector(model, paths, reference=reference, **options)
    by_part = {}
    for name, chosen in parts(paths).items():
        score = evaluate_detector(model, chosen, reference=reference, **options).map50 if chosen else None
        by_part[name] = float("nan") if score is None else score
    return whole, by_part


class SharedReference:
    """A reference model's detections in a plain dict (``seen``) that worker
    processes can be handed: in the parent, with its ``net``, an image not
    seen yet is detected and kept; in a worker (``net`` None, ``classes``
    given) it is a KeyError.  What ``evaluate_detector`` asks of a reference."""

    def __init__(self, net=None, seen: dict | None = None, classes: int | None = None):
        self.net, self.seen = net, {} if seen is None else seen
        self.detector_classes = net.detector_classes if net is not None else classes

    def detector_error(self) -> str | None:
        return self.net.detector_error() if self.net is not None else None

    def detect(self, image, thresh: float, hier: float, nms: float):
        key = (str(image), thresh, hier, nms)
        if key not in self.seen:
            if self.net is None:
                raise KeyError(f"{image}: no reference detections at {key[1:]}")
            self.seen[key] = self.net.detect(image, thresh, hier, nms)
        return self.seen[key]
