"""AlexeyAB's Darknet in the tests: the two builds (patched and stock, the
oracle), the tool (``ab_tool.c``) compiled against each, cfg edits that make a
training run take seconds on a CPU, and a small detection set.

``make darknet-alexeyab darknet-alexeyab-stock`` (or ``make test``) builds the
two trees in build/; where no source of the fork was reachable, the build
leaves build/darknet-alexeyab.unavailable and the conftest hook
(``ab_hooks``) reports the AlexeyAB tests as not run, with that reason.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# DARKNET_SPARSE_TEST_AB_BUILD: another build folder (test_alexeyab_build.py runs pytest on an empty one).
BUILD = Path(os.environ.get("DARKNET_SPARSE_TEST_AB_BUILD") or REPO / "build")
PATCHED = BUILD / "darknet-alexeyab"
STOCK = BUILD / "darknet-alexeyab-stock"
#: The patched build with OPENMP=1 (make test builds it too: the sparse forward pass with threads).
PATCHED_OMP = BUILD / "darknet-alexeyab-omp"
UNAVAILABLE = BUILD / "darknet-alexeyab.unavailable"
CFGS = REPO / "tests" / "data" / "alexeyab-cfg"
TRAIN_IMAGES = REPO / "data" / "images" / "train"
TOOL_SOURCE = Path(__file__).with_name("ab_tool.c")


def built(tree: Path) -> bool:
    return all((tree / name).is_file() for name in ("darknet", "libdarknet.so", "include/darknet.h"))


def require(tree: Path) -> Path:
    """The tree's darknet binary; a clear failure (never a skip) when it is not built."""
    if not built(tree):
        target = {PATCHED: "darknet-alexeyab", STOCK: "darknet-alexeyab-stock"}.get(tree, "alexeyab-if-available")
        raise AssertionError(f"{tree} is not built: run `make {target}` (make test builds it)")
    return tree / "darknet"


def compile_tool(tree: Path, out: Path) -> Path:
    """``ab_tool.c`` compiled against ``tree``'s headers and linked with its
    objects (every one but the darknet command's main)."""
    require(tree)
    objects = sorted(str(o) for o in (tree / "obj").glob("*.o") if o.name != "darknet.o")
    flags = (tree / "build-flags").read_text()
    extra = ["-fopenmp"] if "OPENMP=1" in flags else []
    command = ["g++", "-O1", "-x", "c", str(TOOL_SOURCE), "-x", "none", f"-I{tree / 'include'}", f"-I{tree / 'src'}",
               *objects, "-o", str(out), "-lm", "-pthread", *extra]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return out


def run(command: list, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a Darknet command; its output is in the assertion message when it fails."""
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else dict(os.environ, **env), errors="replace")
    assert done.returncode == 0, f"{' '.join(map(str, command))} exited {done.returncode}:\n" \
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def edit_cfg(text: str, net: dict | None = None, sections: dict[str, dict] | None = None) -> str:
    """``text`` with [net] keys set to ``net`` and, in every section of each type
    in ``sections`` (e.g. ``{"yolo": {"random": 0}}``), those keys set: an
    existing line is replaced, a missing key appended to the section."""
    wanted = {"net": dict(net or {}), **{k: dict(v) for k, v in (sections or {}).items()}}
    out: list[str] = []
    current: str | None = None
    pending: dict = {}

    def close() -> None:
        out.extend(f"{k}={v}" for k, v in pending.items())

    for line in text.splitlines():
        header = re.match(r"\s*\[([^\]]+)\]", line)
        if header:
            close()
            current = header.group(1).strip()
            current = "net" if current == "network" else current
            pending = dict(wanted.get(current, {}))
            out.append(line)
            continue
        key = re.match(r"\s*([A-Za-z_0-9]+)\s*=", line)
        if key and key.group(1) in pending:
            out.append(f"{key.group(1)}={pending.pop(key.group(1))}")
        elif key and current in wanted and key.group(1) in wanted[current]:
            continue  # a repeated key: the first occurrence holds the value
        else:
            out.append(line)
    close()
    return "\n".join(out) + "\n"


#: A yolov4-tiny training run of seconds on a CPU: 96x96 input, 2 images a
#: batch, no burn-in, no resizing, no mosaic.
TINY_TRAIN = {"batch": 2, "subdivisions": 1, "width": 96, "height": 96, "burn_in": 0, "max_batches": 4,
              "learning_rate": 0.001, "steps": "1000,2000", "mosaic": 0}


@dataclass
class DetectionSet:
    data: Path
    backup: Path


def write_detection_set(folder: Path, images: int = 4, classes: int = 80) -> DetectionSet:
    """``images`` of data/images/train, written as 128x128 PNGs in a tint
    (each pixel's luminance v as r, g, b = v, v + 10, v + 20), with one
    made-up box each in a label file beside it, and the .data file of the set.

    The tint: without OpenCV the fork's detection loader runs every image
    through rgb_to_hsv, whose hue is 0/0 for a grey pixel (r = g = b); the
    NaN then turned the ciou loss and the weights NaN in about one run in
    four.  With r < g < b everywhere, also after any resize (a convex
    combination keeps the order), no pixel is grey."""
    from PIL import Image
    found = sorted(TRAIN_IMAGES.glob("*.jpg"))[:images]
    assert len(found) == images, f"{TRAIN_IMAGES} has {len(found)} images, {images} wanted: run `make images`"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    paths = []
    for i, image in enumerate(found):
        grey = np.asarray(Image.open(image).convert("L").resize((128, 128)), dtype=np.float32)
        v = np.round(grey * 235 / 255).astype(np.uint8)
        png = folder / "img" / f"{image.stem}.png"
        Image.fromarray(np.stack([v, v + 10, v + 20], axis=-1)).save(png)
        png.with_suffix(".txt").write_text(f"{i % classes} 0.5 0.5 {0.2 + 0.1 * (i % 4):.2f} 0.3\n")
        paths.append(str(png))
    (folder / "train.txt").write_text("\n".join(paths) + "\n")
    (folder / "names.txt").write_text("".join(f"c{i}\n" for i in range(classes)))
    backup = folder / "backup"
    backup.mkdir(exist_ok=True)
    data = folder / "set.data"
    data.write_text(f"classes={classes}\ntrain={folder / 'train.txt'}\nvalid={folder / 'train.txt'}\n"
                    f"names={folder / 'names.txt'}\nbackup={backup}\nsavelast=1\n")
    return DetectionSet(data, backup)


def weight_arrays(cfg: Path, weights: Path) -> dict[tuple[int, str], np.ndarray]:
    """Every prunable weights array of the file (role ``weights``: convolutional,
    connected, local and recurrent sub-layers), by (layer index, name)."""
    import darknet_sparse as ds
    wf = ds.load(cfg, weights, fork="alexeyab")
    found = {}
    for layer in wf.model.layers:
        names = [p.name for p in layer.params if p.role == "weights"]
        if names:
            arrays = wf.arrays(layer.index)
            for name in names:
                found[(layer.index, name)] = np.array(arrays[name], dtype=np.float32)
    return found


def read_forward(path: Path) -> dict[int, tuple[int, np.ndarray]]:
    """``ab_tool forward``'s file: layer index -> (type, output)."""
    raw = Path(path).read_bytes()
    out, at = {}, 0
    while at < len(raw):
        index, kind, count = np.frombuffer(raw, dtype=np.int32, count=3, offset=at)
        at += 12
        out[int(index)] = (int(kind), np.frombuffer(raw, dtype=np.float32, count=int(count), offset=at).copy())
        at += 4 * int(count)
    return out


def with_role_set(cfg: Path, weights: Path, out: Path, role: str, value: float) -> Path:
    """``weights`` with every array of ``role`` (e.g. rolling_variance) set to
    ``value``, written to ``out``.  The fork initialises rolling variances to
    0, so batch norm at inference multiplies by 1/sqrt(1e-5) and activations of
    an untrained net overflow after some 30 layers; 1 keeps them finite."""
    import darknet_sparse as ds
    model = ds.load_model(cfg, fork="alexeyab")
    raw = bytearray(Path(weights).read_bytes())
    at = 20
    for layer in model.layers:
        for p in layer.params:
            if p.role == role:
                raw[at:at + 4 * p.count] = np.full(p.count, value, dtype=np.float32).tobytes()
            at += 4 * p.count
    assert at == len(raw), f"{weights}: {len(raw)} bytes, the layout says {at}"
    Path(out).write_bytes(bytes(raw))
    return Path(out)


def copy_photos(folder: Path, train: int = 8, evaluation: int = 4) -> dict[str, Path]:
    """The first ``train`` training and ``evaluation`` evaluation frames of
    data/images, copied into ``folder``/train and ``folder``/eval (folders
    of the user's for a loop to read)."""
    found = {}
    for name, source, count in (("train", "train", train), ("eval", "eval", evaluation)):
        found[name] = folder / name
        found[name].mkdir()
        for image in sorted((REPO / "data" / "images" / source).glob("*.jpg"))[:count]:
            shutil.copy(image, found[name])
    return found
