#!/usr/bin/env bash
# The model card's ablations: four runs on the same data for the same number of steps, side by
# side on one GPU, then each evaluated on the test split and on performance-like data.
#   scripts/device/ablations.sh DATA_DIR PERF_DIR ROOT MINUTES RESULTS_JSONL
#   base          the default architecture and augmentation
#   linear        attention = "linear" (kernelised, elu+1) instead of softmax
#   short_context max_context = num_latents = 512: no long prefix
#   no_humanize   augmentation without humanising
set -euo pipefail
data=$1 perf=$2 root=$3 minutes=$4 results=$5
common=(--config "${CONFIG:-configs/default.toml}" --data "$data" --quiet --set train.batch_size=32 --set train.num_workers=3
        --set train.eval_every=100000 --set train.save_every=100000 --set train.log_every=20)
# shellcheck disable=SC2206
common+=(${ABLATION_EXTRA:-})  # e.g. a smaller batch for a dry run on CPU
declare -A extra=(
  [base]=""
  [linear]="--set model.attention=linear"
  [short_context]="--set model.max_context=512"
  [no_humanize]="--set augment.humanize=0"
)
run_all() {  # run_all SUFFIX STEPS MAXMIN: the four side by side
  local pids=()
  for name in "${!extra[@]}"; do
    # shellcheck disable=SC2086
    python3 -m app.cli train "${common[@]}" ${extra[$name]} --out "$root/$name$1" --steps "$2" --max-minutes "$3" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}
run_all .calibration 60 3
slowest=$(for name in "${!extra[@]}"; do python3 scripts/steps_for_budget.py "$root/$name.calibration" "$minutes"; done | sort -n | head -1)
echo "calibrated: $slowest steps for every ablation"
run_all "" "$slowest" "$minutes"
: > "$results"
for name in base linear short_context no_humanize; do
  for set in "$data:test" "$perf:test"; do
    # shellcheck disable=SC2086
    python3 -m app.cli eval "$root/$name" --data "${set%%:*}" --split "${set##*:}" --json ${EVAL_ARGS:-} \
      | python3 -c "import json,sys; r=json.load(sys.stdin); r['ablation']='$name'; r['steps']=$slowest; print(json.dumps(r))" >> "$results"
  done
done
