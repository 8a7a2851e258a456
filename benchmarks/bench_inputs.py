"""Host cost of building one step's model inputs: the runner's former per-step lists and
`torch.tensor(...)` calls against `InputBuffers.prepare` (one preallocated buffer, numpy fills),
in one process, on a decode batch and on a mixed step. CPU only: on CUDA the new path also
replaces several synchronous host-to-device copies by one asynchronous one, not measured here.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_inputs.py
"""

import random
import statistics
import time
from types import SimpleNamespace

import torch

from herd.engine.attention import AttentionMetadata
from herd.engine.input_buffers import InputBuffers
from herd.engine.scheduler import ScheduledRequest

BS, MAX_LEN = 16, 4096


def batch(decodes: int, prefills: int, chunk: int, seed: int = 0) -> list[ScheduledRequest]:
    rng = random.Random(seed)
    blocks = iter(rng.sample(range(100_000), 100_000))
    items = []
    for i in range(decodes + prefills):
        total = rng.randrange(200, 2000)
        start = total - 1 if i < decodes else total - chunk
        req = SimpleNamespace(
            request_id=str(i), all_token_ids=[rng.randrange(50_000) for _ in range(total)]
        )
        table = [next(blocks) for _ in range(-(-total // BS))]
        items.append(ScheduledRequest(req, start, total - start, table))
    return items


def before(items: list[ScheduledRequest]) -> AttentionMetadata:
    """The runner's input code before InputBuffers (f43230d), device cpu."""
    input_ids, positions, slots = [], [], []
    for s in items:
        input_ids.extend(s.req.all_token_ids[s.start : s.start + s.num_new_tokens])
        pos = range(s.start, s.start + s.num_new_tokens)
        positions.extend(pos)
        slots.extend(s.block_ids[p // BS] * BS + p % BS for p in pos)
    torch.tensor(input_ids), torch.tensor(positions)
    nd = sum(1 for s in items if s.num_new_tokens == 1)
    seq_lens = [s.start + s.num_new_tokens for s in items]
    tables = [s.block_ids for s in items]
    table = lens = None
    if nd:
        width = max(len(t) for t in tables[:nd])
        table = torch.tensor([t + [0] * (width - len(t)) for t in tables[:nd]])
        lens = torch.tensor(seq_lens[:nd])
    return AttentionMetadata(
        torch.tensor(slots), nd, [s.num_new_tokens for s in items], seq_lens,
        [torch.tensor(t[: -(-n // BS)]) for t, n in zip(tables[nd:], seq_lens[nd:], strict=True)],
        table, lens,
    )  # fmt: skip


def after(bufs: InputBuffers, items: list[ScheduledRequest]) -> AttentionMetadata:
    return bufs.prepare(items).metadata()


def median_us(fn, reps: int = 200) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def main() -> None:
    bufs = InputBuffers(8192, 256, MAX_LEN // BS + 1, BS, 99_999, torch.device("cpu"))
    cases = {
        "decode x1": batch(1, 0, 1),
        "decode x64": batch(64, 0, 1),
        "decode x256": batch(256, 0, 1),
        "decode x32 + 2 chunks of 512": batch(32, 2, 512),
    }
    print("| step | before µs | InputBuffers µs | ratio |\n| --- | ---: | ---: | ---: |")
    for name, items in cases.items():
        old = median_us(lambda items=items: before(items))
        new = median_us(lambda items=items: after(bufs, items))
        print(f"| {name} | {old:.0f} | {new:.0f} | {old / new:.2f}x |")


if __name__ == "__main__":
    main()
