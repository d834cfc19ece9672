#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the whole test suite, including the end-to-end tests
# that drive the real vLLM engine through Snakemake. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -ra "$@"
