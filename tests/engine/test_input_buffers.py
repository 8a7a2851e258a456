"""`InputBuffers`: a step's inputs written into one preallocated buffer equal the inputs spelled
out from first principles (token at each position, slot = block * size + offset), padding rows
touch only the scratch block, and a bucket's regions keep their addresses (what a CUDA graph
replays from)."""

import random
from types import SimpleNamespace

import torch

from herd.engine.input_buffers import InputBuffers
from herd.engine.scheduler import ScheduledRequest

BS, SCRATCH = 4, 99


def _batch(rng: random.Random, decodes: int, prefills: int) -> list[ScheduledRequest]:
    free = rng.sample(range(SCRATCH), SCRATCH)
    items = []
    for i in range(decodes + prefills):
        total = rng.randrange(2, 40)
        start = total - 1 if i < decodes else rng.randrange(0, total - 1)
        req = SimpleNamespace(
            request_id=str(i), all_token_ids=[rng.randrange(1000) for _ in range(total)]
        )
        blocks = [free.pop() for _ in range(-(-total // BS))]
        items.append(ScheduledRequest(req, start, total - start, blocks))
    return items


def _expected(items):
    ids, pos, slots = [], [], []
    for s in items:
        for p in range(s.start, s.start + s.num_new_tokens):
            ids.append(s.req.all_token_ids[p])
            pos.append(p)
            slots.append(s.block_ids[p // BS] * BS + p % BS)
    return ids, pos, slots


def _buffers() -> InputBuffers:
    return InputBuffers(256, 16, 11, BS, SCRATCH, torch.device("cpu"))


def test_a_mixed_step_matches_its_inputs_spelled_out():
    rng, bufs = random.Random(0), _buffers()
    for _ in range(20):
        items = _batch(rng, rng.randrange(0, 6), rng.randrange(0, 4))
        if not items:
            continue
        step = bufs.prepare(items)
        ids, pos, slots = _expected(items)
        assert step.input_ids.tolist() == ids
        assert step.positions.tolist() == pos
        assert step.slot_mapping.tolist() == slots
        nd = step.num_decodes
        lens = [s.start + s.num_new_tokens for s in items]
        assert step.seq_lens.tolist() == lens == step.seq_lens_list
        for row, s in zip(step.decode_table.tolist() if nd else [], items, strict=False):
            assert row[: len(s.block_ids)] == s.block_ids
            assert set(row[len(s.block_ids) :]) <= {SCRATCH}
        for t, s in zip(step.prefill_tables, items[nd:], strict=True):
            assert t.tolist() == s.block_ids[: -(-(s.start + s.num_new_tokens) // BS)]


def test_padding_rows_touch_only_the_scratch_block():
    items = _batch(random.Random(1), 3, 0)
    step = _buffers().prepare(items, pad_to=8, full_width=True)
    assert step.num_rows == 3 and len(step.input_ids) == 8
    assert step.slot_mapping[3:].tolist() == [SCRATCH * BS] * 5
    assert step.decode_table.shape == (8, 11)
    assert (step.decode_table[3:] == SCRATCH).all()
    assert step.seq_lens[3:].tolist() == [1] * 5
    assert step.metadata().decode_seq_lens.tolist() == step.seq_lens.tolist()


def test_a_bucket_keeps_its_addresses_across_steps():
    rng, bufs = random.Random(2), _buffers()
    first = bufs.prepare(_batch(rng, 2, 0), pad_to=4, full_width=True)
    ptrs = [t.data_ptr() for t in (first.input_ids, first.positions, first.slot_mapping,
                                   first.seq_lens, first.decode_table)]  # fmt: skip
    second = _batch(rng, 4, 0)
    again = bufs.prepare(second, pad_to=4, full_width=True)
    assert again.input_ids.tolist() == _expected(second)[0]  # new contents, same places
    assert ptrs == [t.data_ptr() for t in (again.input_ids, again.positions, again.slot_mapping,
                                           again.seq_lens, again.decode_table)]  # fmt: skip
