#!/usr/bin/env bash
# The prune/retrain loop in plain shell: what `darknet-sparse loop` does,
# for those who would rather read or adapt a script.
#
#   scripts/prune_retrain.sh CFG WEIGHTS DATA OUT "0.5 0.7 0.9" ITERATIONS
#
# For each sparsity: threshold the previous weights to it (darknet-sparse
# threshold), retrain ITERATIONS batches with the patched Darknet and
# prune=1 so zeros stay zero, stop if any zero came back (darknet-sparse diff
# --fail-on-revived), print the top-1 of `darknet classifier valid`.
# OUT gets step-NN.weights, step-NN.log, final.weights and the private
# train.cfg / train.data; CFG, WEIGHTS and DATA are only read.
#
# Environment: DARKNET (default build/darknet/darknet: `make darknet`),
# DARKNET_SPARSE (default darknet-sparse), MODE (magnitude or global: the
# modes whose level is a sparsity; default magnitude).  Classifiers only: for
# a detector use `detector train`, its output is backup/train_final.weights
# (and train.backup every 100 batches), and score it your own way, or let
# `darknet-sparse loop --task detector --images DIR --eval-images DIR` make
# the labels from the dense model and score agreement with it.
set -euo pipefail

if [ $# -ne 6 ]; then
  sed -n '5p' "$0" | sed 's/^#  *//' >&2
  exit 2
fi
cfg=$1 weights=$2 data=$3 out=$4 sparsities=$5 iterations=$6
DARKNET=${DARKNET:-build/darknet/darknet}
read -r -a DS <<< "${DARKNET_SPARSE:-darknet-sparse}"
MODE=${MODE:-magnitude}

mkdir -p "$out/backup"
out=$(cd "$out" && pwd)   # Darknet saves into backup= as given: make it absolute

# Darknet takes the first value of a key, so ours go right after [net];
# -clear below resets `seen`, so max_batches counts this step's batches only.
sed -e '/^[[:space:]]*\(max_batches\|prune\)[[:space:]]*=/d' \
    -e "/^\[net\(work\)\?\]/a max_batches=$iterations\nprune=1" "$cfg" > "$out/train.cfg"
{ grep -v '^[[:space:]]*backup[[:space:]]*=' "$data" || true; echo "backup=$out/backup"; } > "$out/train.data"

current=$weights
step=0
for sparsity in $sparsities; do
  step=$((step + 1))
  n=$(printf '%02d' "$step")
  pruned=$out/step-$n.pruned.weights
  "${DS[@]}" threshold "$current" --cfg "$cfg" --mode "$MODE" --sparsity "$sparsity" -o "$pruned" > /dev/null

  rm -f "$out"/backup/*
  "$DARKNET" classifier train "$out/train.data" "$out/train.cfg" "$pruned" -clear > "$out/step-$n.log" 2>&1 \
    || { tail -n 15 "$out/step-$n.log" >&2; exit 1; }
  mv "$out/backup/train.weights" "$out/step-$n.weights"
  rm -f "$out"/backup/*

  "${DS[@]}" diff "$pruned" "$out/step-$n.weights" --cfg "$cfg" --fail-on-revived > /dev/null
  rm "$pruned"
  top1=$("$DARKNET" classifier valid "$data" "$cfg" "$out/step-$n.weights" 2> /dev/null \
         | sed -n 's/^[0-9]*: top 1: \([0-9.]*\),.*/\1/p' | tail -n 1)
  echo "step $n: sparsity $sparsity, top-1 $top1, $out/step-$n.weights"
  current=$out/step-$n.weights
done
cp "$current" "$out/final.weights"
echo "final: $out/final.weights"
