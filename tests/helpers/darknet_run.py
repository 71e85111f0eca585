"""Helpers of the patch and binding tests: tiny cfgs, sparse starting
weights, PNG image sets, and runs of the patched and stock ``darknet``.

The stock binding (``build/binding-stock``) is compiled here, once per
session, from ``build/darknet-stock`` (``make darknet-stock``).
"""
from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from darknet_sparse.darknet import network as darknet
from darknet_sparse.format.files import load
from darknet_sparse.darknet._build import build

ROOT = Path(__file__).resolve().parents[2]
PATCHED = ROOT / "build" / "darknet" / "darknet"
STOCK = ROOT / "build" / "darknet-stock" / "darknet"
LABELS = ("lblaa", "lblbb", "lblcc", "lbldd")

#: A small classifier: conv with batch norm, maxpool, conv, connected,
#: softmax.  ``{net}`` and ``{connected}`` take extra option lines.
CLASSIFIER = """
[net]
batch=8
subdivisions=2
height=8
width=8
channels=3
learning_rate=0.1
momentum=0.9
decay=0.005
max_batches=6
{net}

[convolutional]
batch_normalize=1
filters=6
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=6
size=3
stride=1
pad=1
activation=leaky

[connected]
output=4
activation=linear
{connected}

[softmax]
"""

_NET = """
[net]
{input}
learning_rate=0.1
momentum=0.9
decay=0.005
"""

#: Nets the prune tests train on the CPU, covering the other weighted types:
#: local, deconvolutional, and the connected sub-layers of [rnn].
TRAINABLE = {
    "local_deconv": _NET.format(input="batch=4\nheight=6\nwidth=6\nchannels=2") + """{net}

# Upstream's [local] sizes its workspace in floats where Darknet allocates
# bytes, so it overruns the heap unless another layer needs a bigger
# workspace: this 5x5 convolution does.
[convolutional]
filters=2
size=5
stride=1
pad=1
activation=leaky

[local]
filters=2
size=3
stride=1
pad=1
activation=leaky

[deconvolutional]
filters=2
size=2
stride=2
activation=leaky

[connected]
output=4
activation=linear

[softmax]
""",
    # The other recurrent types cannot show the prune phase on the CPU:
    # upstream's CPU [gru] backward is empty, [lstm] has none, and [crnn]
    # never gives its sub-layers a learning rate (learning_rate_scale 0).
    # [rnn] trains once patches/0003-rnn-state.patch stops its heap overflow.
    "rnn": _NET.format(input="inputs=6\nbatch=2\ntime_steps=2") + """{net}

[rnn]
batch_normalize=1
output=5
activation=leaky

[connected]
output=4
activation=linear

[softmax]
""",
}

#: Every recurrent type, for the views and the threshold (never trained).
RECURRENT = {
    "rnn_gru_lstm": _NET.format(input="inputs=6\nbatch=2\ntime_steps=2") + """{net}

[rnn]
output=5
activation=leaky

[gru]
output=4

[lstm]
batch_normalize=1
output=3

[connected]
output=4
activation=linear
""",
    "crnn": _NET.format(input="batch=2\ntime_steps=2\nheight=4\nwidth=4\nchannels=2") + """{net}

[crnn]
batch_normalize=1
output_filters=2
hidden_filters=3
activation=leaky
""",
}


def write_cfg(path: Path, template: str, net: str = "", connected: str = "") -> Path:
    path.write_text(template.format(net=net, connected=connected))
    return path


@lru_cache(maxsize=None)
def stock_backend() -> darknet.Backend:
    """The binding built against the stock Darknet (compiled once per session)."""
    out = ROOT / "build" / "binding-stock"
    return darknet.backend(build(ROOT / "build" / "darknet-stock", "_darknet_stock", out))


def weight_views(net: darknet.Network) -> dict[str, np.ndarray]:
    """Every weights array of the net (sub-layers' too), keyed 'layer:name'."""
    return {f"{i}:{name}": view for i in range(net.num_layers)
            for name, view in net.params(i).items() if name.endswith("weights")}


def file_arrays(cfg: Path, weights: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Every array of a saved file as (role, copy), keyed 'layer:name', read by the core reader."""
    wf = load(cfg, weights, fork="pjreddie")
    return {f"{slot.layer.index}:{slot.param.name}": (slot.param.role, np.array(wf.array(slot)))
            for slot in wf.slots}


def sparse_start(cfg: Path, out: Path, seed: int = 7, fraction: float = 0.5) -> Path:
    """Random initial weights for ``cfg`` with ``fraction`` of every weights
    array set to exactly 0, saved to ``out``.  Rolling variances are 1, not
    Darknet's initial 0, so inference does not blow activations up."""
    darknet.seed(seed)
    net = darknet.Network(cfg)
    rng = np.random.default_rng(seed)
    for view in weight_views(net).values():
        view[rng.random(view.size) < fraction] = 0
    for i in range(net.num_layers):
        for name, view in net.params(i).items():
            if name.endswith("rolling_variance"):
                view[:] = 1
    net.save(out)
    return out


def check_thresholded(cfg: Path, plain: Path, thresholded: Path, thresholds: dict[int, float]) -> None:
    """``thresholded`` is ``plain`` with the weights |w| < their layer's
    threshold written as 0 and every other weight as it was, and every bias
    and batch-norm array byte-identical."""
    original, written = file_arrays(cfg, plain), file_arrays(cfg, thresholded)
    assert original.keys() == written.keys()
    for key, (role, array) in original.items():
        if role != "weights":
            assert written[key][1].tobytes() == array.tobytes(), key
            continue
        t = np.float32(thresholds[int(key.split(":")[0])])
        np.testing.assert_array_equal(written[key][1], np.where(np.abs(array) < t, np.float32(0), array), err_msg=key)
        small = np.abs(written[key][1])
        assert not np.any((small > 0) & (small < t)), key


def check_zeros_frozen(before: dict[str, np.ndarray], frozen: dict[str, np.ndarray],
                       reviving: dict[str, dict[str, np.ndarray]]) -> None:
    """Every weight that was 0 in ``before`` is still 0 in ``frozen`` (trained
    with prune=1), the live weights did train, and each run in ``reviving``
    (prune=0, stock Darknet) moved some zero: proof the check can fail."""
    for key, w0 in before.items():
        zero = w0 == 0
        assert 0 < zero.sum() < zero.size, key
        assert np.all(frozen[key][zero] == 0), f"{key}: a zero weight moved under prune=1"
        assert np.mean(frozen[key][~zero] != w0[~zero]) > 0.9, f"{key}: the live weights did not train"
        for name, trained in reviving.items():
            assert np.any(trained[key][zero] != 0), f"{key}: {name} kept every zero too; the test proves nothing"


def one_hot_data(net: darknet.Network, rows: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs and one-hot targets for ``rows`` rows."""
    rng = np.random.default_rng(seed)
    x = rng.random((rows, net.inputs), dtype=np.float32)
    y = np.zeros((rows, net.outputs), np.float32)
    y[np.arange(rows), rng.integers(0, net.outputs, rows)] = 1
    return x, y


def write_images(folder: Path, per_label: int, size: int = 8, seed: int = 5) -> Path:
    """A labelled PNG set for ``darknet classifier``: images, train list,
    labels list and data cfg (backup folder included); returns the data cfg."""
    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True)
    paths = []
    for k, label in enumerate(LABELS):
        for i in range(per_label):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., k % 3] //= 4  # make the classes a little different
            path = images / f"{i}_{label}.png"
            Image.fromarray(pixels, "RGB").save(path)
            paths.append(str(path))
    (folder / "train.list").write_text("\n".join(paths) + "\n")
    (folder / "labels.list").write_text("\n".join(LABELS) + "\n")
    (folder / "backup").mkdir()
    data = folder / "data.cfg"
    data.write_text(f"classes={len(LABELS)}\ntrain={folder / 'train.list'}\nlabels={folder / 'labels.list'}\n"
                    f"names={folder / 'labels.list'}\nbackup={folder / 'backup'}\ntop={len(LABELS)}\n")
    return data


def image_input(path: Path) -> np.ndarray:
    """A PNG as Darknet's ``load_image_color`` sees it: (1, 3, H, W), byte/255."""
    pixels = np.asarray(Image.open(path).convert("RGB"), np.float64) / 255.0
    return pixels.transpose(2, 0, 1)[None].astype(np.float32)


def run(binary: Path, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    """Run a Darknet binary; fail with its output if it fails."""
    done = subprocess.run([str(binary), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    if done.returncode != 0:
        raise AssertionError(f"{binary} {' '.join(map(str, args))} exited {done.returncode}:\n"
                             f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done


def gpu_include_dirs(folder: Path) -> list[str]:
    """``-I`` options that let a Darknet source compile with ``-DGPU`` on a
    machine with CUDA's runtime headers but no cuBLAS or cuRAND (see
    patches/README.md): one-line stand-ins, written into ``folder``, for the
    two types darknet.h takes from those libraries, then CUDA's include dir."""
    (folder / "curand.h").write_text("typedef struct curandGenerator_st *curandGenerator_t;\n")
    (folder / "cublas_v2.h").write_text("typedef struct cublasContext *cublasHandle_t;\n")
    cuda = next((p for p in (Path("/usr/local/cuda/include"), *sorted(Path("/usr/local").glob("cuda*/include")))
                 if (p / "cuda_runtime.h").is_file()), None)
    assert cuda is not None, "no CUDA runtime headers under /usr/local/cuda*/include"
    return [f"-I{folder}", f"-I{cuda}"]


def rotated_labels(data: Path) -> dict[str, Path]:
    """``data`` (a digits .data file, :func:`write_digits`) and, beside it,
    ``rotated.data``, whose labels list is rotated by one: every training
    image gets the next digit's label (a teacher's job to undo)."""
    root = data.parent
    labels = (root / "labels.list").read_text().splitlines()
    (root / "rotated.list").write_text("\n".join(labels[1:] + labels[:1]) + "\n")
    text = data.read_text()
    rotated = root / "rotated.data"
    rotated.write_text(text.replace(f"labels={root / 'labels.list'}", f"labels={root / 'rotated.list'}"))
    return {"true": data, "rotated": rotated}
