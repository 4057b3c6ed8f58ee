"""Lower-precision Linear weights for inference on a CPU, chosen per call by the rows multiplied.

A CPU has no autocast that helps here: float16 matrix products with many rows are several times
slower than float32, and bfloat16 products with one row are slow too. What is fast depends on
the shape (measured on the 2-core dev machine, all Linear layers of default_config, 2 threads):

    rows   float32   float16   bfloat16
      1     4.5 ms    1.1 ms    3.0 ms     one-token steps: memory-bound, half the bytes wins
      2     7.3 ms    1.8 ms    2.9 ms
      4     7.2 ms    3.5 ms    3.0 ms
     64    17.1 ms   45.9 ms   10.1 ms     resets and batched steps: compute-bound
    384    74 ms    290 ms     43 ms       a reset (oneDNN's bfloat16 GEMM)

So a `LowPrecisionLinear` keeps a float16 copy of its weight for products of up to
FLOAT16_MAX_ROWS rows and a bfloat16 copy for larger ones, where the CPU computes bfloat16
natively (AVX512-BF16 or AMX); elsewhere larger products keep the float32 weight. Inputs and
outputs stay float32, and so do embeddings, LayerNorms, attention and the caches. The cost in
quality (`bench/precision.py --data data/music21`: the default model on the 8 longest test
works, 6,192 ids scored along the decode schedule): NLL 1.0423 in float32, 1.0421 with these
weights; next-id distributions 0.0007 apart on average (total variation), the same most
likely id 99.9 % of the time.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FLOAT16_MAX_ROWS = 2  # the table above: float16 is fastest up to 2 rows, bfloat16 from 4


@functools.cache
def native_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 products natively here (else they are emulated, and slow)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class LowPrecisionLinear(nn.Module):
    """A bias-free Linear on float32 inputs whose weight is read in the fastest precision for
    the number of rows multiplied (module docstring)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        weight = weight.detach()
        self.few_rows_weight = nn.Parameter(weight.to(torch.float16), requires_grad=False)
        many = weight.to(torch.bfloat16) if native_bfloat16() else weight  # float32: shared, not copied
        self.many_rows_weight = nn.Parameter(many, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.size(-1)
        weight = self.few_rows_weight if rows <= FLOAT16_MAX_ROWS else self.many_rows_weight
        return F.linear(x.to(weight.dtype), weight).to(x.dtype)


def low_precision_copy(model: nn.Module) -> nn.Module:
    """The model for CPU inference with `LowPrecisionLinear` layers; every other tensor is shared
    with `model`, which is left as it was."""
    shared = {id(p): p for p in model.parameters()}  # the copy shares every tensor ...
    clone = copy.deepcopy(model, shared)
    for parent in list(clone.modules()):  # ... except bias-free Linear weights, which are converted
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.bias is None:
                setattr(parent, name, LowPrecisionLinear(child.weight))
    return clone
