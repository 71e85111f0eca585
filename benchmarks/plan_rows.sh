#!/usr/bin/env bash
# Sensitivity-plan rows for benchmarks/detector.md (the sweep the timed run had to stop), at one level:
#   benchmarks/plan_rows.sh 0.5   (after bench_detector.py left out/bench-detector/ and the sweep wrote sensitivity.csv)
set -euo pipefail
cd "$(dirname "$0")/.."
B=out/bench-detector
DS=.venv/bin/darknet-sparse
CFG=models/yolov3-tiny.cfg
S=$1
$DS plan $B/sensitivity.csv --target-sparsity $S -o $B/plan-$S.yaml
$DS threshold models/yolov3-tiny.weights --cfg $CFG --spec $B/plan-$S.yaml -o $B/plan-$S.weights
$DS recalibrate --cfg $CFG -w $B/plan-$S.weights --images $B/calibration.txt --batch 8 -o $B/plan-$S-recal.weights
for w in plan-$S plan-$S-recal; do
  echo "== $w"
  $DS eval $B/$w.weights --cfg $CFG --images data/images/eval.txt --reference models/yolov3-tiny.weights --json 2>/dev/null \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print("map50 %.4f map %.4f" % (d["map50"], d["map"]))'
  $DS info $B/$w.weights --cfg $CFG 2>/dev/null | tail -n 1   # total: params, non-zero, sparsity, BFLOPs, effective BFLOPs
done
