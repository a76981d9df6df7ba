"""The body limits middleware (app/core/limits.py) on a bare ASGI app: a body that trickles
in too slowly gets a 408, a slow handler does not, and the size limit holds."""

from __future__ import annotations

import asyncio
import json

from app.core.limits import BodyLimits

TIMEOUT_S = 0.2


def run(app, chunks: list[bytes], stall: bool = False, headers=()):
    """Drive ``BodyLimits(app)`` through one request whose body comes as ``chunks`` (then,
    with ``stall``, never finishes); the messages sent back, and the task's pending
    cancellations afterwards."""
    sent: list[dict] = []

    async def scenario():
        queue = list(chunks)

        async def receive():
            if queue:
                body = queue.pop(0)
                return {"type": "http.request", "body": body,
                        "more_body": bool(queue) or stall}
            await asyncio.sleep(3600)  # the client sends nothing more

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/", "headers": list(headers)}
        middleware = BodyLimits(app, max_bytes=1000, timeout_s=TIMEOUT_S)
        await middleware(scope, receive, send)
        task = asyncio.current_task()
        return task.cancelling() if hasattr(task, "cancelling") else 0

    cancelling = asyncio.run(scenario())
    return sent, cancelling


async def reads_body_then(delay: float, scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await asyncio.sleep(delay)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def answer(sent: list[dict]) -> tuple[int, bytes]:
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_a_body_that_stops_arriving_gets_a_408_and_the_task_goes_on():
    sent, cancelling = run(lambda s, r, d: reads_body_then(0, s, r, d), [b"abc"], stall=True)
    status, body = answer(sent)
    assert status == 408 and json.loads(body)["code"] == "request_timeout"
    assert cancelling == 0  # no cancellation left pending on the request's task


def test_a_slow_handler_after_the_whole_body_is_not_cut_off():
    sent, _ = run(lambda s, r, d: reads_body_then(3 * TIMEOUT_S, s, r, d), [b"ab", b"cd"])
    assert answer(sent) == (200, b"abcd")


def test_a_handler_that_never_reads_the_body_is_not_cut_off():
    async def slow(scope, receive, send):
        await asyncio.sleep(3 * TIMEOUT_S)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent, _ = run(slow, [b"x"], stall=True)
    assert answer(sent) == (204, b"")


def test_a_body_over_the_limit_gets_a_413_whether_announced_or_streamed():
    limit = 1000 + 64 * 1024
    announced, _ = run(lambda s, r, d: reads_body_then(0, s, r, d), [b"x"],
                       headers=[(b"content-length", str(limit + 1).encode())])
    streamed, _ = run(lambda s, r, d: reads_body_then(0, s, r, d),
                      [b"x" * limit, b"y"])
    for sent in (announced, streamed):
        status, body = answer(sent)
        assert status == 413 and json.loads(body)["code"] == "upload_too_large"
