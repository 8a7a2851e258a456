"""A real replica over TLS that requires the fleet token: every route but /health and /ready
refuses a request without it (path tricks included), the gateway in front (trusting the test
CA, holding the token) gets through, and the token shows in no log line and no /metrics."""

from __future__ import annotations

import json
import ssl

import aiohttp
import pytest
import trustme
from yarl import URL

from herd.gateway.app import Gateway, serve
from herd.gateway.config import GatewayConfig
from herd.protocol.fleet_auth import ENV_VAR, HEADER
from herd.server.launch import ReplicaProcess, free_port
from waiting import until

TOKEN = "fleet-secret-token-8d1f0c"


@pytest.fixture(scope="module")
def tls_replica(tiny_model_dir, tmp_path_factory):
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("replica-tls")
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    args = ("--dtype", "float32", "--device", "cpu", "--served-model-name", "tiny")
    tls = ("--tls-cert", str(d / "cert.pem"), "--tls-key", str(d / "key.pem"))
    with ReplicaProcess(
        tiny_model_dir, *args, *tls, env={ENV_VAR: TOKEN}, client_ssl=ctx
    ) as replica:
        yield replica, ctx, str(d / "ca.pem")


async def test_fleet_token_required_everywhere_but_health_and_ready(tls_replica):
    replica, ctx, _ = tls_replica
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        for path in ("/health", "/ready"):
            async with s.get(replica.url + path, ssl=ctx) as r:
                assert r.status == 200
        refused = ["/v1/models", "/metrics", "/openapi.json", "//v1/models", "/nope"]
        refused += ["/health/../v1/models", "/%2e%2e/v1/models", "/health/%2e%2e/metrics"]
        for path in refused:
            for headers in ({}, {HEADER: "wrong"}, {HEADER: TOKEN[:-1]}):
                url = URL(replica.url + path, encoded=True)
                async with s.get(url, ssl=ctx, headers=headers) as r:
                    assert r.status == 401, path
                    assert (await r.json())["error"]["type"] == "authentication_error"
        async with s.post(replica.url + "/v1/completions", json=body, ssl=ctx) as r:
            assert r.status == 401
        # A Host header naming something else changes nothing.
        async with s.get(replica.url + "/metrics", ssl=ctx, headers={"Host": "localhost"}) as r:
            assert r.status == 401
        ok = {HEADER: TOKEN}
        async with s.post(replica.url + "/v1/completions", json=body, ssl=ctx, headers=ok) as r:
            assert r.status == 200 and (await r.json())["choices"][0]["text"] is not None
        async with s.get(replica.url + "/metrics", ssl=ctx, headers=ok) as r:
            assert r.status == 200 and TOKEN not in await r.text()
    assert TOKEN not in replica.log()


async def test_gateway_reaches_a_tls_replica_with_the_token(tls_replica, caplog):
    replica, ctx, ca_file = tls_replica
    config = GatewayConfig(
        port=free_port(), upstreams=[replica.url], upstream_ca=ca_file, fleet_token=TOKEN
    )
    config.health.interval_s = 0.1
    gateway = Gateway(config)
    runner = await serve(gateway, "127.0.0.1", config.port)
    url = f"http://127.0.0.1:{config.port}"
    try:
        await until(lambda: gateway.replicas.ready(), 20, "TLS replica ready at the gateway")
        # Scrapes carry the token too: the replica's counters reach the gateway.
        await until(lambda: gateway.replicas.ready()[0].reported.has_metrics, 10, "scraped")
        async with aiohttp.ClientSession() as s:
            body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
            # A client's own token header is not what the replica sees (it is not forwarded).
            headers = {HEADER: "smuggled", "Authorization": "Bearer tenant-key"}
            async with s.post(url + "/v1/completions", json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
            # Context overflow through the gateway: the replica's 400 with the numbers.
            ids = list(range(10, 110)) * 5  # 500 prompt token ids
            over = {"model": "tiny", "prompt": ids, "max_tokens": 2000}
            async with s.post(url + "/v1/completions", json=over) as r:
                err = (await r.json())["error"]
                assert r.status == 400 and err["param"] == "max_tokens", err
                assert "maximum context length is 2048" in err["message"]
                assert "2500 tokens (500 in the prompt, 2000 for the completion)" in err["message"]
            async with s.get(url + "/v1/models") as r:
                assert r.status == 200 and (await r.json())["data"][0]["id"] == "tiny"
            async with s.get(url + "/metrics") as r:
                assert TOKEN not in await r.text()
    finally:
        await runner.cleanup()
    assert TOKEN not in caplog.text and TOKEN not in repr(config)
    assert "smuggled" not in replica.log() and "tenant-key" not in replica.log()
    assert json.dumps(TOKEN) not in replica.log()
