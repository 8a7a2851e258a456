"""A tiny stand-in for `LLMEngine` with the same interface: bytes as tokens, one block per running
request, deterministic letters as output. Lets server tests run in-process in milliseconds."""

import time
from dataclasses import dataclass, field

from herd.engine.errors import InvalidRequestError
from herd.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from herd.engine.sampling_params import SamplingParams

BOS = 1


class FakeTokenizer:
    def encode(self, text: str) -> list[int]:
        return [BOS] + [b + 2 for b in text.encode()]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i - 2 for i in ids if i >= 2).decode(errors="replace")

    def apply_chat_template(self, messages: list[dict]) -> list[int]:
        return self.encode(
            "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
        )


@dataclass
class _Req:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    metrics: RequestMetrics
    generated: list[list[int]] = field(default_factory=list)
    aborted: bool = False


class FakeEngine:
    def __init__(self, max_model_len: int = 128, total_blocks: int = 64, step_s: float = 0.001):
        self.tokenizer = FakeTokenizer()
        self.max_model_len = max_model_len
        self.precision = {"dtype": "float32", "quantization": "none", "kv_cache_dtype": "float32"}
        self.total_blocks = total_blocks
        self.step_s = step_s
        self.requests: dict[str, _Req] = {}
        self.counters = dict(prompt_tokens=0, generation_tokens=0, preemptions=0)

    @staticmethod
    def letter(position: int, index: int) -> int:
        return 2 + ord("a") + (position + index) % 26

    def add_request(self, request_id, prompt, params, priority=0):
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if len(ids) >= self.max_model_len:
            raise InvalidRequestError(f"prompt of {len(ids)} tokens is too long", param="prompt")
        if any(t >= 258 for t in ids):
            raise InvalidRequestError("token id out of vocabulary", param="prompt")
        metrics = RequestMetrics(arrival_time=time.monotonic())
        self.requests[request_id] = _Req(
            request_id, ids, params, metrics, [[] for _ in range(params.n)]
        )

    def abort_request(self, request_id):
        if request_id in self.requests:
            self.requests[request_id].aborted = True

    def has_unfinished_requests(self):
        return bool(self.requests)

    def step(self):
        time.sleep(self.step_s)
        outputs = []
        for rid, req in list(self.requests.items()):
            now = time.monotonic()
            if req.metrics.first_scheduled_time is None:
                req.metrics.first_scheduled_time = now
                self.counters["prompt_tokens"] += len(req.prompt_ids)
            deltas = []
            for i, gen in enumerate(req.generated):
                if req.aborted:
                    deltas.append(CompletionOutput(index=i, finish_reason="abort"))
                    continue
                tok = self.letter(len(gen), i)
                gen.append(tok)
                self.counters["generation_tokens"] += 1
                done = len(gen) >= (req.params.max_tokens or 8)
                lps = None
                if req.params.logprobs is not None:
                    lps = [{tok: -0.5, tok + 1: -1.5, tok + 2: -2.5}]
                deltas.append(
                    CompletionOutput(
                        index=i,
                        text=self.tokenizer.decode([tok]),
                        token_ids=[tok],
                        logprobs=lps,
                        finish_reason="length" if done else None,
                    )
                )
            finished = req.aborted or all(
                len(g) >= (req.params.max_tokens or 8) for g in req.generated
            )
            if finished:
                del self.requests[rid]
            outputs.append(
                RequestOutput(rid, None, req.prompt_ids, deltas, finished, metrics=req.metrics)
            )
        return outputs

    def compile_decode(self):
        """Nothing to compile: the fake has no model."""

    def stats(self):
        used = len(self.requests)
        return dict(
            num_running=used,
            num_waiting=0,
            kv_usage=used / self.total_blocks,
            num_free_blocks=self.total_blocks - used,
            num_total_blocks=self.total_blocks,
            prefix_cache_queries=0,
            prefix_cache_hits=0,
            **self.counters,
        )
