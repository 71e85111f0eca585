"""Sparsity schedules: the formulas, their end points, bad input."""
from __future__ import annotations

import itertools

import pytest

from darknet_sparse.errors import PolicyError
from darknet_sparse.pruning.schedule import agp, explicit, linear, targets


def test_agp_is_zhu_and_gupta_cubic():
    # s_t = s_f + (s_i - s_f) (1 - t/n)^3 with s_i = 0, s_f = 0.9, n = 4
    assert agp(0.9, 4) == pytest.approx([0.9 - 0.9 * 0.75 ** 3, 0.9 - 0.9 * 0.5 ** 3, 0.9 - 0.9 * 0.25 ** 3, 0.9])
    assert agp(0.9, 4) == pytest.approx([0.5203125, 0.7875, 0.8859375, 0.9])


def test_agp_from_an_initial_sparsity():
    assert agp(0.8, 2, initial=0.4) == pytest.approx([0.8 - 0.4 * 0.125, 0.8])


def test_linear_steps_are_equal():
    assert linear(0.9, 3) == pytest.approx([0.3, 0.6, 0.9])
    assert linear(0.9, 3, initial=0.6) == pytest.approx([0.7, 0.8, 0.9])


@pytest.mark.parametrize("rule", [agp, linear])
@pytest.mark.parametrize("steps", [1, 2, 5, 17])
def test_last_step_is_exactly_the_final_sparsity_and_none_decreases(rule, steps):
    values = rule(0.93, steps)
    assert len(values) == steps and values[-1] == 0.93
    assert all(a <= b for a, b in itertools.pairwise(values))


def test_agp_front_loads_the_pruning():
    assert all(a > b for a, b in zip(agp(0.9, 5), linear(0.9, 5)[:-1]))


def test_targets_by_name():
    assert targets(0.9, 3, "linear") == linear(0.9, 3)
    assert targets(0.9, 3) == agp(0.9, 3)
    with pytest.raises(PolicyError, match="unknown schedule 'cubic': expected one of agp, linear"):
        targets(0.9, 3, "cubic")


@pytest.mark.parametrize("final, steps, initial, message", [
    (1.0, 3, 0.0, r"final sparsity 1.0 outside \[0, 1\)"),
    (-0.1, 3, 0.0, r"final sparsity -0.1 outside \[0, 1\)"),
    (0.9, 0, 0.0, "steps 0 must be a whole number >= 1"),
    (0.9, 2.5, 0.0, "steps 2.5 must be a whole number >= 1"),
    (0.9, True, 0.0, "steps True must be a whole number >= 1"),
    (0.5, 3, 0.6, "initial sparsity 0.6 above the final sparsity 0.5"),
])
def test_bad_schedules_are_refused(final, steps, initial, message):
    with pytest.raises(PolicyError, match=message):
        agp(final, steps, initial)


def test_explicit_targets():
    assert explicit([0.5, 0.7, 0.7, 0.9]) == [0.5, 0.7, 0.7, 0.9]
    with pytest.raises(PolicyError, match="must not decrease: 0.7 then 0.5"):
        explicit([0.7, 0.5])
    with pytest.raises(PolicyError, match=r"step sparsity 1.2 outside \[0, 1\)"):
        explicit([0.5, 1.2])
    with pytest.raises(PolicyError, match="no step sparsities given"):
        explicit([])
