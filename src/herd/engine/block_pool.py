"""`BlockPool`: owns the KV blocks, their ref counts, the LRU queue of free blocks and the
hash -> block map of the prefix cache.

A free block may still hold a cached prefix: it stays findable by hash until it is reused.
Allocation takes from the front of the free queue (least recently freed first); freed blocks go
to the back, so callers free a request's blocks tail first to make chain tails evict first.
"""

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# (parent block hash, this block's token ids, extra identity) -> hashed to an int key.
BlockHash = int


@dataclass(eq=False)
class KVBlock:
    """One block of the paged KV cache: its id, how many requests hold it, and, once full and
    cached, its chained hash, parent hash and tokens (so a hash hit can be checked against the
    real tokens)."""

    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None
    token_ids: tuple[int, ...] = ()  # the tokens a cached block holds: guards hash collisions
    parent_hash: BlockHash | None = None


def hash_block(parent: BlockHash | None, token_ids: tuple[int, ...], extra: str) -> BlockHash:
    return hash((parent, token_ids, extra))


class BlockPool:
    """Owns every KV block: reference counts, the LRU queue of free blocks (cached ones evictable,
    least recently used first, O(1) touch) and the hash -> block map of the prefix cache.
    Promises that a block is handed out only when its ref count is zero and that evicting a
    block removes its hash."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.enable_caching = enable_caching
        self.free_queue: OrderedDict[int, KVBlock] = OrderedDict(
            (b.block_id, b) for b in self.blocks
        )
        self.cached: dict[BlockHash, KVBlock] = {}
        # KV tiers (herd.engine.kv_tiers): told of a cached block before it is reused.
        self.on_evict: Callable[[KVBlock], None] | None = None

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / max(1, self.num_blocks)

    def get_cached_block(
        self, block_hash: BlockHash, parent: BlockHash | None, token_ids: tuple[int, ...]
    ) -> KVBlock | None:
        block = self.cached.get(block_hash)
        if block is None or block.token_ids != token_ids or block.parent_hash != parent:
            return None
        return block

    def get_new_blocks(self, n: int) -> list[KVBlock]:
        if n > self.num_free_blocks:
            raise ValueError(f"cannot allocate {n} blocks, {self.num_free_blocks} free")
        out = []
        for _ in range(n):
            _, block = self.free_queue.popitem(last=False)
            self._evict(block)
            block.ref_cnt = 1
            out.append(block)
        return out

    def touch(self, blocks: list[KVBlock]) -> None:
        """Take a reference on blocks found in the prefix cache (or shared with a sibling)."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self.free_queue[block.block_id]
            block.ref_cnt += 1

    def free_blocks(self, blocks: list[KVBlock]) -> None:
        """Drop one reference each, in the given order (callers pass tail first)."""
        for block in blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if not self.enable_caching:
                    self._evict(block)
                self.free_queue[block.block_id] = block

    def cache_block(
        self, block: KVBlock, block_hash: BlockHash, parent: BlockHash | None, tokens: tuple
    ) -> None:
        if not self.enable_caching or block.block_hash is not None:
            return
        block.block_hash, block.parent_hash, block.token_ids = block_hash, parent, tokens
        # First writer wins: an identical block computed twice stays unshared (harmless).
        self.cached.setdefault(block_hash, block)

    def uncache(self, block: KVBlock) -> None:
        """Forget a block's hash without offering it anywhere: its contents were never computed
        (its request was preempted in the step that was to compute them)."""
        self._evict(block, offer=False)

    def _evict(self, block: KVBlock, offer: bool = True) -> None:
        if block.block_hash is not None and self.cached.get(block.block_hash) is block:
            if offer and self.on_evict is not None:
                self.on_evict(block)
            del self.cached[block.block_hash]
        block.block_hash, block.parent_hash, block.token_ids = None, None, ()
