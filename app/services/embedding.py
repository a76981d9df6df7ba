"""Embedding in the service: decoding off the event loop, and model calls shared out
among concurrent requests.

Requests put their preprocessed image in a queue; model worker threads take from it the
moment their last call ends (the event loop, busy with HTTP, would hand work out late).

- With lanes (ONNX Runtime on the CPU): under load, each image goes to one of ``lanes``
  single-threaded calls running side by side, one per core. A lane that loses its core
  stalls only itself, where the threads of one all-core call stall together. A lone
  request on an idle service still gets one call on all cores.
- Without lanes (e.g. a GPU): one worker takes up to ``max_batch`` waiting images into one
  call; a lone request goes at once, and under load what arrives within the batching
  window joins the batch.

Uploads are decoded on a pool of their own at a lower priority (``decode_nice``, Linux),
so that decoding fills the gaps instead of taking cores from the model; a query upload that
finds the service idle is decoded by the model's worker itself (one hand-off fewer).
docs/performance.md has the measurements behind these choices.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from app.core.config import Settings
from models.base import Embedder, embed_for_gallery, mean_of_views
from models.preprocessing import (
    DecodedImage,
    ImageDecodeError,
    decode_image,
    gallery_views,
    preprocess,
)

log = logging.getLogger(__name__)


class ShuttingDown(RuntimeError):
    """The service stops: a request still waiting for the model is not answered."""

    def __init__(self) -> None:
        super().__init__("the service is shutting down")

Waiting = tuple[np.ndarray | bytes, asyncio.Future]  # bytes: an upload still to decode


class EmbeddingService:
    def __init__(self, embedder: Embedder, *, max_batch: int, batch_wait_ms: float,
                 max_image_pixels: int, decode_nice: int, lane_embedder: Embedder | None = None,
                 lanes: int = 0, lone_embedder: Embedder | None = None,
                 requests_in_flight: Callable[[], int] | None = None) -> None:
        self.embedder = embedder
        # Lanes: ``lane_embedder`` runs on one thread and may be called from several at once.
        self.lane_embedder = lane_embedder if lanes > 1 else None
        self.lanes = lanes if self.lane_embedder else 0
        # A lone image, with no other request in the service (``requests_in_flight``
        # counts this one), goes to ``lone_embedder``: every core, spinning during the call.
        self.lone_embedder = lone_embedder if requests_in_flight else None
        self.requests_in_flight = requests_in_flight or (lambda: 0)
        self.max_batch = max_batch
        self.wait_s = batch_wait_ms / 1000
        self.max_pixels = max_image_pixels
        self.draft_size = embedder.preprocessing.resize_size
        self.decode_pool = ThreadPoolExecutor(thread_name_prefix="decode",
                                              initializer=lower_thread_priority,
                                              initargs=(decode_nice,))
        # The workers' shared state, guarded by ``changed``.
        self.changed = threading.Condition()
        self.waiting: collections.deque[Waiting] = collections.deque()
        self.lane_calls = 0  # lane calls in flight
        self.all_core_call = False  # an all-core call in flight: the lanes wait for it
        self.stopping = False
        self.decoding = 0  # uploads on the decoding pool (read and written on the loop)
        self.workers: list[threading.Thread] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_settings(cls, embedder: Embedder, settings: Settings,
                      lane_embedder: Embedder | None = None, lanes: int = 0,
                      lone_embedder: Embedder | None = None,
                      requests_in_flight: Callable[[], int] | None = None) -> EmbeddingService:
        """The service as ``settings`` configure it (their defaults are the only ones)."""
        return cls(embedder, max_batch=settings.max_batch, batch_wait_ms=settings.batch_wait_ms,
                   max_image_pixels=settings.max_image_pixels,
                   decode_nice=settings.decode_nice, lane_embedder=lane_embedder, lanes=lanes,
                   lone_embedder=lone_embedder, requests_in_flight=requests_in_flight)

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def decode(self, data: bytes) -> tuple[DecodedImage, np.ndarray]:
        """Bytes -> (decoded image, model input); raises ImageDecodeError. Call off the
        loop."""
        image = decode_image(data, max_pixels=self.max_pixels, draft_size=self.draft_size)
        return image, preprocess(image.pixels, self.embedder.preprocessing)

    async def decode_async(self, data: bytes) -> tuple[DecodedImage, np.ndarray]:
        """:meth:`decode` on the decoding pool, off the event loop."""
        if self.stopping:
            raise ShuttingDown()
        loop = asyncio.get_running_loop()
        self.decoding += 1
        try:
            return await loop.run_in_executor(self.decode_pool, self.decode, data)
        except RuntimeError:  # the pool refuses new work once stop() has shut it down
            if self.stopping:
                raise ShuttingDown() from None
            raise
        finally:
            self.decoding -= 1

    def embed_inputs(self, inputs: list[np.ndarray], in_lane: bool = False) -> np.ndarray:
        """Blocking batch embedding of queries: a single-threaded lane's call, the lone-call
        session's for one image alone in the service, else the all-core call."""
        if in_lane and self.lane_embedder:
            embedder = self.lane_embedder
        elif len(inputs) == 1 and self.lone_embedder and self._alone():
            embedder = self.lone_embedder
        else:
            embedder = self.embedder
        return embedder.embed_batch(np.stack(inputs))

    def _alone(self) -> bool:
        """No other request in the service: no other HTTP request, nothing waiting for the
        model, nothing decoding (read without the lock: a moment's view is enough)."""
        return self.requests_in_flight() <= 1 and not self.waiting and not self.decoding

    def embed_gallery_inputs(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Blocking: gallery photos' embeddings (each the mean of its views), in one
        all-core call (the gallery at start-up, re-embedding for a new checkpoint)."""
        return embed_for_gallery(self.embedder, np.stack(inputs))

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        names = [f"lane_{i}" for i in range(self.lanes)] if self.lanes else ["embed"]
        self.workers = [threading.Thread(target=self._work, name=name, daemon=True)
                        for name in names]
        for worker in self.workers:
            worker.start()

    async def stop(self) -> None:
        """Calls in flight finish and answer; requests still waiting get an error instead of
        hanging."""
        with self.changed:
            self.stopping = True
            left = list(self.waiting)
            self.waiting.clear()
            self.changed.notify_all()
        _fail(left, ShuttingDown())
        for worker in self.workers:
            await asyncio.to_thread(worker.join)
        self.decode_pool.shutdown(wait=True)

    async def embed(self, model_input: np.ndarray) -> np.ndarray:
        """Embed one preprocessed image, batched with whatever else is waiting."""
        return await self._queue(model_input)

    async def embed_upload(self, data: bytes) -> np.ndarray:
        """A query photo's bytes -> its embedding; raises ImageDecodeError. On an idle
        service the model's worker decodes the photo itself (one hand-off to a thread and
        back instead of two); otherwise the decoding pool decodes it and the model input
        joins the queue."""
        if not (self.waiting or self.lane_calls or self.all_core_call or self.decoding):
            return await self._queue(data)
        _, model_input = await self.decode_async(data)
        return await self.embed(model_input)

    async def _queue(self, item: np.ndarray | bytes) -> np.ndarray:
        assert self.loop is not None, "EmbeddingService.start() was not called"
        future: asyncio.Future = self.loop.create_future()
        with self.changed:
            if self.stopping:
                raise ShuttingDown()
            self.waiting.append((item, future))
            self.changed.notify()
        return await future

    async def embed_for_gallery(self, model_input: np.ndarray) -> np.ndarray:
        """One gallery photo's embedding (an enrolment): its views go through the queue as
        queries do, side by side in the lanes, and their mean is stored."""
        views = self.embedder.preprocessing.gallery_views
        if views == 1:
            return await self.embed(model_input)
        vectors = await asyncio.gather(*(self.embed(view) for view in
                                         gallery_views(model_input[None], views)))
        return mean_of_views(np.stack(vectors), views)[0]

    def _work(self) -> None:
        """A worker thread: take a batch, embed it, hand the results to the loop, repeat."""
        while True:
            with self.changed:
                taken = self._take()
                if taken is None:
                    return
            batch, in_lane = taken
            try:
                batch = self._decoded(batch)
                vectors = (self.embed_inputs([model_input for model_input, _ in batch], in_lane)
                           if batch else np.zeros((0, self.dim), np.float32))
            except Exception as exc:  # hand the failure to every waiting request
                log.exception("embedding a batch of %d failed", len(batch))
                self._answer(_fail, batch, exc)
            else:
                self._answer(_succeed, batch, vectors)
            finally:
                with self.changed:
                    if in_lane:
                        self.lane_calls -= 1
                    else:
                        self.all_core_call = False
                    self.changed.notify_all()

    def _decoded(self, batch: list[Waiting]) -> list[Waiting]:
        """The batch with uploads queued as bytes decoded; one that fails to decode gets
        its error and leaves the batch."""
        ready = []
        for item, future in batch:
            if isinstance(item, bytes):
                try:
                    item = self.decode(item)[1]
                except ImageDecodeError as exc:
                    self._answer(_fail, [(item, future)], exc)
                    continue
            ready.append((item, future))
        return ready

    def _take(self) -> tuple[list[Waiting], bool] | None:
        """With ``changed`` held: the next batch, and whether it goes to a lane; None when
        stopping. A lane call takes one image (on a CPU the fastest way to run this model),
        and a lane that has finished takes the next at once; a lone request on an idle
        service gets every core. Without lanes: everything waiting, up to max; a lone
        request goes at once (no added latency), and when others are already waiting
        (load), what arrives within the window joins too."""
        while not self.stopping and (not self.waiting or self.all_core_call):
            self.changed.wait()
        if self.stopping:
            return None
        if self.lanes:
            batch = [self.waiting.popleft()]
            in_lane = self.lane_calls > 0 or bool(self.waiting)
            if in_lane:
                self.lane_calls += 1
            else:
                self.all_core_call = True
            return batch, in_lane
        self.all_core_call = True
        batch = [self.waiting.popleft() for _ in range(min(self.max_batch, len(self.waiting)))]
        if len(batch) > 1:
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch and not self.stopping:
                if self.waiting:
                    batch.append(self.waiting.popleft())
                elif not self.changed.wait(deadline - time.monotonic()):
                    break
        return batch, False

    def _answer(self, deliver: Callable[[list[Waiting], Any], None], batch: list[Waiting],
                outcome: Any) -> None:
        """Hand results (or a failure) to the requests, on the event loop's thread."""
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(deliver, batch, outcome)


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux: per thread; elsewhere a
    no-op, since other systems would apply it to the whole process)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:  # e.g. forbidden by a container's seccomp profile: not fatal
        log.warning("could not lower the decoding threads' priority: %s", exc)


def _fail(batch: list[Waiting], error: Exception) -> None:
    for _, future in batch:
        if not future.done():  # e.g. cancelled: its client went away
            future.set_exception(error)


def _succeed(batch: list[Waiting], vectors: np.ndarray) -> None:
    for (_, future), vector in zip(batch, vectors, strict=True):
        if not future.done():
            future.set_result(vector)
