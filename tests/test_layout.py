"""Shape inference and the parameter table, for both forks.

pjreddie's rules are checked against stock Darknet itself in
``test_stock_oracle.py``; here: AlexeyAB (the sizes its Darknet saves for 19
real cfgs, and hand-written cfgs checked against the per-layer array
order of ``docs/format.md``), what differs between the forks,
and the errors.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from darknet_sparse import CfgError, parse_cfg, read_cfg
from darknet_sparse.format.files import load_model
from darknet_sparse.format.files import resolve_fork
from darknet_sparse.format.layout import BN_ROLES, build_model
from darknet_sparse.format.weightsfile import expected_size
from helpers.stock import ALEXEYAB_DIR, CFG_DIR, PJREDDIE_CFGS, UPSTREAM_CFGS


def _alexeyab_sizes() -> list[tuple[str, int]]:
    """(cfg, bytes AlexeyAB's Darknet saves) from ``tests/data/alexeyab-cfg/README.md``."""
    table = (ALEXEYAB_DIR / "README.md").read_text()
    return [(name, int(size.replace(",", ""))) for name, size in re.findall(r"^\| (\S+) \| ([\d,]+) \|", table, re.M)]


ALEXEYAB_SIZES = _alexeyab_sizes()
#: The cfgs among them that use something only AlexeyAB's parser knows.
ALEXEYAB_ONLY = {
    "yolov4-tiny", "yolov4", "yolov4-csp", "yolov7-tiny", "yolov7", "yolov4-tiny-3l", "efficientnet_b0",
    "enet-coco", "yolov4-sam-mish-csp-reorg-bfm", "yolov4-tiny_contrastive", "yolov3-tiny_occlusion_track",
    "resnet152_trident",
}


def _cfg(text: str) -> list:
    return parse_cfg(text, "test.cfg")


def _model(body: str, fork: str = "alexeyab", net: str = "height=8\nwidth=8\nchannels=3"):
    return build_model(_cfg(f"[net]\n{net}\n{body}"), fork)


def _counts(layer) -> list[tuple[str, int]]:
    return [(p.name, p.count) for p in layer.params]


def _conv(prefix: str, c: int, n: int, size: int, bn: bool) -> list[tuple[str, int]]:
    """The notes' conv block: biases[n], BN triple if bn, weights[c*n*size^2]."""
    return ([(prefix + "biases", n)] + [(prefix + role, n) for role in BN_ROLES if bn]
            + [(prefix + "weights", c * n * size * size)])


def _conn(prefix: str, inputs: int, outputs: int, bn: bool) -> list[tuple[str, int]]:
    """The notes' connected block: biases[out], weights[out*in], BN triple if bn."""
    return ([(prefix + "biases", outputs), (prefix + "weights", inputs * outputs)]
            + [(prefix + role, outputs) for role in BN_ROLES if bn])


# ---------------------------------------------------------------- AlexeyAB cfgs


def test_alexeyab_table_is_complete():
    assert len(ALEXEYAB_SIZES) == 19


@pytest.mark.parametrize("name,size", ALEXEYAB_SIZES, ids=[n for n, _ in ALEXEYAB_SIZES])
def test_alexeyab_saved_size(name, size):
    """20-byte header + 4 bytes per float == what AlexeyAB's Darknet saves."""
    assert expected_size(load_model(ALEXEYAB_DIR / f"{name}.cfg", "alexeyab"), 20) == size


@pytest.mark.parametrize("name,size", ALEXEYAB_SIZES, ids=[n for n, _ in ALEXEYAB_SIZES])
def test_alexeyab_auto_fork(name, size, tmp_path):
    """``auto`` picks AlexeyAB for cfgs with AlexeyAB-only features; the
    others read the same in both forks, except [batchnorm] (3 or 4 arrays),
    where a 0.2.5 header (what AlexeyAB saves) decides."""
    sections = read_cfg(ALEXEYAB_DIR / f"{name}.cfg")
    fork, reason = resolve_fork(sections, "auto")
    assert fork == ("alexeyab" if name in ALEXEYAB_ONLY else "pjreddie"), reason
    if fork == "pjreddie" and name != "yolov1/xyolo.test":
        assert build_model(sections, "pjreddie").param_count == build_model(sections, "alexeyab").param_count
    header = tmp_path / "header.weights"
    header.write_bytes(struct.pack("<3iQ", 0, 2, 5, 0))
    assert resolve_fork(sections, "auto", header)[0] == "alexeyab"


# ------------------------------------------------ AlexeyAB-only layers and options


def test_shortcut_weights_types():
    model = load_model(CFG_DIR / "ab_shortcut.cfg")
    assert model.fork == "alexeyab"
    expected = {3: 2 + 1, 4: 1 + 1, 5: (3 + 1) * 4}  # per_feature, per_layer, per_channel (c=4)
    for layer in model.layers[3:]:
        want = [("weights", expected[layer.index])] if layer.index in expected else []
        assert _counts(layer) == want
        assert all(p.role == "shortcut" for p in layer.params)
        assert layer.output == (4, 8, 8)


def test_shortcut_bad_weights_type():
    with pytest.raises(CfgError, match=r"test.cfg:8 \[shortcut\]: weights_type=per_pixel is not one of none, "):
        _model("[shortcut]\nfrom=-1\nweights_type=per_pixel\n", net="height=4\nwidth=4\nchannels=3\n[avg]")


def test_implicit():
    model = load_model(CFG_DIR / "ab_implicit.cfg")
    first, default, conv = model.layers
    assert _counts(first) == [("weights", 8 * 2)] and first.params[0].role == "implicit"
    assert first.output == (8, 2, 1)
    assert _counts(default) == [("weights", 128)] and default.output == (128, 1, 1)
    assert _counts(conv) == _conv("", 128, 2, 1, False)


def test_conv_lstm_peephole_and_bottleneck():
    peephole, bottleneck, conv = load_model(CFG_DIR / "ab_conv_lstm.cfg").layers
    want = []
    for name in ("vf", "vi", "vo", "wf", "wi", "wg", "wo"):
        want += _conv(name + ".", 4, 4, 3, True)
    for name in ("uf", "ui", "ug", "uo"):
        want += _conv(name + ".", 3, 4, 3, True)
    assert _counts(peephole) == want and peephole.output == (4, 6, 6)
    want = _conv("wf.", 2 * 2, 2, 1, False)
    for name in ("uf", "ui", "ug", "uo"):
        want += _conv(name + ".", 4, 2, 1, False)
    assert _counts(bottleneck) == want and bottleneck.output == (2, 6, 6)
    assert conv.input == (2, 6, 6)


def test_share_index():
    model = load_model(CFG_DIR / "ab_share.cfg")
    stored = model.layers[1]
    for layer in model.layers[2:]:
        assert layer.params == () and layer.shares == 1
        assert [p.count for p in layer.borrowed] == [p.count for p in stored.params]
    # FLOPs of a shared layer: the borrowed weights at its own output size.
    weights = stored.params[-1].count
    assert model.layers[2].flops == 2 * weights * 4 * 4
    assert stored.flops == 2 * weights * 8 * 8
    assert model.layers[3].output == (4, 4, 4)  # dilation does not change it
    assert model.param_count == sum(p.count for layer in model.layers[:2] for p in layer.params)


def test_share_index_must_match():
    body = ("[convolutional]\nfilters=4\nsize=3\npad=1\n"
            "[convolutional]\nfilters=4\nsize=1\nshare_index=0\n")
    with pytest.raises(CfgError, match=r"test.cfg:\d+ \[convolutional\]: share_index=0 points to layer 0"):
        _model(body, net="height=4\nwidth=4\nchannels=4")


def test_route_groups():
    model = load_model(CFG_DIR / "ab_route_groups.cfg")
    assert [layer.output[0] for layer in model.layers] == [8, 4, 2, 3, 2]
    assert model.layers[3].outputs == (8 * 64 + 4 * 64) // 4
    assert _counts(model.layers[2]) == _conv("", 4, 2, 1, False)
    assert _counts(model.layers[4]) == _conv("", 3, 2, 1, False)
    with pytest.raises(CfgError, match=r"group_id=2 outside 0..1"):
        _model("[convolutional]\nfilters=4\n[route]\nlayers=-1\ngroups=2\ngroup_id=2\n")


def test_route_groups_are_not_pjreddies():
    """pjreddie has no [route] groups: the next conv sees all channels."""
    pj = load_model(CFG_DIR / "ab_route_groups.cfg", "pjreddie")
    assert [layer.output[0] for layer in pj.layers] == [8, 8, 2, 8 + 8, 2]


def test_pooling_strides_and_antialiasing():
    layers = load_model(CFG_DIR / "ab_pooling.cfg").layers
    assert [layer.output for layer in layers[:5]] == [(6, 12, 12), (2, 12, 12), (2, 12, 6), (5, 6, 2), (5, 6, 2)]
    conv = layers[6]
    assert conv.output == (7, 12, 12) and conv.passes == ((7, 6, 6), 252)
    assert conv.params[-1].macs == 12 * 12  # the host convolution runs at stride 1
    assert layers[7].input == (7, 6, 6) and _counts(layers[7]) == _conn("", 252, 3, False)
    assert layers[8].output == (7, 12, 12)  # a route sees the stride-1 output
    assert layers[9].passes == ((7, 6, 6), 252)  # 2x2 blur, pad 0
    assert _counts(layers[10]) == _conn("", 252, 2, False)


def test_stride_x_and_stride_y_are_alexeyabs():
    body = "[convolutional]\nfilters=2\nsize=3\npad=1\nstride=1\nstride_x=2\n"
    assert _model(body).layers[0].output == (2, 8, 4)
    assert _model(body, "pjreddie").layers[0].output == (2, 8, 8)


def test_xnor_turns_groups_off_in_alexeyab():
    body = "[convolutional]\nfilters=4\nsize=1\ngroups=2\nxnor=1\n"
    net = "height=4\nwidth=4\nchannels=4"
    assert _model(body, "alexeyab", net).layers[0].params[-1].count == 4 * 4
    assert _model(body, "pjreddie", net).layers[0].params[-1].count == 2 * 4


# ------------------------------------------------------- what the forks disagree on


def test_batchnorm_three_or_four_arrays():
    body = "[convolutional]\nfilters=5\nsize=1\n[batchnorm]\n"
    pj, ab = _model(body, "pjreddie").layers[1], _model(body, "alexeyab").layers[1]
    assert _counts(pj) == [(role, 5) for role in BN_ROLES]
    assert _counts(ab) == [("biases", 5)] + [(role, 5) for role in BN_ROLES]


def test_recurrent_layers_per_fork():
    """rnn: pjreddie ignores hidden= (hidden = output); gru and lstm: the
    matrices in each fork's order (u* read the input, w* the state)."""
    pj = load_model(CFG_DIR / "pj_recurrent.cfg", "pjreddie").layers
    ab = load_model(CFG_DIR / "pj_recurrent.cfg", "alexeyab").layers
    assert _counts(pj[0]) == (_conn("input_layer.", 12, 10, True) + _conn("self_layer.", 10, 10, True)
                              + _conn("output_layer.", 10, 10, True))
    assert _counts(ab[0]) == (_conn("input_layer.", 12, 99, True) + _conn("self_layer.", 99, 99, True)
                              + _conn("output_layer.", 99, 10, True))

    def gated(order: str, inputs: int, outputs: int, bn: bool) -> list[tuple[str, int]]:
        return sum((_conn(name + ".", inputs if name[0] == "u" else outputs, outputs, bn)
                    for name in order.split()), [])

    assert _counts(pj[1]) == gated("wz wr wh uz ur uh", 10, 7, False)
    assert _counts(ab[1]) == gated("uz ur uh wz wr wh", 10, 7, False)
    assert _counts(pj[2]) == gated("wi wf wo wg ui uf uo ug", 7, 6, True)
    assert _counts(ab[2]) == gated("wf wi wg wo uf ui ug uo", 7, 6, True)
    assert pj[0].output == (0, 0, 0) and ab[0].output == (10, 1, 1)


def test_crnn_keys_per_fork():
    body = "[crnn]\noutput_filters=4\nhidden_filters=6\noutput=3\nhidden=5\nsize=1\n"
    pj, ab = _model(body, "pjreddie").layers[0], _model(body, "alexeyab").layers[0]
    assert _counts(pj) == (_conv("input_layer.", 3, 6, 3, False) + _conv("self_layer.", 6, 6, 3, False)
                           + _conv("output_layer.", 6, 4, 3, False))
    assert _counts(ab) == (_conv("input_layer.", 3, 5, 1, False) + _conv("self_layer.", 5, 5, 1, False)
                           + _conv("output_layer.", 5, 3, 1, False))


def test_sections_of_one_fork_only():
    with pytest.raises(CfgError, match=r"test.cfg:5 \[implicit\]: unknown section type \[implicit\] for the "
                                       r"pjreddie fork \(a section of the alexeyab fork only\)"):
        _model("[implicit]\n", "pjreddie")
    with pytest.raises(CfgError, match=r"\[deconvolutional\] for the alexeyab fork"):
        _model("[deconvolutional]\nfilters=2\n", "alexeyab")


# ---------------------------------------------------------------- shape rules


def test_conv_counts_and_flops():
    """(c/groups) * n * size^2 weights; FLOPs as Darknet prints them."""
    conv = _model("[convolutional]\nbatch_normalize=1\nfilters=6\nsize=3\nstride=2\npad=1\ngroups=3\n",
                  net="height=9\nwidth=7\nchannels=3").layers[0]
    assert _counts(conv) == _conv("", 1, 6, 3, True)
    assert conv.output == (6, 5, 4)
    assert conv.flops == 2 * 6 * 3 * 3 * (3 // 3) * 5 * 4
    assert conv.params[-1].shape == (6, 1, 3, 3)


def test_numload_and_dontloadscales_change_what_is_read():
    body = "[convolutional]\nbatch_normalize=1\nfilters=6\nsize=1\nnumload={}\ndontloadscales={}\n"
    assert _counts(_model(body.format(2, 0), "pjreddie").layers[0]) == _conv("", 3, 2, 1, True)
    assert _counts(_model(body.format(0, 0), "pjreddie").layers[0]) == _conv("", 3, 6, 1, True)
    assert _counts(_model(body.format(2, 0), "alexeyab").layers[0]) == _conv("", 3, 6, 1, True)
    assert _counts(_model(body.format(0, 1), "alexeyab").layers[0]) == _conv("", 3, 6, 1, False)


def test_dontload_reads_nothing():
    assert _model("[convolutional]\nfilters=6\nsize=1\ndontload=1\n").param_count == 0


def test_relative_and_absolute_layer_indices():
    body = ("[convolutional]\nfilters=2\nsize=1\n"  # 0
            "[convolutional]\nfilters=3\nsize=1\n"  # 1
            "[route]\nlayers=-1,0\n"  # 2: 5 channels
            "[route]\nlayers=1,-3\n")  # 3: 1 then 0: 5 channels
    layers = _model(body).layers
    assert layers[2].output == layers[3].output == (5, 8, 8)
    with pytest.raises(CfgError, match=r"test.cfg:16 \[route\]: layers=-5 points to layer -1, outside 0..3"):
        _model(body + "[route]\nlayers=-5\n")
    with pytest.raises(CfgError, match=r"layers=4 points to layer 4, outside 0..3"):
        _model(body + "[route]\nlayers=4\n")


def test_route_of_mismatched_shapes_is_not_an_image():
    """Darknet zeroes the route's shape; a convolution after it is an error."""
    body = "[convolutional]\nfilters=2\nsize=1\n[maxpool]\nsize=2\nstride=2\n[route]\nlayers=0,1\n"
    assert _model(body).layers[2].output == (0, 0, 0)
    with pytest.raises(CfgError, match=r"\[convolutional\]: layer 3 \(convolutional\) needs an image input"):
        _model(body + "[convolutional]\nfilters=2\n")


def test_detection_heads_check_their_input():
    with pytest.raises(CfgError, match=r"test.cfg:8 \[yolo\]: needs 21 input channels \(3 anchors x \(4\+1\+2\)\)"
                                       r" but the layer before gives 20x8x8"):
        _model("[convolutional]\nfilters=20\nsize=1\n[yolo]\nmask=0,1,2\nclasses=2\nnum=6\n")
    assert _model("[convolutional]\nfilters=21\nsize=1\n[yolo]\nmask=0,1,2\nclasses=2\nnum=6\n").param_count == 21 * 4


def test_upsample_negative_stride_downsamples():
    layers = _model("[upsample]\nstride=2\n[upsample]\nstride=-4\n").layers
    assert [layer.output for layer in layers] == [(3, 16, 16), (3, 4, 4)]


def test_net_section_may_be_network_and_flat():
    model = build_model(_cfg("[network]\ninputs=7\n[connected]\noutput=2\n"), "pjreddie")
    assert _counts(model.layers[0]) == _conn("", 7, 2, False)


def test_bad_values_name_file_line_and_section(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[net]\nheight=8\nwidth=8\nchannels=3\n\n[convolutional]\nfilters=abc\n")
    with pytest.raises(CfgError, match=re.escape(f"{cfg}:7 [convolutional]: filters='abc' is not an integer")):
        load_model(cfg, "pjreddie")
    cfg.write_text("[net]\nheight=8\nwidth=8\nchannels=3\n\n[convolutional]\nfilters=0\n")
    with pytest.raises(CfgError, match=re.escape(f"{cfg}:7 [convolutional]: filters=0 must be positive")):
        load_model(cfg, "pjreddie")
    cfg.write_text("[net]\nheight=8\nwidth=8\nchannels=3\n\n[convolution]\nfilters=2\n")
    with pytest.raises(CfgError, match=re.escape(f"{cfg}:6 [convolution]: unknown section type [convolution]")):
        load_model(cfg, "alexeyab")


def test_unknown_fork():
    with pytest.raises(CfgError, match="unknown fork 'darknet'"):
        load_model(CFG_DIR / "pj_zoo.cfg", "darknet")


def test_pjreddie_shortcut_takes_one_layer():
    with pytest.raises(CfgError, match=r"\[shortcut\]: pjreddie's \[shortcut\] takes exactly one from= layer"):
        _model("[convolutional]\nfilters=3\n[shortcut]\nfrom=-1,0\n", "pjreddie")


@pytest.mark.parametrize("cfg", UPSTREAM_CFGS + PJREDDIE_CFGS, ids=lambda p: p.stem)
def test_plain_cfgs_are_not_taken_for_alexeyab(cfg: Path):
    assert resolve_fork(read_cfg(cfg))[0] == "pjreddie"
