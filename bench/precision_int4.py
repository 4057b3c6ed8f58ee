"""bench/precision.py with 4-bit weights in place of int8: what int4 (MatMulNBits) costs in NLL.

The "onnx-int8" variant of this run is the compiled step with every graph's weight products in
4 bits (bench/step_variants.quantize_int4, blocks of 32) instead of 7-bit int8; the other
variants are as in bench/precision.py. The int4 export goes to a temporary cache folder, never
the user's (its key there would say int8). Needs the onnx_ir package.

    python bench/precision_int4.py --variants onnx-int8 --works 4 --threads 2
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import step_variants  # noqa: E402

from perceiver_music import decode_onnx  # noqa: E402

if __name__ == "__main__":
    if (why := step_variants.int4_available()) is not None:
        raise SystemExit(f"precision_int4: {why}")
    with tempfile.TemporaryDirectory(prefix="precision-int4-") as cache:
        os.environ["PERCEIVER_MUSIC_CACHE"] = cache
        decode_onnx._quantize = step_variants.quantize_int4
        args = sys.argv[1:]
        sys.argv = [str(BENCH / "precision.py"), *args]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            runpy.run_path(sys.argv[0], run_name="__main__")
        report = json.loads(out.getvalue())
        report["command"] = " ".join(["python bench/precision_int4.py", *args])
        report["onnx-int8 is"] = "int4 weights (MatMulNBits, blocks of 32) in every graph"
        print(json.dumps(report, indent=2))
