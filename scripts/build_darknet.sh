#!/usr/bin/env bash
# Build upstream Darknet, patched or stock, with upstream's own Makefile.
#
#   scripts/build_darknet.sh patched   -> build/darknet/        (make darknet)
#   scripts/build_darknet.sh stock     -> build/darknet-stock/  (make darknet-stock)
#
# DARKNET_SPARSE_BUILD_DIR=/path puts the trees (and the fetched tarball, in apt/) there
# instead of build/: `darknet-sparse build` runs the copy of this script that
# ships in the package (darknet_sparse/_upstream/, with the patches beside it)
# with DARKNET_SPARSE_BUILD_DIR set to the per-user folder.  The patches are always the ones
# in ../patches next to this script.
#
# Each result is an upstream tree built in place: darknet, libdarknet.a,
# libdarknet.so and include/darknet.h, plus binding-cflags and link-flags (what
# darknet_sparse/_darknet_build.py compiles and links the binding with).
#
# Source: Debian's source package `darknet` (pjreddie/darknet at 61c9d02e),
# fetched once with `apt-get source --download-only` through a private deb-src
# list in DARKNET_SPARSE_BUILD_DIR/apt/ and checked against patches/upstream.sha256; or, with
# DARKNET_SRC=/path/to/checkout, a copy of that tree.  `patched` applies
# patches/series in order with `patch -p1`, after copying the sparse kernels
# (patches/kernels/*.c, *.h) into its src/.
#
# Flags come from the environment as upstream's Makefile names them: GPU, CUDNN,
# OPENCV, OPENMP (default 0) and ARCH (default upstream's).  JOBS sets make -j
# (default 2).
#
# Each stage prints one line starting with "==> " on stderr (fetch,
# unpack+patch, compile).
#
# Rerunning is cheap: the tree is re-made only when the source, series or a
# patch changed, and then only files whose content changed are rewritten, so
# upstream's make recompiles just those.  A change of flags cleans the objects.
set -euo pipefail
# Paths given relative to the caller's folder, before moving to the root.
if [ -n "${DARKNET_SRC:-}" ] && [ -d "$DARKNET_SRC" ]; then DARKNET_SRC=$(cd "$DARKNET_SRC" && pwd); fi
if [ -n "${DARKNET_SPARSE_BUILD_DIR:-}" ]; then mkdir -p "$DARKNET_SPARSE_BUILD_DIR" && DARKNET_SPARSE_BUILD_DIR=$(cd "$DARKNET_SPARSE_BUILD_DIR" && pwd); fi
cd "$(dirname "$0")/.."
DARKNET_SPARSE_BUILD_DIR=${DARKNET_SPARSE_BUILD_DIR:-$PWD/build}

DEB_VERSION=0.0.0+git20180914.61c9d02e-2
TARBALL=darknet_${DEB_VERSION%-*}.orig.tar.xz
MIRROR=http://deb.debian.org/debian
SUITE=bookworm

die() { echo "build_darknet.sh: error: $*" >&2; exit 1; }
stage() { echo "==> $*" >&2; }
# kernel_files, copy_kernels, apply_series, sync_tree
source scripts/build_common.sh

case "${1:-}" in
  patched) dest=$DARKNET_SPARSE_BUILD_DIR/darknet ;;
  stock) dest=$DARKNET_SPARSE_BUILD_DIR/darknet-stock ;;
  *) die "usage: $0 patched|stock" ;;
esac
variant=$1
# DARKNET_DEST_NAME=darknet-omp builds into that folder of the build dir instead
# (a second build with other flags, e.g. OPENMP=1 for make bench-detector).
if [ -n "${DARKNET_DEST_NAME:-}" ]; then
  case "$DARKNET_DEST_NAME" in */*|.*) die "DARKNET_DEST_NAME=$DARKNET_DEST_NAME: a plain folder name" ;; esac
  dest=$DARKNET_SPARSE_BUILD_DIR/$DARKNET_DEST_NAME
fi

# Two builds sharing DARKNET_SPARSE_BUILD_DIR (the user and a test, or two make targets) take turns.
mkdir -p "$DARKNET_SPARSE_BUILD_DIR"
exec 9>"$DARKNET_SPARSE_BUILD_DIR/.build_darknet.lock"
flock 9

# Download the orig tarball into DARKNET_SPARSE_BUILD_DIR/apt/ unless a verified copy is there.
fetch_tarball() {
  local apt=$DARKNET_SPARSE_BUILD_DIR/apt expected state=cached
  expected=$(awk -v f="$TARBALL" '$2 == f {print $1}' patches/upstream.sha256)
  [ -n "$expected" ] || die "patches/upstream.sha256 has no line for $TARBALL"
  if [ ! -f "$apt/$TARBALL" ] || ! sha256_matches "$apt/$TARBALL" "$expected"; then
    mkdir -p "$apt/lists/partial"
    printf 'deb-src %s %s main\n' "$MIRROR" "$SUITE" > "$apt/sources.list"
    local opts=(-q -o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent -o APT::Sandbox::User=root
                -o "Dir::State::Lists=$apt/lists")
    apt-get "${opts[@]}" update >&2 || die "apt-get update of the deb-src list in $apt failed"
    (cd "$apt" && apt-get "${opts[@]}" source --download-only "darknet=$DEB_VERSION") >&2 \
      || die "apt-get source darknet=$DEB_VERSION failed (is $MIRROR reachable?)"
    state=downloaded
  fi
  sha256_matches "$apt/$TARBALL" "$expected" \
    || die "$apt/$TARBALL: sha256 $(sha256sum < "$apt/$TARBALL" | cut -d' ' -f1), expected $expected (patches/upstream.sha256)"
  stage "fetch: $apt/$TARBALL ($state, sha256 checked)"
  echo "$apt/$TARBALL"
}

sha256_matches() { [ "$(sha256sum < "$1" | cut -d' ' -f1)" = "$2" ]; }

# A pristine upstream tree in $1 (an empty folder).
unpack_upstream() {
  if [ -n "${DARKNET_SRC:-}" ]; then
    [ -f "$DARKNET_SRC/Makefile" ] && [ -f "$DARKNET_SRC/src/parser.c" ] \
      || die "DARKNET_SRC=$DARKNET_SRC is not a Darknet checkout (no Makefile and src/parser.c)"
    stage "fetch: copying DARKNET_SRC=$DARKNET_SRC"
    tar -C "$DARKNET_SRC" --exclude=.git --exclude=./obj --exclude='*.o' --exclude='*.a' --exclude='*.so' \
      --exclude=./darknet -cf - . | tar -C "$1" -xf -
  else
    local tarball
    tarball=$(fetch_tarball)
    tar -C "$1" --strip-components=1 -xJf "$tarball"
  fi
}

# What the tree depends on: the source and, when patched, every patch in order.
source_key() {
  if [ -n "${DARKNET_SRC:-}" ]; then
    echo "src $(cd "$DARKNET_SRC" && pwd) $(date +%s%N)"  # a user's tree may change: always refresh
  else
    echo "deb $(awk -v f="$TARBALL" '$2 == f {print $1}' patches/upstream.sha256)"
  fi
  if [ "$variant" = patched ]; then
    cat patches/series; cat patches/*.patch
    for f in $(kernel_files); do echo "$f"; cat "$f"; done
  fi
}

key=$(source_key | sha256sum | cut -d' ' -f1)
if [ "$(cat "$dest/.source-key" 2>/dev/null)" != "$key" ]; then
  tree=$(mktemp -d "$DARKNET_SPARSE_BUILD_DIR/.stage.XXXXXX")
  trap 'rm -rf "$tree" "$tree.files"' EXIT
  unpack_upstream "$tree"
  if [ "$variant" = patched ]; then
    copy_kernels "$tree"
    apply_series "$tree" patches "${DARKNET_SRC:-$TARBALL}"
    stage "unpack+patch: $(grep -cv '^[[:space:]]*\(#\|$\)' patches/series) patches applied, into $dest"
  else
    stage "unpack+patch: stock tree (no patches), into $dest"
  fi
  sync_tree "$tree" "$dest"
  echo "$key" > "$dest/.source-key"
else
  stage "fetch: not needed (the tree is up to date)"
  stage "unpack+patch: $dest is up to date"
fi

flags=(GPU="${GPU:-0}" CUDNN="${CUDNN:-0}" OPENCV="${OPENCV:-0}" OPENMP="${OPENMP:-0}")
if [ -n "${ARCH:-}" ]; then flags+=(ARCH="$ARCH"); fi
if [ "$(cat "$dest/.build-flags" 2>/dev/null)" != "${flags[*]}" ]; then
  make -s -C "$dest" clean
  printf '%s' "${flags[*]}" > "$dest/.build-flags"
fi
mkdir -p "$dest/obj"  # upstream's `obj` target races its compiles under -j
stage "compile: make -j${JOBS:-2} ${flags[*]} in $dest"
make -C "$dest" -j"${JOBS:-2}" "${flags[@]}"
# What a program compiled against include/darknet.h and linked with
# libdarknet.a needs, as upstream's Makefile computes it for these flags (the
# defines change darknet.h's structs).
make -s -C "$dest" "${flags[@]}" \
  --eval 'print-cflags: ; @echo $(filter-out -Iinclude/ -Isrc/,$(COMMON))' print-cflags > "$dest/binding-cflags"
make -s -C "$dest" "${flags[@]}" \
  --eval 'print-link-flags: ; @echo $(filter -fopenmp,$(CFLAGS)) $(LDFLAGS)' print-link-flags > "$dest/link-flags"
for f in darknet libdarknet.a libdarknet.so include/darknet.h; do
  [ -f "$dest/$f" ] || die "$dest/$f missing after make"
done
echo "build_darknet.sh: $variant Darknet in $dest (${flags[*]})" >&2
