"""A timing driver for AlexeyAB's Darknet: ``_ab_driver.c`` compiled
against one build of the fork (``make darknet-alexeyab``, ``-stock``,
``-omp``, ``-stock-omp``: any folder ``scripts/build_darknet_alexeyab.sh``
made, with ``obj/``, ``include/``, ``src/`` and ``build-flags``), to time
forward passes of several builds side by side outside the binding; the
fork's counterpart of :mod:`.driver`.  Its commands are in the C file's
comment.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .home import CHECKOUT

BUILDS = {} if CHECKOUT is None else {
    name: CHECKOUT / "build" / name
    for name in ("darknet-alexeyab", "darknet-alexeyab-stock", "darknet-alexeyab-omp", "darknet-alexeyab-stock-omp")}
SOURCE = Path(__file__).with_name("_ab_driver.c")


@dataclass(frozen=True)
class AbDriver:
    """One compiled driver."""

    name: str
    binary: Path

    def _ms(self, command: str, cfg: Path, weights: Path, repeat: int, threads: int | None) -> list[float]:
        env = None if threads is None else dict(os.environ, OMP_NUM_THREADS=str(threads))
        args = [str(self.binary), command, str(cfg), str(weights), str(repeat)]
        done = subprocess.run(args, capture_output=True, text=True, env=env)
        if done.returncode:
            raise RuntimeError(f"{self.name}: {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        # Darknet prints lines of its own on stdout too.
        return [float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("ms ")]

    def milliseconds(self, cfg: Path, weights: Path, repeat: int, threads: int | None = None) -> list[float]:
        """Milliseconds of each of ``repeat`` fused batch-1 forwards (after one warm-up)."""
        return self._ms("time", cfg, weights, repeat, threads)

    def freeze_milliseconds(self, cfg: Path, weights: Path, repeat: int) -> list[float]:
        """Milliseconds of each of ``repeat`` runs of the prune hook over every layer (patched builds)."""
        return self._ms("freeze-time", cfg, weights, repeat, None)


def compile_ab_driver(build: Path, out: Path) -> AbDriver:
    """The driver compiled against the fork's build folder ``build`` into the file ``out``."""
    build = Path(build)
    if not (build / "build-flags").is_file():
        raise RuntimeError(f"{build} is not a built AlexeyAB tree (no build-flags)")
    objects = sorted(str(o) for o in (build / "obj").glob("*.o") if o.name != "darknet.o")
    extra = ["-fopenmp"] if "OPENMP=1" in (build / "build-flags").read_text() else []
    command = ["g++", "-O1", "-x", "c", str(SOURCE), "-x", "none", f"-I{build / 'include'}", f"-I{build / 'src'}",
               *objects, "-o", str(out), "-lm", "-pthread", *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"cannot build the AlexeyAB driver ({' '.join(command)}):\n{done.stderr[-3000:]}")
    return AbDriver(build.name, Path(out))
