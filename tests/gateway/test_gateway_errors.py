"""The gateway's own refusals (404, 405, 413, bad prompts) are OpenAI error JSON, logged once and
counted in herd_rejected_requests_total; /openapi.json describes the gateway."""

from gwtools import fast_config
from prometheus_client.parser import text_string_to_metric_families


async def _error(resp, status: int, param=None) -> dict:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    assert body["error"]["param"] == param
    return body["error"]


async def test_own_errors_are_openai_json_counted_and_logged(fakes, start_gateway, caplog):
    caplog.set_level("INFO", logger="herd.gateway.app")
    gw = await start_gateway(fast_config([f.url for f in fakes], proxy__max_body_bytes=1024))
    s = gw.session
    await _error(await s.get(gw.url + "/nope"), 404)
    resp = await s.put(gw.url + "/v1/completions", json={})
    await _error(resp, 405)
    assert "POST" in resp.headers["Allow"]
    big = {"model": "fake-model", "prompt": "x" * 4096}
    await _error(await s.post(gw.url + "/v1/completions", json=big), 413)
    bad = {"model": "fake-model", "prompt": [1, -2]}
    await _error(await s.post(gw.url + "/v1/completions", json=bad), 400, "prompt")
    image = {"type": "image_url", "image_url": {"url": "x"}}
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": [image]}]}
    await _error(
        await s.post(gw.url + "/v1/chat/completions", json=chat), 400, "messages[0].content[0]"
    )
    text = await (await s.get(gw.url + "/metrics")).text()
    counted = {
        (x.labels["status"], x.labels["reason"]): x.value
        for fam in text_string_to_metric_families(text)
        for x in fam.samples
        if x.name == "herd_rejected_requests_total"
    }
    assert counted == {
        ("404", "not_found"): 1,
        ("405", "method_not_allowed"): 1,
        ("413", "request_too_large"): 1,
        ("400", "invalid_request_error"): 2,
    }
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(lines) == 5
    assert "param=messages[0].content[0]" in lines[-1] and "request_id=" in lines[-1]


async def test_openapi_document_names_the_gateway(fakes, start_gateway):
    gw = await start_gateway(fast_config([f.url for f in fakes]))
    doc = await (await gw.session.get(gw.url + "/openapi.json")).json()
    assert doc["info"]["title"] == "herd gateway"
    assert {"401", "502"} <= set(doc["paths"]["/v1/completions"]["post"]["responses"])


async def test_unexpected_exception_is_a_500_error_body(fakes, start_gateway, monkeypatch):
    gw = await start_gateway(fast_config([f.url for f in fakes]))

    def broken():
        raise RuntimeError("secret detail")

    monkeypatch.setattr(gw.gateway.replicas, "ready", broken)
    error = await _error(await gw.session.get(gw.url + "/v1/models"), 500)
    assert "secret" not in error["message"] and error["code"] == "internal_error"
