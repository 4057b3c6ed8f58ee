"""Perceiver AR (Hawthorne et al., 2022) for performance-event music, read top to bottom.

    ids (B, T) ─▶ token embedding ─┬─▶ keys/values of all T inputs ─────────┐
                                   └─▶ last N positions = latents ─▶ queries ─▶ causal cross-attend ─▶ MLP
                                        ─▶ L causal self-attention blocks over the N latents ─▶ LN ─▶ head

Faithful to the official code in what matters (see /DESIGN.md): a latent's query is a Linear of
its own token's embedding; one pre-LN cross-attend with separate LayerNorms for query and
key/value and a query residual; pre-LN self-attention blocks; squared-ReLU MLPs; a final
LayerNorm and a zero-initialised head. Positions are RoPE on half of each head's dims, at
absolute positions, in every attention layer: no position table, so the window can slide.

The causal mask is *inclusive and bottom-right aligned*: latent j sits at input position
p_j = T - N + j and sees inputs i <= p_j. PyTorch's `is_causal=True` is top-left aligned when
query and key lengths differ, so it is only used where they are equal.

Generation caches live here too (`KVCache`), because the layers read and write them; the
sampling loop and the schedule of resets live in `generate.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right

from .tokenizer import PAD, VOCAB_SIZE

Rope = tuple[Tensor, Tensor]  # (cos, sin), each (B or 1, L, 1, rotated_dims / 2), float32


@dataclass
class PerceiverARConfig:
    """Hyper-parameters; the defaults are the product's model (`default_config`)."""

    vocab_size: int = VOCAB_SIZE
    max_context: int = 4096  # T: inputs the cross-attend sees
    num_latents: int = 512  # N: the last N positions, processed by the deep stack
    d_model: int = 384
    n_heads: int = 6  # self-attention heads
    cross_heads: int = 6  # cross-attend heads
    n_layers: int = 6  # self-attention blocks over the latents
    mlp_ratio: int = 4
    rope_fraction: float = 0.5  # share of each head's dims that RoPE rotates
    rope_base: float = 10000.0
    dropout: float = 0.1
    # Dropout of attention probabilities; None: `dropout`. On a CPU it is what makes a training
    # step slow (SDPA falls back to a path that draws a mask over every query-key pair).
    attention_dropout: float | None = None
    # Fraction of the prefix (inputs before the first latent) dropped in training: it
    # regularises, and dropping physically makes the cross-attend that much cheaper.
    cross_attend_dropout: float = 0.5
    attention: str = "softmax"  # "softmax" | "linear" (kernelised, elu+1; an ablation)

    def __post_init__(self) -> None:
        if self.attention not in ("softmax", "linear"):
            raise ValueError(f"attention must be 'softmax' or 'linear', not {self.attention!r}")
        for heads in (self.n_heads, self.cross_heads):
            if self.d_model % heads or (self.d_model // heads) % 2:
                raise ValueError(f"d_model {self.d_model} needs an even head size for {heads} heads")
        if not 1 <= self.num_latents <= self.max_context:
            raise ValueError("num_latents must be between 1 and max_context")
        if not 0.0 <= self.cross_attend_dropout < 1.0:
            raise ValueError("cross_attend_dropout must be in [0, 1)")

    @property
    def attention_dropout_p(self) -> float:
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PerceiverARConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**data)


def default_config() -> PerceiverARConfig:
    """The product's model: 12.7 M parameters, chosen to run fast on a laptop CPU.

    Why (figures in BENCHMARKS.md, from bench/generate.py): at batch 1 on a CPU a cached step
    is bound by memory traffic (every weight and the window's K/V are read once per token),
    so the weights stay small: d_model 384 and 6 self-attention layers (8 layers cost 15-45 %
    more per step). A step costs about the same with 256 or 512 latents; a reset (a full
    forward with R = N - 128 latents, once every 129 ids) costs ~1.6-2x more with 512, which
    the amortisation mostly hides, for twice the positions in the deep stack (and a naive
    loop that costs twice as much per token). The cross-attend sees 4096 ids (~100 s of piano).
    """
    return PerceiverARConfig()


# ---- positions: RoPE on part of each head ---------------------------------------------------


class Rotary:
    """cos/sin of RoPE angles for the first `rope_fraction` of each head's dims, by position.

    Tables are built once per device in float64 and kept in float32 (not as buffers, so that
    `model.to(torch.bfloat16)` cannot round them); a lookup is one index op per forward,
    which also works inside a CUDA graph (the position is a device tensor there).
    """

    def __init__(self, head_dim: int, fraction: float, base: float, max_positions: int) -> None:
        self.rotated = max(2, int(head_dim * fraction) // 2 * 2)
        self.base, self.max_positions = base, max_positions
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _table(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._tables:
            inv_freq = self.base ** -(torch.arange(0, self.rotated, 2, dtype=torch.float64) / self.rotated)
            angles = torch.arange(self.max_positions, dtype=torch.float64)[:, None] * inv_freq
            self._tables[device] = (angles.cos().float().to(device), angles.sin().float().to(device))
        return self._tables[device]

    def __call__(self, positions: Tensor) -> Rope:
        """positions: (L,) or (B, L) -> cos, sin of shape (1|B, L, 1, rotated/2)."""
        cos, sin = self._table(positions.device)
        if positions.dim() == 1:
            positions = positions[None]
        return cos[positions][:, :, None], sin[positions][:, :, None]


def apply_rope(x: Tensor, rope: Rope) -> Tensor:
    """Rotate pairs (i, i + rot/2) of the first `rot` dims of x (B, L, H, head_dim)."""
    cos, sin = rope
    half = cos.size(-1)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., 2 * half :]), dim=-1)
    return out.to(x.dtype)


# ---- attention --------------------------------------------------------------------------------


def softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0
) -> Tensor:
    """Exact attention, (B, H, Lq, D) x (B, H, Lk, D), bottom-right causal when Lq > 1.

    `mask` (additive, broadcastable to (B, H, Lq, Lk)) is only given by the static decode
    cache, whose buffers hold slots that are not (yet) valid.
    """
    lq, lk = q.size(-2), k.size(-2)
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if lq == 1:  # one query at the last position sees every key
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if lq == lk:  # square: top-left and bottom-right agree; lets flash attention run
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    # On CUDA this dispatches to flash / memory-efficient kernels; on CPU it builds an
    # Lq x Lk mask (N x T, never T x T).
    bias = causal_lower_right(lq, lk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)


def linear_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Causal kernelised attention with feature map elu + 1, bottom-right aligned like softmax.

    Keys before the first query (the prefix) are seen by every query, so they fold into one
    (D x D) summary per head: linear in their number. Within the last Lq keys the causal part
    uses the masked quadratic form, which costs the same as softmax there.
    """
    if mask is not None:
        raise NotImplementedError("linear attention has no static-cache (masked) path")
    dtype = q.dtype
    fq, fk, v = F.elu(q.float()) + 1, F.elu(k.float()) + 1, v.float()
    lq, lk = fq.size(-2), fk.size(-2)
    if lq == 1:  # decode: one query sees all keys; O(Lk * D)
        scores = fq @ fk.transpose(-1, -2)
        return ((scores @ v) / scores.sum(-1, keepdim=True)).to(dtype)
    prefix = lk - lq
    fk_pre, fk_own, v_pre, v_own = fk[..., :prefix, :], fk[..., prefix:, :], v[..., :prefix, :], v[..., prefix:, :]
    scores = (fq @ fk_own.transpose(-1, -2)).tril()  # query j sees own keys <= j
    num = scores @ v_own
    den = scores.sum(-1, keepdim=True)
    if prefix > 0:
        num = num + fq @ (fk_pre.transpose(-1, -2) @ v_pre)
        den = den + fq @ fk_pre.sum(-2)[..., None]
    return (num / den).to(dtype)


class Cache(Protocol):
    """What the layers need from a generation cache (see `KVCache`, decode_graph.StaticKVCache)."""

    def position(self) -> Tensor: ...  # (1,) position of the token being decoded
    def store_cross(self, k: Tensor, v: Tensor) -> None: ...  # a reset: K/V of the whole window
    def store_latent(self, layer: int, k: Tensor, v: Tensor) -> None: ...
    def append_cross(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]: ...
    def append_latent(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]: ...
    def advance(self) -> None: ...


class MLP(nn.Module):
    """Squared-ReLU MLP (Primer; the Perceiver AR code uses it)."""

    def __init__(self, cfg: PerceiverARConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.relu(self.fc(x)).square()))


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, linear: bool, dropout_p: float) -> Tensor:
    """(B, H, Lq, hd) queries over (B, H, Lk, hd) keys/values -> (B, Lq, H * hd)."""
    y = linear_attention(q, k, v, mask) if linear else softmax_attention(q, k, v, mask, dropout_p)
    return y.transpose(1, 2).flatten(2)


class CrossAttend(nn.Module):
    """Latents (queries from their own token embeddings) attend causally to all inputs."""

    def __init__(self, cfg: PerceiverARConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.cross_heads, cfg.d_model // cfg.cross_heads
        self.q_norm = nn.LayerNorm(cfg.d_model)
        self.kv_norm = nn.LayerNorm(cfg.d_model)
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)  # a latent's query: Linear of its embedding
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.mlp_norm = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.linear, self.dropout = cfg.attention == "linear", cfg.attention_dropout_p
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        latents: Tensor,
        inputs: Tensor,
        q_rope: Rope,
        kv_rope: Rope,
        cache: Cache | None = None,
        decode: bool = False,
    ) -> Tensor:
        k, v = self.kv(self.kv_norm(inputs)).unflatten(-1, (2 * self.heads, self.head_dim)).chunk(2, dim=2)
        k, v = apply_rope(k, kv_rope).transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)
        mask = None
        if decode:  # inputs is the one new token: append it, attend to the whole window
            k, v, mask = cache.append_cross(k, v)
        elif cache is not None:
            cache.store_cross(k, v)
        q = self.q(self.q_norm(latents)).unflatten(-1, (self.heads, self.head_dim))
        q = apply_rope(q, q_rope).transpose(1, 2)
        y = attend(q, k, v, mask, self.linear, self.dropout if self.training else 0.0)
        x = latents + self.drop(self.out(y))  # query residual
        return x + self.mlp(self.mlp_norm(x))


class SelfAttentionBlock(nn.Module):
    """Pre-LN causal self-attention + MLP over the latents."""

    def __init__(self, cfg: PerceiverARConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.linear, self.dropout = cfg.attention == "linear", cfg.attention_dropout_p
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, rope: Rope, cache: Cache | None = None, decode: bool = False) -> Tensor:
        H = self.heads
        qkv = self.qkv(self.norm1(x)).unflatten(-1, (3 * H, self.head_dim))  # (B, L, 3H, hd)
        qk = apply_rope(qkv[:, :, : 2 * H], rope).transpose(1, 2)  # one rotation for q and k
        q, k, v = qk[:, :H], qk[:, H:], qkv[:, :, 2 * H :].transpose(1, 2)
        mask = None
        if decode:
            k, v, mask = cache.append_latent(self.layer, k, v)
        elif cache is not None:
            cache.store_latent(self.layer, k, v)
        y = attend(q, k, v, mask, self.linear, self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(y))
        return x + self.mlp(self.norm2(x))


# ---- the model --------------------------------------------------------------------------------


class PerceiverAR(nn.Module):
    def __init__(self, config: PerceiverARConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.cross = CrossAttend(cfg)
        self.blocks = nn.ModuleList(SelfAttentionBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # Positions run below max_context in a forward, below max_context + N while decoding.
        positions = cfg.max_context + cfg.num_latents
        self.rope_cross = Rotary(cfg.d_model // cfg.cross_heads, cfg.rope_fraction, cfg.rope_base, positions)
        self.rope_self = Rotary(cfg.d_model // cfg.n_heads, cfg.rope_fraction, cfg.rope_base, positions)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 style: N(0, 0.02), residual projections scaled down with depth; the output
        # head starts at zero so the first predictions are uniform.
        residual_std = 0.02 / math.sqrt(2 * (self.config.n_layers + 1))
        for name, p in self.named_parameters():
            if name.endswith(("out.weight", "proj.weight")):
                nn.init.normal_(p, std=residual_std)
            elif p.dim() == 2:
                nn.init.normal_(p, std=0.02)
        nn.init.zeros_(self.head.weight)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- training and full forwards --

    def forward(
        self,
        ids: Tensor,
        num_latents: int | None = None,
        *,
        cache: Cache | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Logits (B, n, vocab) for the last n = min(num_latents or N, T) positions of ids (B, T).

        Batches of unequal length are padded on the right with PAD: causality keeps padding
        out of every real position, and `loss` ignores PAD targets. With `cache`, the K/V of
        the window are stored for decoding (a "reset"); `last_only` returns only the logits
        (B, 1, vocab) of the last position.
        """
        B, T = ids.shape
        if T > self.config.max_context:
            raise ValueError(f"{T} ids exceed max_context {self.config.max_context}")
        n = min(num_latents or self.config.num_latents, T)
        x = self.tok_emb(ids)
        positions = torch.arange(T, device=ids.device)
        latents, inputs, kv_pos = x[:, T - n :], x, positions
        if self.training and self.config.cross_attend_dropout > 0 and T > n:
            inputs, kv_pos = self._drop_prefix(x, n)
        h = self.cross(latents, inputs, self.rope_cross(positions[T - n :]), self.rope_cross(kv_pos), cache)
        rope = self.rope_self(positions[T - n :])
        for block in self.blocks:
            h = block(h, rope, cache)
        if last_only:
            h = h[:, -1:]
        return self.head(self.norm(h))

    def _drop_prefix(self, x: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """Cross-attend dropout: keep a random subset of the prefix, physically (a gather).

        Every row keeps the same number of prefix inputs so the batch stays rectangular; kept
        inputs keep their own positions for RoPE, and the latents stay last, so the
        bottom-right causal alignment is unchanged.
        """
        B, T, d = x.shape
        prefix = T - n
        keep = max(1, round(prefix * (1.0 - self.config.cross_attend_dropout)))
        kept = torch.rand(B, prefix, device=x.device).argsort(dim=1)[:, :keep].sort(dim=1).values
        tail = torch.arange(prefix, T, device=x.device).expand(B, n)
        kv_pos = torch.cat((kept, tail), dim=1)  # (B, keep + n)
        inputs = torch.gather(x, 1, kv_pos[..., None].expand(-1, -1, d))
        return inputs, kv_pos

    def loss(self, ids: Tensor, z_loss: float = 1e-4) -> tuple[Tensor, dict[str, float]]:
        """Next-token cross-entropy on the latent positions, plus z-loss; PAD targets ignored.

        ids (B, T + 1): inputs are ids[:, :-1], targets ids[:, 1:]. Crops of at least N + 1
        tokens make every latent a real target.
        """
        inputs, targets = ids[:, :-1], ids[:, 1:]
        logits = self(inputs).float()
        targets = targets[:, -logits.size(1) :]
        valid = targets != PAD
        count = valid.sum().clamp(min=1)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD, reduction="sum") / count
        # z-loss keeps log Z near 0 so logits stay in a range bf16 handles well (PaLM).
        z = (torch.logsumexp(logits, dim=-1).square() * valid).sum() / count
        total = nll + z_loss * z
        return total, {"nll": float(nll.detach()), "z_loss": float(z.detach())}

    # -- cached decoding: one new token, one new latent --

    def decode_step(self, ids: Tensor, cache: Cache) -> Tensor:
        """Append one token per row (ids: (B,)) and return its next-token logits (B, vocab).

        Its cross-attend K/V join the input cache, its latent query attends to the whole
        window, and each self-attention layer appends its K/V to that layer's latent cache.
        """
        pos = cache.position()
        x = self.tok_emb(ids)[:, None]
        cross_rope = self.rope_cross(pos)
        h = self.cross(x, x, cross_rope, cross_rope, cache, decode=True)
        rope = self.rope_self(pos)
        for block in self.blocks:
            h = block(h, rope, cache, decode=True)
        cache.advance()
        return self.head(self.norm(h))[:, 0]


class KVCache:
    """Eager decoding cache: cross-attend K/V of the input window, K/V of the latents per layer.

    A reset stores the window's K/V in slots 0..T-1 (positions are those slot numbers, as in
    a plain forward over the window). Each decoded token writes the next slot; once the window
    holds more than max_context tokens the oldest slot just drops out of the view. Buffers
    hold max_context + num_latents slots: more than any run of steps between two resets.
    """

    def __init__(self, config: PerceiverARConfig) -> None:
        self.max_context = config.max_context
        self.capacity = config.max_context + config.num_latents
        self.num_latents = config.num_latents
        self.cross_k = self.cross_v = None
        self.latent_k: list[Tensor] = []
        self.latent_v: list[Tensor] = []
        self.start = self.end = 0  # the cross window is slots [start, end)
        self.latents = 0  # latents cached per layer

    def _buffer(self, like: Tensor, size: int) -> Tensor:
        B, H, _, D = like.shape
        return torch.zeros(B, H, size, D, dtype=like.dtype, device=like.device)

    def position(self) -> Tensor:
        return self.positions[self.end : self.end + 1]

    def store_cross(self, k: Tensor, v: Tensor) -> None:
        if self.cross_k is None or self.cross_k.shape[:2] != k.shape[:2] or self.cross_k.dtype != k.dtype:
            self.cross_k, self.cross_v = self._buffer(k, self.capacity), self._buffer(v, self.capacity)
            self.positions = torch.arange(self.capacity, device=k.device)  # slot i is position i
        T = k.size(2)
        self.cross_k[:, :, :T] = k
        self.cross_v[:, :, :T] = v
        self.start, self.end = 0, T

    def store_latent(self, layer: int, k: Tensor, v: Tensor) -> None:
        if layer == len(self.latent_k):
            self.latent_k.append(self._buffer(k, self.num_latents))
            self.latent_v.append(self._buffer(v, self.num_latents))
        elif self.latent_k[layer].shape[:2] != k.shape[:2] or self.latent_k[layer].dtype != k.dtype:
            self.latent_k[layer], self.latent_v[layer] = self._buffer(k, self.num_latents), self._buffer(v, self.num_latents)
        n = k.size(2)
        self.latent_k[layer][:, :, :n] = k
        self.latent_v[layer][:, :, :n] = v
        self.latents = n

    def append_cross(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, None]:
        if self.end >= self.capacity:
            raise RuntimeError("cross cache full: the generation loop missed a reset")
        self.cross_k[:, :, self.end] = k[:, :, 0]
        self.cross_v[:, :, self.end] = v[:, :, 0]
        start = max(self.start, self.end + 1 - self.max_context)
        return self.cross_k[:, :, start : self.end + 1], self.cross_v[:, :, start : self.end + 1], None

    def append_latent(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, None]:
        if self.latents >= self.num_latents:
            raise RuntimeError("latent cache full: the generation loop missed a reset")
        n = self.latents
        self.latent_k[layer][:, :, n] = k[:, :, 0]
        self.latent_v[layer][:, :, n] = v[:, :, 0]
        return self.latent_k[layer][:, :, : n + 1], self.latent_v[layer][:, :, : n + 1], None

    def advance(self) -> None:
        self.end += 1
        self.start = max(self.start, self.end - self.max_context)
        self.latents += 1
