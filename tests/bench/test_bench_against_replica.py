"""The bench against a real `herd replica` on loopback (tiny demo model, CPU): the request and
token counts it reports agree with the replica's own /metrics. A tree where the server cannot be
imported fails here: this test guards a promise, it never skips."""

import pytest

from herd.bench.config import BenchConfig, Limits, Load, Target, Workload
from herd.bench.run import run_benchmark
from herd.server import launch


@pytest.fixture(scope="module")
def replica(tiny_model_dir):
    args = ("--dtype", "float32", "--device", "cpu", "--served-model-name", "tiny")
    with launch.ReplicaProcess(tiny_model_dir, *args) as r:
        yield r


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_bench_counts_agree_with_replica_metrics(replica, tiny_model_dir, endpoint):
    cfg = BenchConfig(
        target=Target(base_url=replica.url + "/v1", endpoint=endpoint, ignore_eos=False),
        limits=Limits(num_requests=8, warmup=1),
        workload=Workload(input_len=8, output_len=6, tokenizer=str(tiny_model_dir)),
        loads=(Load("concurrency", 4),),
        progress=False,
    )
    results, _ = await run_benchmark(cfg)
    level = results["levels"][0]
    assert results["target"]["model"] == "tiny"  # taken from /v1/models
    assert level["requests"]["ok"] == 8 and level["requests"]["failed"] == 0
    assert level["tokens"]["source"] == "usage" and results["tokenizer"]["kind"] == "hf"
    server = level["server"]["delta"]
    # What the replica counted during the level is what the bench counted.
    assert server["herd_generation_tokens_total"] == level["tokens"]["output"]
    assert (
        server["herd_prompt_tokens_total"] <= level["tokens"]["input"]
    )  # prefix hits skip prefill
    assert sum(v for k, v in server.items() if k.startswith("herd_request_success")) == 8
    server_ttft = level["server"]["histogram_means"]["herd_time_to_first_token_seconds"] * 1000
    assert (
        level["ttft_ms"]["mean"] >= server_ttft * 0.9
    )  # the client sees at least the server's TTFT


async def test_distinct_synthetic_prompts_get_no_prefix_cache_hits(replica, tiny_model_dir):
    """Each synthetic request carries its own salt: a run of distinct prompts must not report
    the hit rate a shared first block (chat header + one per-run salt) used to give (~10%)."""
    cfg = BenchConfig(
        target=Target(base_url=replica.url + "/v1", endpoint="chat", ignore_eos=True),
        limits=Limits(num_requests=24, warmup=0),
        workload=Workload(input_len=48, output_len=2, tokenizer=str(tiny_model_dir)),
        loads=(Load("concurrency", 4),),
        progress=False,
    )
    results, _ = await run_benchmark(cfg)
    level = results["levels"][0]
    assert level["requests"]["ok"] == 24
    server = level["server"]
    assert server["delta"]["herd_prefix_cache_queries_total"] > 24 * 40  # the replica counted them
    assert server["prefix_cache_hit_rate"] < 0.05, server["prefix_cache_hit_rate"]
