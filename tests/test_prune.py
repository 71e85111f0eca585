"""Semantics of every pruning policy, checked against plain numpy."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import darknet_sparse as ds
from darknet_sparse.pruning import policies
from darknet_sparse.pruning.policies import Absolute, Global, Magnitude, Sensitivity, Triangle
from darknet_sparse.errors import OutputError, PolicyError, WeightsFormatError
from darknet_sparse.pruning.prune import threshold
from darknet_sparse.format.weightsfile import write_arrays
from tiny_models import write_model

PROTECTED = ("biases", "scales", "rolling_mean", "rolling_variance")


@pytest.fixture
def small(tmp_path):
    cfg, weights = write_model(tmp_path)
    return ds.load(cfg, weights)


def arrays_of(wf):
    return {slot.key: np.array(wf.array(slot)) for slot in wf.slots}


def pruned(wf, tmp_path, *policy, **options):
    out = tmp_path / "out.weights"
    result = threshold(wf, out, *policy, **options)
    return result, ds.load(wf.model.path, out)


def check_protected_and_header(before, after):
    """Biases and BN arrays are bit-identical; so are the header bytes."""
    assert after.path.read_bytes()[:20] == before.path.read_bytes()[:20]
    for slot in before.slots:
        if slot.param.role in PROTECTED:
            assert np.array_equal(before.array(slot).view(np.uint32), after.array(slot).view(np.uint32))


def test_absolute_zeroes_exactly_below_threshold(small, tmp_path):
    result, out = pruned(small, tmp_path, Absolute(0.05))
    for slot in small.slots:
        old, new = np.array(small.array(slot)), np.array(out.array(slot))
        if slot.param.role == "weights":
            below = np.abs(old) < 0.05
            assert np.all(new[below] == 0) and np.array_equal(new[~below], old[~below])
        else:
            assert np.array_equal(new, old)
    check_protected_and_header(small, out)
    assert result.zeros_after == sum(int(np.count_nonzero(np.abs(small.array(s)) < 0.05))
                                     for s in small.slots if s.param.role == "weights")


def test_magnitude_reaches_the_same_sparsity_in_every_array(small, tmp_path):
    result, out = pruned(small, tmp_path, Magnitude(0.6))
    for slot in out.slots:
        if slot.param.role == "weights":
            zeros = np.count_nonzero(out.array(slot) == 0)
            assert zeros == round(0.6 * slot.param.count)
    assert all(a.level == "sparsity 0.6" for a in result.arrays)
    check_protected_and_header(small, out)


def test_magnitude_keeps_the_largest_weights(small, tmp_path):
    _, out = pruned(small, tmp_path, Magnitude(0.5))
    for slot in small.slots:
        if slot.param.role == "weights":
            old, new = np.abs(small.array(slot)), np.array(out.array(slot))
            assert np.abs(old[new == 0]).max() <= np.abs(old[new != 0]).min()


def test_sensitivity_uses_each_arrays_std(small, tmp_path):
    result, out = pruned(small, tmp_path, Sensitivity(0.5))
    by_key = {(a.layer, a.name): a for a in result.arrays}
    for slot in small.slots:
        if slot.param.role == "weights":
            old = np.array(small.array(slot), np.float64)
            t = 0.5 * old.std()
            assert by_key[slot.key].threshold == pytest.approx(t, rel=1e-6)
            assert np.count_nonzero(out.array(slot) == 0) == np.count_nonzero(np.abs(old) < np.float32(t))


def test_triangle_rises_linearly_towards_the_output(small, tmp_path):
    result, out = pruned(small, tmp_path, Triangle(0.2, 0.8))
    layers = [s for s in out.slots if s.param.role == "weights"]
    expected = np.linspace(0.2, 0.8, len(layers))
    for slot, target in zip(layers, expected):
        assert np.count_nonzero(out.array(slot) == 0) == round(target * slot.param.count)


def test_global_reaches_the_total_with_one_threshold(small, tmp_path):
    result, out = pruned(small, tmp_path, Global(0.7))
    total = sum(s.param.count for s in small.slots if s.param.role == "weights")
    assert result.zeros_after == round(0.7 * total)
    assert len({a.threshold for a in result.arrays}) == 1
    sparsities = [a.sparsity for a in result.arrays]
    assert max(sparsities) - min(sparsities) > 0.05  # layers end at their own levels


def test_spec_index_beats_range_beats_type(small, tmp_path):
    spec = {"default": 0.1, "layers": {"connected": 0.3, "2-3": 0.5, "3": "skip", "0": {"threshold": 0.0}}}
    result, out = pruned(small, tmp_path, Magnitude(0.9), spec=spec)
    level = {a.layer: a.level for a in result.arrays}
    assert level == {0: "|w| < 0", 2: "sparsity 0.5", 3: "skip", 4: "sparsity 0.3"}
    assert np.count_nonzero(out.arrays(3)["weights"] == 0) == 0
    assert np.count_nonzero(out.arrays(0)["weights"] == 0) == 0


def test_exclude_first_and_types(small, tmp_path):
    result, _ = pruned(small, tmp_path, Magnitude(0.5), exclude="first,connected")
    assert {a.layer for a in result.arrays if a.level != "skip"} == {2}


def test_exclude_heads_skips_layers_feeding_yolo(tmp_path):
    cfg_text = "[net]\nheight=8\nwidth=8\nchannels=3\n\n[convolutional]\nfilters=4\nsize=3\npad=1\n\n" \
               "[convolutional]\nfilters=18\nsize=1\n\n[yolo]\nmask=0,1,2\nanchors=1,1,2,2,3,3\nclasses=1\nnum=3\n"
    cfg, weights = write_model(tmp_path, "det", cfg_text)
    result = threshold(ds.load(cfg, weights), None, Magnitude(0.5), exclude="heads")
    assert {a.layer: a.level for a in result.arrays} == {0: "sparsity 0.5", 1: "skip"}


def test_spec_files_yaml_and_toml_agree(small, tmp_path):
    (tmp_path / "a.yaml").write_text("layers:\n  '2-3': 0.5\n  connected: skip\n")
    (tmp_path / "a.toml").write_text("[layers]\n\"2-3\" = 0.5\nconnected = \"skip\"\n")
    assert policies.read_spec(tmp_path / "a.yaml") == policies.read_spec(tmp_path / "a.toml")


@pytest.mark.parametrize("spec, message", [
    ({"layers": {"7": 0.5}}, "matches no layer"),
    ({"layers": {"0": 1.5}}, "outside [0, 1)"),
    ({"layers": {"0": {"threshold": -1}}}, "finite number >= 0"),
    ({"layers": {"0": "prune-hard"}}, "is not a sparsity"),
])
def test_bad_specs_are_policy_errors(small, spec, message):
    with pytest.raises(PolicyError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        threshold(small, None, Magnitude(0.5), spec=spec)


@pytest.mark.parametrize("policy, message", [
    (lambda: Magnitude(1.0), r"outside \[0, 1\)"),
    (lambda: Magnitude(-0.1), r"outside \[0, 1\)"),
    (lambda: None, r"give a policy \(Absolute\(t\), .*\), a spec, or both"),
    (lambda: Absolute(float("nan")), "finite"),
    (lambda: Triangle(0.2, 1.0), r"end 1.0 outside \[0, 1\)"),
    (lambda: "bogus", "unknown mode 'bogus': expected a policy"),
])
def test_bad_levels_are_policy_errors(small, policy, message):
    with pytest.raises(PolicyError, match=message):
        threshold(small, None, policy())


def test_exact_zeros_keep_their_bytes_and_nans_are_counted(small, tmp_path):
    slot = small.slot(0, "weights")
    values = np.array(small.array(slot))
    values[:3] = [-0.0, np.nan, np.inf]
    src = tmp_path / "odd.weights"
    write_arrays(small, src, {slot.key: values})
    odd = ds.load(small.model.path, src)
    result, out = pruned(odd, tmp_path, Absolute(0.05))
    new = np.array(out.array(out.slot(0, "weights")))
    assert new[:3].view(np.uint32).tolist() == values[:3].view(np.uint32).tolist()
    assert result.nonfinite == 2 and any("NaN or Inf" in n for n in result.notes)
    target = tmp_path / "strict.weights"
    with pytest.raises(WeightsFormatError, match="layer 0 .*2 NaN or Inf"):
        threshold(odd, target, Absolute(0.05), strict=True)
    assert not target.exists()


def test_dry_run_writes_nothing(small, tmp_path):
    out = tmp_path / "never.weights"
    result = threshold(small, out, Magnitude(0.5), dry_run=True)
    assert not out.exists() and result.output is None and result.zeros_after > 0


def test_output_equal_to_input_needs_in_place_and_backup_keeps_original(small, tmp_path):
    original = small.path.read_bytes()
    with pytest.raises(OutputError, match="--in-place"):
        threshold(small, small.path, Absolute(0.05))
    assert small.path.read_bytes() == original
    threshold(small, small.path, Absolute(0.05), in_place=True, backup=True)
    assert small.path.with_name(small.path.name + ".bak").read_bytes() == original
    assert small.path.read_bytes() != original


def test_partial_and_trailing_bytes_are_kept_and_reported(small, tmp_path):
    data = small.path.read_bytes()
    tail = tmp_path / "tail.weights"
    tail.write_bytes(data + b"extra")
    result, out = pruned(ds.load(small.model.path, tail), tmp_path, Absolute(0.05))
    assert out.path.read_bytes().endswith(b"extra") and any("5 trailing bytes" in n for n in result.notes)
    cut = small.slots_of(3)[0].offset
    part = tmp_path / "part.weights"
    part.write_bytes(data[:cut])
    result, out = pruned(ds.load(small.model.path, part), tmp_path, Absolute(0.05))
    assert out.size == cut and any("partial file" in n for n in result.notes)
    assert {a.layer for a in result.arrays} == {0, 2}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), t=st.floats(0, 0.3), s=st.floats(0, 0.99))
def test_streamed_result_equals_numpy_reference(tmp_path_factory, seed, t, s):
    folder = tmp_path_factory.mktemp("h")
    cfg, weights = write_model(folder, seed=seed)
    wf = ds.load(cfg, weights)
    for policy in (Absolute(t), Magnitude(s)):
        out = folder / "o.weights"
        threshold(wf, out, policy)
        result = ds.load(cfg, out)
        for slot in wf.slots:
            old, new = np.array(wf.array(slot)), np.array(result.array(slot))
            if slot.param.role != "weights":
                assert np.array_equal(old, new)
                continue
            if isinstance(policy, Absolute):
                limit = np.float32(t)
            else:
                k = round(s * old.size)
                limit = np.sort(np.abs(old))[k] if k else np.float32(0)
            expected = np.where(np.abs(old) < limit, np.float32(0), old)
            assert np.array_equal(new, expected)


def test_a_sparsity_that_rounds_to_every_weight_prunes_them_all(small, tmp_path):
    """round(0.9995 * 216) == 216 for the first conv: all of it goes, no error."""
    result, out = pruned(small, tmp_path, Magnitude(0.9995))
    assert not np.any(out.arrays(0)["weights"])
    assert result.arrays[0].zeros_after == result.arrays[0].count


def test_a_spec_alone_prunes_only_the_layers_it_names(small, tmp_path):
    result, _ = pruned(small, tmp_path, spec={"layers": {"2": 0.5, "4": {"threshold": 0.05}}})
    assert {a.layer: a.level for a in result.arrays} == {0: "skip", 2: "sparsity 0.5", 3: "skip", 4: "|w| < 0.05"}
