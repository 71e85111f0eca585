"""The sparse forward pass (patches/0010-sparse-forward.patch, calling
patches/kernels/sparse_kernels.c) against stock; the same nets run the
faster leaky and 2x2 max-pooling code of patches/0011-fast-layers.patch.

With ``sparse_forward=exact`` every output must be byte-identical to the
stock build's (``build/darknet-stock``) on the same weights; with ``auto``
and ``sparse`` (the FAST kernels: FMA, any order, fused batch norm and
activation) every layer's output within 1e-5 of stock's, relative to the
layer's largest |output| (:func:`assert_close`).  Pruned to several levels,
for convolutions (groups, depthwise, stride 2, 1x1, non-square input, no
padding) and connected layers (every ``inputs % 4``, which decides how gcc
vectorises upstream's dot product).  Training in the prune phase rebuilds
the sparse copy after every update: it must train exactly as the dense path
does (``exact``), keep zeros at zero, and still match stock afterwards; with
``auto`` the net in memory after an update predicts as a fresh load of its
saved weights does.  Both builds run
``darknet_sparse/darknet/_forward_driver.c``, compiled here against each ``libdarknet.a``;
it writes every layer's output, so a difference cannot round away.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import darknet_sparse as ds
from darknet_sparse.format.forward_path import forward_path, sparse_forward_mode
from darknet_sparse.format.weightsfile import write_arrays
from darknet_sparse.darknet.driver import Driver, compile_driver
from tiny_models import write_model

SPARSITIES = (0.0, 0.5, 0.9, 0.99)
#: FAST's bound per layer: max |patched - stock| <= RTOL * max |stock|.
RTOL = 1e-5


@pytest.fixture(scope="module")
def drivers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Driver]:
    folder = tmp_path_factory.mktemp("forward_driver")
    return {name: compile_driver(name, folder) for name in ("stock", "patched", "patched-omp")}


def outputs(drivers: dict[str, Driver], build: str, cfg: Path, weights: Path) -> np.ndarray:
    return drivers[build].predict(cfg, weights, weights.with_suffix(f".{build}.{cfg.stem}.bin"))


def with_mode(cfg: Path, mode: str) -> Path:
    """A copy of ``cfg`` with ``[net] sparse_forward=mode``."""
    target = cfg.with_name(f"{cfg.stem}-{mode}.cfg")
    target.write_text(cfg.read_text().replace("[net]\n", f"[net]\nsparse_forward={mode}\n", 1))
    return target


def pruned(cfg: Path, weights: Path, sparsity: float) -> Path:
    """Magnitude pruning: the ``round(sparsity * n)`` smallest ``|w|`` of
    every weight array become 0 (all of them in a small enough array)."""
    if sparsity == 0:
        return weights
    wf = ds.load(cfg, weights)
    arrays = {}
    for layer in wf.model.layers:
        for param in layer.prunable():
            values = np.array(wf.arrays(layer.index)[param.name])
            values[np.argsort(np.abs(values), kind="stable")[:round(sparsity * values.size)]] = 0
            arrays[(layer.index, param.name)] = values
    target = weights.with_name(f"{weights.stem}-{sparsity}.weights")
    write_arrays(wf, target, arrays)
    return target


def assert_same_bytes(stock: np.ndarray, patched: np.ndarray) -> None:
    assert stock.size > 1 and np.isfinite(stock).all() and np.ptp(stock) > 0, "a vacuous comparison"
    assert patched.tobytes() == stock.tobytes(), f"max |diff| {np.max(np.abs(patched - stock))}"


def layer_sizes(drivers: dict[str, Driver], cfg: Path) -> list[int]:
    """Each layer's output floats, as ``predict`` concatenates them."""
    return [int(line.split()[1]) for line in drivers["stock"].run("sizes", cfg).stdout.split("\n") if line]


def assert_close(drivers: dict[str, Driver], cfg: Path, stock: np.ndarray, patched: np.ndarray) -> None:
    """Per layer: max |patched - stock| <= RTOL * max |stock|."""
    sizes = layer_sizes(drivers, cfg)
    assert sum(sizes) == stock.size == patched.size
    assert np.isfinite(stock).all() and np.ptp(stock) > 0, "a vacuous comparison"
    start = 0
    for i, size in enumerate(sizes):
        a, b = patched[start:start + size], stock[start:start + size]
        start += size
        if size:
            error = np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b)), np.finfo(np.float32).tiny)
            assert error <= RTOL, f"layer {i}: max |diff| / max |stock| = {error:.3g} > {RTOL}"


_NET = "[net]\nbatch=1\nheight={h}\nwidth={w}\nchannels={c}\n"
_CONV = "\n[convolutional]\nfilters={n}\nsize={size}\nstride={stride}\n{extra}activation=leaky\n"

#: Small nets, each aimed at one way an index can go wrong.
CFGS = {
    # Non-square input, odd sizes, batch norm, 3x3 with padding, then 1x1.
    "conv3x3_nonsquare": _NET.format(h=11, w=17, c=5)
    + _CONV.format(n=7, size=3, stride=1, extra="batch_normalize=1\npad=1\n")
    + _CONV.format(n=9, size=1, stride=1, extra=""),
    # Stride 2 and groups, with and without padding; a 5x5 without padding.
    "conv_groups_stride2": _NET.format(h=13, w=10, c=6)
    + _CONV.format(n=8, size=3, stride=2, extra="groups=2\npad=1\n")
    + _CONV.format(n=6, size=3, stride=1, extra="groups=2\n")
    + _CONV.format(n=4, size=5, stride=1, extra="padding=1\n"),
    # Depthwise, then 1x1 at stride 2 (upstream reads its input as if stride 1).
    "conv_depthwise_1x1_stride2": _NET.format(h=9, w=12, c=4)
    + _CONV.format(n=4, size=3, stride=1, extra="groups=4\npad=1\n")
    + _CONV.format(n=5, size=1, stride=2, extra="")
    + "\n[maxpool]\nsize=2\nstride=2\n",
    # Connected layers with inputs % 4 == 0, 1, 2, 3 and inputs < 4.
    "connected": _NET.format(h=1, w=1, c=300)
    + "".join(f"\n[connected]\noutput={n}\n{'batch_normalize=1' if n == 61 else ''}\nactivation={act}\n"
              for n, act in ((61, "leaky"), (42, "leaky"), (31, "linear"), (40, "leaky"), (3, "leaky"),
                             (2, "linear"), (5, "leaky"))),
    # Convolutions tiled as yolov3-tiny's are: more than 128 input-matrix rows
    # (several row blocks), an odd filter count (filters go in pairs), 1x1
    # with k > 128, and enough 64-pixel tiles plus a partial one (20x23) for
    # the OpenMP build to split the tiles; then 7x7 (one partial tile), where
    # it splits each tile's filters.
    "conv_blocks_tiles": _NET.format(h=20, w=23, c=30)
    + _CONV.format(n=131, size=3, stride=1, extra="batch_normalize=1\npad=1\n")
    + _CONV.format(n=5, size=1, stride=1, extra="")
    + _CONV.format(n=33, size=3, stride=3, extra="pad=1\n")
    + _CONV.format(n=9, size=3, stride=1, extra="pad=1\n"),
    # Rows of at least 64 outputs at stride 1 (the AVX-512 build reads a
    # zero-padded copy of the input in place of im2col): 3x3, 5x5 with
    # padding 2, 3x3 without padding; groups; 139 = 2*64 + 11 outputs a row.
    "conv_wide_rows": _NET.format(h=4, w=139, c=4)
    + _CONV.format(n=6, size=3, stride=1, extra="groups=2\npad=1\n")
    + _CONV.format(n=3, size=5, stride=1, extra="padding=2\nbatch_normalize=1\n")
    + _CONV.format(n=4, size=3, stride=1, extra=""),
    # Activations the FAST store cannot fuse (upstream then applies batch
    # norm, bias and the activation itself), and relu, which it can.
    "conv_unfused": _NET.format(h=9, w=8, c=3)
    + _CONV.format(n=6, size=3, stride=1, extra="batch_normalize=1\npad=1\n").replace("leaky", "logistic")
    + _CONV.format(n=5, size=3, stride=1, extra="pad=1\n").replace("leaky", "tanh")
    + _CONV.format(n=4, size=1, stride=1, extra="batch_normalize=1\n").replace("leaky", "relu"),
    # A conv feeding a connected layer, as in a classifier.
    "conv_connected": _NET.format(h=8, w=7, c=3)
    + _CONV.format(n=6, size=3, stride=1, extra="pad=1\n")
    + "\n[connected]\noutput=9\nactivation=leaky\n",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("models")
    return {name: write_model(folder, name, text, seed=i) for i, (name, text) in enumerate(CFGS.items())}


@pytest.mark.parametrize("name", CFGS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_outputs_equal_stock(drivers, models, name: str, sparsity: float):
    cfg, weights = models[name]
    weights = pruned(cfg, weights, sparsity)
    stock = outputs(drivers, "stock", cfg, weights)
    assert_same_bytes(stock, outputs(drivers, "patched", with_mode(cfg, "exact"), weights))
    for mode in ("sparse", "auto"):
        assert_close(drivers, cfg, stock, outputs(drivers, "patched", with_mode(cfg, mode), weights))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("name", ["conv_blocks_tiles", "conv_wide_rows", "conv_groups_stride2", "connected"])
def test_openmp_build_equals_stock(drivers, models, monkeypatch, name: str, threads: int):
    """The OPENMP=1 build shares tiles and filters among its threads; with
    exact each output's sum must still be made in stock's order."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
    cfg, weights = models[name]
    for sparsity in (0.5, 0.9):
        target = pruned(cfg, weights, sparsity)
        stock = outputs(drivers, "stock", cfg, target)
        assert_same_bytes(stock, outputs(drivers, "patched-omp", with_mode(cfg, "exact"), target))
        assert_close(drivers, cfg, stock, outputs(drivers, "patched-omp", with_mode(cfg, "sparse"), target))


@pytest.mark.parametrize("name", ["conv3x3_nonsquare", "connected"])
def test_single_weight_at_the_last_position(drivers, models, name: str):
    """Only the last weight of every layer is non-zero: an off-by-one in a
    row, column or lane index loses or moves it."""
    cfg, weights = models[name]
    wf = ds.load(cfg, weights)
    arrays = {}
    for layer in wf.model.layers:
        for param in layer.prunable():
            values = np.zeros(param.count, np.float32)
            values[-1] = 0.75
            arrays[(layer.index, param.name)] = values
    target = weights.with_name(f"{name}-last.weights")
    write_arrays(wf, target, arrays)
    stock = outputs(drivers, "stock", cfg, target)
    assert_same_bytes(stock, outputs(drivers, "patched", with_mode(cfg, "exact"), target))
    assert_close(drivers, cfg, stock, outputs(drivers, "patched", with_mode(cfg, "sparse"), target))


MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_yolov3_tiny(drivers, tmp_path: Path, monkeypatch, sparsity: float):
    """The benchmark's model with its real weights, pruned as a user does
    (``darknet-sparse threshold -s S --mode magnitude``): auto (every conv
    sparse, FAST) within RTOL per layer and exact bit-identical; also on the
    OpenMP build at two threads."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    cfg, weights = MODELS / "yolov3-tiny.cfg", MODELS / "yolov3-tiny.weights"
    if sparsity:
        target = tmp_path / f"yolov3-tiny-{sparsity}.weights"
        ds.threshold(ds.load(cfg, weights), target, ds.Magnitude(sparsity))
        weights = target
    paths = drivers["patched"].run("paths", cfg, weights).stdout.split()
    assert [p for p, line in zip(paths, layer_types(drivers, cfg)) if line == "convolutional"] == ["1"] * 13
    stock = outputs(drivers, "stock", cfg, weights)
    for build in ("patched", "patched-omp"):
        assert_close(drivers, cfg, stock, outputs(drivers, build, cfg, weights))
        assert_same_bytes(stock, outputs(drivers, build, with_mode(cfg, "exact"), weights))


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_yolov3_tiny_on_every_kernel_path(drivers, tmp_path: Path, monkeypatch, isa: str):
    """DS_SPARSE_ISA forces the kernels' path inside Darknet: each gives
    auto within RTOL and exact bit-identical, at 90% and unpruned (on the
    plain C path auto leaves the dense layers to upstream's GEMM)."""
    monkeypatch.setenv("DS_SPARSE_ISA", isa)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    cfg, weights = MODELS / "yolov3-tiny.cfg", MODELS / "yolov3-tiny.weights"
    target = tmp_path / "yolov3-tiny-0.9.weights"
    ds.threshold(ds.load(cfg, weights), target, ds.Magnitude(0.9))
    for build, chosen in (("patched", target), ("patched-omp", weights)):
        stock = outputs(drivers, "stock", cfg, chosen)
        assert_close(drivers, cfg, stock, outputs(drivers, build, cfg, chosen))
        assert_same_bytes(stock, outputs(drivers, build, with_mode(cfg, "exact"), chosen))
    paths = drivers["patched"].run("paths", cfg, weights).stdout.split()
    convs = [p for p, kind in zip(paths, layer_types(drivers, cfg)) if kind == "convolutional"]
    assert convs == ["0" if isa == "generic" else "1"] * 13


def layer_types(drivers: dict[str, Driver], cfg: Path) -> list[str]:
    return [line.split()[0] for line in drivers["stock"].run("sizes", cfg).stdout.split("\n") if line]


def test_paths_follow_the_python_rule(drivers, tmp_path: Path, monkeypatch):
    """C's choice per layer, in every mode, equals forward_path's, also at
    the exact density limits (50% conv, 30% connected) and one weight above."""
    text = (_NET.format(h=5, w=5, c=2) + _CONV.format(n=4, size=1, stride=1, extra="") * 3
            + "\n[maxpool]\nsize=2\nstride=2\n" + "\n[connected]\noutput=10\nactivation=leaky\n" * 3)
    cfg, weights = write_model(tmp_path, "paths", text)
    wf = ds.load(cfg, weights)
    nonzero = {0: 4, 1: 9, 2: 8, 4: 108, 5: 31, 6: 100}  # of 8, 16, 16, 360, 100, 100 weights
    arrays, counts = {}, {}
    rng = np.random.default_rng(3)
    for layer in wf.model.layers:
        for param in layer.prunable():
            keep = nonzero[layer.index]
            values = np.zeros(param.count, np.float32)
            values[rng.choice(param.count, keep, replace=False)] = rng.uniform(0.1, 1, keep)
            arrays[(layer.index, param.name)] = values
            counts[layer.index] = (keep, param.count)
    target = tmp_path / "paths-set.weights"
    write_arrays(wf, target, arrays)
    for mode in ("auto", "exact", "dense", "sparse"):
        got = drivers["patched"].run("paths", with_mode(cfg, mode), target).stdout.split()
        want = [forward_path(layer.type, *counts.get(layer.index, (0, 0)), mode)
                for layer in wf.model.layers]
        assert got == ["1" if path == "sparse" else "0" for path in want], mode
        # the plain C kernels: auto goes by density for convolutions too
        monkeypatch.setenv("DS_SPARSE_ISA", "generic")
        got = drivers["patched"].run("paths", with_mode(cfg, mode), target).stdout.split()
        monkeypatch.delenv("DS_SPARSE_ISA")
        want = [forward_path(layer.type, *counts.get(layer.index, (0, 0)), mode, vector=False)
                for layer in wf.model.layers]
        assert got == ["1" if path == "sparse" else "0" for path in want], f"{mode}, generic"
    assert [forward_path(layer.type, *counts[layer.index]) for layer in wf.model.layers
            if layer.index in counts] == ["sparse", "sparse", "sparse", "sparse", "dense", "dense"]
    assert [forward_path(layer.type, *counts[layer.index], vector=False) for layer in wf.model.layers
            if layer.index in counts] == ["sparse", "dense", "sparse", "sparse", "dense", "dense"]


TRAIN_CFG = """
[net]
batch=4
subdivisions=1
height=6
width=5
channels=3
learning_rate=0.05
momentum=0.9
decay=0.001
prune=1
prune_threshold={threshold}

[convolutional]
batch_normalize=1
filters=6
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=5
size=3
stride=2
pad=1
activation=leaky

[connected]
output=4
activation=linear

[softmax]
"""


@pytest.mark.parametrize("threshold", [0.0, 0.15])
def test_prune_phase_training_with_the_sparse_copy(drivers, tmp_path: Path, threshold: float):
    """Six updates with prune=1: the sparse path (its copy rebuilt after
    each update, and after the save that zeroes |w| < prune_threshold) trains
    byte for byte as the dense path does, in exact and in auto mode (whose
    training forwards take the EXACT kernels); the pruned zeros stay zero, the
    other weights move, and the saved net still predicts as stock does."""
    cfg, weights = write_model(tmp_path, "train", TRAIN_CFG.format(threshold=threshold))
    start = pruned(cfg, weights, 0.7)
    trained = {}
    for mode in ("dense", "exact", "auto"):
        out, prediction = tmp_path / f"trained-{mode}.weights", tmp_path / f"after-save-{mode}.bin"
        drivers["patched"].run("train", with_mode(cfg, mode), start, out, 6, prediction)
        trained[mode] = out
        # The copy was rebuilt after the save: the net in memory predicts as
        # stock does from the saved file (auto: FAST at inference).
        check = assert_close if mode == "auto" else lambda _, __, a, b: assert_same_bytes(a, b)
        check(drivers, cfg, outputs(drivers, "stock", cfg, out), np.fromfile(prediction, np.float32))
    # training forwards take the EXACT kernels in every mode
    assert trained["exact"].read_bytes() == trained["dense"].read_bytes()
    assert trained["auto"].read_bytes() == trained["dense"].read_bytes()
    before, after = ds.load(cfg, start), ds.load(cfg, trained["exact"])
    for layer in before.model.layers:
        for param in layer.prunable():
            old, new = before.arrays(layer.index)[param.name], after.arrays(layer.index)[param.name]
            assert np.all(new[old == 0] == 0), f"layer {layer.index}: a pruned weight came back"
            assert np.any(new[old != 0] != old[old != 0]), f"layer {layer.index}: nothing trained"


def test_unknown_mode_is_refused(drivers, models, tmp_path: Path):
    cfg, weights = models["connected"]
    done = drivers["patched"].run("predict", with_mode(cfg, "fast"), weights, tmp_path / "out.bin", check=False)
    assert done.returncode != 0
    assert "sparse_forward=fast: expected auto, exact, dense or sparse" in done.stderr


@pytest.mark.parametrize("steps", [1, 3])
def test_auto_rebuilds_its_weights_after_an_update(drivers, tmp_path: Path, steps: int):
    """prune=1 training steps in auto mode (FAST), then a forward: the net
    in memory (its weight format rebuilt after each update and the save)
    predicts exactly as a fresh load of the weights it saved.  No random
    draw: fixed data, no dropout, no augmentation."""
    cfg, weights = write_model(tmp_path, "train", TRAIN_CFG.format(threshold=0.15))
    start = pruned(cfg, weights, 0.7)
    auto, out, prediction = with_mode(cfg, "auto"), tmp_path / "trained.weights", tmp_path / "in-memory.bin"
    drivers["patched"].run("train", auto, start, out, steps, prediction)
    in_memory = np.fromfile(prediction, np.float32)
    fresh = outputs(drivers, "patched", auto, out)
    assert_same_bytes(fresh, in_memory)
    # the update moved the outputs (a stale copy would give the start's)
    assert in_memory.tobytes() != outputs(drivers, "patched", auto, start).tobytes()
    assert_close(drivers, cfg, outputs(drivers, "stock", cfg, out), in_memory)


def test_forward_path_rule():
    assert forward_path("convolutional", 100, 100) == "sparse"
    assert forward_path("convolutional", 50, 100, vector=False) == "sparse"
    assert forward_path("convolutional", 51, 100, vector=False) == "dense"
    assert forward_path("convolutional", 100, 100, "exact") == "sparse"
    assert forward_path("connected", 30, 100) == "sparse"
    assert forward_path("connected", 31, 100) == "dense"
    assert forward_path("connected", 100, 100, "sparse") == "sparse"
    assert forward_path("convolutional", 0, 100, "dense") == "dense"
    assert forward_path("convolutional", 0, 100, "sparse", binary=True) == "dense"
    assert forward_path("maxpool", 0, 0) is None
    with pytest.raises(ds.CfgError, match="expected auto, exact, dense, sparse"):
        forward_path("convolutional", 0, 1, "fast")


def test_sparse_forward_mode():
    net = ds.parse_cfg("[net]\nsparse_forward=dense\n")[0]
    assert sparse_forward_mode(net) == "dense"
    assert sparse_forward_mode(ds.parse_cfg("[net]\n")[0]) == "auto"
    with pytest.raises(ds.CfgError, match="sparse_forward=fast"):
        sparse_forward_mode(ds.parse_cfg("[net]\nsparse_forward=fast\n")[0])


#: The bound on detections: agreement mAP@0.5 of ``auto`` against the dense model's stock run.
AGREEMENT = 0.999


@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_auto_detections_agree_with_stock(tmp_path: Path, sparsity: float):
    """Issue 22's numerics: ``auto`` (FAST kernels, FMA, any summation order)
    detects what stock Darknet's dense run detects. The real yolov3-tiny on
    sixteen evaluation images (video frames and photos) through the binding:
    ``sparse_forward=auto`` against ``dense`` (upstream's GEMM on every
    layer) on the same file, agreement mAP@0.5 >= 0.999, at 0% and at 50%
    (the same pruned file run both ways). The bound is loose next to the
    per-layer RTOL above: every convolution weight scaled by 1 + 1e-2 * N(0, 1)
    and run the same way gave 0.9933 (3e-2: 0.9653), 1e-3 still 1.0."""
    from darknet_sparse.analysis.evaluate import evaluate_detector
    from darknet_sparse.darknet.network import Network

    cfg = tmp_path / "yolov3-tiny.cfg"
    cfg.write_text((MODELS / "yolov3-tiny.cfg").read_text())
    weights = MODELS / "yolov3-tiny.weights"
    if sparsity:
        weights = tmp_path / f"yolov3-tiny-{sparsity}.weights"
        ds.threshold(ds.load(cfg, MODELS / "yolov3-tiny.weights"), weights, ds.Magnitude(sparsity))
    images = sorted((MODELS.parent / "data" / "images" / "eval").glob("*.jpg"))
    chosen = images[::max(1, len(images) // 16)][:16]
    dense = Network(with_mode(cfg, "dense"), weights, fork="pjreddie")
    auto = Network(with_mode(cfg, "auto"), weights, fork="pjreddie")
    report = evaluate_detector(auto, chosen, reference=dense)
    assert report.map50 >= AGREEMENT, report.map50
