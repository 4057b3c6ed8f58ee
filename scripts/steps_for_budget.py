"""Print how many training steps fit in a time budget, from a short calibration run's metrics.

usage: python scripts/steps_for_budget.py CALIBRATION_RUN_DIR MINUTES
The first logged interval holds start-up and compilation, so it is left out.
"""

import json
import sys
from pathlib import Path

run, minutes = Path(sys.argv[1]), float(sys.argv[2])
lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
train = [m for m in lines if "tokens_per_s" in m]
if len(train) < 3:
    sys.exit("calibration logged too few steps")
(a, b) = train[1], train[-1]
seconds_per_step = (b["elapsed_s"] - a["elapsed_s"]) / (b["step"] - a["step"])
print(int(minutes * 60 / seconds_per_step))
