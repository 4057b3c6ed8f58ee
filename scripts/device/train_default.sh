#!/usr/bin/env bash
# How assets/model was trained: on one GPU, in a fixed time budget.
#   scripts/device/train_default.sh DATA_DIR RUN_DIR MINUTES
# An 80-step calibration measures the step time, so the cosine schedule ends when time does.
set -euo pipefail
data=$1 run=$2 minutes=$3
python3 -m app.cli train --config "${CONFIG:-configs/default.toml}" --data "$data" --out "$run.calibration" --steps 80 --set train.log_every=20 --quiet
steps=$(python3 scripts/steps_for_budget.py "$run.calibration" "$minutes")
echo "calibrated: $steps steps in $minutes minutes"
python3 -m app.cli train --config "${CONFIG:-configs/default.toml}" --data "$data" --out "$run" --steps "$steps" \
    --max-minutes "$minutes" --quiet
python3 -m app.cli export "$run" -o "$run/export"
