#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and build the evidence packet, reports/packet.html, with the
# real engine on the configured model profile (the embedded model by default), plus the
# Snakemake report. Extra arguments go to snakemake (e.g. --configfile config/qwen3-8b.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
snakemake --cores "${CORES:-1}" all "$@"
snakemake --cores 1 all --report reports/snakemake-report.zip "$@"
echo "packet: $PWD/reports/packet.html"
