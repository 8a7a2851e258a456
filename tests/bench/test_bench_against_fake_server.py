"""The bench against a streaming server it can check: counts, tokens and latencies must agree
with what the server recorded."""

import pytest
from bench_fake_server import FakeServer

from herd.bench.config import BenchConfig, Limits, Load, Slo, Target, Workload
from herd.bench.run import run_benchmark


def config(server: FakeServer, loads, workload=None, **kw) -> BenchConfig:
    target = kw.pop("target", None) or Target(base_url=server.base_url)
    return BenchConfig(
        target=target,
        limits=kw.pop("limits", Limits(num_requests=12, warmup=2)),
        workload=workload or Workload(input_len=16, output_len=8),
        loads=tuple(loads),
        progress=False,
        **kw,
    )


async def test_counts_tokens_and_latencies_match_the_server(fake_server):
    server = fake_server(ttft_s=0.05, per_token_s=0.01)
    results, _ = await run_benchmark(
        config(server, [Load("concurrency", 4)], slo=Slo(ttft_ms=1000))
    )
    level = results["levels"][0]
    served = server.served[2:]  # the first two were warm-up
    assert len(server.served) == 14 and level["requests"] == {
        "ok": 12,
        "failed": 0,
        "failed_by_reason": {},
    }
    assert level["tokens"]["output"] == sum(s.completion_tokens for s in served) == 12 * 8
    assert level["tokens"]["input"] == sum(s.prompt_tokens for s in served)
    assert level["tokens"]["source"] == "usage"
    server_ttft = sorted(s.first_token - s.arrival for s in served)
    server_e2e = sorted(s.end - s.arrival for s in served)
    # The client sees the server's time plus loopback and scheduling: never less, a little more.
    assert level["ttft_ms"]["p50"] >= server_ttft[6] * 1000 - 1
    assert level["ttft_ms"]["p50"] == pytest.approx(server_ttft[6] * 1000, abs=60)
    assert level["e2e_ms"]["p50"] == pytest.approx(server_e2e[6] * 1000, abs=60)
    assert level["itl_ms"]["p50"] == pytest.approx(10, abs=8)
    assert level["tpot_ms"]["mean"] == pytest.approx(10, abs=8)
    assert level["goodput"]["fraction"] == 1.0
    assert level["prefix_cache"]["source"] == "usage"
    assert level["client"]["overhead_ms_per_request"] >= 0
    assert results["workload"]["content_hash"].startswith("sha256:")


async def test_multi_token_chunks_and_completions_endpoint(fake_server):
    server = fake_server(ttft_s=0.02, per_token_s=0.005, tokens_per_chunk=4)
    target = Target(base_url=server.base_url, endpoint="completions")
    results, _ = await run_benchmark(config(server, [Load("concurrency", 2)], target=target,
                                            workload=Workload(input_len=8, output_len=16)))  # fmt: skip
    level = results["levels"][0]
    assert {s.path for s in server.served} == {"/v1/completions"}
    assert level["tokens"]["output"] == 12 * 16
    # Chunks of 4 tokens every 20 ms: 5 ms per token, not 20.
    assert level["itl_ms"]["p50"] == pytest.approx(5, abs=4)


async def test_without_usage_tokens_come_from_the_tokenizer_and_are_flagged(fake_server):
    server = fake_server(send_usage=False)
    results, _ = await run_benchmark(config(server, [Load("concurrency", 2)]))
    level = results["levels"][0]
    assert level["tokens"]["output"] == 12 * 8  # " tok" words: the approximation is exact here
    assert level["tokens"]["source"] == "approx"
    assert any("no usage" in w for w in results["warnings"])


async def test_failures_are_counted_by_reason(fake_server):
    server = fake_server(fail_every=3)
    results, _ = await run_benchmark(
        config(server, [Load("concurrency", 1)], limits=Limits(num_requests=9))
    )
    assert results["levels"][0]["requests"]["failed_by_reason"] == {"http_500": 3}


async def test_open_loop_rate_and_prefix_cache_from_metrics(fake_server):
    server = fake_server(send_usage=False, cached_fraction=0.5)
    results, _ = await run_benchmark(
        config(server, [Load("rate", 50.0)], limits=Limits(num_requests=10))
    )
    level = results["levels"][0]
    assert level["requests"]["ok"] == 10 and len(server.served) == 10
    assert level["prefix_cache"]["source"] == "metrics"
    assert level["prefix_cache"]["hit_rate"] == pytest.approx(0.5, abs=0.05)
    assert level["server"]["delta"]["herd_requests_total"] == 10
    assert "send_delay_ms_p99" in level["client"]


async def test_multi_turn_history_grows_with_the_replies(fake_server):
    server = fake_server()
    workload = Workload(kind="multi-turn", turns=3, input_len=4, output_len=2)
    await run_benchmark(
        config(server, [Load("concurrency", 1)], workload=workload, limits=Limits(num_requests=3))
    )
    sizes = [len(s.body["messages"]) for s in server.served]
    assert sizes == [1, 3, 5]
    assert server.served[1].body["messages"][1] == {"role": "assistant", "content": " tok tok"}


async def test_shared_prefix_groups_share_their_prefix_and_runs_are_salted(fake_server):
    server = fake_server()
    workload = Workload(
        kind="shared-prefix", num_groups=2, prefix_len=20, input_len=4, output_len=2
    )
    # One user: the server sees the prompts in dataset order.
    cfg = config(server, [Load("concurrency", 1)], workload=workload, limits=Limits(num_requests=4))
    first, _ = await run_benchmark(cfg)
    second, _ = await run_benchmark(cfg)
    prompts = [s.body["messages"][-1]["content"] for s in server.served]
    assert prompts[0].split("\n")[0] == prompts[2].split("\n")[0]  # same group, same prefix
    assert prompts[0].split("\n")[0] != prompts[1].split("\n")[0]
    assert first["workload"]["content_hash"] == second["workload"]["content_hash"]
    assert first["workload"]["salt"] != second["workload"]["salt"]
    assert prompts[0] != prompts[4]  # the salt keeps run 2 from hitting run 1's cache


async def test_sweep_stops_at_saturation(fake_server):
    # A server that serves one request at a time would be saturated at once; here the fake is
    # parallel, so throughput grows until the limit (4) stops the sweep.
    from herd.bench.config import Sweep

    server = fake_server(ttft_s=0.01, per_token_s=0.001)
    cfg = config(
        server, [], sweep=Sweep(enabled=True, start=1, max_value=4), limits=Limits(num_requests=8)
    )
    results, _ = await run_benchmark(cfg)
    assert [lv["load"]["value"] for lv in results["levels"]][:3] == [1, 2, 4][
        : len(results["levels"])
    ]
