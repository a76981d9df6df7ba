import asyncio
import os
import sys
import threading
import time

import numpy as np
import pytest

from app.core.config import Settings
from app.services.embedding import EmbeddingService
from app.stores.faiss_index import ReadWriteLock
from models.preprocessing import ImageDecodeError, Preprocessing
from tests.helpers import jpeg_bytes, synthetic_image


def embedding_service(embedder, lane_embedder=None, lanes: int = 0, lone_embedder=None,
                      requests_in_flight=None, **settings) -> EmbeddingService:
    """The service with the defaults of ``Settings`` but for ``settings``."""
    return EmbeddingService.from_settings(embedder, Settings(_env_file=None, **settings),
                                          lane_embedder, lanes, lone_embedder,
                                          requests_in_flight)

class RecordingEmbedder:
    """Returns each input's first pixel as its 'embedding' and records batch sizes."""

    name = "fake"
    dim = 1
    preprocessing = Preprocessing(image_size=8)

    def __init__(self, delay: float = 0.02) -> None:
        self.batches: list[int] = []
        self.delay = delay

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        time.sleep(self.delay)  # a model call takes time: requests pile up meanwhile
        return batch[:, 0, 0, :1]


def test_concurrent_requests_share_model_calls_and_get_their_own_results():
    embedder = RecordingEmbedder()

    async def scenario():
        service = embedding_service(embedder, max_batch=8, batch_wait_ms=20)
        await service.start()
        try:
            inputs = [np.full((3, 8, 8), float(i), np.float32) for i in range(20)]
            results = await asyncio.gather(*(service.embed(x) for x in inputs))
        finally:
            await service.stop()
        return results

    results = asyncio.run(scenario())
    assert [float(r[0]) for r in results] == [float(i) for i in range(20)]
    assert sum(embedder.batches) == 20
    assert len(embedder.batches) <= 4 and max(embedder.batches) == 8


def test_a_lone_request_does_not_wait_for_the_window():
    embedder = RecordingEmbedder(delay=0)

    async def scenario():
        service = embedding_service(embedder, max_batch=32, batch_wait_ms=2000)
        await service.start()
        start = time.perf_counter()
        await service.embed(np.zeros((3, 8, 8), np.float32))
        elapsed = time.perf_counter() - start
        await service.stop()
        return elapsed

    assert asyncio.run(scenario()) < 0.5
    assert embedder.batches == [1]


def test_a_failing_batch_fails_its_requests_not_the_worker():
    class Flaky(RecordingEmbedder):
        def embed_batch(self, batch):
            if not self.batches:
                self.batches.append(len(batch))
                raise RuntimeError("boom")
            return super().embed_batch(batch)

    async def scenario():
        service = embedding_service(Flaky(delay=0), max_batch=4, batch_wait_ms=1)
        await service.start()
        with pytest.raises(RuntimeError, match="boom"):
            await service.embed(np.zeros((3, 8, 8), np.float32))
        ok = await service.embed(np.ones((3, 8, 8), np.float32))
        await service.stop()
        return ok

    assert float(asyncio.run(scenario())[0]) == 1.0


class LaneEmbedder(RecordingEmbedder):
    """Also records how many of its calls ran at the same time."""

    def __init__(self, delay: float = 0.05) -> None:
        super().__init__(delay)
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            return super().embed_batch(batch)
        finally:
            with self.lock:
                self.active -= 1


def test_under_load_lanes_take_one_image_each_side_by_side():
    main, lanes = RecordingEmbedder(), LaneEmbedder(delay=0.05)

    async def scenario():
        service = embedding_service(main, lanes, 2, max_batch=32, batch_wait_ms=1)
        await service.start()
        try:
            inputs = [np.full((3, 8, 8), float(i), np.float32) for i in range(20)]
            return await asyncio.gather(*(service.embed(x) for x in inputs))
        finally:
            await service.stop()

    results = asyncio.run(scenario())
    assert [float(r[0]) for r in results] == [float(i) for i in range(20)]
    assert lanes.batches == [1] * 20 and lanes.peak == 2  # one image a call, two at a time
    assert main.batches == []


def test_a_lone_request_on_an_idle_service_gets_the_all_core_call():
    main, lanes = RecordingEmbedder(delay=0), LaneEmbedder(delay=0)

    async def scenario():
        service = embedding_service(main, lane_embedder=lanes, lanes=2)
        await service.start()
        try:
            for i in range(3):  # one after another: never more than one waiting
                assert float((await service.embed(np.full((3, 8, 8), i, np.float32)))[0]) == i
        finally:
            await service.stop()

    asyncio.run(scenario())
    assert main.batches == [1, 1, 1] and lanes.batches == []


def test_a_query_alone_in_the_service_gets_the_lone_call_session():
    """The spinning session only while no other request is in the service: with another
    HTTP request in flight (counted by the caller), the all-core session, which never
    spins; under load the lanes, as before."""
    main, lone, lanes = RecordingEmbedder(delay=0), RecordingEmbedder(delay=0), \
        LaneEmbedder(delay=0.05)
    in_flight = 1

    async def scenario():
        nonlocal in_flight
        service = embedding_service(main, lanes, 2, lone, lambda: in_flight)
        await service.start()
        try:
            for i in range(2):  # alone: this request is the only one in flight
                assert float((await service.embed(np.full((3, 8, 8), i, np.float32)))[0]) == i
            in_flight = 2  # another request is being read or answered
            await service.embed(np.zeros((3, 8, 8), np.float32))
            in_flight = 10
            await asyncio.gather(*(service.embed(np.zeros((3, 8, 8), np.float32))
                                   for _ in range(6)))
        finally:
            await service.stop()

    asyncio.run(scenario())
    assert lone.batches == [1, 1]
    assert main.batches[0] == 1 and sum(main.batches) + sum(lanes.batches) == 7
    assert lanes.batches  # the load went to the lanes


def test_lanes_wait_for_an_all_core_call_in_flight():
    """Both cores belong to the all-core call while it runs: requests arriving meanwhile
    go to the lanes only after it ends (three threads on two cores would stall it)."""
    spans: list[tuple[str, float, float]] = []

    class Timed(RecordingEmbedder):
        def __init__(self, kind: str, delay: float) -> None:
            super().__init__(delay)
            self.kind = kind

        def embed_batch(self, batch: np.ndarray) -> np.ndarray:
            start = time.perf_counter()
            try:
                return super().embed_batch(batch)
            finally:
                spans.append((self.kind, start, time.perf_counter()))

    async def scenario():
        service = embedding_service(Timed("all", 0.2), lane_embedder=Timed("lane", 0.01),
                                   lanes=2)
        await service.start()
        try:
            lone = asyncio.create_task(service.embed(np.zeros((3, 8, 8), np.float32)))
            while not service.all_core_call:  # the lone request's call has started
                await asyncio.sleep(0.005)
            later = [service.embed(np.full((3, 8, 8), i, np.float32)) for i in (1, 2, 3)]
            return await asyncio.gather(lone, *later)
        finally:
            await service.stop()

    results = asyncio.run(scenario())
    assert [float(r[0]) for r in results] == [0.0, 1.0, 2.0, 3.0]
    all_core = [(start, end) for kind, start, end in spans if kind == "all"]
    lanes = [(start, end) for kind, start, end in spans if kind == "lane"]
    assert len(lanes) >= 2  # three waited at once: lanes (the last may go alone)
    assert all(lane_end <= start or lane_start >= end
               for start, end in all_core for lane_start, lane_end in lanes)


def test_a_stopped_service_refuses_new_requests():
    async def scenario():
        service = embedding_service(RecordingEmbedder(delay=0))
        await service.start()
        await service.stop()
        with pytest.raises(RuntimeError, match="shutting down"):
            await service.embed(np.zeros((3, 8, 8), np.float32))

    asyncio.run(scenario())


def test_read_write_lock_lets_readers_share_and_writers_exclude():
    lock = ReadWriteLock()
    inside, peak, log = 0, 0, []
    guard = threading.Lock()

    def reader():
        nonlocal inside, peak
        with lock.read():
            with guard:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.05)
            with guard:
                inside -= 1

    def writer():
        with lock.write():
            log.append(("writer", inside))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.01)
    w = threading.Thread(target=writer)
    w.start()
    for t in [*threads, w]:
        t.join()
    assert peak >= 2  # readers overlapped
    assert log == [("writer", 0)]  # the writer ran alone


@pytest.mark.parametrize("lanes", [0, 2])
def test_stopping_answers_calls_in_flight_and_fails_the_waiting_instead_of_hanging(lanes):
    embedder, lane_embedder = RecordingEmbedder(delay=0.05), LaneEmbedder(0.05)

    async def scenario():
        service = embedding_service(embedder, max_batch=2, batch_wait_ms=1,
                                   lane_embedder=lane_embedder, lanes=lanes)
        await service.start()
        tasks = [asyncio.create_task(service.embed(np.full((3, 8, 8), i, np.float32)))
                 for i in range(10)]
        while not any(task.done() for task in tasks):  # a batch done, more in flight,
            await asyncio.sleep(0.005)  # the rest queued
        await asyncio.wait_for(service.stop(), 5)
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)

    results = asyncio.run(scenario())
    answered = {i: r for i, r in enumerate(results) if not isinstance(r, BaseException)}
    failed = [r for r in results if isinstance(r, BaseException)]
    assert answered and failed
    assert all(float(r[0]) == i for i, r in answered.items())
    assert all("shutting down" in str(e) for e in failed)
    # every image whose model call had started got its answer: nothing in flight is lost
    assert len(answered) == sum(embedder.batches) + sum(lane_embedder.batches)


def test_under_load_the_window_tops_up_the_batch():
    embedder = RecordingEmbedder(delay=0)

    async def scenario():
        service = embedding_service(embedder, max_batch=8, batch_wait_ms=300)
        await service.start()
        first = [asyncio.create_task(service.embed(np.zeros((3, 8, 8), np.float32)))
                 for _ in range(2)]  # two waiting at once: load
        await asyncio.sleep(0.05)
        late = asyncio.create_task(service.embed(np.ones((3, 8, 8), np.float32)))
        await asyncio.gather(*first, late)
        await service.stop()

    asyncio.run(scenario())
    assert embedder.batches == [3]


def test_gallery_searches_keep_faiss_to_one_thread_on_whichever_thread_searches():
    """OpenMP's thread pool turned a microsecond search into milliseconds and spun on the
    cores the model needs. OpenMP keeps its thread count per thread, and the service imports
    the index on a start-up worker but searches on the event loop: the thread that searches
    (here a fresh one, not the importer) must run FAISS alone."""
    import faiss

    from app.stores.faiss_index import VectorIndex

    index = VectorIndex(4)
    index.add(np.arange(3), np.eye(4, dtype=np.float32)[:3])
    seen: dict[str, object] = {}

    def search_elsewhere() -> None:
        seen["default"] = faiss.omp_get_max_threads()
        seen["hit"] = index.search(np.eye(4, dtype=np.float32)[1], 2)[0]
        seen["threads"] = faiss.omp_get_max_threads()

    thread = threading.Thread(target=search_elsewhere)
    thread.start()
    thread.join()
    assert seen["default"] > 1  # what a thread gets unless told otherwise (2 cores here)
    assert seen["hit"] == (1, 1.0)
    assert seen["threads"] == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_uploads_decode_on_lower_priority_threads_and_the_rest_keeps_its_own():
    def own_nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = own_nice()

    class NiceRecording(RecordingEmbedder):
        def embed_batch(self, batch: np.ndarray) -> np.ndarray:
            self.nice = own_nice()  # the model worker's
            return super().embed_batch(batch)

    async def scenario(nice: int):
        embedder = NiceRecording(delay=0)
        service = embedding_service(embedder, decode_nice=nice)
        await service.start()
        try:
            image, model_input = await service.decode_async(
                jpeg_bytes(synthetic_image((200, 30, 30), 0)))
            decoder_nice = service.decode_pool.submit(own_nice).result()
            await service.embed(model_input)
        finally:
            await service.stop()
        return image, model_input, decoder_nice, embedder.nice

    image, model_input, decoder_nice, model_nice = asyncio.run(scenario(5))
    assert model_input.shape == (3, 8, 8) and image.format == "JPEG"
    assert decoder_nice == min(19, before + 5)
    assert model_nice == before and own_nice() == before
    assert asyncio.run(scenario(0))[2] == before


def test_an_upload_on_an_idle_service_is_decoded_by_the_model_worker_otherwise_by_the_pool():
    data = jpeg_bytes(synthetic_image((200, 30, 30), 0))

    async def scenario():
        service = embedding_service(RecordingEmbedder(delay=0.2))
        decoded_on = []
        decode = service.decode

        def recording_decode(upload: bytes):
            decoded_on.append(threading.current_thread().name)
            return decode(upload)

        service.decode = recording_decode
        await service.start()
        try:
            alone = await service.embed_upload(data)
            expected = await service.embed(decode(data)[1])
            # While a call is in flight the pool decodes, and the input joins the queue.
            busy = asyncio.ensure_future(service.embed(np.zeros((3, 8, 8), np.float32)))
            await asyncio.sleep(0.05)
            beside = await service.embed_upload(data)
            await busy
            with pytest.raises(ImageDecodeError):
                await service.embed_upload(b"not an image")
            await asyncio.sleep(0.05)  # the worker's call has ended: idle again
            after = await service.embed_upload(data)  # the worker goes on
        finally:
            await service.stop()
        return decoded_on, alone, expected, beside, after

    decoded_on, alone, expected, beside, after = asyncio.run(scenario())
    assert decoded_on[0] == "embed" and decoded_on[1].startswith("decode")
    assert decoded_on[2:] == ["embed", "embed"]
    assert float(alone[0]) == float(expected[0]) == float(beside[0]) == float(after[0])
