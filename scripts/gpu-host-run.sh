#!/usr/bin/env bash
# Run a subset of the workflow on a GPU host that has torch but no registry access, with
# vLLM and the workflow's Python dependencies installed from carried wheels.
#
#   scripts/gpu-host-run.sh WHEEL_DIR... -- SNAKEMAKE_TARGETS_AND_FLAGS...
#
# Each WHEEL_DIR's *.whl is installed (no deps, no index) into /tmp/site-extra on every call
# (pip --upgrade; a few seconds); vLLM itself is expected in /tmp/site (the staged bundle's install.sh). The package
# is used from src/ and the `context-research` command is a shim over `python3 -m`.
set -euo pipefail
cd "$(dirname "$0")/.."
wheel_dirs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do wheel_dirs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
for d in ${wheel_dirs[@]+"${wheel_dirs[@]}"}; do
  if compgen -G "$d/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site-extra "$d"/*.whl
  fi
done
mkdir -p /tmp/cr-bin
printf '#!/usr/bin/env bash\nexec python3 -m context_research.cli "$@"\n' > /tmp/cr-bin/context-research
chmod +x /tmp/cr-bin/context-research
# vLLM's bundle (/tmp/site) before the extras, so nothing shadows the versions vLLM pins.
export PYTHONPATH="$PWD/src:/tmp/site:/tmp/site-extra${PYTHONPATH:+:$PYTHONPATH}"
export PATH="/tmp/cr-bin:/tmp/site/bin:/tmp/site-extra/bin:$PATH"
export PYTHONUNBUFFERED=1
python3 -m snakemake --cores 1 --keep-going --rerun-incomplete "$@"
