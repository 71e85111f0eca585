"""The top-level API: finding the cfg and choosing the fork."""
from __future__ import annotations

import struct

import pytest

import darknet_sparse as ds
from darknet_sparse.format.weightsfile import new_file, write, write_arrays

BATCHNORM_CFG = "[net]\nheight=4\nwidth=4\nchannels=3\n\n[convolutional]\nfilters=4\nsize=3\npad=1\n\n[batchnorm]\n"


@pytest.mark.parametrize("layout_fork, revision", [("alexeyab", 0), ("pjreddie", 5)])
def test_auto_fork_follows_the_layout_whose_size_matches(tmp_path, layout_fork, revision):
    """A [batchnorm] layer stores 3 arrays in pjreddie and 4 in AlexeyAB: the
    file size decides, even against a misleading header revision."""
    cfg = tmp_path / "m.cfg"
    cfg.write_text(BATCHNORM_CFG)
    weights = tmp_path / "m.weights"
    new_file(ds.load_model(cfg, layout_fork), weights)
    data = bytearray(weights.read_bytes())
    data[8:12] = struct.pack("<i", revision)
    weights.write_bytes(bytes(data))
    wf = ds.load(cfg, weights)
    assert wf.model.fork == layout_fork
    assert "only its layout matches the file size" in wf.model.notes[0]


def test_auto_fork_by_header_when_layouts_agree(tmp_path):
    cfg = tmp_path / "m.cfg"
    cfg.write_text(BATCHNORM_CFG.replace("[batchnorm]\n", ""))
    weights = tmp_path / "m.weights"
    new_file(ds.load_model(cfg, "alexeyab"), weights)
    assert ds.load(cfg, weights).model.notes == ["fork: alexeyab (header version 0.2.5)"]


def test_find_cfg_strips_suffixes(tmp_path):
    (tmp_path / "yolo.cfg").write_text("[net]\n")
    assert ds.find_cfg(tmp_path / "yolo.sparse.weights") == tmp_path / "yolo.cfg"
    with pytest.raises(ds.CfgError, match="none found beside it"):
        ds.find_cfg(tmp_path / "other.weights")


def test_the_writers_argument_errors_are_domain_errors(tmp_path):
    """Each is a DarknetSparseError (one Error: line in the CLI) and keeps
    the builtin type callers caught before."""
    cfg = tmp_path / "m.cfg"
    cfg.write_text(BATCHNORM_CFG.replace("[batchnorm]\n", ""))
    weights = tmp_path / "m.weights"
    model = ds.load_model(cfg, "pjreddie")
    new_file(model, weights)
    wf = ds.load(cfg, weights)
    cases = [
        (lambda: wf.slot(0, "scales"), KeyError, f"{weights}: layer 0 has no array 'scales'"),
        (lambda: write(wf, tmp_path / "o.weights", {(0, "biases"): None}), ValueError,
         "layer 0 array 'biases' has role 'biases': it is never edited"),
        (lambda: write_arrays(wf, tmp_path / "o.weights", {(0, "weights"): [1.0]}), ValueError,
         "layer 0 array 'weights' holds 108 floats, got 1"),
        (lambda: new_file(model, tmp_path / "o.weights", {(0, "weights"): [1.0]}), ValueError,
         "layer 0 array 'weights' holds 108 floats, got 1"),
    ]
    for call, builtin, message in cases:
        with pytest.raises(ds.DarknetSparseError) as caught:
            call()
        assert isinstance(caught.value, builtin) and str(caught.value) == message
    assert not (tmp_path / "o.weights").exists()
