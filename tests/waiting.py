"""Waiting on a condition with a deadline: the one way tests synchronise with servers and tasks.

A fixed sleep either wastes time or flakes under load; these poll until the condition holds
and fail with a message naming what never happened."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

POLL_S = 0.02


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Call `predicate` until it returns something truthy, and return that; fail the test
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(POLL_S)


async def until(
    predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """The async form of `wait_until`: `predicate` may be sync or async, and the event loop
    keeps running between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(POLL_S)
