"""``plan`` end to end on AlexeyAB cfgs: ``sensitivity --fork alexeyab``
(the sweep, in the fork's Darknet), ``plan`` (a spec from its CSV), then
``threshold --fork alexeyab --spec`` (issue 20, part 2).

On yolov4-tiny (the fork's own initial weights at 128x128, see
``test_alexeyab_binding.ab_model``) and on the real yolov3-tiny run by the
fork: every command exits 0; the spec gives a level to every convolution of
the cfg, the ones behind a ``[route] groups=`` slice and the ones feeding each
``[yolo]`` head included; the pruned file has, layer by layer, the plan's
sparsity (``round(level * n)`` zeros, as the sweep measured them) and every
other array as it was (the fork initialises biases and batch-norm arrays to
constants, so on yolov4-tiny that part checks little: the real model's carry
it); the sweep's and threshold's reports name fork alexeyab.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import darknet_sparse as ds
from darknet_sparse.format.files import load_model
from helpers.ab_darknet import PATCHED, REPO, TRAIN_IMAGES, require
from test_alexeyab_binding import ab_model, cli

YOLO_CFG = REPO / "models" / "yolov3-tiny.cfg"
YOLO_WEIGHTS = REPO / "models" / "yolov3-tiny.weights"
LEVELS = "0.5,0.9"


@pytest.fixture(scope="module")
def yolov4_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require(PATCHED)
    return ab_model("yolov4-tiny", tmp_path_factory.mktemp("ab-plan"))


def _images(folder: Path, count: int) -> Path:
    listing = folder / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(TRAIN_IMAGES.glob("*.jpg"))[:count]))
    return listing


def _convolutions(cfg: Path) -> set[int]:
    """Every [convolutional] section's layer index, from the cfg as the fork reads it."""
    return {layer.index for layer in load_model(cfg, "alexeyab").layers if layer.type == "convolutional"}


def _behind_groups_and_heads(cfg: Path) -> tuple[set[int], set[int]]:
    """The convolutions right after a ``[route] groups=`` slice, and the one
    right before each ``[yolo]`` head (it feeds only that head)."""
    layers = load_model(cfg, "alexeyab").layers
    sliced = {layer.index + 1 for layer in layers
              if layer.type == "route" and layer.section.get_int("groups", 1) > 1
              and layer.index + 1 < len(layers) and layers[layer.index + 1].type == "convolutional"}
    feeders = {layer.index - 1 for layer in layers if layer.type == "yolo"}
    return sliced, feeders


def _weights_by_role(cfg: Path, weights: Path) -> dict[tuple[int, str], tuple[str, np.ndarray]]:
    wf = ds.load(cfg, weights, fork="alexeyab")
    return {(s.layer.index, s.param.name): (s.param.role, np.array(wf.array(s))) for s in wf.slots}


def _sweep_plan_prune(tmp_path: Path, cfg: Path, weights: Path, images: Path, target: list[str],
                      measure: tuple = ()) -> dict:
    """sensitivity (``measure``: its options, deviation by default) -> plan
    -> threshold --spec, each checked for exit 0 and the fork its report
    names; the spec, the sweep's, the plan's and threshold's reports."""
    csv, spec, out = tmp_path / "sweep.csv", tmp_path / "plan.yaml", tmp_path / "planned.weights"
    sweep = json.loads(cli("sensitivity", "-w", weights, "--cfg", cfg, "--images", images, "--levels", LEVELS,
                           *measure, "--csv", csv, "--fork", "alexeyab", "--json").stdout)
    assert sweep["fork"] == "alexeyab"
    made = json.loads(cli("plan", csv, *target, "-o", spec, "--json").stdout)
    pruned = json.loads(cli("threshold", weights, "--cfg", cfg, "--fork", "alexeyab", "--spec", spec, "-o", out,
                            "--json").stdout)
    assert pruned["fork"] == "alexeyab"
    text = cli("threshold", weights, "--cfg", cfg, "--fork", "alexeyab", "--spec", spec,
               "-o", tmp_path / "again.weights").stdout
    assert "alexeyab" in text, text
    return {"sweep": sweep, "spec": yaml.safe_load(spec.read_text()), "plan": made, "out": out}


def _check_pruned_as_planned(cfg: Path, weights: Path, found: dict) -> dict[int, float]:
    """The spec covers every convolution; the pruned file has each one's
    level and every other array unchanged.  Returns the levels."""
    spec = found["spec"]
    levels = {int(layer): float(level) for layer, level in spec["layers"].items()}
    assert spec["default"] == "skip"
    assert set(levels) == _convolutions(cfg)
    assert set(levels) == {row["layer"] for row in found["sweep"]["rows"]}
    chosen = {curve["layer"]: point for curve, point in found["plan"]["choices"]}
    assert levels == {layer: point["level"] for layer, point in chosen.items()}
    assert len(set(levels.values())) > 1, f"the plan chose one level for every layer: {levels}"
    before, after = _weights_by_role(cfg, weights), _weights_by_role(cfg, found["out"])
    assert before.keys() == after.keys()
    left: dict[int, int] = {}
    for (layer, name), (role, array) in before.items():
        changed = after[(layer, name)][1]
        if role == "weights":
            assert np.count_nonzero(array == 0) == 0  # the plan's zeros are all new
            assert abs(np.count_nonzero(changed == 0) - round(levels[layer] * array.size)) <= 1e-5 * array.size
            assert np.array_equal(changed[changed != 0], array[changed != 0])
            left[layer] = left.get(layer, 0) + int(np.count_nonzero(changed))
        else:
            np.testing.assert_array_equal(changed, array, err_msg=f"layer {layer} {name} ({role})")
    # Exactly the non-zeros the sweep counted at each chosen level: round(level * n)
    # zeros, a few fewer where weights tie at the cut (the fork's initial weights repeat values).
    assert left == {layer: point["nonzero"] for layer, point in chosen.items()}
    weights = sum(curve["weights"] for curve, _ in found["plan"]["choices"])
    assert 1 - sum(left.values()) / weights == pytest.approx(found["plan"]["totals"]["sparsity"], abs=1e-12)
    return levels


def test_plan_on_yolov4_tiny_covers_every_layer_and_prunes_as_planned(yolov4_tiny, tmp_path: Path) -> None:
    cfg, weights = yolov4_tiny
    found = _sweep_plan_prune(tmp_path, cfg, weights, _images(tmp_path, 4), ["--target-sparsity", "0.6"])
    assert found["plan"]["metric"] == "rel_l2"  # the deviation of both heads
    levels = _check_pruned_as_planned(cfg, weights, found)
    sliced, feeders = _behind_groups_and_heads(cfg)
    assert len(sliced) == 3 and len(feeders) == 2, (sliced, feeders)
    assert sliced | feeders <= set(levels)
    assert found["plan"]["totals"]["sparsity"] >= 0.6


def test_plan_on_the_real_yolov3_tiny_through_alexeyabs_fork(tmp_path: Path) -> None:
    """The sweep measures agreement mAP@0.5 with the dense model, both run by the fork."""
    require(PATCHED)
    found = _sweep_plan_prune(tmp_path, YOLO_CFG, YOLO_WEIGHTS, _images(tmp_path, 2), ["--target-flops", "0.5"],
                              ("--metric", "map50", "--reference", YOLO_WEIGHTS))
    assert found["plan"]["metric"] == "map50" and found["sweep"]["baseline"]["map50"] == pytest.approx(1.0)
    assert any(row["metrics"]["map50"] < 1 for row in found["sweep"]["rows"])  # some layer's pruning costs
    levels = _check_pruned_as_planned(YOLO_CFG, YOLO_WEIGHTS, found)
    assert _behind_groups_and_heads(YOLO_CFG)[1] <= set(levels)
    assert found["plan"]["totals"]["flops_removed"] >= 0.5
