"""Run a command as on a CPU without AVX-512: PyTorch and onnxruntime both held to AVX2.

PyTorch has switches for this (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS).
onnxruntime has none: MLAS picks its kernels once, when the library loads, from CPUID and from
XCR0, the register in which the OS says which vector state it saves. So this script copies the
installed onnxruntime package and, in the copy's native library only, replaces every `xgetbv`
(the read of XCR0) with an instruction pair that reads 0x6: the OS saves SSE and AVX state but
no AVX-512 or AMX state. Every AVX-512 and AMX kernel is then left out, as on a CPU without them,
while AVX2 and FMA stay. With --avx-vnni MLAS keeps the AVX-VNNI int8 kernels where the CPU has
them (Intel from Alder Lake on); without it they are left out too (the jump after MLAS's CPUID
probe for AVX-VNNI is made unconditional), as on Skylake to Comet Lake or AMD Zen 2 and 3.

Before running the command the copy is checked, in a fresh process:
  - it loads from the copy, not from site-packages;
  - without --avx-vnni, a u8 x s8 product whose pairs overflow 16 bits saturates, as only the
    AVX2 kernel without VNNI does (vpmaddubsw; AVX-512 VNNI and AVX-VNNI are exact);
  - an fp32 GEMM runs at a rate the script reports next to the unpatched library's.

With --openvino the installed OpenVINO package is copied and patched the same way (every
`xgetbv` in its core library and its CPU plugin), and checked: it loads from the copy, and its
CPU plugin no longer reports bfloat16 or float16 (AVX-512 and AMX) capabilities. OpenVINO's own
oneDNN fails to compile a graph when ONEDNN_MAX_CPU_ISA is set, so in this mode PyTorch's oneDNN
is not held (ATEN_CPU_CAPABILITY and MKL_ENABLE_INSTRUCTIONS still are). OpenVINO's AVX-VNNI
kernels are not left out.

What this does not reproduce: a laptop's memory bandwidth, clock and per-op dispatch cost (on
the AVX2 machine of issue 13 one tiny PyTorch op took 5-8 us). The figures it gives are this
CPU's with AVX-512 left out, not a laptop's.

    python bench/avx2_laptop.py -- python bench/compiled_vs_eager.py --threads 2 --rounds 5
    python bench/avx2_laptop.py --avx-vnni -- python bench/generate.py --device cpu ...

Needs objdump (binutils) to find the `xgetbv` instructions. Prints the check as one JSON line
on stderr, then runs the command with PYTHONPATH, the PyTorch switches and
PERCEIVER_MUSIC_ONNXRUNTIME_ISA (which bench/generate.py records) set, and
PERCEIVER_MUSIC_NATIVE_VNNI=0 (the native step's AVX2 byte products), or with --avx-vnni
PERCEIVER_MUSIC_NATIVE_VNNI=avx_vnni (AVX-VNNI's, without the step's AVX-512 kernels); exits with
its code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

XGETBV = bytes.fromhex("0f01d0")
XCR0_AVX = bytes.fromhex("6a0658")  # push 6; pop rax: 3 bytes, as xgetbv; edx is left as it was
# mov eax, 7; mov ecx, 1; cpuid; test al, 0x10 (AVX-VNNI); je ...: MLAS's AVX-VNNI probe
AVX_VNNI_PROBE = bytes.fromhex("b807000000b9010000000fa2a81074")
JMP_SHORT = 0xEB
TORCH_SWITCHES = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}

PROBE = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

def session(nodes, inputs, outputs, weights):
    graph = helper.make_graph(nodes, "probe", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

a = np.full((4, 64), 255, np.uint8)
b = np.full((64, 16), 127, np.int8)
s = session([helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, 64])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 16])], [numpy_helper.from_array(b, "b")])
exact = int(s.run(None, {"a": a})[0][0, 0]) == 255 * 127 * 64

n = 1024
w = np.random.default_rng(0).random((n, n), dtype=np.float32)
s = session([helper.make_node("MatMul", ["x", "w"], ["y"])],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [numpy_helper.from_array(w, "w")])
s.run(None, {"x": w})
best = float("inf")
for _ in range(5):
    t = time.perf_counter()
    s.run(None, {"x": w})
    best = min(best, time.perf_counter() - t)
print(json.dumps({"onnxruntime": ort.__file__, "u8s8_exact": exact, "fp32_gflops_1_thread": round(2 * n**3 / best / 1e9, 1)}))
"""


class PatchError(RuntimeError):
    """The installed onnxruntime cannot be patched (no objdump, or a layout this script does not know)."""


def native_library(package: Path) -> Path:
    found = sorted((package / "capi").glob("onnxruntime_pybind11_state*.so"))
    if not found:
        raise PatchError(f"no onnxruntime_pybind11_state*.so under {package / 'capi'}")
    return found[0]


def text_section(library: Path) -> tuple[int, int, int]:
    """(address, file offset, size) of the library's .text section, from objdump -h."""
    out = subprocess.run(["objdump", "-h", str(library)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == ".text":
            return int(fields[3], 16), int(fields[5], 16), int(fields[2], 16)
    raise PatchError(f"objdump found no .text section in {library}")


def xgetbv_offsets(library: Path, address: int, offset: int) -> list[int]:
    """File offsets of the xgetbv instructions in .text (at `address`, file `offset`): objdump
    decodes instruction boundaries, which a byte search cannot (0f 01 d0 also occurs inside
    other instructions and in data)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-j", ".text", str(library)],
                         capture_output=True, text=True, check=True).stdout
    found = re.findall(r"^\s*([0-9a-f]+):\s+xgetbv\b", out, re.MULTILINE)
    return [int(a, 16) - address + offset for a in found]


def replace_xgetbv(library: Path) -> int:
    """Every xgetbv in the library's .text reads 0x6 instead; how many there were."""
    data = bytearray(library.read_bytes())
    address, text, _ = text_section(library)
    sites = xgetbv_offsets(library, address, text)
    for at in sites:
        if data[at:at + 3] != XGETBV:
            raise PatchError(f"offset {at:#x} of {library.name} is not an xgetbv")
        data[at:at + 3] = XCR0_AVX
    library.write_bytes(bytes(data))
    return len(sites)


def patch_openvino(package: Path, dest: Path) -> dict:
    """Copy `package` (the openvino folder) to dest/openvino and patch its native libraries."""
    copy = dest / "openvino"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
    # The core library and the CPU plugin read XCR0; the other plugins and frontends do not
    # run on the CPU path (and disassembling them all takes a minute).
    libraries = [lib for pattern in ("libopenvino.so*", "libopenvino_intel_cpu_plugin.so*")
                 for lib in sorted((copy / "libs").glob(pattern)) if not lib.is_symlink()]
    patched = {lib.name: replace_xgetbv(lib) for lib in libraries}
    if not any(sites for name, sites in patched.items() if name.startswith("libopenvino_intel_cpu_plugin")):
        raise PatchError("no xgetbv in OpenVINO's CPU plugin: not a layout this script knows")
    return patched


def openvino_check(pythonpath: str) -> dict:
    """Where a fresh process loads openvino from, and what its CPU plugin says it can do."""
    code = ("import json, openvino as ov; print(json.dumps({'openvino': ov.__file__, "
            "'capabilities': ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}))")
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def patch(package: Path, dest: Path, keep_avx_vnni: bool) -> dict:
    """Copy `package` (the onnxruntime folder) to dest/onnxruntime and patch its native library."""
    if shutil.which("objdump") is None:
        raise PatchError("objdump not found: install binutils (apt-get install binutils)")
    copy = dest / "onnxruntime"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    library = native_library(copy)
    sites = replace_xgetbv(library)
    if not sites:
        raise PatchError(f"no xgetbv in {library.name}: not a layout this script knows")
    if not keep_avx_vnni:
        data = bytearray(library.read_bytes())
        _, text, size = text_section(library)
        probes = [m.start() + text for m in re.finditer(re.escape(AVX_VNNI_PROBE), bytes(data[text:text + size]))]
        if len(probes) != 1:
            raise PatchError(f"expected one AVX-VNNI probe in {library.name}, found {len(probes)}")
        data[probes[0] + len(AVX_VNNI_PROBE) - 1] = JMP_SHORT
        library.write_bytes(bytes(data))
    return {"library": str(library), "xgetbv_patched": sites, "avx_vnni": keep_avx_vnni}


def probe(pythonpath: str | None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--avx-vnni", action="store_true", help="keep MLAS's AVX-VNNI int8 kernels (Alder Lake and later)")
    ap.add_argument("--openvino", action="store_true", help="also a patched copy of OpenVINO (see above)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    try:
        import onnxruntime
    except ImportError:
        print("avx2_laptop: onnxruntime is not installed", file=sys.stderr)
        return 2
    package = Path(onnxruntime.__file__).parent
    with tempfile.TemporaryDirectory(prefix="onnxruntime-avx2-") as folder:
        try:
            report = patch(package, Path(folder), args.avx_vnni)
        except (PatchError, OSError, subprocess.CalledProcessError) as e:
            print(f"avx2_laptop: {e}", file=sys.stderr)
            return 2
        pythonpath = os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))
        try:
            native, patched = probe(os.environ.get("PYTHONPATH")), probe(pythonpath)
        except (subprocess.CalledProcessError, ValueError) as e:
            print(f"avx2_laptop: the check of the copy failed: {e}", file=sys.stderr)
            return 2
        report.update(native_fp32_gflops_1_thread=native["fp32_gflops_1_thread"],
                      patched_fp32_gflops_1_thread=patched["fp32_gflops_1_thread"],
                      patched_u8s8_exact=patched["u8s8_exact"])
        print(json.dumps({"avx2_laptop": report}), file=sys.stderr)
        if not patched["onnxruntime"].startswith(folder):
            print(f"avx2_laptop: the command would load {patched['onnxruntime']}, not the copy", file=sys.stderr)
            return 2
        if not args.avx_vnni and patched["u8s8_exact"]:
            print("avx2_laptop: the patched copy still runs a VNNI int8 kernel", file=sys.stderr)
            return 2
        isa = "avx2+avx-vnni" if args.avx_vnni else "avx2"
        env = {**os.environ, **TORCH_SWITCHES, "PYTHONPATH": pythonpath, "PERCEIVER_MUSIC_ONNXRUNTIME_ISA": isa}
        # the native step built as such a CPU builds it: AVX2's byte products, or AVX-VNNI's
        # without AVX-512's kernels
        env["PERCEIVER_MUSIC_NATIVE_VNNI"] = "avx_vnni" if args.avx_vnni else "0"
        if args.openvino:
            if (failed := held_openvino(Path(folder), pythonpath)) is not None:
                print(f"avx2_laptop: {failed}", file=sys.stderr)
                return 2
            env.pop("ONEDNN_MAX_CPU_ISA")
            env["PERCEIVER_MUSIC_OPENVINO_ISA"] = "avx2"
        return subprocess.run(command, env=env).returncode


def held_openvino(folder: Path, pythonpath: str) -> str | None:
    """Patch a copy of OpenVINO into `folder` and check it; None if it is held, else why not."""
    try:
        import openvino
    except ImportError:
        return "--openvino: openvino is not installed"
    try:
        patched = patch_openvino(Path(openvino.__file__).parent, folder)
        check = openvino_check(pythonpath)
    except (PatchError, OSError, subprocess.CalledProcessError, ValueError) as e:
        return f"--openvino: {e}"
    print(json.dumps({"avx2_laptop_openvino": dict(check, xgetbv_patched=patched)}), file=sys.stderr)
    if not check["openvino"].startswith(str(folder)):
        return f"the command would load {check['openvino']}, not the copy"
    if {"BF16", "FP16"} & set(check["capabilities"]):
        return f"the patched OpenVINO still reports {check['capabilities']}"
    return None


if __name__ == "__main__":
    sys.exit(main())
