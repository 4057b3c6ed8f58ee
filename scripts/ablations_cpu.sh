#!/usr/bin/env bash
# The model card's ablations at a size two CPU cores can train: one after another, the same
# data, the same steps, then each evaluated on the test split and on performance-like data.
#   scripts/ablations_cpu.sh DATA_DIR PERF_DIR ROOT RESULTS_JSONL
set -euo pipefail
data=$1 perf=$2 root=$3 results=$4
py=${PYTHON:-.venv/bin/python}
declare -A extra=(
  [base]=""
  [linear]="--set model.attention=linear"
  [short_context]="--set model.max_context=128"
  [no_humanize]="--set augment.humanize=0"
)
: > "$results"
for name in base linear short_context no_humanize; do
  # shellcheck disable=SC2086
  $py -m app.cli train --config configs/ablation_small.toml --data "$data" --out "$root/$name" --quiet ${extra[$name]}
  for set in "$data" "$perf"; do
    contexts=128,1024
    [ "$name" = short_context ] && contexts=128
    $py -m app.cli eval "$root/$name" --data "$set" --split test --json --max-tokens 80000 --contexts "$contexts" \
      | $py -c "import json,sys; r=json.load(sys.stdin); r['ablation']='$name'; print(json.dumps(r))" >> "$results"
  done
done
