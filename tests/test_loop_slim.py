"""loop --slim λ: the retraining cfg carries ``[net] slim=λ`` (patches/0021),
so sparse training for slimming runs inside the loop; bad values are errors."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from test_loop import fake  # noqa: F401  (the stand-in Darknet fixture)

from darknet_sparse.cli import cli, workflow  # noqa: F401  (registers `loop`)
from darknet_sparse.errors import InputError
from darknet_sparse.workflow import loop as loop_
from darknet_sparse.workflow import settings as settings_

REPO = Path(__file__).resolve().parent.parent


def _settings(tmp_path, digits, model_files, binary, **changes) -> settings_.LoopSettings:
    cfg, weights = model_files
    values = {"cfg": cfg, "weights": weights, "data": digits, "out": tmp_path / "out", "targets": (0.5,),
              "iterations": 3, "darknet": binary, "eval_cmd": "echo 0.5", "teacher": None}
    values.update(changes)
    return settings_.LoopSettings(**values)


def _net_section(cfg_text: str) -> list[str]:
    return cfg_text.split("[convolutional]")[0].splitlines()


def test_retrain_cfg_carries_slim_lambda(tmp_path, digits, model_files, fake):
    loop_.run(_settings(tmp_path, digits, model_files, fake, slim=0.005))
    net = _net_section((fake.parent / "last.cfg").read_text())
    assert "slim=0.005" in net and "prune=1" in net
    assert [line for line in net if line.startswith("slim=")] == ["slim=0.005"]


def test_without_slim_the_cfg_has_none(tmp_path, digits, model_files, fake):
    loop_.run(_settings(tmp_path, digits, model_files, fake))
    assert not any(line.startswith("slim") for line in _net_section((fake.parent / "last.cfg").read_text()))


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_bad_slim_is_an_error_before_anything_runs(tmp_path, digits, model_files, fake, value):
    with pytest.raises(InputError, match="slim .* must be a number >= 0"):
        loop_.run(_settings(tmp_path, digits, model_files, fake, slim=value))
    assert not (fake.parent / "args").exists()


def test_cli_passes_slim_to_the_loop(monkeypatch, tmp_path, digits, model_files):
    cfg, weights = model_files
    seen = []

    def fake_run(settings, resume=False, on_progress=None, on_message=None):
        seen.append(settings)
        return loop_.LoopResult([], 0, None)

    monkeypatch.setattr(loop_, "run", fake_run)
    args = ["loop", "--cfg", cfg, "--weights", weights, "--data", digits, "--final-sparsity", 0.5,
            "--iterations-per-step", 2,
            "--out", tmp_path / "o"]
    result = CliRunner().invoke(cli, [*map(str, args), "--slim", "0.01"])
    assert result.exit_code == 0, result.output
    assert seen[0].slim == 0.01
    result = CliRunner().invoke(cli, [*map(str, args), "--slim", "-1"])
    assert result.exit_code == 2 and "--slim" in result.output
