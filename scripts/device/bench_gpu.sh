#!/usr/bin/env bash
# Issue 3's GPU figures, in calls that each fit the device's 10-minute limit. Run from the
# repository root on the GPU machine; results go to $OUT (or bench/out), one file per part.
#   scripts/device/bench_gpu.sh tests      the CUDA-only tests (skipped on every CPU machine)
#   scripts/device/bench_gpu.sh batch1     batch 1 at contexts 1024, 4096, 16384: graph, eager, naive, dense
#   scripts/device/bench_gpu.sh batch64    64 variations at context 4096
#   scripts/device/bench_gpu.sh training   training steps at 4096 and 16384, batch 4 and batch 32
# Rows are printed as they finish (stderr, kept in PART.log), so a run cut short still says something.
# The tests' conftest needs pretty_midi and mido, which the GPU image lacks: download their wheels
# into .whl/ here (the device README shows the pip download line) and carry .whl.
set -euo pipefail
part=${1:?give tests, batch1, batch64 or training}
out=${OUT:-bench/out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
bench=(python3 bench/generate.py --device cuda --dtype bfloat16)
case $part in
  tests)    python3 -m pytest -q -rs tests/test_generate.py tests/test_model.py 2>&1 | tee "$out/tests.log" ;;
  batch1)   "${bench[@]}" --skip batch64,training --new-tokens 1024 > "$out/batch1.json" 2> "$out/batch1.log" ;;
  batch64)  "${bench[@]}" --skip generation,training > "$out/batch64.json" 2> "$out/batch64.log" ;;
  training)
    for batch in 4 32; do
      "${bench[@]}" --skip generation,batch64 --train-batch "$batch" > "$out/training-b$batch.json" 2> "$out/training-b$batch.log"
    done ;;
  *) echo "unknown part: $part (tests, batch1, batch64 or training)" >&2; exit 2 ;;
esac
