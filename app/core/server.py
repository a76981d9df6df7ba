"""The HTTP server: uvicorn with limits against slow and idle clients.

uvicorn closes a connection that idles between requests (``timeout_keep_alive``) but not one
that never finishes its request head: thousands of such connections would hold the
process's sockets. This protocol gives every request head ``header_timeout`` seconds from
the connection (or the previous response) to arrive in full; request bodies have their own
limit in :class:`app.core.limits.BodyLimits`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.config import Settings


def guarded_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        head_deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self.head_deadline = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self.head_deadline is not None:
                self.head_deadline.cancel()
                self.head_deadline = None

        def _too_slow(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's head, on a kept-alive connection

    return GuardedHttpToolsProtocol


def server_config(app: Any, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
        http=guarded_protocol(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=10,
    )
