"""Hand arithmetic from Meta's configs against herd.plan's figures."""

import json

import pytest

from herd.plan.gpus import GIB, resolve_gpu
from herd.plan.memory import PlanInputs, kv_bytes_per_token, plan_memory
from herd.plan.model_config import ConfigError, load_model_config

H100 = resolve_gpu("H100-80GB")

# Llama-3.1-8B by hand: hidden 4096, 32 layers, 32 heads, 8 KV heads, head_dim 128,
# MLP 14336, vocab 128256, untied embeddings.
EMBED_8B = 128256 * 4096  # one of embed_tokens / lm_head
LAYER_8B = (4096 * 4096) * 2 + (4096 * 1024) * 2 + 3 * 4096 * 14336  # q,o + k,v + mlp
NORM_8B = (2 * 32 + 1) * 4096
PARAMS_8B = 2 * EMBED_8B + 32 * LAYER_8B + NORM_8B


def test_llama_3_1_8b_param_count_is_8_03b():
    model = load_model_config("llama-3.1-8b")
    assert model.num_params == PARAMS_8B == 8_030_261_248


def test_llama_3_1_8b_bf16_weights_about_15_gib():
    plan = plan_memory(load_model_config("Llama-3.1-8B"), H100, PlanInputs(precision="bf16"))
    assert plan.weights_gib_per_gpu == pytest.approx(PARAMS_8B * 2 / GIB)
    assert plan.weights_gib_per_gpu == pytest.approx(14.96, abs=0.01)


def test_llama_3_1_8b_fp8_keeps_embeddings_and_lm_head_in_bf16():
    # fp8: 1 byte per decoder linear weight; embed_tokens, lm_head and norms stay bf16.
    hand = 32 * LAYER_8B * 1 + (2 * EMBED_8B + NORM_8B) * 2
    plan = plan_memory(load_model_config("llama-3.1-8b"), H100, PlanInputs(precision="fp8"))
    assert plan.weights_gib_per_gpu == pytest.approx(hand / GIB)
    assert plan.weights_gib_per_gpu == pytest.approx(8.46, abs=0.01)  # not 7.5: lm_head is big


def test_kv_bytes_per_token_8b():
    model = load_model_config("llama-3.1-8b")
    assert kv_bytes_per_token(model, kv_bytes=2) == 2 * 32 * 8 * 128 * 2 == 131072  # 128 KiB
    assert kv_bytes_per_token(model, kv_bytes=1) == 65536


def test_kv_tokens_and_max_seqs_8b_on_h100():
    inputs = PlanInputs(
        gpu_memory_utilization=0.9, overhead_gib=2.0, input_len=1024, output_len=1024
    )
    plan = plan_memory(load_model_config("llama-3.1-8b"), H100, inputs)
    budget = 81559 * 2**20 * 0.9 - PARAMS_8B * 2 - 2 * GIB
    blocks = int(budget // (131072 * 16))
    assert plan.kv_tokens == blocks * 16
    assert plan.max_concurrent_seqs == blocks // (2048 // 16)


def test_llama_3_3_70b_over_8_gpus():
    # hidden 8192, 80 layers, 64 heads, 8 KV heads, head_dim 128, MLP 28672, vocab 128256.
    layer = (8192 * 8192) * 2 + (8192 * 1024) * 2 + 3 * 8192 * 28672
    embed = 128256 * 8192
    assert load_model_config("llama-3.3-70b").num_params == 80 * layer + 2 * embed + 161 * 8192
    per_gpu_params = 80 * layer / 8 + 2 * embed / 8 + 161 * 8192  # norms replicated
    plan = plan_memory(load_model_config("llama-3.3-70b"), H100, PlanInputs(tp=8))
    assert plan.weights_gib_per_gpu == pytest.approx(per_gpu_params * 2 / GIB)
    assert plan.weights_gib_per_gpu == pytest.approx(16.43, abs=0.01)
    # One KV head per GPU: 2 * 80 layers * 1 head * 128 * 2 bytes.
    assert plan.kv_bytes_per_token_per_gpu == 2 * 80 * 1 * 128 * 2 == 40960
    assert plan.kv_bytes_per_token == 327680  # 320 KiB per token for the whole replica


def test_tp_beyond_kv_heads_replicates_one_head_per_gpu():
    model = load_model_config("llama-3.2-1b")  # 8 KV heads, 32 heads
    assert kv_bytes_per_token(model, 2, tp=16) == 2 * 16 * 1 * 64 * 2


def test_tied_embeddings_count_once():
    model = load_model_config("llama-3.2-1b")
    assert model.tie_word_embeddings and model.head_dim == 64
    assert model.param_counts()["lm_head"] == 0
    assert model.num_params == pytest.approx(1.236e9, rel=1e-3)


def test_parse_real_config_json(tmp_path):
    raw = {
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "model_type": "llama",
        "num_attention_heads": 24,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "vocab_size": 128256,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(raw))
    model = load_model_config(str(tmp_path))  # a model directory
    assert model.head_dim == 3072 // 24  # head_dim absent: hidden / heads
    assert model.eos_token_ids == [128001, 128008, 128009]
    assert model.rope.rope_type == "llama3" and model.rope.factor == 32.0
    assert model.max_model_len == 131072
    assert load_model_config(str(tmp_path / "config.json")).num_params == model.num_params


def test_missing_field_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ConfigError, match="num_attention_heads"):
        load_model_config(str(tmp_path))


def test_int4_and_fp8_kv():
    model = load_model_config("llama-3.1-70b")
    int4 = plan_memory(model, H100, PlanInputs(tp=2, precision="int4", kv_dtype="fp8"))
    assert int4.kv_bytes_per_token_per_gpu == 2 * 80 * 4 * 128
    linear = model.num_params - 2 * 128256 * 8192 - 161 * 8192
    hand = linear / 2 * (0.5 + 4 / 32) + (128256 * 8192 + 161 * 8192) * 2  # embed+lm_head halves
    assert int4.weights_gib_per_gpu * GIB == pytest.approx(hand)


def test_overlong_sequence_is_flagged():
    plan = plan_memory(load_model_config("llama-3.1-8b"), H100, PlanInputs(input_len=200_000))
    assert not plan.fits and plan.max_concurrent_seqs == 0 and "context" in plan.note


def test_custom_gpu_sizes():
    assert resolve_gpu("custom:24GiB").memory_bytes == 24 * GIB
    assert resolve_gpu("48GB").memory_bytes == 48e9
    with pytest.raises(ValueError, match="H100-80GB"):
        resolve_gpu("TPU")
