"""Top-1 against weight sparsity on the example models: ``make bench-quality``.

Writes ``benchmarks/quality.md``.  The methods on digits:

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

(e) The loop's defaults (``loop --final-sparsity 0.92 --iterations-per-step
    200``, nothing else) on digits models of other splits and training runs
    (``SPLIT_SEED=N scripts/train_example.sh``, trained here if
    ``data/digits-splitN`` lacks one), none of which chose the defaults.

On Fashion-MNIST (``cfg/fashion.cfg``, top-1 on its 10,000 test images), at
90% and 95% sparsity: one-shot global magnitude; the loop without a teacher
(labels only); the loop with the dense model as teacher, at the same
iteration budget.

Targets: the loop reaches at least 92% weight sparsity with at most 0.5
points of top-1 lost, with (d)'s settings and with (e)'s defaults on every
held-out model; the FLOPs plan removes more effective FLOPs than triangle
mode at the same total sparsity; on Fashion-MNIST the teacher recovers at
least half of the gap label retraining leaves (dense top-1 - loop without
teacher) at each sparsity.  The script always exits 0 after
writing the report: it is a report, and says PASS or FAIL per target.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from darknet_sparse import reports
from darknet_sparse.analysis import plan, recalibrate, sensitivity
from darknet_sparse.darknet import images
from darknet_sparse.darknet.examples import classifier_top1, write_digits
from darknet_sparse.darknet.home import find_darknet
from darknet_sparse.errors import PolicyError
from darknet_sparse.format.files import load, load_model
from darknet_sparse.pruning import prune, schedule, search
from darknet_sparse.pruning.policies import POLICIES, Global, Magnitude, Policy, Triangle
from darknet_sparse.workflow import loop
from darknet_sparse.workflow import settings as loop_settings

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
#: (e): digits models of these split seeds (none used to choose the
#: defaults, which were tried on seeds 1 to 5, and 6 to 8 were this
#: benchmark's before the steps went from 5 to 8), the loop with no flags beyond these.
HELD_OUT_SEEDS = (9, 10, 11)
DEFAULTS_ARGS = ("--final-sparsity", "0.92", "--iterations-per-step", "200")
#: Fashion-MNIST: the loop's budget is (STEPS + FINE_TUNE_STEPS) x ITERATIONS
#: batches of BATCH images (the cfg's 128 would make each step minutes on the
#: shared CPUs): AGP steps and then a fine-tune step, as the loop's defaults
#: do, and FASHION_RECALIBRATION.  Without them the batch-norm rolling
#: statistics lag behind the weights and the label-only loops scatter
#: (chosen on 5,000 training images held out of the loops).
#: Each loop runs RUNS times (Darknet seeds from the clock); the means count.
FASHION_CFG = ROOT / "cfg" / "fashion.cfg"
FASHION_WEIGHTS = ROOT / "cfg" / "fashion.weights"
FASHION_DATA = ROOT / "data" / "fashion" / "fashion.data"
FASHION_SPARSITIES = (0.9, 0.95)
FASHION_STEPS, FASHION_FINE_TUNE_STEPS, FASHION_ITERATIONS, FASHION_BATCH = 2, 1, 100, 32
FASHION_RUNS = 3
#: Both loops recalibrate batch norm on this many training images after each
#: step (`--recalibrate`): with 100-batch steps Darknet's rolling averages
#: still hold a third of the previous step's statistics.
FASHION_RECALIBRATION = 2000
#: The loop's defaults for classifiers (cfg rate 0.1 x RETRAIN_RATE_SCALE; the teacher's).
#: Other temperatures, alphas and rates, tried on the 5,000 held-out training
#: images with this budget (2 runs each at 95%, dense 0.9232 there): labels
#: 0.8639; T 1, 2, 4, 8 at alpha 1: 0.8708, 0.8726, 0.8689, 0.8622; T 2, 4, 8
#: at alpha 0.9: 0.8700, 0.8676, 0.8669; T 4 alpha 0.7: 0.8681; T 2 alpha 0.5:
#: 0.8693; rates 0.01 / 0.05: labels 0.8652 / 0.8668, T 2 alpha 1 0.8664 /
#: 0.8722.  At 90% (3 runs): labels 0.8937; T 1, 2 at alpha 1: 0.8979, 0.8992;
#: T 4 alpha 0.7: 0.8981.  None closes more than a fifth of the gap there.
FASHION_RATE = 0.1 * loop_settings.RETRAIN_RATE_SCALE
FASHION_TEMPERATURE, FASHION_ALPHA = loop_settings.DISTILL_DEFAULTS["classifier"]
#: The teacher recovers at least this share of the gap label retraining leaves.
RECOVERY_MIN = 0.5


class Bench:
    """The scratch folder, the data and the timings of one run."""

    def __init__(self, work: Path):
        self.work = work
        self.data = write_digits(work / "digits")
        root = self.data.parent
        self.train_data = work / "train-as-valid.data"
        self.train_data.write_text(f"classes=10\nvalid={root / 'train.list'}\nlabels={root / 'labels.list'}\n")
        self.model = load_model(CFG, "pjreddie", WEIGHTS)
        self.train_images = images.image_paths(root / "train.list")
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
        recalibrate.recalibrate_file(CFG, weights, self.train_images, out)
        return out

    def flops_removed(self, weights: Path) -> float:
        totals = reports.info(load(CFG, weights)).totals
        return 1 - totals["effective_bflops"] / totals["bflops"]


def sweep(bench: Bench) -> sensitivity.Sensitivity:
    from darknet_sparse.darknet.network import Network

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
    settings = loop_settings.LoopSettings(
        cfg=CFG, weights=WEIGHTS, data=bench.data, out=bench.work / "loop",
        targets=tuple(schedule.targets(LOOP_FINAL, LOOP_STEPS, "agp")), iterations=LOOP_ITERATIONS,
        policy=POLICIES[LOOP_MODE], learning_rate=LOOP_RATE, teacher=None, recalibrate=0)
    result = loop.run(settings, on_progress=lambda done: print(f"loop: {done} steps done", file=sys.stderr))
    bench.timed("(d) loop", start)
    return result.steps


def held_out_defaults(bench: Bench) -> Callable[[], list[dict]]:
    """(e): per held-out seed, the CLI loop with its defaults on that model,
    all seeds at once; the returned call waits for them and gives their rows."""
    start = time.perf_counter()
    runs = []
    for seed in HELD_OUT_SEEDS:
        folder = ROOT / "data" / f"digits-split{seed}"
        weights, data = folder / "digits.weights", folder / "digits.data"
        if not weights.is_file():
            subprocess.run(["scripts/train_example.sh", "digits"], cwd=ROOT, check=True,
                           env={**os.environ, "SPLIT_SEED": str(seed)})
        out = bench.work / f"defaults-{seed}"
        command = [sys.executable, "-m", "darknet_sparse", "loop", "--cfg", str(CFG), "--weights", str(weights),
                   "--data", str(data), "--out", str(out), "--darknet", str(DARKNET), *DEFAULTS_ARGS]
        runs.append((seed, weights, data, out, subprocess.Popen(command, stdout=subprocess.DEVNULL)))

    def finish() -> list[dict]:
        rows = []
        for seed, weights, data, out, process in runs:
            if process.wait():
                raise SystemExit(f"the loop on split seed {seed} failed: exit status {process.returncode}")
            steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            rows.append({"seed": seed, "dense": classifier_top1(DARKNET, data, CFG, weights),
                         "sparsity": steps[-1]["sparsity"], "top1": steps[-1]["top1"], "steps": len(steps)})
        bench.timed("(e) defaults on held-out digits models (all at once)", start)
        return rows
    return finish


def fashion(bench: Bench) -> tuple[float, list[dict]]:
    """Fashion-MNIST: the dense top-1 and, per sparsity, one-shot and
    FASHION_RUNS runs of the loop without and with the teacher (two loops at
    a time, the runs of one setting never side by side).  The loop's steps are
    not scored (an evaluation command printing 0: 10,000 images take 20 s or
    more each); its final weights are."""
    def top1(weights: Path) -> float:
        return classifier_top1(DARKNET, FASHION_DATA, FASHION_CFG, weights)

    def retrained(target: float, name: str, teacher: Path | None, run: int) -> tuple[float, float]:
        targets = schedule.targets(target, FASHION_STEPS, "agp") + [target] * FASHION_FINE_TUNE_STEPS
        settings = loop_settings.LoopSettings(
            cfg=FASHION_CFG, weights=FASHION_WEIGHTS, data=FASHION_DATA,
            out=bench.work / f"fashion-{name}-{target}-{run}", targets=tuple(targets),
            iterations=FASHION_ITERATIONS, policy=Global, learning_rate=FASHION_RATE, batch=FASHION_BATCH,
            eval_cmd="echo 0", teacher=teacher, temperature=FASHION_TEMPERATURE, alpha=FASHION_ALPHA,
            recalibrate=FASHION_RECALIBRATION)
        result = loop.run(settings)
        return top1(result.final), result.steps[-1].sparsity

    start = time.perf_counter()
    rows = []
    methods = (("labels", None), ("teacher", FASHION_WEIGHTS))
    with ThreadPoolExecutor(max_workers=2) as pool:
        loops = {(target, name, run): pool.submit(retrained, target, name, teacher, run)
                 for run in range(FASHION_RUNS) for target in FASHION_SPARSITIES for name, teacher in methods}
        dense = top1(FASHION_WEIGHTS)
        for target in FASHION_SPARSITIES:
            shot = bench.work / f"fashion-shot-{target}.weights"
            prune.threshold(load(FASHION_CFG, FASHION_WEIGHTS), shot, Global(target))
            row = {"target": target, "one-shot": top1(shot)}
            for name, _ in methods:
                runs = [loops[target, name, run].result() for run in range(FASHION_RUNS)]
                row[f"{name} runs"] = [value for value, _ in runs]
                row[name] = sum(row[f"{name} runs"]) / FASHION_RUNS
                row[f"{name} sparsity"] = min(sparsity for _, sparsity in runs)
            rows.append(row)
    bench.timed("Fashion-MNIST: one-shot, loops without and with the teacher", start)
    return dense, rows


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


def held_out_section(rows: list[dict]) -> str:
    ok = all(r["sparsity"] >= LOOP_MIN_SPARSITY and r["dense"] - r["top1"] <= LOOP_MAX_LOSS + 1e-9 for r in rows)
    table = markdown_table(["split seed", "dense top-1", "steps", "sparsity", "top-1", "points lost"],
                           [[str(r["seed"]), f"{r['dense']:.4f}", str(r["steps"]), f"{r['sparsity']:.4f}",
                             f"{r['top1']:.4f}", f"{(r['dense'] - r['top1']) * 100:.2f}"] for r in rows])
    return f"""## (e) The loop's defaults on held-out digits models

`SPLIT_SEED=N scripts/train_example.sh` trains `cfg/digits.cfg` on another train/validation split
(`make_example_data.py --split-seed N`) with Darknet's clock-seeded initialisation, into
`data/digits-splitN/`; each is scored on its own held-out 20%.  The defaults were chosen on seeds 1 to 5
(seeds 6 to 8 were this table's before the AGP steps went from 5 to 8); these seeds were not looked at
before.  Command:

```
darknet-sparse loop --cfg cfg/digits.cfg --weights data/digits-splitN/digits.weights \\
    --data data/digits-splitN/digits.data --out OUT {' '.join(DEFAULTS_ARGS)}
```

{table}

Target: every model at least {LOOP_MIN_SPARSITY:.0%} sparse with at most {LOOP_MAX_LOSS * 100:.1f} points lost:
**{'PASS' if ok else 'FAIL'}**.
"""


def fashion_section(dense: float, rows: list[dict]) -> str:
    cells, runs, ok = [], [], True
    for r in rows:
        gap, recovered = dense - r["labels"], r["teacher"] - r["labels"]
        share = recovered / gap if gap > 0 else float("nan")
        ok &= gap <= 0 or recovered >= RECOVERY_MIN * gap
        cells.append([f"{r['target']:.2f}", f"{r['one-shot']:.4f}", f"{r['labels']:.4f}", f"{r['teacher']:.4f}",
                      f"{r['teacher sparsity']:.4f}", f"{gap * 100:.2f}", f"{recovered * 100:.2f}",
                      f"{share:.0%}" if gap > 0 else "no gap"])
        runs += [[f"{r['target']:.2f}", name, *(f"{v:.4f}" for v in r[f"{name} runs"])]
                 for name in ("labels", "teacher")]
    budget = (FASHION_STEPS + FASHION_FINE_TUNE_STEPS) * FASHION_ITERATIONS
    return f"""## Fashion-MNIST: one-shot, the loop without a teacher, the loop with the teacher

`cfg/fashion.cfg` + `cfg/fashion.weights`, top-1 of `darknet classifier valid` on the 10,000 test images
(never trained on).  Dense top-1: **{dense:.4f}**.  One-shot: `threshold --mode global --sparsity S`.
Both loops: `loop --mode global --final-sparsity S --steps {FASHION_STEPS} --fine-tune-steps
{FASHION_FINE_TUNE_STEPS} --iterations-per-step {FASHION_ITERATIONS} --batch {FASHION_BATCH} --learning-rate
{FASHION_RATE:g} --recalibrate {FASHION_RECALIBRATION}` ({budget} batches of {FASHION_BATCH} images in all;
batch norm recalibrated on {FASHION_RECALIBRATION} training images after each step); "labels only" adds `--no-teacher`,
"with teacher" `--teacher cfg/fashion.weights --temperature {FASHION_TEMPERATURE:g} --alpha {FASHION_ALPHA:g}`
(the defaults: the dense model distils into its pruned self).  Darknet seeds training from the clock, so
each loop ran {FASHION_RUNS} times; the table gives the mean top-1 (the runs follow it).
Gap: dense - without teacher; recovered: with teacher - without teacher, in points of top-1.

{markdown_table(["S", "one-shot top-1", "loop, labels only", "loop, with teacher", "sparsity", "gap",
                 "recovered", "share"], cells)}

{markdown_table(["S", "loop", *(f"run {i + 1}" for i in range(FASHION_RUNS))], runs)}

Target: the teacher recovers at least {RECOVERY_MIN:.0%} of the gap at each sparsity: **{'PASS' if ok else 'FAIL'}**.
"""


def report(bench: Bench, dense: tuple[float, float], sens: sensitivity.Sensitivity, shots: list[list[str]],
           steps: list[loop.StepRecord], flop_rows: list[list[str]], beaten: bool, held: list[dict],
           fashion_result: tuple[float, list[dict]], total: float) -> str:
    dense, dense_recalibrated = dense
    triangle_reach = search.max_sparsity(load(CFG, WEIGHTS), Triangle)
    final = steps[-1]
    loop_ok = final.sparsity >= LOOP_MIN_SPARSITY and dense - final.value <= LOOP_MAX_LOSS + 1e-9
    density = 1 / (1 - final.sparsity)
    loop_rows = [[str(s.step), f"{s.target_sparsity:.4f}", f"{s.sparsity:.4f}", f"{s.value:.4f}",
                  str(s.zeros_revived), f"{s.seconds:.1f}"] for s in steps]
    timing_rows = [[name, f"{seconds:.1f}"] for name, seconds in bench.seconds.items()]
    return f"""# Quality: top-1 against weight sparsity on the example models

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
--iterations-per-step {LOOP_ITERATIONS} --learning-rate {LOOP_RATE} --fine-tune-steps 0 --no-teacher
--recalibrate 0` (patched Darknet, `prune=1`; the labels alone, as before the defaults of (e)).

{markdown_table(["step", "target", "sparsity", "top-1", "zeros revived", "seconds"], loop_rows)}

Target: at least {LOOP_MIN_SPARSITY:.0%} sparsity with at most {LOOP_MAX_LOSS * 100:.1f} points of top-1 lost.
Reached {final.sparsity:.4f} ({density:.1f}x fewer non-zero weights) at top-1 {final.value:.4f},
{(dense - final.value) * 100:.2f} points lost: **{'PASS' if loop_ok else 'FAIL'}**.

{held_out_section(held)}
{fashion_section(*fashion_result)}
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
        # The three parts run side by side: on a shared machine the loops are most of the time.
        held_rows = held_out_defaults(bench)
        with ThreadPoolExecutor(max_workers=1) as pool:
            fashion_future = pool.submit(fashion, bench)
            dense = bench.top1(WEIGHTS), bench.top1(bench.recalibrated(WEIGHTS))
            sens = sweep(bench)
            shots = one_shot(bench, sens)
            steps = run_loop(bench)
            flop_rows, beaten = flops(bench, sens)
            fashion_result = fashion_future.result()
        held = held_rows()
        REPORT.write_text(report(bench, dense, sens, shots, steps, flop_rows, beaten, held, fashion_result,
                                 time.perf_counter() - begin))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
