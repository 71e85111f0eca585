#!/usr/bin/env bash
# Build AlexeyAB's Darknet (the fork yolov4 and yolov7 live in), patched or
# stock, with the fork's own Makefile.
#
#   scripts/build_darknet_alexeyab.sh patched -> build/darknet-alexeyab/        (make darknet-alexeyab)
#   scripts/build_darknet_alexeyab.sh stock   -> build/darknet-alexeyab-stock/  (make darknet-alexeyab-stock)
#   scripts/build_darknet_alexeyab.sh --if-available patched|stock
#       the same, but where no source is reachable it writes why to
#       build/darknet-alexeyab.unavailable and exits 0 (make test: the
#       AlexeyAB tests then say they could not run, and everything else runs)
#
# Each result is the fork's tree built in place: darknet, libdarknet.so (LIBSO=1)
# and include/darknet.h, plus build-flags (the flags it was built with).
#
# Source: one commit, pinned with its content digest in
# patches/alexeyab/upstream.digest, taken from the first of
#   1. DARKNET_AB_SRC: a checkout (a git checkout's tracked files, or every
#      file of a plain folder) or a tarball of that commit;
#   2. the cache, DARKNET_SPARSE_BUILD_DIR/cache/alexeyab-darknet-<commit>.tar.gz;
#   3. ../shared/upstream/ beside the repository, when it is there (copied
#      into the cache; never required);
#   4. a download of https://github.com/AlexeyAB/darknet/archive/<commit>.tar.gz
#      (kept in the cache).
# Whatever the source, the content digest is checked before anything is
# built; a mismatch is one `Error:` line.  No source at all: one line saying
# how to give one, exit status 3.
#
# `patched` copies patches/kernels/*.[ch] (the fork-neutral sparse kernels)
# into src/, then applies patches/alexeyab/series in order with `patch -p1`.
#
# Flags as the fork's Makefile names them: GPU, CUDNN, OPENCV, OPENMP (default 0)
# and AVX (default 1 for a CPU build, 0 with GPU=1); ARCH only if set.  The
# stock and patched builds take the same flags.  JOBS sets make -j (default 2).
# DARKNET_DEST_NAME=name builds into that folder of the build dir instead.
#
# DARKNET_SPARSE_BUILD_DIR=/path puts the trees and the cache there instead of
# build/.  Each stage prints one line starting with "==> " on stderr.  A rerun
# re-makes the tree only when the source, series or a patch changed, and then
# rewrites only files whose content changed; a change of flags cleans the objects.
set -euo pipefail
if [ -n "${DARKNET_AB_SRC:-}" ] && [ -e "$DARKNET_AB_SRC" ]; then DARKNET_AB_SRC=$(realpath "$DARKNET_AB_SRC"); fi
if [ -n "${DARKNET_SPARSE_BUILD_DIR:-}" ]; then mkdir -p "$DARKNET_SPARSE_BUILD_DIR" && DARKNET_SPARSE_BUILD_DIR=$(cd "$DARKNET_SPARSE_BUILD_DIR" && pwd); fi
cd "$(dirname "$0")/.."
DARKNET_SPARSE_BUILD_DIR=${DARKNET_SPARSE_BUILD_DIR:-$PWD/build}

PIN=patches/alexeyab/upstream.digest
COMMIT=$(awk '$1 == "commit" {print $2}' "$PIN")
DIGEST=$(awk '$1 == "content" {print $2}' "$PIN")
TARBALL=alexeyab-darknet-$COMMIT.tar.gz
URL=https://github.com/AlexeyAB/darknet/archive/$COMMIT.tar.gz
CACHE=$DARKNET_SPARSE_BUILD_DIR/cache
SHARED=../shared/upstream/$TARBALL
UNAVAILABLE=$DARKNET_SPARSE_BUILD_DIR/darknet-alexeyab.unavailable
NO_SOURCE=3

die() { echo "Error: build_darknet_alexeyab.sh: $*" >&2; exit 1; }
stage() { echo "==> $*" >&2; }
# kernel_files, copy_kernels, apply_series, sync_tree
source scripts/build_common.sh

if_available=0
if [ "${1:-}" = --if-available ]; then if_available=1; shift; fi
case "${1:-}" in
  patched) dest=$DARKNET_SPARSE_BUILD_DIR/darknet-alexeyab ;;
  stock) dest=$DARKNET_SPARSE_BUILD_DIR/darknet-alexeyab-stock ;;
  *) die "usage: $0 [--if-available] patched|stock" ;;
esac
variant=$1
if [ -n "${DARKNET_DEST_NAME:-}" ]; then
  case "$DARKNET_DEST_NAME" in */*|.*) die "DARKNET_DEST_NAME=$DARKNET_DEST_NAME: a plain folder name" ;; esac
  dest=$DARKNET_SPARSE_BUILD_DIR/$DARKNET_DEST_NAME
fi
[ ${#COMMIT} = 40 ] && [ ${#DIGEST} = 64 ] || die "$PIN: no 'commit <40 hex>' and 'content <64 hex>' lines"

mkdir -p "$DARKNET_SPARSE_BUILD_DIR" "$CACHE"
exec 9>"$DARKNET_SPARSE_BUILD_DIR/.build_darknet_alexeyab.lock"
flock 9

content_digest() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1); }

# Unpack the tarball $1 into the empty folder $2 (its one top folder stripped).
unpack_tarball() {
  tar -C "$2" --strip-components=1 -xzf "$1" 2>/dev/null || die "$1: not a readable .tar.gz"
}

# Copy the checkout $1 into the empty folder $2: a git checkout's tracked
# files (as they are in the working tree), else every file but build outputs.
copy_checkout() {
  if [ -e "$1/.git" ]; then
    (cd "$1" && git ls-files -z -s | awk 'BEGIN {RS = "\0"; ORS = "\0"} $1 != "160000" {sub(/^[^\t]*\t/, ""); print}' \
      | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
      | tar --null -T - -cf -) | tar -C "$2" -xf -
  else
    tar -C "$1" --exclude=./.git --exclude=./obj --exclude='*.o' --exclude=./darknet --exclude=./libdarknet.so \
      --exclude=./uselib -cf - . | tar -C "$2" -xf -
  fi
}

# $2 unpacked from the tarball $1, checked; named $3 in messages.
checked_tarball() {
  unpack_tarball "$1" "$2"
  check_digest "$2" "$3"
}

check_digest() {
  local got
  got=$(content_digest "$1")
  [ "$got" = "$DIGEST" ] || die "$2: content digest $got, expected $DIGEST (AlexeyAB/darknet $COMMIT, $PIN)"
}

# A pristine, checked tree of the pinned commit in $1 (an empty folder).
# Returns $NO_SOURCE (leaving $1 empty) when no source is reachable.
fetch_source() {
  if [ -n "${DARKNET_AB_SRC:-}" ]; then
    if [ -d "$DARKNET_AB_SRC" ]; then
      [ -f "$DARKNET_AB_SRC/Makefile" ] && [ -f "$DARKNET_AB_SRC/src/parser.c" ] \
        || die "DARKNET_AB_SRC=$DARKNET_AB_SRC: not a Darknet checkout (no Makefile and src/parser.c)"
      copy_checkout "$DARKNET_AB_SRC" "$1"
    elif [ -f "$DARKNET_AB_SRC" ]; then
      unpack_tarball "$DARKNET_AB_SRC" "$1"
    else
      die "DARKNET_AB_SRC=$DARKNET_AB_SRC: no such file or folder"
    fi
    check_digest "$1" "DARKNET_AB_SRC=$DARKNET_AB_SRC"
    stage "fetch: DARKNET_AB_SRC=$DARKNET_AB_SRC (content digest checked)"
    return 0
  fi
  if [ -f "$CACHE/$TARBALL" ]; then
    checked_tarball "$CACHE/$TARBALL" "$1" "$CACHE/$TARBALL"
    stage "fetch: $CACHE/$TARBALL (cached, content digest checked)"
    return 0
  fi
  local tmp
  tmp=$(mktemp "$CACHE/.$TARBALL.XXXXXX")
  if [ -f "$SHARED" ]; then
    cp "$SHARED" "$tmp"
    checked_tarball "$tmp" "$1" "$(realpath "$SHARED")"
    mv -f "$tmp" "$CACHE/$TARBALL"
    stage "fetch: $(realpath "$SHARED") copied into $CACHE (content digest checked)"
    return 0
  fi
  if curl -fsSL --connect-timeout 20 --max-time 900 -o "$tmp" "$URL" 2>/dev/null; then
    checked_tarball "$tmp" "$1" "$URL"
    mv -f "$tmp" "$CACHE/$TARBALL"
    stage "fetch: $URL downloaded into $CACHE (content digest checked)"
    return 0
  fi
  rm -f "$tmp"
  return $NO_SOURCE
}

# What the tree depends on: the source and, when patched, the kernels and every patch.
source_key() {
  if [ -n "${DARKNET_AB_SRC:-}" ]; then
    echo "src $DARKNET_AB_SRC $(date +%s%N)"  # a user's tree may change: always refresh (and check)
  else
    echo "pinned $COMMIT $DIGEST"
  fi
  if [ "$variant" = patched ]; then
    cat patches/alexeyab/series patches/alexeyab/*.patch patches/kernels/*.[ch] 2>/dev/null || true
  fi
}

key=$(source_key | sha256sum | cut -d' ' -f1)
if [ "$(cat "$dest/.source-key" 2>/dev/null)" != "$key" ]; then
  tree=$(mktemp -d "$DARKNET_SPARSE_BUILD_DIR/.stage-ab.XXXXXX")
  trap 'rm -rf "$tree" "$tree.files"' EXIT
  status=0
  fetch_source "$tree" || status=$?
  if [ "$status" = "$NO_SOURCE" ]; then
    why="Error: no source of AlexeyAB's Darknet (commit $COMMIT): set DARKNET_AB_SRC to a checkout or tarball of it, or put $TARBALL into $CACHE/ (the download of $URL failed)"
    if [ "$if_available" = 1 ]; then
      echo "$why" > "$UNAVAILABLE"
      echo "$why" >&2
      exit 0
    fi
    echo "$why" >&2
    exit $NO_SOURCE
  fi
  if [ "$variant" = patched ]; then
    copy_kernels "$tree"
    apply_series "$tree" patches/alexeyab "AlexeyAB/darknet $COMMIT"
    stage "unpack+patch: $(grep -cv '^[[:space:]]*\(#\|$\)' patches/alexeyab/series || true) patches applied, into $dest"
  else
    stage "unpack+patch: stock tree (no patches), into $dest"
  fi
  sync_tree "$tree" "$dest"
  echo "$key" > "$dest/.source-key"
else
  stage "fetch: not needed (the tree is up to date)"
  stage "unpack+patch: $dest is up to date"
fi
rm -f "$UNAVAILABLE"

gpu=${GPU:-0}
if [ "$gpu" = 1 ]; then avx=${AVX:-0}; else avx=${AVX:-1}; fi
flags=(GPU="$gpu" CUDNN="${CUDNN:-0}" OPENCV="${OPENCV:-0}" AVX="$avx" OPENMP="${OPENMP:-0}" LIBSO=1)
if [ -n "${ARCH:-}" ] && [ "$gpu" = 1 ]; then flags+=(ARCH="$ARCH"); fi
if [ "$(cat "$dest/.build-flags" 2>/dev/null)" != "${flags[*]}" ]; then
  rm -rf "$dest/obj" "$dest/darknet" "$dest/libdarknet.so" "$dest/uselib"
  printf '%s' "${flags[*]}" > "$dest/.build-flags"
fi
mkdir -p "$dest/obj"
stage "compile: make -j${JOBS:-2} ${flags[*]} in $dest"
# darknet and libdarknet.so only: not the fork's `all` (uselib, backup/, chmod of its scripts).
make -C "$dest" -j"${JOBS:-2}" "${flags[@]}" darknet libdarknet.so
cp "$dest/.build-flags" "$dest/build-flags"
for f in darknet libdarknet.so include/darknet.h; do
  [ -f "$dest/$f" ] || die "$dest/$f missing after make"
done
echo "build_darknet_alexeyab.sh: $variant AlexeyAB Darknet $COMMIT in $dest (${flags[*]})" >&2
