"""bench/own_step.py, bench/native_step_parts.py and bench/native_step_ab.py, run as a person
runs them: the native step computes onnxruntime's step (float32: the same logits and K/V; int8
near them) on the shipped model's real caches, and is timed beside it, in the step alone and in
generate(); its parts are timed at 1 row and 4 variations; and edited copies of its C are timed
beside it, their logits compared with its. (The native step's own tests: test_native_step.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or "avx2" not in Path("/proc/cpuinfo").read_text(),
                                reason="needs gcc and an AVX2 CPU")


def test_own_step_matches_onnxruntime_and_is_timed_in_the_loop():
    proc = subprocess.run([sys.executable, "bench/own_step.py", "--threads", "2", "--rounds", "1", "--burst", "2",
                           "--loop-rounds", "1", "--context", "1024", "--new-tokens", "60"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    checks = report["checks"]
    assert checks["own_float32_logits_max_abs_diff"] < 1e-4 and checks["own_float32_new_kv_max_abs_diff"] < 1e-4
    assert checks["own_int8_next_id_total_variation_vs_float32"] < 0.05
    assert set(report["step_ms"]) == {"onnxruntime_int8", "onnxruntime_float32", "own_int8", "own_float32"}
    assert min(report["step_ms"].values()) > 0
    loop = report["loop"]
    assert set(loop["tokens_per_s"]) == {"eager_cpu_setting", "onnxruntime_int8", "own_int8"}
    assert all(len(rates) == 1 and rates[0] > 0 for rates in loop["tokens_per_s"].values())


def test_native_step_parts_splits_the_step_at_1_row_and_4_variations():
    proc = subprocess.run([sys.executable, "bench/native_step_parts.py", "--context", "1024", "--burst", "1",
                           "--repeats", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    from perceiver_music.decode_onnx import NATIVE_INT8_CACHES

    assert report["cached_inputs"] == 1023 and report["cache_type"] == NATIVE_INT8_CACHES
    assert report["cache_bytes_per_value"] == {"float16": 2, "int8": 1}[NATIVE_INT8_CACHES]
    cases = {f"cross_{c}_latents_{n}" for c in ("none", "all") for n in (0, 256, 512)}
    assert set(report["ms_1_row"]) == set(report["ms_4_variations"]) == set(report["4_variations_over_1_row"]) == cases
    assert min(report["ms_1_row"].values()) > 0 and min(report["ms_4_variations"].values()) > 0
    assert set(report["caches"]) == {"float32", "float16", "int8"} and set(report["over_float32_caches"]) == {
        "float16", "int8"}
    for cache, timed in report["caches"].items():
        assert set(timed["ms_1_row"]) == set(timed["ms_4_variations"]) == cases, cache
    assert set(report["over_float32_caches"]["int8"]["4_variations"]) == cases
    from perceiver_music import native_step

    vnni = bool(native_step.vnni_flags())  # where the CPU has VNNI its products are timed against AVX2's
    assert report["byte_products"] == ("vnni" if vnni else "avx2")
    assert ("vnni_over_avx2_byte_products" in report) == ("avx2_byte_products" in report) == vnni
    assert report["native_step_flags"] == " ".join(native_step.vnni_flags())
    # a CPU with AVX-512 VNNI and AVX-VNNI: timed as a laptop with AVX-VNNI builds the step too
    laptop = native_step.avx_vnni_build_differs()
    assert ("avx_vnni_byte_products" in report) == ("avx512_over_avx_vnni" in report) == laptop
    if laptop:
        assert set(report["avx_vnni_byte_products"]["ms_4_variations"]) == cases


def test_native_step_ab_times_edited_copies_beside_the_shipped_step_and_compares_their_logits(tmp_path):
    shipped = (REPO / "perceiver_music/native/decode_step.c").read_text()
    same = tmp_path / "same.c"
    same.write_text(shipped)
    seven_bit = tmp_path / "seven_bit.c"  # the rows' bytes in 7 bits, not 8: other logits
    marker = "range / 255.0f"
    assert shipped.count(marker) == 1
    seven_bit.write_text(shipped.replace(marker, "range / 127.0f"))
    proc = subprocess.run([sys.executable, "bench/native_step_ab.py", str(same), str(seven_bit), "--context", "1024",
                           "--rounds", "2", "--burst", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["cross_inputs_read"] == 1023 and report["latents_read"] == 448
    assert set(report["ms_median"]) == {"shipped", "same", "seven_bit"}
    assert all(ms > 0 for build in report["ms_median"].values() for ms in build.values())
    assert set(report["over_shipped_by_round"]) == set(report["logits_max_abs_diff_from_shipped"]) == {
        "same", "seven_bit"}
    assert report["logits_max_abs_diff_from_shipped"]["same"] == {"1_rows": 0.0, "4_rows": 0.0}
    assert min(report["logits_max_abs_diff_from_shipped"]["seven_bit"].values()) > 0
    assert all(len(ratios) == 3 for ratios in report["4_variations_over_1_row_by_round"].values())


def test_native_step_ab_refuses_what_it_cannot_build_in_one_line(tmp_path):
    def run(*edited):
        return subprocess.run([sys.executable, "bench/native_step_ab.py", *map(str, edited), "--context", "1024",
                               "--rounds", "1", "--burst", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "step.c").write_text("")
    same_name = run(tmp_path / "a/step.c", tmp_path / "b/step.c")
    assert same_name.returncode == 2 and "name of its own" in same_name.stderr
    missing = run(tmp_path / "absent.c")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    broken = tmp_path / "broken.c"
    broken.write_text((REPO / "perceiver_music/native/decode_step.c").read_text() + "\nthis is not C;\n")
    refused = run(broken)
    assert refused.returncode == 2 and "could not build" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
