"""A static-shape decode step for CUDA graphs: fixed buffers, validity masks, a ring buffer.

A CUDA graph replays fixed kernels on fixed addresses, so the step cannot use growing views
like `model.KVCache`. Here every buffer has its final size from the start:

* cross-attend K/V: a ring of max_context slots. A reset writes the window into slots
  0..T-1; each step writes slot (T + k) mod max_context, so once the window is full the new
  token overwrites the oldest: the slide. Attention over a set of keys does not depend on
  their order (RoPE was applied when the key was cached), so the ring needs no reordering.
* latent K/V per layer: N slots; a reset fills 0..R-1, step k writes slot R + k - 1.
* additive masks (0 valid, -inf not yet written) and the step's position and slots are
  device tensors, updated inside the step (`advance`), so one captured graph serves every step.

Resets run eagerly (a full forward) and write into the same buffers. `GraphDecoder(...,
capture=False)` runs the identical step without capture: that is how CPU tests check it
against the eager cache.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .generate import autocast, autocast_dtype, cpu_model
from .model import PerceiverAR, PerceiverARConfig


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


class StaticKVCache:
    """Implements model.Cache with fixed-size buffers (see module docstring)."""

    def __init__(self, cfg: PerceiverARConfig, batch: int, device: torch.device, dtype: torch.dtype) -> None:
        self.ring = cfg.max_context
        # Extra slots (always masked) keep the key length a multiple of 16: aligned masks let
        # the memory-efficient SDPA kernel run without padding copies.
        slots = _round_up(cfg.max_context, 16)
        hc, hs = cfg.cross_heads, cfg.n_heads
        zeros = dict(device=device, dtype=dtype)
        self.cross_k = torch.zeros(batch, hc, slots, cfg.d_model // hc, **zeros)
        self.cross_v = torch.zeros_like(self.cross_k)
        self.cross_mask = torch.full((slots,), float("-inf"), **zeros)
        latent_slots = _round_up(cfg.num_latents, 16)
        self.latent_k = [torch.zeros(batch, hs, latent_slots, cfg.d_model // hs, **zeros) for _ in range(cfg.n_layers)]
        self.latent_v = [torch.zeros_like(k) for k in self.latent_k]
        self.latent_mask = torch.full((latent_slots,), float("-inf"), **zeros)
        self.num_latents = cfg.num_latents
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.cross_slot = torch.zeros(1, dtype=torch.long, device=device)
        self.latent_slot = torch.zeros(1, dtype=torch.long, device=device)

    def clear(self) -> None:
        for t in (self.cross_k, self.cross_v, *self.latent_k, *self.latent_v):
            t.zero_()
        self.cross_mask.fill_(float("-inf"))
        self.latent_mask.fill_(float("-inf"))
        for t in (self.pos, self.cross_slot, self.latent_slot):
            t.zero_()

    # -- resets (eager, Python ints) --

    def store_cross(self, k: Tensor, v: Tensor) -> None:
        T = k.size(2)
        self.cross_k[:, :, :T] = k
        self.cross_v[:, :, :T] = v
        self.cross_mask.fill_(float("-inf"))
        self.cross_mask[:T] = 0.0
        self.pos.fill_(T)
        self.cross_slot.fill_(T % self.ring)

    def store_latent(self, layer: int, k: Tensor, v: Tensor) -> None:
        n = k.size(2)
        self.latent_k[layer][:, :, :n] = k
        self.latent_v[layer][:, :, :n] = v
        if layer == 0:
            self.latent_mask.fill_(float("-inf"))
            self.latent_mask[:n] = 0.0
            self.latent_slot.fill_(n)

    # -- the step (capturable: only tensor indices) --

    def position(self) -> Tensor:
        return self.pos

    def append_cross(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.cross_k.index_copy_(2, self.cross_slot, k)
        self.cross_v.index_copy_(2, self.cross_slot, v)
        self.cross_mask.index_fill_(0, self.cross_slot, 0.0)
        return self.cross_k, self.cross_v, self.cross_mask.view(1, 1, 1, -1)

    def append_latent(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.latent_k[layer].index_copy_(2, self.latent_slot, k)
        self.latent_v[layer].index_copy_(2, self.latent_slot, v)
        if layer == 0:
            self.latent_mask.index_fill_(0, self.latent_slot, 0.0)
        return self.latent_k[layer], self.latent_v[layer], self.latent_mask.view(1, 1, 1, -1)

    def advance(self) -> None:
        self.pos.add_(1)
        self.cross_slot.add_(1).remainder_(self.ring)
        self.latent_slot.add_(1)


class GraphDecoder:
    """Decode steps replayed from one captured CUDA graph; resets run eagerly.

    Same interface as generate.EagerDecoder: reset(window, n) and step(tokens, window) return
    next-token logits (B, vocab) in float32. The logits of `step` live in a static buffer
    that the next step overwrites: sample from them before calling again.
    """

    def __init__(self, model: PerceiverAR, batch: int, *, dtype: torch.dtype | None = None, capture: bool = True) -> None:
        if model.config.attention != "softmax":
            raise ValueError("the static decode step supports softmax attention only")
        self.model, self.dtype = cpu_model(model, dtype), autocast_dtype(model, dtype)
        self.device = device = next(model.parameters()).device
        cache_dtype = self.dtype or next(model.parameters()).dtype
        self.cache = StaticKVCache(model.config, batch, device, cache_dtype)
        self.tokens = torch.zeros(batch, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None
        if capture:
            if device.type != "cuda":
                raise ValueError("CUDA graphs need a CUDA device; use capture=False elsewhere")
            self._capture()

    def _step(self) -> Tensor:
        with autocast(self.device, self.dtype):
            return self.model.decode_step(self.tokens, self.cache).float()

    def _capture(self) -> None:
        # Warm up on a side stream (lazy inits, kernel selection), as torch.cuda.graphs asks.
        # Warm-up steps write into slots 0 and 1 and mark them valid, so nothing is NaN.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()
        self.cache.clear()  # the first reset writes the real state

    def reset(self, window: Tensor, num_latents: int) -> Tensor:
        if num_latents > self.cache.num_latents:
            raise ValueError("more latents than the static cache holds")
        with autocast(self.device, self.dtype):
            return self.model(window, num_latents, cache=self.cache, last_only=True)[:, -1].float()

    def step(self, tokens: Tensor, window: Tensor) -> Tensor:
        self.tokens.copy_(tokens)
        if self.graph is None:
            return self._step()
        self.graph.replay()
        return self.logits
