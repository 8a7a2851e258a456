"""Engine fixtures: three tiny Llama configs and their Hugging Face greedy references."""

from pathlib import Path

import pytest
import torch

from herd.engine.attention import AttentionMetadata

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

CONFIGS = {
    "mha": dict(num_attention_heads=4, num_key_value_heads=4, head_dim=16),
    "gqa": dict(),  # the demo model: 4 query heads over 2 KV heads
    "tied_llama3": dict(
        tie_word_embeddings=True,
        rope_scaling=LLAMA3_ROPE,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=8,
        num_hidden_layers=3,
    ),
}

PROMPTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog. herd serves Llama models with high",
    "café 東京 😀",
    "A request arrives at the gateway, which chooses a replica; the replica schedules it with "
    "continuous batching over a paged key-value cache.",
    "Numbers: 0 1 2 3",
]
MAX_TOKENS = 12

BS, HQ, HKV, D, BLOCKS = 4, 4, 2, 16, 24


def mixed_step(dtype):
    """One attention step for the backends' tests: two decodes (contexts 7 and 9, sharing block
    3) and two prefill chunks, one from position 0, one continuing after 5 cached tokens."""
    g = torch.Generator().manual_seed(0)
    query_lens, seq_lens = [1, 1, 3, 4], [7, 9, 3, 9]
    tables = [[3, 5], [3, 8, 9], [11], [12, 13, 14]]

    def meta() -> AttentionMetadata:  # a fresh one per backend: backends cache their per-step state
        return AttentionMetadata.from_tables(tables, query_lens, seq_lens, 2, BS)

    t = sum(query_lens)
    q, k, v = (torch.randn(t, h, D, generator=g, dtype=dtype) for h in (HQ, HKV, HKV))
    cache = torch.randn(2, BLOCKS, BS, HKV, D, generator=g, dtype=dtype)
    return q, k, v, cache, meta


def ulps16(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in units of the last place of a 16-bit float (a and b bf16 or fp16 values)."""
    return (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()


def assert_same(native: torch.Tensor, ref: torch.Tensor) -> None:
    """float32: to rounding; 16-bit: equal but for rare one-ulp ties (float32 statistics summed
    in another order can round the other way)."""
    assert native.dtype == ref.dtype and native.shape == ref.shape
    if native.dtype == torch.float32:
        torch.testing.assert_close(native, ref, rtol=2e-6, atol=2e-6)
        return
    ulps = ulps16(native, ref)
    assert ulps.max() <= 1
    assert (ulps > 0).float().mean() < 2e-3


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from herd.model.demo import write_demo_model

    return {
        name: write_demo_model(tmp_path_factory.mktemp(name), seed=i, **cfg)
        for i, (name, cfg) in enumerate(CONFIGS.items())
    }


def hf_greedy(model_dir: Path, prompt_ids: list[list[int]], max_tokens: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outs = []
    for ids in prompt_ids:
        gen = model.generate(
            torch.tensor([ids]),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        outs.append(gen[0, len(ids) :].tolist())
    return outs


@pytest.fixture(scope="session")
def hf_reference(model_dirs) -> dict[str, tuple[list[list[int]], list[list[int]]]]:
    """Per config: (prompt token ids, transformers' greedy continuation of each)."""
    from herd.engine.tokenizer import Tokenizer

    refs = {}
    for name, d in model_dirs.items():
        tok = Tokenizer(d)
        ids = [tok.encode(p) for p in PROMPTS]
        refs[name] = (ids, hf_greedy(d, ids, MAX_TOKENS))
    return refs
