"""Writes a small random-weight Llama model directory with a working tokenizer.

It is what `herd serve` runs when no model is given and what the tests load. Its weights are
random: it produces fluent-looking gibberish, and its config says so (`"herd_demo": true`).
"""

import json
from pathlib import Path

DEMO_CONFIG = dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    hidden_act="silu",
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling=None,
    tie_word_embeddings=False,
    attention_bias=False,
    mlp_bias=False,
    torch_dtype="float32",
    herd_demo=True,
)

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

# Llama 3's chat template, reduced to what a demo needs (no tools).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

CORPUS = """The quick brown fox jumps over the lazy dog. herd serves Llama models with high
availability and low latency. A request arrives at the gateway, which chooses a replica; the
replica schedules it with continuous batching over a paged key-value cache. Prefix caching lets
a shared system prompt be computed once. Hello, world! How are you today? I am fine, thank you.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Unicode: café, naïve, 東京, 😀, ünïcödé, Ωmega.
You are a helpful assistant. Tell me a story about a cat who lived in a library."""


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer (any text encodes) with Llama 3's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    bos = "<|begin_of_text|>"
    # Like Llama 3's tokenizer: encode() starts every sequence with BOS.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_demo_model(path: str | Path, seed: int = 0, **overrides) -> Path:
    """Write config, random safetensors weights, generation config and tokenizer to `path`.

    `overrides` replace fields of the demo config (e.g. num_key_value_heads=4 for MHA, or
    rope_scaling={...} with tie_word_embeddings=True). vocab_size beyond the tokenizer's
    pads the embedding (token ids past the tokenizer are valid model inputs).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab_size = overrides.pop("vocab_size", 512)
    tokenizer = build_tokenizer(min(vocab_size, 512))
    tokenizer.save_pretrained(path)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    cfg = dict(DEMO_CONFIG, **overrides)
    cfg.update(
        # A larger vocab_size pads the embedding past the tokenizer, as real checkpoints may.
        vocab_size=max(len(tokenizer), vocab_size),
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=[ids["<|end_of_text|>"], ids["<|eot_id|>"]],
    )
    torch.manual_seed(seed)
    config = LlamaConfig(**{k: v for k, v in cfg.items() if k != "herd_demo"})
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():  # larger-than-default weights give peaked, input-dependent outputs
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(path, safe_serialization=True)
    _write_json(path / "config.json", {**_read_json(path / "config.json"), "herd_demo": True})
    _write_json(
        path / "generation_config.json",
        {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]},
    )
    return path


def _read_json(p: Path) -> dict:
    return json.loads(p.read_text())


def _write_json(p: Path, data: dict) -> None:
    p.write_text(json.dumps(data, indent=2) + "\n")


def default_demo_dir() -> Path:
    """Where `herd serve` keeps the demo model when none is given."""
    import os

    root = Path(os.environ.get("HERD_CACHE", Path.home() / ".cache" / "herd"))
    return root / "demo-model"


def ensure_demo_model() -> Path:
    d = default_demo_dir()
    if not (d / "config.json").exists():
        write_demo_model(d)
    return d
