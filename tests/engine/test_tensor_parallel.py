"""Tensor parallelism on CPU with 2 gloo ranks: greedy tokens equal transformers' on the test
models (fewer KV heads than ranks, tied embeddings, biases, a vocabulary that does not split
evenly), and a rank that dies makes the engine raise instead of hanging."""

import os
import signal
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import CONFIGS, PROMPTS, hf_greedy
from herd.engine.distributed import TensorParallelError
from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams
from herd.engine.tokenizer import Tokenizer
from herd.model.demo import write_demo_model
from waiting import wait_until

MAX_TOKENS = 8
# One KV head over 2 ranks (each keeps a replica), biases on every projection (row-parallel
# biases must be added once), 515 vocabulary rows (the last rank's lm_head rows are padding).
KV1_BIASED = dict(
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=16,
    attention_bias=True,
    mlp_bias=True,
    vocab_size=515,
)


def tp2(model_dir, **kw) -> LLM:
    return LLM(str(model_dir), dtype="float32", device="cpu", tensor_parallel_size=2, **kw)


def greedy_ids(llm: LLM, prompt_ids: list[list[int]], max_tokens: int) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params)
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module")
def kv1_dir(tmp_path_factory):
    model_dir = write_demo_model(tmp_path_factory.mktemp("kv1"), seed=7, **KV1_BIASED)
    # transformers initialises biases to zero, which would hide a bias added on every rank.
    weights = load_file(model_dir / "model.safetensors")
    gen = torch.Generator().manual_seed(7)
    for name, t in weights.items():
        if name.endswith(".bias"):
            weights[name] = torch.randn(t.shape, generator=gen) * 0.5
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    return model_dir


def test_two_ranks_greedy_equals_transformers(model_dirs):
    model_dir = model_dirs["tied_llama3"]  # tied embeddings, llama3 RoPE, 8 heads over 2 KV heads
    tok = Tokenizer(model_dir)
    ids = [tok.encode(p) for p in PROMPTS]
    llm = tp2(model_dir)
    try:
        assert greedy_ids(llm, ids, MAX_TOKENS) == hf_greedy(model_dir, ids, MAX_TOKENS)
    finally:
        llm.engine.close()


def test_one_kv_head_over_two_ranks_equals_transformers(kv1_dir):
    from transformers import AutoModelForCausalLM

    tok = Tokenizer(kv1_dir)
    ids = [tok.encode(p) for p in PROMPTS]
    # 16-token steps: prompts are chunked, and decodes share steps with prefill chunks.
    llm = tp2(kv1_dir, max_num_batched_tokens=16)
    try:
        assert greedy_ids(llm, ids, MAX_TOKENS) == hf_greedy(kv1_dir, ids, MAX_TOKENS)
        # Several compute_logits calls in one step: a chunk's prompt rows, the sampled row.
        params = SamplingParams(max_tokens=1, prompt_logprobs=1)
        out = llm.generate([{"prompt_token_ids": ids[3]}], params)[0]
    finally:
        llm.engine.close()
    model = AutoModelForCausalLM.from_pretrained(kv1_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids[3]])).logits[0], dim=-1)
    got = [out.prompt_logprobs[i][t] for i, t in enumerate(ids[3]) if i > 0]
    want = [ref[i - 1, t].item() for i, t in enumerate(ids[3]) if i > 0]
    assert got == pytest.approx(want, abs=1e-4)


def test_heads_that_do_not_split_are_refused_before_any_rank_starts(model_dirs):
    # tied_llama3 has 2 KV heads: 3 ranks neither divide them nor are divided by them.
    assert CONFIGS["tied_llama3"]["num_key_value_heads"] == 2
    with pytest.raises(ValueError, match="tp=3"):
        LLM(str(model_dirs["tied_llama3"]), device="cpu", tensor_parallel_size=3)


def test_a_rank_that_dies_fails_generate_instead_of_hanging(model_dirs):
    llm = tp2(model_dirs["gqa"])
    worker = llm.engine.tp.workers[0]
    failure: list[BaseException] = []

    def generate() -> None:
        params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
        try:
            llm.generate(["a long answer, please"], params)
        except BaseException as exc:  # noqa: BLE001 - what the test inspects
            failure.append(exc)

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    try:
        wait_until(lambda: llm.stats()["generation_tokens"] > 0, 60, "decoding under way")
        os.kill(worker.pid, signal.SIGKILL)
        thread.join(timeout=60)
        assert not thread.is_alive(), "generate hung after rank 1 died"
        assert len(failure) == 1 and isinstance(failure[0], TensorParallelError)
        assert "rank 1" in str(failure[0])
        # The engine stays failed: the next call raises at once, naming the dead rank.
        with pytest.raises(TensorParallelError, match="rank 1"):
            llm.generate("again", SamplingParams(max_tokens=2))
    finally:
        llm.engine.close()


def test_int4_shards_quantize_as_one_rank_does(model_dirs):
    # int4 groups are 32 inputs wide and each rank's slice of o_proj / down_proj is a multiple
    # of 32 columns, so both ranks together hold exactly the one-rank quantized weights.
    tok = Tokenizer(model_dirs["gqa"])
    ids = [tok.encode(p) for p in PROMPTS]
    one = LLM(str(model_dirs["gqa"]), dtype="float32", device="cpu", quantization="int4")
    two = tp2(model_dirs["gqa"], quantization="int4")
    try:
        assert greedy_ids(two, ids, MAX_TOKENS) == greedy_ids(one, ids, MAX_TOKENS)
    finally:
        two.engine.close()
