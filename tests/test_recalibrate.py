"""Batch-norm recalibration on the example digits model: exact statistics,
only the rolling arrays change, and it repairs a one-shot-pruned model."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from darknet_sparse import Magnitude
from darknet_sparse.analysis import recalibrate, sensitivity
from darknet_sparse.cli import cli
from darknet_sparse.darknet import images
from darknet_sparse.darknet.network import Network
from darknet_sparse.errors import BindingError, CfgError, InputError
from darknet_sparse.format.files import load, load_model
from darknet_sparse.pruning.prune import threshold

REPO = Path(__file__).resolve().parent.parent
CFG = REPO / "cfg" / "digits.cfg"
WEIGHTS = REPO / "cfg" / "digits.weights"
ROLLING = ("rolling_mean", "rolling_variance")
#: The official COCO yolov3-tiny (`make models`) and Debian's cfg and photos.
YOLO_CFG = Path("/usr/share/darknet/cfg/yolov3-tiny.cfg")
YOLO_WEIGHTS = REPO / "models" / "yolov3-tiny.weights"
PHOTOS = sorted(Path("/usr/share/darknet/data").glob("*.jpg"))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    """The digits model one-shot pruned to 80% (magnitude): top-1 collapses."""
    out = tmp_path_factory.mktemp("pruned") / "digits80.weights"
    threshold(load(CFG, WEIGHTS), out, Magnitude(0.8))
    return out


def _train_images(digits: Path, count: int | None = None) -> np.ndarray:
    paths = images.sample(images.image_paths(digits.parent / "train.list"), count)
    return images.load_batch(paths, (3, 16, 16))


def test_pooled_statistics_are_those_of_all_values():
    rng = np.random.default_rng(1)
    values = rng.normal(3.0, 2.0, (4, 50, 3)) + rng.normal(0, 1, (4, 1, 3))  # 4 passes that differ
    sums = np.array([values.mean(1).sum(0), (values.mean(1) ** 2).sum(0), values.var(1, ddof=1).sum(0)])
    mean, variance = recalibrate.pooled(sums, 4, 50)
    flat = values.reshape(-1, 3)
    np.testing.assert_allclose(mean, flat.mean(0))
    np.testing.assert_allclose(variance, flat.var(0, ddof=1))


def test_dropout_off_and_the_batch_set_where_darknet_reads_them():
    text = "[net]\nbatch=1\n[ dropout ]\nprobability=.3\nprobability=.5\n[dropout]\n[connected]\noutput=2\n"
    assert recalibrate.calibration_cfg(text) == ("[net]\nbatch=1\n[ dropout ]\nprobability=0\n"
                                                 "[dropout]\nprobability=0\n[connected]\noutput=2\n")
    assert recalibrate.calibration_cfg(text, 8).startswith("[net]\nsubdivisions=1\nbatch=8\n[ dropout ]")


def test_darknet_reads_the_first_options(tmp_path):
    cfg = tmp_path / "digits.cfg"
    cfg.write_text(CFG.read_text().replace("batch=64", "batch=1"))
    assert recalibrate.calibration_network(cfg, WEIGHTS, 5).batch == 5
    net = recalibrate.calibration_network(cfg, WEIGHTS)
    with pytest.raises(InputError, match="takes 1 image per pass, too few"):
        recalibrate.recalibrate(net, load_model(cfg, "pjreddie"), np.zeros((4, 3, 16, 16), np.float32))


def test_the_first_layers_statistics_are_exactly_its_outputs(digits):
    """Layer 0 sees the images themselves: its recalibrated mean and variance
    must be those of the convolution over all calibration images (numpy)."""
    x = _train_images(digits, 100)  # two passes of 50
    net = recalibrate.calibration_network(CFG, WEIGHTS)
    result = recalibrate.recalibrate(net, load_model(CFG, "pjreddie"), x)
    assert (result.images, result.passes, result.batch) == (100, 2, 50)
    kernels = net.params(0)["weights"].reshape(16, 3, 3, 3).astype(np.float64)
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # N, C, 16, 16, 3, 3
    outputs = np.einsum("nchwij,fcij->fnhw", windows, kernels).reshape(16, -1)
    np.testing.assert_allclose(net.params(0)["rolling_mean"], outputs.mean(1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.params(0)["rolling_variance"], outputs.var(1, ddof=1), rtol=1e-4, atol=1e-6)


def test_only_the_rolling_statistics_change(tmp_path, digits, pruned):
    out = tmp_path / "recalibrated.weights"
    result = CliRunner().invoke(cli, ["recalibrate", "--cfg", str(CFG), "-w", str(pruned), "--images",
                                      str(digits.parent / "train"), "--max-images", "256", "--batch", "128",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "recalibrated 4 layers on 256 images (2 passes of 128)" in result.output
    before, after = load(CFG, pruned), load(CFG, out)
    changed = set()
    for slot in before.slots:
        old, new = before.array(slot), after.array(slot)
        if slot.param.role in ROLLING:
            if not np.array_equal(old, new):
                changed.add((slot.layer.index, slot.param.role))
        else:
            assert old.tobytes() == new.tobytes(), (slot.layer.index, slot.param.name)
    assert changed == {(i, role) for i in (0, 2, 4, 6) for role in ROLLING}
    assert out.read_bytes()[:20] == pruned.read_bytes()[:20]  # the header too
    again = tmp_path / "again.weights"
    CliRunner().invoke(cli, ["recalibrate", "--cfg", str(CFG), "-w", str(pruned), "--images",
                             str(digits.parent / "train"), "--max-images", "256", "--batch", "128", "-o", str(again)])
    assert again.read_bytes() == out.read_bytes()  # no dropout, no randomness


def test_recalibration_repairs_a_one_shot_pruned_model(digits, pruned):
    net = recalibrate.calibration_network(CFG, pruned)
    top1 = sensitivity.top1(net, digits)
    before = top1(net)["top1"]
    passes = []
    recalibrate.recalibrate(net, load_model(CFG, "pjreddie"), _train_images(digits), on_progress=passes.append)
    after = top1(net)["top1"]
    assert passes == list(range(1, 24))  # 1438 images: 23 passes of 62
    assert before < 0.5 and after > 0.9


def test_errors(tmp_path, digits):
    net = recalibrate.calibration_network(CFG, WEIGHTS)
    model = load_model(CFG, "pjreddie")
    with pytest.raises(InputError, match="at least 2 images, got 1"):
        recalibrate.recalibrate(net, model, _train_images(digits, 1))
    plain = tmp_path / "plain.cfg"
    plain.write_text("[net]\nbatch=2\nheight=8\nwidth=8\nchannels=3\n"
                     "[convolutional]\nfilters=2\nsize=3\nstride=1\npad=1\nactivation=leaky\n")
    with pytest.raises(InputError, match="no batch-norm statistics"):
        recalibrate.recalibrate(Network(plain), load_model(plain, "pjreddie"), np.zeros((4, 3, 8, 8)))
    same = CliRunner().invoke(cli, ["recalibrate", "-w", str(WEIGHTS), "--images", str(digits.parent / "train"),
                                    "-o", str(WEIGHTS)])
    assert same.exit_code == 2 and "output is the input file" in same.output


def test_an_alexeyab_cfg_is_refused_by_the_users_name(tmp_path):
    """The calibration network parses a temporary copy of the cfg: with the
    pjreddie fork chosen, the refusal still names the user's file (and not a
    weights size mismatch).  (fork=auto runs such a cfg in AlexeyAB's Darknet.)"""
    mine = tmp_path / "mine.cfg"
    mine.write_text(CFG.read_text().replace("activation=leaky", "activation=mish", 1))
    with pytest.raises(CfgError, match=rf"^{re.escape(str(mine))}: uses AlexeyAB-only features \(activation=mish"):
        recalibrate.calibration_network(mine, WEIGHTS, batch=8, fork="pjreddie")


def test_a_network_on_a_gpu_is_refused(monkeypatch, digits):
    monkeypatch.setattr(Network, "on_gpu", property(lambda self: True))
    with pytest.raises(BindingError, match="runs on a GPU"):
        recalibrate.recalibrate(Network(CFG, WEIGHTS), load_model(CFG, "pjreddie"), _train_images(digits, 8))


def test_a_detector_is_recalibrated_and_only_its_rolling_statistics_change(tmp_path):
    """yolov3-tiny, 50% pruned, through the CLI in a child process (a crash
    in Darknet, as the [yolo] layers' training-mode loss without a truth
    was, is then a failed exit, not a dead test run)."""
    assert YOLO_WEIGHTS.is_file(), f"{YOLO_WEIGHTS} is missing: run `make models`"
    pruned, out, photos = tmp_path / "y50.weights", tmp_path / "recalibrated.weights", tmp_path / "photos.list"
    made = CliRunner().invoke(cli, ["threshold", str(YOLO_WEIGHTS), "--cfg", str(YOLO_CFG), "--mode", "magnitude",
                                    "-s", "0.5", "-o", str(pruned)])
    assert made.exit_code == 0, made.output
    photos.write_text("".join(f"{path}\n" for path in PHOTOS))
    run = subprocess.run([sys.executable, "-m", "darknet_sparse", "recalibrate", "--cfg", str(YOLO_CFG),
                          "-w", str(pruned), "--images", str(photos), "--resize", "letterbox", "--batch", "4",
                          "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "recalibrated 11 layers on 6 images (2 passes of 3)" in run.stdout
    before, after = load(YOLO_CFG, pruned), load(YOLO_CFG, out)
    changed = set()
    for index, layer in enumerate(load_model(YOLO_CFG, "pjreddie").layers):
        old, new = before.arrays(index), after.arrays(index)
        assert old.keys() == new.keys()
        for name in old:
            if name in ROLLING:
                changed |= {(index, name)} if not np.array_equal(old[name], new[name]) else set()
            else:
                assert old[name].tobytes() == new[name].tobytes(), (index, name)
    batchnorm = (0, 2, 4, 6, 8, 10, 12, 13, 14, 18, 21)  # every convolution but the two before the heads
    assert changed == {(i, name) for i in batchnorm for name in ROLLING}
    assert out.read_bytes()[:20] == pruned.read_bytes()[:20]


def test_image_files_are_read_pass_by_pass_with_the_same_result(digits, monkeypatch):
    paths = images.sample(images.image_paths(digits.parent / "train.list"), 120)
    model = load_model(CFG, "pjreddie")
    loaded = recalibrate.calibration_network(CFG, WEIGHTS, 40)
    recalibrate.recalibrate(loaded, model, images.load_batch(paths, (3, 16, 16)))
    reads = []
    real = images.load_batch
    monkeypatch.setattr(images, "load_batch", lambda some, *args: reads.append(len(some)) or real(some, *args))
    streamed = recalibrate.calibration_network(CFG, WEIGHTS, 40)
    recalibrate.recalibrate(streamed, model, recalibrate.ImageFiles(paths, (3, 16, 16)))
    assert reads == [40, 40, 40]
    for index in (0, 2, 4, 6):
        for name in ROLLING:
            assert streamed.params(index)[name].tobytes() == loaded.params(index)[name].tobytes()


def test_relative_to_itself_the_statistics_stay_as_they_were(digits):
    """The reference unpruned: the shift is zero and the ratio one, so the
    model's own statistics come back (to float rounding), whatever the
    images; absolute recalibration on the same images moves them."""
    model = load_model(CFG, "pjreddie")
    x = _train_images(digits, 128)
    net = recalibrate.calibration_network(CFG, WEIGHTS, 64)
    before = {i: {name: net.params(i)[name].copy() for name in ROLLING} for i in (0, 2, 4, 6)}
    passes = []
    result = recalibrate.recalibrate(net, model, x, on_progress=passes.append,
                                     reference=recalibrate.calibration_network(CFG, WEIGHTS, 64))
    assert result.relative and passes == [1, 2, 3, 4]  # the model's two passes, then the reference's
    for i, arrays in before.items():
        for name, old in arrays.items():
            np.testing.assert_allclose(net.params(i)[name], old, rtol=1e-5, atol=1e-6)
    absolute = recalibrate.calibration_network(CFG, WEIGHTS, 64)
    recalibrate.recalibrate(absolute, model, x)
    assert not np.allclose(absolute.params(0)["rolling_mean"], before[0]["rolling_mean"], rtol=1e-3)


def test_relative_applies_the_shift_pruning_made(digits, pruned):
    """variance = ref * v_pruned / v_reference, mean = m_pruned + (ref -
    m_reference) * sqrt(v_pruned / v_reference), from the reference's
    statistics (a pruned copy's are the same until they are recalibrated or
    retrained: here they were recalibrated first)."""
    model = load_model(CFG, "pjreddie")
    x = _train_images(digits, 128)
    measured = {}
    for name, weights in (("pruned", pruned), ("dense", WEIGHTS)):
        measured[name], _, _ = recalibrate.measure(recalibrate.calibration_network(CFG, weights, 64), model, x)
    net = recalibrate.calibration_network(CFG, pruned, 64)
    recalibrate.recalibrate(net, model, x[:64])  # its own statistics now differ from the reference's
    dense = recalibrate.calibration_network(CFG, WEIGHTS, 64)
    old = {i: [dense.params(i)[name].copy() for name in ROLLING] for i in (0, 2, 4, 6)}
    assert not np.allclose(net.params(6)["rolling_mean"], old[6][0])
    recalibrate.recalibrate(net, model, x, reference=dense)
    for i, (old_mean, old_variance) in old.items():
        (mean, variance), (ref_mean, ref_variance) = measured["pruned"][i], measured["dense"][i]
        np.testing.assert_allclose(net.params(i)["rolling_mean"],
                                   mean + (old_mean - ref_mean) * np.sqrt(variance / ref_variance),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(net.params(i)["rolling_variance"], old_variance * variance / ref_variance,
                                   rtol=1e-5)


def test_relative_gives_a_channel_pruning_made_constant_its_constant(tmp_path, digits):
    """Every weight of layer 0's filter 3 zero: the channel's input to batch
    norm is exactly 0 on every image.  Relative to the dense model its
    rolling mean and variance become 0 (the channel then outputs its beta,
    as after absolute recalibration); the dense model's offset between
    rolling and measured mean, carried unscaled, would leave a mean off the
    constant, divided by no more than the root of Darknet's epsilon."""
    net = Network(CFG, WEIGHTS)
    filters = net.params(0)["weights"].reshape(net.params(0)["rolling_mean"].size, -1)
    filters[3] = 0
    zeroed = tmp_path / "zeroed.weights"
    net.save(zeroed)
    model = load_model(CFG, "pjreddie")
    x = _train_images(digits, 64)
    ref_mean, _ = recalibrate.measure(recalibrate.calibration_network(CFG, WEIGHTS, 32), model, x)[0][0]
    assert abs(Network(CFG, WEIGHTS).params(0)["rolling_mean"][3] - ref_mean[3]) > 1e-4  # an offset to carry
    recalibrated = recalibrate.calibration_network(CFG, zeroed, 32)
    recalibrate.recalibrate(recalibrated, model, x, reference=recalibrate.calibration_network(CFG, WEIGHTS, 32))
    assert recalibrated.params(0)["rolling_mean"][3] == 0 and recalibrated.params(0)["rolling_variance"][3] == 0


def test_relative_needs_a_reference_of_the_same_layers(tmp_path, digits):
    other = tmp_path / "other.cfg"
    other.write_text(CFG.read_text().replace("filters=32", "filters=16", 1))
    assert other.read_text() != CFG.read_text()
    Network(other).save(tmp_path / "other.weights")
    net = recalibrate.calibration_network(CFG, WEIGHTS, 8)
    with pytest.raises(InputError, match="layer 2: the reference has 16 channels, the model 32"):
        recalibrate.recalibrate(net, load_model(CFG, "pjreddie"), _train_images(digits, 16),
                                reference=recalibrate.calibration_network(other, tmp_path / "other.weights", 8))


def test_a_slimmed_model_recalibrates_against_its_dense_reference(tmp_path, digits):
    """Channel 3 of layer 0 outputs exactly 0 (gamma = beta = 0), so slim
    removes it without changing anything else: relative to the dense model,
    through the kept channels, the statistics come back as the dense
    model's (those of the kept channels)."""
    from darknet_sparse.structured import slim

    net = Network(CFG, WEIGHTS)
    for name in ("scales", "biases"):
        net.params(0)[name][3] = 0
    dense_weights = tmp_path / "dense.weights"
    net.save(dense_weights)
    wf = load(CFG, dense_weights)
    choice = slim.choose(wf, gamma_threshold=1e-12)
    assert not choice.kept[choice.graph.producer(0)][3] and choice.kept.sum() == len(choice.kept) - 1
    slim.apply(wf, choice, tmp_path / "slim.weights")
    slim_cfg = tmp_path / "slim.cfg"
    x = _train_images(digits, 64)
    slimmed = recalibrate.calibration_network(slim_cfg, tmp_path / "slim.weights", 32)
    dense = recalibrate.calibration_network(CFG, dense_weights, 32)
    channels = {0: choice.kept_channels(0)}
    recalibrate.recalibrate(slimmed, load_model(slim_cfg, "pjreddie"), x, reference=dense,
                            reference_model=load_model(CFG, "pjreddie"), channels=channels)
    for i in (0, 2, 4, 6):
        for name in ROLLING:
            expected = dense.params(i)[name][channels[i]] if i in channels else dense.params(i)[name]
            np.testing.assert_allclose(slimmed.params(i)[name], expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="layer 0: the reference has 16 channels, the model 15"):
        recalibrate.recalibrate(slimmed, load_model(slim_cfg, "pjreddie"), x, reference=dense,
                                reference_model=load_model(CFG, "pjreddie"))
