"""One `ModelConfig` for engine and plan: config.json as transformers 5 writes it and as Meta
ships it, multimodal `text_config` wrappers, generation_config.json EOS ids; checked against
transformers' own reading of the same files."""

import json

import pytest
from transformers import AutoConfig, GenerationConfig, LlamaConfig

from herd.model.config import ModelConfig
from herd.model.errors import ModelLoadError
from herd.plan.model_config import ConfigError, load_model_config

SMALL = dict(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def agrees_with_transformers(ours: ModelConfig, model_dir) -> None:
    ref = AutoConfig.from_pretrained(model_dir)
    ref = getattr(ref, "text_config", None) or ref
    for name in (*SMALL, "head_dim", "max_position_embeddings", "rms_norm_eps"):
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.tie_word_embeddings == ref.tie_word_embeddings
    params = ref.rope_parameters
    assert (ours.rope.theta, ours.rope.rope_type) == (params["rope_theta"], params["rope_type"])
    gen = (
        GenerationConfig.from_pretrained(model_dir)
        if (model_dir / "generation_config.json").is_file()
        else ref
    )
    eos = gen.eos_token_id
    assert ours.eos_token_ids == (eos if isinstance(eos, list) else [eos])


def test_transformers5_config_and_generation_eos(tmp_path):
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}  # fmt: skip
    LlamaConfig(**SMALL, rope_scaling=rope, rope_theta=5e5, eos_token_id=5).save_pretrained(
        tmp_path
    )
    assert "rope_parameters" in json.loads((tmp_path / "config.json").read_text())
    GenerationConfig(eos_token_id=[5, 7]).save_pretrained(tmp_path)
    ours = ModelConfig.from_path(tmp_path)
    agrees_with_transformers(ours, tmp_path)
    assert ours.eos_token_ids == [5, 7] and ours.rope.factor == 8.0 and ours.name == tmp_path.name
    # Plan reads the very same config: one reader, one set of defaults.
    assert load_model_config(str(tmp_path)) == ours
    assert load_model_config(str(tmp_path / "config.json")) == ours


def test_meta_style_config_and_defaults(tmp_path):
    raw = {"model_type": "llama", **SMALL, "rope_theta": 10000.0, "eos_token_id": 2}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    ours = ModelConfig.from_path(tmp_path)
    agrees_with_transformers(ours, tmp_path)  # max positions, eps, head_dim: transformers' defaults
    assert ours.torch_dtype == "float32"  # no dtype: transformers loads float32


def test_multimodal_wrapper_reads_text_config(tmp_path):
    text = {"model_type": "llama", **SMALL, "eos_token_id": 3, "max_position_embeddings": 4096}
    raw = {"model_type": "llava", "torch_dtype": "bfloat16", "text_config": text,
           "vision_config": {"hidden_size": 32}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(raw))
    ours = ModelConfig.from_path(tmp_path)
    assert (ours.hidden_size, ours.max_model_len, ours.eos_token_ids) == (64, 4096, [3])
    assert ours.torch_dtype == "bfloat16"  # the wrapper's dtype
    assert load_model_config(str(tmp_path)).num_params == ours.num_params


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        ModelConfig.from_path(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ModelLoadError, match="num_attention_heads"):
        ModelConfig.from_path(tmp_path)
    with pytest.raises(ConfigError, match="num_attention_heads"):
        load_model_config(str(tmp_path))
    with pytest.raises(ConfigError, match="unknown model 'no-such-model'"):
        load_model_config("no-such-model")
