"""Loading Hugging Face model directories: Meta's configs, sharded weights, clear errors."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from herd import LLM, SamplingParams
from herd.engine.errors import ModelLoadError
from herd.model.config import ModelConfig
from herd.model.rope import inverse_frequencies

# config.json of meta-llama/Llama-3.1-8B-Instruct as Meta ships it.
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}


def test_meta_llama31_config():
    cfg = ModelConfig.from_dict(LLAMA31_8B)
    assert (cfg.head_dim, cfg.num_key_value_heads, cfg.max_model_len) == (128, 8, 131072)
    assert cfg.rope.rope_type == "llama3" and cfg.rope.factor == 8.0
    assert cfg.eos_token_ids == [128001, 128008, 128009]
    assert cfg.torch_dtype == "bfloat16"


def test_llama3_rope_frequencies_match_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_cfg = LlamaConfig(**LLAMA31_8B)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    got = inverse_frequencies(ModelConfig.from_dict(LLAMA31_8B).rope, 128)
    torch.testing.assert_close(got, expected.float())


def test_sharded_checkpoint_gives_the_same_output(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_model_dir, sharded)
    (sharded / "model.safetensors").unlink()
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(
        sharded, max_shard_size="50KB"
    )
    assert (sharded / "model.safetensors.index.json").exists()
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    a = LLM(tiny_model_dir, dtype="float32").generate(["Hello world"], params)[0]
    b = LLM(sharded, dtype="float32").generate(["Hello world"], params)[0]
    assert a.outputs[0].token_ids == b.outputs[0].token_ids


def _edit_weights(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors")


def test_missing_weight_is_named(tiny_model_dir, tmp_path):
    _edit_weights(
        tiny_model_dir, tmp_path / "m", lambda t: t.pop("model.layers.1.mlp.up_proj.weight")
    )
    with pytest.raises(
        ModelLoadError, match=r"missing weights: model\.layers\.1\.mlp\.up_proj\.weight"
    ):
        LLM(tmp_path / "m")


def test_unexpected_weight_is_named(tiny_model_dir, tmp_path):
    _edit_weights(tiny_model_dir, tmp_path / "m", lambda t: t.update(extra_head=torch.zeros(2)))
    with pytest.raises(ModelLoadError, match="unexpected weights: extra_head"):
        LLM(tmp_path / "m")


def test_wrong_shape_is_named(tiny_model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ModelLoadError, match=r"mlp\.\w+_proj\.weight has shape \(\d+, \d+\), the config implies"
    ):
        LLM(d)


def test_unsupported_model_type(tiny_model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mistral3"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="mistral3"):
        LLM(d)
