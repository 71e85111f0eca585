"""The second-order solver (``pruning/obs``) and ``oneshot`` (its driver).

The solver on matrices whose answer is known (the closed-form OBS step);
the driver on the small two-head detector and the small classifier of
``tiny_models`` (grouped convolution, connected layers), with calibration
images that are also the images every layer is measured on.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from darknet_sparse.cli import cli
from darknet_sparse.darknet import images
from darknet_sparse.darknet.network import Network
from darknet_sparse.errors import PolicyError
from darknet_sparse.format.files import load
from darknet_sparse.format.weightsfile import WeightsFile
from darknet_sparse.pruning import obs, policies
from darknet_sparse.structured import calibration
from darknet_sparse.workflow import oneshot
from tiny_models import SMALL_CFG, write_model

DETECTOR = Path(__file__).parent / "cfgs" / "tiny_detector.cfg"


def _gram(rows: int, columns: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlated inputs X and H = X^T X."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, columns)) @ rng.normal(size=(columns, columns)) * 0.3 + rng.normal(size=(rows, columns))
    return X, X.T @ X


# --------------------------------------------------------------------------
# The solver.


def test_one_removal_is_the_closed_form_obs_step():
    """Each row loses its one least salient weight, the first column: the
    others move by -w_q / [H^-1]_qq * H^-1[:, q], exactly."""
    _, H = _gram(400, 20, 1)
    rng = np.random.default_rng(2)
    W = rng.normal(size=(4, 20))
    W[:, 0] = 1e-3  # the least salient in every row
    inverse = np.linalg.inv(H)
    assert (np.argmin(W ** 2 / np.diag(inverse), axis=1) == 0).all()
    solution = obs.prune_rows(W, H, 4, damp=0.0, per_row=True, block=8)
    expected = W - np.outer(W[:, 0] / inverse[0, 0], inverse[:, 0])
    assert solution.mask[:, 0].all() and solution.mask.sum() == 4
    np.testing.assert_allclose(solution.weights, expected, atol=1e-5, rtol=0)
    assert (solution.weights[:, 0] == 0).all()
    assert solution.error == pytest.approx(np.sum(W[:, 0] ** 2 / inverse[0, 0]), rel=1e-6)


def test_one_removal_anywhere_when_visited_first():
    """The weight OBS would remove from a row (argmin w^2 / [H^-1]_qq) is
    the one removed, and with its column visited first the survivors move
    by the closed form."""
    _, H = _gram(300, 30, 3)
    w = np.random.default_rng(4).normal(size=(1, 30))
    inverse = np.linalg.inv(H)
    q = int(np.argmin(w[0] ** 2 / np.diag(inverse)))
    assert q != 0
    order = np.r_[q, np.delete(np.arange(30), q)]
    solution = obs.prune_rows(w, H, 1, damp=0.0, order=order)
    assert np.flatnonzero(solution.mask[0]).tolist() == [q]
    np.testing.assert_allclose(solution.weights[0], w[0] - w[0, q] / inverse[q, q] * inverse[:, q], atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("sparsity", [0.3, 0.6, 0.9])
def test_exact_counts_and_less_error_than_magnitude(sparsity, per_row):
    _, H = _gram(2000, 150, 5)
    W = np.random.default_rng(6).normal(size=(24, 150))
    count = round(sparsity * W.size)
    solution = obs.prune_rows(W, H, count, per_row=per_row, block=32)
    assert solution.mask.sum() == count == np.count_nonzero(solution.weights == 0)
    if per_row:
        assert set(solution.mask.sum(1).tolist()) <= {count // 24, count // 24 + 1}
    magnitude = np.where(obs.magnitude_mask(W, count), 0, W)
    assert solution.error < obs.error(magnitude, W, H)
    assert solution.error == pytest.approx(obs.error(solution.weights, W, H))


def test_zero_removed_is_the_identity_and_zeros_go_first():
    _, H = _gram(200, 16, 7)
    W = np.random.default_rng(8).normal(size=(3, 16))
    same = obs.prune_rows(W, H, 0)
    assert np.array_equal(same.weights, W) and not same.mask.any() and same.error == 0
    W[:, 5] = 0
    solution = obs.prune_rows(W, H, 3)
    assert solution.mask[:, 5].all()


def test_groups_are_solved_apart():
    _, H0 = _gram(300, 12, 9)
    _, H1 = _gram(300, 12, 10)
    W = np.random.default_rng(11).normal(size=(6, 12))
    both = obs.prune_groups(W, [H0, H1], 20)
    first, second = obs.prune_rows(W[:3], H0, 10), obs.prune_rows(W[3:], H1, 10)
    np.testing.assert_allclose(both.weights, np.concatenate([first.weights, second.weights]))
    assert both.mask.sum() == 20


def test_bad_solver_input():
    with pytest.raises(PolicyError, match="Gram matrix"):
        obs.prune_rows(np.ones((2, 3)), np.eye(4), 1)
    with pytest.raises(PolicyError, match="cannot remove"):
        obs.prune_rows(np.ones((2, 3)), np.eye(3), 7)


# --------------------------------------------------------------------------
# The driver.


def _write_images(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        base = rng.uniform(0, 255, (3, 1, 1)) * np.linspace(0.3, 1, size[0] * size[1]).reshape(1, *size)
        pixels = np.clip(base + rng.normal(0, 30, (3, *size)), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return images.image_paths(folder)


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    folder = tmp_path_factory.mktemp("oneshot")
    cfg, weights = write_model(folder, "det", DETECTOR.read_text(), seed=3)
    return cfg, weights, _write_images(folder / "images", 16, (48, 64), 0)


def _layer_errors(cfg: Path, dense: Path, pruned: Path, x: np.ndarray, layers: list[int]) -> np.ndarray:
    """Each layer's output after batch norm, before the activation (its
    z in units of gamma / sd), in the pruned network against the dense
    network's, relative: every output pixel, from the layer's own input
    in each network."""
    model = load(cfg, dense).model
    nets = Network(cfg, dense), Network(cfg, pruned)
    found = []
    for index in layers:
        layer = model.layers[index]
        every = np.tile(np.arange(layer.output[1] * layer.output[2]), (len(x), 1))
        z = []
        for net in nets:
            (inp,) = calibration.inputs(net, [index], x)
            params = net.params(index)
            w = params["weights"].reshape(layer.output[0], -1).astype(np.float64)
            scale = np.abs(params["scales"]) / (np.sqrt(params["rolling_variance"]) + 1e-6) \
                if "scales" in params else np.ones(len(w))
            z.append(calibration.rows(inp.reshape(-1, *layer.input), layer, every) @ (w * scale[:, None]).T)
        found.append(np.sum((z[1] - z[0]) ** 2) / np.sum(z[0] ** 2))
    return np.array(found)


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_less_error_than_magnitude_on_every_layer(detector, sparsity, tmp_path):
    """The solver's network against magnitude's (both unrecalibrated), on
    the calibration images themselves: every layer's output is closer to
    the dense one's, each from its own pruned predecessors, and the
    report says so too."""
    cfg, weights, paths = detector
    wf = load(cfg, weights)
    out = tmp_path / "obs.weights"
    result = oneshot.oneshot(wf, out, paths, policies.Magnitude(sparsity), recalibrate=False)
    solved = [r for r in result.layers if r.method == "obs"]
    assert [r.layer for r in solved] == [0, 2, 4, 6, 7, 10, 13, 14]
    for r in solved:
        assert r.error < r.magnitude_error, r
    from darknet_sparse.pruning.prune import threshold
    magnitude = tmp_path / "magnitude.weights"
    threshold(wf, magnitude, policies.Magnitude(sparsity))
    x = images.load_batch(paths, (3, 64, 64), "letterbox")
    layers = [r.layer for r in solved]
    ours, theirs = _layer_errors(cfg, weights, out, x, layers), _layer_errors(cfg, weights, magnitude, x, layers)
    assert (ours < theirs).all(), (ours, theirs)


def test_stock_darknet_loads_it_with_exact_sparsity(detector, stock_tool, tmp_path):
    """Exactly round(s * n) zeros per layer, biases and scales as they were,
    rolling statistics changed only in the layers the recalibration lists;
    stock Darknet reads back exactly these arrays."""
    cfg, weights, paths = detector
    out = tmp_path / "pruned.weights"
    result = oneshot.oneshot(load(cfg, weights), out, paths, policies.Magnitude(0.7))
    before, after = WeightsFile(weights, load(cfg, weights).model), load(cfg, out)
    recalibrated = {change.layer for change in result.recalibration.layers}
    assert recalibrated == {0, 2, 4, 6, 10, 13}
    for slot in before.slots:
        old, new = before.array(slot), after.array(after.slot(*slot.key))
        if slot.param.role == "weights":
            assert np.count_nonzero(new == 0) == round(0.7 * slot.param.count), slot.key
        elif slot.param.role in ("rolling_mean", "rolling_variance") and slot.layer.index in recalibrated:
            assert not np.array_equal(old, new), slot.key
        else:
            assert old.tobytes() == new.tobytes(), slot.key
    resaved = tmp_path / "resaved.weights"
    stock_tool.resave(cfg, out, resaved)
    assert resaved.read_bytes() == out.read_bytes()


def test_zero_sparsity_is_the_identity(detector, tmp_path):
    cfg, weights, paths = detector
    out = tmp_path / "same.weights"
    result = oneshot.oneshot(load(cfg, weights), out, paths, policies.Magnitude(0.0), recalibrate=False)
    assert all(r.error == 0 and r.zeros == r.zeros_before for r in result.layers if r.method == "obs")
    assert out.read_bytes() == weights.read_bytes()
    x = images.load_batch(paths, (3, 64, 64), "letterbox")
    assert np.array_equal(Network(cfg, out).predict(x), Network(cfg, weights).predict(x))
    recalibrated = tmp_path / "recalibrated.weights"
    oneshot.oneshot(load(cfg, weights), recalibrated, paths, policies.Magnitude(0.0))
    np.testing.assert_allclose(Network(cfg, recalibrated).predict(x), Network(cfg, weights).predict(x),
                               rtol=1e-5, atol=1e-5)


def test_levels_from_a_spec_exclude_and_the_obs_allocation(detector, tmp_path):
    cfg, weights, paths = detector
    wf = load(cfg, weights)
    spec = {"layers": {"4": 0.5, "13": "skip"}}
    result = oneshot.oneshot(wf, None, paths, policies.Magnitude(0.8), spec=spec, exclude="0")
    by_layer = {r.layer: r for r in result.layers}
    assert by_layer[0].method == by_layer[13].method == "skip" and by_layer[0].zeros == by_layer[0].zeros_before
    assert by_layer[4].zeros == round(0.5 * by_layer[4].weights)
    assert by_layer[6].zeros == round(0.8 * by_layer[6].weights)
    allocated = oneshot.oneshot(wf, None, paths, allocate="obs", sparsity=0.6)
    assert allocated.zeros == round(0.6 * allocated.count)
    assert len({round(r.sparsity, 2) for r in allocated.layers}) > 1  # layers differ


def test_grouped_convolution_and_connected_layers(tmp_path):
    cfg, weights = write_model(tmp_path, "small", SMALL_CFG.replace("batch=1", "batch=4"), seed=1)
    paths = _write_images(tmp_path / "images", 24, (12, 12), 1)
    result = oneshot.oneshot(load(cfg, weights), tmp_path / "out.weights", paths, policies.Magnitude(0.6),
                             recalibrate=False)
    solved = {r.layer: r for r in result.layers if r.method == "obs"}
    assert sorted(solved) == [0, 2, 3, 4]  # conv, grouped conv, connected, connected
    for r in solved.values():
        assert r.zeros == round(0.6 * r.weights)
        assert r.error < r.magnitude_error, r


# --------------------------------------------------------------------------
# The command.


def test_cli_writes_the_pruned_model(detector, tmp_path):
    cfg, weights, paths = detector
    out = tmp_path / "cli.weights"
    done = CliRunner().invoke(cli, ["oneshot", str(weights), "--cfg", str(cfg), "--images", str(paths[0].parent),
                                    "-s", "0.6", "-o", str(out), "--max-images", "8", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["images"] == 8 and report["mode"] == "magnitude"
    assert report["sparsity"] == pytest.approx(0.6, abs=1e-3)
    pruned = load(cfg, out)
    zeros = sum(np.count_nonzero(pruned.array(s) == 0) for s in pruned.slots if s.param.role == "weights")
    assert zeros == sum(layer["zeros"] for layer in report["layers"])


@pytest.mark.parametrize("args, message", [
    (["-s", "1.5"], "sparsity 1.5 outside [0, 1)"),
    (["-s", "0.5", "--images", "{missing}"], "does not exist"),
    (["--mode", "obs"], "--mode obs needs --sparsity"),
    (["-s", "0.5", "--max-images", "1"], "--max-images"),
])
def test_cli_bad_input_is_one_error_line(detector, tmp_path, args, message):
    cfg, weights, paths = detector
    base = ["oneshot", str(weights), "--cfg", str(cfg), "-o", str(tmp_path / "x.weights")]
    if "--images" not in args:
        base += ["--images", str(paths[0].parent)]
    args = [a.replace("{missing}", str(tmp_path / "missing")) for a in args]
    done = CliRunner().invoke(cli, base + args)
    assert done.exit_code == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.output
    assert not (tmp_path / "x.weights").exists()


# --------------------------------------------------------------------------
# The loop.

# Stands in for `darknet classifier train DATA CFG WEIGHTS -clear`: "trains" by
# copying WEIGHTS to where Darknet would save, so a step's weights are its pruning's.
COPYING_DARKNET = """#!/bin/sh
backup=$(sed -n 's/^backup=//p' "$3")
base=$(basename "$4"); base=${base%%.*}
cp "$5" "$backup/$base.weights"
"""


def test_the_loop_solves_every_step_from_the_current_weights(tmp_path, digits, model_files):
    from darknet_sparse.workflow.loop import LoopSettings, run

    darknet = tmp_path / "bin" / "darknet"
    darknet.parent.mkdir()
    darknet.write_text(COPYING_DARKNET)
    darknet.chmod(0o755)
    cfg, weights = model_files
    settings = LoopSettings(cfg=cfg, weights=weights, data=digits, out=tmp_path / "out", targets=(0.5, 0.7),
                            iterations=3, darknet=darknet, eval_cmd="echo 0.5", policy=policies.Magnitude,
                            recalibrate=0, teacher=None, oneshot="obs")
    result = run(settings)
    dense = load(cfg, weights)
    first, second = (load(cfg, Path(step.weights)) for step in result.steps)
    for slot in dense.slots:
        if slot.param.role != "weights":
            assert first.array(slot).tobytes() == dense.array(slot).tobytes(), slot.key
            continue
        w, a, b = dense.array(slot), first.array(slot), second.array(slot)
        assert np.count_nonzero(a == 0) == round(0.5 * w.size) and np.count_nonzero(b == 0) == round(0.7 * w.size)
        assert (b[a == 0] == 0).all()  # the second step starts from the first's zeros
        kept = a != 0
        assert not np.array_equal(a[kept], w[kept])  # the survivors moved: not magnitude's copy
    assert [step.mode for step in result.steps] == ["magnitude", "magnitude"]
    done = CliRunner().invoke(cli, ["loop", "-w", str(weights), "--cfg", str(cfg), "--data", str(digits),
                                    "--sparsities", "0.5", "--iterations-per-step", "2", "--eval-cmd", "echo 0.5",
                                    "--darknet", str(darknet), "--oneshot", "obs", "--mode", "magnitude",
                                    "-o", str(tmp_path / "cli")])
    assert done.exit_code == 0, done.output
    final = load(cfg, tmp_path / "cli" / "final.weights")
    for slot in dense.slots:
        if slot.param.role == "weights":  # the same solve as the first step's above
            assert final.array(slot).tobytes() == first.array(slot).tobytes(), slot.key


def test_the_corrected_statistics_are_the_recalibrations_on_the_rows(detector):
    """_corrected_stats, from the gathered sums alone, against the direct
    computation on the rows: the rolling mean moves by the shift of the
    output's mean (in the layer's own units), the variance by the ratio of
    the output's variances, from the dense output Y to the solved X_p W^T."""
    cfg, weights, _ = detector
    wf = load(cfg, weights)
    layer = wf.model.layers[2]
    plan = oneshot._plan(layer, wf, wf.array(wf.slot(2, "weights")), wf.model.fork)
    rng = np.random.default_rng(7)
    X = rng.normal(size=(500, plan.columns)) + 0.3
    W = plan.scaled * (rng.random(plan.scaled.shape) > 0.5)
    Y = X @ plan.scaled.T + 0.1 * rng.normal(size=(500, plan.outputs))
    gathered = oneshot._Gathered([X.T @ X], [None], [0.0], [0.0], len(X), [X.sum(0)], [Y.sum(0)], [(Y ** 2).sum(0)])
    mean, variance = oneshot._corrected_stats(wf, plan, gathered, [W])
    Z = X @ W.T
    old_mean = wf.array(wf.slot(2, "rolling_mean")).astype(np.float64)
    old_variance = wf.array(wf.slot(2, "rolling_variance")).astype(np.float64)
    np.testing.assert_allclose(mean, old_mean + (Z.mean(0) - Y.mean(0)) / plan.scale, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(variance, old_variance * Z.var(0) / Y.var(0), rtol=1e-4)


def test_the_solve_corrects_statistics_only_with_the_recalibration(detector, tmp_path):
    """The layers after the first are fitted to other inputs when the
    statistics are corrected (their errors differ), and not corrected by
    default without the recalibration (the file then holds only new weights)."""
    cfg, weights, paths = detector
    wf = load(cfg, weights)
    on = oneshot.oneshot(wf, None, paths, policies.Magnitude(0.7), recalibrate=False, correct_stats=True)
    off = oneshot.oneshot(wf, None, paths, policies.Magnitude(0.7), recalibrate=False)
    errors = [(a.input_error, b.input_error) for a, b in zip(on.layers, off.layers) if a.method == "obs"]
    assert errors[0][0] == errors[0][1]
    assert any(a != b for a, b in errors[1:])
