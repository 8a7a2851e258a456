"""`SpecDecoder`: speculative decoding's engine side. Before each schedule it asks a proposer
(n-gram prompt lookup, or a draft model) for up to k drafts per decoding sequence, k chosen by
`AdaptiveK`; after the step it counts what verification (engine/rejection.py) accepted and feeds
the measured step time back to the policy. The scheduler computes the drafts with the sequence's
last token in one target forward; rejected drafts' KV is rolled back by `LLMEngine`."""

import time

import numpy as np

from herd.engine.config import EngineConfig
from herd.engine.request import Request
from herd.engine.runner import RunnerOutput
from herd.engine.scheduler import SchedulerOutput
from herd.engine.spec_config import SpeculativeConfig
from herd.engine.spec_policy import AdaptiveK


def ngram_lookup(tokens: list[int], k: int, n_min: int, n_max: int) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the longest suffix
    n-gram (n_max down to n_min) of `tokens`; [] when none recurs."""
    arr = np.asarray(tokens)
    length = len(arr)
    for n in range(min(n_max, length - 1), n_min - 1, -1):
        suffix = arr[length - n :]
        # starts i <= length - n - 1: a match that has at least one token after it
        cand = np.flatnonzero(arr[: length - n] == suffix[0])
        for j in range(1, n):
            if not cand.size:
                break
            cand = cand[arr[cand + j] == suffix[j]]
        if cand.size:
            i = int(cand[-1]) + n
            return arr[i : i + k].tolist()
    return []


class NgramProposer:
    """Prompt lookup: drafts are the continuation of the longest recent n-gram match in the
    sequence's own prompt and output. Deterministic, no model, no state."""

    def __init__(self, spec: SpeculativeConfig) -> None:
        self.n_min, self.n_max = spec.prompt_lookup_min, spec.prompt_lookup_max

    def propose(self, wants: list[tuple[Request, int]]) -> list[list[int]]:
        return [ngram_lookup(r.all_token_ids, k, self.n_min, self.n_max) for r, k in wants]

    def forget(self, keep: set[str]) -> None:
        """No per-request state."""


class SpecDecoder:
    """Owns the proposer and the adaptive policy; `propose` sets `Request.spec_token_ids` of the
    running sequences before a schedule, `observe` takes the step's verification and time.
    Sequences with a grammar (structured outputs) are never speculated: their drafts would have
    to be checked against the grammar token by token."""

    def __init__(
        self,
        spec: SpeculativeConfig,
        config: EngineConfig,
        vocab_size: int,
        max_model_len: int,
        num_blocks: int,
    ) -> None:
        self.spec = spec
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.policy = AdaptiveK(spec.num_speculative_tokens, spec.adaptive)
        if spec.method == "ngram":
            self.proposer = NgramProposer(spec)
        else:
            from herd.engine.draft_proposer import DraftProposer

            self.proposer = DraftProposer(spec, config, vocab_size, max_model_len, num_blocks)
        self.proposed = 0  # drafts verified
        self.accepted = 0  # of those, accepted
        self.steps = 0  # steps that verified drafts

    def propose(self, running: list[Request]) -> None:
        for r in running:
            r.spec_token_ids = []
        self.proposer.forget({r.request_id for r in running})
        k = self.policy.choose(len(running))
        if k == 0:
            return
        wants = [(r, min(k, self._room(r))) for r in running if self._speculates(r)]
        wants = [(r, n) for r, n in wants if n > 0]
        if not wants:
            return
        t0 = time.perf_counter()
        drafts = self.proposer.propose(wants)
        if self.spec.method == "draft" and drafts:  # k draft passes over the batch
            per_pass = (time.perf_counter() - t0) / max(n for _, n in wants)
            self.policy.draft.observe(len(wants), per_pass)
        for (r, _), d in zip(wants, drafts, strict=True):
            valid = next((i for i, t in enumerate(d) if not 0 <= t < self.vocab_size), len(d))
            r.spec_token_ids = d[:valid]

    def _speculates(self, r: Request) -> bool:
        """Decoding (only its last token left to compute) and free of a grammar."""
        return r.grammar is None and r.num_computed_tokens == r.num_tokens - 1

    def _room(self, r: Request) -> int:
        """Drafts that can still matter: each step emits up to k + 1 tokens, within max_tokens
        and the context (a draft's position must exist)."""
        return min(self.max_model_len - r.num_tokens, r.max_tokens - r.num_output_tokens - 1)

    def observe(self, sched: SchedulerOutput, result: RunnerOutput, step_s: float) -> None:
        # Only decode / verify steps: a prefill chunk's tokens cost differently (attention over a
        # long chunk); fitted in, they made the policy switch off at 64 concurrent, where
        # speculation measured 2x faster (benchmarks/RESULTS.md).
        if all(s.num_new_tokens == 1 + len(s.spec_token_ids) for s in sched.scheduled):
            self.policy.step.observe(sched.num_tokens, step_s)
        proposed = accepted = 0
        for v in result.verified.values():
            proposed += v.proposed
            accepted += v.accepted
        self.policy.observe_acceptance(proposed, accepted)
        self.proposed += proposed
        self.accepted += accepted
        self.steps += bool(result.verified)

    def stats(self) -> dict:
        return {
            "spec_proposed_tokens": self.proposed,
            "spec_accepted_tokens": self.accepted,
            "spec_acceptance_rate": self.accepted / self.proposed if self.proposed else 0.0,
            "spec_num_tokens": self.policy.last_k,
        }
