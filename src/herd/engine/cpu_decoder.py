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

from herd.engine.cpu_block_linear import BlockLinear
from herd.engine.cpu_paged_decode import CpuAttention
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
    if any(type(m) not in (nn.Linear, PackedLinear, BlockLinear) for m in linears):
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
        if isinstance(model.lm_head, BlockLinear) and not lib.herd_decoder_packs(
            kv_cache.element_size()
        ):
            raise ValueError("this build of the fused step cannot read weights packed in blocks")
        self.max_batch, self.lib = max_batch, lib
        self.fn = getattr(lib, SYMBOLS[kv_cache.dtype])
        rotary = model.model.rotary_emb
        self.cos, self.sin = rotary.cos.float().contiguous(), rotary.sin.float().contiguous()
        layers = [_layer(layer) for layer in model.model.layers]
        self.layers = (_LayerW * cfg.num_hidden_layers)(*layers)
        self.model = _ModelW(
            hidden=cfg.hidden_size, heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim, inter=cfg.intermediate_size, vocab=cfg.vocab_size,
            layers=cfg.num_hidden_layers, block_size=kv_cache.shape[3],
            cache_blocks=kv_cache.shape[2], eps=cfg.rms_norm_eps, scale=cfg.head_dim**-0.5,
            embed=_ptr(model.model.embed_tokens.weight), final_norm=_ptr(model.model.norm.weight),
            lm_head=_plain(model.lm_head), layer=self.layers, kv=_ptr(kv_cache),
            lm_head_p=_blocks(model.lm_head, 0),
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
        try:
            return cls(model, kv_cache, max_batch, lib)
        except ValueError as exc:  # what this build cannot read
            log.info("fused CPU decode off: %s", exc)
            return None

    def describe(self) -> str:
        return f"fused C++ decode step for batches up to {self.max_batch}"

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


def _plain(linear: nn.Module) -> int | None:
    """The plain weight's address (None when the linear keeps only blocks)."""
    weight = getattr(linear, "weight", None)
    return None if weight is None else weight.data_ptr()


def _blocks(linear: nn.Module, segment: int) -> int | None:
    """A `BlockLinear`'s segment of blocks (None for plain linears, read by rows)."""
    return linear.segment(segment).data_ptr() if isinstance(linear, BlockLinear) else None


def _layer(layer: nn.Module) -> _LayerW:
    attn, mlp = layer.self_attn, layer.mlp
    qkv, o, gate_up, down = attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj
    plain = [_ptr(layer.input_layernorm.weight), _plain(qkv), _ptr(qkv.bias), _plain(o),
             _ptr(o.bias), _ptr(layer.post_attention_layernorm.weight), _plain(gate_up),
             _ptr(gate_up.bias), _plain(down), _ptr(down.bias)]  # fmt: skip
    blocks = [_blocks(qkv, 0), _blocks(o, 0), _blocks(gate_up, 0), _blocks(gate_up, 1)]
    return _LayerW(*plain, *blocks, _blocks(down, 0))
