"""Quantized linears built straight from a GGUF file's blocks, one layer at a time, so a quantized
load never holds the whole model in float. Q4_0 / Q4_1 blocks (32 weights, an fp16 scale and,
for Q4_1, an fp16 minimum) are exactly int4 groups of 32 and load as they are; any other type
(Q8_0's per-block scales do not fit per-channel int8) is dequantized per tensor and requantized."""

import logging
from collections import Counter

import numpy as np
import torch
from torch import nn

from herd.model.config import ModelConfig
from herd.model.quant import Fp8Linear, Int4Linear, Int8Linear

log = logging.getLogger(__name__)

_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_BUILD = {"int8": Int8Linear.from_float, "int4": Int4Linear.from_float, "fp8": Fp8Linear.from_float}
Q4_TYPES = ("Q4_0", "Q4_1")


def q4_groups(data: np.ndarray, type_name: str, rows: int, cols: int):
    """(q int32 [rows, cols] in 0..15, scale, zero float32 [rows, cols // 32]) of Q4_0 / Q4_1
    blocks, in Int4Linear's form w = (q - 8) * scale + zero. Q4_0 is w = (q - 8) * d; Q4_1 is
    w = q * d + m, so zero = m + 8 d. Each block's 16 bytes hold weight j in the low nibble of
    byte j and weight j + 16 in its high nibble."""
    size = 18 if type_name == "Q4_0" else 20
    blocks = np.ascontiguousarray(data).reshape(rows, cols // 32, size)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., size - 16 :]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int32).reshape(rows, cols)
    if type_name == "Q4_0":
        zero = np.zeros_like(d)
    else:
        zero = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) + 8 * d
    return torch.from_numpy(q), torch.from_numpy(d), torch.from_numpy(zero)


def load_gguf_linears(model: nn.Module, path, cfg: ModelConfig, method: str) -> set[str]:
    """Swaps each decoder linear of `model` for its `method` form read from the file; returns the
    checkpoint names consumed (the loader skips them). A linear whose tensors are missing stays
    as it is, for the loader to report."""
    from herd.model.gguf_weights import gguf_tensors

    tensors = {n: t for n, t in gguf_tensors(path, cfg) if n.startswith("model.layers.")}
    consumed: set[str] = set()
    how: Counter = Counter()
    for name, module in list(model.model.layers.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        parent, _, leaf = f"model.layers.{name}".rpartition(".")
        names = [f"{parent}.{src}.weight" for src in _FUSED.get(leaf, (leaf,))]
        if not all(n in tensors for n in names):
            continue
        sources = [tensors[n] for n in names]
        types = "+".join(sorted({t.type_name for t in sources}))
        if method == "int4" and all(t.type_name in Q4_TYPES for t in sources):
            parts = [q4_groups(t.data, t.type_name, *t.shape) for t in sources]
            q, scale, zero = (
                torch.cat(p).to(module.weight.device) for p in zip(*parts, strict=True)
            )
            new = Int4Linear(q, scale, zero, 32, None, module.weight.dtype)
            how[f"{types} blocks as they are"] += 1
        else:
            w = torch.cat([t.to_float() for t in sources]).to(module.weight)
            shell = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
            shell.weight = nn.Parameter(w, requires_grad=False)
            new = _BUILD[method](shell)
            how[f"{types} dequantized and requantized"] += 1
        setattr(model.get_submodule(parent), leaf, new)
        consumed.update(names)
    summary = ", ".join(f"{n} {k}" for k, n in how.items())
    log.info("%s linears from the GGUF file: %s", method, summary)
    return consumed
