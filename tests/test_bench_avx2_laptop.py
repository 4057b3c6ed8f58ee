"""bench/avx2_laptop.py, run as a person runs it: the command it runs sees PyTorch's AVX2
switches and a patched onnxruntime copy whose int8 products are the AVX2 kernel's (saturating)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")

CHILD = """
import json, os, sys, onnxruntime
print(json.dumps({"onnxruntime": onnxruntime.__file__, "isa": os.environ["PERCEIVER_MUSIC_ONNXRUNTIME_ISA"],
                  "aten": os.environ["ATEN_CPU_CAPABILITY"], "onednn": os.environ["ONEDNN_MAX_CPU_ISA"]}))
sys.exit(3)
"""


def test_the_command_runs_on_a_patched_copy_held_to_avx2_and_its_exit_code_comes_back():
    proc = subprocess.run([sys.executable, "bench/avx2_laptop.py", "--", sys.executable, "-c", CHILD],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    child = json.loads(proc.stdout)
    assert "onnxruntime-avx2-" in child["onnxruntime"] and "site-packages" not in child["onnxruntime"]
    assert (child["isa"], child["aten"], child["onednn"]) == ("avx2", "avx2", "AVX2")
    report = json.loads(proc.stderr.strip().splitlines()[0])["avx2_laptop"]
    assert report["xgetbv_patched"] >= 1 and report["avx_vnni"] is False
    assert report["patched_u8s8_exact"] is False  # vpmaddubsw saturates: no VNNI kernel ran
    assert not Path(child["onnxruntime"]).exists()  # the copy goes with the run


def test_no_command_is_a_usage_error():
    proc = subprocess.run([sys.executable, "bench/avx2_laptop.py"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "give the command" in proc.stderr


OPENVINO_CHILD = """
import json, os, sys, openvino as ov
print(json.dumps({"openvino": ov.__file__, "isa": os.environ["PERCEIVER_MUSIC_OPENVINO_ISA"],
                  "onednn": os.environ.get("ONEDNN_MAX_CPU_ISA"), "aten": os.environ["ATEN_CPU_CAPABILITY"],
                  "capabilities": ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")}))
"""


def test_openvino_runs_from_a_patched_copy_without_avx512():
    pytest.importorskip("openvino")
    proc = subprocess.run([sys.executable, "bench/avx2_laptop.py", "--avx-vnni", "--openvino", "--",
                           sys.executable, "-c", OPENVINO_CHILD],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout)
    assert "onnxruntime-avx2-" in child["openvino"] and "site-packages" not in child["openvino"]
    assert (child["isa"], child["aten"], child["onednn"]) == ("avx2", "avx2", None)
    assert "FP32" in child["capabilities"] and not {"BF16", "FP16"} & set(child["capabilities"])
