"""The HTTP side of the bench: one aiohttp session speaking the OpenAI API, streaming or not.

Records raw timestamps per content chunk and the server's `usage`; it never interprets them
(metrics.py does). Works against any OpenAI-compatible server: herd, vLLM, SGLang, TGI, hosted."""

import json
import time

import aiohttp

from herd.bench.config import Target
from herd.bench.request import RequestInput, RequestOutput
from herd.protocol.sse import SSEParser


class EndpointError(Exception):
    """The endpoint cannot be reached or refuses the benchmark's basic request."""


class OpenAIClient:
    """One HTTP session to an OpenAI-compatible endpoint, used as an async context manager. `send`
    never raises for a failed request: it returns a `RequestOutput` whose `error` names the
    failure class, with the arrival time of every content chunk taken before any parsing, so
    latency is what the client saw."""

    def __init__(self, target: Target):
        self.target = target
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "OpenAIClient":
        headers = {"Authorization": f"Bearer {self.target.api_key}"} if self.target.api_key else {}
        # limit=0: the bench, not the connection pool, decides how many requests are in flight.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=self.target.timeout_s, sock_connect=10)
        self._session = aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with OpenAIClient(...)`"
        return self._session

    async def preflight(self) -> str:
        """Check the endpoint answers and return the model to use (the first listed if unset)."""
        url = f"{self.target.base_url}/models"
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status in (401, 403):
                    raise EndpointError(f"{url} refused the API key (HTTP {resp.status})")
                body = await resp.json(content_type=None) if resp.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EndpointError(
                f"cannot reach {self.target.base_url}: {exc or type(exc).__name__}"
            ) from None
        except json.JSONDecodeError:
            body = {}
        if self.target.model:
            return self.target.model
        models = [m.get("id") for m in (body or {}).get("data", []) if m.get("id")]
        if not models:
            raise EndpointError(f"{url} lists no models; pass --model")
        return models[0]

    def _payload(self, model: str, history: list[dict], turn: RequestInput) -> dict:
        body: dict = {
            "model": model,
            "max_tokens": turn.output_tokens,
            "temperature": self.target.temperature,
        }
        messages = [*history, {"role": "user", "content": turn.prompt}]
        if self.target.endpoint == "chat":
            body["messages"] = messages
        else:
            body["prompt"] = "\n".join(m["content"] for m in messages)
        if self.target.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if self.target.ignore_eos:
            body["ignore_eos"] = True
        return body

    async def send(self, model: str, history: list[dict], turn: RequestInput) -> RequestOutput:
        out = RequestOutput(start=time.perf_counter(), requested_output_tokens=turn.output_tokens,
                            expected_input_tokens=turn.input_tokens)  # fmt: skip
        try:
            async with self.session.post(
                self.target.url, json=self._payload(model, history, turn)
            ) as resp:
                if resp.status != 200:
                    out.error = f"http_{resp.status}"
                    await resp.read()
                elif self.target.stream:
                    await self._read_stream(resp, out)
                else:
                    _apply_body(out, await resp.json(content_type=None), time.perf_counter())
        except TimeoutError:
            out.error = "timeout"
        except aiohttp.ClientConnectorError:
            out.error = "connection"
        except aiohttp.ServerDisconnectedError:
            out.error = "disconnected"
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: not JSON or not SSE
            out.error = f"client_{type(exc).__name__}"
        out.end = time.perf_counter()
        out.ok = not out.error
        return out

    async def _read_stream(self, resp: aiohttp.ClientResponse, out: RequestOutput) -> None:
        finished = done = False
        parser = SSEParser()
        async for raw in resp.content.iter_any():
            now = time.perf_counter()  # first thing: the arrival time is what we measure
            for event in parser.feed(raw):
                if event.data is None:
                    continue
                if event.is_done:
                    finished = done = True
                    break
                chunk = event.json()
                if "error" in chunk:
                    out.error = "stream_error"
                    break
                finished |= _apply_chunk(out, chunk, now)
            out.client_overhead_s += time.perf_counter() - now
            if out.error or done:
                break
        if not finished and not out.error:
            out.error = "stream_truncated"  # neither [DONE] nor a finish_reason arrived


def _text_of(choice: dict) -> str:
    delta = choice.get("delta") or choice.get("message") or {}
    if isinstance(delta, dict):
        # reasoning models stream reasoning first: that is output too, for timing purposes.
        return (delta.get("content") or "") + (delta.get("reasoning_content") or "")
    return ""


def _apply_usage(out: RequestOutput, usage: dict | None) -> None:
    if not usage:
        return
    out.prompt_tokens = usage.get("prompt_tokens", out.prompt_tokens)
    out.completion_tokens = usage.get("completion_tokens", out.completion_tokens)
    details = usage.get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        out.cached_tokens = details["cached_tokens"]


def _apply_chunk(out: RequestOutput, chunk: dict, now: float) -> bool:
    """Fold one streamed chunk into `out`; True when it carried a finish_reason."""
    _apply_usage(out, chunk.get("usage"))
    finished = False
    for choice in chunk.get("choices") or []:
        text = choice.get("text") or _text_of(choice)
        if text:
            out.chunk_times.append(now)
            out.chunk_chars.append(len(text))
            out.text += text
        finished |= bool(choice.get("finish_reason"))
    return finished


def _apply_body(out: RequestOutput, body: dict, now: float) -> None:
    """Non-streaming: the whole answer is one chunk, so TTFT equals end-to-end latency."""
    if "error" in body:
        out.error = "response_error"
        return
    _apply_chunk(out, body, now)


async def scrape_text(session: aiohttp.ClientSession, url: str) -> str | None:
    """GET a Prometheus /metrics page; None when the server has none (not an error)."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return await resp.text() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None
