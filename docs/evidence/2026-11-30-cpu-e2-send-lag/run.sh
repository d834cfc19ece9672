#!/usr/bin/env bash
# usage: run.sh LABEL MODE   (MODE: shell | ci | pydrive | pytest | cold)
set -u
label=$1; mode=$2
V=/work/main/.venv/bin
d=/tmp/exp/runs/$label
rm -rf "$d"; mkdir -p "$d"
(cd /work/main && git ls-files -co --exclude-standard -z | xargs -0 cp -P --parents -t "$d/" 2>/dev/null)
export PATH=$V:$PATH
export CONTEXT_RESEARCH_CACHE=/work/main/.cache
start=$(date +%s)
case $mode in
  shell) (cd "$d" && snakemake --cores 1 e2 > "$d.log" 2>&1) ;;
  ci) (cd "$d" && CI=true snakemake --cores 1 e2 > "$d.log" 2>&1) ;;
  pydrive) $V/python /tmp/exp/drive.py "$d" $V > "$d.log" 2>&1 ;;
  pytest) (cd /tmp/exp && EXP_DIR=$d EXP_VENV=$V CI=true $V/python -m pytest -q -p no:cacheprovider test_drive.py > "$d.log" 2>&1) ;;
  cold) (cd "$d" && CONTEXT_RESEARCH_CACHE=$d/.coldcache snakemake --cores 1 e2 > "$d.log" 2>&1) ;;
esac
echo "$label $mode rc=$? $(( $(date +%s) - start ))s" >> /tmp/exp/runs.txt
