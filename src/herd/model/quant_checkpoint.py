"""Which quantization a model load ends in, and the model surgery around the weight copy: FP8
checkpoints as published for Llama 3.x (`quantization_config.quant_method` "compressed-tensors"
or "fbgemm_fp8") get fp8 modules before loading; `--quantization` swaps linears after it.

A checkpoint format herd does not understand is a `ModelLoadError` naming what it found, never a
silent float load of fp8 bytes."""

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from herd.model.config import ModelConfig
from herd.model.errors import ModelLoadError
from herd.model.gguf_file import find_gguf
from herd.model.quant import FP8, Fp8Linear, normalize, quantize_model

log = logging.getLogger(__name__)

# Checkpoint tensors we read past on purpose: static activation scales (herd scales activations
# per token, which is at least as accurate) and fbgemm's activation upper bound.
ACTIVATION_SCALE_SUFFIXES = (".input_scale", ".input_scale_ub")
# Our fused modules and the checkpoint modules that fill them.
_FUSED = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


@dataclass
class QuantPlan:
    """What a load does about quantization. `method` is what the decoder linears end up as
    (None, "int8", "int4", "fp8"); `prequantized` when they arrive as fp8 from the checkpoint
    (then `keep_float` lists checkpoint module names the checkpoint left unquantized)."""

    method: str | None = None
    prequantized: bool = False
    keep_float: list[str] = field(default_factory=list)
    ignored_suffixes: tuple[str, ...] = ()
    gguf: Path | None = None  # quantize from this file's blocks, layer by layer

    def before_load(self, model: nn.Module, cfg: ModelConfig) -> set[str]:
        """Swaps fp8 storage in for the linears a pre-quantized checkpoint stores as fp8, or
        builds quantized linears straight from a GGUF file. Returns the checkpoint names that
        need no copy (already loaded)."""
        if self.gguf is not None:
            from herd.model.quant_gguf import load_gguf_linears

            return load_gguf_linears(model, self.gguf, cfg, self.method)
        if not self.prequantized:
            return set()
        for name, module in list(model.model.layers.named_modules()):
            if not isinstance(module, nn.Linear):
                continue
            full = f"model.layers.{name}"
            if not self._kept_float(full):
                parent_name, _, child = full.rpartition(".")
                setattr(model.get_submodule(parent_name), child, Fp8Linear.empty(module))
        return set()

    def after_load(self, model: nn.Module, group_size: int | None = None) -> None:
        if self.method and not self.prequantized and self.gguf is None:
            n = quantize_model(model, self.method, group_size)
            log.info("quantized %d decoder linears to %s at load time", n, self.method)
        if self.method and not self.prequantized:
            _release_freed_memory()

    def _kept_float(self, module: str) -> bool:
        parent, _, leaf = module.rpartition(".")
        sources = [f"{parent}.{s}" for s in _FUSED.get(leaf, (leaf,))]
        kept = [_matches(s, self.keep_float) for s in sources]
        if any(kept) and not all(kept):
            raise ModelLoadError(
                f"the checkpoint quantizes only some of {sources}, which herd fuses into one "
                f"layer; it cannot load this mix"
            )
        return kept[0]


def plan_quantization(model_path: str | Path, requested: str | None) -> QuantPlan:
    """The plan for `requested` (None/"none", int8, int4, fp8) and the checkpoint's own
    `quantization_config`, if any. Asking for another method than a pre-quantized checkpoint
    holds is an error, as in vLLM."""
    try:
        requested = normalize(requested)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    qc = _quantization_config(Path(model_path))
    if qc is None:
        gguf = find_gguf(model_path) if requested else None
        return QuantPlan(method=requested, gguf=gguf)
    plan = _checkpoint_plan(qc)
    if requested not in (None, plan.method):
        raise ModelLoadError(
            f"the checkpoint is already quantized ({plan.method}, {qc.get('quant_method')}); "
            f"quantization={requested!r} cannot apply to it: leave it unset or use {plan.method!r}"
        )
    log.info("pre-quantized checkpoint: %s (%s)", plan.method, qc.get("quant_method"))
    return plan


def _quantization_config(model_path: Path) -> dict | None:
    config = model_path / "config.json"
    if not config.is_file():
        return None
    try:
        qc = json.loads(config.read_text()).get("quantization_config")
    except (json.JSONDecodeError, AttributeError):
        return None  # ModelConfig reports a malformed config.json
    if qc is not None and not isinstance(qc, dict):
        raise ModelLoadError(f"quantization_config must be an object, got {qc!r}")
    return qc


def _checkpoint_plan(qc: dict) -> QuantPlan:
    method = qc.get("quant_method")
    if method == "fbgemm_fp8":
        keep = list(qc.get("modules_to_not_convert") or [])
        return QuantPlan("fp8", True, keep, ACTIVATION_SCALE_SUFFIXES)
    if method == "compressed-tensors":
        return _compressed_tensors_plan(qc)
    raise ModelLoadError(
        f"quantization_config.quant_method {method!r} is not supported; herd loads FP8 "
        f"checkpoints in the 'compressed-tensors' and 'fbgemm_fp8' formats, or quantizes a "
        f"float checkpoint itself (quantization=int8/int4/fp8)"
    )


def _compressed_tensors_plan(qc: dict) -> QuantPlan:
    def fail(what: str) -> ModelLoadError:
        return ModelLoadError(f"compressed-tensors checkpoint not supported: {what}")

    if qc.get("format") not in ("float-quantized", None):
        raise fail(f"format {qc.get('format')!r} (herd reads 'float-quantized', FP8 e4m3)")
    if qc.get("quantization_status", "compressed") != "compressed":
        raise fail(f"quantization_status {qc.get('quantization_status')!r}")
    if qc.get("kv_cache_scheme"):
        raise fail("kv_cache_scheme (calibrated KV scales); use kv_cache_dtype='fp8' instead")
    groups = qc.get("config_groups") or {}
    if len(groups) != 1:
        raise fail(f"{len(groups)} config_groups (herd reads exactly one)")
    (group,) = groups.values()
    w = group.get("weights") or {}
    if (w.get("type"), w.get("num_bits"), w.get("symmetric", True)) != ("float", 8, True):
        raise fail(f"weights {w} (herd reads symmetric float 8-bit weights)")
    if w.get("strategy") not in ("tensor", "channel"):
        raise fail(f"weight strategy {w.get('strategy')!r} (herd reads 'tensor' or 'channel')")
    a = group.get("input_activations")
    if a and (a.get("type"), a.get("num_bits")) != ("float", 8):
        raise fail(f"input_activations {a} (herd reads FP8 activations)")
    if a and not a.get("dynamic", False):
        log.info("static activation scales in the checkpoint; herd scales per token instead")
    if set(group.get("targets") or ["Linear"]) != {"Linear"}:
        raise fail(f"targets {group.get('targets')} (herd reads ['Linear'])")
    return QuantPlan("fp8", True, list(qc.get("ignore") or []), ACTIVATION_SCALE_SUFFIXES)


def _release_freed_memory() -> None:
    """Hand the float weights just freed back to the OS (glibc keeps freed heap otherwise), so
    the process's RSS shows the saving."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _matches(module: str, patterns: list[str]) -> bool:
    for p in patterns:
        if p.startswith("re:"):
            if re.fullmatch(p[3:], module):
                return True
        elif module == p or module.endswith("." + p):
            return True
    return False


def checkpoint_tensor_for(dst: torch.Tensor, src: torch.Tensor, name: str) -> torch.Tensor:
    """`src` shaped and typed for `dst`, for the tensors quantization adds: a `weight_scale`
    of [N, 1], [1] or [] becomes one scale per row; fp8 bytes only ever meet fp8 storage."""
    if name.endswith(".weight_scale"):
        rows = src.float().reshape(-1)
        return rows.expand(dst.shape) if rows.numel() == 1 else rows
    if (src.dtype == FP8) != (dst.dtype == FP8):
        raise ModelLoadError(
            f"weight {name} is {src.dtype} but herd expected {dst.dtype}: the checkpoint's "
            f"quantization_config does not describe its tensors"
        )
    return src
