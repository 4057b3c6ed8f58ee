"""K/V caches kept as floats or as int8 codes, written and read back the one way the native step
(native/decode_step.c: quantize_slot) does.

An int8 cache holds, for every head and slot, one code per dim and one float32 scale:
scale = max|x| / 127 over the head's dims, code = round(x / scale) to even (0 where scale is
0), so that x ~ code * scale. Keys and values both have their dims along one axis (`axis`:
-2 for keys stored transposed (..., hd, slots), -1 for (..., slots, hd)); the scales are the
cache's shape less that axis. A float cache (float32 or float16) has no scales.

Every copy runs in torch on one thread: numpy converts to float16 10-15x slower, and torch's
pool would leave threads spinning on the cores that onnxruntime and the native step need next.
"""

from __future__ import annotations

import numpy as np
import torch

CODE_LIMIT = 127  # codes span -127..127: symmetric, so that -x has the codes of x negated


class _OneThread:
    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.threads)


def scales_shape(shape: tuple, axis: int) -> tuple:
    """The scales' shape of an int8 cache of `shape` whose dims lie along `axis`."""
    return tuple(size for i, size in enumerate(shape) if i != axis % len(shape))


def quantize(x: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes of float32 `x` along `axis` and their scales (the axis dropped)."""
    scale = x.abs().amax(dim=axis, keepdim=True) / CODE_LIMIT
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(x / divisor).clamp_(-CODE_LIMIT, CODE_LIMIT).to(torch.int8)
    return codes, scale.squeeze(axis)


def store(dst: np.ndarray, src: np.ndarray, scales: np.ndarray | None = None, axis: int = -1) -> None:
    """dst[...] = src: a float copy (float16 <-> float32 included), or if dst is int8 the codes of
    float32 `src` along `axis` with their scales into `scales`. src may broadcast to dst (one
    row to all rows)."""
    with _OneThread():
        target = torch.from_numpy(dst)
        if dst.dtype != np.int8:
            target.copy_(torch.from_numpy(np.asarray(src)))
            return
        if scales is None:
            raise ValueError("an int8 cache needs its scales")
        codes, scale = quantize(torch.from_numpy(np.asarray(src, np.float32)), axis)
        target.copy_(codes)
        torch.from_numpy(scales).copy_(scale)


def as_float32(cache: np.ndarray, scales: np.ndarray | None = None, axis: int = -1) -> np.ndarray:
    """A C-contiguous float32 copy of a cache (a float one's values, an int8 one's codes times
    their scales)."""
    with _OneThread():
        out = torch.empty(cache.shape, dtype=torch.float32)
        out.copy_(torch.from_numpy(cache))
        if cache.dtype == np.int8:
            out.mul_(torch.from_numpy(scales).unsqueeze(axis))
        return out.numpy()
