"""Plans from sensitivity curves: greedy semantics on synthetic CSVs shaped
like the digits model (its layer indices, weight counts and FLOPs), and
specs that ``threshold --spec`` applies."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from darknet_sparse.analysis import plan, sensitivity
from darknet_sparse.cli import cli
from darknet_sparse.errors import InputError, PolicyError
from darknet_sparse.format.files import load
from darknet_sparse.pruning.policies import read_spec

REPO = Path(__file__).resolve().parent.parent
CFG = REPO / "cfg" / "digits.cfg"
WEIGHTS = REPO / "cfg" / "digits.weights"
#: layer -> (type, weights, dense FLOPs) of cfg/digits.cfg.
DIGITS = {0: ("convolutional", 432, 221184), 2: ("convolutional", 4608, 589824),
          4: ("convolutional", 18432, 589824), 6: ("connected", 98304, 196608), 7: ("connected", 960, 1920)}
#: top-1 lost by pruning each layer alone to 0.5 and 0.9: the big connected
#: layer is cheap, the first convolution dear.
LOSSES = {0: (0.05, 0.5), 2: (0.02, 0.3), 4: (0.01, 0.2), 6: (0.0, 0.01), 7: (0.03, 0.1)}


def sweep_csv(path: Path, losses: dict[int, tuple[float, ...]] = LOSSES,
              levels: tuple[float, ...] = (0.5, 0.9)) -> Path:
    """A sensitivity CSV: top-1 1.0 unpruned, 1 - loss at each level."""
    rows = []
    for layer, (kind, weights, flops) in DIGITS.items():
        for level, loss in zip((0.0,) + levels, (0.0,) + losses[layer]):
            nonzero = weights - round(level * weights)
            rows.append(sensitivity.Row(layer, kind, weights, flops, level, nonzero, flops * nonzero // weights,
                                        {"top1": 1.0 - loss}))
    sensitivity.write_csv(sensitivity.Sensitivity(("top1",), {"top1": 1.0}, rows), path)
    return path


def test_sparsity_target_is_reached_with_the_least_loss(tmp_path):
    result = plan.make_plan(sensitivity.read_csv(sweep_csv(tmp_path / "s.csv")), "sparsity", 0.8)
    # 98,189 zeros needed: layer 6 at 0.9 gives 88,474; then the cheapest
    # per weight are 4 and 2 at 0.5 (0.03 in all; 4 at 0.9 alone would cost 0.2).
    assert result.levels == {0: 0.0, 2: 0.5, 4: 0.5, 6: 0.9, 7: 0.0}
    totals = result.totals
    assert totals.sparsity >= 0.8 and totals.loss == pytest.approx(0.04)
    assert result.metric == "top1" and result.baseline == 1.0


def test_one_cheap_layer_can_be_the_whole_plan(tmp_path):
    result = plan.make_plan(sensitivity.read_csv(sweep_csv(tmp_path / "s.csv")), "sparsity", 0.7)
    assert result.levels == {0: 0.0, 2: 0.0, 4: 0.0, 6: 0.9, 7: 0.0}


def test_overshoot_is_trimmed(tmp_path):
    # The cheapest per weight first takes 4 to 0.5, then 6 to 0.9, which
    # alone suffices: the step back undoes 4.
    losses = {0: (0.5, 0.9), 2: (0.5, 0.9), 4: (0.001, 0.9), 6: (0.05, 0.06), 7: (0.5, 0.9)}
    result = plan.make_plan(sensitivity.read_csv(sweep_csv(tmp_path / "s.csv", losses)), "sparsity", 0.72)
    assert result.levels == {0: 0.0, 2: 0.0, 4: 0.0, 6: 0.9, 7: 0.0}


def test_flops_target_prunes_where_the_flops_are(tmp_path):
    result = plan.make_plan(sensitivity.read_csv(sweep_csv(tmp_path / "s.csv")), "flops", 0.5)
    assert result.levels == {0: 0.5, 2: 0.5, 4: 0.5, 6: 0.9, 7: 0.0}
    assert result.totals.flops_removed >= 0.5
    assert result.totals.loss == pytest.approx(0.09)


def test_modes_are_compared_at_the_plans_sparsity(tmp_path):
    losses = {i: (0.01 * (i + 1), 0.05 * (i + 1), 0.2 * (i + 1)) for i in DIGITS}
    csv = sweep_csv(tmp_path / "s.csv", losses, levels=(0.5, 0.9, 0.99))
    result = plan.make_plan(sensitivity.read_csv(csv), "flops", 0.3)
    own, magnitude, triangle = result.compared
    assert [e.name for e in result.compared] == ["plan", "magnitude", "triangle"]
    assert magnitude.sparsity == pytest.approx(own.sparsity, abs=1e-5)
    assert triangle.sparsity == pytest.approx(own.sparsity, abs=1e-5)
    assert own.flops_removed > triangle.flops_removed  # triangle prunes the late, cheap layers
    assert own.loss > 0 and magnitude.loss > 0 and triangle.loss > 0
    assert magnitude.setting.startswith("level ") and triangle.setting.startswith("end ")


def test_a_mode_beyond_the_measured_levels_is_out_of_reach(tmp_path):
    result = plan.make_plan(sensitivity.read_csv(sweep_csv(tmp_path / "s.csv")), "sparsity", 0.8)
    triangle = result.compared[2]  # layer 6 would need a level above 0.9
    assert triangle.sparsity is None and triangle.setting == "beyond the measured levels"
    assert any(line.split()[0] == "triangle" and "beyond the measured levels" in line
               for line in plan.table(result).splitlines() if line)


def test_distances_are_losses_from_zero(tmp_path):
    rows = [sensitivity.Row(layer, "connected", 100, 200, level, 100 - round(100 * level), 0,
                            {"rel_l2": 0.0 if level == 0 else cost * level, "kl": cost * level * level})
            for layer, cost in ((0, 1.0), (1, 0.1)) for level in (0.0, 0.5)]
    result = plan.make_plan(sensitivity.Sensitivity(("rel_l2", "kl"), {}, rows), "sparsity", 0.25)
    assert result.metric == "kl" and result.levels == {0: 0.0, 1: 0.5}
    assert result.totals.loss == pytest.approx(0.025)


@pytest.mark.parametrize("target, value, message", [
    ("sparsity", 0.95, r"the sweep's levels reach at most 0\.9000 sparsity removed, not 0\.95"),
    ("sparsity", 1.0, r"target sparsity 1\.0 outside \(0, 1\)"),
    ("weights", 0.5, "unknown target 'weights'"),
])
def test_unreachable_or_bad_targets(tmp_path, target, value, message):
    with pytest.raises(PolicyError, match=message):
        plan.make_plan(sensitivity.read_csv(sweep_csv(tmp_path / "s.csv")), target, value)


def test_every_layer_needs_its_unpruned_row(tmp_path):
    path = sweep_csv(tmp_path / "s.csv")
    path.write_text("".join(line for line in path.read_text().splitlines(True) if not line.startswith("6,")
                            or ",0.5," in line))
    with pytest.raises(InputError, match="layer 6 has no level-0 row"):
        plan.make_plan(sensitivity.read_csv(path), "sparsity", 0.5)


@pytest.mark.parametrize("name", ["plan.yaml", "plan.toml"])
def test_cli_plan_writes_a_spec_threshold_applies(tmp_path, name):
    csv, spec = sweep_csv(tmp_path / "s.csv"), tmp_path / name
    runner = CliRunner()
    made = runner.invoke(cli, ["plan", str(csv), "--target-sparsity", "0.8", "-o", str(spec)])
    assert made.exit_code == 0, made.output
    assert "predicted top1 loss 0.0400" in spec.read_text()
    assert read_spec(spec) == {"default": "skip", "layers": {"0": 0.0, "2": 0.5, "4": 0.5, "6": 0.9, "7": 0.0}}
    out = tmp_path / "planned.weights"
    applied = runner.invoke(cli, ["threshold", str(WEIGHTS), "--mode", "magnitude", "-s", "0", "--spec", str(spec),
                                  "-o", str(out)])
    assert applied.exit_code == 0, applied.output
    pruned = load(CFG, out)
    for layer, level in {0: 0.0, 2: 0.5, 4: 0.5, 6: 0.9, 7: 0.0}.items():
        weights = pruned.arrays(layer)["weights"]
        assert np.count_nonzero(weights == 0) == round(level * weights.size)


def test_cli_plan_needs_exactly_one_target(tmp_path):
    csv = sweep_csv(tmp_path / "s.csv")
    runner = CliRunner()
    both = runner.invoke(cli, ["plan", str(csv), "--target-sparsity", "0.5", "--target-flops", "0.5",
                               "-o", str(tmp_path / "p.yaml")])
    assert both.exit_code == 2 and "not both" in both.output
    flops = runner.invoke(cli, ["plan", str(csv), "--target-flops", "0.5", "-o", str(tmp_path / "p.yaml"), "--json"])
    assert flops.exit_code == 0 and '"target": "flops"' in flops.output
    missing = runner.invoke(cli, ["plan", str(csv), "--target-flops", "0.5", "--metric", "kl",
                                  "-o", str(tmp_path / "p.yaml")])
    assert missing.exit_code == 2 and "the sweep measured top1, not kl" in missing.output


def test_the_spec_replaces_the_old_file_only_when_complete(tmp_path, monkeypatch):
    """A write that fails half-way (a full disk) leaves the old spec whole
    and no temporary file behind."""
    from darknet_sparse.errors import OutputError
    result = plan.make_plan(sensitivity.read_csv(sweep_csv(tmp_path / "s.csv")), "sparsity", 0.8)
    spec = tmp_path / "plan.yaml"
    spec.write_text("old")
    real = Path.write_text

    def full_disk(self, data, *args, **kwargs):
        real(self, data[:len(data) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OutputError, match="plan.yaml: cannot write: No space left"):
        plan.write_spec(result, spec, "s.csv")
    assert spec.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["plan.yaml", "s.csv"]


def test_the_yaml_spec_is_what_yaml_reads_back(tmp_path):
    import yaml
    result = plan.make_plan(sensitivity.read_csv(sweep_csv(tmp_path / "s.csv")), "sparsity", 0.8)
    text = plan.spec_text(result, "s.csv")
    assert text.startswith("# darknet-sparse plan from s.csv: sparsity target 0.8\n# total sparsity 0.8")
    assert yaml.safe_load(text) == plan.to_spec(result) == {
        "default": "skip", "layers": {"0": 0.0, "2": 0.5, "4": 0.5, "6": 0.9, "7": 0.0}}


def test_agreement_map_is_a_score_to_lose_least_of(tmp_path):
    """A map50 sweep (sensitivity --metric map50): the loss is the drop."""
    rows = [sensitivity.Row(layer, "convolutional", 100, 200, level, 100 - round(100 * level), 0,
                            {"map50": 1.0 - cost * level, "map": 0.9 - cost * level})
            for layer, cost in ((0, 0.5), (1, 0.05)) for level in (0.0, 0.5)]
    path = tmp_path / "map.csv"
    sensitivity.write_csv(sensitivity.Sensitivity(("map50", "map"), {"map50": 1.0, "map": 0.9}, rows), path)
    result = plan.make_plan(sensitivity.read_csv(path), "sparsity", 0.25)
    assert result.metric == "map50" and result.levels == {0: 0.0, 1: 0.5}
    assert result.totals.loss == pytest.approx(0.025) and result.baseline == 1.0
