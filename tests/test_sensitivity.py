"""Sensitivity sweeps through the binding, on the example digits model, and
the image preparation they rest on (checked against stock Darknet's own
functions in Debian's libdarknet.so)."""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from tiny_models import write_model

from darknet_sparse import Magnitude
from darknet_sparse.analysis import sensitivity
from darknet_sparse.cli import cli
from darknet_sparse.darknet import images
from darknet_sparse.darknet.examples import classifier_top1
from darknet_sparse.darknet.network import Network
from darknet_sparse.errors import BindingError, CfgError, InputError
from darknet_sparse.format.files import load, load_model
from darknet_sparse.pruning.prune import threshold

REPO = Path(__file__).resolve().parent.parent
CFG = REPO / "cfg" / "digits.cfg"
WEIGHTS = REPO / "cfg" / "digits.weights"
PATCHED = REPO / "build" / "darknet" / "darknet"
LIBDARKNET = "/usr/lib/darknet/libdarknet.so"
#: A detector with two [yolo] heads (7 and 14); layer 6 feeds only the first.
TWO_HEADS = Path(__file__).resolve().parent / "cfgs" / "two_heads.cfg"
#: The official COCO yolov3-tiny (`make models`): layers 14 and 15 feed only its first head (16).
YOLO_CFG = Path("/usr/share/darknet/cfg/yolov3-tiny.cfg")
YOLO_WEIGHTS = REPO / "models" / "yolov3-tiny.weights"
PHOTOS = [Path("/usr/share/darknet/data") / f"{name}.jpg" for name in ("dog", "horses", "person", "kite")]


@pytest.fixture(scope="module")
def model():
    return load_model(CFG, "pjreddie", WEIGHTS)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    """The digits model one-shot pruned to 70% (magnitude): top-1 falls."""
    out = tmp_path_factory.mktemp("pruned") / "digits70.weights"
    threshold(load(CFG, WEIGHTS), out, Magnitude(0.7))
    return out


def _all_params(net: Network) -> dict[str, bytes]:
    return {f"{i}:{name}": view.tobytes() for i in range(net.num_layers) for name, view in net.params(i).items()}


class _Image(ctypes.Structure):
    _fields_ = [("w", ctypes.c_int), ("h", ctypes.c_int), ("c", ctypes.c_int),
                ("data", ctypes.POINTER(ctypes.c_float))]


@pytest.fixture(scope="module")
def stock_images():
    """Darknet's load_image_color, center_crop_image and letterbox_image."""
    lib = ctypes.CDLL(LIBDARKNET)
    for name in ("load_image_color", "center_crop_image", "letterbox_image"):
        getattr(lib, name).restype = _Image
    lib.load_image_color.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    lib.center_crop_image.argtypes = lib.letterbox_image.argtypes = [_Image, ctypes.c_int, ctypes.c_int]
    lib.free_image.argtypes = [_Image]

    def pixels(image: _Image) -> np.ndarray:
        array = np.ctypeslib.as_array(image.data, (image.c, image.h, image.w)).copy()
        lib.free_image(image)
        return array
    return lib, pixels


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_images_are_prepared_bit_for_bit_as_darknet_prepares_them(tmp_path, stock_images, mode):
    lib, pixels = stock_images
    rng = np.random.default_rng(len(mode))
    for n in range(6):
        width, height = (int(v) for v in rng.integers(6, 50, 2))
        path = tmp_path / f"{n}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode).save(path)
        loaded = images.read_pixels(path, 3)
        assert np.array_equal(loaded, pixels(lib.load_image_color(str(path).encode(), 0, 0)))
        for w, h in [(16, 16), (13, 29), (40, 7), (width, height)]:
            stock = lib.load_image_color(str(path).encode(), 0, 0)
            assert np.array_equal(images.center_crop(loaded, w, h), pixels(lib.center_crop_image(stock, w, h)))
            # Darknet divides by zero when the letterbox is under 2 pixels wide or high.
            if min(height * w // width, width * h // height) >= 2:
                assert np.array_equal(images.letterbox(loaded, w, h), pixels(lib.letterbox_image(stock, w, h)))
            lib.free_image(stock)


def test_top1_through_the_binding_equals_the_binarys(digits, pruned):
    for weights in (WEIGHTS, pruned):
        net = Network(CFG, weights)
        mine = sensitivity.top1(net, digits)(net)["top1"]
        assert mine == pytest.approx(classifier_top1(PATCHED, digits, CFG, weights), abs=1e-6)
    assert mine < 0.99  # the pruned model is measurably worse, so the match is not trivial


def test_sweep_prunes_each_layer_alone_and_restores_it(digits, model):
    net = Network(CFG, WEIGHTS)
    before = _all_params(net)
    measure = sensitivity.top1(net, digits)
    dense = measure(net)
    seen = []
    result = sensitivity.sweep(net, model, [0.9, 0.5], measure, sensitivity.select_layers(model, "4,connected"),
                               on_progress=seen.append)
    assert _all_params(net) == before
    assert seen == list(range(1, 10))
    assert result.levels == [0.0, 0.5, 0.9] and result.layers == [4, 6, 7]
    assert [(r.layer, r.level) for r in result.rows] == [(i, s) for i in (4, 6, 7) for s in (0.0, 0.5, 0.9)]
    assert result.baseline == dense
    rows = {(r.layer, r.level): r for r in result.rows}
    for index, weights in ((4, 18432), (6, 98304), (7, 960)):
        assert rows[(index, 0.0)].metrics == dense
        assert rows[(index, 0.0)].nonzero == weights == rows[(index, 0.9)].weights
        assert rows[(index, 0.9)].nonzero == weights - round(0.9 * weights)
    assert rows[(4, 0.9)].metrics["top1"] < dense["top1"]
    assert rows[(4, 0.5)].effective_flops == rows[(4, 0.5)].flops // 2
    table = sensitivity.table(result).splitlines()
    assert len(table) == 5 and table[1].split()[-3:] == ["0", "0.5", "0.9"]


def test_a_sweep_level_prunes_as_threshold_magnitude_does(tmp_path, model):
    """The sweep's rule and the spec's per-layer sparsity zero the same weights."""
    out = tmp_path / "half.weights"
    threshold(load(CFG, WEIGHTS), out, Magnitude(0.37))
    dense, pruned = load(CFG, WEIGHTS), load(CFG, out)
    for layer in sensitivity.select_layers(model):
        array = np.array(dense.arrays(layer.index)["weights"])
        sensitivity.prune_array(array, 0.37)
        assert np.array_equal(array == 0, pruned.arrays(layer.index)["weights"] == 0)


def test_deviation_is_zero_unpruned_and_grows_with_the_level(digits, model):
    net = Network(CFG, WEIGHTS)
    x = images.load_batch(images.sample(images.image_paths(digits.parent / "valid"), 64), net.input_shape)
    measure = sensitivity.deviation(net, x, sensitivity.output_layers(model), sensitivity.ends_in_softmax(model))
    result = sensitivity.sweep(net, model, [0.5, 0.95], measure, sensitivity.select_layers(model, "2"))
    assert result.metrics == ("rel_l2", "kl")
    values = [(r.metrics["rel_l2"], r.metrics["kl"]) for r in result.rows]
    assert values[0] == (0.0, 0.0)
    assert 0 < values[1][0] < values[2][0] and 0 < values[1][1] < values[2][1]


def test_csv_round_trip(tmp_path, digits, model):
    net = Network(CFG, WEIGHTS)
    result = sensitivity.sweep(net, model, [0.8], sensitivity.top1(net, digits),
                               sensitivity.select_layers(model, "0,7"))
    path = tmp_path / "sens.csv"
    sensitivity.write_csv(result, path)
    assert path.read_text().splitlines()[0] == "layer,type,weights,flops,level,nonzero,sparsity,effective_flops,top1"
    assert sensitivity.read_csv(path) == result


@pytest.mark.parametrize("text, message", [
    ("layer,type\n0,convolutional\n", "not a sensitivity CSV"),
    ("layer,type,weights,flops,level,nonzero,sparsity,effective_flops,top1\n0,conv,10,20,0.5,5,0.5,10\n",
     r"sens\.csv:2: expected 9 values"),
    ("layer,type,weights,flops,level,nonzero,sparsity,effective_flops,top1\n0,conv,10,20,1.5,5,0.5,10,1\n",
     r"sens\.csv:2: level, nonzero or a metric is out of range"),
])
def test_bad_csv_says_where(tmp_path, text, message):
    path = tmp_path / "sens.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        sensitivity.read_csv(path)


def test_an_unlabelled_validation_image_is_an_error(tmp_path, digits):
    listed = tmp_path / "valid.list"
    listed.write_text("/nowhere/unlabelled.png\n")
    data = tmp_path / "bad.data"
    data.write_text(digits.read_text().replace(f"valid={digits.parent / 'valid.list'}", f"valid={listed}"))
    with pytest.raises(CfgError, match="1 images match no label, e.g. /nowhere/unlabelled.png"):
        images.labelled_list(data)


def test_cli_sensitivity_writes_table_csv_and_plot(tmp_path, digits):
    csv_path, plot = tmp_path / "sens.csv", tmp_path / "sens.png"
    result = CliRunner().invoke(cli, ["sensitivity", "-w", str(WEIGHTS), "--data", str(digits), "--levels", "0.5,0.9",
                                      "--layers", "6-7", "--csv", str(csv_path), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "top1 with one layer pruned to each level (dense: 1.0000)" in result.output
    assert len(sensitivity.read_csv(csv_path).rows) == 6
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_sensitivity_on_images_and_its_errors(tmp_path, digits):
    runner = CliRunner()
    result = runner.invoke(cli, ["sensitivity", "-w", str(WEIGHTS), "--images", str(digits.parent / "valid"),
                                 "--max-images", "20", "--levels", "0.9", "--layers", "7", "--json"])
    assert result.exit_code == 0, result.output
    assert '"metrics": [\n    "rel_l2",\n    "kl"\n  ]' in result.output
    both = runner.invoke(cli, ["sensitivity", "-w", str(WEIGHTS), "--images", str(tmp_path), "--data", str(digits)])
    assert both.exit_code == 2 and "not both" in both.output
    empty = runner.invoke(cli, ["sensitivity", "-w", str(WEIGHTS), "--images", str(tmp_path)])
    assert empty.exit_code == 2 and f"Error: {tmp_path}: no images" in empty.output
    level = runner.invoke(cli, ["sensitivity", "-w", str(WEIGHTS), "--data", str(digits), "--levels", "1.0"])
    assert level.exit_code == 2 and "level 1.0 outside [0, 1)" in level.output
    layers = runner.invoke(cli, ["sensitivity", "-w", str(WEIGHTS), "--data", str(digits), "--layers", "maxpool"])
    assert layers.exit_code == 2 and "'maxpool' names no prunable layer" in layers.output


def test_a_network_on_a_gpu_is_refused(monkeypatch, model):
    """On a GPU the views are host copies the passes never read: a sweep
    there would measure the dense network at every level."""
    monkeypatch.setattr(Network, "on_gpu", property(lambda self: True))
    net = Network(CFG, WEIGHTS)
    with pytest.raises(BindingError, match="runs on a GPU"):
        sensitivity.sweep(net, model, [0.5], lambda network: {"top1": 1.0})


def test_a_sweep_of_a_sparse_model_measures_each_level(digits, pruned):
    """At 70% the layers take Darknet's sparse forward path, which computes
    from a copy of the weights: edits through the views must reach it."""
    net = Network(CFG, pruned)
    measure = sensitivity.top1(net, digits)
    dense = measure(net)
    model = load_model(CFG, "pjreddie", pruned)
    result = sensitivity.sweep(net, model, [0.97], measure, sensitivity.select_layers(model, "2,6"))
    by_level = {(r.layer, r.level): r.metrics["top1"] for r in result.rows}
    assert by_level[(2, 0.0)] == by_level[(6, 0.0)] == dense["top1"]
    assert by_level[(2, 0.97)] < dense["top1"] - 0.1 and by_level[(6, 0.97)] < dense["top1"] - 0.1
    assert measure(net) == dense


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """The two-head detector with random weights, and 6 random inputs."""
    cfg, weights = write_model(tmp_path_factory.mktemp("two_heads"), "two_heads", TWO_HEADS.read_text())
    return cfg, weights, np.random.default_rng(0).random((6, 3, 32, 32), dtype=np.float32)


def test_layer_outputs_give_every_head(two_heads):
    cfg, weights, x = two_heads
    net = Network(cfg, weights)  # batch 4: a full pass and a padded one
    first, last = net.layer_outputs(x, [7, 14])
    assert first.shape == (6, 21 * 8 * 8) and last.shape == (6, 21 * 16 * 16)
    assert np.array_equal(last, net.predict(x))
    assert np.array_equal(first[:4], net.layer_outputs(x[:4], [7])[0])  # rows are independent of the padding
    assert not np.array_equal(first[0], first[1])
    assert sensitivity.output_layers(load_model(cfg, "pjreddie")) == [7, 14]


def test_deviation_sees_a_layer_that_feeds_only_the_first_head(two_heads):
    """Layer 6 feeds only the [yolo] head 7: a measure of the last output
    alone (as before) reports 0 for it, the measure of every head does not."""
    cfg, weights, x = two_heads
    model = load_model(cfg, "pjreddie", weights)
    net = Network(cfg, weights)
    layers = sensitivity.select_layers(model, "6,13")
    every = sensitivity.sweep(net, model, [0.9], sensitivity.deviation(net, x, sensitivity.output_layers(model)),
                              layers)
    last = sensitivity.sweep(net, model, [0.9], sensitivity.deviation(net, x, [14]), layers)
    heads = {r.layer: r.metrics["rel_l2"] for r in every.rows if r.level == 0.9}
    blind = {r.layer: r.metrics["rel_l2"] for r in last.rows if r.level == 0.9}
    assert blind[6] == 0.0 and heads[6] > 1e-3
    assert heads[13] == pytest.approx(blind[13] / 2)  # the mean over two heads, one unmoved
    assert every.baseline == {"rel_l2": 0.0}


def test_cli_sensitivity_and_plan_on_a_detector(tmp_path, two_heads):
    cfg, weights, x = two_heads
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(x):
        Image.fromarray((image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    csv_path, spec = tmp_path / "sens.csv", tmp_path / "plan.yaml"
    runner = CliRunner()
    swept = runner.invoke(cli, ["sensitivity", "-w", str(weights), "--cfg", str(cfg), "--images", str(folder),
                                "--resize", "letterbox", "--levels", "0.5,0.9", "--csv", str(csv_path)])
    assert swept.exit_code == 0, swept.output
    rows = {(r.layer, r.level): r.metrics["rel_l2"] for r in sensitivity.read_csv(csv_path).rows}
    assert sorted({layer for layer, _ in rows}) == [0, 2, 4, 5, 6, 9, 12, 13]
    assert rows[(6, 0.9)] > rows[(6, 0.5)] > 0 and rows[(6, 0.0)] == 0
    planned = runner.invoke(cli, ["plan", str(csv_path), "--target-sparsity", "0.3", "-o", str(spec)])
    assert planned.exit_code == 0, planned.output
    assert "least predicted rel_l2 loss" in planned.output and spec.is_file()


def _full_disk(real):
    """``real`` that writes the first half, then fails as a full disk does."""
    def write(self, data, *args, **kwargs):
        real(self, data[:len(data) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")
    return write


def test_csv_and_plot_replace_the_old_file_only_when_complete(tmp_path, monkeypatch, two_heads):
    """A write that fails half-way (a full disk) leaves the old file whole
    and no temporary file behind."""
    import matplotlib.figure

    from darknet_sparse.analysis import plots
    from darknet_sparse.errors import OutputError
    cfg, weights, x = two_heads
    model = load_model(cfg, "pjreddie", weights)
    net = Network(cfg, weights)
    result = sensitivity.sweep(net, model, [0.5], sensitivity.deviation(net, x, [7, 14]),
                               sensitivity.select_layers(model, "6"))
    csv_path, plot = tmp_path / "sens.csv", tmp_path / "sens.png"
    csv_path.write_text("old")
    plot.write_bytes(b"old")
    monkeypatch.setattr(Path, "write_text", _full_disk(Path.write_text))
    with pytest.raises(OutputError, match="sens.csv: cannot write: No space left"):
        sensitivity.write_csv(result, csv_path)
    savefig = matplotlib.figure.Figure.savefig

    def half_a_figure(self, target, **options):
        savefig(self, target, **options)
        Path(target).write_bytes(Path(target).read_bytes()[:100])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_a_figure)
    with pytest.raises(OutputError, match="sens.png: cannot write: No space left"):
        plots.sensitivity(result, plot)
    assert csv_path.read_text() == "old" and plot.read_bytes() == b"old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sens.csv", "sens.png"]


def test_yolov3_tiny_layers_that_feed_only_the_first_head_are_measured(tmp_path):
    """Output deviation and agreement mAP@0.5 with the dense model both see
    layer 15, which only the first [yolo] head (16) reads."""
    assert YOLO_WEIGHTS.is_file(), f"{YOLO_WEIGHTS} is missing: run `make models`"
    model = load_model(YOLO_CFG, "pjreddie", YOLO_WEIGHTS)
    assert sensitivity.output_layers(model) == [16, 23]
    net = Network(YOLO_CFG, YOLO_WEIGHTS)
    x = images.load_batch(PHOTOS[:2], net.input_shape, images.default_resize(model))
    layer = sensitivity.select_layers(model, "15")
    every = sensitivity.sweep(net, model, [0.9], sensitivity.deviation(net, x, [16, 23]), layer)
    last = sensitivity.sweep(net, model, [0.9], sensitivity.deviation(net, x, [23]), layer)
    assert every.rows[1].metrics["rel_l2"] > 0.05 and last.rows[1].metrics["rel_l2"] == 0.0
    photos, csv_path = tmp_path / "photos.list", tmp_path / "map.csv"
    photos.write_text("".join(f"{path}\n" for path in PHOTOS))
    swept = CliRunner().invoke(cli, ["sensitivity", "-w", str(YOLO_WEIGHTS), "--cfg", str(YOLO_CFG), "--images",
                                     str(photos), "--metric", "map50", "--reference", str(YOLO_WEIGHTS),
                                     "--layers", "15", "--levels", "0.9", "--csv", str(csv_path)])
    assert swept.exit_code == 0, swept.output
    assert "map50 with one layer pruned to each level (dense: 1.0000)" in swept.output
    rows = {row.level: row.metrics for row in sensitivity.read_csv(csv_path).rows}
    assert rows[0.0] == {"map50": 1.0, "map": 1.0}  # the dense model agrees with itself
    assert rows[0.9]["map50"] < 0.99


def test_agreement_options_go_together(tmp_path, two_heads):
    cfg, weights, _ = two_heads
    runner = CliRunner()
    base = ["sensitivity", "-w", str(weights), "--cfg", str(cfg)]
    alone = runner.invoke(cli, base + ["--images", str(tmp_path), "--metric", "map50"])
    assert alone.exit_code == 2 and "--metric map50 needs --reference" in alone.output
    stray = runner.invoke(cli, base + ["--images", str(tmp_path), "--reference", str(weights)])
    assert stray.exit_code == 2 and "--metric map50 needs --reference" in stray.output
    data = runner.invoke(cli, base + ["--data", str(tmp_path / "x.data"), "--metric", "deviation"])
    assert data.exit_code == 2 and "--metric goes with --images" in data.output
