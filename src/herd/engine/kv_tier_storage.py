"""`TierStorage`: the bytes of the KV tiers below the device pool — a host-memory tensor (pinned
when the pool is on a GPU) and a memory-mapped file on disk, one block per slot — and the
execution of the copy commands (`KVCopy`) that `KVTiers` plans between them and the pool."""

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

DEVICE = "device"  # the KV pool itself: a command's index is then a block id
HOST, DISK = "host", "disk"
# Same-size integer views: numpy has no bf16 / fp8, and a copy is bytes anyway.
_INT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# (source tier, source index, destination tier, destination index): plain data, so a step can
# carry it to every tensor-parallel rank, each of which runs it on its own shard of the heads.
KVCopy = tuple[str, int, str, int]


@dataclass(frozen=True)
class TierSpec:
    """One tier below the device pool: its name (host or disk), how many blocks it holds, and
    for disk the directory its file goes in."""

    name: str
    num_slots: int
    directory: str | None = None


def tier_specs(
    offload_bytes: float | None,
    disk_path: str | None,
    disk_bytes: float | None,
    bytes_per_block: int,
) -> list[TierSpec]:
    """The configured tiers, fastest first; a tier too small for one block is a `ValueError`."""
    specs = []
    for name, size, directory in ((HOST, offload_bytes, None), (DISK, disk_bytes, disk_path)):
        if not size:
            continue
        slots = int(size // bytes_per_block)
        if slots < 1:
            flag = "kv_offload_bytes" if name == HOST else "kv_disk_bytes"
            raise ValueError(
                f"{flag} {int(size)} holds no KV block ({bytes_per_block} bytes per block)"
            )
        specs.append(TierSpec(name, slots, directory))
    return specs


def kv_block_bytes(kv_cache: torch.Tensor) -> int:
    """Bytes of one pool block across every layer, K and V (what a tier slot holds)."""
    return kv_cache.dtype.itemsize * kv_cache[:, :, 0].numel()


class TierStorage:
    """Owns the tier tensors (host: a CPU tensor, pinned on CUDA; disk: a file of exactly
    `num_slots` blocks, mapped with `torch.from_file`, deleted when the engine goes) and runs
    `KVCopy` commands in order against the pool. Promises: commands run in the order given, so
    a slot read and then reused within one step, or a block copied out before a step writes
    into it, are both safe."""

    def __init__(self, specs: list[TierSpec], kv_cache: torch.Tensor) -> None:
        shape = (*kv_cache.shape[:2], *kv_cache.shape[3:])  # layers, K/V, block, heads, dim
        self.specs = specs
        self.block_bytes = kv_block_bytes(kv_cache)
        self.stores: dict[str, torch.Tensor] = {}
        self._files = []  # keeps disk files open (and so alive) as long as the storage
        for spec in specs:
            if spec.name == DISK:
                raw = self._disk(spec)
            else:
                pin = kv_cache.is_cuda
                raw = torch.empty(
                    spec.num_slots * self.block_bytes, dtype=torch.uint8, pin_memory=pin
                )
            self.stores[spec.name] = raw.view(kv_cache.dtype).view(spec.num_slots, *shape)
            log.info(
                "KV %s tier: %d blocks, %.1f MiB",
                spec.name,
                spec.num_slots,
                spec.num_slots * self.block_bytes / 2**20,
            )

    def _disk(self, spec: TierSpec) -> torch.Tensor:
        directory = Path(spec.directory or ".")
        directory.mkdir(parents=True, exist_ok=True)
        f = tempfile.NamedTemporaryFile(dir=directory, prefix="herd-kv-", suffix=".bin")
        size = spec.num_slots * self.block_bytes
        f.truncate(size)  # sparse: disk is used as blocks are written
        self._files.append(f)
        self.disk_file = Path(f.name)
        return torch.from_file(f.name, shared=True, size=size, dtype=torch.uint8)

    def _block(self, tier: str, index: int, kv_cache: torch.Tensor) -> torch.Tensor:
        if tier == DEVICE:
            return kv_cache[:, :, index]
        return self.stores[tier][index]

    def _copy(self, copy: KVCopy, kv_cache: torch.Tensor) -> None:
        src_tier, src, dst_tier, dst = copy
        source, target = self._block(src_tier, src, kv_cache), self._block(dst_tier, dst, kv_cache)
        if kv_cache.is_cuda:
            target.copy_(source, non_blocking=True)
            return
        # On CPU a torch copy of one block goes through the OpenMP pool; on a loaded machine
        # its wake-ups made a 368 KB block take ~20 ms (2 threads) against ~0.15 ms in one
        # thread (benchmarks/RESULTS.md): numpy copies in the calling thread.
        view = _INT_VIEWS[kv_cache.dtype.itemsize]
        np.copyto(target.view(view).numpy(), source.view(view).numpy())

    def run(self, copies: list[KVCopy], kv_cache: torch.Tensor) -> dict[str, tuple[int, float]]:
        """Run the commands in order; returns, per tier read back into the pool, (blocks,
        seconds) of those restores, which the swap policy learns from. On a GPU the copies of
        a run between the same two tiers are queued asynchronously and waited for once."""
        restores: dict[str, tuple[int, float]] = {}
        cuda = kv_cache.is_cuda
        i = 0
        while i < len(copies):
            src_tier, _, dst_tier, _ = copies[i]
            t0, first = time.perf_counter(), i
            while i < len(copies) and copies[i][0] == src_tier and copies[i][2] == dst_tier:
                self._copy(copies[i], kv_cache)
                i += 1
            if cuda:  # a host slot written here may be read by the CPU in the next run
                torch.cuda.synchronize(kv_cache.device)
            if dst_tier == DEVICE:
                n, s = restores.get(src_tier, (0, 0.0))
                restores[src_tier] = (n + i - first, s + time.perf_counter() - t0)
        return restores

    def measure(self, kv_cache: torch.Tensor, scratch_block: int) -> dict[str, tuple[float, float]]:
        """Per tier, (latency s, per-block s) of restoring blocks, measured now by copying the
        pool's scratch block out and back (1 block, then 8): the swap policy's first estimate."""
        out = {}
        for tier, store in self.stores.items():
            n = min(8, store.shape[0])
            times = []
            for count in (1, n):
                copies = [(DEVICE, scratch_block, tier, i) for i in range(count)]
                back = [(tier, i, DEVICE, scratch_block) for i in range(count)]
                self.run(copies, kv_cache)
                t0 = time.perf_counter()
                self.run(back, kv_cache)
                times.append(time.perf_counter() - t0)
            per_block = max(0.0, (times[1] - times[0]) / max(1, n - 1))
            out[tier] = (max(0.0, times[0] - per_block), per_block)
        return out
