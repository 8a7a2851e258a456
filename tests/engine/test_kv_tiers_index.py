"""The tiers' index and the swap policy without a model: LRU order, demotion host -> disk with
its copy planned before the slot is rewritten, pinned slots, restore into fresh pool blocks, and
swap-or-recompute decided by the measured costs."""

import pytest
import torch

from herd.engine.block_pool import BlockPool, hash_block
from herd.engine.kv_tier_storage import DEVICE, TierSpec, TierStorage
from herd.engine.kv_tiers import KVTiers
from herd.engine.swap_policy import CopyCost, SwapPolicy


def cached_chain(pool: BlockPool, n: int) -> list[int]:
    """Cache a chain of n blocks (tokens i) in the pool, free them; returns their hashes."""
    blocks = pool.get_new_blocks(n)
    hashes, parent = [], None
    for i, b in enumerate(blocks):
        h = hash_block(parent, (i,), "")
        pool.cache_block(b, h, parent, (i,))
        hashes.append(h)
        parent = h
    pool.free_blocks(list(reversed(blocks)))
    return hashes


def tiers_over(pool: BlockPool, host: int, disk: int = 0, mode: str = "swap") -> KVTiers:
    specs = [TierSpec("host", host)] + ([TierSpec("disk", disk)] if disk else [])
    tiers = KVTiers(specs, block_bytes=1, policy=SwapPolicy(block_size=1, mode=mode))
    pool.on_evict = tiers.offer
    return tiers


def test_evicted_blocks_go_down_a_tier_and_out_of_the_last():
    pool = BlockPool(4)
    tiers = tiers_over(pool, host=1, disk=1)
    hashes = cached_chain(pool, 3)  # tail first in the free queue: evicted tail first
    pool.get_new_blocks(4)  # reuses the whole pool: three cached blocks evicted
    # Evicted tail first: the chain's head (last out) in host, the next in disk, the tail gone.
    assert [tiers.entries[h].tier if h in tiers.entries else None for h in hashes] == [0, 1, None]
    assert tiers.tiers[1].dropped == 1
    # The demotion out of host slot 0 is planned before the write of the next block into it.
    copies = tiers.take_copies()
    assert copies[:3] == [(DEVICE, 2, "host", 0), ("host", 0, "disk", 0), (DEVICE, 1, "host", 0)]
    assert tiers.take_copies() == []


def test_restore_copies_into_fresh_blocks_and_caches_them():
    pool = BlockPool(6)
    tiers = tiers_over(pool, host=8)
    hashes = cached_chain(pool, 3)
    pool.get_new_blocks(6)
    pool.free_blocks([pool.blocks[i] for i in range(6)])
    tiers.take_copies()
    new = tiers.restore(pool, hashes, lambda i: (i,), [], max_blocks=3)
    assert len(new) == 3 and all(b.ref_cnt == 0 for b in new)
    assert [
        pool.get_cached_block(h, None if i == 0 else hashes[i - 1], (i,))
        for i, h in enumerate(hashes)
    ] == new
    copies = tiers.take_copies()
    assert [(c[0], c[2], c[3]) for c in copies] == [("host", DEVICE, b.block_id) for b in new]
    assert tiers.tiers[0].hits == 3
    # wrong tokens for a hash are a miss, as in the pool
    assert tiers.find(hashes[0], None, (99,)) is None


def test_restore_leaves_room_and_never_evicts_the_device_hits():
    pool = BlockPool(3)
    tiers = tiers_over(pool, host=8)
    hashes = cached_chain(pool, 3)
    pool.get_new_blocks(3)
    pool.free_blocks(pool.blocks)
    # 3 free blocks, one left for new tokens: only two of three tier hits come back
    assert len(tiers.restore(pool, hashes, lambda i: (i,), [], max_blocks=3)) == 2


def test_recompute_mode_restores_nothing():
    pool = BlockPool(4)
    tiers = tiers_over(pool, host=8, mode="recompute")
    hashes = cached_chain(pool, 2)
    pool.get_new_blocks(4)
    pool.free_blocks(pool.blocks)
    assert tiers.restore(pool, hashes, lambda i: (i,), [], max_blocks=2) == []
    assert tiers.policy.recomputed_blocks == 2


def test_auto_policy_compares_measured_costs():
    policy = SwapPolicy(block_size=16, copy={"disk": CopyCost(latency_s=0.01, per_block_s=1e-4)})
    assert policy.should_restore({"disk": 1})  # nothing measured on the recompute side yet
    policy.observe_step(num_tokens=160, seconds=0.016)  # 0.1 ms a token: 1.6 ms a block
    assert policy.token_s == pytest.approx(1e-4)
    # one block: 10.1 ms to copy vs 1.6 ms to recompute; 20 blocks: 12 ms vs 32 ms
    assert not policy.should_restore({"disk": 1})
    assert policy.should_restore({"disk": 20})
    policy.observe_step(num_tokens=1, seconds=1.0)  # a decode step says nothing about prefill
    assert policy.token_s == pytest.approx(1e-4)
    assert (policy.restored_blocks, policy.recomputed_blocks) == (21, 1)


def test_storage_runs_copies_in_order(tmp_path):
    kv = torch.arange(2 * 2 * 4 * 2 * 1 * 3, dtype=torch.float32).view(2, 2, 4, 2, 1, 3)
    storage = TierStorage([TierSpec("host", 1), TierSpec("disk", 2, str(tmp_path))], kv)
    original = kv[:, :, 0].clone()
    # block 0 -> host 0 -> disk 1; block 1 overwrites host 0; disk 1 back into block 2
    storage.run([(DEVICE, 0, "host", 0), ("host", 0, "disk", 1), (DEVICE, 1, "host", 0)], kv)
    restores = storage.run([("disk", 1, DEVICE, 2)], kv)
    assert torch.equal(kv[:, :, 2], original)
    assert torch.equal(storage.stores["host"][0], kv[:, :, 1])
    assert restores["disk"][0] == 1
