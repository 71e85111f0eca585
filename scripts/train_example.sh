#!/usr/bin/env bash
# Reproduce an example model, cfg/NAME.weights, from scratch and record its top-1.
#
#   scripts/train_example.sh [digits]   (about a minute on 2 CPU cores)
#   scripts/train_example.sh fashion    (Fashion-MNIST: about 15 minutes of CPU)
#
# Makes data/NAME/ (scripts/make_example_data.py), trains cfg/NAME.cfg with
# `darknet classifier train`, measures top-1 on the held-out split with
# `darknet classifier valid` (darknet_sparse.darknet.examples.classifier_top1), then
# copies the weights to cfg/NAME.weights and the result to cfg/NAME.top1.
# Darknet: build/darknet/darknet if built, else /usr/bin/darknet (Debian's
# build of the same upstream commit); override with DARKNET=.  Python: .venv
# unless PYTHON= says otherwise.
#
# SPLIT_SEED=N (digits only) trains on another train/validation split, in
# data/NAME-splitN/, and leaves the model there (NAME.weights, NAME.top1):
# cfg/NAME.weights is only ever written by the default split.
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

name=${1:-digits}
[ -f "cfg/$name.cfg" ] || { echo "train_example.sh: no cfg/$name.cfg" >&2; exit 2; }
folder=data/$name dest=cfg
seed_option=()
if [ -n "${SPLIT_SEED:-}" ]; then
  folder=data/$name-split$SPLIT_SEED dest=$folder seed_option=(--split-seed "$SPLIT_SEED")
fi
data=$("$PYTHON" scripts/make_example_data.py "$name" "$folder" "${seed_option[@]}")
backup=$folder/backup
rm -f "$backup/$name"*.weights

start=$(date +%s)
"$DARKNET" classifier train "$data" "cfg/$name.cfg" > "$folder/train.log" 2>&1 \
  || { tail -n 20 "$folder/train.log"; exit 1; }
seconds=$(( $(date +%s) - start ))
rm -f "$backup/$name"_*.weights   # the per-epoch snapshots

top1=$("$PYTHON" - "$DARKNET" "$data" "cfg/$name.cfg" "$backup/$name.weights" <<'PY'
import sys
from darknet_sparse.darknet.examples import classifier_top1
print(classifier_top1(*sys.argv[1:]))
PY
)
cp "$backup/$name.weights" "$dest/$name.weights"
printf 'top1=%s\nvalid_images=%s\ntrain_seconds=%s\ndarknet=%s\n' \
  "$top1" "$(wc -l < "$folder/valid.list")" "$seconds" "$DARKNET" > "$dest/$name.top1"
echo "top-1 $top1 after ${seconds}s of training with $DARKNET: $dest/$name.weights, $dest/$name.top1"
