"""A command killed (SIGKILL) in the middle of writing its output leaves
nothing at the output's name and its input as it was, and running it again
succeeds: outputs go to a temporary file that is renamed over the target
only when complete.  For ``threshold``, ``slim`` and ``recalibrate``, on a
model large enough (67 MB) that the write takes a while to watch."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from darknet_sparse.format.files import load_model
from darknet_sparse.format.weightsfile import new_file

#: conv (BN) -> connected 4096 -> 4096 (BN): 16.8M floats, 67 MB.
BIG_CFG = """\
[net]
batch=2
height=16
width=16
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[connected]
batch_normalize=1
output=4096
activation=leaky

[connected]
output=4
activation=linear

[softmax]
"""
COMMAND = [sys.executable, "-m", "darknet_sparse"]


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, Path]:
    """The big model (half the convolution's channels with tiny scales, for
    slim) and a few calibration images."""
    folder = tmp_path_factory.mktemp("big")
    cfg = folder / "big.cfg"
    cfg.write_text(BIG_CFG)
    model = load_model(cfg, "pjreddie")
    rng = np.random.default_rng(0)
    arrays = {}
    for layer in model.layers:
        for param in layer.params:
            values = rng.standard_normal(param.count, np.float32) * np.float32(0.05)
            if param.role == "rolling_variance":
                values = np.abs(values) + 1
            if layer.index == 0 and param.name == "scales":
                values[::2] = 1e-4
            arrays[(layer.index, param.name)] = values
    weights = folder / "big.weights"
    new_file(model, weights, arrays)
    images = folder / "images"
    images.mkdir()
    for k in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"{k}.png")
    return {"cfg": cfg, "weights": weights, "images": images}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _being_written(output: Path) -> list[int]:
    """The sizes of the output and of its temporary files (``.NAME.*.tmp``)."""
    sizes = []
    for entry in os.scandir(output.parent):
        if entry.name == output.name or (entry.name.startswith(f".{output.name}.") and entry.name.endswith(".tmp")):
            try:
                sizes.append(entry.stat().st_size)
            except FileNotFoundError:  # renamed meanwhile
                pass
    return sizes


def kill_while_writing(args: list[str], output: Path, timeout: float = 300) -> int:
    """Run the command and SIGKILL it once the output or its temporary file
    has bytes in it (it is being written); returns how many bytes it had."""
    process = subprocess.Popen(COMMAND + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sizes = _being_written(output)
            if sizes and max(sizes) > 0:
                os.kill(process.pid, signal.SIGKILL)
                break
            if process.poll() is not None:
                pytest.fail(f"{args[0]} ended (exit {process.returncode}) before it could be killed while "
                            f"writing: {process.stderr.read().decode()[-2000:]}")
        else:
            pytest.fail(f"{args[0]} wrote nothing in {timeout} s")
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return max(sizes)


def _commands(big: dict[str, Path], output: Path) -> dict[str, list[str]]:
    return {
        "threshold": ["threshold", str(big["weights"]), "--cfg", str(big["cfg"]), "-s", "0.5", "-o", str(output)],
        "slim": ["slim", str(big["weights"]), "--cfg", str(big["cfg"]), "--percent", "0.5", "-o", str(output)],
        "recalibrate": ["recalibrate", "-w", str(big["weights"]), "--cfg", str(big["cfg"]), "--images",
                        str(big["images"]), "-o", str(output)],
    }


def _clean(output: Path) -> None:
    for path in [output, output.with_suffix(".cfg"), *output.parent.glob(f".{output.name}.*.tmp")]:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("command", ["threshold", "slim", "recalibrate"])
def test_a_kill_mid_write_leaves_no_output_and_the_input_unchanged(big, tmp_path, command) -> None:
    before = {name: _digest(big[name]) for name in ("cfg", "weights")}
    output = tmp_path / "out.weights"
    args = _commands(big, output)[command]
    done = subprocess.run(COMMAND + args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    complete = output.stat().st_size, _digest(output)
    _clean(output)
    for _ in range(5):
        written = kill_while_writing(args, output)
        late = output.exists() and (output.stat().st_size, _digest(output)) == complete
        if written < complete[0] and not late:
            break
        _clean(output)  # the kill came after the write (a loaded machine): try again
    else:
        pytest.fail(f"{command}: five kills all came after the write had finished")
    assert not output.exists(), f"{command}: a killed run left a file at the output's name"
    assert not output.with_suffix(".cfg").exists()
    assert {name: _digest(big[name]) for name in ("cfg", "weights")} == before
    done = subprocess.run(COMMAND + args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (output.stat().st_size, _digest(output)) == complete
    assert {name: _digest(big[name]) for name in ("cfg", "weights")} == before
