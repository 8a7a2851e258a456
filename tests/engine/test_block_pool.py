"""Block-level bookkeeping: exact block ids, prefix hits and eviction order."""

from herd.engine.kv_cache_manager import KVCacheManager
from herd.engine.request import Request
from herd.engine.sampling_params import SamplingParams


def make_req(rid: str, tokens: list[int]) -> Request:
    return Request(rid, rid, 0, tokens, SamplingParams(), None, 16)


def admit(kv: KVCacheManager, req: Request) -> list[int]:
    computed, hit = kv.get_computed_blocks(req)
    blocks = kv.allocate_slots(req, req.num_tokens - hit, computed)
    assert blocks is not None
    req.num_computed_tokens = req.num_tokens
    return [b.block_id for b in blocks]


def test_allocation_takes_lowest_free_ids_first():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_caching=True)
    assert admit(kv, make_req("a", list(range(10)))) == [0, 1, 2]
    assert admit(kv, make_req("b", list(range(100, 105)))) == [3, 4]
    assert kv.pool.num_free_blocks == 3


def test_prefix_hit_reuses_full_blocks_only():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_caching=True)
    admit(kv, make_req("a", list(range(10))))  # blocks 0,1 full, 2 partial
    b = make_req("b", list(range(8)) + [77, 78, 79])
    computed, hit = kv.get_computed_blocks(b)
    assert [x.block_id for x in computed] == [0, 1] and hit == 8
    assert admit(kv, b) == [0, 1, 3]
    assert [kv.pool.blocks[i].ref_cnt for i in (0, 1, 2, 3)] == [2, 2, 1, 1]


def test_last_token_is_always_recomputed():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_caching=True)
    admit(kv, make_req("a", list(range(8))))
    _, hit = kv.get_computed_blocks(make_req("b", list(range(8))))
    assert hit == 4  # block 1 would cover the last token: it is recomputed


def test_freed_blocks_stay_cached_and_evict_lru_tail_first():
    kv = KVCacheManager(num_blocks=6, block_size=2, enable_caching=True)
    a = make_req("a", [1, 2, 3, 4, 5, 6])
    b = make_req("b", [9, 9, 8, 8])
    assert admit(kv, a) == [0, 1, 2]
    assert admit(kv, b) == [3, 4]
    kv.free(a)  # freed tail first: queue is 5, 2, 1, 0
    kv.free(b)  # then 4, 3
    assert list(kv.pool.free_queue) == [5, 2, 1, 0, 4, 3]
    # A new request takes never-used 5, then a's tail block 2 (evicting its hash), then 1.
    c = make_req("c", [7] * 6)
    assert admit(kv, c) == [5, 2, 1]
    # a's first block is still cached; its second was evicted, so the hit stops there.
    _, hit = kv.get_computed_blocks(make_req("a2", [1, 2, 3, 4, 5, 6, 0]))
    assert hit == 2
    # b is still fully cached (except the always-recomputed last block).
    _, hit = kv.get_computed_blocks(make_req("b2", [9, 9, 8, 8, 1]))
    assert hit == 4


def test_allocation_that_does_not_fit_changes_nothing():
    kv = KVCacheManager(num_blocks=3, block_size=2, enable_caching=True)
    admit(kv, make_req("a", [1, 2, 3]))
    big = make_req("big", list(range(10)))
    assert kv.allocate_slots(big, 10) is None
    assert kv.pool.num_free_blocks == 1 and kv.blocks_of("big") == []


def test_no_caching_means_no_hits_and_no_hashes():
    kv = KVCacheManager(num_blocks=4, block_size=2, enable_caching=False)
    a = make_req("a", [1, 2, 3, 4, 5])
    admit(kv, a)
    kv.free(a)
    assert kv.pool.cached == {}
    assert kv.get_computed_blocks(make_req("b", [1, 2, 3, 4, 5])) == ([], 0)


def test_identity_separates_models():
    kv1 = KVCacheManager(num_blocks=4, block_size=2, enable_caching=True, identity="m1")
    a = make_req("a", [1, 2, 3])
    admit(kv1, a)
    key = next(iter(kv1.pool.cached))
    kv2 = KVCacheManager(num_blocks=4, block_size=2, enable_caching=True, identity="m2")
    b = make_req("b", [1, 2, 3])
    assert kv2._hashes(b)[0] != key
