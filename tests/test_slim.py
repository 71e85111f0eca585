"""Structured pruning (``slim``) against stock Darknet and OpenCV.

A channel whose batch-norm scale and bias are both 0 outputs exactly 0, so
removing it must leave every other value of the network unchanged: the
slimmed model's layer outputs equal the full model's (kept channels only),
run by Debian's stock Darknet for pjreddie cfgs and by OpenCV's importer for
AlexeyAB's.  With the bias left non-zero the removed channel is a constant
that bias compensation folds into its readers: exact behind 1x1 kernels and
connected layers, and away from the border behind 3x3 kernels.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.stock import STOCK_LIB, UPSTREAM_CFG_DIR, printed_bflops, printed_layers, printed_output

import darknet_sparse as ds
from darknet_sparse.cli import cli
from darknet_sparse.darknet.driver import SOURCE, Driver
from darknet_sparse.format.weightsfile import WeightsFile, new_file
from darknet_sparse.structured import slim
from darknet_sparse.structured.channels import channel_graph

HERE = Path(__file__).parent
CFGS = HERE / "cfgs"
ALEXEYAB = HERE / "data" / "alexeyab-cfg"
REAL_WEIGHTS = HERE.parent / "models" / "yolov3-tiny.weights"

#: Upstream cfgs run at a small input (multiple of 32) to keep the test fast.
UPSTREAM = {"yolov3-tiny": 96, "yolov3": 64, "yolov2": 64, "darknet53": 64, "resnet50": 64, "densenet201": 64}


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Driver:
    """``_forward_driver.c`` built against Debian's stock ``libdarknet.so``."""
    binary = tmp_path_factory.mktemp("slim_driver") / "forward_driver"
    command = ["gcc", "-O2", "-Wall", "-o", str(binary), str(SOURCE), f"-I{STOCK_LIB}/include",
               f"-L{STOCK_LIB}", "-ldarknet", f"-Wl,-rpath,{STOCK_LIB}", "-lm"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return Driver("debian", binary)


def sized_cfg(source: Path, folder: Path, size: int) -> Path:
    """A copy of ``source`` with the [net] input ``size`` x ``size`` and batch 1."""
    text = source.read_text()
    net_end = re.search(r"^\[(?!net)", text, re.M).start()
    net = text[:net_end]
    for key, value in (("width", size), ("height", size), ("batch", 1), ("subdivisions", 1)):
        net = re.sub(rf"^{key}\s*=.*$", f"{key}={value}", net, count=1, flags=re.M)
    target = folder / source.name
    target.write_text(net + text[net_end:])
    return target


def random_arrays(model: ds.Model, rng: np.random.Generator) -> dict[tuple[int, str], np.ndarray]:
    """He-initialised weights and batch-norm statistics near the identity,
    so activations stay near 1 through a hundred layers."""
    arrays = {}
    for layer in model.layers:
        for p in layer.params:
            if p.role == "weights":
                fan_in = p.shape[1] * (p.shape[2] * p.shape[3] if len(p.shape) == 4 else 1)
                values = rng.standard_normal(p.count, dtype=np.float32) * np.float32(np.sqrt(2 / fan_in))
            elif p.role in ("scales", "rolling_variance"):
                values = rng.uniform(0.5, 1.5, p.count).astype(np.float32)
            else:
                values = rng.normal(0, 0.1, p.count).astype(np.float32)
            arrays[layer.index, p.name] = values
    return arrays


def random_weights(model: ds.Model, path: Path, rng: np.random.Generator) -> None:
    new_file(model, path, random_arrays(model, rng))


def prunable_classes(model: ds.Model) -> list[np.ndarray]:
    """Nodes of each class of channels that may go (cfg only)."""
    graph = channel_graph(model)
    roots = graph.classes()
    blocked = set(roots[~graph.rankable].tolist()) | {int(roots[n]) for n in graph.frozen}
    classes: dict[int, list[int]] = {}
    for node, root in enumerate(roots.tolist()):
        if root not in blocked:
            classes.setdefault(root, []).append(node)
    return [np.array(nodes) for nodes in classes.values()]


def zero_channels(model: ds.Model, arrays: dict, nodes: np.ndarray, zero_bias: bool = True) -> dict:
    """``arrays`` with gamma (and beta) of the given nodes set to 0."""
    graph = channel_graph(model)
    for node in nodes.tolist():
        layer, channel = int(graph.node_layer[node]), int(graph.node_channel[node])
        arrays[layer, "scales"][channel] = 0
        if zero_bias:
            arrays[layer, "biases"][channel] = 0
    return arrays


def layer_outputs(values: np.ndarray, model: ds.Model) -> list[np.ndarray]:
    """The driver's concatenated outputs cut per layer, as (c, h, w) where known."""
    pieces, offset = [], 0
    for layer in model.layers:
        piece = values[offset:offset + layer.outputs]
        c, h, w = layer.output
        pieces.append(piece.reshape(c, h, w) if c * h * w == layer.outputs else piece)
        offset += layer.outputs
    assert offset == values.size
    return pieces


def assert_same_outputs(full: list[np.ndarray], slimmed: list[np.ndarray], choice: slim.Choice,
                        interior: set[int] = frozenset(), rtol: float = 1e-4) -> int:
    """Every layer's slimmed output equals the full one's kept channels
    (only the interior pixels for layers in ``interior``); returns how many
    layers lost channels."""
    shrunk = 0
    for index, (a, b) in enumerate(zip(full, slimmed)):
        if a.ndim == 3 and len(choice.graph.layers[index].output) == a.shape[0]:
            kept = choice.kept_channels(index)
            shrunk += len(kept) < a.shape[0]
            a = a[kept]
        if index in interior:
            a, b = a[:, 1:-1, 1:-1], b[:, 1:-1, 1:-1]
        assert a.shape == b.shape, f"layer {index}"
        scale = max(float(np.abs(a).max()), 1e-6)
        assert np.abs(a - b).max() <= rtol * scale, f"layer {index}: {np.abs(a - b).max()} vs scale {scale}"
    return shrunk


def run_stock(driver: Driver, cfg: Path, weights: Path, model: ds.Model) -> list[np.ndarray]:
    """Every layer's output by stock Darknet, after checking that the layer
    table it prints (shapes, BFLOPs of each convolution) is ours."""
    out = weights.with_suffix(".bin")
    done = driver.run("predict", cfg, weights, out)
    printed = printed_layers(done.stderr)
    for layer in model.layers:
        if layer.type == "convolutional":
            assert printed_bflops(printed[layer.index]) == [f"{layer.flops / 1e9:.3f}"], layer.index
        assert printed_output(printed[layer.index]) in (None, layer.output), layer.index
    return layer_outputs(np.fromfile(out, np.float32), model)


def zeroed_model(cfg: Path, fork: str, tmp_path: Path, seed: int, fraction: float = 0.4):
    """Random weights for ``cfg`` with a random ``fraction`` of the prunable
    classes (and a few lone channels) given gamma = beta = 0; returns the
    model, the file and the nodes of every class now wholly dead."""
    model = ds.load_model(cfg, fork)
    rng = np.random.default_rng(seed)
    arrays = random_arrays(model, rng)
    classes = prunable_classes(model)
    chosen = [c for c in classes if rng.random() < fraction]
    graph = channel_graph(model)
    lone = rng.choice(np.flatnonzero(graph.rankable), 5, replace=False)  # may be tied to live channels
    nodes = np.unique(np.concatenate(chosen + [lone]))
    full = tmp_path / "full.weights"
    new_file(model, full, zero_channels(model, arrays, nodes))
    zeroed = np.zeros(len(graph.node_layer), bool)
    zeroed[nodes] = True
    dead = [c for c in classes if zeroed[c].all()]  # the chosen ones and lone channels not tied to others
    return model, WeightsFile(full, model), np.unique(np.concatenate(dead))


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_removing_dead_channels_changes_nothing_in_stock_darknet(name, driver, tmp_path):
    cfg = sized_cfg(UPSTREAM_CFG_DIR / f"{name}.cfg", tmp_path, UPSTREAM[name])
    model, wf, chosen = zeroed_model(cfg, "pjreddie", tmp_path, seed=len(name))
    out = tmp_path / "slim.weights"
    choice = slim.choose(wf, gamma_threshold=1e-6)
    result = slim.apply(wf, choice, out)
    removed = np.flatnonzero(~choice.kept)
    assert removed.tolist() == chosen.tolist()  # no constraint binds: exactly the dead classes
    assert result.removed == len(chosen) > 0
    full = run_stock(driver, cfg, wf.path, model)
    slimmed = run_stock(driver, out.with_suffix(".cfg"), out, ds.load_model(out.with_suffix(".cfg"), "pjreddie"))
    assert assert_same_outputs(full, slimmed, choice) >= 3
    assert result.totals["bflops_after"] < result.totals["bflops_before"]


def test_yolov2_reorg_is_frozen(tmp_path):
    cfg = sized_cfg(UPSTREAM_CFG_DIR / "yolov2.cfg", tmp_path, 64)
    model = ds.load_model(cfg, "pjreddie")
    reorg = next(layer.index for layer in model.layers if layer.type == "reorg")
    random_weights(model, tmp_path / "r.weights", np.random.default_rng(1))
    wf = WeightsFile(tmp_path / "r.weights", model)
    result = slim.slim(wf, None, gamma_threshold=10.0)  # every |gamma| is below 10
    rows = {r.index: r for r in result.rows}
    assert rows[reorg - 1].channels_after == rows[reorg - 1].channels_before == 64
    assert "slim cannot follow" in rows[reorg].note
    assert any(f"layer {reorg} [reorg]" in note and f"layer {reorg - 1}" in note for note in result.notes)
    assert rows[reorg - 2].channels_after == 1  # the rest go down to --min-channels


def opencv_outputs(cfg: Path, weights: Path, model: ds.Model, size: int):
    """Each Darknet layer's output as OpenCV computes it (None for the yolo
    layers, whose decoded boxes OpenCV thresholds), with layer fusion off
    (a fused layer's own name returns a stale buffer), and then the outputs
    of the convolutions feeding the heads as the default (fused) net gives
    them."""
    import cv2
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.enableFusion(False)
    last: dict[int, str] = {}
    current = -1
    for name in net.getLayerNames():
        kind, _, number = name.rpartition("_")
        current = int(number) if kind in ("conv", "bn") or kind not in _OPENCV_ACTIVATIONS else current
        last[current] = name
    rng = np.random.default_rng(0)
    net_input = rng.random((1, 3, size, size), dtype=np.float32)
    net.setInput(net_input)
    wanted = [i for i in range(len(model.layers)) if i in last and model.layers[i].type != "yolo"]
    values = net.forward([last[i] for i in wanted])
    outputs: list[np.ndarray | None] = [None] * len(model.layers)
    for i, value in zip(wanted, values):
        outputs[i] = value[0]
    fused = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    fused.setInput(net_input)
    heads = [layer.index - 1 for layer in model.layers if layer.type == "yolo"]
    return outputs, [value[0] for value in fused.forward([f"conv_{i}" for i in heads])]


_OPENCV_ACTIVATIONS = ("leaky", "mish", "relu", "logistic", "swish", "tanh", "relu6")


def alexeyab_cfg(name: str) -> Path:
    path = ALEXEYAB / f"{name}.cfg"
    assert path.is_file(), f"{path} is missing (AlexeyAB's cfg, copied unchanged into tests/data)"
    return path


@pytest.mark.parametrize("name,size", [("yolov4-tiny", 128), ("yolov4", 96)])
def test_removing_dead_channels_changes_nothing_in_opencv(name, size, tmp_path):
    cfg = sized_cfg(alexeyab_cfg(name), tmp_path, size)
    model, wf, chosen = zeroed_model(cfg, "alexeyab", tmp_path, seed=size)
    out = tmp_path / "slim.weights"
    choice = slim.choose(wf, gamma_threshold=1e-6)
    slim.apply(wf, choice, out)
    removed = set(np.flatnonzero(~choice.kept).tolist())
    assert removed <= set(chosen.tolist()) and len(removed) > len(chosen) // 2
    slim_model = ds.load_model(out.with_suffix(".cfg"), "alexeyab")
    full, full_heads = opencv_outputs(cfg, wf.path, model, size)
    slimmed, slimmed_heads = opencv_outputs(out.with_suffix(".cfg"), out, slim_model, size)
    for a, b in zip(full_heads, slimmed_heads, strict=True):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    compared = [i for i, (a, b) in enumerate(zip(full, slimmed)) if a is not None and b is not None]
    assert len(compared) > len(model.layers) * 0.8
    shrunk = 0
    for i in compared:
        a, b = full[i], slimmed[i]
        if len(choice.graph.layers[i].output) == a.shape[0]:
            shrunk += len(choice.kept_channels(i)) < a.shape[0]
            a = a[choice.kept_channels(i)]
        assert a.shape == b.shape, f"layer {i}"
        assert np.abs(a - b).max() <= 1e-4 * max(float(np.abs(a).max()), 1e-6), f"layer {i}"
    assert shrunk > 10


def test_route_groups_keep_equal_halves(tmp_path):
    """yolov4-tiny slices conv outputs in halves: each half keeps as many."""
    cfg = sized_cfg(alexeyab_cfg("yolov4-tiny"), tmp_path, 128)
    model = ds.load_model(cfg, "alexeyab")
    random_weights(model, tmp_path / "r.weights", np.random.default_rng(3))
    wf = WeightsFile(tmp_path / "r.weights", model)
    choice = slim.choose(wf, percent=0.5)
    sliced = [layer.index + layer.section.ints("layers")[0] for layer in model.layers
              if layer.type == "route" and layer.section.get_int("groups", 1) == 2]
    assert sliced
    for index in sliced:
        kept = choice.kept[choice.graph.layers[index].output].reshape(2, -1).sum(1)
        assert kept[0] == kept[1] < model.layers[index].output[0] // 2


def test_bias_compensation_is_exact_behind_1x1_and_connected(driver, tmp_path):
    """gamma = 0, beta != 0: the removed channels are constants folded into
    1x1 readers' rolling means, a bias (no batch norm), a connected layer's
    bias, through maxpool, upsample, route and shortcut."""
    cfg = CFGS / "slim_exact.cfg"
    model = ds.load_model(cfg, "pjreddie")
    rng = np.random.default_rng(5)
    arrays = random_arrays(model, rng)
    classes = prunable_classes(model)
    chosen = np.concatenate([c for c in classes if rng.random() < 0.4])
    full = tmp_path / "full.weights"
    new_file(model, full, zero_channels(model, arrays, chosen, zero_bias=False))
    wf = WeightsFile(full, model)
    out = tmp_path / "slim.weights"
    choice = slim.choose(wf, gamma_threshold=1e-6)
    slim.apply(wf, choice, out)
    assert sorted(np.flatnonzero(~choice.kept).tolist()) == sorted(chosen.tolist())
    slimmed = run_stock(driver, out.with_suffix(".cfg"), out, ds.load_model(out.with_suffix(".cfg"), "pjreddie"))
    assert assert_same_outputs(run_stock(driver, cfg, full, model), slimmed, choice) >= 5

    # Without compensation the outputs differ: the test sees the constants.
    plain = tmp_path / "plain.weights"
    original = slim._compensate
    try:
        slim._compensate = lambda current, delta: None
        slim.slim(wf, plain, gamma_threshold=1e-6)
    finally:
        slim._compensate = original
    broken = run_stock(driver, plain.with_suffix(".cfg"), plain, ds.load_model(plain.with_suffix(".cfg"), "pjreddie"))
    with pytest.raises(AssertionError):
        assert_same_outputs(run_stock(driver, cfg, full, model), broken, choice)


def test_bias_compensation_behind_3x3_is_exact_away_from_the_border(driver, tmp_path):
    cfg = CFGS / "slim_border.cfg"
    model = ds.load_model(cfg, "pjreddie")
    arrays = random_arrays(model, np.random.default_rng(6))
    chosen = channel_graph(model).producer(0)[::3]  # only layer 0 loses channels; layer 1 (3x3) reads them
    full = tmp_path / "full.weights"
    new_file(model, full, zero_channels(model, arrays, chosen, zero_bias=False))
    wf = WeightsFile(full, model)
    out = tmp_path / "slim.weights"
    choice = slim.choose(wf, gamma_threshold=1e-6)
    slim.apply(wf, choice, out)
    assert np.flatnonzero(~choice.kept).tolist() == chosen.tolist()
    a = run_stock(driver, cfg, full, model)
    b = run_stock(driver, out.with_suffix(".cfg"), out, ds.load_model(out.with_suffix(".cfg"), "pjreddie"))
    assert_same_outputs(a, b, choice, interior={1, 2})
    border = np.abs(a[1] - b[1]).max(0)  # layer 1 keeps all its channels
    assert border[1:-1, 1:-1].max() <= 1e-4 * np.abs(a[1]).max() < border[0].max()


def test_gamma_threshold_removes_exactly_the_channels_below_it(tmp_path):
    cfg = CFGS / "slim_exact.cfg"
    model = ds.load_model(cfg, "pjreddie")
    random_weights(model, tmp_path / "r.weights", np.random.default_rng(7))
    wf = WeightsFile(tmp_path / "r.weights", model)
    t = 1.0
    choice = slim.choose(wf, gamma_threshold=t)
    for index in (0, 1, 3, 10):  # nothing ties these
        gamma = np.abs(wf.arrays(index)["scales"])
        assert choice.kept_channels(index).tolist() == np.flatnonzero(gamma >= t).tolist()
    # The shortcut ties layers 6 and 7: a channel goes only if it may go in both.
    both = (np.abs(wf.arrays(6)["scales"]) < t) & (np.abs(wf.arrays(7)["scales"]) < t)
    assert 0 < both.sum() < (np.abs(wf.arrays(6)["scales"]) < t).sum()
    assert choice.kept_channels(6).tolist() == choice.kept_channels(7).tolist() == np.flatnonzero(~both).tolist()
    assert choice.kept_channels(9).tolist() == list(range(8))  # no batch norm: not ranked


def test_rank_layer_scores_gamma_relative_to_its_layer(tmp_path):
    cfg = CFGS / "slim_exact.cfg"
    model = ds.load_model(cfg, "pjreddie")
    arrays = random_arrays(model, np.random.default_rng(7))
    arrays[1, "scales"] = arrays[1, "scales"] * 1e-3  # a layer of small scales: emptied first by |gamma|
    new_file(model, tmp_path / "r.weights", arrays)
    wf = WeightsFile(tmp_path / "r.weights", model)
    t = 0.8
    assert slim.choose(wf, gamma_threshold=t).kept_channels(1).size == 1  # min_channels
    choice = slim.choose(wf, gamma_threshold=t, rank="layer")
    for index in (0, 1, 3, 10):  # nothing ties these
        gamma = np.abs(wf.arrays(index)["scales"])
        assert choice.kept_channels(index).tolist() == np.flatnonzero(gamma / gamma.mean() >= t).tolist()
    with pytest.raises(ds.PolicyError, match="unknown rank"):
        slim.choose(wf, gamma_threshold=t, rank="size")


def test_heads_keep_their_filters_and_min_channels_holds(tmp_path):
    cfg = sized_cfg(UPSTREAM_CFG_DIR / "yolov3-tiny.cfg", tmp_path, 96)
    model = ds.load_model(cfg, "pjreddie")
    random_weights(model, tmp_path / "r.weights", np.random.default_rng(8))
    wf = WeightsFile(tmp_path / "r.weights", model)
    result = slim.slim(wf, None, gamma_threshold=10.0, min_channels=3)
    for r in result.rows:
        if r.type == "convolutional":
            assert r.channels_after == (255 if r.index in (15, 22) else 3), r
    assert "feeds the head layer 16 [yolo]" in " ".join(result.notes)


@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_target_flops_on_the_real_model_loads_in_stock_darknet(fraction, stock_tool, tmp_path):
    """The real yolov3-tiny: dense FLOPs fall by at least the fraction (and
    not much more); stock Darknet loads the pair and prints our shapes and
    BFLOPs for OUT.cfg."""
    cfg = UPSTREAM_CFG_DIR / "yolov3-tiny.cfg"
    out = tmp_path / "slim.weights"
    result = slim.slim(ds.load(cfg, REAL_WEIGHTS), out, target_flops=fraction)
    assert fraction <= result.totals["flops_removed"] < fraction + 0.01
    assert out.stat().st_size < REAL_WEIGHTS.stat().st_size
    info = json.loads(CliRunner().invoke(cli, ["info", str(out), "--json"]).output)  # OUT.cfg beside it
    assert info["totals"]["bflops"] == pytest.approx(result.totals["bflops_after"])
    resaved = tmp_path / "resaved.weights"
    done = subprocess.run([str(stock_tool.binary), "resave", str(out.with_suffix(".cfg")), str(out), str(resaved)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert resaved.read_bytes() == out.read_bytes()  # stock read exactly our arrays
    printed = printed_layers(done.stderr)
    for row in info["rows"]:
        lines = printed[row["index"]]
        if row["type"] == "convolutional":
            assert printed_bflops(lines) == [f"{row['bflops']:.3f}"], row
        shape = printed_output(lines)
        if shape:
            assert "x".join(map(str, shape[::-1])) == row["output"], row
    text = out.with_suffix(".cfg").read_text().split("\n")
    original = cfg.read_text().split("\n")
    assert len(text) == len(original)
    assert all(a == b or (a.startswith("filters=") and b.startswith("filters=")) for a, b in zip(text, original))


def test_rewrite_keeps_comments_and_spacing():
    text = "[net]\nwidth=16\n\n[convolutional]\nfilters = 16   # sixteen\r\nsize=1\n[conv]\nsize=1\n"
    new = slim.rewrite_cfg(text, {0: {"filters": 5}, 1: {"filters": 2}})
    assert new == "[net]\nwidth=16\n\n[convolutional]\nfilters = 5   # sixteen\r\nsize=1\n[conv]\nfilters=2\nsize=1\n"


def test_cli_writes_weights_and_cfg_and_reports(tmp_path):
    cfg = CFGS / "slim_exact.cfg"
    model = ds.load_model(cfg, "pjreddie")
    weights = tmp_path / "m.weights"
    random_weights(model, weights, np.random.default_rng(9))
    out = tmp_path / "o.weights"
    result = CliRunner().invoke(cli, ["slim", str(weights), "--cfg", str(cfg), "--percent", "0.3",
                                      "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["output"] == str(out) and report["cfg"] == str(tmp_path / "o.cfg")
    assert report["totals"]["channels_removed"] > 0 and out.is_file() and (tmp_path / "o.cfg").is_file()
    assert "# a comment the rewrite keeps" in (tmp_path / "o.cfg").read_text()
    text = CliRunner().invoke(cli, ["slim", str(weights), "--cfg", str(cfg), "--gamma-threshold", "0.8",
                                    "-o", str(out)])
    assert text.exit_code == 0 and "wrote" in text.output and "total" in text.output


@pytest.mark.parametrize("args,message", [
    (["--percent", "0.3", "--gamma-threshold", "1"], "exactly one of"),
    ([], "exactly one of"),
    (["--percent", "1.5"], "--percent 1.5 outside [0, 1)"),
    (["--target-flops", "0.999"], "cuts the FLOPs by"),
    (["--percent", "0.3", "--exclude", "77"], "'77' matches no layer"),
    (["--percent", "0.3", "--min-channels", "0"], "--min-channels"),
])
def test_cli_bad_input_is_one_error_line(args, message, tmp_path):
    cfg = CFGS / "slim_exact.cfg"
    weights = tmp_path / "m.weights"
    random_weights(ds.load_model(cfg, "pjreddie"), weights, np.random.default_rng(10))
    out = tmp_path / "o.weights"
    result = CliRunner().invoke(cli, ["slim", str(weights), "--cfg", str(cfg), "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], result.output
    assert not out.exists() and not out.with_suffix(".cfg").exists()


def test_cli_refuses_to_overwrite_the_inputs(tmp_path):
    """OUT.weights may not be the input, nor OUT.cfg the input cfg."""
    (tmp_path / "w").mkdir()
    shutil.copy(CFGS / "slim_exact.cfg", tmp_path / "m.cfg")
    weights = tmp_path / "w" / "m.weights"
    random_weights(ds.load_model(tmp_path / "m.cfg", "pjreddie"), weights, np.random.default_rng(11))
    before = (tmp_path / "m.cfg").read_bytes(), weights.read_bytes()
    for out, message in ((weights, f"would overwrite its input {weights}"),
                         (tmp_path / "m.weights", f"would overwrite its input {tmp_path / 'm.cfg'}")):
        result = CliRunner().invoke(cli, ["slim", str(weights), "--cfg", str(tmp_path / "m.cfg"), "--percent", "0.3",
                                          "-o", str(out)])
        assert result.exit_code == 2 and result.output.startswith("Error:") and message in result.output
        assert result.output.count("\n") == 1
    assert ((tmp_path / "m.cfg").read_bytes(), weights.read_bytes()) == before
    assert not (tmp_path / "m.weights").exists()
    missing = CliRunner().invoke(cli, ["slim", str(tmp_path / "x.weights"), "--cfg", str(tmp_path / "m.cfg"),
                                       "--percent", "0.3", "-o", str(tmp_path / "m2.weights")])
    assert missing.exit_code == 2 and "no such weights file" in missing.output


def test_cli_dry_run_writes_nothing(tmp_path):
    weights = tmp_path / "m.weights"
    random_weights(ds.load_model(CFGS / "slim_exact.cfg", "pjreddie"), weights, np.random.default_rng(12))
    result = CliRunner().invoke(cli, ["slim", str(weights), "--cfg", str(CFGS / "slim_exact.cfg"), "--percent", "0.3",
                                      "--dry-run"])
    assert result.exit_code == 0 and "dry run, nothing written" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.weights"]
    no_output = CliRunner().invoke(cli, ["slim", str(weights), "--cfg", str(CFGS / "slim_exact.cfg"),
                                         "--percent", "0.3"])
    assert no_output.exit_code == 2 and no_output.output.startswith("Error: slim needs -o")


def test_depthwise_and_grouped_convolutions_stay_consistent(driver, tmp_path):
    cfg = CFGS / "slim_groups.cfg"
    model, wf, dead = zeroed_model(cfg, "pjreddie", tmp_path, seed=13, fraction=0.5)
    choice = slim.choose(wf, gamma_threshold=1e-6)
    out = tmp_path / "slim.weights"
    slim.apply(wf, choice, out)
    kept = [choice.kept_channels(i) for i in range(4)]
    assert kept[0].tolist() == kept[1].tolist() and len(kept[1]) < 16  # one mask through the depthwise layer
    assert len(kept[2]) < 16 and (kept[2] < 8).sum() == (kept[2] >= 8).sum()  # equal groups
    assert set(np.flatnonzero(~choice.kept).tolist()) <= set(dead.tolist())
    new = ds.read_cfg(out.with_suffix(".cfg"))
    assert new[2].get_int("groups") == new[2].get_int("filters") == len(kept[1])
    assert new[3].get_int("groups") == 2
    slimmed = run_stock(driver, out.with_suffix(".cfg"), out, ds.load_model(out.with_suffix(".cfg"), "pjreddie"))
    assert assert_same_outputs(run_stock(driver, cfg, wf.path, model), slimmed, choice) >= 3


def test_percent_is_one_global_threshold(tmp_path):
    """The threshold is the |gamma| below which the fraction lies among all
    prunable channels; every class scoring below it goes."""
    cfg = CFGS / "slim_exact.cfg"
    model = ds.load_model(cfg, "pjreddie")
    random_weights(model, tmp_path / "r.weights", np.random.default_rng(14))
    wf = WeightsFile(tmp_path / "r.weights", model)
    graph = channel_graph(model)
    classes = prunable_classes(model)
    gamma = {int(n): abs(float(wf.arrays(int(graph.node_layer[n]))["scales"][graph.node_channel[n]]))
             for c in classes for n in c}
    ranked = sorted(gamma.values())
    choice = slim.choose(wf, percent=0.3)
    assert choice.threshold == ranked[round(0.3 * len(ranked))] and choice.prunable == len(ranked)
    gone = sorted(int(n) for c in classes if max(gamma[int(n)] for n in c) < choice.threshold for n in c)
    assert np.flatnonzero(~choice.kept).tolist() == gone
