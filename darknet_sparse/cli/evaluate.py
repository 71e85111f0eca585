"""``eval``: a detector's mAP or a classifier's top-1/top-k, in-process."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from .. import reports
from ..analysis import evaluate as evaluate_
from ..darknet import images
from ..errors import InputError
from ..format import darknet_text
from ..format.files import find_cfg, load_model
from ..format.layout import FORK_NAMES
from .base import cfg_option, cli, fork_option, json_option, weights_argument

path_type = click.Path(dir_okay=False, path_type=Path)


@contextlib.contextmanager
def _progress(length: int) -> Iterator[Callable[[int], None]]:
    """``on_progress`` for a bar on stderr that appears with the first image
    done, so an error found before any work is the only line printed."""
    bars: list = []

    def update(done: int) -> None:
        if not bars:
            bars.append(click.progressbar(length=length, label="images", file=sys.stderr))
            bars[0].__enter__()
        bars[0].update(done - bars[0].pos)
    try:
        yield update
    finally:
        if bars:
            bars[0].__exit__(None, None, None)


@cli.command("eval")
@weights_argument
@cfg_option
@click.option("--images", "image_source", type=click.Path(path_type=Path),
              help="Detector: an image, a folder of images or a list file (default: the --data file's valid= list).")
@click.option("--data", type=path_type,
              help="A Darknet .data file: a classifier's valid=, labels= and top=; a detector's valid= and names=.")
@click.option("--reference", type=path_type,
              help="Detector: score agreement with these (dense) weights instead of label files: their "
                   "detections above --reference-conf are the ground truth.")
@click.option("--reference-cfg", type=path_type, help="The reference's cfg (default: the model's).")
@click.option("--reference-fork", type=click.Choice(("same", "auto", "pjreddie", "alexeyab")), default="same",
              show_default=True, help="Whose Darknet runs the reference (same: the model's fork).")
@click.option("--reference-conf", type=click.FloatRange(0, 1, max_open=True), default=evaluate_.REFERENCE_CONF,
              show_default=True, help="Confidence a reference detection needs to count as ground truth.")
@click.option("--conf", type=click.FloatRange(0, 1, max_open=True), default=evaluate_.CONF, show_default=True,
              help="Detector: the evaluated model's detection threshold (low, as for mAP).")
@click.option("--nms", type=click.FloatRange(0, 1, max_open=True), default=evaluate_.NMS, show_default=True,
              help="Detector: NMS overlap (0: none), as `detector test`.")
@click.option("--names", type=path_type,
              help="Detector: class names, one a line (default: the --data file's names=, else a names file "
                   "beside the model with one line per class: MODEL.names, MODEL.data's names=, or the one "
                   "*.names there, such as coco.names beside yolov3-tiny.weights).")
@click.option("--top", "k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Classifier: also report top-K.")
@click.option("--max-images", type=click.IntRange(min=1), help="Use at most this many images (a seeded random choice).")
@click.option("--letter-box", is_flag=True,
              help="AlexeyAB's fork: letterbox the images, as its detector test -letter_box (default: as the "
                   "cfg's [net] letter_box=; pjreddie's always letterboxes).")
@fork_option
@json_option
def evaluate(weights: Path, cfg: Path | None, image_source: Path | None, data: Path | None,
             reference: Path | None, reference_cfg: Path | None, reference_fork: str, reference_conf: float,
             conf: float, nms: float, names: Path | None, k: int, max_images: int | None, letter_box: bool,
             fork: str, as_json: bool) -> None:
    """Score WEIGHTS in-process through the binding: a detector's mAP@0.5 and
    mAP@0.5:0.95 (COCO's evaluator) against Darknet label files or a
    reference model, or a classifier's top-1 and top-K as `classifier valid`.
    --fork picks whose Darknet runs it (auto: AlexeyAB's for a cfg only it
    reads, else by the weights' layout and header), with that fork's own
    image preparation, decode and NMS: AlexeyAB's `detector test` resizes
    without letterbox unless [net] letter_box=1 or --letter-box, and the
    output says which."""
    from ..darknet.network import Network

    cfg = cfg or find_cfg(weights)
    task = evaluate_.task_of(load_model(cfg, fork, weights).layers[-1].type)
    if task == "classifier":
        for given, option in ((reference, "--reference"), (reference_cfg, "--reference-cfg"),
                              (image_source, "--images"), (names, "--names")):
            if given is not None:
                raise InputError(f"{cfg} is a classifier (its last layer is no [yolo], [region] or "
                                 f"[detection]): {option} is for detectors; give --data")
        if data is None:
            raise InputError(f"{cfg} is a classifier: give --data (its valid=, labels= and classes=)")
        net = Network(cfg, weights, fork=fork)
        count = len(images.labelled_list(data)[0])
        with _progress(count) as on_progress:
            report = evaluate_.evaluate_classifier(net, data, k, on_progress=on_progress)
        click.echo(reports.to_json(report, fork=net.fork, fork_reason=net.fork_reason) if as_json
                   else _classifier_text(weights, cfg, data, report) + "\n" + _fork_line(net))
        return

    if reference_cfg is not None and reference is None:
        raise InputError("--reference-cfg goes with --reference")
    options = darknet_text.read_options(data) if data is not None else {}
    if image_source is None:
        if "valid" not in options:
            raise InputError("give --images (a folder or list file), or --data with a valid= list")
        image_source = Path(options["valid"])
    single = image_source.suffix.lower() in images.SUFFIXES and image_source.is_file()
    paths = images.sample([image_source] if single else images.image_paths(image_source), max_images)
    net = Network(cfg, weights, fork=fork)
    names_file = names or (Path(options["names"]) if "names" in options else None)
    found_names = None if names_file is not None else evaluate_.find_names(weights, cfg, net.detector_classes)
    names_file = names_file or found_names
    class_names = darknet_text.read_lines(names_file) if names_file is not None else None
    reference_net = None if reference is None else Network(
        reference_cfg or cfg, reference, fork=net.fork if reference_fork == "same" else reference_fork)
    if letter_box:
        for model in (net, reference_net):
            if model is not None and model.fork == "alexeyab":
                model.set_letterbox()
    with _progress(len(paths)) as on_progress:
        report = evaluate_.evaluate_detector(
            net, paths, reference=reference_net, reference_conf=reference_conf,
            reference_name=str(reference), conf=conf, nms=nms, names=class_names, on_progress=on_progress)
    if as_json:
        extra = {"preprocessing": net.preprocessing}
        if reference_net is not None:
            extra.update(reference_fork=reference_net.fork, reference_preprocessing=reference_net.preprocessing)
        click.echo(reports.to_json(report, fork=net.fork, fork_reason=net.fork_reason, **extra))
        return
    lines = [_fork_line(net), f"images: {net.preprocessing}"]
    if found_names is not None:
        lines.append(f"class names: {found_names} (beside the model; --names to choose others)")
    if reference_net is not None:
        lines.append(f"reference: {_fork_line(reference_net)}; {reference_net.preprocessing}")
    click.echo(_detector_text(weights, cfg, image_source, report) + "\n" + "\n".join(lines))


def _fork_line(net) -> str:
    return f"fork: {net.fork} ({net.fork_reason}): the model ran in {FORK_NAMES[net.fork]} Darknet"


def _detector_text(weights: Path, cfg: Path, source: Path, report: evaluate_.DetectorReport) -> str:
    def score(value: float | None) -> str:
        return "n/a (no ground-truth objects)" if value is None else f"{value:.4f}"
    lines = [f"eval: {weights} ({cfg}) on {report.images} images of {source}",
             f"ground truth: {report.truth_source}",
             f"  {report.truths} objects in {len(report.classes)} classes; {report.detections} detections "
             f"above {report.conf:g}, NMS {report.nms:g}",
             f"mAP@0.5       {score(report.map50)}",
             f"mAP@0.5:0.95  {score(report.map)}",
             f"{report.seconds_per_image:.3f} s per image (load, resize, forward, decode, NMS)"]
    if report.truth == "reference":
        lines.insert(2, "  (agreement with the reference model, not accuracy against human labels)")
    if report.classes:
        rows = [[c.index, c.name, c.truths, f"{c.ap50:.4f}", f"{c.ap:.4f}"] for c in report.classes]
        lines += ["", reports.render_table(["class", "name", "objects", "AP@0.5", "AP@.5:.95"], rows, "><")]
    return "\n".join(lines)


def _classifier_text(weights: Path, cfg: Path, data: Path, report: evaluate_.ClassifierReport) -> str:
    return "\n".join([f"eval: {weights} ({cfg}) on {report.images} images of {data}'s valid= list",
                      f"top-1  {report.top1:.4f}",
                      f"top-{report.k}  {report.topk:.4f}"])
