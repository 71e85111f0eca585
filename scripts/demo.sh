#!/usr/bin/env bash
# `make demo`, in three parts; outputs go to out/demo/.
# 1. The quick part, on the shipped example model, cfg/digits.cfg and
#    cfg/digits.weights (a Darknet classifier trained here on scikit-learn's
#    handwritten digits): it shows the model, prunes it once, runs a short
#    prune/retrain loop with the patched Darknet, and ends with a before/after
#    table measured by Darknet's own `classifier valid`.
# 2. The real detector, the COCO yolov3-tiny (make models) on real frames
#    (make images): its info, one-shot 70% global pruning, and its agreement
#    mAP with the dense model on a sample of the evaluation split before and
#    after batch-norm recalibration on training frames relative to the dense
#    model.
# 3. AlexeyAB's fork: yolov4-tiny (the fork's own initial weights: no pretrained one is
#    reachable here) read, pruned and run sparse; the real yolov3-tiny run by the fork, and a
#    two-step loop in its detector train with the dense model as teacher.
set -euo pipefail
cd "$(dirname "$0")/.."

ds=.venv/bin/darknet-sparse
out=out/demo
rm -rf "$out"
mkdir -p "$out"
data=$(.venv/bin/python scripts/make_example_data.py digits data/digits)

echo "== The dense model"
$ds info cfg/digits.weights

echo
echo "== One-shot: 92% of the weights set to zero (one global threshold), no retraining"
$ds threshold cfg/digits.weights --mode global --sparsity 0.92 -o "$out/oneshot.weights"

echo
echo "== Prune and retrain to the same sparsity in 3 steps, zeros frozen (prune=1)"
$ds loop --weights cfg/digits.weights --data "$data" --mode global --final-sparsity 0.92 \
    --steps 3 --iterations-per-step 200 --learning-rate 0.02 --out "$out/loop"
echo "Zeros of step 2 revived by step 3 (threshold, then retraining with prune=1):"
$ds diff "$out/loop/step-02.weights" "$out/loop/step-03.weights" --cfg cfg/digits.cfg --fail-on-revived \
    | sed -n '2p;$p'

echo
echo "== Before and after (top-1 by darknet classifier valid on $(wc -l < data/digits/valid.list) held-out images)"
.venv/bin/python - "$data" "$out" <<'EOF'
import sys
from pathlib import Path

import darknet_sparse as ds
from darknet_sparse.darknet.examples import classifier_top1
from darknet_sparse.reports import info

data, out = sys.argv[1], Path(sys.argv[2])
rows = [("dense", Path("cfg/digits.weights")), ("one-shot 92%", out / "oneshot.weights"),
        ("loop 92%", out / "loop" / "final.weights")]
print(f"{'model':<14}{'sparsity':>10}{'non-zero':>10}{'eff. FLOPs':>12}{'top-1':>8}")
for name, weights in rows:
    totals = info(ds.load("cfg/digits.cfg", weights)).totals
    top1 = classifier_top1("build/darknet/darknet", data, "cfg/digits.cfg", weights)
    print(f"{name:<14}{totals['sparsity']:>10.2%}{totals['nonzero']:>10,}"
          f"{totals['effective_bflops'] / totals['bflops']:>12.1%}{top1:>8.2%}")
EOF

echo
echo "== The real detector: COCO yolov3-tiny (models/), real frames (data/images/)"
cfg=models/yolov3-tiny.cfg
dense=models/yolov3-tiny.weights
$ds info "$dense" --cfg "$cfg"
echo
echo "== One-shot: 70% of the weights set to zero (one global threshold), no retraining"
$ds threshold "$dense" --cfg "$cfg" --mode global --sparsity 0.7 -o "$out/yolo-70.weights" | grep '^total'
echo
echo "== Batch-norm recalibration on 64 training frames, relative to the dense model (rolling mean and"
echo "   variance only: the shift pruning made, measured against the dense model on the same frames)"
$ds recalibrate --cfg "$cfg" -w "$out/yolo-70.weights" --images data/images/train.txt --max-images 64 \
    --batch 8 --reference "$dense" -o "$out/yolo-70-recal.weights" 2>/dev/null | tail -n 1
echo
n=32
echo "== Agreement with the dense model on $n of the $(wc -l < data/images/eval.txt) evaluation images"
echo "   (its detections above 0.5 are the ground truth; COCO's evaluator)"
for weights in "$out/yolo-70.weights" "$out/yolo-70-recal.weights"; do
    # Darknet prints its layer table on stderr when it loads a network: left out.
    $ds eval "$weights" --cfg "$cfg" --images data/images/eval.txt --max-images $n --reference "$dense" \
        2>/dev/null | sed -n '1p;/^mAP/p'
done

if [ ! -f build/darknet-alexeyab/libdarknet.so ]; then
    echo
    echo "== AlexeyAB's fork: not built, so part 3 is left out: $(cat build/darknet-alexeyab.unavailable 2>/dev/null \
        || echo 'make darknet-alexeyab')"
    exit 0
fi
echo
echo "== AlexeyAB's fork (build/darknet-alexeyab, patched): yolov4-tiny, AlexeyAB's own cfg"
echo "   No pretrained yolov4-tiny is reachable here: these are the fork's own initial weights (its parser's"
echo "   random draw, rolling variances set to 1), so they detect nothing; what they show is the fork's layout"
echo "   read and written, the zeros and the speed-up. The real yolov3-tiny follows, through the same build."
v4cfg=$out/yolov4-tiny.cfg
cp tests/data/alexeyab-cfg/yolov4-tiny.cfg "$v4cfg"
.venv/bin/python - "$v4cfg" "$out/yolov4-tiny.weights" <<'PY' 2>/dev/null
import sys

from darknet_sparse.darknet import Network

cfg, out = sys.argv[1:]
net = Network(cfg, None, fork="alexeyab")
for i in range(net.num_layers):
    params = net.params(i)
    if "rolling_variance" in params:
        params["rolling_variance"][:] = 1
net.save(out)
PY
$ds info "$out/yolov4-tiny.weights" --cfg "$v4cfg" | tail -n 3
echo
echo "== 90% of every layer's weights set to zero (magnitude), in AlexeyAB's layout"
$ds threshold "$out/yolov4-tiny.weights" --cfg "$v4cfg" --fork alexeyab --mode magnitude -s 0.9 \
    -o "$out/yolov4-tiny-90.weights" | grep '^total'
echo
echo "== The sparse forward pass (patches/alexeyab/0003, [net] sparse_forward=auto), in-process, one 416x416 image"
.venv/bin/python - "$v4cfg" "$out/yolov4-tiny.weights" "$out/yolov4-tiny-90.weights" <<'PY' 2>/dev/null
import sys
import time

import numpy as np

from darknet_sparse.darknet import Network

cfg, dense, sparse = sys.argv[1:]
x = np.random.default_rng(0).random((1, 3, 416, 416), dtype=np.float32)
times = {}
for name, weights in (("dense", dense), ("90% zeros", sparse)):
    net = Network(cfg, weights, fork="alexeyab")
    net.predict(x)  # the first forward builds the compressed copy of the weights
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        net.predict(x)
        runs.append(time.perf_counter() - start)
    times[name] = float(np.median(runs))
    print(f"{name:<10} {times[name] * 1000:7.1f} ms per image (median of 5, one thread)")
print(f"speed-up   {times['dense'] / times['90% zeros']:7.2f}x  (make bench-alexeyab: against stock and OpenCV)")
PY
echo
echo "== The real yolov3-tiny in AlexeyAB's Darknet: the 70% model's agreement with the dense one, both run by the"
echo "   fork (its own resize: no letterbox unless letter_box=1), then the dense model against pjreddie's run of it"
$ds eval "$out/yolo-70-recal.weights" --cfg "$cfg" --images data/images/eval.txt --max-images 16 --reference "$dense" \
    --fork alexeyab 2>/dev/null | sed -n '/^mAP@0.5 /p'
$ds eval "$dense" --cfg "$cfg" --images data/images/eval.txt --max-images 16 --reference "$dense" --fork alexeyab \
    --letter-box --reference-fork pjreddie 2>/dev/null | sed -n '/^mAP@0.5 /p'
echo
echo "== Two prune/retrain steps in AlexeyAB's detector train (prune=1), the dense yolov3-tiny as teacher"
echo "   (patches/alexeyab/0005-distill, no labels), 2 batches of 4 at 128x128 each: a demo, not a recipe"
head -n 16 data/images/train.txt > "$out/ab-train.txt"
sed -n '1~8p' data/images/eval.txt > "$out/ab-eval.txt"  # 8 of the 64
$ds loop --task detector --fork alexeyab --cfg "$cfg" -w "$dense" --images "$out/ab-train.txt" \
    --eval-images "$out/ab-eval.txt" --sparsities 0.3,0.5 --iterations-per-step 2 --train-size 128 --batch 4 \
    --recalibrate 0 --teacher "$dense" --out "$out/ab-loop" 2>/dev/null | tail -n 4
