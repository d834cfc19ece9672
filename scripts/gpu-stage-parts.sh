#!/usr/bin/env bash
# Re-split a staged vLLM bundle (the parts of ../shared/gpu-host/stage-vllm.sh, whose install.sh
# concatenates whatever /root/vst/part-* holds) into parts that each fit one device call beside this
# working tree: a call carries the tree and its carried paths, 64 MiB in all.
#
#   scripts/gpu-stage-parts.sh SRC_DIR OUT_DIR
#
# SRC_DIR: a folder holding part-* files (any depth) and install.sh. OUT_DIR/c_NN/part-NN are the
# parts, to carry one per call (cp OUT_DIR/c_NN/part-NN /root/vst/); install.sh goes with the last.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 SRC_DIR OUT_DIR" >&2; exit 2; }
src=$1 out=$2
cd "$(dirname "$0")/.."
mapfile -t parts < <(find "$src" -type f -name 'part-*' | sort)
[ ${#parts[@]} -gt 0 ] || { echo "$0: no part-* files under $src" >&2; exit 1; }
install=$(find "$src" -type f -name install.sh | head -n 1)
[ -n "$install" ] || { echo "$0: no install.sh under $src" >&2; exit 1; }
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb | tail -n 1 | cut -f1)
# 2 MiB of margin for files written before the call
mib=$(( (64 * 1048576 - tree - 2 * 1048576) / 1048576 ))
[ "$mib" -ge 8 ] || { echo "$0: the working tree ($((tree / 1048576)) MiB) leaves no room for parts" >&2; exit 1; }
rm -rf "$out.tmp" && mkdir -p "$out.tmp/all"
cat "${parts[@]}" | split -b "${mib}M" -d -a 2 - "$out.tmp/all/part-"
for f in "$out.tmp"/all/part-*; do n=${f##*-}; mkdir -p "$out.tmp/c_$n"; mv "$f" "$out.tmp/c_$n/"; done
rmdir "$out.tmp/all"
cp "$install" "$(ls -d "$out.tmp"/c_* | tail -n 1)/"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$(ls -d "$out"/c_* | wc -l) parts of at most $mib MiB in $out (tree $((tree / 1048576)) MiB); install.sh in $(ls -d "$out"/c_* | tail -n 1)"
