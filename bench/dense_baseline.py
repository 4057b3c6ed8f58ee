"""A minimal dense decoder-only Transformer with a KV cache: the baseline for bench/generate.py.

Same parts as the Perceiver AR (pre-LN, RoPE on half the head dims, squared-ReLU MLP, zero
head) and the same parameter count: the Perceiver's cross-attend block has the weights of one
self-attention block, so a dense model with n_layers + 1 blocks matches it. Every position
is a query here, which is exactly the cost the Perceiver avoids.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceiver_music.model import PerceiverARConfig, Rotary, SelfAttentionBlock


class DenseTransformer(nn.Module):
    def __init__(self, cfg: PerceiverARConfig, n_layers: int, max_positions: int) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # The Perceiver's self-attention block is a plain pre-LN decoder block; reuse it.
        self.blocks = nn.ModuleList(SelfAttentionBlock(cfg, i) for i in range(n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.rope = Rotary(cfg.d_model // cfg.n_heads, cfg.rope_fraction, cfg.rope_base, max_positions)
        nn.init.zeros_(self.head.weight)

    @classmethod
    def matching(cls, cfg: PerceiverARConfig, max_positions: int) -> "DenseTransformer":
        return cls(cfg, cfg.n_layers + 1, max_positions)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: Tensor, cache: "DenseKVCache | None" = None, last_only: bool = False) -> Tensor:
        T = ids.size(1)
        h = self.tok_emb(ids)
        rope = self.rope(torch.arange(T, device=ids.device))
        for block in self.blocks:
            h = block(h, rope, cache)  # square causal attention over all T positions
        if cache is not None:
            cache.end = T
        return self.head(self.norm(h[:, -1:] if last_only else h))

    def loss(self, ids: Tensor) -> Tensor:
        logits = self(ids[:, :-1]).float()
        return nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), ignore_index=0)

    def decode_step(self, ids: Tensor, cache: "DenseKVCache") -> Tensor:
        pos = cache.position()
        h = self.tok_emb(ids)[:, None]
        rope = self.rope(pos)
        for block in self.blocks:
            h = block(h, rope, cache, decode=True)
        cache.end += 1
        return self.head(self.norm(h))[:, 0]


class DenseKVCache:
    """K/V of every position per layer, preallocated; implements the parts of model.Cache a
    SelfAttentionBlock uses."""

    def __init__(self, model: DenseTransformer, batch: int, capacity: int, device, dtype) -> None:
        cfg = model.config
        shape = (batch, cfg.n_heads, capacity, cfg.d_model // cfg.n_heads)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.blocks]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.blocks]
        self.positions = torch.arange(capacity, device=device)
        self.end = 0

    def fill_random(self, length: int) -> None:
        """Stand-in for a prefill when only decode speed is measured (it does not depend on
        what the cache holds); a real prefill at 16k context takes minutes on a CPU."""
        for t in (*self.k, *self.v):
            t[:, :, :length].normal_()
        self.end = length

    def position(self) -> Tensor:
        return self.positions[self.end : self.end + 1]

    def store_latent(self, layer: int, k: Tensor, v: Tensor) -> None:
        T = k.size(2)
        self.k[layer][:, :, :T] = k
        self.v[layer][:, :, :T] = v

    def append_latent(self, layer: int, k: Tensor, v: Tensor):
        self.k[layer][:, :, self.end] = k[:, :, 0]
        self.v[layer][:, :, self.end] = v[:, :, 0]
        return self.k[layer][:, :, : self.end + 1], self.v[layer][:, :, : self.end + 1], None

