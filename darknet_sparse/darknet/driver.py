"""A forward driver: ``_forward_driver.c`` compiled against one Darknet
build's ``libdarknet.a``, to run, time and compare forward passes of
several builds side by side, outside the binding (its commands are in the
C file's comment).  Linked with ``-Ofast``, like Darknet's own binary, so
denormals flush to zero the same way.

It lives in the package, not under ``tests/``, because the tests (the
sparse forward pass against stock) and the benchmarks (speed) both run it:
the package is what both import without reaching into each other's folders,
and it works on any build folder that ``scripts/build_darknet.sh`` made
(``libdarknet.a``, ``include/``, ``binding-cflags``, ``link-flags``).
:data:`BUILDS` names a checkout's (``make darknet-stock``, ``make
darknet``, ``make darknet-omp``); elsewhere it is empty.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .home import CHECKOUT

BUILDS = {} if CHECKOUT is None else {
    "stock": CHECKOUT / "build" / "darknet-stock", "patched": CHECKOUT / "build" / "darknet",
    # The patched build with OPENMP=1 (benchmarks/bench_detector_speed.py builds it).
    "patched-omp": CHECKOUT / "build" / "darknet-omp"}
SOURCE = Path(__file__).with_name("_forward_driver.c")


@dataclass(frozen=True)
class Driver:
    """One compiled driver; see ``_forward_driver.c`` for its commands."""

    name: str
    binary: Path

    def run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(self.binary), *map(str, args)], capture_output=True, text=True)
        if check and done.returncode:
            raise RuntimeError(f"{self.name} forward_driver {' '.join(map(str, args))} failed "
                               f"({done.returncode}):\n{done.stderr[-2000:]}")
        return done

    def predict(self, cfg: Path, weights: Path, out: Path) -> np.ndarray:
        """Every layer's output for the driver's fixed input, concatenated."""
        self.run("predict", cfg, weights, out)
        return np.fromfile(out, np.float32)

    def seconds(self, cfg: Path, weights: Path, repeat: int) -> float:
        """Median seconds of ``repeat`` forwards of one image."""
        return self.times(cfg, weights, repeat)[0]

    def times(self, cfg: Path, weights: Path, repeat: int) -> tuple[float, float]:
        """Median wall-clock and process-CPU seconds of ``repeat`` forwards of one image."""
        wall, cpu = self.run("time", cfg, weights, repeat).stdout.split()
        return float(wall), float(cpu)


def compile_driver(name: str, folder: Path, build: Path | None = None) -> Driver:
    """The driver for build ``name`` (a key of :data:`BUILDS`, or any name
    with its ``build`` folder; every build but ``stock`` is a patched one),
    compiled into ``folder``."""
    build = BUILDS[name] if build is None else build
    binary = folder / f"forward_driver-{name}"
    flags = (build / "binding-cflags").read_text().split() + (["-DSPARSE_FORWARD"] if name != "stock" else [])
    command = ["gcc", "-Ofast", "-Wall", *flags, f"-I{build / 'include'}", "-o", str(binary), str(SOURCE),
               str(build / "libdarknet.a"), *(build / "link-flags").read_text().split()]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"cannot build the forward driver ({' '.join(command)}):\n{done.stderr}")
    return Driver(name, binary)
