"""Least-squares refit after slim (``reconstruct``) and the data rank
(``datarank``), on a small network whose answer is known.

In ``NET`` (``cfgs/refit.cfg``) channel 3 of layer 0 is a copy of channel 1 (same filter, same
batch norm), so it carries nothing the others do not: removed, the layer
reading it can take its part over by adding its weights to channel 1's, and
the refit must find that, reproducing the dense network to float rounding.
Without the refit (bias compensation only) the output differs.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from darknet_sparse.cli import cli
from darknet_sparse.darknet.network import Network
from darknet_sparse.errors import PolicyError
from darknet_sparse.format.files import load
from darknet_sparse.structured import datarank, reconstruct, slim

NET = Path(__file__).parent / "cfgs" / "refit.cfg"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("refit")
    cfg = folder / "net.cfg"
    cfg.write_text(NET.read_text())
    net = Network(cfg)
    rng = np.random.default_rng(5)
    for i in (0, 2, 3):
        for name, view in net.params(i).items():
            view[:] = rng.normal(0, 0.5, view.size) if name != "rolling_variance" else rng.uniform(0.5, 2, view.size)
    first = net.params(0)
    w = first["weights"].reshape(4, -1)
    w[3] = w[1]
    for name in ("biases", "scales", "rolling_mean", "rolling_variance"):
        first[name][3] = first[name][1]
    net.save(folder / "net.weights")
    return cfg, folder / "net.weights"


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (count, 3, 12, 12)).astype(np.float32)


def _choice(cfg: Path, weights: Path, removed: dict[int, list[int]]) -> slim.Choice:
    wf = load(cfg, weights)
    base = slim.choose(wf, gamma_threshold=0.0)
    kept = base.kept.copy()
    for layer, channels in removed.items():
        kept[base.graph.producer(layer)[channels]] = False
    return slim.Choice(base.graph, kept, "manual", 0.0, 0.0, base.prunable, base.keep)


def _slimmed(cfg: Path, weights: Path, removed: dict[int, list[int]], folder: Path) -> tuple[slim.Choice, Path]:
    choice = _choice(cfg, weights, removed)
    out = folder / "slim.weights"
    slim.apply(load(cfg, weights), choice, out)
    return choice, out


def _final(net: Network, x: np.ndarray) -> np.ndarray:
    return net.predict(x)


def test_a_redundant_channel_is_taken_over_exactly(model, tmp_path):
    cfg, weights = model
    choice, out = _slimmed(cfg, weights, {0: [3]}, tmp_path)
    dense, slimmed = Network(cfg, weights), Network(slim.cfg_beside(out), out)
    x = _images(16, 1)
    plain_error = np.abs(_final(slimmed, x) - _final(dense, x)).max()
    assert plain_error > 1e-2  # bias compensation alone cannot know channel 1 carries channel 3
    fits = reconstruct.reconstruct(dense, slimmed, load(cfg, weights).model, choice.graph, choice.kept, x,
                                   ridges=(1e-9,))
    assert [f.layer for f in fits] == [2, 3]  # from the first layer that lost an input, to the end
    assert fits[0].error_after < 1e-8 < fits[0].error_before
    held_out = _images(8, 2)
    np.testing.assert_allclose(_final(slimmed, held_out), _final(dense, held_out), rtol=1e-4, atol=1e-4)


def test_nothing_removed_nothing_refit(model):
    cfg, weights = model
    choice = _choice(cfg, weights, {})
    assert reconstruct.fittable(choice.graph, choice.kept) == []


def test_the_refit_reduces_the_error_of_a_real_loss(model, tmp_path):
    """Removing two informative channels: the refit cannot be exact, but the
    final output moves toward the dense one on images it never saw."""
    cfg, weights = model
    choice, out = _slimmed(cfg, weights, {0: [0], 2: [1, 4]}, tmp_path)
    dense, slimmed = Network(cfg, weights), Network(slim.cfg_beside(out), out)
    held_out = _images(16, 3)
    before = np.abs(_final(slimmed, held_out) - _final(dense, held_out)).mean()
    reconstruct.reconstruct(dense, slimmed, load(cfg, weights).model, choice.graph, choice.kept, _images(48, 4))
    after = np.abs(_final(slimmed, held_out) - _final(dense, held_out)).mean()
    assert after < 0.7 * before


def test_the_data_rank_removes_an_unread_channel_then_a_copy(model, tmp_path):
    """A channel nothing reads costs nothing: it goes first.  The copy or
    its original goes before the layer's other channel: after a refit
    either one costs nothing (the other takes its part over), which raw
    contributions would not see."""
    cfg, weights = model
    net = Network(cfg, weights)
    net.params(2)["weights"].reshape(5, 4, 9)[:, 2] = 0  # layer 2 ignores channel 2 of layer 0
    unread = tmp_path / "unread.weights"
    net.save(unread)
    wf = load(cfg, unread)
    graph = slim.choose(wf, gamma_threshold=0.0).graph
    states = datarank.measure(Network(cfg, unread), wf.model, graph, _images(16, 5))
    assert [c.layer for c in states] == [2, 3]
    position = datarank.order(graph, wf.model, states)
    first = graph.producer(0)
    assert position[first[2]] == 0
    assert min(position[first[1]], position[first[3]]) < position[first[0]]  # before the informative one
    assert np.isnan(position[graph.producer(3)]).all()  # the last layer's outputs are not ranked
    choice = slim.choose(wf, percent=0.1, rank="data", scores=position)
    assert not choice.kept[first[2]]


def test_the_removal_cost_is_the_error_left_after_the_refit(model):
    """Optimal Brain Surgeon on a group: the cost of one input channel
    equals the squared error a least-squares refit of the other channels
    leaves, computed directly."""
    cfg, weights = model
    wf = load(cfg, weights)
    graph = slim.choose(wf, gamma_threshold=0.0).graph
    dense = Network(cfg, weights)
    x = _images(64, 6)
    states = datarank.measure(dense, wf.model, graph, x, positions=10_000)
    consumer = next(c for c in states if c.layer == 3)  # 1x1: one tap per input channel
    cost = datarank._group_costs(consumer)
    (inputs,) = dense.layer_outputs(x, [2])
    rows = inputs.reshape(64, 5, -1).transpose(0, 2, 1).reshape(-1, 5).astype(np.float64)
    rows -= rows.mean(0)
    w = consumer.filters[:, :, 0]  # (outputs, inputs), weighted
    for g in range(5):
        others = np.delete(np.arange(5), g)
        target = rows @ w.T
        fit, *_ = np.linalg.lstsq(rows[:, others], target, rcond=None)
        left = np.sum((target - rows[:, others] @ fit) ** 2) / len(rows) / consumer.variance
        assert cost[g] == pytest.approx(left, rel=5e-3)  # the damping of the inverse: 1e-4 of each variance


def test_rank_data_needs_scores_and_no_gamma_threshold(model):
    cfg, weights = model
    wf = load(cfg, weights)
    with pytest.raises(PolicyError, match="rank data needs the scores"):
        slim.choose(wf, percent=0.2, rank="data")
    scores = np.arange(len(slim.choose(wf, gamma_threshold=0.0).graph.node_layer), dtype=float)
    with pytest.raises(PolicyError, match="--gamma-threshold ranks by"):
        slim.choose(wf, gamma_threshold=0.1, rank="data", scores=scores)


def test_slim_with_images_writes_a_refit_model(model, tmp_path):
    cfg, weights = model
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(6)
    for k in range(10):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(photos / f"p{k}.png")
    out = tmp_path / "out" / "small.weights"
    out.parent.mkdir()
    result = CliRunner().invoke(cli, ["slim", str(weights), "--cfg", str(cfg), "--percent", "0.25", "--images",
                                      str(photos), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert re.search(r"refit \d layers? by least squares on 10 images \(channels chosen by the data rank\)",
                     result.output)
    assert sorted(p.name for p in out.parent.iterdir()) == ["small.cfg", "small.weights"]  # no temporary left
    small = load(out.parent / "small.cfg", out)
    assert small.model.layers[0].output[0] + small.model.layers[2].output[0] == 7  # 25% of 9 channels gone
    plain = tmp_path / "plain.weights"
    CliRunner().invoke(cli, ["slim", str(weights), "--cfg", str(cfg), "--percent", "0.25", "--images",
                             str(photos), "--no-refit", "-o", str(plain)])
    assert plain.read_bytes() != out.read_bytes()
    assert (tmp_path / "plain.cfg").read_text() == (out.parent / "small.cfg").read_text()


def test_slim_image_options_are_checked(model, tmp_path):
    cfg, weights = model
    result = CliRunner().invoke(cli, ["slim", str(weights), "--cfg", str(cfg), "--percent", "0.25", "--rank",
                                      "data", "-o", str(tmp_path / "x.weights")])
    assert result.exit_code == 2 and "give --images" in result.output
    result = CliRunner().invoke(cli, ["slim", str(weights), "--cfg", str(cfg), "--percent", "0.25", "--images",
                                      str(tmp_path), "--dry-run"])
    assert result.exit_code == 2 and "--dry-run does not use --images" in result.output
