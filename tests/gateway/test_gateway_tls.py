"""The gateway over TLS with a CA the test makes (`trustme`): a verifying client gets through,
one that does not trust the CA is refused, plain HTTP to the TLS port fails at once, mutual TLS
refuses a client without a certificate, and the official `openai` client works over HTTPS."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import httpx
import openai
import pytest
import trustme
from gwtools import chat, fast_config

from herd.protocol.tls import TLSConfigError, server_context


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def pem_files(ca, tmp_path_factory):
    """cert, key and CA PEM files for 127.0.0.1 and localhost."""
    d = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return {"cert": str(d / "cert.pem"), "key": str(d / "key.pem"), "ca": str(d / "ca.pem")}


def trusting(ca, client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if client_cert:
        ca.issue_cert("client@herd.test").configure_cert(ctx)
    return ctx


async def tls_gateway(start_gateway, fakes, pem_files, mtls: bool = False):
    config = fast_config(
        [fakes[0].url], tls_cert=pem_files["cert"], tls_key=pem_files["key"],
        tls_client_ca=pem_files["ca"] if mtls else None,
    )  # fmt: skip
    gw = await start_gateway(config)
    return gw, f"https://127.0.0.1:{config.port}"


async def test_verifying_client_gets_through_and_plain_http_fails_cleanly(
    fakes, start_gateway, pem_files, ca
):
    gw, url = await tls_gateway(start_gateway, fakes, pem_files)
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", json=chat(), ssl=trusting(ca)) as r:
            assert r.status == 200 and (await r.json())["choices"]
        # A client that does not trust the test CA refuses the chain.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await s.get(url + "/health", ssl=ssl.create_default_context())
        # Plain HTTP to the TLS port: a clean connection error, at once (no hang).
        plain = url.replace("https://", "http://")
        async with asyncio.timeout(5):
            with pytest.raises(aiohttp.ClientError):
                async with s.get(plain + "/health") as r:
                    await r.read()


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    fakes, start_gateway, pem_files, ca
):
    gw, url = await tls_gateway(start_gateway, fakes, pem_files, mtls=True)
    async with aiohttp.ClientSession() as s:
        async with asyncio.timeout(5):
            with pytest.raises(aiohttp.ClientError):
                async with s.get(url + "/health", ssl=trusting(ca)) as r:
                    await r.read()
        async with s.get(url + "/health", ssl=trusting(ca, client_cert=True)) as r:
            assert r.status == 200


async def test_openai_client_over_tls(fakes, start_gateway, pem_files, ca):
    gw, url = await tls_gateway(start_gateway, fakes, pem_files)
    client = openai.AsyncOpenAI(
        base_url=url + "/v1",
        api_key="none",
        http_client=httpx.AsyncClient(verify=trusting(ca)),
    )
    try:
        reply = await client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        stream = await client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        finish = [c.choices[0].finish_reason async for c in stream if c.choices]
        assert finish[-1] == "length" or finish[-1] == "stop"
    finally:
        await client.close()


def test_bad_certificate_files_are_named(pem_files, tmp_path):
    with pytest.raises(TLSConfigError, match="certificate file not found: /nope"):
        server_context("/nope", pem_files["key"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TLSConfigError, match=str(garbage)):
        server_context(str(garbage), pem_files["key"])
    # A key that does not belong to the certificate.
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(tmp_path / "other.pem"))
    with pytest.raises(TLSConfigError, match="do not load"):
        server_context(pem_files["cert"], str(tmp_path / "other.pem"))
    with pytest.raises(TLSConfigError, match="needs --tls-key"):
        server_context(pem_files["cert"], None)
