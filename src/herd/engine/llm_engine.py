"""`LLMEngine`: the synchronous core. `add_request` validates and queues; `step()` is
schedule -> execute -> update, and returns the step's `RequestOutput` deltas."""

import logging
import time
from pathlib import Path

from herd.engine.config import EngineConfig
from herd.engine.distributed import start_tensor_parallel
from herd.engine.errors import InvalidRequestError
from herd.engine.kv_cache_manager import KVCacheManager
from herd.engine.kv_tiers import build_kv_tiers, run_copies
from herd.engine.output_processor import OutputProcessor, ParentState
from herd.engine.outputs import RequestOutput
from herd.engine.request import Request, RequestStatus
from herd.engine.runner import ModelRunner
from herd.engine.sampling_params import SamplingParams
from herd.engine.scheduler import Scheduler
from herd.engine.spec_decode import SpecDecoder
from herd.engine.structured import StructuredOutputs
from herd.engine.tokenizer import Tokenizer
from herd.engine.tpot import TpotController
from herd.model.config import ModelConfig

log = logging.getLogger(__name__)


class LLMEngine:
    """The engine core: requests in, token deltas out. `add_request` validates and queues (raising
    `InvalidRequestError` without touching state); `step()` runs one schedule -> execute ->
    update cycle and returns `RequestOutput` deltas; `abort_request` frees a request's blocks at
    once. Plain synchronous code: whoever owns it calls `step()`; every accepted request ends
    with exactly one finish reason."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_config = ModelConfig.from_path(config.model)
        limit = self.model_config.max_position_embeddings
        if config.max_model_len is not None and config.max_model_len > limit:
            raise ValueError(  # a configuration error, not a refused request
                f"max_model_len {config.max_model_len} exceeds the model's context ({limit})"
            )
        self.max_model_len = config.max_model_len or limit
        self.tokenizer = Tokenizer(config.model)
        self.tp = start_tensor_parallel(config, self.model_config, self.max_model_len)
        self.runner = self._runner()
        self.precision = self.runner.precision  # dtype, quantization, kv_cache_dtype (strings)
        identity = f"{Path(config.model).resolve()}|{self.runner.dtype}"
        # KV tiers (issue 15): host / disk below the pool; None, None when not configured.
        tiers = build_kv_tiers(config, self.runner.kv_cache, self.runner.num_blocks)
        self.kv_tiers, self.tier_storage = tiers or (None, None)
        self.kv = KVCacheManager(
            self.runner.num_blocks,
            config.block_size,
            config.enable_prefix_caching,
            identity,
            self.kv_tiers,
        )
        self.scheduler = Scheduler(config.scheduler, self.kv)
        sc = config.scheduler
        self.tpot = (
            TpotController(sc.target_tpot_ms / 1000, sc.max_num_seqs)
            if sc.target_tpot_ms is not None
            else None
        )
        if self.tpot is not None:
            self.scheduler.seq_cap = self.tpot.cap()
        self.outputs = OutputProcessor(
            self.tokenizer, self.model_config.eos_token_ids, self.max_model_len
        )
        self.structured = StructuredOutputs(
            self.tokenizer.hf, self.model_config.vocab_size, self.model_config.eos_token_ids
        )
        self.runner.structured = self.structured
        self.parents: dict[str, ParentState] = {}
        self.pending_forks: dict[str, list[Request]] = {}  # siblings waiting for the prompt
        self.finished_parents: list[str] = []  # finished outside a step (abort, unschedulable)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        spec = config.speculative  # speculative decoding (engine/spec_decode.py), None: off
        self.spec = spec and SpecDecoder(
            spec, config, self.model_config.vocab_size, self.max_model_len, self.runner.num_blocks
        )

    def _runner(self) -> ModelRunner:
        if self.tp is None:
            return ModelRunner(self.config, self.model_config, self.max_model_len)
        with self.tp.guard():  # a worker that fails to load: a TensorParallelError naming it
            return ModelRunner(
                self.config, self.model_config, self.max_model_len, self.tp.shard, self.tp
            )

    def close(self) -> None:
        """Stops the tensor-parallel worker processes, if any (they also end with this one)."""
        if self.tp is not None:
            self.tp.close()

    # ---- requests in -------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> None:
        if request_id in self.parents:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        params.validate()
        text = prompt if isinstance(prompt, str) else None
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self._check_prompt(ids, params)
        spec = params.structured_outputs
        grammar = self.structured.compile(spec) if spec is not None else None  # 400 if refused
        arrival = arrival_time if arrival_time is not None else time.monotonic()
        max_tokens = self.max_model_len - len(ids)
        if params.max_tokens is not None:
            max_tokens = min(max_tokens, params.max_tokens)
        children = [
            Request(
                request_id=request_id if params.n == 1 else f"{request_id}#{i}",
                parent_id=request_id,
                index=i,
                prompt_token_ids=ids,
                params=params,
                seed=_sibling_seed(params.seed, i),
                max_tokens=max_tokens,
                priority=priority,
                arrival_time=arrival,
                grammar=self.structured.new_matcher(grammar) if grammar is not None else None,
            )
            for i in range(params.n)
        ]
        self.parents[request_id] = ParentState(
            request_id,
            text,
            ids,
            params,
            children,
            [self.outputs.new_text(params) for _ in children],
            arrival,
        )
        self.scheduler.add(children[0])
        if len(children) > 1:
            self.pending_forks[request_id] = children[1:]

    def _check_prompt(self, ids: list[int], params: SamplingParams) -> None:
        if not ids:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if len(ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"the prompt has {len(ids)} tokens; this model's context length is "
                f"{self.max_model_len}, which must leave room for at least 1 output token",
                param="prompt",
            )
        vocab = self.model_config.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")
        params.check_vocab(vocab)
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(params, name)
            if k is not None and k > vocab:
                raise InvalidRequestError(f"{name} must be <= {vocab}", param=name)

    def abort_request(self, request_id: str) -> None:
        parent = self.parents.get(request_id)
        if parent is None or parent.finished:
            return
        for child in parent.children:
            if not child.status.finished:
                self.scheduler.remove(child)
                self.outputs.finish(parent, child, RequestStatus.FINISHED_ABORTED)
        self.pending_forks.pop(request_id, None)
        self.finished_parents.append(request_id)

    # ---- the step ----------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        touched: dict[str, ParentState] = {p: self.parents[p] for p in self.finished_parents}
        self.finished_parents.clear()
        if self.spec is not None:
            self.spec.propose(self.scheduler.running)
        sched = self.scheduler.schedule()
        for req in sched.unschedulable:
            parent = self.parents[req.parent_id]
            self.scheduler.remove(req)
            self.outputs.finish(parent, req, RequestStatus.FINISHED_LENGTH)
            touched[parent.request_id] = parent
        if sched.kv_copies:  # tensor parallelism: every rank runs these on its shard
            if self.tp is not None:
                self.tp.send_copies(sched.kv_copies)
            run_copies(self.kv_tiers, self.tier_storage, sched.kv_copies, self.runner.kv_cache)
        if sched.scheduled:
            started = time.perf_counter()
            result = self.runner.execute(sched)
            self._measure_step(sched, time.perf_counter() - started)
            if self.spec is not None:
                self.spec.observe(sched, result, time.perf_counter() - started)
            self.scheduler.update_from_output(sched)
            self._fork_siblings()  # before finished requests free the blocks siblings share
            for s in sched.scheduled:
                req, parent = s.req, self.parents[s.req.parent_id]
                self._take_prompt_logprobs(parent, req, result.prompt_logprobs.get(req.request_id))
                emitted = result.tokens_of(req.request_id)
                if not emitted:
                    continue
                for token, logprobs, sampled_logprob in emitted:  # > 1: accepted drafts
                    if req.status.finished:
                        break  # a stop inside accepted drafts drops the rest
                    self._append_token(parent, req, token, logprobs, sampled_logprob)
                # KV of rejected drafts is stale: recompute from the last emitted token.
                req.num_computed_tokens = min(req.num_computed_tokens, req.num_tokens - 1)
                if req.status.finished:
                    self.scheduler.remove(req)
                touched[parent.request_id] = parent
        return [self._collect(p) for p in touched.values()]

    def _append_token(
        self, parent: ParentState, req: Request, token: int, logprobs, sampled_logprob: float
    ) -> None:
        accepted = self.structured.accept(req, token)
        self.outputs.append_token(parent, req, token, logprobs, sampled_logprob)
        if not req.status.finished and (not accepted or self.structured.finished(req)):
            self.outputs.finish(parent, req, RequestStatus.FINISHED_STOPPED)  # grammar end
        self.generation_tokens += 1
        if req.num_output_tokens == 1 and req.index == 0:
            self.prompt_tokens += req.num_prompt_tokens

    def _measure_step(self, sched, step_s: float) -> None:
        """Feed a pure decode step's time to the TPOT controller and apply its cap (a step with
        prefill in it says nothing about inter-token latency)."""
        if self.kv_tiers is not None:  # the recompute side of swap-or-recompute
            self.kv_tiers.policy.observe_step(sched.num_tokens, step_s)
        if self.tpot is None or any(s.num_new_tokens != 1 for s in sched.scheduled):
            return
        self.tpot.observe(len(sched.scheduled), step_s)
        self.scheduler.seq_cap = self.tpot.cap()

    def _take_prompt_logprobs(self, parent: ParentState, req: Request, lps: list | None) -> None:
        if lps is None or req.index != 0:
            return
        if parent.prompt_logprobs is None:
            parent.prompt_logprobs = [None]
        if len(parent.prompt_logprobs) < req.num_prompt_tokens:
            parent.prompt_logprobs.extend(lps)
            parent.new_prompt_logprobs = len(parent.prompt_logprobs) >= req.num_prompt_tokens

    def _fork_siblings(self) -> None:
        """Once sibling 0 has computed the prompt, the others share its full prompt blocks."""
        for parent_id in list(self.pending_forks):
            first = self.parents[parent_id].children[0]
            if first.num_computed_tokens < first.num_prompt_tokens:
                continue
            for sib in self.pending_forks.pop(parent_id):
                shared = self.kv.share_prefix(first, sib, sib.num_prompt_tokens)
                sib.num_computed_tokens = shared
                sib.num_cached_tokens = first.num_cached_tokens
                self.scheduler.add(sib)

    def _collect(self, parent: ParentState) -> RequestOutput:
        out = self.outputs.collect(parent)
        if out.finished:
            del self.parents[parent.request_id]
        return out

    # ---- state -------------------------------------------------------------------------------

    def has_unfinished_requests(self) -> bool:
        return bool(self.parents)

    def compile_decode(self) -> None:
        """Compile every decode batch bucket now (no-op with enforce_eager): a server calls it
        before it reports ready, so no request waits for the compiler."""
        if self.runner.graphs is not None:
            self.runner.graphs.compile_all(self.runner.kv_cache)

    def stats(self) -> dict:
        s = self.scheduler
        return {
            "num_running": len(s.running),
            "num_waiting": len(s.waiting) + sum(len(v) for v in self.pending_forks.values()),
            "kv_usage": self.kv.pool.usage(),
            "num_free_blocks": self.kv.pool.num_free_blocks,
            "num_total_blocks": self.kv.pool.num_blocks,
            "prefix_cache_queries": self.kv.queries,
            "prefix_cache_hits": self.kv.hits,
            "preemptions": s.num_preemptions,
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "kv_tiers": self.kv_tiers.stats() if self.kv_tiers is not None else {},
            **(self.spec.stats() if self.spec is not None else {}),
        }


def _sibling_seed(seed: int | None, index: int) -> int | None:
    # Sibling 0 keeps the seed (n=1 and n>1 agree on the first completion); others differ.
    if seed is None or index == 0:
        return seed
    return hash((seed, -1, index)) & 0x7FFF_FFFF_FFFF_FFFF  # ints only: str hashes vary per process
