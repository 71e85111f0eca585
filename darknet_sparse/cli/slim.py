"""``darknet-sparse slim``: remove whole channels, write OUT.weights and OUT.cfg."""
from __future__ import annotations

from pathlib import Path

import click

from .. import reports
from ..darknet import images
from ..format.files import load
from ..structured import slim as slim_
from .base import ToolError, cfg_option, cli, fork_option, json_option, weights_argument


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
@click.option("--rank", type=click.Choice(slim_.RANKS),
              help="Score channels by |gamma|, by |gamma| over its layer's mean |gamma| (layer), or by the "
                   "error their removal causes downstream per FLOP saved, measured on --images (data).  "
                   "Default: data with --images, else gamma.")
@click.option("--images", "image_source", type=click.Path(exists=True, path_type=Path),
              help="Calibration images (a folder or list, e.g. training images): rank channels by data and "
                   "refit the layers after the removed channels by least squares to reproduce the dense "
                   "model's outputs.")
@click.option("--max-images", type=click.IntRange(min=2), default=64, show_default=True,
              help="Use at most this many of --images (a seeded random choice).")
@click.option("--refit/--no-refit", default=True, show_default=True,
              help="With --images: refit the layers after the removed channels.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output weights (required); its cfg is written beside it as OUT.cfg.")
@click.option("--dry-run", is_flag=True, help="Report what would be removed; write nothing.")
@cfg_option
@fork_option
@json_option
def slim(weights: Path, gamma_threshold: float | None, percent: float | None, target_flops: float | None,
         min_channels: int, exclude: str | None, rank: str | None, image_source: Path | None, max_images: int,
         refit: bool, output: Path | None, dry_run: bool, cfg: Path | None, fork: str, as_json: bool) -> None:
    """Structured pruning: remove the channels with the smallest batch-norm
    scales, and write a smaller dense model (OUT.weights and OUT.cfg) that
    stock Darknet, AlexeyAB's fork and OpenCV load as they are.

    Shortcut groups share one mask, heads keep their filters, layers it
    cannot follow keep the channels reaching them; the constant a removed
    channel leaves is folded into the layers that read it.  With --images,
    channels are chosen by what their removal costs downstream per FLOP
    and the layers after them are refit to the dense model's outputs.
    """
    if output is None and not dry_run:
        raise ToolError("slim needs -o OUT.weights (or --dry-run)")
    rank = rank or ("data" if image_source else "gamma")
    if rank == "data" and image_source is None:
        raise ToolError("--rank data measures channels on calibration images: give --images")
    wf = load(cfg, weights, fork)
    rule = dict(gamma_threshold=gamma_threshold, percent=percent, target_flops=target_flops,
                min_channels=min_channels, exclude=exclude)
    if image_source is None or dry_run:
        if image_source is not None:
            raise ToolError("--dry-run does not use --images: it reports the |gamma| choice only")
        result = slim_.slim(wf, None if dry_run else output, rank=rank, **rule)
        click.echo(reports.to_json(result) if as_json else slim_.table(result))
        return
    from ..structured import reconstruct
    paths = images.sample(images.image_paths(image_source), max_images)
    refitted = reconstruct.slim_refit(wf, output, paths, rank=rank, refit=refit,
                                      on_stage=lambda text: click.echo(text, err=True), **rule)
    click.echo(reports.to_json(refitted) if as_json else reconstruct.table(refitted))
