"""Sparse training for network slimming in the patched Darknet
(patches/0021-slim.patch): ``[net] slim=LAMBDA`` adds LAMBDA * sign(gamma) to
the gradient of every trained batch-norm scale, so that one update with
momentum 0 moves gamma by exactly the usual step minus rate * LAMBDA * sign(gamma).

The digits example model (cfg/digits.cfg, cfg/digits.weights) trains through
the binding on scikit-learn's digits as Darknet would load them (the PNGs of
:func:`darknet_sparse.darknet.examples.write_digits`, without augmentation)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from darknet_sparse.darknet import network as darknet
from darknet_sparse.darknet.examples import IMAGE_SIZE
from helpers.darknet_run import (CLASSIFIER, PATCHED, ROOT, TRAINABLE, check_zeros_frozen, gpu_include_dirs,
                                 one_hot_data, write_images)
from helpers.distill_run import distill_options, top_fraction_zeroed, with_net_options

DIGITS_CFG = ROOT / "cfg" / "digits.cfg"
DIGITS_WEIGHTS = ROOT / "cfg" / "digits.weights"
#: The digits model's layers with batch-norm scales: three convolutions and the first [connected].
SCALED = (0, 2, 4, 6)
ROWS = 256       # four batches of 64: four updates per pass
PASSES = 8       # 32 updates
LAMBDAS = (3e-2, 6e-2)
SMALL = 0.1      # "near zero" for the counts below (the trained model's |gamma| are about 1)


def digits_rows(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``rows`` digits as Darknet's 3-channel 16x16 input in [0, 1], one-hot labels."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    factor = IMAGE_SIZE // digits.images.shape[1]
    grey = (digits.images[:rows].astype(np.int64) * 255 + 8) // 16  # the PNG's grey levels
    pixels = grey.repeat(factor, axis=1).repeat(factor, axis=2).astype(np.float32) / 255
    x = np.ascontiguousarray(np.repeat(pixels[:, None], 3, axis=1).reshape(rows, -1))
    return x, np.eye(10, dtype=np.float32)[digits.target[:rows]]


def digits_cfg(folder: Path, name: str, options: str, text: str | None = None) -> Path:
    """A copy of the digits cfg (or of ``text``) with ``options`` in its [net] section."""
    text = DIGITS_CFG.read_text() if text is None else text
    cfg = folder / f"{name}.cfg"
    cfg.write_text(with_net_options(text, options) if options else text)
    return cfg


def trained(cfg: Path, start: Path, passes: int = PASSES, seed: int = 5) -> darknet.Network:
    """``cfg`` from ``start`` (images-seen cleared, so the rate schedule restarts), trained
    ``passes`` times over the same rows; the seed fixes dropout."""
    darknet.seed(seed)
    net = darknet.Network(cfg, start, clear=True)
    net.train(*digits_rows(ROWS), passes)
    return net


def scales(net: darknet.Network) -> dict[int, np.ndarray]:
    return {i: net.params(i)["scales"].copy() for i in SCALED}


def all_arrays(net: darknet.Network) -> dict[str, np.ndarray]:
    return {f"{i}:{name}": view.copy() for i in range(net.num_layers) for name, view in net.params(i).items()}


# --- |gamma| shrinks, more for a larger LAMBDA ------------------------------------------------------


@pytest.fixture(scope="module")
def slimmed(tmp_path_factory) -> dict[float, dict[int, np.ndarray]]:
    folder = tmp_path_factory.mktemp("slimmed")
    return {lam: scales(trained(digits_cfg(folder, f"slim{lam}", f"slim={lam}"), DIGITS_WEIGHTS))
            for lam in (0, *LAMBDAS)}


def test_slim_shrinks_the_batch_norm_scales(slimmed):
    means = {lam: {i: np.abs(g).mean() for i, g in layers.items()} for lam, layers in slimmed.items()}
    small, large = LAMBDAS
    for i in SCALED:
        # 32 updates at rate 0.1 with momentum 0.9 take about 0.23 off each |gamma| per 0.01 of LAMBDA.
        assert means[small][i] < means[0][i] - 0.1, (i, means)
        assert means[large][i] < means[small][i] - 0.1, (i, means)


def test_slim_drives_scales_toward_zero(slimmed):
    near_zero = {lam: sum(int(np.sum(np.abs(g) < SMALL)) for g in layers.values()) for lam, layers in slimmed.items()}
    assert near_zero[0] == 0
    assert near_zero[LAMBDAS[0]] > near_zero[0]
    assert near_zero[LAMBDAS[1]] > near_zero[LAMBDAS[0]]
    # ...a good part of the 208 scales.
    assert near_zero[LAMBDAS[1]] >= 50, near_zero


# --- LAMBDA = 0 is today's training ----------------------------------------------------------------


def test_slim_zero_trains_byte_identical_to_no_option(tmp_path):
    """Same seed, rows and start: slim=0 saves the very bytes the unchanged cfg
    does; slim=0.01 does not (the comparison can fail)."""
    saved = {}
    for name, options in (("plain", ""), ("slim0", "slim=0"), ("slim", "slim=0.01")):
        net = trained(digits_cfg(tmp_path, name, options), DIGITS_WEIGHTS, passes=2)
        net.save(tmp_path / f"{name}.weights")
        saved[name] = (tmp_path / f"{name}.weights").read_bytes()
    assert saved["plain"] != DIGITS_WEIGHTS.read_bytes()
    assert saved["slim0"] == saved["plain"]
    assert saved["slim"] != saved["plain"]


# --- the exact step ---------------------------------------------------------------------------------


def one_update(cfg: Path, start: Path, rows: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every array before and after one update (``rows`` = one batch * subdivisions)."""
    darknet.seed(5)
    net = darknet.Network(cfg, start, clear=True)
    before = all_arrays(net)
    if net.inputs == 3 * IMAGE_SIZE * IMAGE_SIZE:
        x, y = digits_rows(rows)
    else:
        x, y = one_hot_data(net, rows)
    net.train(x, y, 1)
    return before, all_arrays(net)


def assert_exact_step(plain: dict[str, np.ndarray], slim: dict[str, np.ndarray], before: dict[str, np.ndarray],
                      steps: dict[str, float]) -> None:
    """The scales named in ``steps`` moved by -step * sign(gamma) more than
    without slim (float32 rounding of the update aside); every other array is
    byte-identical."""
    assert plain.keys() == slim.keys()
    for key in plain:
        if key not in steps:
            assert slim[key].tobytes() == plain[key].tobytes(), key
            continue
        extra = slim[key].astype(np.float64) - plain[key]
        assert np.all(before[key] != 0), key
        np.testing.assert_allclose(extra, -steps[key] * np.sign(before[key]), rtol=0, atol=2e-6, err_msg=key)


def test_one_update_adds_rate_times_lambda_times_sign(tmp_path):
    """Digits with momentum 0 and a constant rate of 0.1; the second convolution
    has learning_rate=0.5 (its rate is 0.05).  The [connected] layer without
    batch norm, biases, weights and rolling statistics come out as without slim."""
    text = DIGITS_CFG.read_text().replace("policy=poly", "policy=constant").replace("momentum=0.9", "momentum=0")
    first, sep, rest = text.partition("filters=32\n")
    text = first + sep + "learning_rate=0.5\n" + rest
    lam = 0.01
    before, plain = one_update(digits_cfg(tmp_path, "plain", "", text), DIGITS_WEIGHTS, 64)
    _, slim = one_update(digits_cfg(tmp_path, "slim", f"slim={lam}", text), DIGITS_WEIGHTS, 64)
    steps = {f"{i}:scales": 0.1 * lam * (0.5 if i == 2 else 1) for i in SCALED}
    assert_exact_step(plain, slim, before, steps)


#: [deconvolutional] and [connected] with batch norm.  No [batchnorm] layer:
#: upstream's CPU forward of one in training writes through l.x, which only
#: the GPU build allocates (and no build ever updates its scales).
DECONV = """
[net]
batch=2
height=6
width=6
channels=3
learning_rate=0.1
momentum=0
decay=0.005
{net}

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky

[deconvolutional]
batch_normalize=1
filters=2
size=2
stride=2
activation=leaky

[connected]
batch_normalize=1
output=3
activation=linear

[softmax]
"""

OTHER_TYPES = {
    # [rnn] batch_normalize=1: update_rnn_layer updates its three connected sub-layers.
    "rnn": (TRAINABLE["rnn"].replace("momentum=0.9", "momentum=0"),
            ("0:input_layer.scales", "0:self_layer.scales", "0:output_layer.scales")),
    "deconv": (DECONV, ("1:scales", "2:scales")),
}


@pytest.mark.parametrize("name", OTHER_TYPES)
def test_other_layer_types_take_the_step(tmp_path, name):
    text, stepped = OTHER_TYPES[name]
    assert "momentum=0\n" in text
    cfgs = {}
    for run, options in (("plain", ""), ("slim", "slim=0.01")):
        cfgs[run] = tmp_path / f"{run}.cfg"
        cfgs[run].write_text(text.format(net=options))
    darknet.seed(3)
    start = tmp_path / "start.weights"
    net = darknet.Network(cfgs["plain"])
    for i in range(net.num_layers):
        for key, view in net.params(i).items():
            if key.endswith("scales"):
                view[::2] *= -1  # both signs
            if key.endswith("rolling_variance"):
                view[:] = 1
    net.save(start)
    before, plain = one_update(cfgs["plain"], start, net.batch)
    _, slim = one_update(cfgs["slim"], start, net.batch)
    assert set(stepped) <= plain.keys()
    assert_exact_step(plain, slim, before, dict.fromkeys(stepped, 0.1 * 0.01))


# --- with prune=1 and with a teacher ----------------------------------------------------------------


def weights_only(net: darknet.Network) -> dict[str, np.ndarray]:
    return {f"{i}:{name}": view.copy() for i in range(net.num_layers)
            for name, view in net.params(i).items() if name.endswith("weights")}


@pytest.fixture(scope="module")
def pruned_start(tmp_path_factory) -> Path:
    """The digits model with the 60% smallest weights of each layer set to 0."""
    net = darknet.Network(DIGITS_CFG, DIGITS_WEIGHTS)
    top_fraction_zeroed(net, 0.6)
    start = tmp_path_factory.mktemp("pruned") / "pruned.weights"
    net.save(start)
    return start


@pytest.mark.parametrize("teacher", [False, True], ids=["labels", "teacher"])
def test_slim_with_prune_keeps_zeros_zero(tmp_path, pruned_start, teacher):
    """slim=0.02 with prune=1 (and a dense teacher, A = 1): every zero weight
    stays 0 while |gamma| shrinks against the same run with slim=0; with
    prune=0 zeros move (the check can fail)."""
    extra = distill_options(DIGITS_CFG, DIGITS_WEIGHTS, 1, 2) + "\n" if teacher else ""
    runs = {name: trained(digits_cfg(tmp_path, name.replace("=", ""), extra + options), pruned_start, passes=4)
            for name, options in (("slim", "slim=0.02\nprune=1"), ("plain", "slim=0\nprune=1"),
                                  ("prune=0", "slim=0.02\nprune=0"))}
    before = weights_only(darknet.Network(DIGITS_CFG, pruned_start))
    check_zeros_frozen(before, weights_only(runs["slim"]), {"prune=0": weights_only(runs["prune=0"])})
    slim, plain = scales(runs["slim"]), scales(runs["plain"])
    for i in SCALED:
        assert np.abs(slim[i]).mean() < np.abs(plain[i]).mean() - 0.1, i


# --- bad values, and the GPU build -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["-0.001", "nan", "inf"])
def test_bad_lambda_is_one_error_line(tmp_path, value):
    data = write_images(tmp_path, per_label=2)
    (tmp_path / "net.cfg").write_text(CLASSIFIER.format(net=f"slim={value}", connected=""))
    done = subprocess.run([str(PATCHED), "classifier", "train", str(data), "net.cfg"], cwd=tmp_path,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: slim: [net] slim={value}, expected a finite value >= 0"], done.stderr[-2000:]


def test_slim_kernel_compiles_with_nvcc(tmp_path):
    """No GPU here: the new .cu with upstream's own GPU rule and flags, as
    tests/test_patches.py does for prune_kernels.cu."""
    target = tmp_path / "slim_kernels.o"
    subprocess.run(["make", "-s", "-C", str(ROOT / "build" / "darknet"), "GPU=1",
                    "ARCH=-gencode arch=compute_90,code=sm_90", f"OBJDIR={tmp_path}/", str(target)],
                   check=True, capture_output=True)
    symbols = subprocess.run(["nm", str(target)], check=True, capture_output=True, text=True).stdout
    assert " T slim_l1_gpu" in symbols


def test_slim_gpu_hook_compiles(tmp_path):
    """src/slim.c and src/network.c with -DGPU against CUDA's runtime headers
    and one-line stand-ins for the cuBLAS and cuRAND types darknet.h names
    (as tests/test_distill.py does): the GPU update calls the GPU hook, which
    calls the kernel."""
    tree = ROOT / "build" / "darknet"
    gpu = gpu_include_dirs(tmp_path)
    symbols = {}
    for name in ("slim", "network"):
        target = tmp_path / f"{name}.o"
        subprocess.run(["gcc", "-DGPU", f"-I{tree / 'include'}", f"-I{tree / 'src'}", *gpu,
                        "-Wall", "-Wno-unused-result", "-Werror", "-c", str(tree / "src" / f"{name}.c"),
                        "-o", str(target)], check=True)
        symbols[name] = subprocess.run(["nm", str(target)], check=True, capture_output=True, text=True).stdout
    assert " T slim_scale_gradient_gpu" in symbols["slim"] and " U slim_l1_gpu" in symbols["slim"]
    assert " U slim_scale_gradient_gpu" in symbols["network"] and " U slim_scale_gradient" in symbols["network"]
