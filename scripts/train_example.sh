#!/usr/bin/env bash
# Reproduce the example model cfg/digits.weights from scratch and record its top-1.
#
#   scripts/train_example.sh          (about a minute on 2 CPU cores)
#
# Makes data/digits/ (scripts/make_digits.py), trains cfg/digits.cfg with
# `darknet classifier train`, measures top-1 on the held-out split with
# `darknet classifier valid` (darknet_sparse.examples.classifier_top1), then
# copies the weights to cfg/digits.weights and the result to cfg/digits.top1.
# Darknet: build/darknet/darknet if built, else /usr/bin/darknet (Debian's
# build of the same upstream commit); override with DARKNET=.  Python: .venv
# unless PYTHON= says otherwise.
#
# Reproducibility: the dataset and split are byte-identical on every run, but
# training is not.  pjreddie's `classifier train` seeds rand() with time(0) for
# the initial weights and again for sampling and augmentation, offers no seed
# option, and its 32 loader threads draw from the one shared rand() in whatever
# order they are scheduled, so even a frozen clock would not repeat a run.
# Expect each run to land within a fraction of a percent of the recorded top-1.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
if [ -z "${DARKNET:-}" ]; then
  if [ -x build/darknet/darknet ]; then DARKNET=build/darknet/darknet; else DARKNET=/usr/bin/darknet; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

data=$("$PYTHON" scripts/make_digits.py data/digits)
backup=data/digits/backup
rm -f "$backup"/digits*.weights

start=$(date +%s)
"$DARKNET" classifier train "$data" cfg/digits.cfg > data/digits/train.log 2>&1 \
  || { tail -n 20 data/digits/train.log; exit 1; }
seconds=$(( $(date +%s) - start ))
rm -f "$backup"/digits_*.weights   # the per-epoch snapshots

top1=$("$PYTHON" - "$DARKNET" "$data" cfg/digits.cfg "$backup/digits.weights" <<'PY'
import sys
from darknet_sparse.examples import classifier_top1
print(classifier_top1(*sys.argv[1:]))
PY
)
cp "$backup/digits.weights" cfg/digits.weights
printf 'top1=%s\nvalid_images=%s\ntrain_seconds=%s\ndarknet=%s\n' \
  "$top1" "$(wc -l < data/digits/valid.list)" "$seconds" "$DARKNET" > cfg/digits.top1
echo "top-1 $top1 after ${seconds}s of training with $DARKNET: cfg/digits.weights, cfg/digits.top1"
