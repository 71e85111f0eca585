"""The AlexeyAB section of ``make bench-detector``: the real yolov3-tiny and
the quality section's best models run by AlexeyAB's Darknet (issue 20, part 3).

Models: the dense model and ``WORK/best-{50,70,80}.weights`` (what the
quality section leaves, the cfg beside each).  Where a best model is
missing, a stand-in is made the cheap way the quality rows make theirs,
``darknet-sparse threshold --mode global -s LEVEL`` then ``recalibrate
--reference DENSE`` on the quality section's calibration images (the same
sample of the training split, the same passes), into ``WORK/alexeyab/``;
the section names which each row is.

**Agreement.**  Every model is run on the evaluation split through the
AlexeyAB binding (``Network(cfg, weights, fork="alexeyab")``) and scored by
``_common.agreement`` (the quality rows' helper: COCO's mAP@0.5 of its
detections against a reference's above 0.5, on the whole split and on its
video frames and photos apart) against

- the fork's own run of the dense model;
- pjreddie's run of the dense model (the cross-fork number);
- pjreddie's run of the same model, with the fork's own preprocessing and
  again with ``letter_box=1`` (the issue's cross-check, >= 0.95);

beside the pjreddie column (pjreddie's run of the model against pjreddie's
run of the dense model, the quality section's own measure).  The two forks
prepare an image differently: pjreddie's ``detector test`` letterboxes it
to 416x416; AlexeyAB's resizes it to 416x416 without letterbox unless
``letter_box=1`` is in ``[net]`` (or ``-letter_box`` is given).  They also
decode with their own code (AlexeyAB's ``get_network_boxes`` with
``letter``, its yolo layer's ``scale_x_y`` and ``new_coords``, which
yolov3-tiny leaves at 1 and 0) and run their own NMS.

**Speed.**  Forward milliseconds of each model (batch 1, batch norm fused as
``detector test`` runs, one fixed input) through
``darknet_sparse/darknet/ab_driver.py`` compiled against each build, as
``bench_alexeyab.py`` times them: the patched fork (``sparse_forward=auto``
added to the cfg) at 1 thread (``build/darknet-alexeyab``) and 2 threads
(``build/darknet-alexeyab-omp``), stock AlexeyAB with AVX=1 at 1 thread
(``build/darknet-alexeyab-stock``) and 2 (``-stock-omp``).  Every engine
runs every model once per round, models and engines in the reverse order
every other round; a cell is the median of ``--rounds`` runs, each the
median of ``--repeat`` forwards after a warm-up, and its spread is (slowest
- fastest) / median.  Timings on a shared machine are noisy: the section
says the load it ran under.

:func:`measure` returns the Markdown lines and the targets for
``bench_detector.py``.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PARTS, ROOT, Run, SharedReference, agreement, machine, parts  # noqa: E402
from bench_detector_quality import DS, KEPT, pct, run, write_list  # noqa: E402
from bench_detector_speed import Cell  # noqa: E402

#: Columns of the speed table: (name, build folder under build/, threads, patched cfg).
ENGINES = (("patched 1t", "darknet-alexeyab", 1, True), ("patched 2t", "darknet-alexeyab-omp", 2, True),
           ("stock 1t", "darknet-alexeyab-stock", 1, False), ("stock 2t", "darknet-alexeyab-stock-omp", 2, False))
#: The issue's floor for one fork's detections of a model against the other's.
CROSS_FORK_FLOOR = 0.95
#: Models whose cross-fork agreement the issue names (the dense one and a 70% one).
CROSS_FORK_TARGETS = ("dense", "best-70")


@dataclass
class Model:
    name: str  # dense, best-50, ...
    weights: Path
    made: str  # where it comes from


def models(args) -> list[Model]:
    """The dense model and the best model at each kept level (a stand-in where missing)."""
    found = [Model("dense", args.weights.resolve(), "the official weights")]
    missing = [level for level in KEPT if not (args.work / f"best-{pct(level)}.weights").is_file()]
    calibration = None
    if missing:
        from darknet_sparse.darknet import images
        folder = (args.work / "alexeyab").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / "commands.log"
        log.write_text("")
        # The quality section's calibration images (_measure: sample(train, n, seed=1)).
        calibration = write_list(images.sample(images.image_paths(args.train), args.calibration_images, seed=1),
                                 folder / "calibration.txt")
    for level in KEPT:
        best = args.work / f"best-{pct(level)}.weights"
        if best.is_file():
            found.append(Model(f"best-{pct(level)}", best.resolve(), "the quality section's best at this level"))
            continue
        pruned, target = folder / f"global-{pct(level)}.weights", folder / f"stand-in-{pct(level)}.weights"
        run([DS, "threshold", str(args.weights), "--cfg", str(args.cfg), "--mode", "global", "--sparsity",
             f"{level:g}", "-o", str(pruned)], log)
        run([DS, "recalibrate", "--cfg", str(args.cfg), "-w", str(pruned), "--images", str(calibration),
             "--batch", str(args.calibration_batch), "--reference", str(args.weights), "-o", str(target)], log)
        pruned.unlink()
        found.append(Model(f"best-{pct(level)}", target.resolve(),
                           f"stand-in (no {best.name} here): one-shot global {level:.0%} + recalibration "
                           f"--reference on {args.calibration_images} training images, batches of "
                           f"{args.calibration_batch}"))
    return found


def _row(model: str, run_by: str, against: str, scores) -> str:
    report, by_part = scores
    return (f"| {model} | {run_by} | {against} | {_fmt(report.map50)} | "
            + " | ".join(_fmt(by_part.get(part)) for part in PARTS) + f" | {_fmt(report.map)} |")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def agreement_table(args, found: list[Model], evaluation: list) -> tuple[list[str], dict, dict[str, str]]:
    """The agreement rows, the scores by (model, comparison), and each run's preprocessing."""
    from darknet_sparse.analysis.metrics import Remembered
    from darknet_sparse.darknet.network import Network

    cfg = args.cfg.resolve()
    dense = found[0].weights
    references = {"pjreddie": SharedReference(Network(cfg, dense, fork="pjreddie")),
                  "alexeyab": SharedReference(Network(cfg, dense, fork="alexeyab"))}
    how = {fork: ref.net.preprocessing for fork, ref in references.items()}
    rows, scores = [], {}
    for model in found:
        start = time.perf_counter()
        # Each run's detections are computed once for all its comparisons.
        pjreddie = Remembered(Network(cfg, model.weights, fork="pjreddie"))
        own = Remembered(Network(cfg, model.weights, fork="alexeyab"))
        boxed = Remembered(Network(cfg, model.weights, fork="alexeyab"))
        boxed.set_letterbox(True)
        how["alexeyab, letter_box=1"] = boxed.preprocessing
        comparisons = (
            ("pjreddie", "pjreddie's dense", pjreddie, references["pjreddie"]),
            ("AlexeyAB", "AlexeyAB's dense", own, references["alexeyab"]),
            ("AlexeyAB", "pjreddie's dense", own, references["pjreddie"]),
            ("AlexeyAB", "pjreddie's run of this model", own, pjreddie),
            ("AlexeyAB, letter_box=1", "pjreddie's run of this model", boxed, pjreddie),
        )
        for run_by, against, net, reference in comparisons:
            result = agreement(net, evaluation, reference, reference_name=against)
            scores[(model.name, run_by, against)] = result
            rows.append(_row(model.name, run_by, against, result))
        print(f"  alexeyab agreement: {model.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return rows, scores, how


def speed_table(args, found: list[Model]) -> tuple[list[str], list[str]]:
    """Forward milliseconds of every model on every built engine; notes on what was not built."""
    from darknet_sparse.darknet.ab_driver import BUILDS, compile_ab_driver
    from darknet_sparse.darknet.runner import set_options

    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plain = folder / "yolov3-tiny.cfg"
        plain.write_text(args.cfg.read_text())
        auto = folder / "yolov3-tiny.auto.cfg"
        auto.write_text(set_options(args.cfg.read_text(), {"sparse_forward": "auto"}))
        timers = {}
        for name, build, threads, patched in ENGINES:
            tree = BUILDS.get(build)
            if tree is None or not (tree / "build-flags").is_file():
                notes.append(f"- {name}: `build/{build}` is not built, so not timed")
                continue
            driver = compile_ab_driver(tree, folder / f"ab_driver-{build}")

            def timer(weights: Path, driver=driver, cfg=auto if patched else plain, threads=threads) -> Run:
                ms = statistics.median(driver.milliseconds(cfg, weights, args.repeat, threads))
                return Run(ms / 1000, ms / 1000)
            timers[name] = timer
        runs = {model.name: {name: [] for name in timers} for model in found}
        for r in range(args.rounds):
            forward = r % 2 == 0
            for model in found if forward else found[::-1]:
                for name in list(timers) if forward else list(timers)[::-1]:
                    runs[model.name][name].append(timers[name](model.weights))
    names = list(timers)
    lines = ["| model | " + " | ".join(f"{name} ms" for name in names)
             + " | stock/patched 1t | stock/patched 2t | patched 1t/2t |",
             "|:---|" + "---:|" * (len(names) + 3)]
    for model in found:
        cells = {name: Cell(times) for name, times in runs[model.name].items()}

        def ratio(slow: str, fast: str) -> str:
            return f"{cells[slow].wall / cells[fast].wall:.2f}x" if slow in cells and fast in cells else "n/a"
        lines.append(f"| {model.name} | " + " | ".join(f"{1000 * cells[name].wall:.1f} ±{cells[name].spread / 2:.0%}"
                                                      for name in names)
                     + f" | {ratio('stock 1t', 'patched 1t')} | {ratio('stock 2t', 'patched 2t')}"
                     f" | {ratio('patched 1t', 'patched 2t')} |")
    return lines, notes


def measure(args) -> tuple[list[str], list[tuple[str, bool]]]:
    from darknet_sparse.darknet import images
    from darknet_sparse.darknet.network import backend
    from darknet_sparse.errors import BindingError

    for needed in (args.cfg, args.weights):
        if not needed.is_file():
            raise SystemExit(f"Error: {needed} missing: run make models")
    try:
        backend(fork="alexeyab")
    except BindingError as exc:  # no source of the fork was reachable, or it is not built yet
        return [f"Not run: no AlexeyAB binding ({exc}); `make darknet-alexeyab binding-alexeyab` builds it."], []
    if args.omp_wait_policy == "default":
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    start = time.perf_counter()
    load_before = machine()
    found = models(args)
    evaluation = images.image_paths(args.eval)
    of_split = f"the {len(evaluation)} images of the evaluation split"
    if args.alexeyab_max_images and args.alexeyab_max_images < len(evaluation):
        evaluation = images.sample(evaluation, args.alexeyab_max_images)
        of_split = f"a sample of {len(evaluation)} of {of_split} (--alexeyab-max-images)"
    made_in = time.perf_counter() - start
    rows, scores, how = agreement_table(args, found, evaluation)
    agreed_in = time.perf_counter() - start - made_in
    speed, notes = speed_table(args, found)
    split = " and ".join(f"{len(chosen)} {part}" for part, chosen in parts(evaluation).items())
    lines = [
        f"{args.cfg.name} (COCO) and the quality section's best models, run by AlexeyAB's Darknet (the patched "
        f"fork through its binding; timings also through its stock build); {machine()} at the end "
        f"(at the start: {load_before.split('load average ')[1]}); {time.perf_counter() - start:.0f} s in all "
        f"({made_in:.0f} s making models, {agreed_in:.0f} s scoring).",
        "",
        "Models:",
        *[f"- {model.name}: `{_shown(model.weights)}`, {model.made}" for model in found],
        "",
        "Preprocessing: " + "; ".join(f"{fork}: {text}" for fork, text in how.items()) + ". The forks also "
        "decode and suppress with their own code (AlexeyAB: `get_network_boxes` with `letter`, `scale_x_y`, "
        "`new_coords`, which yolov3-tiny leaves at 1 and 0, and the cfg's `nms_kind`).",
        "",
        f"Agreement mAP@0.5 on {of_split} ({split}): the detections "
        "above 0.5 of the run named under *against* are the ground truth (`_common.agreement`, as in the "
        "quality section). The pjreddie rows are the quality section's measure on the same files.",
        "",
        "| model | run by | against | mAP@0.5 | " + " | ".join(f"mAP@0.5 {part}" for part in PARTS)
        + " | mAP@0.5:0.95 |",
        "|:---|:---|:---|---:|" + "---:|" * len(PARTS) + "---:|",
        *rows,
        "",
        f"Forward milliseconds per 416x416 image, batch 1 (batch norm fused): median of {args.rounds} "
        f"interleaved round{'s' * (args.rounds > 1)} of {args.repeat} forwards (± half the spread: slowest - "
        "fastest over the median; 0% with one round). Patched: `sparse_forward=auto`; stock: the same commit "
        "unpatched, AVX=1; 2 threads: the OPENMP=1 builds, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'default')}.",
        "",
        *speed,
        *([""] + notes if notes else []),
    ]
    targets = []
    for name in CROSS_FORK_TARGETS:
        for run_by in ("AlexeyAB, letter_box=1", "AlexeyAB"):
            key = (name, run_by, "pjreddie's run of this model")
            if key in scores:
                value = scores[key][0].map50
                ok = value is not None and value >= CROSS_FORK_FLOOR
                targets.append((f"{name}: {run_by} against pjreddie's run of the same model, agreement mAP@0.5 "
                                f">= {CROSS_FORK_FLOOR} (measured {_fmt(value)})", ok))
    return lines, targets


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
