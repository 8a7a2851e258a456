"""Metrics scraping (herd, vLLM, none), gateway /metrics, audit log, config files."""

import asyncio
import json

import pytest
from gwtools import chat, fast_config, start_fakes

from herd.fleet.config import ConfigError, load_serve_config
from herd.gateway.health import apply_metrics
from herd.gateway.replicas import Replica
from herd.protocol.prometheus import parse_metrics
from waiting import until


def test_parse_metrics_sums_label_sets_and_maps_vllm_names():
    text = (
        "# HELP x\n# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="a"} 2\n'
        'vllm:num_requests_running{model_name="b"} 3\n'
        'vllm:gpu_cache_usage_perc{model_name="a"} 0.5\n'
        "vllm:gpu_prefix_cache_hits_total 7.0\nbad line\n"
    )
    replica = Replica(url="http://x")
    apply_metrics(replica, parse_metrics(text))
    r = replica.reported
    assert (r.num_running, r.kv_usage, r.prefix_hits, r.num_waiting) == (5, 0.5, 7, 0)


async def test_scrapes_herd_and_vllm_names_and_tolerates_no_metrics(start_gateway):
    fakes = [*start_fakes(1, "vllm", "v"), *start_fakes(1, "none", "n")]
    try:
        gw = await start_gateway(fast_config([f.url for f in fakes]))
        fakes[0].control(delay_s=0.5)
        task = asyncio.gather(
            *(gw.post("/v1/completions", {"model": "fake-model", "prompt": "x"}) for _ in range(4))
        )

        def reported(fake):
            return gw.gateway.replicas.get(fake.url).reported

        # A scrape while the delayed requests are in flight sees them running.
        await until(lambda: reported(fakes[0]).num_running >= 1, 5, "a scrape during the requests")
        assert reported(fakes[0]).has_metrics and reported(fakes[0]).kv_usage == 0.5
        await until(lambda: reported(fakes[1]).has_metrics is False, 5, "a scrape without /metrics")
        assert all(r[0] == 200 for r in await task)
    finally:
        for fake in fakes:
            fake.stop()


async def test_gateway_metrics_and_audit_log_without_text(fakes, start_gateway, tmp_path):
    audit = tmp_path / "audit.jsonl"
    gw = await start_gateway(fast_config([f.url for f in fakes], audit__path=str(audit)))
    fakes[0].control(mode="error500", times=1)
    for i in range(4):
        assert (await gw.post("/v1/chat/completions", chat(f"secret {i}")))[0] == 200
    await gw.post("/v1/chat/completions", data=b"nope")
    async with gw.session.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    assert 'herd_gateway_requests_total{key="anonymous",replica=' in text
    assert 'status="400"' in text
    assert "herd_gateway_added_latency_seconds_bucket" in text
    assert 'herd_gateway_replicas{state="ready"} 3.0' in text
    await gw.gateway.audit.stop()
    gw.gateway.audit = None
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(records) == 5
    assert {
        "time",
        "request_id",
        "key_id",
        "tenant",
        "model",
        "replica",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "ttft_s",
        "latency_s",
    } <= set(records[0])
    assert "secret" not in audit.read_text()
    assert records[-1]["status"] == 400


def test_config_files_toml_and_yaml(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[gateway]\nport = 9000\npolicy = "prefix_affinity"\n'
        "[gateway.health]\ninterval_s = 0.5\n[fleet]\nreplicas = 3\n"
    )
    config = load_serve_config(toml)
    assert (config.gateway.port, config.gateway.health.interval_s, config.fleet.replicas) == (
        9000,
        0.5,
        3,
    )
    yml = tmp_path / "c.yaml"
    yml.write_text("gateway:\n  upstreams: [http://a:1]\n  cache: {max_entries: 5}\n")
    assert load_serve_config(yml).gateway.cache.max_entries == 5
    yml.write_text("gateway:\n  helth: {}\n")
    with pytest.raises(ConfigError, match="helth"):
        load_serve_config(yml)
