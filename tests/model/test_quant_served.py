"""The precision in use is visible where operators look: /v1/models metadata and the
`herd_model_info` gauge of /metrics, for a real engine quantized at load with an fp8 KV cache."""

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from herd.engine.config import EngineConfig
from herd.engine.llm_engine import LLMEngine
from herd.server.app import STATE, create_app
from herd.server.async_engine import AsyncEngine
from herd.server.config import ServerConfig


async def test_models_and_metrics_show_quantization(tiny_model_dir):
    config = EngineConfig(
        model=str(tiny_model_dir), dtype="bfloat16", quantization="int8", kv_cache_dtype="fp8"
    )
    engine = AsyncEngine(lambda: LLMEngine(config), warmup=False)
    app = create_app(engine, ServerConfig(config))
    await engine.start()
    app[STATE].phase = "ready"
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        card = (await (await client.get("/v1/models")).json())["data"][0]
        assert (card["quantization"], card["kv_cache_dtype"]) == ("int8", "fp8")
        assert card["dtype"] == "bfloat16"
        text = await (await client.get("/metrics")).text()
        (info,) = [f for f in text_string_to_metric_families(text) if f.name == "herd_model_info"]
        labels = info.samples[0].labels
        assert labels == {"dtype": "bfloat16", "quantization": "int8", "kv_cache_dtype": "fp8"}
    finally:
        await client.close()
        await engine.stop()
