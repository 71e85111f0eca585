"""The exact magnitude quantile behind magnitude and global pruning: sampled
bracket, one counting pass, and the radix fallback when the sample misleads."""
from __future__ import annotations

import numpy as np
import pytest

import darknet_sparse as ds
from darknet_sparse.format import stats
from tiny_models import write_model

#: Two connected layers large enough (12288*32 and 32*64 weights) for the
#: sampled path of kth_smallest_abs.
WIDE_CFG = """\
[net]
batch=1
height=64
width=64
channels=3

[connected]
output=32
activation=leaky

[connected]
output=64
activation=linear
"""


@pytest.fixture
def wide(tmp_path):
    """Weights with ties, zeros of both signs, NaN and Inf mixed in."""
    cfg, weights = write_model(tmp_path, "wide", WIDE_CFG)
    wf = ds.load(cfg, weights)
    rng = np.random.default_rng(7)
    arrays = {}
    for slot in _weights(wf):
        values = np.array(wf.array(slot))
        values[rng.integers(0, values.size, 500)] = 0.0
        values[rng.integers(0, values.size, 500)] = -0.0
        values[rng.integers(0, values.size, 2000)] = np.float32(0.05)
        values[:3] = [np.nan, np.inf, -np.inf]
        arrays[slot.key] = values
    odd = tmp_path / "odd.weights"
    ds.format.weightsfile.write_arrays(wf, odd, arrays)
    return ds.load(cfg, odd)


def _expected(wf, slots, k: int) -> float:
    values = np.concatenate([np.abs(np.array(wf.array(slot))) for slot in slots])
    return float(np.sort(values.view(np.uint32))[k].view(np.float32))


def _weights(wf):
    return [slot for slot in wf.slots if slot.param.role == "weights"]


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.3, 0.5, 0.9, 0.999])
def test_kth_of_one_array_equals_sorting(wide, fraction):
    slot = wide.slot(0, "weights")
    k = round(fraction * slot.param.count)
    assert stats._bracket(wide, [slot], k, slot.param.count) != (0, 0xFFFFFFFF)  # the sampled path
    assert stats.kth_smallest_abs(wide, [slot], k) == _expected(wide, [slot], k)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.75])
def test_kth_over_several_arrays_equals_sorting(wide, fraction):
    slots = _weights(wide)
    k = round(fraction * sum(slot.param.count for slot in slots))
    assert stats.kth_smallest_abs(wide, slots, k) == _expected(wide, slots, k)


@pytest.mark.parametrize("wrong", ["below", "above"])
def test_a_misleading_sample_still_gives_the_exact_answer(wide, monkeypatch, wrong):
    slots = _weights(wide)
    k = sum(slot.param.count for slot in slots) // 2
    answer = int(np.float32(_expected(wide, slots, k)).view(np.uint32))
    bracket = (answer + 1, answer + 1000) if wrong == "above" else (1, answer - 1)
    monkeypatch.setattr(stats, "_bracket", lambda *args: bracket)
    assert stats.kth_smallest_abs(wide, slots, k) == _expected(wide, slots, k)


def test_k_outside_the_arrays(wide):
    slot = wide.slot(0, "weights")
    with pytest.raises(ValueError, match="outside"):
        stats.kth_smallest_abs(wide, [slot], slot.param.count)
