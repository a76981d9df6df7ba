"""Embedding in the service: decoding off the event loop and micro-batched model calls.

Concurrent requests put their preprocessed tensor in a queue; one worker takes up to
``max_batch`` of them, waiting at most ``wait_ms`` after the first, and embeds them in one
model call on a dedicated thread. Under load, throughput approaches batch throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from models.inference import Embedder
from models.preprocessing import eval_transform, load_image

log = logging.getLogger(__name__)


class EmbeddingService:
    def __init__(self, embedder: Embedder, max_batch: int = 32, wait_ms: float = 4.0,
                 max_pixels: int = 40_000_000) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        self.max_pixels = max_pixels
        self.transform = eval_transform(embedder.preprocessing)
        self.draft_size = embedder.preprocessing.resize_size
        # One thread runs the model: the runtime parallelises inside each call.
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="embed")
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] | None = None
        self.worker: asyncio.Task | None = None

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def decode(self, data: bytes) -> tuple[Image.Image, torch.Tensor]:
        """Bytes -> (RGB image, input tensor); raises ImageDecodeError. Call off the loop."""
        image = load_image(data, max_pixels=self.max_pixels, draft_size=self.draft_size)
        return image, self.transform(image)

    def embed_tensors(self, tensors: list[torch.Tensor]) -> np.ndarray:
        """Blocking batch embedding (start-up sync, enrolment of several files)."""
        return self.embedder.embed_batch(torch.stack(tensors))

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._run(), name="embedding-batcher")

    async def stop(self) -> None:
        if self.worker:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        self.model_thread.shutdown(wait=True)

    async def embed(self, tensor: torch.Tensor) -> np.ndarray:
        """Embed one preprocessed image, batched with whatever else is waiting."""
        assert self.queue is not None, "EmbeddingService.start() was not called"
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((tensor, future))
        return await future

    async def _run(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    batch.append(self.queue.get_nowait() if timeout <= 0 else
                                 await asyncio.wait_for(self.queue.get(), timeout))
                except (asyncio.QueueEmpty, TimeoutError):
                    break
            tensors = [t for t, _ in batch]
            try:
                vectors = await loop.run_in_executor(self.model_thread, self.embed_tensors,
                                                     tensors)
            except Exception as exc:  # hand the failure to every waiting request
                log.exception("embedding a batch of %d failed", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), vector in zip(batch, vectors, strict=True):
                if not future.done():
                    future.set_result(vector)
