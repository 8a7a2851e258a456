"""GGUF weights that are already 4-bit load into int4 linears as they are: the block decoding
agrees with the gguf reader's own dequantization, and SmolLM2's Q4_1 file loads with quantization
int4 without decoding its decoder linears to float, giving the file's weights."""

import logging

import numpy as np
import pytest
import torch

from herd.model.config import ModelConfig
from herd.model.default_model import ensure_default_model
from herd.model.gguf_quants import dequantize
from herd.model.gguf_weights import GGUFTensor
from herd.model.loader import load_model
from herd.model.quant import Fp8Linear, Int4Linear, Int8Linear
from herd.model.quant_gguf import q4_groups

CPU = torch.device("cpu")


@pytest.mark.parametrize("type_name, size", [("Q4_0", 18), ("Q4_1", 20)])
def test_q4_blocks_map_exactly_onto_int4_groups(type_name, size):
    rng = np.random.default_rng(0)
    rows, cols = 8, 96
    raw = rng.integers(0, 256, (rows, cols // 32, size), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.1, (rows, cols // 32, 2)).astype(np.float16)
    raw[..., 0:4] = scales.view(np.uint8).reshape(rows, cols // 32, 4)
    raw = raw.reshape(rows, -1)
    q, scale, zero = q4_groups(raw, type_name, rows, cols)
    mine = ((q.view(rows, -1, 32) - 8) * scale[..., None] + zero[..., None]).view(rows, cols)
    ref = torch.from_numpy(dequantize(raw, type_name, (rows, cols)))
    torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def smollm2():
    path = ensure_default_model()
    return path, ModelConfig.from_dir(path)


def test_q4_1_file_loads_as_int4_without_decoding_linears(smollm2, monkeypatch, caplog):
    path, cfg = smollm2
    decoded = []
    original = GGUFTensor.to_float
    monkeypatch.setattr(GGUFTensor, "to_float", lambda t: decoded.append(t.name) or original(t))
    with caplog.at_level(logging.INFO, logger="herd.model.quant_gguf"):
        model = load_model(path, cfg, torch.float32, CPU, "int4")
    assert "blocks as they are" in caplog.text and "requantized" not in caplog.text
    assert not [n for n in decoded if n.startswith("blk.") and "norm" not in n]
    layer = model.model.layers[3]
    assert isinstance(layer.mlp.gate_up_proj, Int4Linear)
    # The int4 layer computes with the file's own weights (up to bf16 activations).
    float_model = load_model(path, cfg, torch.float32, CPU)
    x = torch.randn(4, cfg.hidden_size)
    ref = float_model.model.layers[3].mlp.gate_up_proj(x)
    err = (layer.mlp.gate_up_proj(x) - ref).norm() / ref.norm()
    assert err < 1e-2


def test_other_methods_requantize_per_tensor(smollm2, caplog):
    path, cfg = smollm2
    with caplog.at_level(logging.INFO, logger="herd.model.quant_gguf"):
        model = load_model(path, cfg, torch.bfloat16, CPU, "int8")
    assert "dequantized and requantized" in caplog.text
    assert isinstance(model.model.layers[0].self_attn.qkv_proj, Int8Linear)


def test_fp8_from_a_gguf_file(smollm2):
    path, cfg = smollm2
    model = load_model(path, cfg, torch.bfloat16, CPU, "fp8")
    assert isinstance(model.model.layers[0].mlp.down_proj, Fp8Linear)
