import pytest
from bench_fake_server import FakeConfig, FakeServer


@pytest.fixture
def fake_server():
    """Factory: fake_server(ttft_s=..., per_token_s=...) starts one; all are stopped afterwards."""
    servers = []

    def start(**kwargs) -> FakeServer:
        servers.append(FakeServer(FakeConfig(**kwargs)).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
