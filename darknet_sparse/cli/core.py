"""Commands on weights files: ``info``, ``threshold``, ``diff``."""
from __future__ import annotations

from pathlib import Path

import click

from .. import reports
from ..format.files import load
from ..pruning import prune as prune_
from ..pruning.policies import POLICIES, Policy, read_spec
from .base import cfg_option, cli, fork_option, json_option, weights_argument


@cli.command()
@weights_argument
@cfg_option
@fork_option
@json_option
def info(weights: Path, cfg: Path | None, fork: str, as_json: bool) -> None:
    """One row per layer: shapes, parameters, sparsity, dense and effective FLOPs."""
    report = reports.info(load(cfg, weights, fork))
    click.echo(reports.to_json(report) if as_json else reports.info_table(report))


@cli.command()
@weights_argument
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file (default: MODEL.sparse.weights).")
@click.option("--mode", type=click.Choice(tuple(POLICIES)),
              help="How each layer's threshold is chosen (default: absolute with -t, magnitude with -s).")
@click.option("--threshold", "-t", type=float,
              help="absolute: |w| below this becomes 0; sensitivity: the multiple s of each layer's std.")
@click.option("--sparsity", "-s", type=float, help="magnitude/global: target sparsity in [0, 1); triangle: --end.")
@click.option("--start", type=float, help="triangle: sparsity of the first prunable layer (default 0).")
@click.option("--end", type=float, help="triangle: sparsity of the last prunable layer.")
@click.option("--spec", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML or TOML file of per-layer levels (index, a-b range or type -> level or skip); "
                   "given alone, only the layers it names are pruned.")
@click.option("--exclude", help="Comma-separated layers to leave alone: indices, a-b ranges, types, "
                                "'first' (first prunable layer), 'heads' (layers feeding yolo/region).")
@click.option("--include-shortcut", is_flag=True,
              help="Also prune AlexeyAB shortcut and implicit weights (never biases or batch norm).")
@click.option("--in-place", is_flag=True, help="Overwrite the input weights file.")
@click.option("--backup", is_flag=True, help="With --in-place, keep the original as WEIGHTS.bak.")
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@click.option("--strict", is_flag=True, help="NaN or Inf in any array is an error.")
@cfg_option
@fork_option
@json_option
def threshold(weights: Path, output: Path | None, mode: str, threshold: float | None, sparsity: float | None,
              start: float | None, end: float | None, spec: Path | None, exclude: str | None,
              include_shortcut: bool, in_place: bool, backup: bool, dry_run: bool, strict: bool,
              cfg: Path | None, fork: str, as_json: bool) -> None:
    """Set near-zero weights of WEIGHTS to 0, layer by layer.

    Biases and batch-norm scales and statistics are never touched.
    """
    if backup and not in_place:
        raise click.UsageError("--backup only goes with --in-place")
    if in_place and output is not None and output.resolve() != weights.resolve():
        raise click.UsageError("--in-place writes over WEIGHTS; do not also give -o")
    policy = mode_policy(mode, threshold, sparsity, start, end, spec is not None)
    wf = load(cfg, weights, fork)
    target = weights if in_place else output or prune_.default_output(weights)
    result = prune_.threshold(wf, target, policy, spec=read_spec(spec) if spec else None, exclude=exclude,
                              include_optional=include_shortcut, in_place=in_place, backup=backup,
                              dry_run=dry_run, strict=strict)
    click.echo(reports.to_json(result) if as_json else reports.prune_table(result))


def mode_policy(mode: str | None, threshold: float | None, sparsity: float | None, start: float | None,
                end: float | None, spec: bool = False) -> Policy | None:
    """The policy ``--mode`` and its level options name (None: a spec alone).

    Without ``--mode``, ``-t`` means absolute and ``-s`` magnitude; a spec
    with no level option prunes only the layers it names.
    """
    if spec and all(value is None for value in (threshold, sparsity, start, end)):
        return None
    if mode is None:
        if threshold is not None and sparsity is not None:
            raise click.UsageError("give --threshold/-t (absolute) or --sparsity/-s (magnitude), not both; "
                                   "or name the policy with --mode")
        if threshold is None and sparsity is None:
            raise click.UsageError("give --threshold/-t (absolute), --sparsity/-s (magnitude), --mode, "
                                   "or --spec")
        mode = "absolute" if threshold is not None else "magnitude"

    def need(value: float | None, name: str) -> float:
        if value is None:
            raise click.UsageError(f"mode {mode} needs {name}")
        return value

    kind = POLICIES[mode]
    if mode == "triangle":
        return kind(0.0 if start is None else start, need(end if end is not None else sparsity,
                                                          "--end (or --sparsity)"))
    if mode == "absolute":
        return kind(need(threshold, "--threshold"))
    if mode == "sensitivity":
        return kind(need(threshold, "--threshold (in units of std)"))
    return kind(need(sparsity, "--sparsity"))


@cli.command()
@click.argument("a", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("b", type=click.Path(dir_okay=False, path_type=Path))
@cfg_option
@fork_option
@click.option("--all-arrays", is_flag=True, help="Also compare biases and batch-norm arrays.")
@click.option("--fail-on-revived", is_flag=True, help="Exit 1 if any weight that is 0 in A is non-zero in B.")
@json_option
def diff(a: Path, b: Path, cfg: Path | None, fork: str, all_arrays: bool, fail_on_revived: bool,
         as_json: bool) -> None:
    """Per layer: weights changed, zeros added, zeros revived, max change from A to B."""
    wa = load(cfg, a, fork)
    wb = load(wa.model.path, b, wa.model.fork)
    report = reports.diff(wa, wb, all_arrays)
    click.echo(reports.to_json(report) if as_json else reports.diff_table(report))
    if fail_on_revived and report.revived:
        click.echo(f"{report.revived} zero weights of {a} are non-zero in {b}", err=True)
        raise SystemExit(1)
