"""`DraftProposer`: drafts from a small model with the target's tokenizer, run in the same process
by its own `ModelRunner` with its own KV blocks (no prefix caching: its tail blocks hold drafts
that may be rejected). Greedy drafts, so verification's proposal is one-hot (engine/rejection.py).
"""

from dataclasses import replace

from herd.engine.config import EngineConfig
from herd.engine.kv_cache_manager import KVCacheManager
from herd.engine.request import Request
from herd.engine.runner import ModelRunner
from herd.engine.sampling_params import SamplingParams
from herd.engine.scheduler import ScheduledRequest, SchedulerOutput
from herd.engine.spec_config import SpeculativeConfig
from herd.model.config import ModelConfig

GREEDY = SamplingParams(temperature=0, max_tokens=None)


class DraftProposer:
    """Keeps, per running target sequence, a shadow sequence in the draft model's KV cache: the
    target's tokens (its computed prefix survives across steps up to the first rejected draft)
    plus this step's drafts. `propose` catches every shadow up in one packed forward, then runs
    k - 1 batched greedy decode passes. A sequence whose draft blocks do not fit gets no drafts."""

    def __init__(
        self,
        spec: SpeculativeConfig,
        config: EngineConfig,
        vocab_size: int,
        max_model_len: int,
        num_blocks: int,
    ) -> None:
        assert spec.model is not None
        self.model_config = ModelConfig.from_path(spec.model)
        if self.model_config.vocab_size > vocab_size:
            raise ValueError(
                f"speculative_config model has {self.model_config.vocab_size} tokens, more than "
                f"the target's {vocab_size}: it must share the target's tokenizer"
            )
        self.max_len = min(max_model_len, self.model_config.max_position_embeddings)
        draft_config = replace(
            config,
            model=spec.model,
            quantization=None,
            num_kv_blocks=num_blocks,
            enable_prefix_caching=False,
            enforce_eager=True,
            speculative_config=None,
        )
        self.runner = ModelRunner(draft_config, self.model_config, self.max_len)
        self.kv = KVCacheManager(self.runner.num_blocks, config.block_size, enable_caching=False)
        self.shadows: dict[str, Request] = {}
        self.known: dict[str, int] = {}  # target tokens the shadow had at its last proposal

    def forget(self, keep: set[str]) -> None:
        """Free the draft KV of sequences no longer running (finished, aborted, preempted)."""
        for rid in [r for r in self.shadows if r not in keep]:
            self._drop(rid)

    def _drop(self, rid: str) -> None:
        shadow = self.shadows.pop(rid, None)
        if shadow is not None:
            self.kv.free(shadow)
        self.known.pop(rid, None)

    def propose(self, wants: list[tuple[Request, int]]) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in wants]
        live: list[tuple[int, Request, int]] = []  # (index in wants, shadow, k)
        step = SchedulerOutput()
        for i, (req, k) in enumerate(wants):
            k = min(k, self.max_len - req.num_tokens)
            shadow = self._sync(req)
            num_new = shadow.num_tokens - shadow.num_computed_tokens
            if k <= 0 or self.kv.allocate_slots(shadow, num_new + k - 1) is None:
                self._drop(req.request_id)  # recomputed from scratch once blocks free up
                continue
            live.append((i, shadow, k))
            step.scheduled.append(self._scheduled(shadow, num_new))
        for j in range(max((k for _, _, k in live), default=0)):
            if j:
                step = SchedulerOutput([self._scheduled(s, 1) for _, s, k in live if k > j])
            out = self.runner.execute(step)
            for s in step.scheduled:
                s.req.num_computed_tokens += s.num_new_tokens
                s.req.all_token_ids.append(out.sampled[s.req.request_id])
        for i, shadow, k in live:
            drafts[i] = shadow.all_token_ids[self.known[shadow.request_id] :][:k]
        return drafts

    def _sync(self, req: Request) -> Request:
        """The shadow of `req` holding the target's tokens now; its computed prefix is cut at the
        first token that differs (a rejected draft), and always leaves the last token to compute."""
        rid = req.request_id
        shadow = self.shadows.get(rid)
        if shadow is None:
            shadow = self.shadows[rid] = Request(rid, rid, 0, [], GREEDY, None, 0)
            self.known[rid] = 0
        old, same = shadow.all_token_ids, self.known[rid]
        new = req.all_token_ids
        while same < min(len(old), len(new)) and old[same] == new[same]:
            same += 1
        shadow.all_token_ids = list(new)
        shadow.num_computed_tokens = min(shadow.num_computed_tokens, same, len(new) - 1)
        self.known[rid] = len(new)
        return shadow

    def _scheduled(self, shadow: Request, num_new: int) -> ScheduledRequest:
        return ScheduledRequest(
            shadow, shadow.num_computed_tokens, num_new, self.kv.block_ids(shadow.request_id)
        )
