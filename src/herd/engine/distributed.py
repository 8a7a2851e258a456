"""Tensor parallelism across processes, rank 0's side: the engine's process starts one worker
process per other rank (`herd.engine.tp_worker`), joins them in a torch.distributed group (NCCL
on GPUs, gloo on CPU), sends each step to them as plain data, and turns a rank that dies into a
`TensorParallelError` instead of a hang.
"""

import logging
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from multiprocessing.connection import wait

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from herd.engine.config import EngineConfig
from herd.engine.runner import resolve_device
from herd.engine.tp_worker import WorkerSpec, run_worker
from herd.model.config import ModelConfig
from herd.model.parallel import Shard

log = logging.getLogger(__name__)

# A collective that waits longer fails (a rank that hangs rather than dies); a dead rank is
# noticed at once on gloo (its sockets close). Generous: one step on a loaded CPU is seconds.
TIMEOUT_S = float(os.environ.get("HERD_TP_TIMEOUT_S", "600"))
START_TIMEOUT_S = 300.0  # spawning a worker imports torch and herd


class TensorParallelError(RuntimeError):
    """A tensor-parallel rank died or a collective failed: the engine cannot go on."""


class TensorParallel:
    """Rank 0's handle on the worker ranks: `shard` (this process's slice), `step` (send the
    step's plain inputs, run rank 0's own forward and sampling, release the workers),
    `send_copies` (a step's KV tier copies, for every rank's shard), `close`.
    Promises: a dead or failed rank surfaces as `TensorParallelError` from `step` (every step
    after it too), never a hang past `TIMEOUT_S`; workers never outlive `close` or rank 0."""

    def __init__(self, config: EngineConfig, model_config: ModelConfig, max_model_len: int):
        size = config.tensor_parallel_size
        Shard(0, size).check(model_config)
        if dist.is_initialized():
            raise RuntimeError("one tensor-parallel engine per process: close the other first")
        cuda = resolve_device(config.device).type == "cuda"
        if cuda and torch.cuda.device_count() < size:
            raise ValueError(f"tensor_parallel_size {size} needs {size} GPUs")
        devices = [f"cuda:{r}" if cuda else "cpu" for r in range(size)]
        # Ranks share the CPU: each takes its share of the threads (1 each on 2 cores).
        threads = 0 if cuda else max(1, torch.get_num_threads() // size)
        self._dir = tempfile.mkdtemp(prefix="herd-tp-")
        init = f"file://{os.path.join(self._dir, 'store')}"  # rendezvous in a file: no port
        backend = "nccl" if cuda else "gloo"
        specs = [
            WorkerSpec(
                r, size, config, max_model_len, init, backend, devices[r], threads, TIMEOUT_S
            )
            for r in range(1, size)
        ]
        self.workers, self._conns = _spawn(specs)
        self._finalizer = weakref.finalize(self, _close, self.workers, self._conns, self._dir)
        self.broken: str | None = None
        self.on_death: Callable[[str], None] | None = None  # told when a rank dies (a server)
        self._closing = False
        self._threads_before = torch.get_num_threads()
        self._await_workers()
        if threads:
            torch.set_num_threads(threads)
        if cuda:
            torch.cuda.set_device(devices[0])
        timeout = timedelta(seconds=TIMEOUT_S)
        dist.init_process_group(backend, init_method=init, rank=0, world_size=size, timeout=timeout)
        self.shard = Shard(0, size, devices[0])
        threading.Thread(target=self._watch, name="herd-tp-watch", daemon=True).start()
        log.info(
            "tensor parallel: %d ranks over %s (%s), worker pids %s",
            size,
            backend,
            f"{threads} torch thread(s) each" if threads else ", ".join(devices),
            [p.pid for p in self.workers],
        )

    def _await_workers(self) -> None:
        """Each worker says it is joining the group; one that dies first fails the start now
        rather than leaving rank 0 waiting for it in the rendezvous."""
        for rank, (proc, conn) in enumerate(zip(self.workers, self._conns, strict=True), 1):
            if not wait([conn, proc.sentinel], START_TIMEOUT_S) or not conn.poll():
                self.close()
                raise TensorParallelError(f"tensor-parallel rank {rank} failed to start")
            conn.recv()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Any failure inside (a collective, a pipe, rank 0's own step) leaves the ranks out of
        step: the group is broken from then on, and the error names a dead rank if there is one."""
        if self.broken is not None:
            raise TensorParallelError(self.broken)
        try:
            yield
        except Exception as exc:
            self.broken = self._diagnose(exc)
            log.error("%s", self.broken)
            raise TensorParallelError(self.broken) from exc

    def step(self, items: list, execute: Callable[[list], object]) -> object:
        """Runs one step on every rank: the plain inputs to each worker, then rank 0's
        `execute(items)` (forward, logits gathered here, sampling), then the end of the step."""
        with self.guard():
            self._check_alive()
            plain = [s.plain() for s in items]
            for conn in self._conns:
                conn.send(("step", plain))
            out = execute(items)
            self.shard.end_step()
            return out

    def send_copies(self, copies: list) -> None:
        """Has every worker run this step's KV tier copies (`KVCopy`, plain tuples) on its own
        shard and tier storage, before the step itself (the pipe keeps the order)."""
        with self.guard():
            self._check_alive()
            for conn in self._conns:
                conn.send(("kv_copies", copies))

    def _watch(self) -> None:
        """Says at once when a rank dies, even while the engine is idle; the next step fails
        without touching it."""
        ready = wait([p.sentinel for p in self.workers])
        if not self._closing:
            for proc in self.workers:  # its pipe closes before it can be reaped: wait for that
                if proc.sentinel in ready:
                    proc.join(timeout=5.0)
            self.broken = self._dead() or "a tensor-parallel rank exited"
            log.error("%s: the engine cannot run another step", self.broken)
            if self.on_death is not None:
                self.on_death(self.broken)

    def _check_alive(self) -> None:
        dead = self._dead()
        if dead:
            raise TensorParallelError(dead)

    def _dead(self) -> str:
        return "; ".join(
            f"tensor-parallel rank {r} (pid {p.pid}) exited with code {p.exitcode}"
            for r, p in enumerate(self.workers, 1)
            if not p.is_alive()
        )

    def _diagnose(self, exc: BaseException) -> str:
        if isinstance(exc, TensorParallelError):
            return str(exc)
        for proc in self.workers:  # a rank killed mid-step: give its exit a moment to be seen
            proc.join(timeout=1.0)
        dead = self._dead()
        return f"{dead} (rank 0 saw {exc!r:.300})" if dead else f"tensor-parallel failure: {exc!r}"

    def close(self) -> None:
        """Stops the workers (asking first, then killing) and leaves the process group (also
        done when the handle is collected or the process exits)."""
        self._closing = True
        self._finalizer()
        torch.set_num_threads(self._threads_before)


def _spawn(specs: list[WorkerSpec]) -> tuple[list, list]:
    """One daemon process per worker rank (spawned: CUDA and fork do not mix) and our end of
    its pipe."""
    ctx = mp.get_context("spawn")
    workers, conns = [], []
    for spec in specs:
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(
            target=run_worker, args=(spec, theirs), daemon=True, name=f"herd-tp-rank{spec.rank}"
        )
        proc.start()
        theirs.close()
        workers.append(proc)
        conns.append(ours)
    return workers, conns


def _close(workers: list, conns: list, directory: str) -> None:
    for conn in conns:
        try:
            conn.send(None)  # "no more steps"
        except OSError:
            pass  # already gone
    for proc in workers:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for conn in conns:
        conn.close()
    shutil.rmtree(directory, ignore_errors=True)
    if dist.is_initialized():
        dist.destroy_process_group()


def start_tensor_parallel(
    config: EngineConfig, model_config: ModelConfig, max_model_len: int
) -> TensorParallel | None:
    """The worker ranks for `config.tensor_parallel_size` > 1; None for one rank."""
    if config.tensor_parallel_size == 1:
        return None
    return TensorParallel(config, model_config, max_model_len)
