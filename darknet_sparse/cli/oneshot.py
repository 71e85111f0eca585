"""``darknet-sparse oneshot``: prune with the second-order solver on
calibration images, no retraining."""
from __future__ import annotations

from pathlib import Path

import click

from .. import reports
from ..darknet import images
from ..format.files import load
from ..pruning.policies import POLICIES, read_spec
from ..workflow import oneshot as oneshot_
from .base import cfg_option, cli, fork_option, json_option, weights_argument
from .core import mode_policy


@cli.command()
@weights_argument
@click.option("--images", "image_source", required=True, type=click.Path(exists=True, path_type=Path),
              help="Calibration images, unlabelled: a folder or a list file (e.g. training images).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the pruned weights.")
@click.option("--mode", type=click.Choice(tuple(POLICIES) + (oneshot_.ALLOCATE_OBS,)),
              help="How many weights each layer loses: a policy's levels (as `threshold --mode`), or obs: "
                   "one allocation over all layers by each weight's OBS error per unit of its layer's "
                   "output (default: magnitude with -s, absolute with -t).")
@click.option("--sparsity", "-s", type=float, help="magnitude/global/obs: target sparsity in [0, 1); triangle: --end.")
@click.option("--threshold", "-t", type=float,
              help="absolute: as many weights as |w| below this; sensitivity: the multiple of each layer's std.")
@click.option("--start", type=float, help="triangle: sparsity of the first prunable layer (default 0).")
@click.option("--end", type=float, help="triangle: sparsity of the last prunable layer.")
@click.option("--spec", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML or TOML per-layer levels (e.g. a `plan` output); given alone, only its layers.")
@click.option("--exclude", help="Comma-separated layers to leave alone: indices, a-b ranges, types, first, heads.")
@click.option("--max-images", type=click.IntRange(min=2), default=oneshot_.MAX_IMAGES, show_default=True,
              help="Use at most this many of --images (a seeded random choice).")
@click.option("--damp", type=click.FloatRange(min=0), default=None,
              help=f"Added to the Gram matrix's diagonal, relative to its mean [default: {oneshot_.DETECTOR_DAMP:g} "
                   f"for a detector, {oneshot_.obs.DAMP:g} otherwise].")
@click.option("--positions", type=click.IntRange(min=1), default=oneshot_.POSITIONS, show_default=True,
              help="Output pixels sampled per image and layer.")
@click.option("--resize", type=click.Choice(images.RESIZE),
              help="How images are fitted: crop or letterbox (default: letterbox for a detector, else crop).")
@click.option("--recalibrate/--no-recalibrate", default=True, show_default=True,
              help="Re-estimate batch-norm statistics relative to the dense model on the same images.")
@cfg_option
@fork_option
@json_option
def oneshot(weights: Path, image_source: Path, output: Path, mode: str | None, sparsity: float | None,
            threshold: float | None, start: float | None, end: float | None, spec: Path | None,
            exclude: str | None, max_images: int, damp: float | None, positions: int, resize: str | None,
            recalibrate: bool, cfg: Path | None, fork: str, as_json: bool) -> None:
    """One-shot pruning with no retraining: each convolution and connected
    layer, in order, loses the weights whose removal its output misses
    least (Optimal Brain Surgeon, SparseGPT's fast form), and the weights
    left make up for them, so that the layer reproduces the dense model's
    output on the calibration images as pruned so far.  Biases and scales
    are kept; batch-norm statistics are recalibrated."""
    allocate = None
    if mode == oneshot_.ALLOCATE_OBS:
        if sparsity is None:
            raise click.UsageError("--mode obs needs --sparsity/-s")
        allocate, policy = oneshot_.ALLOCATE_OBS, None
    else:
        policy = mode_policy(mode, threshold, sparsity, start, end, spec is not None)
    wf = load(cfg, weights, fork)
    paths = images.sample(images.image_paths(image_source), max_images)
    result = oneshot_.oneshot(wf, output, paths, policy, spec=read_spec(spec) if spec else None, exclude=exclude,
                              allocate=allocate, sparsity=sparsity, damp=damp, positions=positions,
                              recalibrate=recalibrate, resize=resize,
                              on_stage=lambda text: click.echo(text, err=True))
    click.echo(reports.to_json(result) if as_json else oneshot_.table(result))
