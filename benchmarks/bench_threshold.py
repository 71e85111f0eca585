"""Time ``darknet-sparse threshold`` against ``cp`` on stock-initialised VGG-16.

The requirement: on ``vgg-16.weights`` (553 MB) as stock Darknet initialises
and saves it, absolute mode takes at most 1.5x the time of ``cp`` of the same
file with a peak memory of at most 0.25x the file size; magnitude mode at
most 2.5x ``cp`` and 1x the file size.

Every command runs as its own process, interleaved round by round (cp,
absolute, magnitude, start-up, floor, reference, cp, ...), with the page
cache warm and the output removed after each run, so each run writes a new
file as ``cp`` does.  Times are the median wall-clock of the rounds, with
the median CPU time (user + system) beside them, which other users of the
machine disturb less; peak memory is the child's ``ru_maxrss`` from
``os.wait4``.  Python start-up with the numpy import is part of the tool's
time (``cp`` has none) and has a row of its own.  Two more rows calibrate
the machine: a Python copy through one buffer (the least a tool that edits
in user space pays, bar the numpy import) and a plain numpy
read-threshold-write of the whole file, the reference the targets were set
against ("about 3x cp and 2.2x the file size in memory").

The weights are made once by ``tests/helpers/stock_tool.c init`` linked
against Debian's stock ``libdarknet.so`` and kept in ``build/bench/``.
The script always exits 0 after printing its table: it is a report.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench"
CFG = Path("/usr/share/darknet/cfg/vgg-16.cfg")
WEIGHTS = WORK / "vgg-16.weights"
OUTPUT = WORK / "out.weights"
STOCK_TOOL_SOURCE = ROOT / "tests" / "helpers" / "stock_tool.c"
STOCK_TOOL = WORK / "stock_tool"
DARKNET_LIB = Path("/usr/lib/darknet")

#: Absolute threshold: prunes about half of fc6 (uniform in +-0.0089) and
#: a fifth of the deepest convolutions (normal, std 0.021).
THRESHOLD = 0.005
SPARSITY = 0.5

#: The least any Python tool pays: start-up, then the file read into one
#: 1 MiB buffer and written out (no numpy, no edit).
FLOOR = """
import sys
buffer = memoryview(bytearray(1 << 20))
with open(sys.argv[1], "rb", buffering=0) as src, open(sys.argv[2], "wb", buffering=0) as dst:
    while size := src.readinto(buffer):
        dst.write(buffer[:size])
"""
#: A plain numpy read-threshold-write of the whole file (the reference).
NAIVE = """
import sys, numpy as np
data = np.fromfile(sys.argv[1], np.uint8)
weights = data[20:].view(np.float32)
weights[np.abs(weights) < float(sys.argv[3])] = 0
data.tofile(sys.argv[2])
"""


@dataclass
class Target:
    """Upper bounds, as multiples of cp's time and of the file size."""

    time: float
    memory: float


@dataclass
class Row:
    """One command and what each of its runs measured."""

    name: str
    command: list[str]
    target: Target | None = None
    writes: bool = True
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peak_kib: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")

    @property
    def peak_bytes(self) -> int:
        return 1024 * max(self.peak_kib, default=0)


def run_checked(command: list[str]) -> None:
    """Run a set-up step; its output is shown only if it fails."""
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        sys.exit(f"bench: {' '.join(command)} failed ({done.returncode}):\n{done.stdout}")


def make_weights() -> None:
    """Build the stock tool and let stock Darknet initialise and save VGG-16,
    once: an existing file is reused."""
    if WEIGHTS.is_file():
        return
    WORK.mkdir(parents=True, exist_ok=True)
    if not STOCK_TOOL_SOURCE.is_file():
        sys.exit(f"bench: {STOCK_TOOL_SOURCE} is missing (it initialises the weights)")
    run_checked(["gcc", "-O2", f"-I{DARKNET_LIB / 'include'}", str(STOCK_TOOL_SOURCE), "-o", str(STOCK_TOOL),
                 f"-L{DARKNET_LIB}", "-ldarknet", f"-Wl,-rpath,{DARKNET_LIB}", "-lm"])
    partial = WEIGHTS.with_suffix(".partial")
    run_checked([str(STOCK_TOOL), "init", str(CFG), str(partial)])
    partial.rename(WEIGHTS)


def check_weights() -> None:
    """The file must be what the cfg describes, or the timings mean nothing.

    Checked in a child: this process stays small, because a child's peak
    memory starts from its parent's until it execs.
    """
    check = ("import sys, darknet_sparse as ds; wf = ds.load(sys.argv[1], sys.argv[2]); "
             "sys.exit(wf.partial or wf.trailing != 0)")
    if subprocess.run([sys.executable, "-c", check, str(CFG), str(WEIGHTS)], cwd=ROOT).returncode:
        sys.exit(f"bench: {WEIGHTS} does not match {CFG}; remove it to have it made again")


def compile_package() -> None:
    """Byte-compile darknet_sparse as an install would, so that no run pays
    for compiling it (PYTHONDONTWRITEBYTECODE would make every run pay)."""
    run_checked([sys.executable, "-m", "compileall", "-q", str(ROOT / "darknet_sparse")])


def warm_cache(path: Path) -> None:
    """Read the file once so that every run finds it in the page cache."""
    buffer = bytearray(1 << 20)
    with open(path, "rb", buffering=0) as fp:
        while fp.readinto(buffer):
            pass


def rows() -> list[Row]:
    python = sys.executable
    tool = [python, "-m", "darknet_sparse", "threshold", str(WEIGHTS), "--cfg", str(CFG), "-o", str(OUTPUT)]
    return [
        Row("cp", ["cp", str(WEIGHTS), str(OUTPUT)]),
        Row(f"threshold absolute -t {THRESHOLD}", tool + ["-t", str(THRESHOLD)], Target(1.5, 0.25)),
        Row(f"threshold magnitude -s {SPARSITY}", tool + ["--mode", "magnitude", "-s", str(SPARSITY)],
            Target(2.5, 1.0)),
        Row("python start-up + import", [python, "-c", "import darknet_sparse.pruning.prune"], writes=False),
        Row("floor: python read + write", [python, "-c", FLOOR, str(WEIGHTS), str(OUTPUT)]),
        Row("reference: plain numpy", [python, "-c", NAIVE, str(WEIGHTS), str(OUTPUT), str(THRESHOLD)]),
    ]


def measure(row: Row, size: int) -> None:
    """Run the command once; record wall time and peak memory."""
    OUTPUT.unlink(missing_ok=True)
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        child = subprocess.Popen(row.command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)
        row.seconds.append(time.perf_counter() - start)
        errors.seek(0)
        error = errors.read().decode(errors="replace").strip()
    row.cpu.append(usage.ru_utime + usage.ru_stime)
    row.peak_kib.append(usage.ru_maxrss)
    code = os.waitstatus_to_exitcode(status)
    if code:
        row.failures.append(f"exit {code}: {error.splitlines()[-1] if error else ''}")
    elif row.writes and (not OUTPUT.is_file() or OUTPUT.stat().st_size != size):
        row.failures.append("no output of the input's size")
    OUTPUT.unlink(missing_ok=True)


def verdict(row: Row, cp: float, size: int) -> str:
    if row.failures:
        return "FAIL: " + row.failures[0]
    if row.target is None:
        return ""
    time_ok = row.median <= row.target.time * cp
    memory_ok = row.peak_bytes <= row.target.memory * size
    return (f"{'PASS' if time_ok else 'FAIL'} time <= {row.target.time:g}x, "
            f"{'PASS' if memory_ok else 'FAIL'} memory <= {row.target.memory:g}x")


def report(table: list[Row], size: int, load: tuple[float, float]) -> str:
    cp, cp_cpu = table[0].median, table[0].cpu_median
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [f"{WEIGHTS} ({size / 1e6:.0f} MB), {len(table[0].seconds)} rounds, load average "
             f"{load[0]:.2f} before, {load[1]:.2f} after, {os.cpu_count()} CPUs (with load, times are noisy)",
             f"peak memory is each child's ru_maxrss; it starts from this script's own {own:.1f} MiB",
             "",
             f"{'command':34} {'median s':>9} {'min s':>7} {'x cp':>6} {'cpu s':>6} {'x cp':>6} "
             f"{'peak MiB':>9} {'x file':>7}  target (on median time and peak memory)",
             "-" * 120]
    for row in table:
        lines.append(f"{row.name:34} {row.median:9.3f} {min(row.seconds):7.3f} {row.median / cp:6.2f} "
                     f"{row.cpu_median:6.3f} {row.cpu_median / cp_cpu:6.2f} "
                     f"{row.peak_bytes / 2**20:9.1f} {row.peak_bytes / size:7.3f}  {verdict(row, cp, size)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="runs of each command, interleaved (default 7)")
    args = parser.parse_args()
    make_weights()
    check_weights()
    compile_package()
    size = WEIGHTS.stat().st_size
    warm_cache(WEIGHTS)
    table = rows()
    before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for row in table:
            measure(row, size)
    print(report(table, size, (before, os.getloadavg()[0])))


if __name__ == "__main__":
    main()
