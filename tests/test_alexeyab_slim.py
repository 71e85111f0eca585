"""[net] slim=λ in AlexeyAB's Darknet (patches/alexeyab/0004-slim.patch): the
L1 push on batch-norm scales of network slimming.

- One update of a training net with no gradient (``ab_tool update``) moves
  every convolutional γ by exactly -rate·λ·sign(γ) (float32 arithmetic as the
  fork's axpy does it; sign(0) = 0) and leaves γ alone with slim=0; the
  [connected] scales stay, since the fork never updates connected layers.
- `classifier train` with a large λ ends with smaller |γ| than without.
- A negative λ is one Error: line and exit status 2.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import darknet_sparse as ds
from helpers.ab_darknet import REPO, edit_cfg, run
from helpers.ab_fixtures import ab  # noqa: F401

DIGITS = REPO / "cfg" / "digits.cfg"
RATE, BATCH = 0.01, 16


def scales_by_layer(cfg: Path, weights: Path) -> dict[int, tuple[str, np.ndarray]]:
    wf = ds.load(cfg, weights, fork="alexeyab")
    return {layer.index: (layer.type, np.array(wf.arrays(layer.index)["scales"], dtype=np.float32))
            for layer in wf.model.layers if any(p.role == "scales" for p in layer.params)}


def with_random_scales(cfg: Path, weights: Path, out: Path) -> Path:
    """``weights`` with normal(0, 1) batch-norm scales, one of each layer exactly 0."""
    model = ds.load_model(cfg, fork="alexeyab")
    raw = bytearray(weights.read_bytes())
    rng, at = np.random.default_rng(5), 20
    for layer in model.layers:
        for p in layer.params:
            if p.role == "scales":
                values = rng.normal(0, 1, p.count).astype(np.float32)
                values[0] = 0
                raw[at:at + 4 * p.count] = values.tobytes()
            at += 4 * p.count
    out.write_bytes(bytes(raw))
    return out


@pytest.fixture(scope="module")
def start(ab, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("ab_slim")
    cfg = folder / "digits.cfg"
    cfg.write_text(edit_cfg(DIGITS.read_text(), {"batch": BATCH, "max_batches": 4, "learning_rate": RATE,
                                                "policy": "constant", "burn_in": 0}))
    init = folder / "init.weights"
    run([ab.stock_tool, "init", cfg, init], folder)
    return folder, cfg, with_random_scales(cfg, init, folder / "start.weights")


@pytest.mark.parametrize("slim", [0.5, 0.0])
def test_one_update_pushes_scales_by_rate_times_lambda(ab, start, slim):  # noqa: F811
    folder, cfg, weights = start
    slim_cfg = folder / f"slim{slim}.cfg"
    slim_cfg.write_text(edit_cfg(cfg.read_text(), {"slim": slim}))
    out = folder / f"updated{slim}.weights"
    run([ab.patched_tool, "update", slim_cfg, weights, out], folder)
    before, after = scales_by_layer(cfg, weights), scales_by_layer(cfg, out)
    kinds = set()
    for index, (kind, gamma) in before.items():
        got = after[index][1]
        kinds.add(kind)
        if kind == "convolutional":
            sign = np.sign(gamma).astype(np.float32)
            update = np.float32(0) - np.float32(slim) * np.float32(BATCH) * sign
            expected = gamma + np.float32(RATE) / np.float32(BATCH) * update
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
            assert np.array_equal(got == gamma, sign == 0) if slim else np.array_equal(got, gamma)
        else:  # the fork's update_network skips layers with l.train == 0: [connected] is one
            assert np.array_equal(got, gamma), (index, kind)
    assert kinds == {"convolutional", "connected"}


def test_training_with_slim_shrinks_scales(ab, start, digits: Path):  # noqa: F811
    folder, cfg, _ = start
    dense = folder / "init.weights"
    means = {}
    for slim in (0.0, 5.0):
        work = folder / f"train{slim}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        train_cfg = work / "t.cfg"
        train_cfg.write_text(edit_cfg(cfg.read_text(), {"slim": slim}))
        data = [line for line in digits.read_text().splitlines() if not line.startswith("backup")]
        (work / "set.data").write_text("\n".join(data + [f"backup={work}"]) + "\n")
        run([ab.patched, "classifier", "train", work / "set.data", train_cfg, dense, "-dont_show"], work)
        trained = scales_by_layer(cfg, work / "t_final.weights")
        values = np.concatenate([g for kind, g in trained.values() if kind == "convolutional"])
        assert np.isfinite(values).all()
        means[slim] = float(np.abs(values).mean())
    assert means[5.0] < means[0.0] - 0.2, means


def test_a_negative_lambda_is_one_error_line(ab, start):  # noqa: F811
    folder, cfg, weights = start
    bad = folder / "bad.cfg"
    bad.write_text(edit_cfg(cfg.read_text(), {"slim": -1}))
    import subprocess
    done = subprocess.run([str(ab.patched_tool), "update", str(bad), str(weights), str(folder / "x.weights")],
                          capture_output=True, text=True, cwd=folder)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: slim: [net] slim=-1: expected a finite number >= 0"]
