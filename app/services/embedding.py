"""Embedding in the service: decoding off the event loop and micro-batched model calls.

Concurrent requests put their preprocessed image in a queue; one worker takes up to
``max_batch`` of them and embeds them in one model call on a dedicated thread. A lone
request is embedded at once; requests that arrive while a call runs pile up and go together
in the next one (plus what arrives within ``wait_ms``). Under load, throughput approaches
batch throughput, and a single client pays no batching delay.

The threads of one model call work in lock-step inside every operator, so whatever takes
a core from one of them (decoding, HTTP, another tenant of the machine) stalls them all.
Hence, on a CPU, batches under load go to ``lanes``: single-threaded model calls side by
side, one per core (``lane_embedder``), and a lane that loses its core stalls only itself
(16-client throughput +9-11% in A/B runs, README); a lone request on an idle service still
gets every core in one call. Hence also, uploads are decoded on a pool of their own whose
threads run at a lower priority (``decode_nice``, Linux), so that decoding fills the gaps
instead of taking cores from the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from models.preprocessing import load_image, preprocess
from models.runtime import Embedder

log = logging.getLogger(__name__)
SHUTTING_DOWN = "the service is shutting down"


class EmbeddingService:
    def __init__(self, embedder: Embedder, max_batch: int = 32, wait_ms: float = 4.0,
                 max_pixels: int = 40_000_000, decode_nice: int = 0,
                 lane_embedder: Embedder | None = None, lanes: int = 0) -> None:
        self.embedder = embedder
        # Lanes: ``lane_embedder`` runs on one thread and may be called from several at once.
        self.lane_embedder = lane_embedder if lanes > 1 else None
        self.lanes = lanes if self.lane_embedder else 0
        self.lane_threads = ThreadPoolExecutor(max(1, self.lanes), thread_name_prefix="lane")
        self.lane_freed: asyncio.Event | None = None
        self.in_flight: set[asyncio.Task] = set()  # one lane call each
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        self.max_pixels = max_pixels
        self.draft_size = embedder.preprocessing.resize_size
        # One thread makes the all-core calls: the runtime parallelises inside each.
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="embed")
        self.decode_pool = ThreadPoolExecutor(thread_name_prefix="decode",
                                              initializer=lower_thread_priority,
                                              initargs=(decode_nice,))
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] | None = None
        self.worker: asyncio.Task | None = None
        self.stopping = False

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def decode(self, data: bytes) -> tuple[Image.Image, np.ndarray]:
        """Bytes -> (RGB image, model input); raises ImageDecodeError. Call off the loop."""
        image = load_image(data, max_pixels=self.max_pixels, draft_size=self.draft_size)
        return image, preprocess(image, self.embedder.preprocessing)

    async def decode_async(self, data: bytes) -> tuple[Image.Image, np.ndarray]:
        """:meth:`decode` on the decoding pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, self.decode,
                                                                data)

    def embed_inputs(self, inputs: list[np.ndarray], in_lane: bool = False) -> np.ndarray:
        """Blocking batch embedding: the all-core call (e.g. the gallery at start-up), or a
        single-threaded lane's."""
        embedder = self.lane_embedder if in_lane and self.lane_embedder else self.embedder
        return embedder.embed_batch(np.stack(inputs))

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.lane_freed = asyncio.Event()
        self.worker = asyncio.create_task(self._run(), name="embedding-batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still waiting get an error instead of hanging."""
        self.stopping = True
        if self.worker:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        for task in list(self.in_flight):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self.queue is not None and not self.queue.empty():
            _fail([self.queue.get_nowait()], RuntimeError(SHUTTING_DOWN))
        self.model_thread.shutdown(wait=True)
        self.lane_threads.shutdown(wait=True)
        self.decode_pool.shutdown(wait=True)

    async def embed(self, model_input: np.ndarray) -> np.ndarray:
        """Embed one preprocessed image, batched with whatever else is waiting."""
        assert self.queue is not None, "EmbeddingService.start() was not called"
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((model_input, future))
        return await future

    async def _run(self) -> None:
        # The flag, not only the cancellation, ends the loop: before Python 3.12,
        # asyncio.wait_for can swallow a cancellation that arrives as its inner get succeeds.
        while not self.stopping:
            if not self.lanes:
                await self._embed_batch(await self._next_batch())
                continue
            assert self.lane_freed is not None and self.queue is not None
            while len(self.in_flight) == self.lanes:
                self.lane_freed.clear()
                await self.lane_freed.wait()
            batch = await self._next_batch(share=self.lanes - len(self.in_flight))
            if len(batch) == 1 and not self.in_flight and self.queue.empty():
                await self._embed_batch(batch)  # a lone request: every core on it
                continue
            task = asyncio.create_task(self._embed_batch(batch, in_lane=True))
            self.in_flight.add(task)
            task.add_done_callback(self._lane_done)

    def _lane_done(self, task: asyncio.Task) -> None:
        self.in_flight.discard(task)
        assert self.lane_freed is not None
        self.lane_freed.set()

    async def _next_batch(self, share: int = 1) -> list[tuple[np.ndarray, asyncio.Future]]:
        """Everything waiting, up to max (or its ``share`` among that many free lanes). A
        lone request goes at once (no added latency); when others are already waiting
        (load), what arrives within the window joins too."""
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        limit = self.max_batch
        if share > 1:  # what waits now is shared out among the free lanes (ceil)
            limit = min(limit, -(-(1 + self.queue.qsize()) // share))
        while len(batch) < limit and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        if len(batch) == 1:
            return batch
        deadline = loop.time() + self.wait_s
        while len(batch) < limit:
            timeout = deadline - loop.time()
            try:
                batch.append(self.queue.get_nowait() if timeout <= 0 else
                             await asyncio.wait_for(self.queue.get(), timeout))
            except (asyncio.QueueEmpty, TimeoutError):
                break
        return batch

    async def _embed_batch(self, batch: list[tuple[np.ndarray, asyncio.Future]],
                           in_lane: bool = False) -> None:
        loop = asyncio.get_running_loop()
        try:
            vectors = await loop.run_in_executor(
                self.lane_threads if in_lane else self.model_thread, self.embed_inputs,
                [model_input for model_input, _ in batch], in_lane)
        except asyncio.CancelledError:  # stopped mid-call: its requests must not hang
            _fail(batch, RuntimeError(SHUTTING_DOWN))
            raise
        except Exception as exc:  # hand the failure to every waiting request
            log.exception("embedding a batch of %d failed", len(batch))
            _fail(batch, exc)
            return
        for (_, future), vector in zip(batch, vectors, strict=True):
            if not future.done():
                future.set_result(vector)


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


def _fail(batch: list[tuple[np.ndarray, asyncio.Future]], error: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
