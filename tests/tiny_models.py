"""Small models with random weights, written by darknet-sparse itself, for
tests of the pruning policies, the writer and the CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from darknet_sparse.format.files import load_model
from darknet_sparse.format.weightsfile import new_file

#: conv (BN) -> maxpool -> conv (no BN, grouped) -> connected (BN) -> connected -> softmax
SMALL_CFG = """\
[net]
batch=1
height=12
width=12
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=16
groups=2
size=3
stride=1
pad=1
activation=leaky

[connected]
batch_normalize=1
output=24
activation=leaky

[connected]
output=5
activation=linear

[softmax]
"""


def write_model(folder: Path, name: str = "small", cfg_text: str = SMALL_CFG, seed: int = 0,
                fork: str = "pjreddie") -> tuple[Path, Path]:
    """``folder/name.cfg`` and ``folder/name.weights`` with N(0, 0.1) weights,
    positive BN variances and distinct biases."""
    cfg = folder / f"{name}.cfg"
    cfg.write_text(cfg_text)
    model = load_model(cfg, fork)
    rng = np.random.default_rng(seed)
    arrays = {}
    for layer in model.layers:
        for param in layer.params:
            values = rng.normal(0, 0.1, param.count)
            if param.role == "rolling_variance":
                values = np.abs(values) + 0.5
            arrays[(layer.index, param.name)] = values.astype(np.float32)
    weights = folder / f"{name}.weights"
    new_file(model, weights, arrays, seen=12345)
    return cfg, weights


def write_photos(folder: Path, count: int, seed: int) -> Path:
    """``count`` seeded noise photos (80x64 JPEG) in a new ``folder``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(folder / f"shot{k}.jpg")
    return folder
