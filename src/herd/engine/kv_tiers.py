"""`KVTiers`: which prefix-cache blocks live in the tiers below the device pool (host memory,
then disk), by chained block hash, least recently used first out. A cached block the pool evicts
is offered here (its copy-out planned before the step that reuses it); a prefix lookup that misses
on the device continues here, and hits are copied back into fresh device blocks. It plans copies
as plain `KVCopy` commands; `TierStorage` runs them."""

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from herd.engine.block_pool import BlockHash, BlockPool, KVBlock
from herd.engine.kv_tier_storage import (
    DEVICE,
    KVCopy,
    TierSpec,
    TierStorage,
    kv_block_bytes,
    tier_specs,
)
from herd.engine.swap_policy import CopyCost, SwapPolicy

if TYPE_CHECKING:
    import torch

    from herd.engine.config import EngineConfig


@dataclass
class TierEntry:
    """Where one block lives below the pool, with what it was computed from (parent hash,
    tokens) so a hash hit is checked against the real tokens, as in the pool."""

    tier: int  # index into KVTiers.tiers
    slot: int
    parent: BlockHash | None
    tokens: tuple[int, ...]


class _Tier:
    """One tier's slots: free ones and an LRU of the occupied ones, plus its counters."""

    def __init__(self, spec: TierSpec) -> None:
        self.name = spec.name
        self.num_slots = spec.num_slots
        self.free = list(range(spec.num_slots - 1, -1, -1))
        self.lru: OrderedDict[BlockHash, int] = OrderedDict()  # oldest first
        self.hits = 0  # blocks restored from here into the pool
        self.bytes_in = 0  # written into this tier (from the pool or the tier above)
        self.bytes_out = 0  # read out of it (into the pool or the tier below)
        self.dropped = 0  # blocks that left the last tier for good

    def stats(self, block_bytes: int) -> dict[str, int]:
        used = len(self.lru)
        return {
            "used_blocks": used,
            "total_blocks": self.num_slots,
            "used_bytes": used * block_bytes,
            "total_bytes": self.num_slots * block_bytes,
            "hits": self.hits,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "dropped": self.dropped,
        }


class KVTiers:
    """The tiers' index: block hash -> (tier, slot), each tier an LRU; a block the full upper
    tier pushes out moves one tier down, the last tier drops it. Promises: every copy it plans is
    appended to `copies` in the order it must run; a slot being restored is never reused before
    its copy is planned (pinned); a hit is checked against tokens and parent."""

    def __init__(self, specs: list[TierSpec], block_bytes: int, policy: SwapPolicy) -> None:
        self.tiers = [_Tier(s) for s in specs]
        self.block_bytes = block_bytes
        self.policy = policy
        self.entries: dict[BlockHash, TierEntry] = {}
        self.copies: list[KVCopy] = []
        self._pinned: set[BlockHash] = set()

    def take_copies(self) -> list[KVCopy]:
        """The commands planned since the last call, for the step about to run."""
        copies, self.copies = self.copies, []
        return copies

    def offer(self, block: KVBlock) -> None:
        """The pool is about to reuse `block` (a cached one): keep its contents in the top tier."""
        h = block.block_hash
        entry = self.entries.get(h)
        if entry is not None:  # restored earlier and unchanged since: nothing to copy
            self.tiers[entry.tier].lru.move_to_end(h)
            return
        slot = self._free_slot(0)
        if slot is not None:
            self._place(h, 0, slot, block.parent_hash, block.token_ids, (DEVICE, block.block_id))

    def find(self, h: BlockHash, parent: BlockHash | None, tokens: tuple) -> TierEntry | None:
        entry = self.entries.get(h)
        if entry is None or entry.parent != parent or entry.tokens != tokens:
            return None
        return entry

    def restore(
        self,
        pool: BlockPool,
        hashes: list[BlockHash],
        tokens_of: Callable[[int], tuple[int, ...]],
        device_hits: list[KVBlock],
        max_blocks: int,
    ) -> list[KVBlock]:
        """Continue a prefix lookup past the device hits: the following blocks found in the
        tiers are copied into fresh device blocks (cached under their hashes) when the policy
        finds that cheaper than recomputing them; returns those blocks, unreferenced."""
        start = len(device_hits)
        found: list[tuple[BlockHash, TierEntry]] = []
        for i in range(start, max_blocks):
            entry = self.find(hashes[i], hashes[i - 1] if i else None, tokens_of(i))
            if entry is None:
                break
            found.append((hashes[i], entry))
        # Room: free blocks not already promised to the device hits, one left for new tokens.
        room = pool.num_free_blocks - sum(1 for b in device_hits if b.ref_cnt == 0) - 1
        found = found[: max(0, room)]
        if not found:
            return []
        per_tier: dict[str, int] = {}
        for _, entry in found:
            name = self.tiers[entry.tier].name
            per_tier[name] = per_tier.get(name, 0) + 1
        if not self.policy.should_restore(per_tier):
            return []
        return self._copy_in(pool, found, device_hits, start)

    def _copy_in(
        self,
        pool: BlockPool,
        found: list[tuple[BlockHash, TierEntry]],
        device_hits: list[KVBlock],
        start: int,
    ) -> list[KVBlock]:
        self._pinned = {h for h, _ in found}
        pool.touch(device_hits)  # so taking new blocks cannot evict them
        try:
            # Evictions made room for this may offer blocks to the tiers: pinned slots stay.
            new = pool.get_new_blocks(len(found))
        finally:
            pool.free_blocks(list(reversed(device_hits)))
            self._pinned = set()
        parent = None if start == 0 else found[0][1].parent
        for (h, entry), block in zip(found, new, strict=True):
            tier = self.tiers[entry.tier]
            self.copies.append((tier.name, entry.slot, DEVICE, block.block_id))
            tier.lru.move_to_end(h)
            tier.hits += 1
            tier.bytes_out += self.block_bytes
            pool.cache_block(block, h, parent, entry.tokens)
            parent = h
        pool.free_blocks(list(reversed(new)))  # referenced again by allocate_slots
        return new

    def _free_slot(self, t: int) -> int | None:
        """A slot of tier `t`, pushing its least recently used unpinned block one tier down
        (or out) when it is full; None when every block there is pinned."""
        tier = self.tiers[t]
        if tier.free:
            return tier.free.pop()
        victim = next((h for h in tier.lru if h not in self._pinned), None)
        if victim is None:
            return None
        slot = tier.lru.pop(victim)
        entry = self.entries.pop(victim)
        lower = self._free_slot(t + 1) if t + 1 < len(self.tiers) else None
        if lower is None:
            tier.dropped += 1
        else:  # planned before the caller's write into `slot`: it reads the old contents
            self._place(victim, t + 1, lower, entry.parent, entry.tokens, (tier.name, slot))
        return slot

    def _place(
        self,
        h: BlockHash,
        t: int,
        slot: int,
        parent: BlockHash | None,
        tokens: tuple,
        src: tuple[str, int],
    ) -> None:
        tier = self.tiers[t]
        self.copies.append((src[0], src[1], tier.name, slot))
        self.entries[h] = TierEntry(t, slot, parent, tokens)
        tier.lru[h] = slot
        tier.bytes_in += self.block_bytes
        if src[0] != DEVICE:
            self.tiers[t - 1].bytes_out += self.block_bytes

    def stats(self) -> dict:
        """Per tier: usage, hits, bytes in and out; plus the policy's restore / recompute counts."""
        out: dict = {t.name: t.stats(self.block_bytes) for t in self.tiers}
        out["restored_blocks"] = self.policy.restored_blocks
        out["recomputed_blocks"] = self.policy.recomputed_blocks
        return out


def build_kv_tiers(
    config: "EngineConfig", kv_cache: "torch.Tensor", scratch_block: int
) -> tuple[KVTiers, TierStorage] | None:
    """The configured tiers (None when none is): storage next to the pool, the index for the
    KV cache manager, and a swap policy seeded with copy costs measured now."""
    storage = build_tier_storage(config, kv_cache)
    if storage is None:
        return None
    policy = SwapPolicy(config.block_size, config.kv_swap_policy)
    for tier, (latency, per_block) in storage.measure(kv_cache, scratch_block).items():
        policy.copy[tier] = CopyCost(latency, per_block)
    return KVTiers(storage.specs, storage.block_bytes, policy), storage


def build_tier_storage(config: "EngineConfig", kv_cache: "torch.Tensor") -> TierStorage | None:
    """The configured tiers' storage beside this rank's pool (None when none is configured).
    Under tensor parallelism every rank builds its own, for its shard of the KV heads: the
    shards are the same size, so the slot counts, and so every `KVCopy`, agree; the byte
    settings are per rank."""
    if not config.kv_tiers_enabled:
        return None
    specs = tier_specs(
        config.kv_offload_bytes, config.kv_disk_path, config.kv_disk_bytes, kv_block_bytes(kv_cache)
    )
    return TierStorage(specs, kv_cache)


def run_copies(
    tiers: KVTiers, storage: TierStorage, copies: list[KVCopy], kv_cache: "torch.Tensor"
) -> None:
    """Run one step's copies (before its forward pass) and teach the policy their times."""
    for tier, (blocks, seconds) in storage.run(copies, kv_cache).items():
        tiers.policy.observe_restore(tier, blocks, seconds)
