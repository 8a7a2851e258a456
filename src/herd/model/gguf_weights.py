"""The tensors of a GGUF file under Hugging Face Llama names, ready for `herd.model.loader`:
llama.cpp's names are mapped, its RoPE row order of `attn_q` / `attn_k` is undone, and blocks are
dequantized on demand. `GGUFTensor` keeps the raw quantized bytes for loaders that use them as
they are (int8 / int4 linears)."""

import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from herd.model.config import ModelConfig
from herd.model.errors import ModelLoadError
from herd.model.gguf_file import open_gguf
from herd.model.gguf_quants import BLOCK_SIZES, dequantize

FLOAT_TYPES = ("F32", "F16", "BF16")
SUPPORTED_TYPES = FLOAT_TYPES + tuple(BLOCK_SIZES)

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
IGNORED = ("rope_freqs.weight",)  # RoPE factors herd computes from the config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor as the file stores it. `data` is the raw memory-mapped array: for block
    formats uint8 of shape [rows, bytes per row] (a row is whole blocks, so rows can be
    reordered or sliced without decoding); for F32 / F16 the values; for BF16 uint8 pairs.
    `shape` is the logical shape, rows first (PyTorch order)."""

    name: str
    type_name: str  # ggml's name: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, ...
    shape: tuple[int, ...]
    data: np.ndarray

    @property
    def is_quantized(self) -> bool:
        return self.type_name not in FLOAT_TYPES

    def raw(self) -> torch.Tensor:
        """The stored bytes (block formats) or values as a torch tensor (a copy: the file is
        mapped read-only)."""
        return torch.from_numpy(np.array(self.data, copy=True, order="C"))

    def to_float(self) -> torch.Tensor:
        """The values as float32 of `shape` (a copy; blocks are decoded)."""
        if self.type_name == "F32":
            return self.raw().reshape(self.shape).clone()
        if self.type_name == "F16":
            return self.raw().reshape(self.shape).float()
        if self.type_name == "BF16":
            return self.raw().view(torch.bfloat16).reshape(self.shape).float()
        return torch.from_numpy(dequantize(self.data, self.type_name, self.shape))

    def permute_rows(self, num_heads: int) -> "GGUFTensor":
        """Undo llama.cpp's RoPE layout: within each head, rows are stored interleaved (pairs
        i, i + d/2 adjacent) where transformers keeps the two halves apart."""
        rows = self.shape[0]
        if rows % (2 * num_heads):
            raise ModelLoadError(f"{self.name}: {rows} rows do not split into {num_heads} heads")
        data = self.data.reshape(num_heads, rows // num_heads // 2, 2, -1).swapaxes(1, 2)
        return GGUFTensor(self.name, self.type_name, self.shape, data.reshape(self.data.shape))


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face Llama name of a GGUF tensor, or None when herd has no such parameter."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def gguf_tensors(path, cfg: ModelConfig) -> Iterator[tuple[str, GGUFTensor]]:
    """(Hugging Face name, tensor) for every weight of the file, q/k rows in transformers'
    order, raw (not decoded). Names herd does not know are yielded as the file spells them,
    for the loader to report. An unsupported type is a `ModelLoadError` naming the tensor."""
    for t in open_gguf(path).tensors:
        if t.name in IGNORED:
            continue
        type_name = t.tensor_type.name
        if type_name not in SUPPORTED_TYPES:
            raise ModelLoadError(
                f"tensor {t.name} has GGUF type {type_name}, which herd cannot load "
                f"(supported: {', '.join(SUPPORTED_TYPES)})"
            )
        shape = tuple(int(d) for d in reversed(t.shape))
        tensor = GGUFTensor(t.name, type_name, shape, t.data)
        name = hf_name(t.name) or t.name
        if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            tensor = tensor.permute_rows(cfg.num_attention_heads)
        elif name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            tensor = tensor.permute_rows(cfg.num_key_value_heads)
        yield name, tensor


def checkpoint_tensors(path, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """`gguf_tensors` decoded to float32, one tensor at a time (the loader's input)."""
    tensors = open_gguf(path).tensors
    types = Counter(t.tensor_type.name for t in tensors)
    log.info(
        "loading %s: %.1f MB, %d tensors (%s), dequantized as they load",
        Path(path).name,
        sum(int(t.n_bytes) for t in tensors) / 1e6,
        len(tensors),
        ", ".join(f"{n} {k}" for k, n in types.most_common()),
    )
    for name, tensor in gguf_tensors(path, cfg):
        yield name, tensor.to_float()
