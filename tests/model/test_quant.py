"""Quantized linears against float arithmetic, the module swap, weight memory, and FP8 checkpoints
in the two published formats (compressed-tensors, fbgemm_fp8) built here by quantizing the random
demo model the way those tools write them; formats herd does not read are clear errors."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from herd.model import quant
from herd.model.config import ModelConfig
from herd.model.errors import ModelLoadError
from herd.model.loader import load_model
from herd.model.quant import (
    FP8,
    Fp8Linear,
    Int4Linear,
    Int8Linear,
    fp8_scaled_mm,
    fp8_widen,
    quantize_int4_groups,
    weight_bytes,
)

CPU = torch.device("cpu")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref).norm() / ref.norm()).item()


@pytest.fixture
def linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(256, 384, bias=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_matches_its_dequantized_weight(linear, dtype):
    x = torch.randn(5, 256)
    ref_float = linear(x).detach()
    m = Int8Linear.from_float(linear.to(dtype))
    w = m.weight.float() * m.scales.float()[:, None]
    ref = x @ w.t() + m.bias.float()
    y = m(x.to(dtype))
    assert y.dtype == dtype and y.shape == (5, 384)
    assert _rel_err(y, ref) < 1e-2
    # ...and per-channel int8 is within 1% of the float layer.
    assert _rel_err(y, ref_float) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_matches_its_dequantized_weight(linear, dtype):
    w = linear.weight.detach().float()
    q, scale, zero = quantize_int4_groups(w, 32)
    assert q.min() >= 0 and q.max() <= 15
    deq = ((q.view(384, 8, 32) - 8) * scale[..., None] + zero[..., None]).view(384, 256)
    assert (deq - w).abs().max() <= scale.max() / 2 + 1e-6  # round to nearest
    x = torch.randn(3, 256)
    ref = x @ deq.t() + linear.bias.detach()
    y = Int4Linear.from_float(linear.to(dtype))(x.to(dtype))
    assert y.dtype == dtype
    assert _rel_err(y, ref) < 3e-2  # bf16 activations, scales and zeros


def test_fp8_widening_is_exact_for_every_byte():
    every = torch.arange(256, dtype=torch.uint8).view(FP8)
    every = every[~every.float().isnan()]
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        wide, factor = fp8_widen(every, dtype)
        torch.testing.assert_close(wide.float() * factor, every.float(), rtol=0, atol=0)


def test_fp8_linear_cpu_and_scaled_mm_paths(linear):
    m = Fp8Linear.from_float(linear)
    assert m.weight.dtype == FP8
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    ref = linear(x.float()).detach()
    assert _rel_err(m(x), ref) < 0.05
    # The CUDA path's arithmetic (per-token activation scales through _scaled_mm) runs on CPU.
    y = fp8_scaled_mm(x, m.weight, m.weight_scale) + m.bias.to(x.dtype)
    assert _rel_err(y, ref) < 0.06


@pytest.mark.parametrize("method", ["int8", "int4", "fp8"])
def test_swap_covers_decoder_linears_only_and_saves_memory(tiny_model_dir, method):
    cfg = ModelConfig.from_dir(tiny_model_dir)
    full = load_model(tiny_model_dir, cfg, torch.bfloat16, CPU)
    model = load_model(tiny_model_dir, cfg, torch.bfloat16, CPU, method)
    kinds = {type(mod) for layer in model.model.layers for mod in layer.modules()}
    assert nn.Linear not in kinds
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    linear_bytes = sum(
        p.numel() * p.element_size()
        for layer in full.model.layers
        for n, p in layer.named_parameters()
        if "proj" in n
    )
    ratio = weight_bytes(model)["quantized"] / linear_bytes
    limit = {"int8": 0.55, "int4": 0.35, "fp8": 0.55}[method]
    assert ratio <= limit, f"{method} linears take {ratio:.0%} of bf16"


def test_unknown_quantization_is_a_clear_error(tiny_model_dir):
    cfg = ModelConfig.from_dir(tiny_model_dir)
    with pytest.raises(ModelLoadError, match="quantization must be one of"):
        load_model(tiny_model_dir, cfg, torch.float32, CPU, "int3")


# --- pre-quantized FP8 checkpoints -------------------------------------------------------------


def _fp8_checkpoint(src, dst, quant_config, per_tensor=False, keep=()):
    """Copy of a float model directory with its decoder linears stored as float8_e4m3fn weight +
    weight_scale, as llm-compressor / fbgemm write them, and `quant_config` in config.json."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    for name in list(tensors):
        module = name.removesuffix(".weight")
        if not (name.endswith(".weight") and module.endswith(LINEARS)) or module in keep:
            continue
        w = tensors[name].float()
        amax = w.abs().amax() if per_tensor else w.abs().amax(dim=1, keepdim=True)
        scale = (amax / 448).clamp(min=1e-12)
        tensors[name] = (w / scale).clamp(-448, 448).to(FP8)
        tensors[module + ".weight_scale"] = scale.reshape(1) if per_tensor else scale
        tensors[module + ".input_scale"] = torch.ones(1)  # a static scale herd reads past
    save_file(tensors, dst / "model.safetensors")
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"] = quant_config
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _compressed_tensors(strategy="channel", ignore=("lm_head",), weights=None):
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "kv_cache_scheme": None,
        "ignore": list(ignore),
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights
                or {"type": "float", "num_bits": 8, "symmetric": True, "strategy": strategy},
                "input_activations": {
                    "type": "float",
                    "num_bits": 8,
                    "strategy": "token",
                    "dynamic": True,
                },
            }
        },
    }


def _logits(model, ids):
    from herd.model.quant_eval import next_token_logits

    return next_token_logits(model, ids)


IDS = list(range(5, 200, 3))


def test_compressed_tensors_channel_checkpoint_equals_quantizing_at_load(tiny_model_dir, tmp_path):
    ckpt = _fp8_checkpoint(tiny_model_dir, tmp_path / "fp8", _compressed_tensors())
    cfg = ModelConfig.from_dir(ckpt)
    loaded = load_model(ckpt, cfg, torch.float32, CPU)
    assert isinstance(loaded.model.layers[0].self_attn.qkv_proj, Fp8Linear)
    assert type(loaded.lm_head) is nn.Linear
    at_load = load_model(tiny_model_dir, cfg, torch.float32, CPU, "fp8")
    torch.testing.assert_close(_logits(loaded, IDS), _logits(at_load, IDS))
    full = load_model(tiny_model_dir, cfg, torch.float32, CPU)
    assert (
        _rel_err(_logits(loaded, IDS), _logits(full, IDS)) < 0.1
    )  # e4m3: ~3% per linear; garbage is ~100%
    # Asking for fp8 again is fine; asking for another method is not.
    load_model(ckpt, cfg, torch.float32, CPU, "fp8")
    with pytest.raises(ModelLoadError, match="already quantized"):
        load_model(ckpt, cfg, torch.float32, CPU, "int8")


def test_per_tensor_and_fbgemm_checkpoints(tiny_model_dir, tmp_path):
    full_cfg = ModelConfig.from_dir(tiny_model_dir)
    ref = _logits(load_model(tiny_model_dir, full_cfg, torch.float32, CPU), IDS)
    tensor_ckpt = _fp8_checkpoint(
        tiny_model_dir, tmp_path / "t", _compressed_tensors("tensor"), per_tensor=True
    )
    keep = "model.layers.0.mlp.down_proj"
    fbgemm = {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0}
    fbgemm["modules_to_not_convert"] = [keep, "lm_head"]
    fb_ckpt = _fp8_checkpoint(tiny_model_dir, tmp_path / "fb", fbgemm, keep=(keep,))
    for ckpt in (tensor_ckpt, fb_ckpt):
        model = load_model(ckpt, ModelConfig.from_dir(ckpt), torch.float32, CPU)
        assert _rel_err(_logits(model, IDS), ref) < 0.1
    assert type(model.model.layers[0].mlp.down_proj) is nn.Linear
    assert isinstance(model.model.layers[1].mlp.down_proj, Fp8Linear)


@pytest.mark.parametrize(
    "quant_config, match",
    [
        ({"quant_method": "gptq", "bits": 4}, "'gptq' is not supported"),
        ({"quant_method": "awq"}, "'awq' is not supported"),
        (
            _compressed_tensors(weights={"type": "int", "num_bits": 4, "strategy": "group"}),
            "symmetric float 8-bit",
        ),
        ({**_compressed_tensors(), "format": "pack-quantized"}, "format 'pack-quantized'"),
        ({**_compressed_tensors(), "kv_cache_scheme": {"num_bits": 8}}, "kv_cache_scheme"),
        (_compressed_tensors(ignore=["model.layers.0.self_attn.q_proj"]), "only some of"),
    ],
)
def test_unsupported_checkpoint_formats_are_clear_errors(
    tiny_model_dir, tmp_path, quant_config, match
):
    ckpt = _fp8_checkpoint(tiny_model_dir, tmp_path / "bad", quant_config)
    with pytest.raises(ModelLoadError, match=match):
        load_model(ckpt, ModelConfig.from_dir(ckpt), torch.float32, CPU)


def test_config_that_does_not_describe_the_tensors_is_an_error(tiny_model_dir, tmp_path):
    # The config says fp8, the weights are float: never a silent cast of float values to fp8.
    ckpt = tmp_path / "lying"
    shutil.copytree(tiny_model_dir, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"] = _compressed_tensors()
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="missing weights|expected"):
        load_model(ckpt, ModelConfig.from_dir(ckpt), torch.float32, CPU)


@pytest.mark.parametrize("capability,scaled_mm", [((8, 0), False), ((8, 9), True), ((9, 0), True)])
def test_fp8_products_take_scaled_mm_only_where_the_gpu_multiplies_e4m3(
    monkeypatch, capability, scaled_mm
):
    """An Ampere GPU (8.0) has no e4m3 matmul: Fp8Linear widens its weight there, as on CPU."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    quant._capability.cache_clear()
    try:
        assert quant.fp8_matmuls(torch.device("cuda")) is scaled_mm
        assert not quant.fp8_matmuls(torch.device("cpu"))
    finally:
        quant._capability.cache_clear()
