"""``darknet-sparse slim``: remove whole channels, write OUT.weights and OUT.cfg."""
from __future__ import annotations

from pathlib import Path

import click

from .. import load
from .. import reports
from .. import slim as slim_
from . import ToolError, cfg_option, cli, fork_option, json_option, weights_argument


@cli.command()
@weights_argument
@click.option("--gamma-threshold", type=float, help="Remove the channels whose batch-norm |gamma| is below this.")
@click.option("--percent", type=float,
              help="Remove this fraction of the prunable channels (one global |gamma| threshold), in [0, 1).")
@click.option("--target-flops", type=float,
              help="Remove channels in |gamma| order until the dense FLOPs fall by this fraction, in (0, 1).")
@click.option("--min-channels", type=int, default=1, show_default=True,
              help="Keep at least this many channels in every convolution.")
@click.option("--exclude", help="Comma-separated layers whose channels all stay: indices, a-b ranges, types.")
@click.option("--rank", type=click.Choice(slim_.RANKS), default="gamma", show_default=True,
              help="Score channels by |gamma|, or by |gamma| over its layer's mean |gamma| (layer).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output weights (required); its cfg is written beside it as OUT.cfg.")
@click.option("--dry-run", is_flag=True, help="Report what would be removed; write nothing.")
@cfg_option
@fork_option
@json_option
def slim(weights: Path, gamma_threshold: float | None, percent: float | None, target_flops: float | None,
         min_channels: int, exclude: str | None, rank: str, output: Path | None, dry_run: bool, cfg: Path | None, fork: str,
         as_json: bool) -> None:
    """Structured pruning: remove the channels with the smallest batch-norm
    scales, and write a smaller dense model (OUT.weights and OUT.cfg) that
    stock Darknet, AlexeyAB's fork and OpenCV load as they are.

    Shortcut groups share one mask, heads keep their filters, layers it
    cannot follow keep the channels reaching them; the constant a removed
    channel leaves is folded into the layers that read it.
    """
    if output is None and not dry_run:
        raise ToolError("slim needs -o OUT.weights (or --dry-run)")
    wf = load(cfg, weights, fork)
    result = slim_.slim(wf, None if dry_run else output, gamma_threshold=gamma_threshold, percent=percent,
                        target_flops=target_flops, min_channels=min_channels, exclude=exclude,
                        rank=rank)
    click.echo(reports.to_json(result) if as_json else slim_.table(result))
