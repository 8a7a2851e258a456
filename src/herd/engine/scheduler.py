"""`Scheduler`: decides each step which requests run and how many tokens each computes, under a
token budget (`max_num_batched_tokens`) and `max_num_seqs`.

Running requests are served first (decodes and unfinished prefill chunks alike), in priority
order; when blocks run out the lowest-priority, latest running request is preempted (its blocks
freed, recomputed later — it keeps its place, since waiting requests are ordered by priority
then arrival). Prefill of waiting requests is chunked to whatever budget is left. A waiting
request of a higher priority (a lower value) that finds the batch slots or the blocks taken
preempts the worst running request of a strictly lower priority, so a class never waits
behind a lower one; the step that admits a request outranking every running one runs without
the lower ones' decodes (they resume next step), so its first token costs one small step.
"""

import time
from dataclasses import dataclass, field

from herd.engine.config import SchedulerConfig
from herd.engine.kv_cache_manager import KVCacheManager
from herd.engine.request import Request, RequestStatus


@dataclass
class ScheduledRequest:
    """One request's share of a step: where its computation starts, how many tokens it computes (a
    prefill chunk, or 1 for a decode), and its block table after allocation. Everything but
    `req` is plain data, what the forward pass needs; `plain()` drops `req` so the step can
    cross a process boundary (tensor-parallel ranks)."""

    req: Request | None  # the live request (sampling, on the scheduling process only)
    start: int  # num_computed_tokens before this step: the first position computed
    num_new_tokens: int  # tokens computed this step (a prefill chunk, or 1 for a decode)
    block_ids: list[int]  # the request's block table after allocation
    token_ids: list[int] | None = None  # the tokens computed (default: from req, then drafts)
    request_id: str = ""
    # speculative decoding: drafts computed after the known tokens (their KV is rolled back
    # where rejected); included in num_new_tokens and at the end of token_ids
    spec_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.req is not None:
            self.request_id = self.req.request_id
            if self.token_ids is None:
                end = self.start + self.num_new_tokens - len(self.spec_token_ids)
                self.token_ids = self.req.all_token_ids[self.start : end] + self.spec_token_ids

    def plain(self) -> "ScheduledRequest":
        """This share without the live request: ints and lists only."""
        return ScheduledRequest(
            None,
            self.start,
            self.num_new_tokens,
            self.block_ids,
            self.token_ids,
            self.request_id,
            self.spec_token_ids,
        )

    @property
    def samples(self) -> bool:
        """True when this step reaches the end of the known tokens, so a new token is sampled."""
        return self.start + self.num_new_tokens >= self.req.num_tokens


@dataclass
class SchedulerOutput:
    """The runner's only input."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    # Requests that can never fit the KV pool; the engine finishes them with "length".
    unschedulable: list[Request] = field(default_factory=list)
    # KV tier copies (herd.engine.kv_tier_storage.KVCopy), run in order before the forward pass;
    # plain data, so tensor-parallel ranks can each run them on their own shard.
    kv_copies: list[tuple[str, int, str, int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    """Decides each step's work under a token budget and `max_num_seqs`: running requests first (by
    priority, then arrival), then waiting ones, with chunked prefill. When KV blocks run out it
    preempts the lowest-priority, latest request by recompute; the victim keeps its place in the
    waiting queue and is never lost. A waiting request that outranks (strictly lower priority
    value) the worst running one takes its slot or blocks when either runs out; equal
    priorities never preempt each other, so there is no thrashing within a class.
    `seq_cap` (None: no cap) lowers `max_num_seqs` for a step, set by the TPOT controller."""

    def __init__(self, config: SchedulerConfig, kv: KVCacheManager) -> None:
        self.config = config
        self.kv = kv
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.num_preemptions = 0
        self.seq_cap: int | None = None  # a dynamic cap below max_num_seqs (--target-tpot-ms)

    def add(self, req: Request) -> None:
        if req.status != RequestStatus.PREEMPTED:
            req.status = RequestStatus.WAITING
        self.waiting.append(req)

    def remove(self, req: Request) -> None:
        """Take a request out of the queues and free its blocks (finish or abort)."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self.kv.free(req)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        preempted = False
        self.running.sort(key=lambda r: r.sort_key)
        cutoff = self._outranking_priority()
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            if cutoff is not None and req.priority > cutoff:
                break  # this step is the higher class's: lower ones wait one step (sorted)
            num_new = min(
                req.num_tokens + len(req.spec_token_ids) - req.num_computed_tokens, budget
            )
            fits, did_preempt = self._allocate_or_preempt(req, num_new)
            preempted = preempted or did_preempt
            if fits:
                out.scheduled.append(self._scheduled(req, num_new))
                budget -= num_new
                i += 1
        if not preempted:
            self._admit_waiting(out, budget)
        if self.kv.tiers is not None:
            out.kv_copies = self.kv.tiers.take_copies()
        return out

    def _allocate_or_preempt(self, req: Request, num_new: int) -> tuple[bool, bool]:
        """Allocate for `req`, preempting from the back of the running list until it fits.
        Returns (fits, preempted anyone); `fits` is False when `req` itself was preempted."""
        preempted = False
        while self.kv.allocate_slots(req, num_new) is None:
            if self._reclaim_waiting():
                continue
            victim = self.running[-1]
            self._preempt(victim)
            preempted = True
            if victim is req:
                return False, True
        return True, preempted

    def _reclaim_waiting(self) -> bool:
        """Free the blocks waiting requests hold (siblings forked onto a shared prompt), so they
        never starve the running ones; they recompute instead. True if any were freed."""
        holders = [r for r in self.waiting if self.kv.blocks_of(r.request_id)]
        for req in holders:
            self.kv.free(req)
            req.num_computed_tokens = 0
        return bool(holders)

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.kv.free(req)
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        self.waiting.append(req)
        self.num_preemptions += 1

    def _outranking_priority(self) -> int | None:
        """The priority of the best waiting request when it outranks every running one: that
        step runs only it (and its equals), so its first token does not wait on a full batch of
        lower-class decodes. None otherwise."""
        if not self.waiting or not self.running:
            return None
        best = min(self.waiting, key=lambda r: r.sort_key)
        return best.priority if best.priority < self.running[0].priority else None

    @property
    def max_seqs(self) -> int:
        """Sequences that may run this step: `max_num_seqs`, lowered by a TPOT cap."""
        cap = self.config.max_num_seqs
        return cap if self.seq_cap is None else max(1, min(cap, self.seq_cap))

    def _outranked_victim(self, req: Request) -> Request | None:
        """The worst running request if `req` strictly outranks it (lower priority value)."""
        if not self.running:
            return None
        victim = max(self.running, key=lambda r: r.sort_key)
        return victim if victim.priority > req.priority else None

    def _preempt_for(self, req: Request, out: SchedulerOutput) -> int | None:
        """Preempt the worst running request for a waiting `req` that outranks it; returns the
        token budget it gives back (its share of this step), or None when nothing may go."""
        victim = self._outranked_victim(req)
        if victim is None:
            return None
        returned = 0
        for i, s in enumerate(out.scheduled):
            if s.req is victim:
                returned = s.num_new_tokens
                del out.scheduled[i]
                break
        self._preempt(victim)
        self.waiting.sort(key=lambda r: r.sort_key)
        return returned

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        self.waiting.sort(key=lambda r: r.sort_key)
        while self.waiting:
            req = self.waiting[0]
            if budget <= 0 or len(self.running) >= self.max_seqs:
                # Full: only a higher class may take a lower one's place.
                returned = self._preempt_for(req, out)
                if returned is None:
                    break
                budget += returned
                continue
            computed, hit = [], 0
            if req.num_computed_tokens == 0:
                computed, hit = self.kv.get_computed_blocks(req)
            num_new = min(req.num_tokens - req.num_computed_tokens - hit, budget)
            if self.kv.allocate_slots(req, num_new, computed) is None:
                if self._reclaim_waiting():
                    continue
                if not self.running and not out.scheduled:
                    out.unschedulable.append(self.waiting.pop(0))
                    continue
                returned = self._preempt_for(req, out)
                if returned is None:
                    break
                budget += returned
                continue
            if req.num_computed_tokens == 0:
                self.kv.record_lookup(req.num_tokens, hit)
            if req.num_cached_tokens < 0:
                req.num_cached_tokens = hit + req.num_computed_tokens
            req.num_computed_tokens += hit
            self.waiting.pop(0)
            self.running.append(req)
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_time is None:
                req.first_scheduled_time = time.monotonic()
            out.scheduled.append(self._scheduled(req, num_new))
            budget -= num_new

    def _scheduled(self, req: Request, num_new: int) -> ScheduledRequest:
        drafts = req.num_computed_tokens + num_new - req.num_tokens  # > 0: drafts that fit
        return ScheduledRequest(
            req,
            req.num_computed_tokens,
            num_new,
            self.kv.block_ids(req.request_id),
            spec_token_ids=req.spec_token_ids[:drafts] if drafts > 0 else [],
        )

    def update_from_output(self, out: SchedulerOutput) -> None:
        for s in out.scheduled:
            s.req.num_computed_tokens += s.num_new_tokens
