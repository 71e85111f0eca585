"""What the patched AlexeyAB build saves (patches/alexeyab/0002-prune-threshold.patch).

- Without the options, byte for byte what stock saves: the fork's own
  initialisation, a load-and-save of a file, `darknet partial`.
- prune_threshold=T ([net], a layer's own value winning): every weight with
  |w| < T is written as 0; biases, batch-norm scales and statistics, [shortcut]
  weights and [implicit] parameters are written as they are.  With prune=1 the
  live weights are zeroed too (a second save without thresholds writes the
  same), with prune=0 only the file (the second save writes stock's).
- Training with prune_threshold and ema_alpha: the plain and the EMA saves are
  both thresholded.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import darknet_sparse as ds
from helpers.ab_darknet import CFGS, REPO, TINY_TRAIN, edit_cfg, run, write_detection_set
from helpers.ab_fixtures import ab  # noqa: F401

MIXED = REPO / "tests" / "data" / "ab" / "ab_mixed.cfg"
HEADER = 20  # AlexeyAB: major, minor, revision, 64-bit seen


def write_random(cfg: Path, like: Path, out: Path, scale: float = 0.1, seed: int = 0) -> Path:
    """A weights file for ``cfg``: the header of ``like``, then normal(0, scale) values in every array."""
    size = like.stat().st_size
    rng = np.random.default_rng(seed)
    values = rng.normal(0, scale, (size - HEADER) // 4).astype(np.float32)
    out.write_bytes(like.read_bytes()[:HEADER] + values.tobytes())
    return out


def arrays(cfg: Path, weights: Path) -> dict[tuple[int, str], tuple[str, np.ndarray]]:
    wf = ds.load(cfg, weights, fork="alexeyab")
    found = {}
    for layer in wf.model.layers:
        if layer.params:
            data = wf.arrays(layer.index)
            for p in layer.params:
                found[(layer.index, p.name)] = (p.role, np.array(data[p.name], dtype=np.float32))
    return found


@pytest.mark.parametrize("cfg", [CFGS / "yolov4-tiny.cfg", CFGS / "yolov7-tiny.cfg", MIXED], ids=lambda p: p.stem)
def test_saves_byte_identical_without_options(ab, tmp_path: Path, cfg: Path):  # noqa: F811
    plain = tmp_path / cfg.name
    text = cfg.read_text()
    if cfg == MIXED:  # without the options: no prune_threshold anywhere
        text = "\n".join(line for line in text.splitlines() if not line.startswith("prune_threshold")) + "\n"
    plain.write_text(text)
    saved = {}
    for name, tool, darknet in (("patched", ab.patched_tool, ab.patched), ("stock", ab.stock_tool, ab.stock)):
        run([tool, "init", plain, tmp_path / f"{name}.init", "7"], tmp_path, env={"AB_TOOL_TIME": "1000"})
        if name == "patched":
            write_random(plain, tmp_path / "patched.init", tmp_path / "random.weights")
        run([tool, "resave", plain, tmp_path / "random.weights", tmp_path / f"{name}.resave"], tmp_path)
        run([darknet, "partial", plain, tmp_path / "random.weights", tmp_path / f"{name}.partial", "5"], tmp_path)
        saved[name] = {kind: (tmp_path / f"{name}.{kind}").read_bytes() for kind in ("init", "resave", "partial")}
    for kind in ("init", "resave", "partial"):
        assert saved["patched"][kind] == saved["stock"][kind], kind
    assert saved["stock"]["resave"][HEADER:] == (tmp_path / "random.weights").read_bytes()[HEADER:]


@pytest.fixture(scope="module")
def mixed(ab, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    folder = tmp_path_factory.mktemp("ab_mixed")
    init = folder / "init.weights"
    run([ab.stock_tool, "init", MIXED, init], folder)
    return folder, write_random(MIXED, init, folder / "random.weights")


def thresholds() -> dict[int, float]:
    """The cfg's thresholds of the layers with prunable weights: layer 0 its own, the rest [net]'s."""
    return {0: 0.2, 1: 0.05, 3: 0.05, 4: 0.05, 5: 0.05}


def test_threshold_on_save(ab, mixed):  # noqa: F811
    folder, random = mixed
    out = folder / "thresholded.weights"
    run([ab.patched_tool, "resave", MIXED, random, out], folder)
    before, after = arrays(MIXED, random), arrays(MIXED, out)
    assert before.keys() == after.keys()
    checked = set()
    for (index, name), (role, values) in before.items():
        written = after[(index, name)][1]
        if role == "weights":
            t = thresholds()[index]
            expected = np.where(np.abs(values) < t, np.float32(0), values)
            assert np.array_equal(written, expected), (index, name)
            assert (written == 0).any() and (written != 0).any(), (index, name)
            checked.add(index)
        else:  # biases, scales, rolling statistics, shortcut weights, implicit: as they are
            assert np.array_equal(written, values), (index, name, role)
            assert (np.abs(values) < 0.05).any(), (index, name)  # some would have been zeroed
    assert checked == set(thresholds())


@pytest.mark.parametrize("prune", [1, 0])
def test_threshold_zeroes_live_weights_with_prune(ab, mixed, prune):  # noqa: F811
    folder, random = mixed
    cfg = folder / f"prune{prune}.cfg"
    cfg.write_text(edit_cfg(MIXED.read_text(), {"prune": prune}))
    first, second = folder / f"first{prune}.weights", folder / f"second{prune}.weights"
    run([ab.patched_tool, "save-twice", cfg, random, first, second], folder)
    stock = folder / "stock_resave.weights"
    run([ab.stock_tool, "resave", MIXED, random, stock], folder)
    assert first.read_bytes() != stock.read_bytes()
    # prune=1: the live weights were zeroed by the first save; prune=0: only its file.
    assert second.read_bytes() == (first if prune else stock).read_bytes()


def test_threshold_in_training_plain_and_ema_saves(ab, tmp_path: Path):  # noqa: F811
    """detector train with prune_threshold and ema_alpha: _final and _ema files
    hold no weight with 0 < |w| < T; biases that small are kept."""
    t = 0.02
    cfg = tmp_path / "y.cfg"
    cfg.write_text(edit_cfg((CFGS / "yolov4-tiny.cfg").read_text(),
                            dict(TINY_TRAIN, learning_rate=0.0001, prune_threshold=t, ema_alpha=0.5),
                            {"yolo": {"random": 0, "jitter": 0}}))
    dense = tmp_path / "dense.weights"
    run([ab.stock_tool, "init", cfg, dense], tmp_path)
    data_set = write_detection_set(tmp_path / "set")
    run([ab.patched, "detector", "train", data_set.data, cfg, dense, "-dont_show", "-nomap"], tmp_path)
    for name in ("y_final.weights", "y_ema.weights"):
        saved = arrays(cfg, data_set.backup / name)
        small_biases = 0
        for (index, pname), (role, values) in saved.items():
            assert np.isfinite(values).all()
            if role == "weights":
                assert not ((values != 0) & (np.abs(values) < t)).any(), (name, index, pname)
                assert (values != 0).any()
            elif role == "biases":
                small_biases += int(((values != 0) & (np.abs(values) < t)).sum())
        assert small_biases > 0, name
    shutil.rmtree(tmp_path / "set")
