"""`AsyncEngine`: runs `LLMEngine.step()` in one dedicated thread and streams each request's
per-step deltas to the asyncio event loop. The engine is touched only by that thread; the loop
talks to it through a command list (add, abort) applied between steps."""

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from herd.engine.outputs import RequestOutput
from herd.engine.sampling_params import SamplingParams

log = logging.getLogger("herd.server")


class EngineDeadError(RuntimeError):
    """The step loop crashed; every open request was failed with this."""


@dataclass
class _Add:
    request_id: str
    prompt: str | list[int]
    params: SamplingParams
    priority: int
    done: asyncio.Future  # None on success, the exception on refusal


@dataclass
class _Stream:
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    finished: bool = False


class AsyncEngine:
    """The engine client the server uses; `start()` builds the engine (in the loop thread) and
    warms it up, `generate()` yields `RequestOutput` deltas until the request finishes."""

    def __init__(self, engine_factory: Callable[[], Any], *, warmup: bool = True) -> None:
        self._factory = engine_factory
        self._warmup = warmup
        self._engine: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cv = threading.Condition()
        self._commands: list[Any] = []  # guarded by _cv
        self._stopping = False  # guarded by _cv
        self._streams: dict[str, _Stream] = {}  # event-loop side only
        self._thread: threading.Thread | None = None
        self.stats: dict[str, Any] = {}  # latest engine.stats(), refreshed after every step
        self.baseline: dict[str, Any] = {}  # stats after warm-up: counters report from here
        self.dead: BaseException | None = None
        self.tokenizer: Any = None
        self.max_model_len: int = 0
        self.precision: dict[str, str] = {}  # dtype, quantization, kv_cache_dtype once loaded
        self.phases: dict[str, float] = {}  # startup phase -> seconds

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the engine and warm it up, off the event loop; then start the step thread."""
        self._loop = asyncio.get_running_loop()
        ready = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="herd-engine")
        self._thread.daemon = True
        self._thread.start()
        await ready

    async def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _run(self, ready: asyncio.Future) -> None:
        try:
            self._load()
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._post(lambda e=exc: ready.done() or ready.set_exception(e))
            return
        self._post(lambda: ready.done() or ready.set_result(None))
        try:
            self._step_loop()
        except BaseException as exc:  # noqa: BLE001 - a crashed loop fails every request
            log.exception("engine step loop crashed")
            self._post(lambda e=exc: self._fail_all(e))

    def _load(self) -> None:
        t0 = time.perf_counter()
        self._engine = self._factory()
        self.phases["load_engine"] = time.perf_counter() - t0
        tp = getattr(self._engine, "tp", None)
        if tp is not None:  # a tensor-parallel rank that dies while idle: unhealthy at once
            from herd.engine.distributed import TensorParallelError

            tp.on_death = lambda why: self._post(lambda: self._fail_all(TensorParallelError(why)))
        self.tokenizer = self._engine.tokenizer
        self.max_model_len = self._engine.max_model_len
        self.precision = self._engine.precision
        if self._warmup:
            t0 = time.perf_counter()
            warm = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
            self._engine.add_request("herd-warmup", self.tokenizer.encode("warm up"), warm)
            while self._engine.has_unfinished_requests():
                self._engine.step()
            self.phases["warm_up"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            self._engine.compile_decode()
            self.phases["compile"] = time.perf_counter() - t0
        self.stats = self._engine.stats()
        self.baseline = dict(self.stats)

    # ---- the step thread -------------------------------------------------------------------

    def _post(self, fn: Callable[[], Any]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn)

    def _step_loop(self) -> None:
        engine = self._engine
        while True:
            with self._cv:
                while not (self._commands or self._stopping or engine.has_unfinished_requests()):
                    self._cv.wait()
                commands, self._commands = self._commands, []
                if self._stopping:
                    return
            for cmd in commands:
                self._apply(cmd)
            if engine.has_unfinished_requests():
                outputs = engine.step()
                stats = engine.stats()
                self._post(lambda o=outputs, s=stats: self._deliver(o, s))

    def _apply(self, cmd: Any) -> None:
        if isinstance(cmd, str):
            self._engine.abort_request(cmd)
            return
        try:
            self._engine.add_request(cmd.request_id, cmd.prompt, cmd.params, priority=cmd.priority)
            result: BaseException | None = None
        except Exception as exc:  # noqa: BLE001 - handed to the waiting handler
            result = exc
        self._post(lambda: cmd.done.done() or cmd.done.set_result(result))

    # ---- event-loop side -------------------------------------------------------------------

    def _send(self, cmd: Any) -> None:
        with self._cv:
            self._commands.append(cmd)
            self._cv.notify()

    def _deliver(self, outputs: list[RequestOutput], stats: dict[str, Any]) -> None:
        self.stats = stats
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            stream.queue.put_nowait(out)
            if out.finished:
                stream.finished = True
                del self._streams[out.request_id]

    def _fail_all(self, exc: BaseException) -> None:
        self.dead = exc
        for stream in self._streams.values():
            stream.queue.put_nowait(EngineDeadError(f"engine failed: {exc!r}"))
        self._streams.clear()

    async def generate(
        self, request_id: str, prompt: str | list[int], params: SamplingParams, priority: int = 0
    ) -> AsyncIterator[RequestOutput]:
        """Deltas of one request. Raises the engine's InvalidRequestError before the first yield;
        closing the iterator early (client gone, cancelled) aborts the request in the engine."""
        if self.dead is not None:
            raise EngineDeadError(f"engine failed: {self.dead!r}")
        if params.structured_outputs is not None and self._engine is not None:
            # Compile the grammar here, off the step thread (the engine's add then finds it in
            # its cache): a big schema, or llguidance's first load, never stalls the batch.
            await asyncio.to_thread(self._engine.structured.compile, params.structured_outputs)
        stream = self._streams[request_id] = _Stream()
        done = asyncio.get_running_loop().create_future()
        self._send(_Add(request_id, prompt, params, priority, done))
        try:
            error = await done
            if error is not None:
                raise error
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            if not stream.finished:
                self._streams.pop(request_id, None)
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Ask the step thread to abort; it frees the blocks before the next step."""
        self._send(request_id)

    def abort_all(self) -> None:
        for request_id in list(self._streams):
            self.abort(request_id)
