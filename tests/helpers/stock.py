"""Stock (unpatched, Debian) Darknet as a test oracle.

``stock_tool.c`` is compiled against Debian's ``libdarknet.so`` (which
``make system-deps`` installs) and run as a subprocess, so a crash inside
Darknet fails one test instead of the whole session.  What it prints while
parsing a cfg (one line per layer, with output shapes and the BFLOPs of each
convolution) is parsed here too.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STOCK_LIB = Path("/usr/lib/darknet")
UPSTREAM_CFG_DIR = Path("/usr/share/darknet/cfg")
HERE = Path(__file__).parent
CFG_DIR = HERE.parent / "cfgs"
#: AlexeyAB's cfgs and the sizes its Darknet saves for them (test data; see its README).
ALEXEYAB_DIR = HERE.parent / "data" / "alexeyab-cfg"

#: Every cfg upstream ships (45), and our hand-written pjreddie cfgs that
#: cover the layer types no upstream cfg uses (local with pad, crnn, lstm,
#: deconvolutional, batchnorm, the detection heads ...).
UPSTREAM_CFGS = sorted(UPSTREAM_CFG_DIR.glob("*.cfg"))
PJREDDIE_CFGS = sorted(CFG_DIR.glob("pj_*.cfg"))
#: Stock Darknet dies with SIGFPE loading these (deconv layers never set
#: ``groups``, and ``load_convolutional_weights`` divides by it).
CANNOT_LOAD = {"pj_deconv"}
#: Files up to this size are written and round-tripped; bigger ones (vgg-16
#: 553 MB, yolov1 789 MB ...) are only measured, to keep CI fast on 2 cores.
ROUND_TRIP_LIMIT = 120 << 20

_LAYER = re.compile(r"\s*(\d+) ")
_BFLOPS = re.compile(r"(\d+\.\d{3}) BFLOPs")
_SHAPES = re.compile(r"(\d+) x\s*(\d+) x\s*(\d+)\s+->\s+(\d+) x\s*(\d+) x\s*(\d+)")


def build(source: Path, out_dir: Path) -> Path:
    """Compile ``stock_tool.c`` against the stock library; fails loudly."""
    binary = out_dir / "stock_tool"
    command = ["gcc", "-O1", "-Wall", "-o", str(binary), str(source), f"-I{STOCK_LIB}/include",
               f"-L{STOCK_LIB}", "-ldarknet", f"-Wl,-rpath,{STOCK_LIB}", "-lm"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"cannot build the stock oracle ({' '.join(command)}):\n{done.stderr}")
    return binary


@dataclass(frozen=True)
class Saved:
    """What stock Darknet wrote for a cfg it initialised itself."""

    size: int  # bytes it wrote
    log: str  # its stderr: the layer table
    path: Path | None  # the file, when not bigger than the limit asked for


@dataclass(frozen=True)
class StockTool:
    binary: Path

    def _run(self, *args: str | Path, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
        done = subprocess.run([str(self.binary), *map(str, args)], stdout=stdout, stderr=subprocess.PIPE)
        if done.returncode:
            tail = done.stderr.decode(errors="replace")[-2000:]
            raise AssertionError(f"stock_tool {' '.join(map(str, args))} exited {done.returncode}:\n{tail}")
        return done

    def init(self, cfg: Path, out: Path, limit: int) -> Saved:
        """Let stock Darknet initialise and save ``cfg``; keep the file in
        ``out`` only if it is at most ``limit`` bytes (the size is always
        measured, through a pipe)."""
        log = out.with_suffix(".log")
        size = 0
        with open(log, "wb") as err, open(out, "wb") as fp:
            process = subprocess.Popen([str(self.binary), "init", str(cfg), "/dev/stdout"],
                                       stdout=subprocess.PIPE, stderr=err)
            while data := process.stdout.read(1 << 20):
                size += len(data)
                if size <= limit:
                    fp.write(data)
            if process.wait():
                raise AssertionError(f"stock init of {cfg} exited {process.returncode}: {log.read_text()[-2000:]}")
        if size > limit:
            out.unlink()
        return Saved(size, log.read_text(errors="replace"), out if size <= limit else None)

    def resave(self, cfg: Path, weights: Path, out: Path) -> None:
        """Stock ``load_weights`` then ``save_weights``."""
        self._run("resave", cfg, weights, out)

    def dump(self, cfg: Path, weights: Path, out: Path) -> dict[tuple[int, str], np.ndarray]:
        """Every array the stock loader filled, keyed like our slots:
        ``(layer index, name)``."""
        listing = self._run("dump", cfg, weights, out).stdout.decode().split("\n")
        data = np.fromfile(out, "<f4")
        arrays, offset = {}, 0
        for line in filter(None, listing):
            index, name, count = line.split()
            arrays[int(index), name] = data[offset:offset + int(count)]
            offset += int(count)
        assert offset == data.size, f"dump of {weights}: listed {offset} floats, wrote {data.size}"
        return arrays

    def load_signal(self, cfg: Path, weights: Path, out: Path) -> int:
        """The signal that kills stock Darknet loading ``weights`` (0: none)."""
        done = subprocess.run([str(self.binary), "resave", str(cfg), str(weights), str(out)],
                              capture_output=True)
        return -done.returncode if done.returncode < 0 else 0


def printed_layers(log: str) -> dict[int, list[str]]:
    """The lines Darknet printed for each layer while parsing (a layer's
    index starts its first line; sublayers and option defaults follow)."""
    layers: dict[int, list[str]] = {}
    current = None
    for line in log.split("\n"):
        match = _LAYER.match(line)
        if match:
            current = int(match.group(1))
        if current is not None:
            layers.setdefault(current, []).append(line)
    return layers


def printed_bflops(lines: list[str]) -> list[str]:
    """The ``0.150 BFLOPs`` figures among a layer's lines (one per convolution)."""
    return [m.group(1) for line in lines for m in _BFLOPS.finditer(line)]


def printed_output(lines: list[str]) -> tuple[int, int, int] | None:
    """The last ``w x h x c -> w x h x c`` a layer printed, as our (c, h, w)."""
    shapes = [m.groups() for line in lines for m in _SHAPES.finditer(line)]
    if not shapes:
        return None
    w, h, c = map(int, shapes[-1][3:])
    return c, h, w
