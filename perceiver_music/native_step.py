"""The decode step in kernels of our own (native/decode_step.c), built once per machine.

onnxruntime's step of the default model takes 1.5-1.9 ms at batch 1 on a 2-core CPU, most of it
spent between its kernels; the same step written as one C function over the same weights and
caches takes 0.5-1.0 ms in int8 (BENCHMARKS.md, "The native step in the engine"). OnnxDecoder
runs it in place of onnxruntime's step at 1 to MAX_ROWS rows (step() for one, step_rows() for
several: each weight read once for all rows, a primer's shared inputs once for its variations);
resets stay onnxruntime's. The K/V caches it reads may be float32, float16 (converted with F16C)
or int8 codes with a float32 scale per head and slot (cache_codes.py: a quarter of float32's bytes
a step reads, the scales applied once per score and per softmax weight).

The C is compiled here, with the machine's C compiler (`$CC`, else gcc, else cc; -O3 -mavx2
-mfma -mf16c, and VNNI's flags where the CPU has it: vnni_flags), the first time it is needed,
into `cache_folder()/native/`, keyed by the source's sha256, the compiler's version and the
flags. The library is written to a temporary name and moved into place, with its own sha256
beside it, checked before every load: a damaged library is rebuilt, never loaded. Where it
cannot be had (not x86-64 Linux with AVX2, FMA and F16C, no compiler, a compiler error, a model
of sizes the C does not handle, more than MAX_ROWS rows, or PERCEIVER_MUSIC_NATIVE_STEP=0),
`Unavailable` says why and the decoder keeps onnxruntime's step.

Precision: "float32" gives onnxruntime float32's logits (within 1e-4 across resets and a sliding
window); "int8" quantises each product's row to bytes and its weights to 7-bit codes per output
(`int8_codes`), as onnxruntime's int8 step does, with its NLL measured by bench/precision.py.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np
import torch

from .atomic_io import write_bytes
from .errors import OutputPathError

SOURCE = Path(__file__).parent / "native" / "decode_step.c"
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-shared", "-fPIC", "-pthread")
# Byte products in one instruction (vpdpbusd) where the CPU has it, in its EVEX (AVX-512 VNNI:
# Ice Lake, Zen 4 on) or VEX form (AVX-VNNI: Alder Lake on): the same integer sums as AVX2's
# three instructions, so the same logits; at 4 rows the weight products took 0.52 against
# 0.67-0.81 ms (BENCHMARKS.md). AVX-512 VNNI's flags also build 512-bit kernels for the rows'
# products and the int8 values (the same sums); AVX-VNNI's keep 256-bit vectors.
VNNI_FLAGS = {"avx512_vnni": ("-mavx512vnni", "-mavx512vl"), "avx_vnni": ("-mavxvnni",)}
# "0": the AVX2 products (what an AVX2-only CPU runs); "avx_vnni": AVX-VNNI's 256-bit products
# without AVX-512 (what a laptop with AVX-VNNI runs), where the CPU has it
VNNI_SWITCH = "PERCEIVER_MUSIC_NATIVE_VNNI"
CODE_LIMIT = 63  # 7-bit codes: vpmaddubsw's sums of two byte products stay within 16 bits
SWITCH = "PERCEIVER_MUSIC_NATIVE_STEP"  # "0" keeps onnxruntime's step everywhere
CPUINFO = Path("/proc/cpuinfo")


class Unavailable(RuntimeError):
    """The native step cannot run here; the message says why, in one line."""


# ---- the C structs (decode_step.c) ----


class Weight(ctypes.Structure):
    _fields_ = [("K", ctypes.c_int32), ("N", ctypes.c_int32), ("codes", ctypes.c_void_p), ("scale", ctypes.c_void_p),
                ("colsum", ctypes.c_void_p), ("w", ctypes.c_void_p)]


class Norm(ctypes.Structure):
    _fields_ = [("weight", ctypes.c_void_p), ("bias", ctypes.c_void_p)]


class Block(ctypes.Structure):
    _fields_ = [("norm1", Norm), ("norm2", Norm), ("qkv", Weight), ("out", Weight), ("fc", Weight), ("proj", Weight)]


class Model(ctypes.Structure):
    _fields_ = [("d", ctypes.c_int32), ("cross_heads", ctypes.c_int32), ("cross_head_dim", ctypes.c_int32),
                ("heads", ctypes.c_int32), ("head_dim", ctypes.c_int32), ("vocab", ctypes.c_int32),
                ("layers", ctypes.c_int32), ("latent_slots", ctypes.c_int32), ("positions", ctypes.c_int32),
                ("cross_half", ctypes.c_int32), ("half", ctypes.c_int32),
                ("embedding", ctypes.c_void_p), ("cross_cos", ctypes.c_void_p), ("cross_sin", ctypes.c_void_p),
                ("self_cos", ctypes.c_void_p), ("self_sin", ctypes.c_void_p),
                ("q_norm", Norm), ("kv_norm", Norm), ("mlp_norm", Norm), ("final_norm", Norm),
                ("cross_q", Weight), ("cross_kv", Weight), ("cross_out", Weight), ("cross_fc", Weight),
                ("cross_proj", Weight), ("head", Weight), ("blocks", ctypes.POINTER(Block))]


def _fields(spec: str) -> list:
    """ctypes fields from "name:kind ..." (i32, i64, ptr: a pointer, ptrs: a pointer to pointers)."""
    kinds = {"i32": ctypes.c_int32, "i64": ctypes.c_int64, "ptr": ctypes.c_void_p, "ptrs": ctypes.POINTER(ctypes.c_void_p)}
    return [(name, kinds[kind]) for name, kind in (field.split(":") for field in spec.split())]


class Step(ctypes.Structure):
    _fields_ = _fields("token:i64 pos:i64 slots:i32 cross_used:i32 latent_used:i32 cross_write:i32 latent_write:i32 "
                       "cross_kind:i32 cross_k_t:ptr cross_v:ptr cross_k_scale:ptr cross_v_scale:ptr cross_mask:ptr "
                       "latent_mask:ptr latent_kind:i32 latent_k_t:ptrs latent_v:ptrs latent_k_scale:ptrs "
                       "latent_v_scale:ptrs logits:ptr new_cross_k:ptr new_cross_v:ptr new_latent_k:ptrs "
                       "new_latent_v:ptrs")


class RowsStep(ctypes.Structure):
    _fields_ = _fields("rows:i32 tokens:ptr pos:i64 shared_slots:i32 shared_used:i32 cross_kind:i32 shared_k_t:ptr "
                       "shared_v:ptr shared_k_scale:ptr shared_v_scale:ptr shared_mask:ptr slots:i32 cross_used:i32 "
                       "latent_used:i32 cross_write:i32 latent_write:i32 cross_k_t:ptr cross_v:ptr cross_k_scale:ptr "
                       "cross_v_scale:ptr cross_mask:ptr latent_mask:ptr latent_kind:i32 latent_k_t:ptrs latent_v:ptrs "
                       "latent_k_scale:ptrs latent_v_scale:ptrs logits:ptr new_cross_k:ptr new_cross_v:ptr new_latent_k:ptrs "
                       "new_latent_v:ptrs shared_from:i32")


MAX_ROWS = 16  # decode_step.c's
CACHE_KINDS = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int8): 2}  # decode_step.c's CACHE_*


# ---- building and loading the library ----


def cpu_flags() -> list[str] | None:
    """The CPU's feature flags as /proc/cpuinfo (CPUINFO) lists them (None where it cannot be read)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    return next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])


def cpu_reason() -> str | None:
    """Why this CPU cannot run the C (None if it can): it needs x86-64 with AVX2, FMA and F16C,
    as /proc/cpuinfo (CPUINFO) lists them."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the native step is x86-64 code; this CPU is {platform.machine() or 'unknown'}"
    flags = cpu_flags()
    if flags is None:
        return f"the native step reads the CPU's features from {CPUINFO} (Linux), which is not here"
    missing = [flag for flag in ("avx2", "fma", "f16c") if flag not in flags]
    if not missing:
        return None
    named = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} and {missing[-1]}"
    return f"this CPU lacks {named}, which the native step needs"


def compiler() -> str | None:
    chosen = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    return shutil.which(chosen) if chosen else None


def vnni_flags() -> tuple[str, ...]:
    """The compiler flags of this CPU's VNNI byte products, if it has them (VNNI_FLAGS), else none.
    AVX-512 VNNI's flags also build the step's 512-bit kernels (decode_step.c)."""
    switch = os.environ.get(VNNI_SWITCH, "1")
    if switch == "0":
        return ()
    flags = set(cpu_flags() or ())
    if {"avx512_vnni", "avx512vl"} <= flags and switch != "avx_vnni":
        return VNNI_FLAGS["avx512_vnni"]
    return VNNI_FLAGS["avx_vnni"] if "avx_vnni" in flags else ()


def avx_vnni_build_differs() -> bool:
    """Whether VNNI_SWITCH=avx_vnni builds another step here than the default: the CPU has AVX-512
    VNNI (whose build adds 512-bit kernels) and AVX-VNNI too (what a laptop with it builds)."""
    return vnni_flags() == VNNI_FLAGS["avx512_vnni"] and "avx_vnni" in (cpu_flags() or ())


def library_key(cc: str, flags: tuple[str, ...] = FLAGS) -> str:
    """What the built library depends on: the source, the compiler's version and the flags."""
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise Unavailable(f"the C compiler {cc} does not run: {error}") from None
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update("\n".join([version.strip(), *flags]).encode())
    return digest.hexdigest()[:20]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _writable_folder(folder: Path) -> Path:
    """`folder`, or where it cannot be written this user's temporary one (as decode_onnx does)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return folder
    except OSError:
        fallback = Path(tempfile.gettempdir()) / f"perceiver-music-{os.getuid()}" / "native"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _compile(cc: str, target: Path, flags: tuple[str, ...] = FLAGS) -> None:
    """Compile to a temporary file beside `target`, then move it, and then its checksum, into
    place: a crash in between leaves a library without a checksum, which is rebuilt."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    checksum = target.with_name(target.name + ".sha256")
    try:
        done = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise Unavailable(f"the C compiler could not build the native step: {last}")
        checksum.unlink(missing_ok=True)
        os.replace(tmp, target)
        write_bytes(checksum, _sha256(target).encode(), fsync=False)
    except subprocess.SubprocessError as error:
        raise Unavailable(f"the C compiler could not build the native step: {error}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _intact(target: Path) -> bool:
    checksum = target.with_name(target.name + ".sha256")
    try:
        return target.is_file() and checksum.read_text().strip() == _sha256(target)
    except OSError:
        return False


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.create_context.restype = ctypes.c_void_p
    lib.create_context.argtypes = [ctypes.c_int32]
    lib.destroy_context.argtypes = [ctypes.c_void_p]
    lib.context_threads.argtypes = [ctypes.c_void_p]
    lib.rest.argtypes = [ctypes.c_void_p]
    lib.supported.argtypes = [ctypes.POINTER(Model)]
    lib.step.argtypes = [ctypes.c_void_p, ctypes.POINTER(Model), ctypes.POINTER(Step)]
    lib.step_rows.argtypes = [ctypes.c_void_p, ctypes.POINTER(Model), ctypes.POINTER(RowsStep)]
    lib.run_products.argtypes = [ctypes.c_void_p, ctypes.POINTER(Weight), ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_int32, ctypes.c_int32]
    return lib


_LIBRARIES: dict[tuple[Path, str, tuple[str, ...]], ctypes.CDLL] = {}  # by cache folder, compiler and flags
_LOCK = threading.Lock()


def load_library(cache_dir: Path | None = None) -> ctypes.CDLL:
    """The compiled library: loaded from the cache folder, built there first if it is missing or
    damaged. Raises Unavailable (one line) where it cannot be had."""
    from .decode_onnx import cache_folder

    if os.environ.get(SWITCH, "1") == "0":
        raise Unavailable(f"the native step is switched off ({SWITCH}=0)")
    reason = cpu_reason()
    if reason:
        raise Unavailable(reason)
    cc = compiler()
    if cc is None:
        raise Unavailable("no C compiler (gcc or cc) to build the native step with")
    root = Path(cache_dir or cache_folder())
    vnni = vnni_flags()
    with _LOCK:
        key = (root, cc, vnni)
        if key not in _LIBRARIES:
            try:
                lib = _built(cc, root / "native", FLAGS + vnni)
            except Unavailable:
                if not vnni:
                    raise
                lib = _built(cc, root / "native", FLAGS)  # a compiler without VNNI: AVX2's products
                vnni = ()
            lib.vnni = bool(vnni)
            _LIBRARIES[key] = _bind(lib)
        return _LIBRARIES[key]


def _built(cc: str, folder: Path, flags: tuple[str, ...]) -> ctypes.CDLL:
    """The library built with `flags` in `folder` (or in the temporary folder, where `folder`
    cannot be written), compiled first if it is missing or fails its checksum."""
    target = folder / f"decode_step-{library_key(cc, flags)}.so"
    try:
        if not _intact(target):
            target = _writable_folder(target.parent) / target.name
        if not _intact(target):
            _compile(cc, target, flags)
        try:
            return ctypes.CDLL(str(target))
        except OSError:  # passed its checksum yet will not load (a foreign file): once more
            target.unlink(missing_ok=True)
            _compile(cc, target, flags)
            return ctypes.CDLL(str(target))
    except (OSError, OutputPathError) as error:
        raise Unavailable(f"the native step cannot be built in {target.parent}: {error}") from None


# ---- one model's weights, as the C reads them ----


def int8_codes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The int8 form of a weight stored (N, K), output after output: 7-bit codes (N, K), one
    float32 scale per output, and each output's sum of codes."""
    scale = np.abs(w).max(1) / CODE_LIMIT
    scale[scale == 0] = 1.0
    codes = np.ascontiguousarray(np.clip(np.rint(w / scale[:, None]), -CODE_LIMIT, CODE_LIMIT).astype(np.int8))
    return codes, scale.astype(np.float32), codes.sum(1, dtype=np.int32)


class NativeWeights:
    """One model's weights in one precision as decode_step.c's Model struct, and the arrays it
    points into (kept here: the struct holds bare pointers)."""

    def __init__(self, model, precision: str) -> None:
        from .decode_onnx import StepGraph

        if precision not in ("float32", "int8"):
            raise ValueError(f"the native step computes float32 or int8, not {precision!r}")
        self.precision, self.keep = precision, []
        graph = StepGraph(model).eval()  # its fused, pre-scaled and rotated weights and RoPE tables
        m, c, cfg = model, model.cross, model.config
        d = cfg.d_model

        def array(t, dtype=np.float32) -> int:
            a = np.ascontiguousarray(t.detach().float().numpy() if isinstance(t, torch.Tensor) else t, dtype)
            self.keep.append(a)
            return a.ctypes.data

        def weight(t) -> Weight:
            w = t.detach().float().numpy()  # (N, K), as Linear stores it
            N, K = w.shape
            if precision == "float32":
                return Weight(K, N, None, None, None, array(w))
            codes, scale, colsum = int8_codes(w)
            return Weight(K, N, array(codes, np.int8), array(scale), array(colsum, np.int32), None)

        def norm(layer) -> Norm:
            return Norm(array(layer.weight), array(layer.bias))

        def unrotated(fused, keep: tuple[int, ...]):
            """The graph's fused weight, d rows a part, less its rotated parts: decode_step.c's rope()
            moves and negates q's and k's values instead of reading those rows."""
            parts = fused.detach().split(d)
            return torch.cat([parts[i] for i in keep])

        self.blocks = (Block * cfg.n_layers)(*[
            Block(norm(b.norm1), norm(b.norm2), weight(unrotated(getattr(graph, f"qkv{i}"), (0, 1, 4))),
                  weight(b.out.weight), weight(b.mlp.fc.weight), weight(b.mlp.proj.weight))
            for i, b in enumerate(m.blocks)])
        self.struct = Model(d, c.heads, c.head_dim, cfg.n_heads, d // cfg.n_heads, cfg.vocab_size, cfg.n_layers,
                            cfg.num_latents, graph.cross_cos.shape[0], m.rope_cross.rotated // 2,
                            m.rope_self.rotated // 2, array(m.tok_emb.weight),
                            array(graph.cross_cos), array(graph.cross_sin), array(graph.self_cos),
                            array(graph.self_sin), norm(c.q_norm), norm(c.kv_norm), norm(c.mlp_norm), norm(m.norm),
                            weight(unrotated(graph.cross_q, (0,))), weight(unrotated(graph.cross_kv, (0, 2))),
                            weight(c.out.weight), weight(c.mlp.fc.weight), weight(c.mlp.proj.weight),
                            weight(m.head.weight), self.blocks)


class WeightCache:
    """NativeWeights by model object (weakly) and precision; a model whose weights changed in place
    since (parameter versions) gets fresh ones. The int8 codes of the default model take ~0.1 s:
    made once, not per generate() call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, model, precision: str) -> NativeWeights:
        versions = tuple(p._version for p in model.parameters())
        with self._lock:
            entry = self._by_model.get(model)
            if entry is None or entry[0] != versions:
                entry = self._by_model[model] = (versions, {})
            if precision not in entry[1]:
                entry[1][precision] = NativeWeights(model, precision)
            return entry[1][precision]


WEIGHTS = WeightCache()


def _c_arrays(*arrays) -> None:
    for array in arrays:
        if not (array.flags.c_contiguous and array.dtype in (np.float32, np.int64)):
            raise ValueError("the native step reads and writes C-contiguous float32 (and int64 token) arrays")


def _kind(what: str, caches, scales) -> int:
    """decode_step.c's CACHE_* of the caches (C-contiguous, all float32, all float16 or all int8);
    int8 codes come with their scales (`scales`: one float32 array per cache, its shape the
    cache's less the head dim), the floats without (`scales` empty)."""
    kinds = {array.dtype for array in caches}
    if len(kinds) != 1 or not kinds <= CACHE_KINDS.keys() or not all(a.flags.c_contiguous for a in caches):
        raise ValueError(f"the {what} caches are C-contiguous, all float32, all float16 or all int8")
    kind = CACHE_KINDS[kinds.pop()]
    if kind == 2:
        _c_arrays(*scales)
        if len(scales) != len(caches) or any(s.ndim != c.ndim - 1 for s, c in zip(scales, caches)):
            raise ValueError(f"the {what} int8 caches need a float32 scale per head and slot")
    elif scales:
        raise ValueError(f"the {what} caches are floats: they have no scales")
    return kind


def _data(array) -> int | None:
    return None if array is None else array.ctypes.data


class NativeStep:
    """One decoder's native step: a context (buffers and a worker thread) over a model's weights.
    point() (one row) or point_rows() (several) names the arrays of the steps that follow, which
    are kept alive here while pointed at; run() steps one token per row."""

    def __init__(self, model, precision: str, threads: int, cache_dir: Path | None = None) -> None:
        if model.config.attention != "softmax":
            raise Unavailable("the native step computes softmax attention only")
        self.lib = load_library(cache_dir)
        self.weights = WEIGHTS.get(model, precision)
        if not self.lib.supported(ctypes.byref(self.weights.struct)):
            raise Unavailable("the native step does not handle this model's sizes (decode_step.c: supported())")
        self.layers = model.config.n_layers
        self.context = self.lib.create_context(2 if threads >= 2 else 1)  # its buffers and worker thread
        if not self.context:
            raise MemoryError("no memory for the native step's buffers")
        weakref.finalize(self, self.lib.destroy_context, self.context)
        self.step: Step | RowsStep | None = None
        self.pointed: tuple = ()

    @property
    def threads(self) -> int:
        return self.lib.context_threads(self.context)

    @property
    def vnni(self) -> bool:
        """Whether its byte products are VNNI's (vnni_flags), else AVX2's."""
        return self.lib.vnni

    def rest(self) -> None:
        """The worker thread sleeps now rather than spinning for its next step (1-3 ms): before
        other work takes both cores (a reset), which it would slow down. The next run() wakes it."""
        self.lib.rest(self.context)

    def _layers(self, arrays) -> ctypes.Array:
        return (ctypes.c_void_p * self.layers)(*[a.ctypes.data for a in arrays])

    def point(self, cross_k_t, cross_v, cross_mask, latent_mask, latent_k_t, latent_v, logits, new_cross_k,
              new_cross_v, new_latent_k, new_latent_v, *, cross_scales=(), latent_scales=((), ())) -> None:
        """One row's arrays, C-contiguous: the ring (Hc, hdc, S) and (Hc, S, hdc) with its mask
        (S), the latent mask (N) and per layer caches (H, hd, N) and (H, N, hd) (see _kind; int8
        with `cross_scales` (Hc, S) x 2 and `latent_scales`, per layer lists of (H, N) for K and
        for V); the outputs, float32: logits (V), the new cross K/V (Hc, hdc) and per layer the new
        latent K/V (H, hd)."""
        _c_arrays(cross_mask, latent_mask, logits, new_cross_k, new_cross_v, *new_latent_k, *new_latent_v)
        cross_kind = _kind("cross-attend", (cross_k_t, cross_v), cross_scales)
        latent_kind = _kind("latent", (*latent_k_t, *latent_v), (*latent_scales[0], *latent_scales[1]))
        self.step = Step(slots=cross_mask.shape[-1], cross_write=-1, latent_write=-1, cross_kind=cross_kind,
                         **self._own_fields(cross_k_t, cross_v, cross_scales, cross_mask, latent_mask,
                                            latent_kind, latent_k_t, latent_v, latent_scales, logits,
                                            new_cross_k, new_cross_v, new_latent_k, new_latent_v))
        self.pointed = (cross_k_t, cross_v, cross_mask, latent_mask, latent_k_t, latent_v, logits, new_cross_k,
                        new_cross_v, new_latent_k, new_latent_v, cross_scales, latent_scales)
        self.latent_slots = latent_mask.shape[-1]

    def _own_fields(self, cross_k_t, cross_v, cross_scales, cross_mask, latent_mask, latent_kind, latent_k_t,
                    latent_v, latent_scales, logits, new_cross_k, new_cross_v, new_latent_k, new_latent_v) -> dict:
        """The fields Step and RowsStep share: a row's own ring, its latent caches and its outputs."""
        cross_k_scale, cross_v_scale = cross_scales or (None, None)
        return dict(cross_k_t=cross_k_t.ctypes.data, cross_v=cross_v.ctypes.data,
                    cross_k_scale=_data(cross_k_scale), cross_v_scale=_data(cross_v_scale),
                    cross_mask=cross_mask.ctypes.data, latent_mask=latent_mask.ctypes.data,
                    latent_kind=latent_kind, latent_k_t=self._layers(latent_k_t), latent_v=self._layers(latent_v),
                    **self._latent_scales(latent_scales), logits=logits.ctypes.data,
                    new_cross_k=new_cross_k.ctypes.data, new_cross_v=new_cross_v.ctypes.data,
                    new_latent_k=self._layers(new_latent_k), new_latent_v=self._layers(new_latent_v))

    def _latent_scales(self, latent_scales) -> dict:
        k, v = latent_scales
        return {"latent_k_scale": self._layers(k), "latent_v_scale": self._layers(v)} if k else {}

    def point_rows(self, tokens, shared_k_t, shared_v, shared_mask, cross_k_t, cross_v, cross_mask, latent_mask,
                   latent_k_t, latent_v, logits, new_cross_k, new_cross_v, new_latent_k, new_latent_v, *,
                   shared_scales=(), cross_scales=(), latent_scales=((), ())) -> None:
        """Several rows' arrays: `tokens` (R,) int64; the shared ring (1, Hc, hdc, S1) and
        (1, Hc, S1, hdc) with its mask; the rows' ring (R, Hc, hdc, S2), (R, Hc, S2, hdc) and mask;
        the latent mask and per layer caches (R, H, hd, N), (R, H, N, hd) (the caches as point()'s,
        both rings of one kind, int8 with scales as point()'s); the outputs: logits (R, V), new
        cross K/V (R, Hc, hdc), per layer new latent K/V (R, H, hd)."""
        rows = tokens.shape[0]
        if not 1 <= rows <= MAX_ROWS:
            raise ValueError(f"the native step runs 1 to {MAX_ROWS} rows, not {rows}")
        _c_arrays(tokens, shared_mask, cross_mask, latent_mask, logits, new_cross_k, new_cross_v, *new_latent_k,
                  *new_latent_v)
        cross_kind = _kind("cross-attend", (shared_k_t, shared_v, cross_k_t, cross_v),
                           (*shared_scales, *cross_scales))
        latent_kind = _kind("latent", (*latent_k_t, *latent_v), (*latent_scales[0], *latent_scales[1]))
        shared_k_scale, shared_v_scale = shared_scales or (None, None)
        self.step = RowsStep(rows=rows, tokens=tokens.ctypes.data, shared_slots=shared_mask.shape[-1],
                             cross_kind=cross_kind, shared_k_t=shared_k_t.ctypes.data, shared_v=shared_v.ctypes.data,
                             shared_k_scale=_data(shared_k_scale), shared_v_scale=_data(shared_v_scale),
                             shared_mask=shared_mask.ctypes.data, slots=cross_mask.shape[-1], cross_write=-1,
                             latent_write=-1,
                             **self._own_fields(cross_k_t, cross_v, cross_scales, cross_mask, latent_mask,
                                                latent_kind, latent_k_t, latent_v, latent_scales, logits,
                                                new_cross_k, new_cross_v, new_latent_k, new_latent_v))
        self.pointed = (tokens, shared_k_t, shared_v, shared_mask, cross_k_t, cross_v, cross_mask, latent_mask,
                        latent_k_t, latent_v, logits, new_cross_k, new_cross_v, new_latent_k, new_latent_v,
                        shared_scales, cross_scales, latent_scales)
        self.latent_slots = latent_mask.shape[-1]

    def run(self, pos: int, token: int = 0, *, cross_used: int | None = None, latent_used: int | None = None,
            shared_used: int | None = None, shared_from: int = 0, cross_write: int = -1,
            latent_write: int = -1) -> None:
        """One step at position `pos`: of `token` after point(), of the tokens array's after
        point_rows(). `*_used`: how many of a ring's slots may hold inputs (default all): its
        first ones (the rest, never written and masked, are not read), and the shared ring's
        from slot `shared_from` on (those before it slid out). `cross_write`, `latent_write`: the slot
        of the (rows') ring and of every latent cache that the new K/V are stored into once the
        step is done (-1: none; they are in the new_* outputs either way)."""
        step = self.step
        step.pos = pos
        step.cross_used = step.slots if cross_used is None else cross_used
        step.latent_used = self.latent_slots if latent_used is None else latent_used
        step.cross_write, step.latent_write = cross_write, latent_write
        if isinstance(step, RowsStep):
            step.shared_used = step.shared_slots - shared_from if shared_used is None else shared_used
            step.shared_from = shared_from
            done = self.lib.step_rows(self.context, ctypes.byref(self.weights.struct), ctypes.byref(step))
        else:
            step.token = token
            done = self.lib.step(self.context, ctypes.byref(self.weights.struct), ctypes.byref(step))
        if done == -2:
            raise MemoryError("no memory for the native step's buffers")
        if done != 0:
            raise ValueError(f"the native step cannot run these tokens at position {pos}")
