"""schemathesis against a live gateway in front of a live replica (the tiny model): requests
generated from the gateway's /openapi.json, valid and invalid, must never get a 5xx, a response
that breaks the document (SSE events included), an undocumented status, or hang."""

import asyncio
import socket
import threading
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from herd.gateway.app import Gateway, serve
from herd.gateway.config import GatewayConfig
from herd.server.launch import ReplicaProcess
from waiting import wait_until

ARGS = ("--dtype", "float32", "--device", "cpu", "--max-model-len", "96", "--max-n", "4")
ARGS += ("--max-num-seqs", "16", "--served-model-name", "tiny")
EXAMPLES = 25  # per operation and generation mode: ~100 bodies through gateway and replica
TIMEOUT_S = 20  # a request that takes longer is a hang


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gateway_url(tiny_model_dir):
    with ReplicaProcess(tiny_model_dir, *ARGS) as replica:
        port = _free_port()
        config = GatewayConfig(host="127.0.0.1", port=port, upstreams=[replica.url])
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()

        async def run() -> None:
            gateway = Gateway(config)
            runner = await serve(gateway, config.host, config.port)
            await stop.wait()
            await runner.cleanup()

        thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _status(url + "/ready") == 200, 60, "gateway ready")
        yield url
        assert _status(url + "/health") == 200  # the gateway outlived the fuzzing
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except OSError as exc:
        return getattr(exc, "code", None)


OPERATIONS = [
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
    ("GET", "/health"),
    ("GET", "/ready"),
]
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS]
CASES += [(m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if m == "POST"]


@pytest.mark.parametrize("method, path, mode", CASES, ids=lambda v: getattr(v, "value", v))
def test_gateway_conforms_to_its_openapi(gateway_url, method, path, mode):
    api = schemathesis.openapi.from_url(gateway_url + "/openapi.json")
    operation = api[path][method]

    # As for the replica: some schema-valid bodies are refused for reasons a schema cannot say
    # (the model name, the context length); each is still a documented 4xx, checked below.
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case) -> None:
        resp = case.call_and_validate(excluded_checks=[positive_data_acceptance], timeout=TIMEOUT_S)
        seen.add(resp.status_code)

    seen: set[int] = set()
    run()
    assert not any(status >= 500 for status in seen), seen
