"""Refuse request bodies over the upload limit before they are read into memory or disk,
and bodies that trickle in slower than the body timeout."""

from __future__ import annotations

import asyncio
import json
import time

from starlette import status
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Multipart framing and form fields come on top of the files themselves.
OVERHEAD_BYTES = 64 * 1024


class BodyLimits:
    def __init__(self, app: ASGIApp, max_bytes: int, max_files: int = 1,
                 timeout_s: float = 120.0) -> None:
        self.app = app
        self.limit = max_bytes * max_files + OVERHEAD_BYTES
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._reject(send, *self._too_large())
            return
        received = 0
        started = False
        deadline = time.monotonic() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                raise _Refused(*self._too_slow()) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _Refused(*self._too_large())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _Refused as refused:  # not answered inside the app
            if not started:
                await self._reject(send, refused.status_code, refused.detail, refused.code)

    def _too_slow(self) -> tuple[int, str, str]:
        return (status.HTTP_408_REQUEST_TIMEOUT,
                f"the request body did not arrive within {self.timeout_s:g} s",
                "request_timeout")

    def _too_large(self) -> tuple[int, str, str]:
        return (status.HTTP_413_CONTENT_TOO_LARGE,
                f"request body is larger than the upload limit "
                f"({self.max_bytes / 2**20:g} MB per file)", "upload_too_large")

    @staticmethod
    async def _reject(send: Send, code: int, detail: str, error_code: str) -> None:
        body = json.dumps({"detail": detail, "code": error_code}).encode()
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _Refused(HTTPException):
    """Raised from ``receive`` inside the app: FastAPI's body parsing passes an
    HTTPException on to the error handlers (anything else it turns into a 400)."""

    def __init__(self, status_code: int, detail: str, code: str) -> None:
        super().__init__(status_code, detail)
        self.code = code
