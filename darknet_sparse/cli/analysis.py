"""Commands that analyse a model through the binding: ``sensitivity``,
``plan`` and ``recalibrate``."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from .. import reports
from ..analysis import plan as plan_
from ..analysis import recalibrate as recalibrate_
from ..analysis import sensitivity as sensitivity_
from ..darknet import images
from ..format.files import find_cfg, load_model
from ..format.weightsfile import check_output
from .base import cfg_option, cli, fork_option, json_option

weights_option = click.option("--weights", "-w", required=True, type=click.Path(dir_okay=False, path_type=Path),
                              help="The model's .weights; only read.")
resize_option = click.option("--resize", type=click.Choice(images.RESIZE),
                             help="How images are fitted to the network: crop (as `classifier valid`) or "
                                  "letterbox (as `detector test`); default: letterbox for a detector, else crop.")
max_images_option = click.option("--max-images", type=click.IntRange(min=1),
                                 help="Use at most this many of the images (a seeded random choice).")


def _levels(ctx: click.Context, param: click.Parameter, value: str) -> list[float]:
    try:
        return [float(item) for item in value.split(",") if item.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None


def _sample(source: Path, max_images: int | None) -> list[Path]:
    return images.sample(images.image_paths(source), max_images)


@cli.command()
@weights_option
@cfg_option
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path),
              help="A classifier's Darknet .data file: measure top-1 on its valid= list.")
@click.option("--images", "image_source", type=click.Path(path_type=Path),
              help="A folder (or list file) of sample images: measure how far the outputs of every "
                   "[yolo]/[region] head (else the last layer) move (mean relative L2; KL divergence "
                   "where the net ends in softmax).")
@click.option("--metric", type=click.Choice(("deviation", "map50")),
              help="With --images: deviation of the outputs (the default), or map50, a detector's agreement "
                   "mAP@0.5 and @0.5:0.95 with --reference (COCO's evaluator; the images as `detector test` "
                   "reads them, so --resize does not apply).")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path),
              help="With --metric map50: the model to agree with (the dense .weights, same cfg).")
@click.option("--reference-conf", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True,
              help="With --metric map50: the reference's detections above this confidence are the ground truth.")
@click.option("--levels", default="0.3,0.5,0.7,0.8,0.9,0.95", show_default=True, callback=_levels,
              help="Sparsities to prune each layer to, comma-separated (0 is always added).")
@click.option("--layers", help="Only these layers: indices, a-b ranges or types, comma-separated.")
@resize_option
@max_images_option
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every measurement as CSV (what `plan` reads).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw the curves into this image (needs matplotlib: the plot extra).")
@fork_option
@json_option
def sensitivity(weights: Path, cfg: Path | None, data: Path | None, image_source: Path | None,
                metric: str | None, reference: Path | None, reference_conf: float, levels: list[float],
                layers: str | None, resize: str | None, max_images: int | None, csv_path: Path | None,
                plot: Path | None, fork: str, as_json: bool) -> None:
    """Prune one layer at a time to each level and measure the network,
    in-process through the binding; the weights file is only read.  --fork
    picks whose Darknet runs it (auto: AlexeyAB's for a cfg only it reads)."""
    from ..darknet.network import Network

    if (data is None) == (image_source is None):
        raise click.UsageError("give --data (classifier top-1) or --images (outputs, or agreement mAP), not both")
    if metric is not None and image_source is None:
        raise click.UsageError("--metric goes with --images (--data measures top-1)")
    if (metric == "map50") != (reference is not None):
        raise click.UsageError("--metric map50 needs --reference DENSE.weights, and --reference needs it")
    cfg = cfg or find_cfg(weights)
    net = Network(cfg, weights, fork=fork)
    model = load_model(cfg, net.fork, weights)
    chosen = sensitivity_.select_layers(model, layers)
    levels = sensitivity_.check_levels(levels)
    if data is not None:
        measure = sensitivity_.top1(net, data, resize or "crop")
    elif metric == "map50":
        measure = sensitivity_.agreement(_sample(image_source, max_images), Network(cfg, reference, fork=net.fork),
                                          reference_conf)
    else:
        x = images.load_batch(_sample(image_source, max_images), net.input_shape,
                              resize or images.default_resize(model))
        measure = sensitivity_.deviation(net, x, sensitivity_.output_layers(model),
                                         sensitivity_.ends_in_softmax(model))
    with click.progressbar(length=len(chosen) * len(levels), label="layers x levels", file=sys.stderr) as bar:
        result = sensitivity_.sweep(net, model, levels, measure, chosen,
                                    on_progress=lambda done: bar.update(done - bar.pos))
    if csv_path:
        sensitivity_.write_csv(result, csv_path)
    if plot:
        from ..analysis import plots
        plots.sensitivity(result, plot)
    click.echo(reports.to_json(result, fork=net.fork, fork_reason=net.fork_reason) if as_json
               else sensitivity_.table(result) + f"\nfork: {net.fork} ({net.fork_reason}): the model ran in "
               f"{net.fork}'s Darknet")


@cli.command()
@click.argument("sensitivity_csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target-sparsity", type=float,
              help="Share of the swept layers' weights to set to 0, in (0, 1).")
@click.option("--target-flops", type=float,
              help="Share of the swept layers' dense FLOPs the zeros must remove (1 - effective/dense), "
                   "in (0, 1).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The spec file to write (YAML, or TOML for a .toml name).")
@click.option("--metric", type=click.Choice(plan_.PREFERRED_METRICS),
              help="What to lose least of (default: the first of "
                   f"{', '.join(plan_.PREFERRED_METRICS)} the sweep measured).")
@json_option
def plan(sensitivity_csv: Path, target_sparsity: float | None, target_flops: float | None, output: Path,
         metric: str | None, as_json: bool) -> None:
    """Choose each layer's level from a sensitivity CSV so the total reaches
    the target with the least predicted loss; write it as a spec for
    `threshold --spec` and `loop --spec`."""
    if (target_sparsity is None) == (target_flops is None):
        raise click.UsageError("give --target-sparsity or --target-flops, not both")
    target, value = ("sparsity", target_sparsity) if target_flops is None else ("flops", target_flops)
    result = plan_.make_plan(sensitivity_.read_csv(sensitivity_csv), target, value, metric)
    plan_.write_spec(result, output, str(sensitivity_csv))
    click.echo(reports.to_json(result) if as_json else plan_.table(result) + f"\n\nspec: {output}")


@cli.command()
@weights_option
@cfg_option
@click.option("--images", "image_source", required=True, type=click.Path(path_type=Path),
              help="A folder (or list file) of calibration images, e.g. a training list.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the recalibrated weights.")
@click.option("--batch", type=click.IntRange(min=2),
              help="Images per calibration pass (default: the cfg's batch/subdivisions).")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The dense weights the model was pruned from: apply only the shift pruning made to "
                   "the statistics, measured against them on the same images (recommended: calibration "
                   "images unlike the training data then cost nothing).")
@click.option("--reference-cfg", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The reference's cfg (default: the model's).")
@resize_option
@max_images_option
@fork_option
@json_option
def recalibrate(weights: Path, cfg: Path | None, image_source: Path, output: Path, batch: int | None,
                reference: Path | None, reference_cfg: Path | None, resize: str | None, max_images: int | None,
                fork: str, as_json: bool) -> None:
    """Re-estimate batch-norm rolling mean and variance on calibration
    images after pruning; weights, biases and scales stay as they are.
    --fork picks whose Darknet runs it (auto: AlexeyAB's for a cfg only it reads)."""
    cfg = cfg or find_cfg(weights)
    check_output(weights, output)
    paths = _sample(image_source, max_images)
    with contextlib.ExitStack() as stack:
        bars: list = []

        def progress(done: int, total: int) -> None:
            if not bars:
                bars.append(stack.enter_context(click.progressbar(length=total, label="calibration passes",
                                                                  file=sys.stderr)))
            bars[0].update(done - bars[0].pos)
        result = recalibrate_.recalibrate_file(cfg, weights, paths, output, batch=batch, reference=reference,
                                               reference_cfg=reference_cfg, resize=resize, on_progress=progress,
                                               fork=fork)
    click.echo(reports.to_json(result) if as_json else recalibrate_.table(result) + f"\n\nwritten: {output}")
