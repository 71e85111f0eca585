# The steps both forks' builds share, sourced by scripts/build_darknet.sh and
# scripts/build_darknet_alexeyab.sh from the repository root, after each has
# defined its own die() (the messages name the calling script).

# The fork-neutral sparse kernels both series' patches call:
# patches/kernels/*.c and *.h, one per line (none: nothing).
kernel_files() {
  local f
  for f in patches/kernels/*.c patches/kernels/*.h; do
    if [ -f "$f" ]; then echo "$f"; fi
  done
}

# The kernels into the tree's src/ of $1.
copy_kernels() {
  local f
  for f in $(kernel_files); do cp "$f" "$1/src/"; done
}

# Apply the series of folder $2 (patches/ or patches/alexeyab/) to the tree in
# $1; name the patch and show patch's report (file and hunk) when one does not
# apply to $3 (what the tree was made from).
apply_series() {
  local tree=$1 folder=$2 source=$3 name out
  while read -r name _; do
    case "$name" in ''|'#'*) continue ;; esac
    [ -f "$folder/$name" ] || die "$folder/series lists $name, which is not in $folder/"
    if ! out=$(patch -d "$tree" -p1 --batch --forward --no-backup-if-mismatch -r - < "$folder/$name" 2>&1); then
      die "$folder/$name does not apply to $source:
$out"
    fi
  done < "$folder/series"
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
