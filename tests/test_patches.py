"""The patched Darknet binary against the stock one built from the same
source: prune phase, save-time threshold, deconvolutional loading, the
binding's predictions, the build script and the CUDA kernel."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from darknet_sparse.darknet import network as darknet
from helpers.darknet_run import (CLASSIFIER, LABELS, PATCHED, ROOT, STOCK, check_thresholded, check_zeros_frozen,
                                 file_arrays, image_input, run, sparse_start, write_cfg, write_images)

DECONV = """
[net]
batch=2
height=6
width=6
channels=3

[convolutional]
batch_normalize=1
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
output=3
activation=linear
"""


def weights_of(cfg: Path, path: Path) -> dict[str, np.ndarray]:
    return {key: array for key, (role, array) in file_arrays(cfg, path).items() if role == "weights"}


def train_classifier(binary: Path, folder: Path, start: Path, net: str) -> Path:
    """``darknet classifier train`` on a fresh image set from ``start``; the saved weights."""
    folder.mkdir()
    data = write_images(folder, per_label=4)
    cfg = write_cfg(folder / "net.cfg", CLASSIFIER, net=f"{net}\nseed=1")  # stock ignores it
    run(binary, "classifier", "train", data, cfg, start, cwd=folder)
    return folder / "backup" / "net.weights"


@pytest.mark.parametrize("optimizer", ["", "adam=1\nB1=0.9\nB2=0.999\neps=0.0000001"], ids=["sgd", "adam"])
def test_classifier_train_keeps_zeros_with_prune(tmp_path: Path, optimizer: str) -> None:
    """SGD with momentum and decay, and adam=1 (the CPU update runs SGD
    for it).  The same training without prune=1, or with a stock binary
    that ignores it, revives the zeros: the test can fail."""
    cfg = write_cfg(tmp_path / "start.cfg", CLASSIFIER, net=optimizer)
    start = sparse_start(cfg, tmp_path / "start.weights")
    before = weights_of(cfg, start)
    frozen = weights_of(cfg, train_classifier(PATCHED, tmp_path / "frozen", start, optimizer + "\nprune=1"))
    free = weights_of(cfg, train_classifier(PATCHED, tmp_path / "free", start, optimizer + "\nprune=0"))
    stock = weights_of(cfg, train_classifier(STOCK, tmp_path / "stock", start, optimizer + "\nprune=1"))
    assert set(before) == {"0:weights", "2:weights", "3:weights"}  # convolutional and connected
    check_zeros_frozen(before, frozen, {"prune=0": free, "stock Darknet": stock})


def test_prune_with_threshold_freezes_what_it_saves(tmp_path: Path) -> None:
    """The recipe step: with prune=1, each save also zeroes the live weights
    below the threshold, and every file saved has none in (0, T)."""
    cfg = write_cfg(tmp_path / "start.cfg", CLASSIFIER)
    start = sparse_start(cfg, tmp_path / "start.weights")
    final = train_classifier(PATCHED, tmp_path / "run", start, "prune=1\nprune_threshold=0.02")
    saved = sorted(final.parent.glob("*.weights"))
    assert len(saved) > 1  # the per-epoch snapshots and the final file
    for path in saved:
        for key, w in weights_of(cfg, path).items():
            assert not np.any((np.abs(w) > 0) & (np.abs(w) < np.float32(0.02))), f"{path.name} {key}"
    for key, w0 in weights_of(cfg, start).items():
        assert np.all(weights_of(cfg, final)[key][w0 == 0] == 0), key


def test_threshold_applies_when_darknet_saves(tmp_path: Path) -> None:
    """``darknet partial`` loads and saves: [net] prune_threshold for every
    layer, a [connected] layer's own wins; stock Darknet ignores both."""
    plain = write_cfg(tmp_path / "plain.cfg", CLASSIFIER)
    start = sparse_start(plain, tmp_path / "start.weights", fraction=0)
    cfg = write_cfg(tmp_path / "t.cfg", CLASSIFIER, net="prune_threshold=0.05", connected="prune_threshold=0.2")
    run(PATCHED, "partial", cfg, start, tmp_path / "patched.weights", 100, cwd=tmp_path)
    check_thresholded(cfg, start, tmp_path / "patched.weights", {0: 0.05, 2: 0.05, 3: 0.2})
    zeroed = sum(np.count_nonzero(w == 0) for w in weights_of(cfg, tmp_path / "patched.weights").values())
    assert zeroed > 0.1 * sum(w.size for w in weights_of(cfg, start).values())
    run(STOCK, "partial", cfg, start, tmp_path / "stock.weights", 100, cwd=tmp_path)
    assert (tmp_path / "stock.weights").read_bytes() == start.read_bytes()


def test_without_options_saves_like_stock(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path / "net.cfg", CLASSIFIER)
    start = sparse_start(cfg, tmp_path / "start.weights")
    for binary in (PATCHED, STOCK):
        run(binary, "partial", cfg, start, tmp_path / f"{binary.parent.name}.weights", 100, cwd=tmp_path)
    assert (tmp_path / "darknet.weights").read_bytes() == (tmp_path / "darknet-stock.weights").read_bytes()


def test_deconvolutional_weights_load(tmp_path: Path) -> None:
    """Stock Darknet dies with SIGFPE loading them (groups is never set);
    the patched one loads and saves them unchanged, and so does the binding."""
    cfg = write_cfg(tmp_path / "deconv.cfg", DECONV)
    weights = sparse_start(cfg, tmp_path / "deconv.weights")
    stock = subprocess.run([str(STOCK), "partial", str(cfg), str(weights), str(tmp_path / "stock.weights"), "100"],
                           cwd=tmp_path, capture_output=True, stdin=subprocess.DEVNULL)
    assert stock.returncode == -signal.SIGFPE
    run(PATCHED, "partial", cfg, weights, tmp_path / "patched.weights", 100, cwd=tmp_path)
    assert (tmp_path / "patched.weights").read_bytes() == weights.read_bytes()
    net = darknet.Network(cfg, weights)
    for key, (_, array) in file_arrays(cfg, weights).items():
        layer, name = key.split(":")
        np.testing.assert_array_equal(net.params(int(layer))[name], array, err_msg=key)


def test_binding_predicts_like_the_binary(tmp_path: Path) -> None:
    """``classifier predict`` prints 100*output with 2 decimals; outputs near
    1e3 give 7 or more significant digits, so equal text means equal floats
    (up to the last bit or so)."""
    cfg = write_cfg(tmp_path / "net.cfg", CLASSIFIER.replace("[softmax]\n", ""))
    net = darknet.Network(cfg, sparse_start(cfg, tmp_path / "start.weights"))
    net.params(3)["biases"][:] = [1000, 1700, 2300, 2900]
    net.save(tmp_path / "net.weights")
    data = write_images(tmp_path, per_label=1)
    net = darknet.Network(cfg, tmp_path / "net.weights")
    net.set_batch(1)
    for image in sorted((tmp_path / "images").glob("*.png")):
        printed = run(PATCHED, "classifier", "predict", data, cfg, tmp_path / "net.weights", image,
                      cwd=tmp_path).stdout.splitlines()
        out = net.predict(image_input(image))[0]
        ours = [f"{out[i] * np.float32(100):5.2f}%: {LABELS[i]}" for i in np.argsort(-out)]
        assert printed[-len(LABELS):] == ours


def test_a_patch_that_does_not_apply_is_named_with_its_hunk(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for script in ("build_darknet.sh", "build_common.sh"):
        shutil.copy(ROOT / "scripts" / script, repo / "scripts")
    (repo / "patches").mkdir()
    (repo / "patches" / "series").write_text("0001-broken.patch\n")
    (repo / "patches" / "0001-broken.patch").write_text(
        "--- a/src/parser.c\n+++ b/src/parser.c\n@@ -1,3 +1,3 @@\n not\n-what\n+upstream\n has\n")
    done = subprocess.run(["bash", str(repo / "scripts" / "build_darknet.sh"), "patched"], capture_output=True,
                          text=True, env={**os.environ, "DARKNET_SRC": str(ROOT / "build" / "darknet-stock")})
    assert done.returncode != 0
    assert "patches/0001-broken.patch does not apply" in done.stderr
    assert "Hunk #1 FAILED" in done.stderr
    assert not (repo / "build" / "darknet").exists()


def test_prune_kernels_compile_with_nvcc(tmp_path: Path) -> None:
    """No GPU here: compile the new .cu with upstream's own GPU rule and flags
    (the full GPU build needs cuBLAS and cuRAND headers, which this machine lacks)."""
    target = tmp_path / "prune_kernels.o"
    subprocess.run(["make", "-s", "-C", str(ROOT / "build" / "darknet"), "GPU=1",
                    "ARCH=-gencode arch=compute_90,code=sm_90", f"OBJDIR={tmp_path}/", str(target)],
                   check=True, capture_output=True)
    symbols = subprocess.run(["nm", str(target)], check=True, capture_output=True, text=True).stdout
    assert " T prune_mask_gpu" in symbols and " T prune_threshold_gpu" in symbols
