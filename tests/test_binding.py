"""The cffi binding (darknet_sparse.darknet) and, through it, the patched
Darknet's prune phase and save-time threshold."""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from darknet_sparse.darknet import network as darknet
from darknet_sparse.darknet import home
from darknet_sparse.errors import BindingError, CfgError, OutputError
from helpers.darknet_run import (CLASSIFIER, RECURRENT, TRAINABLE, check_thresholded, check_zeros_frozen,
                                 file_arrays, one_hot_data, sparse_start, stock_backend, weight_views, write_cfg)


@pytest.fixture
def classifier(tmp_path: Path) -> tuple[Path, Path]:
    """The classifier cfg and dense random weights for it."""
    cfg = write_cfg(tmp_path / "classifier.cfg", CLASSIFIER)
    return cfg, sparse_start(cfg, tmp_path / "dense.weights", fraction=0)


def test_missing_binding_says_how_to_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, classifier) -> None:
    """Outside a checkout with an empty per-user folder nothing is found, and
    the error names the command that builds it."""
    monkeypatch.setattr(home, "CHECKOUT", None)
    monkeypatch.setenv("DARKNET_SPARSE_HOME", str(tmp_path / "home"))
    with pytest.raises(BindingError, match=r"not built: run `darknet-sparse build`"):
        darknet.Network(*classifier)
    info = darknet.build_info()
    assert info["binding"] is False and info["exists"] is False
    assert info["binary"] == str(tmp_path / "home" / "darknet" / "darknet")
    with pytest.raises(BindingError, match="not found"):
        darknet.backend("/nonexistent/_darknet.so")
    monkeypatch.setenv("DARKNET_SPARSE_BINDING", "/nonexistent/_darknet.so")
    with pytest.raises(BindingError, match="DARKNET_SPARSE_BINDING"):
        darknet.backend()


def test_the_binding_is_found_in_the_per_user_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     classifier) -> None:
    built = home.find_binding()
    (tmp_path / "binding").mkdir()
    shutil.copy(built, tmp_path / "binding" / built.name)
    monkeypatch.setattr(home, "CHECKOUT", None)
    monkeypatch.setenv("DARKNET_SPARSE_HOME", str(tmp_path))
    assert home.find_binding() == tmp_path / "binding" / built.name
    assert darknet.Network(*classifier).num_layers == 5


def test_network_describes_its_cfg(classifier) -> None:
    net = darknet.Network(*classifier)
    assert net.num_layers == 5
    assert [net.layer_type(i) for i in range(5)] == ["convolutional", "maxpool", "convolutional", "connected",
                                                     "softmax"]
    assert (net.input_shape, net.inputs, net.outputs, net.batch) == ((3, 8, 8), 192, 4, 4)  # batch 8 / 2
    net.set_batch(1)
    assert net.batch == 1
    with pytest.raises(BindingError, match=r"batch must be 1\.\.4"):
        net.set_batch(5)
    with pytest.raises(BindingError, match="layer 5 does not exist"):
        net.params(5)


def test_inputs_are_checked_before_darknet_sees_them(classifier) -> None:
    net = darknet.Network(*classifier)
    with pytest.raises(BindingError, match=r"images of shape \(3, 8, 9\)"):
        net.predict(np.zeros((1, 3, 8, 9)))
    with pytest.raises(BindingError, match=r"x must be \(N, 192\)"):
        net.predict(np.zeros(192))
    x, y = one_hot_data(net, 6)
    with pytest.raises(BindingError, match=r"6 rows: .* multiple of the batch \(4\)"):
        net.train(x, y)
    with pytest.raises(BindingError, match="x has 4 rows but y has 6"):
        net.train(x[:4], y)


def test_missing_files_raise_before_darknet_exits(tmp_path: Path, classifier) -> None:
    cfg, weights = classifier
    short = tmp_path / "short.weights"
    short.write_bytes(weights.read_bytes()[:-6])
    with pytest.raises(ValueError, match="short.weights"):
        darknet.Network(cfg, short)
    with pytest.raises(ValueError, match="nothing.cfg"):
        darknet.Network(tmp_path / "nothing.cfg")


def test_an_alexeyab_cfg_is_refused_before_pjreddie_misreads_it(tmp_path: Path, classifier) -> None:
    """pjreddie's parser would read [route] groups= or mish differently (or
    die): with the pjreddie fork chosen, the binding says which features,
    instead of a size mismatch (fork=auto picks AlexeyAB's binding for it:
    tests/test_alexeyab_binding.py)."""
    cfg, _ = classifier
    text = cfg.read_text()
    assert "activation=leaky" in text
    ab = tmp_path / "ab.cfg"
    ab.write_text(text.replace("activation=leaky", "activation=mish", 1))
    with pytest.raises(CfgError, match=r"ab.cfg: uses AlexeyAB-only features \(activation=mish at line \d+\)"):
        darknet.Network(ab, fork="pjreddie")
    darknet.Network(cfg)  # the plain cfg still loads


def test_views_are_the_file_arrays_and_write_through(tmp_path: Path, classifier) -> None:
    cfg, weights = classifier
    net = darknet.Network(cfg, weights)
    expected = file_arrays(cfg, weights)
    views = {f"{i}:{name}": view for i in range(net.num_layers) for name, view in net.params(i).items()}
    assert views.keys() == expected.keys()
    for key, (_, array) in expected.items():
        np.testing.assert_array_equal(views[key], array, err_msg=key)
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    before = net.predict(x)
    views["3:biases"][0] += 10  # the connected layer's first output
    assert net.predict(x)[:, 0].mean() > before[:, 0].mean()
    net.save(tmp_path / "edited.weights")
    assert file_arrays(cfg, tmp_path / "edited.weights")["3:biases"][1][0] == views["3:biases"][0]


def test_weight_writes_through_views_reach_the_sparse_forward_pass(tmp_path: Path) -> None:
    """A 90%-zero net runs the sparse path from a compressed copy of its
    weights; a write through a view must still change the next prediction
    exactly as reloading the edited file would."""
    cfg = write_cfg(tmp_path / "classifier.cfg", CLASSIFIER)
    net = darknet.Network(cfg, sparse_start(cfg, tmp_path / "sparse.weights", fraction=0.9))
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    before = net.predict(x)
    weights = net.params(0)["weights"]
    weights[np.flatnonzero(weights)[:3]] *= -4
    after = net.predict(x)  # before any save: saving also rebuilds the copy
    net.save(tmp_path / "edited.weights")
    expected = darknet.Network(cfg, tmp_path / "edited.weights").predict(x)
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(after, expected)


def test_a_view_keeps_its_network_alive(classifier) -> None:
    weights = darknet.Network(*classifier).params(0)["weights"]  # the Network is gone here
    np.testing.assert_array_equal(weights, file_arrays(*classifier)["0:weights"][1])


@pytest.mark.parametrize("name", RECURRENT)
def test_sub_layer_views_match_the_file(tmp_path: Path, name: str) -> None:
    cfg = write_cfg(tmp_path / f"{name}.cfg", RECURRENT[name])
    weights = sparse_start(cfg, tmp_path / "start.weights")
    net = darknet.Network(cfg, weights)
    expected = file_arrays(cfg, weights)
    views = {f"{i}:{name}": view for i in range(net.num_layers) for name, view in net.params(i).items()}
    assert views.keys() == expected.keys()
    assert any("." in key for key in views)
    for key, (_, array) in expected.items():
        np.testing.assert_array_equal(views[key], array, err_msg=key)


def _train(cfg: Path, weights: Path, prune: bool, iterations: int = 4) -> dict[str, np.ndarray]:
    net = darknet.Network(cfg, weights)
    net.set_prune(prune)
    x, y = one_hot_data(net, 2 * net.batch)
    net.train(x, y, iterations)
    return {key: view.copy() for key, view in weight_views(net).items()}


@pytest.mark.parametrize("optimizer", ["", "adam=1"], ids=["sgd", "adam"])
@pytest.mark.parametrize("name", ["classifier", *TRAINABLE])
def test_prune_keeps_zeros_zero(tmp_path: Path, name: str, optimizer: str) -> None:
    """SGD with momentum and decay; adam=1 (which this Darknet's CPU update
    ignores: it runs SGD, and the prune phase holds either way).  The same
    run with prune=0 revives the zeros: the test can fail."""
    cfg = write_cfg(tmp_path / f"{name}.cfg", CLASSIFIER if name == "classifier" else TRAINABLE[name],
                    net=optimizer)
    start = sparse_start(cfg, tmp_path / "start.weights")
    before = {key: view.copy() for key, view in weight_views(darknet.Network(cfg, start)).items()}
    frozen = _train(cfg, start, prune=True)
    free = _train(cfg, start, prune=False)
    check_zeros_frozen(before, frozen, {"prune=0": free})


def test_prune_changes_nothing_without_zeros(classifier) -> None:
    dense = [_train(*classifier, prune=prune) for prune in (False, True)]
    for key in dense[0]:
        np.testing.assert_array_equal(dense[0][key], dense[1][key], err_msg=key)


@pytest.mark.parametrize("optimizer", ["", "adam=1"], ids=["sgd", "adam"])
def test_patched_trains_bit_identical_to_stock(tmp_path: Path, optimizer: str) -> None:
    """Without the new options the patches change nothing in training: same
    seed, data and start, byte-identical weights after training; the
    predictions agree to FAST's rounding (patches/0010's auto)."""
    cfg = write_cfg(tmp_path / "classifier.cfg", CLASSIFIER, net=optimizer)
    start = sparse_start(cfg, tmp_path / "start.weights", fraction=0.3)
    saved, predicted = [], []
    for using in (darknet.backend(), stock_backend()):
        darknet.seed(11, using)
        net = darknet.Network(cfg, start, using=using)
        x, y = one_hot_data(net, 2 * net.batch)
        net.train(x, y, 5)
        predicted.append(net.predict(x))
        out = tmp_path / f"{len(saved)}.weights"
        net.save(out)
        saved.append(out.read_bytes())
    assert saved[0] != start.read_bytes()
    assert saved[0] == saved[1]
    # Inference in sparse_forward=auto (the default) runs the FAST kernels
    # (FMA, any order): within 1e-5 of stock, relative to the largest output.
    assert np.max(np.abs(predicted[0] - predicted[1])) <= 1e-5 * np.max(np.abs(predicted[1]))
    assert np.ptp(predicted[1]) > 0


def test_forward_train_recalibrates_batch_norm_only(classifier) -> None:
    net = darknet.Network(*classifier)
    before = {k: v.copy() for k, v in net.params(0).items()}
    net.forward_train(np.random.default_rng(1).random((8, 3, 8, 8), dtype=np.float32) + 1)
    after = net.params(0)
    for name in ("rolling_mean", "rolling_variance"):
        assert np.all(after[name] != before[name]), name
    for name in ("biases", "scales", "weights"):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    with pytest.raises(BindingError, match="multiple of the batch"):
        net.forward_train(np.zeros((3, 3, 8, 8), np.float32))


def test_threshold_zeroes_small_weights_when_saving(tmp_path: Path, classifier) -> None:
    cfg, weights = classifier
    net = darknet.Network(cfg, weights)
    live = {key: view.copy() for key, view in weight_views(net).items()}
    net.set_prune_threshold(0.05)
    net.set_prune_threshold(0.2, layer=3)  # a layer's own threshold wins
    assert (net.prune_threshold(), net.prune_threshold(0), net.prune_threshold(3)) == pytest.approx((0.05, 0.05, 0.2))
    net.save(tmp_path / "t.weights")
    check_thresholded(cfg, weights, tmp_path / "t.weights", {0: 0.05, 2: 0.05, 3: 0.2})
    for key, view in weight_views(net).items():  # prune=0: only the written copy
        np.testing.assert_array_equal(view, live[key], err_msg=key)
    net.set_prune(True)
    assert net.prune
    net.save(tmp_path / "p.weights")
    assert (tmp_path / "p.weights").read_bytes()[20:] == (tmp_path / "t.weights").read_bytes()[20:]
    for key, view in weight_views(net).items():  # prune=1: the live weights too
        limit = 0.2 if key.startswith("3:") else 0.05
        np.testing.assert_array_equal(view, np.where(np.abs(live[key]) < np.float32(limit), 0, live[key]))


@pytest.mark.parametrize("name", RECURRENT)
def test_threshold_reaches_sub_layers(tmp_path: Path, name: str) -> None:
    cfg = write_cfg(tmp_path / f"{name}.cfg", RECURRENT[name])
    weights = sparse_start(cfg, tmp_path / "start.weights", fraction=0)
    net = darknet.Network(cfg, weights)
    net.set_prune_threshold(0.1)
    net.save(tmp_path / "t.weights")
    check_thresholded(cfg, weights, tmp_path / "t.weights", dict.fromkeys(range(net.num_layers), 0.1))


def test_save_is_atomic(tmp_path: Path, classifier) -> None:
    net = darknet.Network(*classifier)
    target = tmp_path / "out" / "net.weights"
    with pytest.raises(OutputError, match="cannot write in"):
        net.save(target)
    target.parent.mkdir()
    target.write_bytes(b"old")
    net.save(target)
    assert target.read_bytes() == classifier[1].read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["net.weights"]


def test_build_info_reads_the_patched_binary() -> None:
    info = darknet.build_info()
    assert info["binary"].endswith("build/darknet/darknet")
    assert info["exists"] and info["binding"]
    assert info["options"] == ["prune", "prune_threshold"]


SAVE_INTO_A_MISSING_FOLDER = """
import contextlib, sys
from darknet_sparse.darknet import network as darknet
from darknet_sparse.errors import BindingError
darknet.atomic_path = lambda path: contextlib.nullcontext(sys.argv[3])
try:
    darknet.Network(sys.argv[1], sys.argv[2]).save(sys.argv[3])
except BindingError as exc:
    print("BindingError:", exc)
print("still running")
"""


def test_a_save_darknet_cannot_open_is_an_error_not_an_exit(tmp_path: Path, classifier) -> None:
    """save_weights exit()s the process when fopen fails; the shim opens the
    file first and returns -1, which Network.save reports."""
    target = tmp_path / "missing" / "net.weights"
    done = subprocess.run([sys.executable, "-c", SAVE_INTO_A_MISSING_FOLDER, *map(str, classifier), str(target)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"BindingError: {target}: Darknet could not write {target}", "still running"]


def test_bad_arguments_are_binding_errors(classifier) -> None:
    """Arguments C cannot take are refused with a BindingError (a
    DarknetSparseError: one Error: line in the CLI), never a cffi TypeError."""
    net = darknet.Network(*classifier)
    for call, match in [(lambda: net.set_batch(2.5), "batch must be 1..4"),
                        (lambda: net.layer_type("1"), "a layer is a whole number, not '1'"),
                        (lambda: net.params(1.0), "a layer is a whole number"),
                        (lambda: net.set_prune_threshold("0.1"), "threshold must be a number >= 0, not '0.1'"),
                        (lambda: net.predict([["a"] * 192]), "x must be an array of numbers"),
                        (lambda: net.train(np.zeros((4, 192)), np.zeros((4, 4)), iterations=1.5),
                         "iterations must be a whole number")]:
        with pytest.raises(BindingError, match=match):
            call()


def test_shim_return_codes_are_checked(monkeypatch: pytest.MonkeyPatch, classifier) -> None:
    """A layer index the shim refuses is an error, not silently ignored."""
    net = darknet.Network(*classifier)
    monkeypatch.setattr(net, "_check_layer", lambda index: None)
    with pytest.raises(BindingError, match="no layer 7"):
        net.set_prune_threshold(0.1, layer=7)
    with pytest.raises(BindingError, match="no layer 7"):
        net.prune_threshold(7)


def test_a_layer_the_shim_has_no_output_for_is_an_error(monkeypatch: pytest.MonkeyPatch, classifier) -> None:
    """ds_layer_output answers NULL for a layer it does not have; that is an
    error, never a buffer read at NULL."""
    net = darknet.Network(*classifier)
    monkeypatch.setattr(net, "_check_layer", lambda index: None)
    with pytest.raises(BindingError, match="no output for layer 7"):
        net.layer_outputs(np.zeros((1, net.inputs), np.float32), [7])
    with pytest.raises(BindingError, match="no layer 7"):
        net.layer_type(7)


class _Answering:
    """A compiled module whose named calls answer ``answers[name]`` instead."""

    def __init__(self, lib, **answers):
        self._lib, self._answers = lib, answers

    def __getattr__(self, name: str):
        if name in self._answers:
            return lambda *args: self._answers[name]
        return getattr(self._lib, name)


def test_null_and_negative_answers_of_the_shim_are_errors(tmp_path: Path, classifier) -> None:
    """Each answer the shim gives when C fails (ds_load NULL when memory runs
    out, ds_dets_count -1 for boxes get_network_boxes lost) is a BindingError."""
    real = darknet.backend()
    failing = darknet.Backend(real.ffi, _Answering(real.lib, ds_load=real.ffi.NULL))
    with pytest.raises(BindingError, match="could not allocate the network"):
        darknet.Network(*classifier, using=failing)
    cfg = tmp_path / "detector.cfg"
    shutil.copy(Path(__file__).parent / "cfgs" / "tiny_detector.cfg", cfg)
    net = darknet.Network(cfg, sparse_start(cfg, tmp_path / "detector.weights", fraction=0))
    image = tmp_path / "image.ppm"
    image.write_bytes(b"P6 8 8 255\n" + bytes(range(192)))
    assert net.detect(image, 0.5)[0].shape[1] == 4
    net._backend = darknet.Backend(real.ffi, _Answering(real.lib, ds_dets_count=-1))
    with pytest.raises(BindingError, match="lost the detected boxes"):
        net.detect(image, 0.5)


def test_a_save_that_writes_less_is_an_error(monkeypatch: pytest.MonkeyPatch, classifier) -> None:
    """save_weights ignores failed writes; /dev/full opens but takes nothing
    (ENOSPC), and the size check says so."""
    net = darknet.Network(*classifier)
    size = classifier[1].stat().st_size
    monkeypatch.setattr(darknet, "atomic_path", lambda path: contextlib.nullcontext("/dev/full"))
    with pytest.raises(BindingError, match=f"wrote 0 bytes instead of {size} \\(disk full\\?\\)"):
        net.save("ignored.weights")


def test_the_package_binding_has_no_test_only_calls() -> None:
    """ds_distill_step lives in the tests' own module (helpers/distill_binding.py)."""
    assert not hasattr(darknet.backend().lib, "ds_distill_step")


@pytest.mark.parametrize("value", [-1, 2**32, 1.5, "3", True])
def test_a_seed_is_a_whole_number_c_can_take(value) -> None:
    with pytest.raises(BindingError, match="a seed is a whole number from 0 to 4294967295"):
        darknet.seed(value)


def test_saved_weights_get_the_mode_of_a_new_file(tmp_path: Path, classifier) -> None:
    """Saving goes through a private temporary file; the result is readable
    like any file the user creates (umask 022 -> 0644), not 0600."""
    old = os.umask(0o022)
    try:
        darknet.Network(*classifier).save(tmp_path / "saved.weights")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "saved.weights").stat().st_mode) == 0o644
