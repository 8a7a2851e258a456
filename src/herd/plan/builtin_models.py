"""Meta's config.json for the built-in model names, field for field as published on the Hub.

Kept verbatim (minus initializer/dropout noise) so `herd plan --model llama-3.1-8b` and
`herd plan --model path/to/config.json` go through the same parser."""

_LLAMA3_COMMON = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}


def _rope(factor: float) -> dict:
    return {
        "factor": factor,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    }


BUILTIN_CONFIGS: dict[str, dict] = {
    "Llama-3.1-8B": {
        **_LLAMA3_COMMON,
        "eos_token_id": 128001,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rope_scaling": _rope(8.0),
        "tie_word_embeddings": False,
        "transformers_version": "4.43.0.dev0",
    },
    "Llama-3.1-70B": {
        **_LLAMA3_COMMON,
        "eos_token_id": 128001,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_attention_heads": 64,
        "num_hidden_layers": 80,
        "num_key_value_heads": 8,
        "rope_scaling": _rope(8.0),
        "tie_word_embeddings": False,
        "transformers_version": "4.43.0.dev0",
    },
    "Llama-3.2-1B": {
        **_LLAMA3_COMMON,
        "eos_token_id": 128001,
        "head_dim": 64,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_attention_heads": 32,
        "num_hidden_layers": 16,
        "num_key_value_heads": 8,
        "rope_scaling": _rope(32.0),
        "tie_word_embeddings": True,
        "transformers_version": "4.45.0.dev0",
    },
    "Llama-3.2-3B": {
        **_LLAMA3_COMMON,
        "eos_token_id": 128001,
        "head_dim": 128,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_attention_heads": 24,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "rope_scaling": _rope(32.0),
        "tie_word_embeddings": True,
        "transformers_version": "4.45.0.dev0",
    },
}

# Llama-3.3-70B has 3.1-70B's architecture; its config differs in the EOS list and version stamp.
BUILTIN_CONFIGS["Llama-3.3-70B"] = {
    **BUILTIN_CONFIGS["Llama-3.1-70B"],
    "eos_token_id": [128001, 128008, 128009],
    "transformers_version": "4.47.0.dev0",
}
