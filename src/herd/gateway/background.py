"""A gateway part that runs one named asyncio task for its whole life (health checks, replica
discovery): `start()` once on the gateway's loop, `stop()` cancels it and waits."""

from __future__ import annotations

import asyncio


class BackgroundTask:
    """Owns one task running `_run()`. Promises that `stop()` returns only once the task has
    ended, and that stopping a part that never started is a no-op."""

    task_name = "herd-task"

    _task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        raise NotImplementedError
