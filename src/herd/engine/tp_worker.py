"""Tensor parallelism, a worker rank's side: the process `herd.engine.distributed` spawns for
each rank > 0. It loads its slice of the model and KV cache (and of the KV tiers), then runs every
step and tier copy it is sent (plain data over a pipe) in lockstep with rank 0, until told to
stop or rank 0 goes away.
"""

import logging
from dataclasses import dataclass, replace
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from herd.engine.config import EngineConfig
from herd.engine.kv_tier_storage import TierStorage
from herd.engine.kv_tiers import build_tier_storage
from herd.engine.runner import ModelRunner
from herd.model.config import ModelConfig
from herd.model.parallel import Shard

log = logging.getLogger(__name__)


@dataclass
class WorkerSpec:
    """Everything a worker rank needs to join the group and build its runner (picklable)."""

    rank: int
    size: int
    config: EngineConfig
    max_model_len: int
    init_method: str  # the rendezvous (a file store)
    backend: str  # gloo or nccl
    device: str  # this rank's device
    threads: int  # torch threads on CPU (0: leave as is)
    timeout_s: float


def run_worker(spec: WorkerSpec, conn: Connection) -> None:
    """The worker process: join, load, then follow rank 0 step by step."""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s tp-rank{spec.rank} %(name)s: %(message)s"
    )
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if spec.device.startswith("cuda"):
        torch.cuda.set_device(spec.device)
    conn.send("joining")
    dist.init_process_group(
        spec.backend,
        init_method=spec.init_method,
        rank=spec.rank,
        world_size=spec.size,
        timeout=timedelta(seconds=spec.timeout_s),
    )
    try:
        config = replace(spec.config, device=spec.device)
        model_config = ModelConfig.from_path(config.model)
        shard = Shard(spec.rank, spec.size, spec.device)
        runner = ModelRunner(config, model_config, spec.max_model_len, shard)
        _follow(runner, build_tier_storage(config, runner.kv_cache), conn)
    finally:
        dist.destroy_process_group()


def _follow(runner: ModelRunner, storage: TierStorage | None, conn: Connection) -> None:
    while True:
        try:
            message = conn.recv()  # idle here between steps, however long: no collective waits
        except EOFError:
            log.info("rank 0 is gone; stopping")
            return
        if message is None:
            return
        kind, payload = message
        if kind == "kv_copies":  # this rank's shard of the blocks rank 0 moves between tiers
            storage.run(payload, runner.kv_cache)
            continue
        runner.forward(payload)
        with torch.inference_mode():
            runner.model.serve_logits(runner.dtype)
