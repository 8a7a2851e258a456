"""herd's default model, SmolLM2-135M-Instruct as a Q4_1 GGUF, against transformers loading the
same file (`from_pretrained(dir, gguf_file=...)`, which dequantizes): the same greedy tokens in
float32, the same token ids for a few kB of mixed text, the same chat template rendering."""

import argparse
import copy
import json
import re
import textwrap
from pathlib import Path

import pytest
import torch

from herd import LLM, SamplingParams
from herd.engine.tokenizer import Tokenizer
from herd.model.config import ModelConfig
from herd.model.default_model import GGUF_FILE, ensure_default_model

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Explain what a hash table is in two sentences."}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Write a haiku about the sea."},
    ],
]

MIXED = (
    "The quick brown fox jumps over the lazy dog. It's 2024-06-01; we'll meet at 10:30 (UTC+2).\n"
    "Prices: $1,299.99 vs. €1.049,00 -- a 23.5% drop! Call +1 (555) 010-9999 or see #42.\n"
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"
    "\tTabs\tand  double  spaces,   triple   spaces,\r\nCRLF lines\n\n\n   indented 7 and 99 bottles\n"
    "Unicode: café, naïve, Ωmega, 東京タワー, 서울, मराठी, العربية, emoji 😀🚀✅👍🏽, math ∑∫√≠, «quotes» „here“.\n"
    "Special tokens: <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|><|endoftext|>"
    "<file_sep><repo_name>herd\n"
    "Numbers 0 1 12 123 1234 12345 3.14159 6.022e23 -0.5 0x1F 1_000_000 and words2gether.\n"
    'JSON: {"key": [1, 2, 3], "nested": {"a": null, "b": true}}   \n'
    + textwrap.dedent(json.__doc__ or "")
    + textwrap.dedent(argparse.__doc__ or "")[:1500]
)


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    """The cached default model (scripts/setup.sh fetches it; fetched here if it is not)."""
    return ensure_default_model()


@pytest.fixture(scope="module")
def ref_tok(smollm2_dir):
    """transformers' tokenizer from the same file."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, gguf_file=GGUF_FILE)


@pytest.fixture(scope="module")
def herd_tokenizer(smollm2_dir) -> Tokenizer:
    return Tokenizer(smollm2_dir)


def test_config_from_metadata(smollm2_dir):
    cfg = ModelConfig.from_dir(smollm2_dir)
    got = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads)
    assert got == (30, 576, 9, 3)
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.head_dim) == (49152, 1536, 64)
    assert (
        cfg.tie_word_embeddings and cfg.rope.theta == 100000.0 and cfg.rope.rope_type == "default"
    )
    assert (
        cfg.max_position_embeddings == 8192 and cfg.eos_token_ids == [2] and cfg.bos_token_id == 1
    )


def test_greedy_chat_matches_transformers(smollm2_dir, ref_tok):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        smollm2_dir, gguf_file=GGUF_FILE, dtype=torch.float32
    )
    llm = LLM(str(smollm2_dir), dtype="float32")
    outs = llm.chat(CONVERSATIONS, SamplingParams(temperature=0, max_tokens=64))
    for messages, out in zip(CONVERSATIONS, outs, strict=True):
        prompt = ref_tok.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=False
        )
        assert list(out.prompt_token_ids) == list(prompt)
        with torch.no_grad():
            gen = model.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False)
        expected = gen[0, len(prompt) :].tolist()
        assert list(out.outputs[0].token_ids) == expected, (messages, out.outputs[0].text)
        assert len(expected) >= 8
    assert "Paris" in outs[0].outputs[0].text  # and it is a real model


def _smollm_reference(ref_tok):
    """transformers' GGUF tokenizer with the pre-tokenizer `tokenizer.ggml.pre = smollm` names.
    transformers ignores that key for this file and splits as GPT-2 does; llama.cpp (its
    LLAMA_VOCAB_PRE_TYPE_SMOLLM) and SmolLM2's own tokenizer.json split digits apart first:
    `Digits(individual_digits=True)` then `ByteLevel`, which is what is set here. (Checked by
    hand: herd's ids for MIXED, each of its lines and "x   1" equal llama-cpp-python 0.3.36's.)"""
    from tokenizers import pre_tokenizers

    ref_tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return ref_tok


def test_tokenizer_matches_transformers_on_mixed_text(herd_tokenizer, ref_tok):
    ref = _smollm_reference(copy.deepcopy(ref_tok))
    assert len(MIXED) > 3000
    assert herd_tokenizer.encode(MIXED) == ref.encode(MIXED)
    for line in MIXED.splitlines(keepends=True):
        assert herd_tokenizer.encode(line) == ref.encode(line), line
    assert herd_tokenizer.decode(herd_tokenizer.encode(MIXED), skip_special_tokens=False) == MIXED
    ids = herd_tokenizer.encode("<|im_start|>user<|im_end|>")
    assert len(ids) == 3 and (ids[0], ids[-1]) == (1, 2)  # specials whole, no BOS added


def test_only_the_smollm_digit_rule_differs_from_transformers(herd_tokenizer, ref_tok):
    """Unpatched, transformers agrees except where a whitespace run meets a digit."""
    no_space_digit = re.sub(r"\s+(?=\d)", "", MIXED)
    assert herd_tokenizer.encode(no_space_digit) == ref_tok.encode(no_space_digit)
    ids = herd_tokenizer.encode("x   1")
    assert herd_tokenizer.hf.convert_ids_to_tokens(ids) == ["x", "ĠĠĠ", "1"]  # llama.cpp's split
    assert ref_tok.convert_ids_to_tokens(ref_tok.encode("x   1")) == ["x", "ĠĠ", "Ġ", "1"]


def test_chat_template_renders_as_transformers(herd_tokenizer, ref_tok):
    conversations = [
        *CONVERSATIONS,
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Count to 3 😀"},
        ],
    ]
    for messages in conversations:
        for gen in (True, False):
            ours = herd_tokenizer.hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=gen
            )
            assert ours == ref_tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=gen
            )
        ids = herd_tokenizer.apply_chat_template(messages)
        assert ids == ref_tok.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=False
        )
    assert (
        herd_tokenizer.hf.bos_token == "<|im_start|>"
        and herd_tokenizer.hf.eos_token == "<|im_end|>"
    )
