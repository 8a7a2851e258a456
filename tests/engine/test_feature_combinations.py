"""Features that meet in one step keep transformers' greedy tokens together: speculative drafts
with KV tiers under a pool too small for the load (drafts, preemption, eviction and restores in
the same steps), speculative drafts across two tensor-parallel ranks (drafts travel in the
plain-data step message), and KV tiers across two ranks (each rank runs rank 0's copies on its
own shard and tier storage)."""

from herd import LLM, SamplingParams
from tests.engine.conftest import MAX_TOKENS

GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "adaptive": False}


def greedy(llm: LLM, prompt_ids: list[list[int]]) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], GREEDY)
    return [o.outputs[0].token_ids for o in outs]


def two_ranks(model_dirs, **settings) -> LLM:
    """The tied Llama 3 test model in float32 over two gloo ranks."""
    return LLM(
        str(model_dirs["tied_llama3"]),
        dtype="float32",
        device="cpu",
        tensor_parallel_size=2,
        **settings,
    )


def test_speculation_with_kv_tiers_under_a_tiny_pool(model_dirs, hf_reference):
    prompt_ids, expected = hf_reference["gqa"]
    llm = LLM(
        model_dirs["gqa"],
        dtype="float32",
        block_size=4,
        num_kv_blocks=20,
        kv_offload_bytes=200_000,
        kv_swap_policy="swap",
        speculative_config=NGRAM,
    )
    for order in (prompt_ids, prompt_ids[::-1]):
        assert greedy(llm, order) == [expected[prompt_ids.index(p)] for p in order]
    stats = llm.stats()
    assert stats["preemptions"] > 0
    assert stats["spec_proposed_tokens"] > 0
    assert stats["kv_tiers"]["restored_blocks"] > 0


def test_speculation_across_two_tensor_parallel_ranks(model_dirs, hf_reference):
    prompt_ids, expected = hf_reference["tied_llama3"]
    llm = two_ranks(model_dirs, speculative_config=NGRAM)
    try:
        assert greedy(llm, prompt_ids) == expected
        assert llm.stats()["spec_proposed_tokens"] > 0
    finally:
        llm.engine.close()


def test_kv_tiers_across_two_tensor_parallel_ranks(model_dirs, hf_reference, tmp_path):
    prompt_ids, expected = hf_reference["tied_llama3"]
    llm = two_ranks(
        model_dirs,
        block_size=4,
        num_kv_blocks=20,
        kv_offload_bytes=4 * 4096,
        kv_disk_path=str(tmp_path),
        kv_disk_bytes=400_000,
        kv_swap_policy="swap",
    )
    try:
        for order in (prompt_ids, prompt_ids[::-1]):  # the second round restores from tiers
            assert greedy(llm, order) == [expected[prompt_ids.index(p)] for p in order]
        stats = llm.stats()["kv_tiers"]
        assert stats["restored_blocks"] > 0
        assert stats["disk"]["used_bytes"] > 0  # the host tier overflowed onto disk
        assert len(list(tmp_path.iterdir())) == 2  # one file per rank
    finally:
        llm.engine.close()
