"""TritonAttention's kernels (decodes in one launch, prefill chunks in another, each program on
one sequence's blocks) run here under Triton's interpreter, against TorchAttention: the same
outputs over many key tiles, GQA groups that are not powers of two, odd head sizes and an fp8
cache, and the same greedy tokens through the engine, eager and in the static decode step CUDA
graphs capture. On a GPU the compiled kernels are checked by benchmarks/gpu_suite.py."""

import itertools
import json
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from herd.engine import triton_attention
from herd.engine.attention import AttentionMetadata, TorchAttention
from herd.engine.backends import get_backend
from herd.engine.cuda_graphs import GraphedDecode
from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams
from herd.engine.triton_attention import TritonAttention
from herd.model.quant import FP8
from tests.engine.conftest import BS, PROMPTS, mixed_step

pytest.importorskip("triton")


@pytest.fixture
def interpreted():
    """These tests build CPU tensors: they run where tests/conftest.py set the interpreter."""
    if not triton_attention.interpreting():
        pytest.skip("TRITON_INTERPRET=1 is set (by tests/conftest.py) only without CUDA")


def _many_tiles(dtype, bs: int, hq: int, hkv: int, d: int, seed: int = 0):
    """Decodes of contexts 1..300 (two sharing their prefix blocks), a 150-token prefill from 0
    and a 40-token chunk after 200 cached tokens; blocks scattered over the cache."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    query_lens = [1] * 6 + [150, 40]
    seq_lens = [1, 17, 64, 65, 300, 299, 150, 240]
    need = [-(-n // bs) for n in seq_lens]
    free = rng.sample(range(sum(need) + 8), sum(need) + 8)
    tables = [[free.pop() for _ in range(k)] for k in need]
    tables[5][:-1] = tables[4][: need[5] - 1]  # shared prefix blocks

    def meta() -> AttentionMetadata:
        return AttentionMetadata.from_tables(tables, query_lens, seq_lens, 6, bs)

    t = sum(query_lens)
    q, k, v = (torch.randn(t, h, d, generator=g, dtype=dtype) for h in (hq, hkv, hkv))
    cache = torch.randn(2, sum(need) + 8, bs, hkv, d, generator=g, dtype=dtype)
    return q, k, v, cache, meta


def _both(q, k, v, cache, meta, bs):
    """TorchAttention's and TritonAttention's outputs, each on its own copy of the cache."""
    ref_cache, got_cache = cache.clone(), cache.clone()
    ref = TorchAttention(bs).forward(q, k, v, ref_cache[0], ref_cache[1], meta())
    got = TritonAttention(bs).forward(q, k, v, got_cache[0], got_cache[1], meta())
    assert torch.equal(ref_cache.view(torch.uint8), got_cache.view(torch.uint8))  # same writes
    return got, ref


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_triton_matches_the_reference_backend(interpreted, dtype, tol):
    got, ref = _both(*mixed_step(dtype), BS)
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)


# (block size, query heads, KV heads, head size): GQA 2, 3 (not a power of two) and 8 (one KV
# head), head sizes 16, 24 (padded to 32 in the kernel) and 64, a block larger than a key tile
@pytest.mark.parametrize("shape", [(16, 4, 2, 16), (8, 6, 2, 24), (128, 8, 1, 64)])
def test_triton_over_many_key_tiles_and_gqa_groups(interpreted, shape):
    got, ref = _both(*_many_tiles(torch.float32, *shape), shape[0])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_triton_reads_an_fp8_cache_as_the_reference_does(interpreted, dtype, tol):
    """float32: the bit-move widening is exact, so the outputs agree to rounding."""
    q, k, v, cache, meta = _many_tiles(dtype, 16, 4, 2, 32)
    # K/V already on fp8's grid: the reference attends a prefill from 0 to the step's own K/V
    # (not read back from the cache); the kernels read the cache
    k, v = (x.to(FP8).to(dtype) for x in (k, v))
    cache[0, 0, 0, 0, :4] = torch.tensor([2**-9, -(2**-8), 448.0, -448.0])  # subnormals, ends
    got, ref = _both(q, k, v, cache.to(FP8), meta, 16)
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("sms,splits", [(1, 1), (18, 3), (200, 16)])
def test_triton_split_decodes_match_the_reference(interpreted, monkeypatch, sms, splits):
    """Decodes only, contexts 1..300: with few multiprocessors nothing splits, with many each
    decode's keys split into ranges (16: short contexts leave most of them empty) and merge."""
    monkeypatch.setattr(triton_attention, "INTERPRETER_SMS", sms)
    q, k, v, cache, meta = _many_tiles(torch.float32, 16, 4, 2, 16)
    decodes = replace(meta(), num_decodes=6, query_lens=[1] * 6, seq_lens=meta().seq_lens[:6])
    decodes.prefill_block_ids, decodes.slot_mapping = [], decodes.slot_mapping[:6]
    assert triton_attention.decode_splits(6, 2, torch.device("cpu")) == splits
    got, ref = _both(q[:6], k[:6], v[:6], cache, lambda: replace(decodes), 16)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_decode_splits_fill_the_gpu_only_where_the_batch_does_not(monkeypatch):
    monkeypatch.setattr(triton_attention, "_gpu_multiprocessors", lambda device: 132)  # H100
    cuda = torch.device("cuda")
    # Llama-3-8B (8 KV heads): batch 1 takes the most ranges, 16 takes 2, 64 none
    splits = [triton_attention.decode_splits(b, 8, cuda) for b in (1, 2, 8, 16, 17, 64, 256)]
    assert splits == [16, 16, 4, 2, 1, 1, 1]


def test_triton_engine_gives_the_reference_greedy_tokens(interpreted, model_dirs):
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    outs = {}
    for name in ("torch", "triton"):
        llm = LLM(model_dirs["gqa"], attention_backend=name, num_kv_blocks=64, enforce_eager=True)
        outs[name] = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    assert outs["triton"] == outs["torch"]


def test_triton_static_decode_step_gives_the_eager_tokens(interpreted, model_dirs):
    """The step a CUDA graph captures (full-width tables, a batch of 3 padded to 4), uncaptured."""
    kw = dict(attention_backend="triton", num_kv_blocks=48, enforce_eager=True)
    static, eager = LLM(model_dirs["gqa"], **kw), LLM(model_dirs["gqa"], **kw)
    r = static.engine.runner
    r.graphs = GraphedDecode(r.model, r.backend, [1, 2, 4], r.inputs, capture=False)
    greedy = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in static.generate(PROMPTS[:3], greedy)]
    assert got == [o.outputs[0].token_ids for o in eager.generate(PROMPTS[:3], greedy)]
    assert 4 in r.graphs.captured
    assert GraphedDecode.supports(r.backend)


def test_auto_picks_triton_on_cuda_and_refuses_it_where_it_cannot_run(monkeypatch):
    assert isinstance(get_backend("auto", 16, torch.device("cuda")), TritonAttention)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        get_backend("triton", 16, torch.device("cpu"))
    monkeypatch.setattr(triton_attention, "available", lambda: False)
    assert type(get_backend("auto", 16, torch.device("cuda"))).__name__ == "FlexAttention"
    with pytest.raises(ValueError, match="not installed"):
        get_backend("triton", 16, torch.device("cuda"))


def test_an_fp8_cache_is_read_as_bytes_on_any_gpu(monkeypatch):
    """Attention widens e4m3 by bit moves (no fp8 instructions): Triton on an Ampere GPU too;
    only the K/V store needs e4m3 casts, and there it falls back to the torch store."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    cuda = torch.device("cuda")
    assert isinstance(get_backend("auto", 16, cuda), TritonAttention)
    assert not triton_attention.writes_fp8(cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert triton_attention.writes_fp8(cuda)


# arch:activations:cache:launch:GQA group:head size (Llama-3-8B: group 4, head 128)
BUILDS = [
    "90:bf16:bf16:decode:4:128",
    "90:bf16:bf16:decode/16:4:128",  # 16 key ranges, and the merge kernel
    "90:bf16:bf16:prefill:4:128",
    "90:bf16:fp8e4nv:decode:4:128",
    "90:bf16:fp8e4nv:prefill:4:128",
    "80:bf16:fp8e4nv:decode/4:4:128",  # an fp8 cache read as bytes: Ampere too
    "90:fp16:fp16:prefill:3:80",
    "80:bf16:bf16:decode/8:8:64",
    # triton_layer_ops at Llama-3-8B's sizes (rope: 32 + 8 heads of 128)
    "90:bf16:rmsnorm:4096",
    "90:bf16:silu:14336",
    "90:bf16:rope:40x128",
    "90:bf16:fp8quant:14336",
    "90:bf16:storekv:8x128",
    "90:bf16:storekv-fp8:8x128",
]


def test_the_kernels_compile_for_hopper_and_ampere_without_spilling():
    """The real compiler (not the interpreter): Triton's ptxas builds each kernel (attention's
    and triton_layer_ops') for sm_90 / sm_80 without a GPU; 16-bit builds must keep their tiles
    in registers (no stack)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("triton_compile.py")
    run = subprocess.run(
        [sys.executable, str(script), *BUILDS], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    for spec in BUILDS:
        assert "error" not in report[spec], (spec, report[spec])
        assert report[spec]["stack"] == 0, (spec, report[spec])


@pytest.mark.parametrize("query_lens", [[5], [1, 1, 7, 300], [33, 2, 2]])
def test_prefill_plans_views_start_16_byte_aligned(query_lens):
    """Triton compiles a kernel variant per pointer alignment: the plan's views never vary it."""
    nd = sum(1 for n in query_lens[:2] if n == 1)
    tables = [[i] * -(-n // 16) for i, n in enumerate(query_lens)]
    meta = AttentionMetadata.from_tables(tables, query_lens, query_lens, nd, 16)
    plan = triton_attention._prefill_plan(meta, 4, torch.device("cpu"))
    for view in (plan.ctx, plan.seqs, plan.firsts, plan.ends):
        assert view.data_ptr() % 16 == 0
    assert plan.ends.tolist() == list(itertools.accumulate(query_lens[nd:]))
    assert plan.ctx.tolist() == query_lens[nd:]
