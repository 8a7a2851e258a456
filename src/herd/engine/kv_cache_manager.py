"""`KVCacheManager`: the per-request view of the block pool — which blocks a request holds,
how much of its prompt the prefix cache already has, slots for new tokens, and freeing."""

from herd.engine.block_pool import BlockHash, BlockPool, KVBlock, hash_block
from herd.engine.kv_tiers import KVTiers
from herd.engine.request import Request


class KVCacheManager:
    """The KV cache as requests see it: the blocks each request holds, prefix-cache lookups over
    chained block hashes (always leaving at least one token to compute), `allocate_slots` that
    returns the blocks for a step or None when they do not fit, sharing a prompt's blocks with
    `n` siblings, and freeing tail first so chain tails are evicted first."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_caching: bool,
        identity: str = "",
        tiers: KVTiers | None = None,
    ) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.identity = identity  # model identity: blocks of another model never match
        self.pool = BlockPool(num_blocks, enable_caching)
        self.tiers = tiers  # host / disk tiers below the pool (kv_offload_bytes, kv_disk_*)
        if tiers is not None:
            self.pool.on_evict = tiers.offer
        self.req_blocks: dict[str, list[KVBlock]] = {}
        self.req_hashes: dict[str, list[BlockHash]] = {}
        self.req_cached: dict[str, int] = {}  # leading blocks already offered to the cache
        self.queries = 0  # prompt tokens looked up in the prefix cache
        self.hits = 0  # of those, tokens found

    def blocks_of(self, request_id: str) -> list[KVBlock]:
        return self.req_blocks.get(request_id, [])

    def block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.blocks_of(request_id)]

    def get_computed_blocks(self, req: Request) -> tuple[list[KVBlock], int]:
        """Longest run of the request's full blocks already in the cache (not yet referenced).

        At least one token is always left to compute, so the last step yields logits.
        """
        if not self.enable_caching or req.params.prompt_logprobs is not None:
            return [], 0
        hashes = self._hashes(req)
        max_blocks = (req.num_tokens - 1) // self.block_size
        blocks: list[KVBlock] = []
        parent = None
        for i, h in enumerate(hashes[:max_blocks]):
            block = self.pool.get_cached_block(h, parent, self._block_tokens(req, i))
            if block is None:
                break
            blocks.append(block)
            parent = h
        if self.tiers is not None and len(blocks) < max_blocks:
            tokens_of = lambda i: self._block_tokens(req, i)  # noqa: E731
            blocks += self.tiers.restore(self.pool, hashes, tokens_of, blocks, max_blocks)
        return blocks, len(blocks) * self.block_size

    def record_lookup(self, num_tokens: int, num_hit: int) -> None:
        """Count one admitted request's prefix-cache lookup (not retries that did not fit)."""
        if self.enable_caching:
            self.queries += num_tokens
            self.hits += num_hit

    def allocate_slots(
        self, req: Request, num_new_tokens: int, computed: list[KVBlock] | None = None
    ) -> list[KVBlock] | None:
        """Blocks for `num_new_tokens` more tokens (after `computed` prefix hits), or None when
        they do not fit; nothing changes on None."""
        computed = computed or []
        held = self.req_blocks.setdefault(req.request_id, [])
        num_computed = req.num_computed_tokens + len(computed) * self.block_size
        need = -(-(num_computed + num_new_tokens) // self.block_size) - len(held) - len(computed)
        # Computed blocks sitting in the free queue stop being free once referenced.
        evictable_hits = sum(1 for b in computed if b.ref_cnt == 0)
        if need > self.pool.num_free_blocks - evictable_hits:
            if not held:
                del self.req_blocks[req.request_id]
            return None
        self.pool.touch(computed)
        held.extend(computed)
        held.extend(self.pool.get_new_blocks(max(0, need)))
        self._cache_full_blocks(req, num_computed + num_new_tokens)
        return held

    def share_prefix(self, src: Request, dst: Request, num_tokens: int) -> int:
        """Give `dst` (a sibling with the same prompt) references to `src`'s full blocks that
        cover its first `num_tokens` tokens; returns how many tokens `dst` then has computed."""
        n = min(num_tokens - 1, src.num_computed_tokens) // self.block_size
        shared = self.req_blocks.get(src.request_id, [])[:n]
        self.pool.touch(shared)
        self.req_blocks[dst.request_id] = list(shared)
        self.req_hashes[dst.request_id] = list(self.req_hashes.get(src.request_id, [])[:n])
        return len(shared) * self.block_size

    def free(self, req: Request) -> None:
        blocks = self.req_blocks.pop(req.request_id, [])
        self.req_hashes.pop(req.request_id, None)
        self.req_cached.pop(req.request_id, None)
        # Blocks are cached when allocated; a request preempted before its step ran leaves
        # cached blocks it never computed: no later lookup (or KV tier) may find them.
        for block in blocks[req.num_computed_tokens // self.block_size :]:
            if block.ref_cnt == 1:
                self.pool.uncache(block)
        self.pool.free_blocks(list(reversed(blocks)))

    def _block_tokens(self, req: Request, i: int) -> tuple[int, ...]:
        return tuple(req.all_token_ids[i * self.block_size : (i + 1) * self.block_size])

    def _hashes(self, req: Request) -> list[BlockHash]:
        """Hashes of the request's full blocks, extended incrementally as tokens arrive."""
        hashes = self.req_hashes.setdefault(req.request_id, [])
        for i in range(len(hashes), req.num_tokens // self.block_size):
            parent = hashes[-1] if hashes else None
            hashes.append(hash_block(parent, self._block_tokens(req, i), self.identity))
        return hashes

    def _cache_full_blocks(self, req: Request, num_tokens: int) -> None:
        if not self.enable_caching:
            return
        hashes = self._hashes(req)
        blocks = self.req_blocks[req.request_id]
        # Resume where the last step stopped: long contexts would otherwise rescan every block.
        start = self.req_cached.get(req.request_id, 0)
        end = min(num_tokens // self.block_size, len(hashes))
        for i in range(start, end):
            parent = hashes[i - 1] if i else None
            self.pool.cache_block(blocks[i], hashes[i], parent, self._block_tokens(req, i))
        self.req_cached[req.request_id] = max(start, end)
