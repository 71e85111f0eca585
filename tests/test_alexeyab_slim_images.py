"""`slim --images` on AlexeyAB cfgs (issue 20): the im2col rows that the
data rank and the refit read (structured/calibration.py) follow the fork's
convolution geometry, i.e. its strides (``stride_x``/``stride_y``), dilation
and groups, checked against the fork's own forward pass through the AlexeyAB
binding.

The cfg is tests/data/ab/ab_geometry.cfg (dilation 2 and 3, stride_x !=
stride_y, groups, depthwise, 1x1 stride 2) with every convolution made linear
and without batch norm, so each layer's output is exactly its weights times
the rows plus its biases; the weights are the fork's own initialisation
(seeded).  The geometry guard is test_rows_give_the_forks_convolution (it
fails with rows that ignore dilation).  The refit test checks the refit's own
round trip on those layers through the fork's binding: its targets are built
from the same rows, so it cannot see a wrong geometry by itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import darknet_sparse as ds
from darknet_sparse.darknet.network import Network, backend, seed
from darknet_sparse.darknet.runner import set_options
from darknet_sparse.format.layout import conv_strides
from darknet_sparse.structured import calibration

GEOMETRY = Path(__file__).parent / "data" / "ab" / "ab_geometry.cfg"


@pytest.fixture(scope="module")
def linear(tmp_path_factory) -> tuple[Path, Path]:
    """The geometry cfg, every convolution linear and without batch norm, and fork-initialised weights."""
    folder = tmp_path_factory.mktemp("ab-slim-images")
    cfg = folder / "geometry-linear.cfg"
    cfg.write_text(set_options(GEOMETRY.read_text(), {},
                               {"convolutional": {"batch_normalize": 0, "activation": "linear"}}))
    seed(7, backend(fork="alexeyab"))
    weights = folder / "geometry-linear.weights"
    Network(cfg, None, fork="alexeyab").save(weights)
    return cfg, weights


def test_the_cfg_has_the_geometries(linear):
    model = ds.load_model(linear[0], fork="alexeyab")
    convs = [layer.section for layer in model.layers if layer.type == "convolutional"]
    assert {s.get_int("dilation", 1) for s in convs} >= {2, 3}
    assert any(len(set(conv_strides(s, "alexeyab"))) == 2 for s in convs)
    assert any(s.get_int("groups", 1) > 1 for s in convs)


def test_rows_give_the_forks_convolution(linear):
    """For every convolution: rows at every output pixel times the weights
    (per group) plus the biases equal the fork's output of the layer."""
    cfg, weights = linear
    model = ds.load_model(cfg, fork="alexeyab")
    wf = ds.load(cfg, weights, fork="alexeyab")
    net = Network(cfg, weights, fork="alexeyab")
    x = np.random.default_rng(0).random((2, *model.layers[0].input), dtype=np.float32)
    convs = [layer for layer in model.layers if layer.type == "convolutional"]
    outputs = net.layer_outputs(x, [layer.index for layer in convs])
    inputs = calibration.inputs(net, [layer.index for layer in convs], x)
    for layer, out, inp in zip(convs, outputs, inputs):
        c, oh, ow = layer.output
        groups = layer.section.get_int("groups", 1)
        pixels = np.tile(np.arange(oh * ow), (len(x), 1))
        rows = calibration.rows(inp.reshape(-1, *layer.input), layer, pixels, "alexeyab").astype(np.float64)
        arrays = wf.arrays(layer.index)
        w = np.asarray(arrays["weights"], np.float64).reshape(c, -1)
        width = w.shape[1]
        assert rows.shape[1] == width * groups, f"layer {layer.index}: {rows.shape[1]} columns"
        per = c // groups
        z = np.concatenate([rows[:, g * width:(g + 1) * width] @ w[g * per:(g + 1) * per].T for g in range(groups)],
                           axis=1) + np.asarray(arrays["biases"], np.float64)
        mine = z.reshape(len(x), oh * ow, c).transpose(0, 2, 1).reshape(len(x), -1)
        np.testing.assert_allclose(mine, out, rtol=1e-4, atol=1e-4 * float(np.abs(out).max()),
                                   err_msg=f"layer {layer.index} ({layer.section.get_int('dilation', 1)=}, "
                                           f"{conv_strides(layer.section, 'alexeyab')=}, {groups=})")


def test_dilated_layers_are_refit(linear):
    """The refit takes the dilated convolutions too (groups=1 ones)."""
    model = ds.load_model(linear[0], fork="alexeyab")
    dilated = [layer for layer in model.layers if layer.type == "convolutional"
               and layer.section.get_int("dilation", 1) > 1 and layer.section.get_int("groups", 1) == 1]
    assert dilated and all(calibration.plain(layer, "alexeyab") for layer in dilated)


def test_the_refit_gives_the_forks_output_back(linear):
    """A refit removing no channel, of the dilated and the stride_x/stride_y
    convolutions whose weights were zeroed in the copy refit, reproduces the
    dense network's output through the fork (weights and biases written back
    in the fork's layout)."""
    from darknet_sparse.structured.channels import channel_graph
    from darknet_sparse.structured.reconstruct import reconstruct
    cfg, weights = linear
    model = ds.load_model(cfg, fork="alexeyab")
    todo = [layer.index for layer in model.layers if layer.type == "convolutional"
            and layer.section.get_int("groups", 1) == 1
            and (layer.section.get_int("dilation", 1) > 1 or len(set(conv_strides(layer.section, "alexeyab"))) == 2)]
    assert len(todo) >= 2
    dense, refit = Network(cfg, weights, fork="alexeyab"), Network(cfg, weights, fork="alexeyab")
    for index in todo:
        refit.params(index)["weights"][:] = 0
    graph = channel_graph(model)
    x = np.random.default_rng(1).random((12, *model.layers[0].input), dtype=np.float32)
    reconstruct(dense, refit, model, graph, np.ones(len(graph.node_layer), bool), x, layers=todo)
    want, got = dense.predict(x[:3]), refit.predict(x[:3])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max()))
    for index in todo:
        np.testing.assert_allclose(refit.params(index)["weights"], dense.params(index)["weights"], atol=2e-3,
                                   err_msg=f"layer {index}")
