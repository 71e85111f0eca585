"""The command line: output, exit codes, and every class of bad input.

Bad input gets one ``Error:`` line on stderr, exit code 2, no output file
left behind, and the input unchanged.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import darknet_sparse as ds
from darknet_sparse.cli import cli
from darknet_sparse.format.weightsfile import write_arrays
from tiny_models import write_model


@pytest.fixture
def model(tmp_path):
    return write_model(tmp_path)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_threshold_finds_cfg_beside_weights_and_writes_sparse_weights(model):
    cfg, weights = model
    result = run("threshold", weights, "--mode", "magnitude", "--sparsity", "0.5")
    assert result.exit_code == 0, result.output
    out = weights.with_name("small.sparse.weights")
    assert out.is_file() and "wrote" in result.output and "total" in result.output
    info = run("info", out, "--json")  # small.sparse.weights -> small.cfg
    assert info.exit_code == 0, info.output
    report = json.loads(info.output)
    assert report["totals"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert report["fork"] == "pjreddie"
    conv = report["rows"][0]
    assert conv["type"] == "convolutional" and conv["effective_bflops"] < conv["bflops"]
    # Half the weights non-zero: sparse for convolutions (<= 50%), dense for connected (> 30%).
    assert {r["type"]: r["path"] for r in report["rows"] if r["path"]} == {
        "convolutional": "sparse", "connected": "dense"}


def test_threshold_json_lists_every_array(model):
    _, weights = model
    result = run("threshold", weights, "-t", "0.05", "--json", "-o", weights.with_name("o.weights"))
    data = json.loads(result.output)
    assert [a["layer"] for a in data["arrays"]] == [0, 2, 3, 4]
    assert data["zeros_after"] == sum(a["zeros_after"] for a in data["arrays"])


def test_diff_reports_revived_zeros_and_fails_on_request(model, tmp_path):
    cfg, weights = model
    pruned = tmp_path / "p.weights"
    assert run("threshold", weights, "-t", "0.05", "-o", pruned).exit_code == 0
    clean = run("diff", pruned, pruned, "--cfg", cfg, "--fail-on-revived")
    assert clean.exit_code == 0
    revived = run("diff", pruned, weights, "--cfg", cfg, "--fail-on-revived", "--json")
    assert revived.exit_code == 1
    rows = json.loads(revived.stdout)["rows"]
    assert sum(r["zeros_revived"] for r in rows) > 0 and all(r["zeros_added"] == 0 for r in rows)


def check_bad_input(result, tmp_path, before: dict, message: str):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before, "files were added, removed or changed"


def snapshot(tmp_path):
    return {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}


def test_missing_cfg(tmp_path):
    weights = tmp_path / "lonely.weights"
    weights.write_bytes(b"\0" * 40)
    before = snapshot(tmp_path)
    check_bad_input(run("threshold", weights, "-t", "0.1"), tmp_path, before, "no cfg given and none found")


@pytest.mark.parametrize("text, message", [
    ("[net]\nheight=8\nwidth=8\nchannels=3\n[mystery]\nsize=3\n", "small.cfg:5 [mystery]: unknown section"),
    ("[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=eight\n",
     "small.cfg:6 [convolutional]: filters='eight' is not an integer"),
])
def test_bad_cfg(model, tmp_path, text, message):
    cfg, weights = model
    cfg.write_text(text)
    before = snapshot(tmp_path)
    check_bad_input(run("threshold", weights, "-t", "0.1"), tmp_path, before, message)


def test_weights_shorter_than_the_cfg_needs(model, tmp_path):
    _, weights = model
    data = weights.read_bytes()
    weights.write_bytes(data[:-10])
    before = snapshot(tmp_path)
    result = run("threshold", weights, "-t", "0.1")
    check_bad_input(result, tmp_path, before, "ends inside layer 4 (connected")
    assert "expected 125 floats, found 122" in result.stderr


def test_nan_is_reported_and_strict_makes_it_an_error(model, tmp_path):
    cfg, weights = model
    wf = ds.load(cfg, weights)
    values = np.array(wf.arrays(2)["weights"])
    values[5] = np.nan
    write_arrays(wf, weights, {(2, "weights"): values}, in_place=True)
    result = run("threshold", weights, "-t", "0.1")
    assert result.exit_code == 0 and "1 NaN or Inf weights found" in result.output
    os.unlink(weights.with_name("small.sparse.weights"))
    before = snapshot(tmp_path)
    check_bad_input(run("threshold", weights, "-t", "0.1", "--strict"), tmp_path, before,
                    "layer 2 (convolutional) array weights holds 1 NaN or Inf")


@pytest.mark.parametrize("value", ["1", "1.5", "-0.2"])
def test_sparsity_outside_unit_interval(model, tmp_path, value):
    _, weights = model
    before = snapshot(tmp_path)
    check_bad_input(run("threshold", weights, "--mode", "magnitude", "-s", value), tmp_path, before,
                    "outside [0, 1)")


def test_output_equal_to_input_without_in_place(model, tmp_path):
    _, weights = model
    before = snapshot(tmp_path)
    check_bad_input(run("threshold", weights, "-t", "0.1", "-o", weights), tmp_path, before,
                    "output is the input file; use --in-place")


def test_unwritable_output_folder(model, tmp_path):
    _, weights = model
    before = snapshot(tmp_path)
    check_bad_input(run("threshold", weights, "-t", "0.1", "-o", tmp_path / "no" / "such" / "x.weights"),
                    tmp_path, before, "does not exist")
    # /proc takes no new files, not even from root (who ignores mode bits).
    check_bad_input(run("threshold", weights, "-t", "0.1", "-o", "/proc/x.weights"), tmp_path, before,
                    "cannot write")


def test_in_place_with_backup(model):
    _, weights = model
    original = weights.read_bytes()
    result = run("threshold", weights, "-t", "0.05", "--in-place", "--backup")
    assert result.exit_code == 0, result.output
    assert weights.with_name("small.weights.bak").read_bytes() == original
    assert weights.read_bytes() != original


def test_usage_errors_exit_2(model):
    _, weights = model
    assert run("threshold", weights, "-t", "0.1", "--backup").exit_code == 2
    assert run("threshold", weights, "--mode", "nonsense").exit_code == 2


def test_debug_shows_the_traceback(model, tmp_path):
    _, weights = model
    result = run("--debug", "threshold", weights, "-t", "0.1", "-o", weights)
    assert result.exit_code != 0 and isinstance(result.exception, ds.OutputError)


def test_build_names_the_patched_binary_and_its_options():
    result = run("build", "--status", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["exists"] and info["binding"] and info["binary"].endswith("build/darknet/darknet")
    assert info["options"] == ["prune", "prune_threshold"]


@pytest.mark.parametrize("args, mode, level", [
    (["-s", "0.5"], "magnitude", "sparsity 0.5"),
    (["-t", "0.05"], "absolute", "|w| < 0.05"),
    (["--mode", "global", "-s", "0.5"], "global", "global sparsity 0.5"),
    (["--mode", "sensitivity", "-t", "0.5"], "sensitivity", "0.5 x std"),
    (["--mode", "triangle", "-s", "0.6"], "triangle", "sparsity 0"),
])
def test_the_level_option_names_the_policy_unless_mode_does(model, tmp_path, args, mode, level):
    _, weights = model
    result = run("threshold", weights, *args, "--json", "-o", tmp_path / "o.weights")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == mode and data["arrays"][0]["level"] == level


@pytest.mark.parametrize("args, message", [
    (["-s", "0.5", "-t", "0.1"], "give --threshold/-t (absolute) or --sparsity/-s (magnitude), not both"),
    ([], "give --threshold/-t (absolute), --sparsity/-s (magnitude), --mode, or --spec"),
    (["--mode", "magnitude"], "mode magnitude needs --sparsity"),
    (["--mode", "absolute", "-s", "0.5"], "mode absolute needs --threshold"),
    (["--mode", "triangle", "--start", "0.1"], "mode triangle needs --end (or --sparsity)"),
])
def test_level_options_that_name_no_one_policy_are_usage_errors(model, tmp_path, args, message):
    _, weights = model
    before = snapshot(tmp_path)
    result = run("threshold", weights, *args)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", [
    ["info", "{weights}"],
    ["threshold", "{weights}", "-t", "0.1"],
    ["diff", "{weights}", "{weights}"],
    ["plan", "{csv}", "--target-sparsity", "0.5", "-o", "{out}"],
    ["loop", "-w", "{weights}", "--data", "{csv}", "--sparsities", "0.5", "--iterations-per-step", "1",
     "-o", "{out}"],
])
def test_every_command_turns_a_domain_error_into_one_line(tmp_path, command):
    """The group, not each command, catches library errors: here a cfg
    that is missing, or (plan, loop) an input file that is not there."""
    weights = tmp_path / "lonely.weights"
    weights.write_bytes(b"\0" * 40)
    values = {"weights": weights, "csv": tmp_path / "none.csv", "out": tmp_path / "out"}
    before = snapshot(tmp_path)
    result = run(*(arg.format(**values) for arg in command))
    check_bad_input(result, tmp_path, before, "")
    assert isinstance(run("--debug", *(arg.format(**values) for arg in command)).exception, ds.DarknetSparseError)
