"""`LLM`: offline batch generation over `LLMEngine`, with vLLM's argument names."""

import itertools
from typing import Any

from tqdm import tqdm

from herd.engine.config import EngineConfig
from herd.engine.llm_engine import LLMEngine
from herd.engine.outputs import CompletionOutput, RequestOutput
from herd.engine.sampling_params import SamplingParams

Prompt = str | list[int] | dict[str, Any]


class LLM:
    """Offline generation as vLLM's `LLM` offers it: build an engine from settings, run lists of
    prompts (or chats) to completion and return one `RequestOutput` per prompt, in order."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        """`kwargs` are the settings of `EngineConfig` by name, nested configs flattened
        (`max_num_seqs=...`, `quantization="int8"`, ...); an unknown name is a `TypeError`, a bad
        value a `ValueError` naming it."""
        self.engine = LLMEngine(EngineConfig.from_flat(model=str(model), **kwargs))
        # Decode graphs are built now, as a server builds them before it is ready (and vLLM's
        # LLM captures its graphs): built on first use, a bucket's ~8-20 s compile landed
        # inside a run (a 64-prompt run's last lone decode: 394 instead of 582 tok/s).
        self.engine.compile_decode()
        self._ids = itertools.count()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | list[Prompt],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = False,
        priority: list[int] | None = None,
    ) -> list[RequestOutput]:
        if isinstance(prompts, str | dict) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]
        params = sampling_params or SamplingParams()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        ids = []
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            rid = str(next(self._ids))
            self.engine.add_request(
                rid, _prompt_input(prompt), p, (priority or [0] * len(prompts))[i]
            )
            ids.append(rid)
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        tok = self.engine.tokenizer
        prompts = [{"prompt_token_ids": tok.apply_chat_template(c)} for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm)

    def stats(self) -> dict:
        return self.engine.stats()

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        results: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="generate", disable=not use_tqdm)
        try:
            while self.engine.has_unfinished_requests():
                for delta in self.engine.step():
                    merge(results, delta)
                    if delta.finished:
                        bar.update(1)
        except BaseException:
            for rid in ids:
                self.engine.abort_request(rid)
            self.engine.step()
            raise
        finally:
            bar.close()
        return [results[rid] for rid in ids]


def _prompt_input(prompt: Prompt) -> str | list[int]:
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"])
        return prompt["prompt"]
    return prompt


def merge(results: dict[str, RequestOutput], delta: RequestOutput) -> None:
    """Fold a step's delta into the accumulated output of its request."""
    acc = results.get(delta.request_id)
    if acc is None:
        acc = results[delta.request_id] = RequestOutput(
            delta.request_id, delta.prompt, delta.prompt_token_ids, [], False
        )
    by_index = {c.index: c for c in acc.outputs}
    for c in delta.outputs:
        cur = by_index.get(c.index)
        if cur is None:
            cur = by_index[c.index] = CompletionOutput(c.index, logprobs=None)
        cur.text += c.text
        cur.token_ids.extend(c.token_ids)
        if c.logprobs is not None:
            cur.logprobs = (cur.logprobs or []) + c.logprobs
        cur.cumulative_logprob += c.cumulative_logprob
        cur.finish_reason, cur.stop_reason = c.finish_reason, c.stop_reason
    acc.outputs = [by_index[i] for i in sorted(by_index)]
    acc.finished = delta.finished
    acc.num_cached_tokens = delta.num_cached_tokens
    acc.metrics = delta.metrics
    if delta.prompt_logprobs is not None:
        acc.prompt_logprobs = delta.prompt_logprobs
