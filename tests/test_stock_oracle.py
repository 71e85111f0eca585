"""Our layout, reader and writer against stock Darknet (Debian's pjreddie build).

For every cfg upstream ships and our hand-written pjreddie cfgs:

- the size stock Darknet saves equals ours, and its file survives our
  read -> write byte for byte;
- the BFLOPs and output shapes it prints while parsing equal ours;
- after we rewrite a file (every other weight zeroed), the stock loader holds
  exactly our arrays, bit for bit, and its saver writes our file back.
"""
from __future__ import annotations

import filecmp
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from darknet_sparse.format.files import load_model
from darknet_sparse.format.weightsfile import FLOAT, Slot, WeightsFile, expected_size, new_file, write
from helpers.stock import (CANNOT_LOAD, CFG_DIR, PJREDDIE_CFGS, ROUND_TRIP_LIMIT, UPSTREAM_CFGS,
                           printed_bflops, printed_layers, printed_output)

ALL_CFGS = UPSTREAM_CFGS + PJREDDIE_CFGS


def _expected_size(cfg: Path) -> int:
    """Our size for ``cfg`` (0 if we cannot model it: the tests then fail on it)."""
    try:
        return expected_size(load_model(cfg, "pjreddie"), 20)
    except ValueError:
        return 0


#: Cfgs small enough to write several copies of in CI.
LOADABLE = [cfg for cfg in ALL_CFGS if cfg.stem not in CANNOT_LOAD and _expected_size(cfg) <= ROUND_TRIP_LIMIT]


def _ids(cfg: Path) -> str:
    return cfg.stem


def _unchanged(slot: Slot, piece: np.ndarray) -> None:
    """An edit that changes nothing: the array still goes through the writer's edit path."""


def _zero_every_other() -> callable:
    """An edit zeroing the array's even-indexed elements, whatever the chunking."""
    seen = [0]

    def edit(slot: Slot, piece: np.ndarray) -> None:
        piece[(seen[0] % 2)::2] = 0
        seen[0] += piece.size
    return edit


def _nonzero(rng: np.random.Generator, count: int) -> np.ndarray:
    """Random float32 values, none exactly zero (so every zero is ours)."""
    values = rng.standard_normal(count, dtype=np.float32)
    values[values == 0] = 1
    return values


def test_upstream_ships_every_cfg():
    assert len(UPSTREAM_CFGS) >= 45
    assert len(LOADABLE) >= 25


@pytest.mark.parametrize("cfg", ALL_CFGS, ids=_ids)
def test_stock_size_and_byte_exact_round_trip(cfg, stock_saved, tmp_path):
    """Stock init+save has exactly our size; small files also go through
    our reader and writer (every weights array via the edit path) unchanged."""
    saved = stock_saved(cfg)
    model = load_model(cfg, "pjreddie")
    assert saved.size == expected_size(model, 20)
    if saved.path is None:  # vgg-16, yolov1, yolov3 ...: measured, not written
        return
    wf = WeightsFile(saved.path, model)
    assert (wf.header.major, wf.header.minor, wf.header.revision, wf.header.size) == (0, 2, 0, 20)
    assert (wf.partial, wf.trailing) == (False, 0)
    out = tmp_path / "copy.weights"
    write(wf, out, {slot.key: _unchanged for slot in wf.slots if slot.param.role == "weights"})
    assert filecmp.cmp(saved.path, out, shallow=False)


@pytest.mark.parametrize("cfg", ALL_CFGS, ids=_ids)
def test_flops_and_shapes_equal_what_stock_prints(cfg, stock_saved):
    """Per layer: the BFLOPs Darknet prints for each convolution (3 decimals)
    and the output shape it prints, where it prints one."""
    model = load_model(cfg, "pjreddie")
    printed = printed_layers(stock_saved(cfg).log)
    assert sorted(printed) == [layer.index for layer in model.layers]
    for layer in model.layers:
        convolutions = layer.type in ("convolutional", "crnn")
        ours = [f"{2 * p.count * p.macs / 1e9:.3f}" for p in layer.params if convolutions and p.role == "weights"]
        assert printed_bflops(printed[layer.index]) == ours, f"layer {layer.index} ({layer.type})"
        shape = printed_output(printed[layer.index])
        assert shape in (None, layer.output), f"layer {layer.index} ({layer.type})"
    assert model.flops == sum(layer.flops for layer in model.layers)


@pytest.mark.parametrize("cfg", LOADABLE, ids=_ids)
def test_stock_loader_sees_exactly_our_arrays(cfg, stock_tool, tmp_path):
    """Random values in every array (biases and batch-norm statistics
    included), every other weight zeroed by our writer: the stock loader holds
    our arrays bit for bit, our zeros included, and saves our file back."""
    model = load_model(cfg, "pjreddie")
    rng = np.random.default_rng(zlib.crc32(cfg.name.encode()))
    arrays = {(layer.index, p.name): _nonzero(rng, p.count) for layer in model.layers for p in layer.params}
    source, ours = tmp_path / "random.weights", tmp_path / "ours.weights"
    new_file(model, source, arrays, seen=123456789)
    write(WeightsFile(source, model), ours,
          {slot.key: _zero_every_other() for slot in WeightsFile(source, model).slots if slot.param.role == "weights"})

    stock_tool.resave(cfg, ours, tmp_path / "resaved.weights")
    assert filecmp.cmp(ours, tmp_path / "resaved.weights", shallow=False)

    theirs = stock_tool.dump(cfg, ours, tmp_path / "dump.bin")
    wf = WeightsFile(ours, model)
    assert list(theirs) == [slot.key for slot in wf.slots]
    for layer in model.layers:
        mine = {slot.param.name: wf.array(slot) for slot in wf.slots_of(layer.index)}
        zeros = sum((mine[p.name] == 0).sum() for p in layer.prunable())
        assert zeros == sum((p.count + 1) // 2 for p in layer.prunable())
        assert sum((theirs[layer.index, p.name] == 0).sum() for p in layer.prunable()) == zeros
        for name, values in mine.items():
            assert theirs[layer.index, name].tobytes() == values.tobytes(), f"layer {layer.index} {name}"


def test_stock_reads_transposed_connected_weights(stock_tool, tmp_path):
    """Major > 1000: pjreddie reads a 16-byte header and every connected
    matrix (rnn/gru/lstm ones included) as [inputs][outputs]; our reader
    gives the file's order and says so."""
    cfg = CFG_DIR / "pj_recurrent.cfg"
    model = load_model(cfg, "pjreddie")
    rng = np.random.default_rng(7)
    payload = [rng.standard_normal(p.count, dtype=np.float32) for layer in model.layers for p in layer.params]
    path = tmp_path / "transposed.weights"
    path.write_bytes(struct.pack("<3iI", 1001, 0, 3, 42) + b"".join(a.tobytes() for a in payload))

    wf = WeightsFile(path, model)
    assert (wf.header.size, wf.header.transposed, wf.header.seen) == (16, True, 42)
    theirs = stock_tool.dump(cfg, path, tmp_path / "dump.bin")
    for slot in wf.slots:
        mine = np.asarray(wf.array(slot))
        if slot.param.role == "weights":
            outputs, inputs = slot.param.shape
            mine = mine.reshape(inputs, outputs).T.ravel()
        assert theirs[slot.key].tobytes() == mine.astype(FLOAT).tobytes(), slot.key


def test_stock_cannot_load_deconvolutional(stock_tool, stock_saved, tmp_path):
    """Why ``pj_deconv`` is only sized and round-tripped: the upstream loader
    divides by the deconv layer's unset ``groups``."""
    cfg = CFG_DIR / "pj_deconv.cfg"
    assert stock_tool.load_signal(cfg, stock_saved(cfg).path, tmp_path / "x.weights") == signal.SIGFPE
