"""A request-head deadline for every herd HTTP endpoint: a connection that starts sending a
request but has not completed its head within `head_timeout_s` is closed (slowloris). aiohttp
has no such deadline: its keep-alive timer only closes connections that sent nothing, and the
default is an hour. Idle keep-alive connections are left alone."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

# A whole request head arrives in one round trip from any honest client; 10 s is generous.
DEFAULT_HEAD_TIMEOUT_S = 10.0


class HeadDeadlineHandler(RequestHandler):
    """aiohttp's connection handler plus one timer: armed by the first byte of a request head
    (while no request is being handled), disarmed when the head is complete; if it fires, the
    connection is closed."""

    def __init__(self, *args, head_timeout_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and not self._request_in_progress:
            self._head_timer = self._loop.call_later(self._head_timeout_s, self._head_expired)
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads and self._head_timer is not None:
            # A whole head arrived: disarm, so a keep-alive connection idle between requests
            # is never taken for a slow one.
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        # Armed by a head's first byte and disarmed when a head completes: firing means a
        # request head has been incomplete for the whole deadline.
        self._head_timer = None
        if not self._request_in_progress:
            self.force_close()
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


class _DeadlineServer(web.Server):
    head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S

    def __call__(self) -> RequestHandler:
        return HeadDeadlineHandler(
            self, loop=self._loop, head_timeout_s=self.head_timeout_s, **self._kwargs
        )


def apply_head_deadline(runner: web.BaseRunner, head_timeout_s: float) -> None:
    """After `runner.setup()`, before any site starts: new connections get the deadline."""
    server = runner.server
    assert server is not None, "call after runner.setup()"
    server.__class__ = _DeadlineServer
    server.head_timeout_s = head_timeout_s
