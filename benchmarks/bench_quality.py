"""Top-1 against weight sparsity on the example digits model: ``make bench-quality``.

Writes ``benchmarks/quality.md``.  The methods:

(a) one-shot ``threshold --mode magnitude`` (every layer to the same sparsity);
(b) (a), then ``recalibrate`` (batch-norm statistics on the training images);
(c) one-shot with a sensitivity plan: ``sensitivity`` on the training
    images, ``plan --target-sparsity``, ``threshold --spec``; also with (b)'s
    recalibration after it;
(d) the prune/retrain ``loop`` (global mode, AGP schedule, patched Darknet).

Every top-1 is ``darknet classifier valid`` (the patched binary) on the 359
held-out validation images; the sweep and the calibration use only the
training images, so nothing is tuned on what is reported.  A FLOPs table
compares ``plan --target-flops`` with ``triangle`` and ``magnitude`` at the
plan's total sparsity (effective FLOPs as ``info`` counts them).

Targets: the loop reaches at least 92% weight sparsity with at most 0.5
points of top-1 lost; the FLOPs plan removes more effective FLOPs than
triangle mode at the same total sparsity.  The script always exits 0 after
writing the report: it is a report, and says PASS or FAIL per target.
"""
from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

from darknet_sparse import (images, load, load_model, loop, plan, prune, recalibrate, reports, schedule, search,
                            sensitivity)
from darknet_sparse.policies import POLICIES, Magnitude, Policy, Triangle
from darknet_sparse.errors import PolicyError
from darknet_sparse.examples import classifier_top1, write_digits
from darknet_sparse.home import find_darknet

ROOT = Path(__file__).resolve().parent.parent
CFG = ROOT / "cfg" / "digits.cfg"
WEIGHTS = ROOT / "cfg" / "digits.weights"
DARKNET = find_darknet()  # the checkout's build/darknet, else `darknet-sparse build`'s
REPORT = ROOT / "benchmarks" / "quality.md"
COMMAND = "`make bench-quality` (`.venv/bin/python benchmarks/bench_quality.py`)"

SPARSITIES = (0.5, 0.7, 0.8, 0.85, 0.9, 0.92, 0.95)
SWEEP_LEVELS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99)
FLOPS_TARGETS = (0.3, 0.5, 0.6)
#: The loop: AGP to 93% in 5 steps of 300 iterations, global threshold
#: (the big connected layer takes most of the pruning), learning rate 0.02.
LOOP_FINAL, LOOP_STEPS, LOOP_ITERATIONS, LOOP_MODE, LOOP_RATE = 0.93, 5, 300, "global", 0.02
#: Targets of the issue.
LOOP_MIN_SPARSITY, LOOP_MAX_LOSS = 0.92, 0.005


class Bench:
    """The scratch folder, the data and the timings of one run."""

    def __init__(self, work: Path):
        self.work = work
        self.data = write_digits(work / "digits")
        root = self.data.parent
        self.train_data = work / "train-as-valid.data"
        self.train_data.write_text(f"classes=10\nvalid={root / 'train.list'}\nlabels={root / 'labels.list'}\n")
        self.model = load_model(CFG, "pjreddie", WEIGHTS)
        self.train_x = images.load_batch(images.image_paths(root / "train.list"), (3, 16, 16))
        self.seconds: dict[str, float] = {}

    def top1(self, weights: Path) -> float:
        return classifier_top1(DARKNET, self.data, CFG, weights)

    def timed(self, name: str, start: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def prune(self, name: str, policy: Policy, **options) -> tuple[Path, float]:
        """``threshold`` the dense weights into ``name``; path and total sparsity."""
        out = self.work / f"{name}.weights"
        return out, prune.threshold(load(CFG, WEIGHTS), out, policy, **options).sparsity

    def recalibrated(self, weights: Path) -> Path:
        out = self.work / f"{weights.stem}.recal.weights"
        net = recalibrate.calibration_network(CFG, weights)
        recalibrate.recalibrate(net, self.model, self.train_x)
        net.save(out)
        return out

    def flops_removed(self, weights: Path) -> float:
        totals = reports.info(load(CFG, weights)).totals
        return 1 - totals["effective_bflops"] / totals["bflops"]


def sweep(bench: Bench) -> sensitivity.Sensitivity:
    from darknet_sparse.darknet import Network

    start = time.perf_counter()
    net = Network(CFG, WEIGHTS)
    result = sensitivity.sweep(net, bench.model, SWEEP_LEVELS, sensitivity.top1(net, bench.train_data))
    bench.timed("sensitivity sweep (5 layers x 12 levels, 1438 images each)", start)
    return result


def one_shot(bench: Bench, sens: sensitivity.Sensitivity) -> list[list[str]]:
    rows = []
    for target in SPARSITIES:
        start = time.perf_counter()
        magnitude, _ = bench.prune(f"magnitude-{target}", Magnitude(target))
        a = bench.top1(magnitude)
        bench.timed("(a) one-shot magnitude", start)
        start = time.perf_counter()
        b = bench.top1(bench.recalibrated(magnitude))
        bench.timed("(b) recalibration", start)
        start = time.perf_counter()
        chosen = plan.make_plan(sens, "sparsity", target)
        planned, reached = bench.prune(f"plan-{target}", Magnitude(0.0), spec=plan.to_spec(chosen))
        c = bench.top1(planned)
        c_recal = bench.top1(bench.recalibrated(planned))
        bench.timed("(c) plan, threshold --spec, recalibration", start)
        rows.append([f"{target:.2f}", f"{a:.4f}", f"{b:.4f}", f"{reached:.4f}", f"{c:.4f}", f"{c_recal:.4f}",
                     f"{chosen.totals.loss:.4f}"])
    return rows


def run_loop(bench: Bench) -> list[loop.StepRecord]:
    start = time.perf_counter()
    settings = loop.LoopSettings(
        cfg=CFG, weights=WEIGHTS, data=bench.data, out=bench.work / "loop",
        targets=tuple(schedule.targets(LOOP_FINAL, LOOP_STEPS, "agp")), iterations=LOOP_ITERATIONS,
        policy=POLICIES[LOOP_MODE], learning_rate=LOOP_RATE)
    result = loop.run(settings, on_progress=lambda done: print(f"loop: {done} steps done", file=sys.stderr))
    bench.timed("(d) loop", start)
    return result.steps


def flops(bench: Bench, sens: sensitivity.Sensitivity) -> tuple[list[list[str]], bool]:
    """Per FLOPs target: the plan against triangle and magnitude at the
    plan's measured total sparsity; and whether the plan beat triangle."""
    start = time.perf_counter()
    rows, beaten = [], True
    for target in FLOPS_TARGETS:
        chosen = plan.make_plan(sens, "flops", target)
        planned, reached = bench.prune(f"flops-{target}", Magnitude(0.0), spec=plan.to_spec(chosen))
        cells = [f"{target:.2f}", f"{reached:.4f}", f"{bench.flops_removed(planned):.4f}", f"{bench.top1(planned):.4f}"]
        try:
            out = bench.work / f"triangle-{target}.weights"
            search.prune_to(load(CFG, WEIGHTS), out, reached, Triangle)
            removed = bench.flops_removed(out)
            beaten &= bench.flops_removed(planned) > removed
            cells += [f"{removed:.4f}", f"{bench.top1(out):.4f}"]
        except PolicyError:  # triangle's last layers cap its total sparsity
            cells += ["out of reach", "-"]
        magnitude, _ = bench.prune(f"flops-magnitude-{target}", Magnitude(reached))
        cells += [f"{bench.flops_removed(magnitude):.4f}", f"{bench.top1(magnitude):.4f}"]
        rows.append(cells)
    bench.timed("FLOPs plans, triangle, magnitude", start)
    return rows, beaten


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def report(bench: Bench, dense: tuple[float, float], sens: sensitivity.Sensitivity, shots: list[list[str]],
           steps: list[loop.StepRecord], flop_rows: list[list[str]], beaten: bool, total: float) -> str:
    dense, dense_recalibrated = dense
    triangle_reach = search.max_sparsity(load(CFG, WEIGHTS), Triangle)
    final = steps[-1]
    loop_ok = final.sparsity >= LOOP_MIN_SPARSITY and dense - final.value <= LOOP_MAX_LOSS + 1e-9
    density = 1 / (1 - final.sparsity)
    loop_rows = [[str(s.step), f"{s.target_sparsity:.4f}", f"{s.sparsity:.4f}", f"{s.value:.4f}",
                  str(s.zeros_revived), f"{s.seconds:.1f}"] for s in steps]
    timing_rows = [[name, f"{seconds:.1f}"] for name, seconds in bench.seconds.items()]
    return f"""# Quality: top-1 against weight sparsity on the digits model

Made by {COMMAND} on {time.strftime('%Y-%m-%d')}, {cpu_name()}, {platform.python_version()},
in {total / 60:.1f} minutes.  Model: `cfg/digits.cfg` + `cfg/digits.weights` (16x16x3 classifier, 10 classes,
122,736 prunable weights).  Every top-1 below is `darknet classifier valid` (the patched build) on the 359
held-out validation images; the sensitivity sweep and the batch-norm calibration use only the 1,438
training images.  Sparsity is the share of zeros among all prunable weights.

Dense top-1: **{dense:.4f}**; recalibrated as in (b) without pruning: {dense_recalibrated:.4f}.  The
dense rolling statistics come from augmented training batches (random crops, rotations, exposure), which
the net was trained to expect; recalibration replaces them by those of plain images, which costs a
little where pruning has not yet moved them much.

## One-shot pruning: (a) magnitude, (b) + BN recalibration, (c) sensitivity plan

(a) `threshold --mode magnitude --sparsity S`: every layer to S.  (b) (a), then `recalibrate` on the
training images.  (c) `sensitivity` (levels {', '.join(f'{v:g}' for v in SWEEP_LEVELS)}), `plan
--target-sparsity S`, `threshold --spec`: its sparsity is what the chosen levels reach (at least S); the
predicted loss is the sum of the layers' losses measured alone, in top-1 on the training images.

{markdown_table(["S", "(a) top-1", "(b) top-1", "(c) sparsity", "(c) top-1", "(c) + recal. top-1",
                 "(c) predicted loss"], shots)}

## (d) The prune/retrain loop

`loop --mode {LOOP_MODE} --final-sparsity {LOOP_FINAL} --steps {LOOP_STEPS} --schedule agp
--iterations-per-step {LOOP_ITERATIONS} --learning-rate {LOOP_RATE}` (patched Darknet, `prune=1`).

{markdown_table(["step", "target", "sparsity", "top-1", "zeros revived", "seconds"], loop_rows)}

Target: at least {LOOP_MIN_SPARSITY:.0%} sparsity with at most {LOOP_MAX_LOSS * 100:.1f} points of top-1 lost.
Reached {final.sparsity:.4f} ({density:.1f}x fewer non-zero weights) at top-1 {final.value:.4f},
{(dense - final.value) * 100:.2f} points lost: **{'PASS' if loop_ok else 'FAIL'}**.

## FLOPs: `plan --target-flops F` against triangle and magnitude at the same total sparsity

Effective FLOPs count 2 per multiply-add of a non-zero weight (`info`); "removed" is 1 - effective/dense.
Triangle (`--start 0`, `--end` searched) and magnitude are thresholded to the plan's measured sparsity.
Triangle prunes the last layers hardest (here the connected layers: most weights, few FLOPs) and cannot
pass {triangle_reach:.1%} total sparsity on this model, since its `end` must stay below 1.

{markdown_table(["F", "plan sparsity", "plan FLOPs removed", "plan top-1", "triangle FLOPs removed",
                 "triangle top-1", "magnitude FLOPs removed", "magnitude top-1"], flop_rows)}

Target: the FLOPs plan removes more effective FLOPs than triangle at the same total sparsity:
**{'PASS' if beaten else 'FAIL'}**.

## Sensitivity of each layer (top-1 on the training images, one layer pruned at a time)

```
{sensitivity.table(sens)}
```

## Time

{markdown_table(["phase", "seconds"], timing_rows)}
"""


def main() -> None:
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dsq-", dir="/tmp") as folder:
        bench = Bench(Path(folder))
        dense = bench.top1(WEIGHTS), bench.top1(bench.recalibrated(WEIGHTS))
        sens = sweep(bench)
        shots = one_shot(bench, sens)
        steps = run_loop(bench)
        flop_rows, beaten = flops(bench, sens)
        REPORT.write_text(report(bench, dense, sens, shots, steps, flop_rows, beaten, time.perf_counter() - begin))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
