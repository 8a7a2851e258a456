"""Builds the model on a device and loads Hugging Face safetensors into it (single file or
sharded with `model.safetensors.index.json`) or a GGUF file (`herd.model.gguf_weights`), fusing
q/k/v and gate/up on the way (under tensor parallelism, each rank's slice of them). Missing or
unexpected weights fail with a message that names them."""

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from herd.model.config import ModelConfig
from herd.model.errors import ModelLoadError
from herd.model.gguf_file import find_gguf
from herd.model.llama import LlamaForCausalLM
from herd.model.parallel import SINGLE, Shard
from herd.model.quant_checkpoint import checkpoint_tensor_for, plan_quantization
from herd.model.rope import RotaryEmbedding

# checkpoint name fragment -> (our fused parameter fragment, shard index)
STACKED = {
    ".self_attn.q_proj.": (".self_attn.qkv_proj.", 0),
    ".self_attn.k_proj.": (".self_attn.qkv_proj.", 1),
    ".self_attn.v_proj.": (".self_attn.qkv_proj.", 2),
    ".mlp.gate_proj.": (".mlp.gate_up_proj.", 0),
    ".mlp.up_proj.": (".mlp.gate_up_proj.", 1),
}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ModelLoadError(f"{index} is malformed: {exc}") from None
        files = sorted({model_dir / name for name in weight_map.values()})
        missing = [str(f.name) for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"shards listed in {index.name} are missing: {missing}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{model_dir} has no *.safetensors weights")
    return files


def load_model(
    model_dir: str | Path,
    cfg: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    quantization: str | None = None,
    shard: Shard = SINGLE,
) -> LlamaForCausalLM:
    """`quantization` (None, int8, int4, fp8) is applied to the decoder linears as they load;
    a pre-quantized FP8 checkpoint loads as fp8 (see herd.model.quant_checkpoint). `shard`:
    this rank's slice of a tensor-parallel model."""
    plan = plan_quantization(model_dir, quantization)
    if shard.size > 1 and (plan.prequantized or plan.gguf is not None):
        raise ModelLoadError(
            f"tensor parallelism (tp={shard.size}) slices float weights only: it neither loads "
            "pre-quantized FP8 checkpoints nor quantizes from GGUF blocks (use a float "
            "checkpoint with --quantization, or the GGUF without it)"
        )
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, shard)
    model = model.to_empty(device=device).to(dtype)
    # RoPE tables stay float32 (as in transformers); they were lost on the meta device.
    model.model.rotary_emb = RotaryEmbedding(cfg.rope, cfg.head_dim, cfg.max_position_embeddings)
    model.model.rotary_emb.to(device)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    loaded = plan.before_load(model, cfg)
    tensors = checkpoint_tensors(Path(model_dir), cfg, skip=loaded)
    if shard.size > 1:
        tensors = ((name, shard.slice_weight(name, t, cfg)) for name, t in tensors)
    _load_weights(model, tensors, cfg, plan.ignored_suffixes, loaded, shard)
    plan.after_load(model)
    model.quantization = plan.method  # what the decoder linears are: None, int8, int4, fp8
    return model.eval()


def checkpoint_tensors(
    model_path: Path, cfg: ModelConfig, skip: set[str] = frozenset()
) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) of every weight in a model directory or GGUF file, lazily;
    GGUF tensors named in `skip` (already loaded quantized) are never decoded."""
    gguf = find_gguf(model_path)
    if gguf is not None:
        from herd.model.gguf_weights import gguf_tensors

        for name, tensor in gguf_tensors(gguf, cfg):
            if name not in skip:
                yield name, tensor.to_float()
        return
    for file in safetensors_files(model_path):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _load_weights(
    model: LlamaForCausalLM,
    tensors: Iterator[tuple[str, torch.Tensor]],
    cfg: ModelConfig,
    ignored_suffixes: tuple[str, ...] = (),
    loaded: set[str] = frozenset(),
    shard: Shard = SINGLE,
) -> None:
    """Copies `tensors` into `model`; modules whose weights are in `loaded` were built already."""
    params = dict(model.named_parameters(remove_duplicate=False))
    shard_sizes = {
        "qkv_proj": [shard.q_heads(cfg) * cfg.head_dim] + [shard.kv_heads(cfg) * cfg.head_dim] * 2,
        "gate_up_proj": [shard.intermediate(cfg)] * 2,
    }
    done = {name.rpartition(".")[0] for name in loaded}
    expected = {
        k for k in _expected_checkpoint_keys(params, cfg) if k.rpartition(".")[0] not in done
    }
    seen: set[str] = set()
    unexpected: list[str] = []
    for name, tensor in tensors:
        if name.endswith(IGNORED_SUFFIXES + ignored_suffixes):
            continue
        if name not in expected:
            if not (cfg.tie_word_embeddings and name == "lm_head.weight"):
                unexpected.append(name)
            continue
        _copy_into(params, name, tensor, shard_sizes)
        seen.add(name)
    missing = sorted(expected - seen)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing weights: {_summary(missing)}")
        if unexpected:
            parts.append(f"unexpected weights: {_summary(sorted(unexpected))}")
        raise ModelLoadError("checkpoint does not match the Llama config; " + "; ".join(parts))


def _expected_checkpoint_keys(params: dict, cfg: ModelConfig) -> set[str]:
    keys = set()
    for name in params:
        fused = next(((frag, src) for src, (frag, _) in STACKED.items() if frag in name), None)
        if fused is None:
            keys.add(name)
            continue
        frag = fused[0]
        for src, (dst, _) in STACKED.items():
            if dst == frag:
                keys.add(name.replace(frag, src))
    if cfg.tie_word_embeddings:
        keys.discard("lm_head.weight")
    return keys


def _copy_into(params: dict, name: str, tensor: torch.Tensor, shard_sizes: dict) -> None:
    for src, (dst, shard) in STACKED.items():
        if src in name:
            target = params[name.replace(src, dst)]
            sizes = shard_sizes[dst.strip(".").split(".")[-1]]
            start = sum(sizes[:shard])
            _checked_copy(target.data[start : start + sizes[shard]], tensor, name)
            return
    _checked_copy(params[name].data, tensor, name)


def _checked_copy(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    src = checkpoint_tensor_for(dst, src, name)
    if dst.shape != src.shape:
        raise ModelLoadError(
            f"weight {name} has shape {tuple(src.shape)}, the config implies {tuple(dst.shape)}"
        )
    dst.copy_(src)


def _summary(names: list[str], limit: int = 8) -> str:
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
