#!/usr/bin/env bash
# Build upstream Darknet, patched or stock, with upstream's own Makefile.
#
#   scripts/build_darknet.sh patched   -> build/darknet/        (make darknet)
#   scripts/build_darknet.sh stock     -> build/darknet-stock/  (make darknet-stock)
#
# Each result is an upstream tree built in place: darknet, libdarknet.a,
# libdarknet.so and include/darknet.h, plus binding-cflags and link-flags (what
# darknet_sparse/_darknet_build.py compiles and links the binding with).
#
# Source: Debian's source package `darknet` (pjreddie/darknet at 61c9d02e),
# fetched once with `apt-get source --download-only` through a private deb-src
# list in build/apt/ and checked against patches/upstream.sha256; or, with
# DARKNET_SRC=/path/to/checkout, a copy of that tree.  `patched` applies
# patches/series in order with `patch -p1`.
#
# Flags come from the environment as upstream's Makefile names them: GPU, CUDNN,
# OPENCV, OPENMP (default 0) and ARCH (default upstream's).  JOBS sets make -j
# (default 2).
#
# Rerunning is cheap: the tree is re-made only when the source, series or a
# patch changed, and then only files whose content changed are rewritten, so
# upstream's make recompiles just those.  A change of flags cleans the objects.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_VERSION=0.0.0+git20180914.61c9d02e-2
TARBALL=darknet_${DEB_VERSION%-*}.orig.tar.xz
MIRROR=http://deb.debian.org/debian
SUITE=bookworm

die() { echo "build_darknet.sh: error: $*" >&2; exit 1; }

case "${1:-}" in
  patched) dest=build/darknet ;;
  stock) dest=build/darknet-stock ;;
  *) die "usage: $0 patched|stock" ;;
esac
variant=$1

# Two builds sharing build/ (the user and a test, or two make targets) take turns.
mkdir -p build
exec 9>build/.build_darknet.lock
flock 9

# Download the orig tarball into build/apt/ unless a verified copy is there.
fetch_tarball() {
  local apt=build/apt expected
  expected=$(awk -v f="$TARBALL" '$2 == f {print $1}' patches/upstream.sha256)
  [ -n "$expected" ] || die "patches/upstream.sha256 has no line for $TARBALL"
  if [ ! -f "$apt/$TARBALL" ] || ! sha256_matches "$apt/$TARBALL" "$expected"; then
    mkdir -p "$apt/lists/partial"
    printf 'deb-src %s %s main\n' "$MIRROR" "$SUITE" > "$apt/sources.list"
    local opts=(-q -o "Dir::Etc::SourceList=$PWD/$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent -o APT::Sandbox::User=root
                -o "Dir::State::Lists=$PWD/$apt/lists")
    apt-get "${opts[@]}" update >&2 || die "apt-get update of the deb-src list in $apt failed"
    (cd "$apt" && apt-get "${opts[@]}" source --download-only "darknet=$DEB_VERSION") >&2 \
      || die "apt-get source darknet=$DEB_VERSION failed (is $MIRROR reachable?)"
  fi
  sha256_matches "$apt/$TARBALL" "$expected" \
    || die "$apt/$TARBALL: sha256 $(sha256sum < "$apt/$TARBALL" | cut -d' ' -f1), expected $expected (patches/upstream.sha256)"
  echo "$apt/$TARBALL"
}

sha256_matches() { [ "$(sha256sum < "$1" | cut -d' ' -f1)" = "$2" ]; }

# A pristine upstream tree in $1 (an empty folder).
unpack_upstream() {
  if [ -n "${DARKNET_SRC:-}" ]; then
    [ -f "$DARKNET_SRC/Makefile" ] && [ -f "$DARKNET_SRC/src/parser.c" ] \
      || die "DARKNET_SRC=$DARKNET_SRC is not a Darknet checkout (no Makefile and src/parser.c)"
    tar -C "$DARKNET_SRC" --exclude=.git --exclude=./obj --exclude='*.o' --exclude='*.a' --exclude='*.so' \
      --exclude=./darknet -cf - . | tar -C "$1" -xf -
  else
    local tarball
    tarball=$(fetch_tarball)
    tar -C "$1" --strip-components=1 -xJf "$tarball"
  fi
}

# Apply patches/series to the tree in $1; name the patch and show patch's
# report (file and hunk) when one does not apply.
apply_series() {
  local name out
  while read -r name _; do
    case "$name" in ''|'#'*) continue ;; esac
    [ -f "patches/$name" ] || die "patches/series lists $name, which is not in patches/"
    if ! out=$(patch -d "$1" -p1 --batch --forward --no-backup-if-mismatch -r - < "patches/$name" 2>&1); then
      die "patches/$name does not apply to ${DARKNET_SRC:-$TARBALL}:
$out"
    fi
  done < patches/series
}

# Make $2 hold exactly the files of $1, rewriting only those whose content
# differs (unchanged files keep their times, so make leaves their objects).
sync_tree() {
  local src=$1 dst=$2 f
  mkdir -p "$dst"
  (cd "$src" && find . -type f | sort) > "$src.files"
  if [ -f "$dst/.upstream-files" ]; then
    comm -23 "$dst/.upstream-files" "$src.files" | (cd "$dst" && xargs -r rm -f --)
  fi
  while read -r f; do
    if ! cmp -s "$src/$f" "$dst/$f"; then
      mkdir -p "$(dirname "$dst/$f")"
      cp "$src/$f" "$dst/$f"
    fi
  done < "$src.files"
  mv "$src.files" "$dst/.upstream-files"
}

# What the tree depends on: the source and, when patched, every patch in order.
source_key() {
  if [ -n "${DARKNET_SRC:-}" ]; then
    echo "src $(cd "$DARKNET_SRC" && pwd) $(date +%s%N)"  # a user's tree may change: always refresh
  else
    echo "deb $(awk -v f="$TARBALL" '$2 == f {print $1}' patches/upstream.sha256)"
  fi
  if [ "$variant" = patched ]; then cat patches/series; cat patches/*.patch; fi
}

key=$(source_key | sha256sum | cut -d' ' -f1)
if [ "$(cat "$dest/.source-key" 2>/dev/null)" != "$key" ]; then
  stage=$(mktemp -d build/.stage.XXXXXX)
  trap 'rm -rf "$stage" "$stage.files"' EXIT
  unpack_upstream "$stage"
  if [ "$variant" = patched ]; then apply_series "$stage"; fi
  sync_tree "$stage" "$dest"
  echo "$key" > "$dest/.source-key"
fi

flags=(GPU="${GPU:-0}" CUDNN="${CUDNN:-0}" OPENCV="${OPENCV:-0}" OPENMP="${OPENMP:-0}")
if [ -n "${ARCH:-}" ]; then flags+=(ARCH="$ARCH"); fi
if [ "$(cat "$dest/.build-flags" 2>/dev/null)" != "${flags[*]}" ]; then
  make -s -C "$dest" clean
  printf '%s' "${flags[*]}" > "$dest/.build-flags"
fi
mkdir -p "$dest/obj"  # upstream's `obj` target races its compiles under -j
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
