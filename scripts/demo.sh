#!/usr/bin/env bash
# `make demo`, in two parts; outputs go to out/demo/.
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
