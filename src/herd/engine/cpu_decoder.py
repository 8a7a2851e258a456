"""`CpuDecoder`: a whole decode step of a small batch as one native call (`cpu_decoder.cpp`, built by
`native_build`): every layer's GEMVs, RoPE, the paged cache writes, attention and the lm_head run
in one OpenMP team, so a batch-1 step streams the weights once without ~200 op dispatches around
small matrix-vector products. The runner uses it for plain decode batches up to
`fused_decode_max_batch` when the model is a bf16 or float32 Llama on one rank with `CpuAttention`.
"""

import ctypes
import logging

import torch
from torch import nn

from herd.engine.cpu_paged_decode import CpuAttention
from herd.engine.huge_pages import collapse, huge_buffer
from herd.engine.input_buffers import StepInputs
from herd.engine.native_build import load_library
from herd.model.packed_linear import PackedLinear

log = logging.getLogger(__name__)

SYMBOLS = {torch.float32: "herd_decoder_f32", torch.bfloat16: "herd_decoder_bf16"}
_P = ctypes.c_void_p
_I = ctypes.c_int64
LAYER_FIELDS = ("in_norm", "qkv", "qkv_b", "o", "o_b", "post_norm", "gate_up", "gate_up_b", "down",
                "down_b")  # fmt: skip


PACKED_FIELDS = ("qkv_p", "o_p", "gate_p", "up_p", "down_p")
PACK_COLS = 32  # outputs per packed block, as cpu_decoder.cpp packs them


class _LayerW(ctypes.Structure):
    _fields_ = [(name, _P) for name in LAYER_FIELDS + PACKED_FIELDS]


class _ModelW(ctypes.Structure):
    _fields_ = [
        *[(n, _I) for n in ("hidden", "heads", "kv_heads", "head_dim", "inter", "vocab")],
        *[(n, _I) for n in ("layers", "block_size", "cache_blocks")],
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        *[(n, _P) for n in ("embed", "final_norm", "lm_head", "lm_head_p")],
        ("layer", ctypes.POINTER(_LayerW)),
        *[(n, _P) for n in ("kv", "cos", "sin")],
    ]


class _Step(ctypes.Structure):
    _fields_ = [
        *[(n, _P) for n in ("ids", "pos", "slots", "table", "lens")],
        ("batch", _I),
        ("width", _I),
        ("logits", _P),
        ("scratch", _P),
    ]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def unsupported(model: nn.Module, dtype: torch.dtype, kv_cache: torch.Tensor, backend) -> str:
    """Why the fused decoder cannot run this model ('' when it can)."""
    if not isinstance(backend, CpuAttention) or backend.lib is None:
        return f"attention backend {type(backend).__name__} (the fused decoder is CpuAttention's)"
    if kv_cache.device.type != "cpu" or dtype not in SYMBOLS or kv_cache.dtype != dtype:
        return f"{dtype} weights with a {kv_cache.dtype} cache on {kv_cache.device.type}"
    if model.shard.size > 1:
        return "tensor parallelism"
    if model.config.head_dim > 512 or model.config.head_dim % 2:
        return f"head_dim {model.config.head_dim}"
    if getattr(model, "quantization", None):
        return f"{model.quantization} quantization"
    linears = [model.lm_head]
    for layer in model.model.layers:
        linears += [layer.self_attn.qkv_proj, layer.self_attn.o_proj]
        linears += [layer.mlp.gate_up_proj, layer.mlp.down_proj]
    if any(type(m) not in (nn.Linear, PackedLinear) for m in linears):
        return "projections that are not plain linears"
    if any(p.dtype != dtype or not p.is_contiguous() for p in model.parameters()):
        return "weights of mixed dtypes or layouts"
    return ""


class CpuDecoder:
    """Runs plain decode steps (one new token per sequence) of up to `max_batch` sequences and
    returns their float32 logits. Writes each step's K/V into `kv_cache` as `CpuAttention` does;
    the logits equal the eager model's to accumulation order (rounding to the model dtype after
    every op, as eager does). Build with `create`, which says why when it cannot."""

    def __init__(self, model: nn.Module, kv_cache: torch.Tensor, max_batch: int, lib) -> None:
        cfg = model.config
        self.max_batch, self.lib = max_batch, lib
        self.fn = getattr(lib, SYMBOLS[kv_cache.dtype])
        rotary = model.model.rotary_emb
        self.cos, self.sin = rotary.cos.float().contiguous(), rotary.sin.float().contiguous()
        packs = kv_cache.dtype == torch.bfloat16 and lib.herd_decoder_packs_weights() == 1
        self.packed = _PackedWeights(model) if packs else None
        layers = [_layer(layer, self.packed, i) for i, layer in enumerate(model.model.layers)]
        self.layers = (_LayerW * cfg.num_hidden_layers)(*layers)
        self.model = _ModelW(
            hidden=cfg.hidden_size, heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim, inter=cfg.intermediate_size, vocab=cfg.vocab_size,
            layers=cfg.num_hidden_layers, block_size=kv_cache.shape[3],
            cache_blocks=kv_cache.shape[2], eps=cfg.rms_norm_eps, scale=cfg.head_dim**-0.5,
            embed=_ptr(model.model.embed_tokens.weight), final_norm=_ptr(model.model.norm.weight),
            lm_head=_ptr(model.lm_head.weight), layer=self.layers, kv=_ptr(kv_cache),
            lm_head_p=self.packed.pointer("lm_head") if self.packed else None,
            cos=_ptr(self.cos), sin=_ptr(self.sin),
        )  # fmt: skip
        self.kv_cache = kv_cache
        lib.herd_decoder_scratch_floats.restype = _I
        floats = lib.herd_decoder_scratch_floats(ctypes.byref(self.model), _I(max_batch))
        self.scratch = torch.empty(floats, dtype=torch.float32)
        self.vocab = cfg.vocab_size

    @classmethod
    def create(cls, model: nn.Module, kv_cache: torch.Tensor, backend, max_batch: int):
        """A decoder for `model`, or None (logged) when the model or build does not allow one."""
        if max_batch < 1:
            return None
        why = unsupported(model, kv_cache.dtype, kv_cache, backend)
        lib = None if why else load_library("cpu_decoder.cpp")
        if lib is None:
            log.info("fused CPU decode off: %s", why or "the kernel did not build")
            return None
        return cls(model, kv_cache, max_batch, lib)

    def describe(self) -> str:
        packed = ""
        if self.packed is not None:  # its own copy: say what it costs
            packed = f", its own {self.packed.buffer.numel() >> 20} MiB copy of the weights packed"
        return f"fused C++ decode step for batches up to {self.max_batch}{packed}"

    def run(self, step: StepInputs, kv_cache: torch.Tensor) -> torch.Tensor:
        """Float32 logits [B, vocab] of a step of B <= max_batch plain decodes."""
        assert kv_cache is self.kv_cache and step.decode_table is not None
        b = step.num_rows
        logits = torch.empty(b, self.vocab, dtype=torch.float32)
        args = _Step(
            ids=_ptr(step.input_ids), pos=_ptr(step.positions), slots=_ptr(step.slot_mapping),
            table=_ptr(step.decode_table), lens=_ptr(step.seq_lens), batch=b,
            width=step.decode_table.shape[1], logits=_ptr(logits), scratch=_ptr(self.scratch),
        )  # fmt: skip
        threads = ctypes.c_int(torch.get_num_threads())  # as torch's ops use now
        self.fn(ctypes.byref(self.model), ctypes.byref(args), threads)
        return logits


def _layer(layer: nn.Module, packed: "_PackedWeights | None", i: int) -> _LayerW:
    attn, mlp = layer.self_attn, layer.mlp
    plain = map(_ptr, (layer.input_layernorm.weight, attn.qkv_proj.weight, attn.qkv_proj.bias,
                       attn.o_proj.weight, attn.o_proj.bias, layer.post_attention_layernorm.weight,
                       mlp.gate_up_proj.weight, mlp.gate_up_proj.bias, mlp.down_proj.weight,
                       mlp.down_proj.bias))  # fmt: skip
    blocks = [packed.pointer(f"{i}.{f}") if packed else None for f in PACKED_FIELDS]
    return _LayerW(*plain, *blocks)


def pack(w: torch.Tensor) -> torch.Tensor:
    """A bf16 [N, K] weight as `cpu_decoder.cpp`'s packed blocks: ceil(N/32) blocks, each holding
    for every input pair (2k, 2k+1) its 32 outputs' weight pairs, zero-padded: [N/32, K/2, 32, 2]."""
    n, k = w.shape
    blocks, pairs = -(-n // PACK_COLS), -(-k // 2)
    padded = torch.zeros(blocks * PACK_COLS, pairs * 2, dtype=w.dtype)
    padded[:n, :k] = w
    return padded.view(blocks, PACK_COLS, pairs, 2).transpose(1, 2)


class _PackedWeights:
    """The fused step's own copy of a bf16 model's projections, packed in blocks for its broadcast
    kernel, in one buffer backed by huge pages (the step streams it, as the weights). It costs
    the projections' memory once more; `fused_decode_max_batch=0` goes without."""

    def __init__(self, model: nn.Module) -> None:
        mats = {"lm_head": model.lm_head.weight.detach()}
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            gate, up = mlp.gate_up_proj.weight.detach().chunk(2)
            mats[f"{i}.qkv_p"] = attn.qkv_proj.weight.detach()
            mats[f"{i}.o_p"] = attn.o_proj.weight.detach()
            mats[f"{i}.gate_p"], mats[f"{i}.up_p"] = gate, up
            mats[f"{i}.down_p"] = mlp.down_proj.weight.detach()
        shapes = {k: (-(-w.shape[0] // PACK_COLS), -(-w.shape[1] // 2)) for k, w in mats.items()}
        sizes = {k: b * p * PACK_COLS * 4 for k, (b, p) in shapes.items()}  # 32-bit pairs
        self.buffer = huge_buffer(sum(sizes.values()))
        self.views, off = {}, 0
        for key, w in mats.items():
            view = self.buffer[off : off + sizes[key]].view(torch.bfloat16)
            view.view(*shapes[key], PACK_COLS, 2).copy_(pack(w))
            self.views[key], off = view, off + sizes[key]
        collapse(self.buffer)

    def pointer(self, key: str) -> int:
        return self.views[key].data_ptr()
