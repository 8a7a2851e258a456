"""Turns sampled tokens into finished-or-not sequences and `RequestOutput` deltas: stop
conditions (EOS, stop tokens, stop strings, max_tokens, context length), incremental text, and
the grouping of `n` sibling sequences under their parent request."""

import time
from dataclasses import dataclass, field

from herd.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprobs
from herd.engine.request import Request, RequestStatus
from herd.engine.sampling_params import SamplingParams
from herd.engine.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass
class SequenceText:
    """One sequence's text so far, and how much of it has been emitted. With stop strings, the
    last (longest stop - 1) characters are held back until they cannot start a stop string."""

    detok: IncrementalDetokenizer
    params: SamplingParams
    text: str = ""
    emitted: int = 0

    def add(self, token_id: int | None, final: bool) -> str | None:
        """Append a token; returns the stop string if the text now contains one."""
        delta = self.detok.add([] if token_id is None else [token_id], final=final)
        if not delta:
            return None
        search_from = max(
            0, len(self.text) - max((len(s) for s in self.params.stop_list), default=0)
        )
        self.text += delta
        for stop in self.params.stop_list:
            idx = self.text.find(stop, search_from)
            if idx >= 0:
                keep = idx + len(stop) if self.params.include_stop_str_in_output else idx
                self.text = self.text[:keep]
                return stop
        return None

    def take_delta(self, finished: bool) -> str:
        hold = 0 if finished else max((len(s) for s in self.params.stop_list), default=1) - 1
        end = max(self.emitted, len(self.text) - hold)
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta


@dataclass
class ParentState:
    """A user request: its `n` sibling sequences and what each step has added."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: list[Request]
    texts: list[SequenceText]
    arrival_time: float
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    new_prompt_logprobs: bool = False
    pending: dict[int, dict] = field(default_factory=dict)  # child index -> this step's delta

    @property
    def finished(self) -> bool:
        return all(c.status.finished for c in self.children)


class OutputProcessor:
    """Turns sampled tokens into what users see: appends each token, applies stop conditions (EOS,
    stop strings and ids, length, context), detokenizes incrementally while holding back text
    that may still begin a stop string, and folds siblings into one `RequestOutput` delta per
    parent."""

    def __init__(self, tokenizer: Tokenizer, eos_token_ids: list[int], max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.eos = set(eos_token_ids)
        self.max_model_len = max_model_len

    def new_text(self, params: SamplingParams) -> SequenceText:
        return SequenceText(
            IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens), params
        )

    def append_token(
        self,
        parent: ParentState,
        req: Request,
        token: int,
        logprobs: TokenLogprobs | None,
        sampled_logprob: float,
    ) -> None:
        req.all_token_ids.append(token)
        if req.first_token_time is None:
            req.first_token_time = time.monotonic()
        delta = self._delta(parent, req)
        delta["token_ids"].append(token)
        delta["cumulative_logprob"] = delta.get("cumulative_logprob", 0.0) + sampled_logprob
        if logprobs is not None:
            delta["logprobs"].append(logprobs)
        p = req.params
        emit_token = token if token not in self.eos or p.ignore_eos else None
        past_min = req.num_output_tokens >= p.min_tokens
        stop_str = parent.texts[req.index].add(emit_token, final=False)
        if past_min and not p.ignore_eos and token in self.eos:
            self._finish(parent, req, RequestStatus.FINISHED_STOPPED, None)
        elif past_min and token in (p.stop_token_ids or ()):
            self._finish(parent, req, RequestStatus.FINISHED_STOPPED, token)
        elif past_min and stop_str is not None:
            self._finish(parent, req, RequestStatus.FINISHED_STOPPED, stop_str)
        elif req.num_output_tokens >= req.max_tokens or req.num_tokens >= self.max_model_len:
            self._finish(parent, req, RequestStatus.FINISHED_LENGTH, None)

    def finish(self, parent: ParentState, req: Request, status: RequestStatus) -> None:
        self._delta(parent, req)
        self._finish(parent, req, status, None)

    def _finish(
        self, parent: ParentState, req: Request, status: RequestStatus, reason: int | str | None
    ) -> None:
        req.status = status
        req.stop_reason = reason
        text = parent.texts[req.index]
        if not isinstance(reason, str):  # flush a trailing partial character
            text.add(None, final=True)

    def _delta(self, parent: ParentState, req: Request) -> dict:
        return parent.pending.setdefault(req.index, {"token_ids": [], "logprobs": []})

    def collect(self, parent: ParentState) -> RequestOutput:
        """The step's delta for `parent`; clears it."""
        outs = []
        for index, d in sorted(parent.pending.items()):
            child = parent.children[index]
            done = child.status.finished
            outs.append(
                CompletionOutput(
                    index=index,
                    text=parent.texts[index].take_delta(done),
                    token_ids=d["token_ids"],
                    logprobs=d["logprobs"] if child.params.logprobs is not None else None,
                    cumulative_logprob=d.get("cumulative_logprob", 0.0),
                    finish_reason=child.status.finish_reason if done else None,
                    stop_reason=child.stop_reason if done else None,
                )
            )
        parent.pending.clear()
        first = parent.children[0]
        prompt_lp = None
        if parent.new_prompt_logprobs:
            prompt_lp, parent.new_prompt_logprobs = parent.prompt_logprobs, False
        finished = parent.finished
        metrics = RequestMetrics(
            arrival_time=parent.arrival_time,
            first_scheduled_time=first.first_scheduled_time,
            first_token_time=min(
                (c.first_token_time for c in parent.children if c.first_token_time), default=None
            ),
            finished_time=time.monotonic() if finished else None,
        )
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            outputs=outs,
            finished=finished,
            num_cached_tokens=max(0, first.num_cached_tokens),
            prompt_logprobs=prompt_lp,
            metrics=metrics,
        )
