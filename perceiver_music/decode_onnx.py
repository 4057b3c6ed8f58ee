"""A compiled CPU decode step: the static ring-buffer step (decode_graph.py) run by onnxruntime.

On a CPU a decode step of the default model is ~1,340 small PyTorch ops, and each costs a few
microseconds of dispatch: the step is bound by dispatch, not arithmetic. Exported to ONNX and
run by onnxruntime's CPU provider, the same step is a few hundred fused kernels with no Python
in between (figures in BENCHMARKS.md).

Four graphs per model, exported once and cached on disk (`cache_folder()`):

* **step**: one token per row -> next-token logits, and the new token's K/V (cross-attend and
  every latent layer). The caches are graph *inputs*, bound once to preallocated numpy buffers
  (`OrtValue`s that share their memory), so nothing is copied per step: the new token's K/V
  come back as small outputs that the decoder writes into its ring slot, as StaticKVCache does.
  The attention over cache + new token is one softmax over [cached scores, the new score], so
  the graph never concatenates a cache. Keys are cached transposed, (B, H, head_dim, slots),
  so that q @ K is a plain MatMul.
* **shared_step**: the same step for variations of one primer, with the primer's cross-attend
  K/V kept once for all rows, beside each row's own (a batch of four read four copies of it,
  12.6 MB each at 4,096).
* **inputs** and **latents**, the reset (a full forward with R latents, as
  `PerceiverAR.forward` with a cache) in two parts: the cross-attend K/V of input tokens, and
  the latents' cross-attend over the cached ring plus the latent stack. An input's K/V depend
  on its id and position only, so a reset that continues the cached window (the generation
  loop's every reset but the first) computes them for its one new token instead of the whole
  window: RoPE makes attention depend on relative positions only, so the cached keys keep
  their positions and the queries take positions that continue them (`position_limit`).

The disk cache is keyed by the checkpoint's sha256 (for a model changed since, or made by
code, the sha256 of its tensors), the model's config, the precision, the
onnxruntime and torch versions and EXPORT_VERSION; files are written to a temporary name and
moved into place (os.replace), and each file's own sha256 is checked on load: a damaged or
stale export is rebuilt, never a crash. Precision: "float32" (the exact reference, atol 1e-4
against the eager step) or "int8" (onnxruntime's dynamic quantisation of the weight products,
in 7 bits so that no CPU's kernels saturate).

Where it can be had, the step and shared_step graphs give way to the native step (C kernels of
our own over the same buffers, native_step.py; about half onnxruntime's step time), which also
stores the new K/V into their slots itself; in int8 the decoder then keeps its K/V caches as
int8 codes with a scale per head and slot (cache_codes.py), which only the native step reads.
Resets stay on the graphs above, their K/V quantised as the native step quantises its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cache_codes
from .checkpoint import sha256_of
from .model import PerceiverAR

EXPORT_VERSION = 9
PRECISIONS = ("float32", "int8")
# generate()'s dtype -> the precision here: None is float32 (exact); torch.qint8 int8 weight products.
PRECISION_OF = {None: "float32", torch.float32: "float32", torch.qint8: "int8"}
OPSET = 17


def available() -> bool:
    """Whether onnxruntime is installed (the eager path needs nothing more)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cache_folder() -> Path:
    """$PERCEIVER_MUSIC_CACHE, else $XDG_CACHE_HOME/perceiver-music, else ~/.cache/perceiver-music."""
    if os.environ.get("PERCEIVER_MUSIC_CACHE"):
        return Path(os.environ["PERCEIVER_MUSIC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "perceiver-music"


# ---- the exported graphs: the model's own modules, written as functions of explicit buffers ----


def _rope(x: Tensor, cos: Tensor, sin: Tensor, half: int, head_dim: int) -> Tensor:
    """model.apply_rope: x (B, L, H, hd), cos/sin broadcastable to (B, L, H, rot/2). Sizes are
    Python ints, so the graph splits by constants (no shape arithmetic)."""
    rest = head_dim - 2 * half
    parts = x.split([half, half, rest] if rest else [half, half], dim=-1)
    x1, x2 = parts[0], parts[1]
    rotated = (x1 * cos - x2 * sin, x2 * cos + x1 * sin)
    return torch.cat(rotated + ((parts[2],) if rest else ()), dim=-1)


def _mlp(mlp: nn.Module, x: Tensor) -> Tensor:
    return mlp.proj(F.relu(mlp.fc(x)).square())


def position_limit(cfg) -> int:
    """Positions the compiled graphs' RoPE tables hold. A reset that continues the cached window
    keeps the cached keys' positions (no renumbering: attention depends on relative positions
    only), so positions run past max_context once the window slides; the decoder renumbers
    from 0 (a full reset) before they pass this."""
    return 2 * cfg.max_context + cfg.num_latents


def _half_tables(rotary, positions: int) -> tuple[Tensor, Tensor]:
    """cos, sin (positions, rot/2) of a model.Rotary, as plain CPU tensors: the model's own
    float64-built tables, for more positions than the model decodes."""
    longer = copy.copy(rotary)
    longer.max_positions, longer._tables = positions, {}
    cos, sin = longer._table(torch.device("cpu"))
    return cos.clone(), sin.clone()


def _full_tables(rotary, head_dim: int, positions: int) -> tuple[Tensor, Tensor]:
    """cos, sin widened to the whole head (positions, head_dim): [cos, cos, 1...] and [sin, sin,
    0...], so that RoPE is x * cos + rotated(x) * sin over the whole head (see _rotated_rows)."""
    cos, sin = _half_tables(rotary, positions)
    rest = head_dim - 2 * cos.size(-1)
    ones, zeros = torch.ones(cos.size(0), rest), torch.zeros(cos.size(0), rest)
    return torch.cat((cos, cos, ones), dim=-1), torch.cat((sin, sin, zeros), dim=-1)


def _rotated_rows(weight: Tensor, heads: int, head_dim: int, half: int) -> Tensor:
    """Rows R with R @ x = rotated(weight @ x): per head, (-x2, x1, x3) of the projection's
    (x1, x2, x3) = (first half, second half of the rotated dims, the rest). RoPE of a projection
    is then one wider product and two multiply-adds, with no split or concatenation in the graph
    (the rest's rows are multiplied by sin = 0)."""
    w = weight.reshape(heads, head_dim, -1)
    x1, x2, x3 = w[:, :half], w[:, half : 2 * half], w[:, 2 * half :]
    return torch.cat((-x2, x1, x3), dim=1).reshape(heads * head_dim, -1)


def _frozen(weight: Tensor) -> nn.Parameter:
    return nn.Parameter(weight, requires_grad=False)


def _step_attention(q: Tensor, k_t: Tensor, v: Tensor, mask: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
    """One query (B, H, 1, hd) over cached keys k_t (B, H, hd, S) with additive mask (S,), and
    over its own new key/value (B, H, 1, hd): one softmax over both, no cache copied. The query
    comes scaled by head_dim ** -0.5."""
    cached = q @ k_t + mask  # (B, H, 1, S)
    own = (q * k_new).sum(-1, keepdim=True)  # (B, H, 1, 1)
    weights = torch.cat((cached, own), dim=-1).softmax(dim=-1)
    return weights[..., :-1] @ v + weights[..., -1:] * v_new


def _ring_step_attention(q: Tensor, k_t: Tensor, v: Tensor, mask: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
    """The cross-attend's step: B queries (B, H, hd), scaled, over each row's cached inputs,
    keys k_t (B, H, hd, S) and values v (B, H, S, hd) with additive mask (S,), and over its own
    new key/value (B, H, hd), in one softmax. (A query's scores as (S, hd) @ (hd, 1) instead
    made the step at batch 1 7 % slower.)"""
    cached = (q.unsqueeze(2) @ k_t).squeeze(2) + mask  # (B, H, S)
    own = (q * k_new).sum(-1, keepdim=True)  # (B, H, 1)
    weights = torch.cat((cached, own), dim=-1).softmax(dim=-1)
    w_cached, w_own = weights.split([cached.size(-1), 1], dim=-1)
    return (w_cached.unsqueeze(2) @ v).squeeze(2) + w_own * v_new


def _shared_step_attention(q: Tensor, shared_k: Tensor, shared_v: Tensor, shared_mask: Tensor, row_k_t: Tensor,
                           row_v: Tensor, row_mask: Tensor, k_new: Tensor, v_new: Tensor) -> Tensor:
    """`_ring_step_attention` over two caches of inputs: `shared` (1, H, S1, hd), the inputs
    that every row has (the primer under its variations), read once for all rows, and `row`
    (B, H, hd, S2) keys and (B, H, S2, hd) values, each row's own.

    The shared scores are (S1, hd) @ (hd, B) per head: onnxruntime then streams the cache and
    packs only the queries (as (B, hd) @ (hd, S1) it first copied the whole cache into packed
    form, 30 % slower at four rows). Scores and weights are laid out (H, B, slots), so only
    small tensors move.
    """
    H, hd = q.size(1), q.size(2)
    q_h, k_h, v_h = (t.transpose(0, 1) for t in (q, k_new, v_new))  # (H, B, hd)
    shared = (shared_k.reshape(H, -1, hd) @ q_h.transpose(1, 2)).transpose(1, 2) + shared_mask  # (H, B, S1)
    row = (q.unsqueeze(2) @ row_k_t).squeeze(2).transpose(0, 1) + row_mask  # (H, B, S2)
    own = (q_h * k_h).sum(-1, keepdim=True)  # (H, B, 1)
    weights = torch.cat((shared, row, own), dim=-1).softmax(dim=-1)
    w_shared, w_row, w_own = weights.split([shared.size(-1), row.size(-1), 1], dim=-1)
    y = w_shared @ shared_v.reshape(H, -1, hd) + w_own * v_h  # (H, B, hd)
    y = y + (w_row.transpose(0, 1).unsqueeze(2) @ row_v).squeeze(2).transpose(0, 1)
    return y.transpose(0, 1)  # (B, H, hd)


def _attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """Full attention with an additive mask (Lq, Lk): q (B, H, Lq, hd), k/v (B, H, Lk, hd)."""
    scores = (q * scale) @ k.transpose(-1, -2) + mask
    return scores.softmax(dim=-1) @ v


class StepGraph(nn.Module):
    """The decode step of `PerceiverAR.decode_step` over StaticKVCache-like buffers.

    forward(tokens (B,), pos (1,), [shared_k, shared_v, shared_mask,] cross_k_t, cross_v,
    cross_mask, latent_mask, k_t0, v0, k_t1, v1, ...) -> logits (B, V), new cross k (B, Hc, hd),
    new cross v, then the new k and v (B, H, hd) of each latent layer. The cross-attend's cache
    is each row's own (keys transposed, (B, Hc, hd, S)), and with `shared` also one of the
    inputs every row has (_shared_step_attention); the latent caches are per row, keys
    transposed. The caller writes the new K/V into the slots and marks them valid. Two graphs,
    not one with an empty shared cache: that one's extra nodes cost a batch of one 4 %
    (BENCHMARKS.md).

    The model's arithmetic in fewer, plainer graph nodes (at one token a step costs per node
    more than per multiply): the query weights carry the attention scale (a scaled product
    becomes onnxruntime's FusedMatMul, 3x slower than a plain MatMul at one query in isolation),
    each projection that RoPE rotates also gives its rotated copy (_rotated_rows), axes of size
    1 move by reshapes, and nothing is stacked.
    """

    def __init__(self, model: PerceiverAR, shared: bool = False) -> None:
        super().__init__()
        self.model, self.shared = model, shared
        c, cfg = model.cross, model.config
        d = cfg.d_model
        positions = position_limit(cfg)
        cos, sin = _full_tables(model.rope_cross, c.head_dim, positions)
        self.register_buffer("cross_cos", cos, persistent=False)
        self.register_buffer("cross_sin", sin, persistent=False)
        cos, sin = _full_tables(model.rope_self, model.blocks[0].head_dim, positions)
        self.register_buffer("self_cos", cos, persistent=False)
        self.register_buffer("self_sin", sin, persistent=False)
        with torch.no_grad():
            shape = (c.heads, c.head_dim, model.rope_cross.rotated // 2)
            q = c.q.weight.float() * c.head_dim**-0.5
            k, v = c.kv.weight.float().split([d, d])
            # Parameters, not buffers: they export as initializers, which int8 quantisation needs.
            self.cross_q = _frozen(torch.cat((q, _rotated_rows(q, *shape))))
            self.cross_kv = _frozen(torch.cat((k, _rotated_rows(k, *shape), v)))
            for i, block in enumerate(model.blocks):
                shape = (block.heads, block.head_dim, model.rope_self.rotated // 2)
                q, k, v = block.qkv.weight.float().split([d, d, d])
                q = q * block.head_dim**-0.5
                weight = torch.cat((q, k, _rotated_rows(q, *shape), _rotated_rows(k, *shape), v))
                self.register_parameter(f"qkv{i}", _frozen(weight))

    def forward(self, tokens, pos, *caches):
        # Reshapes name every size but the batch (-1): the graph needs no shape arithmetic.
        shared, caches = (caches[:3], caches[3:]) if self.shared else ((), caches)
        cross, latent_mask, latent = caches[:3], caches[3], caches[4:]
        m = self.model
        c = m.cross
        hc, hdc, d = c.heads, c.head_dim, m.config.d_model
        x = m.tok_emb(tokens).reshape(-1, 1, d)  # (B, 1, d)
        cos, sin = self.cross_cos[pos], self.cross_sin[pos]  # (1, hd): broadcast over (B, H, hd)
        q, q_rot = F.linear(c.q_norm(x), self.cross_q).reshape(-1, 2 * hc, hdc).split([hc, hc], dim=1)
        q = q * cos + q_rot * sin  # (B, H, hd)
        k, k_rot, v = F.linear(c.kv_norm(x), self.cross_kv).reshape(-1, 3 * hc, hdc).split([hc, hc, hc], dim=1)
        k = k * cos + k_rot * sin
        y = _shared_step_attention(q, *shared, *cross, k, v) if shared else _ring_step_attention(q, *cross, k, v)
        h = x + c.out(y.reshape(-1, 1, d))
        h = h + _mlp(c.mlp, c.mlp_norm(h))
        cross_k, cross_v_new = k, v
        cos, sin = self.self_cos[pos], self.self_sin[pos]
        new_kv = []  # one output per layer and tensor: no stacking in the graph
        for i, block in enumerate(m.blocks):
            H, hd = block.heads, block.head_dim
            qkv = F.linear(block.norm1(h), getattr(self, f"qkv{i}")).reshape(-1, 1, 5 * H, hd)
            qk, qk_rot, v = qkv.split([2 * H, 2 * H, H], dim=2)
            q, k = (qk * cos + qk_rot * sin).reshape(-1, 2 * H, 1, hd).split([H, H], dim=1)  # one rotation for both
            v = v.reshape(-1, H, 1, hd)
            y = _step_attention(q, latent[2 * i], latent[2 * i + 1], latent_mask, k, v)
            h = h + block.out(y.reshape(-1, 1, d))
            h = h + _mlp(block.mlp, block.norm2(h))
            new_kv += [k.reshape(-1, H, hd), v.reshape(-1, H, hd)]
        logits = m.head(m.norm(h)).reshape(-1, m.config.vocab_size)
        return (logits, cross_k, cross_v_new, *new_kv)


class InputsGraph(nn.Module):
    """The cross-attend's K/V of input tokens, as the step caches them.

    forward(ids (B, m), pos (m,)) -> k_t (B, Hc, hd, m), v (B, Hc, m, hd). A reset that starts
    afresh runs it over the whole window; one that continues the cached window over the one new
    token only (OnnxDecoder.reset).
    """

    def __init__(self, model: PerceiverAR) -> None:
        super().__init__()
        self.model = model
        cos, sin = _half_tables(model.rope_cross, position_limit(model.config))
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, ids, pos):
        c = self.model.cross
        hc, hdc = c.heads, c.head_dim
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # (m, 1, half)
        k, v = c.kv(c.kv_norm(self.model.tok_emb(ids))).unflatten(-1, (2 * hc, hdc)).chunk(2, dim=2)
        k = _rope(k, cos, sin, cos.size(-1), hdc)
        return k.permute(0, 2, 3, 1), v.transpose(1, 2)


class LatentsGraph(nn.Module):
    """The rest of `PerceiverAR.forward(window, n, cache=..., last_only=True)`: n latents
    cross-attend to the cached inputs, then the latent stack, with the latent caches as outputs.

    forward(latent_ids (B, n), q_pos (n,), cross_k_t (B or 1, Hc, hd, S), cross_v (B or 1, Hc, S,
    hd), slot_pos (S,)) -> logits (B, V) of the last position, then k_t (B, H, hd, n) and
    v (B, H, n, hd) of each latent layer. The cross K/V are the decoder's ring as it is: slots
    in any order, each with its position in slot_pos (a slot beyond every query's position,
    e.g. an empty one, is masked), so the ring is read in place, never gathered into order; one
    ring of batch 1 serves every row (the inputs they all share).
    """

    def __init__(self, model: PerceiverAR) -> None:
        super().__init__()
        self.model = model
        positions = position_limit(model.config)
        cos, sin = _half_tables(model.rope_cross, positions)
        self.register_buffer("cross_cos", cos, persistent=False)
        self.register_buffer("cross_sin", sin, persistent=False)
        cos, sin = _half_tables(model.rope_self, positions)
        self.register_buffer("self_cos", cos, persistent=False)
        self.register_buffer("self_sin", sin, persistent=False)

    def forward(self, latent_ids, q_pos, cross_k_t, cross_v, slot_pos):
        m = self.model
        c = m.cross
        hc, hdc = c.heads, c.head_dim
        lat = m.tok_emb(latent_ids)
        q_cos, q_sin = self.cross_cos[q_pos][:, None], self.cross_sin[q_pos][:, None]
        zero = torch.zeros((), dtype=lat.dtype)
        neg = torch.full((), float("-inf"), dtype=lat.dtype)
        cross_mask = torch.where(slot_pos[None, :] <= q_pos[:, None], zero, neg)  # (n, S), bottom-right
        self_mask = torch.where(q_pos[None, :] <= q_pos[:, None], zero, neg)  # (n, n)
        half = self.cross_cos.size(-1)
        q = _rope(c.q(c.q_norm(lat)).unflatten(-1, (hc, hdc)), q_cos, q_sin, half, hdc).transpose(1, 2)
        y = ((q * hdc**-0.5) @ cross_k_t + cross_mask).softmax(dim=-1) @ cross_v
        h = lat + c.out(y.transpose(1, 2).flatten(2))
        h = h + _mlp(c.mlp, c.mlp_norm(h))
        outputs = []
        cos, sin = self.self_cos[q_pos][:, None], self.self_sin[q_pos][:, None]
        half = self.self_cos.size(-1)
        last = len(m.blocks) - 1
        for i, block in enumerate(m.blocks):
            H, hd = block.heads, block.head_dim
            qk, v = block.qkv(block.norm1(h)).unflatten(-1, (3 * H, hd)).split([2 * H, H], dim=2)
            q, k = _rope(qk, cos, sin, half, hd).transpose(1, 2).split([H, H], dim=1)
            v = v.transpose(1, 2)
            outputs += [k.transpose(-1, -2), v]
            mask = self_mask
            if i == last:  # only the last position's output is needed past the last K/V
                q, h, mask = q[:, :, -1:], h[:, -1:], self_mask[-1:]
            y = _attention(q, k, v, mask, hd**-0.5)
            h = h + block.out(y.transpose(1, 2).flatten(2))
            h = h + _mlp(block.mlp, block.norm2(h))
        logits = m.head(m.norm(h[:, -1]))
        return (logits, *outputs)


# ---- export and the disk cache --------------------------------------------------------------------


def weights_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_digest(model: nn.Module, versions: tuple | None = None) -> str:
    """The checkpoint file's sha256 when the model came from load_checkpoint unchanged, else the
    sha256 of its tensors."""
    versions = versions if versions is not None else tuple(p._version for p in model.parameters())
    loaded = getattr(model, "checkpoint_sha256", None)
    if loaded is not None and loaded[1] == versions:
        return "checkpoint:" + loaded[0]
    return "tensors:" + weights_sha256(model)


def export_key(model: PerceiverAR, precision: str, weights: str) -> dict:
    import onnxruntime

    return {
        "export_version": EXPORT_VERSION,
        "weights_sha256": weights,
        "config": model.config.to_dict(),
        "precision": precision,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__.split("+")[0],
        "opset": OPSET,
    }


def _example_inputs(model: PerceiverAR, batch: int = 2):
    cfg = model.config
    hc, hs = cfg.cross_heads, cfg.n_heads
    S, N = cfg.max_context, cfg.num_latents
    z = torch.zeros
    hdc = cfg.d_model // hc
    head = [torch.full((batch,), 3, dtype=torch.long), torch.zeros(1, dtype=torch.long)]
    rest = [z(batch, hc, hdc, S), z(batch, hc, S, hdc), z(S), z(N)]
    for _ in range(cfg.n_layers):
        rest += [z(batch, hs, cfg.d_model // hs, N), z(batch, hs, N, cfg.d_model // hs)]
    shared = max(S // 4, 1)  # dummy; the slot axes are dynamic
    step, shared_step = head + rest, head + [z(1, hc, shared, hdc), z(1, hc, shared, hdc), z(shared)] + rest
    T = min(S, max(2 * N, 8))  # dummy sizes; the axes are dynamic
    n = min(N, T - 1) if T > 1 else 1
    ids = torch.full((batch, T), 3, dtype=torch.long)
    inputs = [ids, torch.arange(T)]
    latents = [ids[:, T - n :].clone(), torch.arange(T - n, T), z(1, hc, hdc, T), z(1, hc, T, hdc), torch.arange(T)]
    return {"step": step, "shared_step": shared_step, "inputs": inputs, "latents": latents}


def _export(module: nn.Module, args, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(args), str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True)


def _quantize(path: Path, out: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Weight products only (MatMulConstBOnly): attention's activation products stay float32, and
    # so does the embedding table (a quantised Gather dequantises every row a reset looks up).
    # Weights in 7 bits (reduce_range): without VNNI (AVX2 laptops) onnxruntime multiplies uint8
    # by int8 in 16-bit pairs, which saturate with 8-bit weights; with 7 bits they cannot, and
    # every CPU computes the same logits (BENCHMARKS.md, "int8 on an AVX2-only CPU").
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs advice on the root logger
    try:
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)


def step_names(n_layers: int, shared: bool = False) -> tuple[list[str], list[str]]:
    inputs = ["tokens", "pos"] + (["shared_k", "shared_v", "shared_mask"] if shared else [])
    inputs += ["cross_k_t", "cross_v", "cross_mask", "latent_mask"]
    for i in range(n_layers):
        inputs += [f"latent_k_t{i}", f"latent_v{i}"]
    outputs = ["logits", "new_cross_k", "new_cross_v"]
    for i in range(n_layers):
        outputs += [f"new_latent_k{i}", f"new_latent_v{i}"]
    return inputs, outputs


def step_dynamic_axes(n_layers: int, shared: bool = False) -> dict:
    """The step graphs' dynamic axes: the batch, and the slots of each ring of inputs."""
    inputs, outputs = step_names(n_layers, shared)
    axes = {name: {0: "batch"} for name in inputs + outputs if name not in ("pos", "latent_mask")}
    axes.update({"cross_k_t": {0: "batch", 3: "S"}, "cross_v": {0: "batch", 2: "S"}, "cross_mask": {0: "S"}})
    if shared:
        axes.update(shared_k={2: "shared"}, shared_v={2: "shared"}, shared_mask={0: "shared"})
    return axes


INPUTS_NAMES = (["ids", "pos"], ["cross_k_t", "cross_v"])


def latents_names(n_layers: int) -> tuple[list[str], list[str]]:
    outputs = ["logits"]
    for i in range(n_layers):
        outputs += [f"latent_k_t{i}", f"latent_v{i}"]
    return ["latent_ids", "q_pos", "cross_k_t", "cross_v", "slot_pos"], outputs


def build_export(model: PerceiverAR, precision: str, folder: Path, key: dict) -> None:
    """Export the graphs (GRAPHS) into `folder` (made fresh), quantise if asked, write meta.json last."""
    model = model.eval()
    L = model.config.n_layers
    args = _example_inputs(model)
    s_in, s_out = step_names(L)
    i_dyn = {"ids": {0: "batch", 1: "m"}, "pos": {0: "m"}, "cross_k_t": {0: "batch", 3: "m"},
             "cross_v": {0: "batch", 2: "m"}}
    l_in, l_out = latents_names(L)
    l_dyn = {"latent_ids": {0: "batch", 1: "n"}, "q_pos": {0: "n"}, "cross_k_t": {0: "ring_batch", 3: "S"},
             "cross_v": {0: "ring_batch", 2: "S"}, "slot_pos": {0: "S"}, "logits": {0: "batch"}}
    for i in range(L):
        l_dyn[f"latent_k_t{i}"] = {0: "batch", 3: "n"}
        l_dyn[f"latent_v{i}"] = {0: "batch", 2: "n"}
    files = {}
    for name, module, names, dyn in (("step", StepGraph(model), (s_in, s_out), step_dynamic_axes(L)),
                                     ("shared_step", StepGraph(model, shared=True), step_names(L, shared=True),
                                      step_dynamic_axes(L, shared=True)),
                                     ("inputs", InputsGraph(model), INPUTS_NAMES, i_dyn),
                                     ("latents", LatentsGraph(model), (l_in, l_out), l_dyn)):
        plain = folder / f"{name}.float32.onnx"
        _export(module.eval(), args[name], plain, *names, dyn)
        final = folder / f"{name}.onnx"
        if precision == "int8":
            _quantize(plain, final)
            plain.unlink()
        else:
            os.replace(plain, final)
        files[name] = {"file": final.name, "sha256": sha256_of(final)}
    meta = {"key": key, "files": files}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def _key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _valid_export(folder: Path, key: dict) -> bool:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("key") != key:
            return False
        return all(sha256_of(folder / f["file"]) == f["sha256"] for f in meta["files"].values())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def exported_files(model: PerceiverAR, precision: str = "float32", *, weights: str | None = None,
                   cache_dir: Path | None = None) -> dict[str, Path]:
    """The ONNX files of this model and precision (GRAPHS): from the cache, or exported now
    (atomically: a temporary folder renamed into place). A damaged export is rebuilt; exports
    that this installation can never load again are removed (`_prune_unloadable`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    key = export_key(model, precision, weights or model_digest(model))
    root = Path(cache_dir or cache_folder()) / "onnx"
    folder = root / _key_digest(key)
    if not _valid_export(folder, key):
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.TemporaryFile(dir=root)
            probe.close()
        except OSError:  # a cache folder we cannot write: this process's temporary one
            root = Path(tempfile.gettempdir()) / f"perceiver-music-{os.getuid()}" / "onnx"
            root.mkdir(parents=True, exist_ok=True)
            folder = root / _key_digest(key)
            if _valid_export(folder, key):
                return _graph_files(folder)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=root))
        try:
            build_export(model, precision, tmp, key)
            stale = None
            if folder.exists():  # damaged or stale: move aside, then replace
                stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=root))
                os.replace(folder, stale / "old")
            try:
                os.replace(tmp, folder)
            except OSError:  # another process put a valid one there first
                if not _valid_export(folder, key):
                    raise
            if stale is not None:
                _remove_tree(stale)
            _prune_unloadable(root, key)
        finally:
            if tmp.exists():
                _remove_tree(tmp)
    return _graph_files(folder)


# What ties an export to the installed code; the rest of the key (weights, config, precision)
# names a model the user may load again.
_INSTALLATION = ("export_version", "onnxruntime", "torch", "opset")


def _prune_unloadable(root: Path, key: dict) -> None:
    """Remove exports made by another export version, onnxruntime or torch (each about
    30-110 MB, and never loaded again by this installation) and exports without a readable
    meta.json; other models' exports stay. Folders being written are hidden (.export-*)."""
    for folder in root.iterdir():
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            other = json.loads((folder / "meta.json").read_text())["key"]
            usable = all(other.get(part) == key[part] for part in _INSTALLATION)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            usable = False
        if not usable:
            _remove_tree(folder)


GRAPHS = ("step", "shared_step", "inputs", "latents")


def _graph_files(folder: Path) -> dict[str, Path]:
    return {name: folder / f"{name}.onnx" for name in GRAPHS}


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ---- sessions, cached per model object -------------------------------------------------------------


def cpu_session(path: Path, threads: int):
    """An onnxruntime CPU session of one graph file, as the decoder runs it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Workers stop spinning when a run ends: the sessions take turns, and a pool still
    # spinning after the steps made the next reset take twice as long (BENCHMARKS.md).
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class CompiledStep:
    """The onnxruntime sessions of one model, precision and thread count, one per graph (GRAPHS)."""

    def __init__(self, files: dict[str, Path], threads: int) -> None:
        self.step, self.shared_step, self.inputs, self.latents = (cpu_session(files[name], threads) for name in GRAPHS)
        self.files = files


class SessionCache:
    """Sessions by model object (weakly: they go with the model), precision and threads; a
    model whose weights changed in place since (parameter versions) gets fresh ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, model: PerceiverAR, precision: str, threads: int, cache_dir: Path | None = None) -> CompiledStep:
        versions = tuple(p._version for p in model.parameters())
        with self._lock:
            entry = self._by_model.get(model)
            if entry is None or entry["versions"] != versions:
                entry = {"versions": versions, "weights": None, "sessions": {}}
                self._by_model[model] = entry
            key = (precision, threads, str(cache_dir or cache_folder()))
            if key not in entry["sessions"]:
                if entry["weights"] is None:
                    entry["weights"] = model_digest(model, versions)
                files = exported_files(model, precision, weights=entry["weights"], cache_dir=cache_dir)
                try:
                    entry["sessions"][key] = CompiledStep(files, threads)
                except Exception:  # noqa: BLE001 - a file onnxruntime cannot load: rebuild once
                    _remove_tree(files["step"].parent)
                    files = exported_files(model, precision, weights=entry["weights"], cache_dir=cache_dir)
                    entry["sessions"][key] = CompiledStep(files, threads)
            return entry["sessions"][key]


SESSIONS = SessionCache()


# ---- the decoder -------------------------------------------------------------------------------------


EMPTY = np.iinfo(np.int64).max  # slot_pos of a slot that holds no input: beyond every query
# A ring filled up to this share is copied out for the latents graph (its attention then covers
# the filled slots only); a fuller one is read in place, masked slots and all. Measured at 4,096
# (int8, 2 threads): half full, the copy was 6-10 ms faster; three quarters full, level.
COPY_RING_BELOW = 0.75
ROW_SLOTS = 256  # the rows' ring's first size; it doubles as the rows' own inputs outgrow it
# Variations share their primer's K/V from this many rows up. Measured with the shipped model
# (a dense 1-minute primer, int8, 4,096, 2 threads, medians of 4 rounds): at 2 variations
# sharing bought no step time (2.55 against 2.45 ms) and its resets, which copy the shared ring
# beside the rows', took 71 against 60 ms; at 4 the step took 3.60 against 4.22 ms (reset 131
# against 115), 668 against 579 tokens/s.
SHARE_FROM_ROWS = 4
CACHE_TYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8}
NATIVE_INT8_CACHES = "int8"  # the native int8 step's caches (cache_type None): BENCHMARKS.md, 2026-12-05 run 4


class _Ring:
    """Cross-attend K/V of cached inputs for `rows` rows, with every slot's id per row and
    position (EMPTY and a -inf mask where it holds none). Keys are (rows, H, hd, slots) if
    `keys_transposed` (what a row's one query multiplies fastest), else (rows, H, slots, hd)
    like the values (what several queries over one shared cache multiply fastest). The
    `cached` newest slots before `slot` are in use; `used` slots have ever been written (the
    whole ring once it wrapped). It grows (a copy) while its slots run out below `limit`
    slots, then wraps. K/V are stored as `dtype` (float32, or float16 or int8 codes for the
    native step: cache_codes.py, int8's scales in k_scale and v_scale (rows, H, slots)) and
    handed to the latents graph as float32."""

    def __init__(self, rows: int, heads: int, head_dim: int, capacity: int, limit: int, keys_transposed: bool,
                 dtype=np.float32) -> None:
        self.rows, self.heads, self.head_dim, self.limit = rows, heads, head_dim, limit
        self.keys_transposed, self.dtype = keys_transposed, dtype
        self.clear(capacity)

    def clear(self, capacity: int) -> None:
        """Empty, with `capacity` slots (the buffers kept if they have that size already: what
        masked slots hold does not matter, as long as it is finite)."""
        if getattr(self, "capacity", None) != capacity:
            shape = (self.rows, self.heads, capacity, self.head_dim)
            self.v = np.zeros(shape, self.dtype)
            self.k = np.zeros((self.rows, self.heads, self.head_dim, capacity) if self.keys_transposed else shape, self.dtype)
            self.k_scale = self.v_scale = None
            if self.dtype == np.int8:
                self.k_scale, self.v_scale = (np.zeros((self.rows, self.heads, capacity), np.float32) for _ in "kv")
            self.mask, self.pos = np.empty(capacity, np.float32), np.empty(capacity, np.int64)
            self.ids = np.zeros((self.rows, capacity), np.int64)
            self.capacity = capacity
        self.mask.fill(-np.inf)
        self.pos.fill(EMPTY)
        self.slot = self.cached = self.used = 0

    def _keys(self, slots) -> tuple:
        """The index of `slots` in self.k."""
        return (..., slots) if self.keys_transposed else (slice(None), slice(None), slots)

    @property
    def scales(self) -> tuple:
        """(k_scale, v_scale) of int8 codes, else ()."""
        return () if self.k_scale is None else (self.k_scale, self.v_scale)

    def _grow(self, capacity: int) -> None:
        old = self.k, self.v, self.mask, self.pos, self.ids, *self.scales
        slot, cached, used, n = self.slot, self.cached, self.used, self.capacity
        self.clear(capacity)  # new buffers: the old ones are copied in
        self.k[self._keys(slice(n))], self.v[:, :, :n], self.mask[:n], self.pos[:n], self.ids[:, :n] = old[:5]
        if self.k_scale is not None:
            self.k_scale[..., :n], self.v_scale[..., :n] = old[5:]
        self.slot, self.cached, self.used = slot, cached, used

    def _store(self, slots, k: np.ndarray, v: np.ndarray) -> None:
        """K/V into `slots` (an index or a slice): k as self.k's layout at those slots, v as
        self.v's (rows, H, [slots,] hd), as the ring's dtype."""
        k_axis = -2 if self.keys_transposed and isinstance(slots, slice) else -1  # where the dims lie
        k_scale = v_scale = None
        if self.k_scale is not None:
            k_scale, v_scale = self.k_scale[:, :, slots], self.v_scale[:, :, slots]
        cache_codes.store(self.k[self._keys(slots)], k, k_scale, axis=k_axis)
        cache_codes.store(self.v[:, :, slots], v, v_scale, axis=-1)

    def drop_oldest(self, count: int) -> None:
        count = min(count, self.cached)
        slots = (self.slot - self.cached + np.arange(count)) % self.capacity
        self.pos[slots] = EMPTY
        self.mask[slots] = -np.inf
        self.cached -= count

    def cached_span(self) -> tuple[int, int]:
        """(first slot, count) of the cached inputs of a ring that never wrapped (the shared
        one: filled once, then its inputs only slide out, oldest first)."""
        first = self.slot - self.cached
        if first < 0:
            raise RuntimeError("the ring wrapped: its cached inputs are not one span")
        return first, self.cached

    def cached_ids(self) -> np.ndarray:
        """The cached inputs' ids (rows, cached), oldest first."""
        return self.ids[:, (self.slot - self.cached + np.arange(self.cached)) % self.capacity]

    def append(self, ids: np.ndarray, k: np.ndarray, v: np.ndarray, position: int) -> bool:
        """One input per row (K/V (rows, H, hd)) into the next slot; True if the buffers were
        replaced (grown), so that whoever bound them binds them again."""
        c, grown = self.claim()
        self._store(c, k, v)
        self.record(c, ids, position)
        return grown

    def claim(self) -> tuple[int, bool]:
        """The next slot, for an input whose K/V someone else writes (the native step), and
        whether the buffers were replaced (grown) to make room for it."""
        grown = self.slot == self.capacity and self.capacity < self.limit
        if grown:
            self._grow(min(2 * self.capacity, self.limit))
        return self.slot % self.capacity, grown

    def record(self, c: int, ids: np.ndarray, position: int) -> None:
        """Slot c (claimed, its K/V written) now holds the inputs `ids` (rows) at `position`."""
        self.mask[c], self.pos[c], self.ids[:, c] = 0.0, position, ids
        self.slot = c + 1
        self.cached = min(self.cached + 1, self.capacity)
        self.used = max(self.used, c + 1)

    def fill(self, ids: np.ndarray, first_position: int, k_t: np.ndarray | None = None, v: np.ndarray | None = None) -> None:
        """Start afresh: the inputs `ids` (rows, T) in slots 0..T-1, at positions from
        `first_position`, with keys k_t (rows, H, hd, T) and values v (rows, H, T, hd), or
        none (the caller writes them)."""
        T = ids.shape[1]
        if k_t is not None:
            self._store(slice(T), k_t if self.keys_transposed else k_t.transpose(0, 1, 3, 2), v)
        self.pos[:T] = np.arange(first_position, first_position + T)
        self.ids[:, :T] = ids
        self.mask[:T] = 0.0
        self.slot = self.cached = self.used = T

    def keys_t(self, count: int, rows: int | None = None, first: int = 0) -> np.ndarray:
        """The first `rows` rows' (default all) keys of `count` slots from slot `first` on, as
        float32 (rows, H, hd, count): a view if they are stored so, else a copy."""
        r, slots = rows or self.rows, slice(first, first + count)
        k = self.k[:r][self._keys(slots)]
        if k.dtype != np.float32:
            scales = None if self.k_scale is None else self.k_scale[:r, :, slots]
            k = cache_codes.as_float32(k, scales, -2 if self.keys_transposed else -1)
        return k if self.keys_transposed else k.transpose(0, 1, 3, 2)

    def values(self, count: int, rows: int | None = None, first: int = 0) -> np.ndarray:
        """The first `rows` rows' (default all) values of `count` slots from slot `first` on, as
        float32 (rows, H, count, hd): a view if they are stored so, else a copy."""
        r, slots = rows or self.rows, slice(first, first + count)
        v = self.v[:r, :, slots]
        if v.dtype == np.float32:
            return v
        return cache_codes.as_float32(v, None if self.v_scale is None else self.v_scale[:r, :, slots])

    def attended(self, rows: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keys (transposed), values and slot positions for the latents graph, of the first
        `rows` rows (default all): the slots ever written, copied out if the ring is filled
        below COPY_RING_BELOW (or its keys are not stored transposed, or not as float32), else
        the ring in place."""
        S, r = self.used, rows or self.rows
        if S < COPY_RING_BELOW * self.capacity or not self.keys_transposed or self.dtype != np.float32:
            return (np.ascontiguousarray(self.keys_t(S, r)), np.ascontiguousarray(self.values(S, r)),
                    self.pos[:S])
        return self.k[:r], self.v[:r], self.pos


class OnnxDecoder:
    """Same interface as generate.EagerDecoder; the caches are numpy buffers that onnxruntime
    reads in place (IO binding), and the decoder writes each step's new K/V into its slot.

    The cross-attend's cache is two rings (_Ring): `rows`, each row's own inputs, and in a
    batch of several rows `shared`, one copy of the inputs that every row has (the primer,
    under its variations), which the `shared_step` graph reads once for all rows. The shared
    inputs are the oldest (positions only grow), so they slide out first, from its first slot
    on (the native step and the resets read only the slots still held); once none is left, or
    in a batch of one, the plain `step` graph runs.

    A reset whose window is the cached inputs plus one new id (every reset of the generation
    loop after the first) computes that one id's K/V and keeps the rest; any other window
    starts afresh, as does a reset whose positions would run past the graphs' tables
    (position_limit), which numbers the window from 0 again.

    `reset_runtime`: "onnx" (the graphs) or "torch" (the model's own forward writing into the
    same buffers, always afresh). `threads`: onnxruntime's intra-op threads (default: torch's).
    `identical_rows_once`: an onnx reset over rows that are all the same window (variations at
    their prefill) computes one row and broadcasts its K/V and logits (off: every row, for
    bench/variation_prefill.py).

    `native_step`: the step runs in kernels of our own (native_step.py: about half onnxruntime's
    step time at batch 1) over the same buffers. None: where it can be had, else onnxruntime's
    step (`native_unavailable` says why); True: it or an error (native_step.Unavailable); False:
    onnxruntime's step. `cache_type`: what the K/V caches hold, "float32", or "float16" or
    "int8" (cache_codes.py), which only the native step reads (None: NATIVE_INT8_CACHES with
    the native step in int8, where it costs no measured NLL; float32 keeps the exact
    reference's caches).
    """

    def __init__(self, model: PerceiverAR, batch: int, *, precision: str = "float32", reset_runtime: str = "onnx",
                 threads: int | None = None, cache_dir: Path | None = None, torch_model: PerceiverAR | None = None,
                 sessions: SessionCache = SESSIONS, identical_rows_once: bool = True,
                 native_step: bool | None = None, cache_type: str | None = None) -> None:
        cfg = model.config
        if cfg.attention != "softmax":
            raise ValueError("the compiled step supports softmax attention only")
        if next(model.parameters()).device.type != "cpu":
            raise ValueError("the onnx runtime is for CPU models")
        if reset_runtime not in ("onnx", "torch"):
            raise ValueError(f"reset_runtime must be onnx or torch, not {reset_runtime!r}")
        self.model, self.torch_model, self.reset_runtime = model, torch_model or model, reset_runtime
        self.precision, self.identical_rows_once = precision, identical_rows_once
        self.compiled = sessions.get(model, precision, threads or torch.get_num_threads(), cache_dir)
        self.ring, self.N, self.L = cfg.max_context, cfg.num_latents, cfg.n_layers
        self.position_limit = position_limit(cfg)
        hc, hs = cfg.cross_heads, cfg.n_heads
        hdc, hds = cfg.d_model // hc, cfg.d_model // hs
        f32 = np.float32
        B = self.batch = batch
        self.native, self.native_unavailable = None, None
        if native_step is not False:
            from .native_step import MAX_ROWS, NativeStep, Unavailable

            try:
                if B > MAX_ROWS:
                    raise Unavailable(f"the native step runs at most {MAX_ROWS} rows")
                self.native = NativeStep(model, precision, threads or torch.get_num_threads(), cache_dir)
            except Unavailable as error:
                if native_step:
                    raise
                self.native_unavailable = str(error)
        self.shares = B >= SHARE_FROM_ROWS
        # int8 on the native step keeps the caches smaller: they are half of what a batch-1 step
        # reads in float32 (12.6 MB of cross-attend K/V at 4,096 inputs, 9.4 MB of latent K/V)
        # and most of a 4-row step's; float32 keeps the exact reference's.
        if cache_type is None:
            cache_type = NATIVE_INT8_CACHES if self.native is not None and precision == "int8" else "float32"
        if cache_type not in CACHE_TYPES:
            raise ValueError(f"cache_type must be one of {', '.join(CACHE_TYPES)}, not {cache_type!r}")
        if cache_type != "float32" and self.native is None:
            raise ValueError(f"{cache_type} caches need the native step ({self.native_unavailable or 'switched off'})")
        self.cache_type, cache = cache_type, CACHE_TYPES[cache_type]
        # The native step reads the shared keys transposed, as the rows' (one query's layout);
        # onnxruntime's shared_step graph reads them as they come (several queries' layout).
        self.shared = _Ring(1, hc, hdc, 1, self.ring, keys_transposed=self.native is not None,
                            dtype=cache)  # empty unless shares
        self.rows = _Ring(B, hc, hdc, min(ROW_SLOTS, self.ring) if self.shares else self.ring, self.ring,
                          keys_transposed=True, dtype=cache)
        self.latent_k_t = np.zeros((self.L, B, hs, hds, self.N), cache)  # one block: one write per step
        self.latent_v = np.zeros((self.L, B, hs, self.N, hds), cache)
        self.latent_k_scale = self.latent_v_scale = None  # int8's: (L, B, H, N) each
        if cache == np.int8:
            self.latent_k_scale, self.latent_v_scale = (np.zeros((self.L, B, hs, self.N), f32) for _ in "kv")
        self.latent_mask = np.full(self.N, -np.inf, f32)
        self.tokens = np.zeros(B, np.int64)
        self.pos = np.zeros(1, np.int64)  # the next input's position
        self.logits = np.zeros((B, cfg.vocab_size), f32)
        self.new_cross_k = np.zeros((B, hc, hdc), f32)
        self.new_cross_v = np.zeros((B, hc, hdc), f32)
        self.new_latent_k = np.zeros((self.L, B, hs, hds), f32)
        self.new_latent_v = np.zeros((self.L, B, hs, hds), f32)
        self.latent_slot = 0
        self.resets = {"afresh": 0, "continued": 0}
        # Bound to the numpy buffers: OrtValues over them share their memory, and must outlive
        # the bindings (kept by name; a ring that grows or shrinks is bound again).
        self._bound: dict = {}
        graphs = {"step": step_names(self.L)} if B == 1 else {
            "step": step_names(self.L), "shared_step": step_names(self.L, shared=True)}
        self.bindings = {name: (getattr(self.compiled, name).io_binding(), set(ins), set(outs))
                         for name, (ins, outs) in graphs.items()}
        arrays = {"tokens": self.tokens, "pos": self.pos, "latent_mask": self.latent_mask}
        for i in range(self.L):
            arrays[f"latent_k_t{i}"], arrays[f"latent_v{i}"] = self.latent_k_t[i], self.latent_v[i]
        outs = {"logits": self.logits, "new_cross_k": self.new_cross_k, "new_cross_v": self.new_cross_v}
        for i in range(self.L):  # each layer's output lands in its row of one block
            outs[f"new_latent_k{i}"], outs[f"new_latent_v{i}"] = self.new_latent_k[i], self.new_latent_v[i]
        for name, array in arrays.items():
            self._bind(name, array)
        for name, array in outs.items():
            self._bind(name, array)
        self._bind_ring("shared", self.shared)
        self._bind_ring("cross", self.rows)

    def _bind(self, name: str, array: np.ndarray) -> None:
        import onnxruntime as ort

        value = ort.OrtValue.ortvalue_from_numpy(array)
        self._bound[name] = value
        for binding, inputs, outputs in self.bindings.values():
            if name in inputs:
                binding.bind_ortvalue_input(name, value)
            elif name in outputs:
                binding.bind_ortvalue_output(name, value)

    def _bind_ring(self, name: str, ring: _Ring) -> None:
        self._bind(f"{name}_k_t" if ring.keys_transposed else f"{name}_k", ring.k)
        self._bind(f"{name}_v", ring.v)
        self._bind(f"{name}_mask", ring.mask)
        if self.native is not None and hasattr(self, "rows"):  # both rings made
            self._point_native()

    def _point_native(self) -> None:
        """The native step's arrays: the rings' (again whenever one is replaced) and the rest."""
        layers = lambda a: [a[i] for i in range(self.L)]  # noqa: E731 - each layer's block, contiguous
        int8 = self.latent_k_scale is not None
        if self.batch == 1:
            one = lambda a: [a[i, 0] for i in range(self.L)]  # noqa: E731
            scales = {"cross_scales": tuple(s[0] for s in self.rows.scales),
                      "latent_scales": (one(self.latent_k_scale), one(self.latent_v_scale)) if int8 else ((), ())}
            self.native.point(self.rows.k[0], self.rows.v[0], self.rows.mask, self.latent_mask,
                              one(self.latent_k_t), one(self.latent_v), self.logits[0], self.new_cross_k[0],
                              self.new_cross_v[0], one(self.new_latent_k), one(self.new_latent_v), **scales)
        else:
            scales = {"shared_scales": self.shared.scales, "cross_scales": self.rows.scales,
                      "latent_scales": (layers(self.latent_k_scale), layers(self.latent_v_scale)) if int8 else ((), ())}
            self.native.point_rows(self.tokens, self.shared.k, self.shared.v, self.shared.mask, self.rows.k,
                                   self.rows.v, self.rows.mask, self.latent_mask, layers(self.latent_k_t),
                                   layers(self.latent_v), self.logits, self.new_cross_k, self.new_cross_v,
                                   layers(self.new_latent_k), layers(self.new_latent_v), **scales)

    # -- the rings of input K/V --

    @property
    def cached(self) -> int:
        return self.shared.cached + self.rows.cached

    def _cached_ids(self) -> np.ndarray:
        """The cached inputs' ids (B, cached), oldest first."""
        shared = self.shared.cached_ids()
        return np.concatenate((np.broadcast_to(shared, (self.batch, shared.shape[1])), self.rows.cached_ids()), axis=1)

    def _continues(self, ids: np.ndarray) -> bool:
        """Whether the window is the newest cached inputs plus one new id."""
        keep = ids.shape[1] - 1
        if not 1 <= keep <= self.cached or ids.shape[0] != self.batch:
            return False
        return bool(np.array_equal(self._cached_ids()[:, self.cached - keep :], ids[:, :keep]))

    def _drop_oldest(self, count: int) -> None:
        """The oldest inputs slide out: the shared ones first (they are the oldest)."""
        from_shared = min(count, self.shared.cached)
        self.shared.drop_oldest(from_shared)
        self.rows.drop_oldest(count - from_shared)
        if self.shared.cached == 0 and self.shared.capacity > 1:
            self.shared.clear(1)  # all slid out
            self._bind_ring("shared", self.shared)

    def _cache_input(self, ids: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """One new input per row (K/V (B, Hc, hd)) at the next position."""
        if self.rows.append(ids, k, v, int(self.pos[0])):
            self._bind_ring("cross", self.rows)
        self.pos[0] += 1

    def _start_afresh(self, ids: np.ndarray, common: int) -> None:
        """Empty rings sized for the window `ids` (B, T), whose first `common` ids are the same
        in every row (shared) and the rest each row's own, at positions 0..T-1 (their K/V
        written by the caller)."""
        T = ids.shape[1]
        self.shared.clear(max(common, 1))
        self.rows.clear(min(self.ring, max(ROW_SLOTS, T - common)) if self.shares else self.ring)
        self.shared.fill(ids[:1, :common], 0)
        self.rows.fill(ids[:, common:], common)
        self._bind_ring("shared", self.shared)
        self._bind_ring("cross", self.rows)
        self.pos[0] = T

    def _common_prefix(self, ids: np.ndarray) -> int:
        """How many leading ids every row of the window has in common (none below
        SHARE_FROM_ROWS rows: their inputs are their own)."""
        if not self.shares:
            return 0
        differs = (ids != ids[:1]).any(axis=0)
        return int(differs.argmax()) if differs.any() else ids.shape[1]

    # -- reset and step --

    def reset(self, window: Tensor, num_latents: int) -> Tensor:
        if num_latents > self.N:
            raise ValueError("more latents than the cache holds")
        ids = np.ascontiguousarray(window.to("cpu", torch.long).numpy())
        T = ids.shape[1]
        n = min(num_latents, T)
        if self.native is not None:  # the cores are onnxruntime's (or torch's) now
            self.native.rest()
        if self.reset_runtime == "torch":  # the model's own forward writes the rows' ring
            self._start_afresh(ids, 0)
            self.resets["afresh"] += 1
            logits = self.torch_model(window.to("cpu", torch.long), n, cache=_BufferCache(self), last_only=True)
            logits = logits[:, -1].float()
        else:
            inputs = self.compiled.inputs
            # Rows that are all the same window (the variations' prefill) are computed once.
            once = self.identical_rows_once and self.batch > 1 and bool((ids == ids[:1]).all())
            # the new id's position; the steps after this reset run N - n positions further
            new = int(self.pos[0])
            if self._continues(ids) and new + self.N - n < self.position_limit:
                self._drop_oldest(self.cached - (T - 1))
                k_t, v = inputs.run(None, {"ids": ids[:, -1:], "pos": np.array([new], np.int64)})
                self._cache_input(ids[:, -1], k_t[..., 0], v[:, :, 0])
                self.resets["continued"] += 1
            else:
                P = self._common_prefix(ids)
                self._start_afresh(ids, P)
                for ring, part, first in ((self.shared, ids[:1, :P], 0), (self.rows, ids[:, P:], P)):
                    if part.shape[1]:
                        positions = np.arange(first, first + part.shape[1], dtype=np.int64)
                        computed = part[:1] if once else part  # fill() broadcasts one row to all
                        ring.fill(part, first, *inputs.run(None, {"ids": computed, "pos": positions}))
                self.resets["afresh"] += 1
            latent_ids = ids[:1 if once else self.batch, T - n :]
            logits = self._latents(latent_ids, np.arange(self.pos[0] - n, self.pos[0], dtype=np.int64))
        self.latent_mask.fill(-np.inf)
        self.latent_mask[:n] = 0.0
        self.latent_slot = n
        return logits

    def _attended_inputs(self, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The cross K/V (1 or `rows` rows) and slot positions that the latents of the first
        `rows` rows attend to: one ring as it lies if the other is empty, else both rings side
        by side (a copy; of the shared ring, only the inputs that have not slid out)."""
        if self.rows.cached == 0:
            return self.shared.attended()
        if self.shared.cached == 0:
            return self.rows.attended(rows)
        (first, S1), S2 = self.shared.cached_span(), self.rows.used
        H, hd = self.shared.heads, self.shared.head_dim
        k_t = np.empty((rows, H, hd, S1 + S2), np.float32)
        v = np.empty((rows, H, S1 + S2, hd), np.float32)
        k_t[..., :S1], v[:, :, :S1] = self.shared.keys_t(S1, first=first), self.shared.values(S1, first=first)
        k_t[..., S1:], v[:, :, S1:] = self.rows.keys_t(S2, rows), self.rows.values(S2, rows)
        return k_t, v, np.concatenate((self.shared.pos[first : first + S1], self.rows.pos[:S2]))

    def _latents(self, latent_ids: np.ndarray, q_pos: np.ndarray) -> Tensor:
        """The latents of latent_ids' rows: every row's, or one row's that all rows share (its
        logits and latent K/V broadcast to all)."""
        k_t, v, slot_pos = self._attended_inputs(latent_ids.shape[0])
        out = self.compiled.latents.run(None, {"latent_ids": np.ascontiguousarray(latent_ids), "q_pos": q_pos,
                                               "cross_k_t": k_t, "cross_v": v, "slot_pos": slot_pos})
        for i in range(self.L):
            self._store_latents(i, out[1 + 2 * i], out[2 + 2 * i])
        return torch.from_numpy(np.array(np.broadcast_to(out[0], (self.batch, out[0].shape[1])), np.float32))

    def _store_latents(self, layer: int, k_t: np.ndarray, v: np.ndarray) -> None:
        """A reset's latent K/V of one layer, (1 or B, H, hd, n) and (1 or B, H, n, hd), into its
        caches' first n slots (one row broadcast to all)."""
        n = v.shape[2]
        int8 = self.latent_k_scale is not None
        cache_codes.store(self.latent_k_t[layer, ..., :n], k_t, self.latent_k_scale[layer, ..., :n] if int8 else None,
                          axis=-2)
        cache_codes.store(self.latent_v[layer, :, :, :n], v, self.latent_v_scale[layer, ..., :n] if int8 else None,
                          axis=-1)

    def step(self, tokens: Tensor, window: Tensor) -> Tensor:
        if self.latent_slot >= self.N:
            raise RuntimeError("latent cache full: the generation loop missed a reset")
        self.tokens[:] = tokens.numpy() if tokens.device.type == "cpu" else tokens.cpu().numpy()
        s = self.latent_slot
        if self.cached == self.ring:  # the window is full: its oldest input drops out
            self._drop_oldest(1)
        if self.native is not None:
            # It reads the slots ever written only, and stores its new K/V into their slots itself.
            used, (slot, grown) = self.rows.used, self.rows.claim()
            if grown:
                self._bind_ring("cross", self.rows)
            shared_from, shared_used = self.shared.cached_span()  # the slots slid out are not read
            self.native.run(int(self.pos[0]), int(self.tokens[0]), cross_used=used, latent_used=s,
                            shared_used=shared_used, shared_from=shared_from, cross_write=slot, latent_write=s)
            self.rows.record(slot, self.tokens, int(self.pos[0]))
            self.pos[0] += 1
        else:
            graph = "shared_step" if self.shared.cached else "step"
            getattr(self.compiled, graph).run_with_iobinding(self.bindings[graph][0])
            self._cache_input(self.tokens, self.new_cross_k, self.new_cross_v)
            self.latent_k_t[..., s] = self.new_latent_k
            self.latent_v[:, :, :, s] = self.new_latent_v
        self.latent_mask[s] = 0.0
        self.latent_slot = s + 1
        return torch.from_numpy(self.logits.copy())


class _BufferCache:
    """model.Cache for a reset by the torch model into an OnnxDecoder's buffers (no step)."""

    def __init__(self, decoder: OnnxDecoder) -> None:
        self.d = decoder

    def store_cross(self, k: Tensor, v: Tensor) -> None:
        T = k.size(2)  # afresh, all in the rows' ring
        self.d.rows._store(slice(T), k.float().transpose(-1, -2).numpy(), v.float().numpy())

    def store_latent(self, layer: int, k: Tensor, v: Tensor) -> None:
        self.d._store_latents(layer, k.float().transpose(-1, -2).numpy(), v.float().numpy())
