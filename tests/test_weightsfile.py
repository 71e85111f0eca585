"""The .weights reader and writer: headers, partial and damaged files,
trailing bytes, atomic output, and random round trips (hypothesis)."""
from __future__ import annotations

import hashlib
import io
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darknet_sparse import OutputError, WeightsFormatError, build_model, parse_cfg
from darknet_sparse.format.files import load_model
from darknet_sparse.format import weightsfile
from darknet_sparse.format.weightsfile import (FLOAT, WeightsFile, expected_size, new_file, read_header, write, write_arrays)
from helpers.stock import CFG_DIR, UPSTREAM_CFG_DIR

SMALL = """\
[net]
height=6
width=6
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=3
size=1
activation=linear

[connected]
batch_normalize=1
output=5
activation=leaky

[connected]
output=2
activation=linear
"""


@pytest.fixture
def model(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "small.cfg"
    cfg.write_text(SMALL)
    return load_model(cfg, "pjreddie")


def _bits(rng: np.random.Generator, count: int) -> np.ndarray:
    """Arbitrary float32 bit patterns, NaNs and infinities included."""
    return rng.integers(0, 2**32, count, dtype=np.uint32).view(FLOAT)


def _random_arrays(model, seed: int = 0) -> dict[tuple[int, str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return {(layer.index, p.name): _bits(rng, p.count) for layer in model.layers for p in layer.params}


def _payload(model, arrays) -> bytes:
    return b"".join(arrays[layer.index, p.name].tobytes() for layer in model.layers for p in layer.params)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- headers


@pytest.mark.parametrize("major,minor,fork,seen_bytes,transposed", [
    (0, 0, "pjreddie", 4, False), (0, 1, "pjreddie", 4, False), (0, 1, "alexeyab", 4, False),
    (0, 2, "pjreddie", 8, False), (0, 2, "alexeyab", 8, False), (1, 0, "pjreddie", 8, False),
    (1000, 0, "pjreddie", 4, False), (1000, 0, "alexeyab", 8, False),
    (1001, 0, "pjreddie", 4, True), (1001, 0, "alexeyab", 8, True),
    (0, 1001, "pjreddie", 4, True), (0, 1001, "alexeyab", 8, True),
])
def test_header_rules(major, minor, fork, seen_bytes, transposed):
    data = struct.pack("<3iQ", major, minor, 7, 0x0102030405060708)
    header = read_header(data, "x.weights", fork)
    assert (header.size, header.transposed, header.revision) == (12 + seen_bytes, transposed, 7)
    assert header.seen == (0x0102030405060708 if seen_bytes == 8 else 0x05060708)
    assert header.to_bytes() == data[:header.size]


def test_header_too_short():
    with pytest.raises(WeightsFormatError, match=r"x.weights: 11 bytes is too short for a weights header"):
        read_header(b"\0" * 11, "x.weights", "pjreddie")
    with pytest.raises(WeightsFormatError, match=r"x.weights: header needs 20 bytes, file has 16"):
        read_header(struct.pack("<3iI", 0, 2, 0, 0), "x.weights", "pjreddie")


@pytest.mark.parametrize("fork,version", [("pjreddie", (0, 2, 0)), ("alexeyab", (0, 2, 5))])
def test_new_file_header_is_what_each_fork_saves(model, tmp_path, fork, version):
    model = build_model([model.net] + [layer.section for layer in model.layers], fork)
    path = tmp_path / "new.weights"
    new_file(model, path, seen=12345)
    assert path.read_bytes()[:20] == struct.pack("<3iQ", *version, 12345)
    assert path.stat().st_size == expected_size(model, 20)


def test_sixteen_byte_header_round_trip(model, tmp_path):
    """A (0, 1, 0) file has a 32-bit seen; both are kept as they are."""
    arrays = _random_arrays(model)
    path = tmp_path / "old.weights"
    path.write_bytes(struct.pack("<3iI", 0, 1, 0, 0xFFFFFFFF) + _payload(model, arrays))
    wf = WeightsFile(path, model)
    assert (wf.header.size, wf.header.seen, wf.partial, wf.trailing) == (16, 0xFFFFFFFF, False, 0)
    for (index, name), values in arrays.items():
        assert wf.arrays(index)[name].tobytes() == values.tobytes()
    write(wf, tmp_path / "copy.weights", {slot.key: lambda slot, piece: None for slot in wf.slots
                                          if slot.param.role == "weights"})
    assert (tmp_path / "copy.weights").read_bytes() == path.read_bytes()


def test_transposed_header_length_depends_on_the_fork(model, tmp_path):
    """major > 1000: pjreddie reads a 4-byte seen, AlexeyAB an 8-byte one,
    so the same file fits the cfg under one fork only."""
    arrays = _random_arrays(model)
    path = tmp_path / "transposed.weights"
    path.write_bytes(struct.pack("<3iI", 1001, 0, 0, 9) + _payload(model, arrays))
    wf = WeightsFile(path, model)
    assert (wf.header.size, wf.header.transposed, wf.trailing) == (16, True, 0)
    last = wf.slot(4, "weights")
    assert wf.array(last).tobytes() == arrays[4, "weights"].tobytes()  # as in the file: [inputs][outputs]
    write(wf, tmp_path / "copy.weights", {last.key: lambda slot, piece: None})
    assert (tmp_path / "copy.weights").read_bytes() == path.read_bytes()

    alexeyab = build_model([model.net] + [layer.section for layer in model.layers], "alexeyab")
    with pytest.raises(WeightsFormatError, match=r"ends inside layer 4 \(connected, .*\): expected 12 floats, "
                                                 r"found 11"):
        WeightsFile(path, alexeyab)
    path.write_bytes(struct.pack("<3iQ", 1001, 0, 0, 9) + _payload(model, arrays))
    assert WeightsFile(path, alexeyab).header.size == 20


def test_seen_is_kept_by_every_write(model, tmp_path):
    path, out = tmp_path / "a.weights", tmp_path / "b.weights"
    new_file(model, path, _random_arrays(model), seen=2**40 + 3)
    wf = WeightsFile(path, model)
    write_arrays(wf, out, {(0, "weights"): np.zeros(108, FLOAT)})
    assert WeightsFile(out, model).header.seen == 2**40 + 3
    assert out.read_bytes()[:20] == path.read_bytes()[:20]


# ------------------------------------------------- partial, short and long files


def _boundaries(model) -> list[tuple[int, int]]:
    """(byte offset, index of the first layer not held) for every way of
    ending a file on a layer boundary after at least one layer."""
    offset, out = 20, []
    for layer in model.layers:
        if layer.params and offset > 20:
            out.append((offset, layer.index))
        offset += 4 * layer.param_count
    return out


def test_partial_files_end_on_a_layer_boundary(model, tmp_path):
    arrays = _random_arrays(model)
    new_file(model, tmp_path / "full.weights", arrays)
    full = (tmp_path / "full.weights").read_bytes()
    assert _boundaries(model) == [(20 + 4 * 124, 2), (20 + 4 * 139, 3), (20 + 4 * (139 + 5 * 27 + 20), 4)]
    for end, first_missing in _boundaries(model):
        path = tmp_path / "partial.weights"
        path.write_bytes(full[:end])
        wf = WeightsFile(path, model)
        assert (wf.partial, wf.layers_present, wf.trailing) == (True, first_missing, 0)
        assert {slot.layer.index for slot in wf.slots} == {i for i in range(first_missing) if model.layers[i].params}
        for slot in wf.slots:
            assert wf.array(slot).tobytes() == arrays[slot.key].tobytes()
        out = tmp_path / "out.weights"
        write(wf, out, {(0, "weights"): lambda slot, piece: piece.fill(0)})
        weights = wf.slot(0, "weights")
        assert out.read_bytes() == full[:weights.offset] + bytes(4 * 108) + full[weights.end:end]


def test_header_only_file_is_partial_with_no_layers(model, tmp_path):
    path = tmp_path / "empty.weights"
    path.write_bytes(struct.pack("<3iQ", 0, 2, 0, 0))
    wf = WeightsFile(path, model)
    assert (wf.partial, wf.layers_present, wf.slots) == (True, 0, [])


def test_darknet53_conv_74_prefix():
    """The published darknet53.conv.74 size is a partial file of darknet53.cfg
    (a sparse file: nothing but its header is written)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "darknet53.conv.74"
        with open(path, "wb") as fp:
            fp.write(struct.pack("<3iQ", 0, 2, 0, 32013312))
            fp.truncate(162_482_580)
        wf = WeightsFile(path, load_model(UPSTREAM_CFG_DIR / "darknet53.cfg", "pjreddie"))
        assert (wf.partial, wf.layers_present, wf.trailing) == (True, 76, 0)
        assert wf.slots[-1].layer.index == 73


def test_a_file_ending_inside_a_layer_is_an_error(model, tmp_path):
    new_file(model, tmp_path / "full.weights", _random_arrays(model))
    full = (tmp_path / "full.weights").read_bytes()
    path = tmp_path / "short.weights"
    path.write_bytes(full[:20 + 4 * 130])  # 6 of layer 2's 15 floats
    cfg = re.escape(str(model.layers[2].section.where()))
    with pytest.raises(WeightsFormatError, match=rf"short.weights: ends inside layer 2 \(convolutional, {cfg}\): "
                                                 rf"expected 15 floats, found 6 \(file is 540 bytes, the cfg "
                                                 rf"needs {len(full)} bytes\)"):
        WeightsFile(path, model)


def test_trailing_bytes_are_reported_and_kept(model, tmp_path):
    arrays = _random_arrays(model)
    path = tmp_path / "long.weights"
    new_file(model, path, arrays)
    with open(path, "ab") as fp:
        fp.write(b"\x01junk\x00!")
    wf = WeightsFile(path, model)
    assert (wf.partial, wf.trailing) == (False, 7)
    out = tmp_path / "out.weights"
    write_arrays(wf, out, {(4, "weights"): np.ones(10, FLOAT)})
    data = out.read_bytes()
    assert data.endswith(b"\x01junk\x00!") and len(data) == path.stat().st_size
    assert WeightsFile(out, model).arrays(4)["weights"].tolist() == [1.0] * 10


# ------------------------------------------------------------------ writing


def test_protected_roles_and_unknown_arrays(model, tmp_path):
    path = tmp_path / "a.weights"
    new_file(model, path)
    wf = WeightsFile(path, model)
    with pytest.raises(ValueError, match=r"layer 0 array 'rolling_mean' has role 'rolling_mean': it is never edited"):
        write(wf, tmp_path / "b.weights", {(0, "rolling_mean"): lambda slot, piece: None})
    with pytest.raises(KeyError, match=r"layer 1 has no array 'weights'"):
        write(wf, tmp_path / "b.weights", {(1, "weights"): lambda slot, piece: None})
    with pytest.raises(ValueError, match=r"layer 0 array 'weights' holds 108 floats, got 3"):
        write_arrays(wf, tmp_path / "b.weights", {(0, "weights"): np.zeros(3)})
    assert not (tmp_path / "b.weights").exists()


def test_output_must_not_be_the_input_unless_in_place(model, tmp_path):
    path = tmp_path / "a.weights"
    new_file(model, path, _random_arrays(model))
    wf = WeightsFile(path, model)
    with pytest.raises(OutputError, match="output is the input file"):
        write(wf, path, {})
    write_arrays(wf, path, {(2, "weights"): np.full(12, 2.0)}, in_place=True)
    assert WeightsFile(path, model).arrays(2)["weights"].tolist() == [2.0] * 12
    with pytest.raises(OutputError, match="does not exist"):
        write(wf, tmp_path / "nowhere" / "b.weights")


def test_a_failed_write_leaves_everything_as_it_was(model, tmp_path):
    """The edit fails half way: the old target stays, no temporary file is
    left, and the input is untouched."""
    path, target = tmp_path / "a.weights", tmp_path / "b.weights"
    new_file(model, path, _random_arrays(model))
    target.write_bytes(b"the old target")
    before = _sha(path)

    def explode(slot, piece):
        raise RuntimeError("edit failed")

    wf = WeightsFile(path, model)
    with pytest.raises(RuntimeError, match="edit failed"):
        write(wf, target, {(0, "weights"): lambda slot, piece: piece.fill(0), (3, "weights"): explode})
    assert target.read_bytes() == b"the old target"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.weights", "b.weights"]
    assert _sha(path) == before


def test_a_short_write_never_replaces_the_target(model, tmp_path, monkeypatch):
    """A disk that fills up lets one write come back short before failing:
    such a file must not replace the target."""

    class ShortWrites(io.FileIO):
        def write(self, data):
            return super().write(memoryview(data).cast("B")[:max(1, len(memoryview(data).cast("B")) // 2)])

    path, target = tmp_path / "a.weights", tmp_path / "b.weights"
    new_file(model, path, _random_arrays(model))
    target.write_bytes(b"the old target")
    def short_open(file, mode="r", buffering=-1):
        return ShortWrites(file, "wb") if mode == "wb" else open(file, mode, buffering)

    monkeypatch.setattr(weightsfile, "open", short_open, raising=False)
    with pytest.raises(OutputError, match=r"b.weights: wrote \d+ bytes instead of \d+"):
        write(WeightsFile(path, model), target, {(3, "weights"): lambda slot, piece: piece.fill(0)})
    with pytest.raises(OutputError, match=r"c.weights: wrote \d+ bytes instead of \d+"):
        new_file(model, tmp_path / "c.weights")
    assert target.read_bytes() == b"the old target"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.weights", "b.weights"]


# --------------------------------------------------------------- hypothesis

# Every channel count stays even, so groups=2 always divides it.
_CONV = st.fixed_dictionaries({"type": st.just("convolutional"), "filters": st.sampled_from([2, 4, 6]),
                               "size": st.sampled_from([1, 3]), "stride": st.integers(1, 2),
                               "batch_normalize": st.integers(0, 1), "groups": st.sampled_from([1, 2])})
_CONNECTED = st.fixed_dictionaries({"type": st.just("connected"), "output": st.sampled_from([2, 4, 8]),
                                    "batch_normalize": st.integers(0, 1)})
_POOL = st.fixed_dictionaries({"type": st.just("maxpool"), "size": st.just(2), "stride": st.just(2)})


@st.composite
def models(draw):
    """A small random cfg of convolutional, connected and maxpool layers."""
    fork = draw(st.sampled_from(["pjreddie", "alexeyab"]))
    lines = ["[net]", f"height={draw(st.integers(1, 9))}", f"width={draw(st.integers(1, 9))}",
             f"channels={draw(st.sampled_from([2, 4]))}"]
    for layer in draw(st.lists(st.one_of(_CONV, _CONNECTED, _POOL), min_size=1, max_size=5)):
        lines.append(f"[{layer['type']}]")
        lines += [f"{key}={value}" for key, value in layer.items() if key != "type"]
        lines += ["pad=1"] if layer["type"] == "convolutional" else []
    return build_model(parse_cfg("\n".join(lines), "random.cfg"), fork)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_models_round_trip(data):
    """new_file -> WeightsFile gives back every array bit for bit (NaNs
    included), in pieces of any size too."""
    model = data.draw(models())
    arrays = _random_arrays(model, data.draw(st.integers(0, 2**32 - 1)))
    chunk = data.draw(st.integers(1, 9))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.weights"
        new_file(model, path, arrays, seen=data.draw(st.integers(0, 2**64 - 1)))
        wf = WeightsFile(path, model)
        assert (wf.partial, wf.trailing, wf.size) == (False, 0, expected_size(model, 20))
        assert [slot.key for slot in wf.slots] == list(arrays)
        for slot in wf.slots:
            assert wf.array(slot).tobytes() == arrays[slot.key].tobytes()
            assert b"".join(piece.tobytes() for piece in wf.chunks(slot, chunk)) == arrays[slot.key].tobytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_edits_change_only_the_edited_arrays(data):
    model = data.draw(models())
    arrays = _random_arrays(model, data.draw(st.integers(0, 2**32 - 1)))
    with tempfile.TemporaryDirectory() as folder:
        path, out = Path(folder) / "in.weights", Path(folder) / "out.weights"
        new_file(model, path, arrays, seen=77)
        with open(path, "ab") as fp:
            fp.write(data.draw(st.binary(max_size=6)))
        wf = WeightsFile(path, model)
        keys = [slot.key for slot in wf.slots if slot.param.role == "weights"]
        edited = data.draw(st.lists(st.sampled_from(keys), unique=True) if keys else st.just([]))
        write(wf, out, {key: lambda slot, piece: np.negative(piece, out=piece) for key in edited},
              chunk=data.draw(st.integers(1, 9)))
        before, after = path.read_bytes(), out.read_bytes()
        assert len(after) == len(before)
        assert after[:20] == before[:20] and after[wf.payload_end:] == before[wf.payload_end:]
        result = WeightsFile(out, model)
        for slot in wf.slots:
            want = -arrays[slot.key] if slot.key in edited else arrays[slot.key]
            assert result.array(slot).tobytes() == want.tobytes(), slot.key


def test_load_finds_the_cfg_beside_the_weights(tmp_path):
    """``load(None, weights)`` looks for MODEL.cfg beside MODEL[.sparse].weights."""
    from darknet_sparse.format.files import load
    cfg = tmp_path / "model.cfg"
    cfg.write_text((CFG_DIR / "pj_local.cfg").read_text())
    new_file(load_model(cfg, "pjreddie"), tmp_path / "model.sparse.weights")
    assert load(None, tmp_path / "model.sparse.weights").model.param_count == load_model(cfg).param_count
