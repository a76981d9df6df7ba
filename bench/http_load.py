"""/search over HTTP: one-client latency (multipart and raw-body uploads) beside the bare
model call, sustained 16-client
throughput beside batch throughput of the same minutes, and enrolment as the gallery grows."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.embedding import SideBySide, runtime_device
from bench.harness import Service, process_cpu_s, timed
from models.base import Embedder
from models.runtimes.factory import lone_call_embedder

LOAD_ROUNDS = 9  # rounds of 16-client load, each after batch-32 timings of its own
LOAD_WINDOW_S = 2.5  # the counted window of each round
B32_CALLS = 3  # timed batch-32 calls before each round (after one untimed)
WARM_UP_S = 3.0  # one client's requests before anything is timed


BOUNDARY = "bench-7f3a9c"


def search_request(image: bytes, port: int, raw: bool = False) -> bytes:
    """A complete ``POST /search`` HTTP/1.1 request: the image as multipart form data, or
    with ``raw`` as the request body itself."""
    if raw:
        body, content_type = image, "image/jpeg"
    else:
        body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="q.jpg"\r\nContent-Type: image/jpeg\r\n\r\n').encode() + image + \
            f"\r\n--{BOUNDARY}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
    head = (f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class BareConnection:
    """One keep-alive HTTP/1.1 connection sending pre-encoded requests, as wrk or ab would.
    The load generator shares the two cores with the server: httpx spends ~2 ms of CPU a
    request (measured), this ~0.4 ms, so the server keeps the CPU that it would take."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> BareConnection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, request: bytes) -> bytes:
        """The response body of a 200 answer; anything else raises."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        headers = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        body = await self.reader.readexactly(int(headers[b"content-length"].strip())
                                             if b"content-length" in headers else 0)
        if head[9:12] != b"200":
            raise RuntimeError(f"/search answered {head[9:12].decode()}: {body[:200]!r}")
        return body

    def close(self) -> None:
        self.writer.close()


@dataclass
class OneClient:
    """What one client sending one request after another measured, in seconds."""

    round_trip: dict[str, list[float]]  # by kind of request, as the client saw them
    in_service: dict[str, list[float]]  # the answers' own took_ms: upload read to answer
    bare: list[float]  # the bare model calls timed between the blocks


async def search_latencies(port: int, requests: dict[str, list[bytes]], count: int,
                           bare_call: Callable[[], object] | None = None, blocks: int = 5,
                           ) -> OneClient:
    """Seconds per request of each kind of ``requests``, one client sending one request
    after another. Blocks of each kind alternate, with ``bare_call`` blocks of bare model
    calls between them, so that all are compared under the same conditions of a shared,
    drifting machine (blocks, not single pairs: alternating call by call, the two
    processes evict each other's weights from the CPU caches and both slow down)."""
    connection = await BareConnection.open(port)
    latencies: dict[str, list[float]] = {name: [] for name in requests}
    in_service: dict[str, list[float]] = {name: [] for name in requests}
    bare: list[float] = []
    per_block = max(1, count // blocks)
    for block in range(blocks):
        if bare_call is not None:
            for i in range(per_block + 2):  # two warm-up calls per block
                start = time.perf_counter()
                bare_call()
                if i >= 2:
                    bare.append(time.perf_counter() - start)
        for name, kind in requests.items():
            for i in range(per_block + 2):  # and two warm-up requests
                start = time.perf_counter()
                body = await connection.send(kind[(block * per_block + i) % len(kind)])
                if i >= 2:
                    latencies[name].append(time.perf_counter() - start)
                    in_service[name].append(json.loads(body)["took_ms"] / 1000)
    connection.close()
    return OneClient(latencies, in_service, bare)


@dataclass
class LoadWindow:
    """What a window of sustained load measured."""

    requests: int  # answered inside the window
    seconds: float
    client_cpu_s: float  # the load generator's CPU over the window
    server_cpu_s: float | None  # the service's (None where /proc is missing)

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds


async def search_throughput(port: int, requests: list[bytes], clients: int, seconds: float,
                            warm_s: float = 0.5, server_pid: int | None = None) -> LoadWindow:
    """Sustained load: ``clients`` connections each send their next request as soon as the
    last one is answered, and only the answers inside a window of ``seconds`` (opened
    ``warm_s`` after the start, closed before any client stops) count, as wrk counts. A
    fixed number of requests instead would also time the start from idle and the tail
    where fewer than ``clients`` requests remain, neither of which sustained load has."""
    answered: list[float] = []
    stop = asyncio.Event()

    async def client(first: int) -> None:
        connection = await BareConnection.open(port)
        i = first
        while not stop.is_set():
            await connection.send(requests[i % len(requests)])
            answered.append(time.perf_counter())
            i += clients
        connection.close()

    def cpu() -> tuple[float, float | None]:
        return time.process_time(), None if server_pid is None else process_cpu_s(server_pid)

    tasks = [asyncio.create_task(client(k)) for k in range(clients)]
    try:
        await asyncio.sleep(warm_s)
        opened, (client_before, server_before) = time.perf_counter(), cpu()
        await asyncio.sleep(seconds)
        closed, (client_after, server_after) = time.perf_counter(), cpu()
    finally:
        stop.set()
    await asyncio.gather(*tasks)
    server = (server_after - server_before
              if server_before is not None and server_after is not None else None)
    return LoadWindow(sum(opened <= t < closed for t in answered), closed - opened,
                      client_after - client_before, server)


def bench_search(gallery: Path, checkpoint: str, work: Path, queries: list[bytes],
                 runtime: Embedder, lanes: SideBySide | None = None) -> dict:
    """/search over HTTP, each number next to the bare model measured in the same minutes:
    blocks of bare single-image calls alternate with blocks of requests, and batch-32
    throughput (the better of one call and the lanes) is timed before each round of load
    (medians)."""
    size = runtime.preprocessing.image_size
    one, batch = np.zeros((1, 3, size, size), np.float32), np.zeros((32, 3, size, size),
                                                                    np.float32)
    spec = Service(checkpoint, work / "startup-data", gallery)
    port = spec.port
    requests = [search_request(query, port) for query in queries]
    raw_requests = [search_request(query, port, raw=True) for query in queries]
    with spec.run() as server:
        # Steady state: the first seconds after a start are not (the compiled resize loads
        # in the background, models/resample.py; until it has, Pillow resizes).
        asyncio.run(search_throughput(port, requests, 1, WARM_UP_S))
        # The bare call is the one a lone request gets in the service (the lone-call
        # session, spinning during the call, where the runtime has one).
        bare = lone_call_embedder(runtime) or runtime
        measured = asyncio.run(search_latencies(
            port, {"multipart": requests, "raw": raw_requests}, 100,
            lambda: bare.embed_batch(one)))
        multipart = sorted(measured.round_trip["multipart"])
        result = {f"p{p}_ms": 1000 * multipart[int(len(multipart) * p / 100) - 1]
                  for p in (50, 95, 99)}
        result["p50_raw_body_ms"] = 1000 * statistics.median(measured.round_trip["raw"])
        # Where the time beside the model goes: inside the route (decode, preprocess, the
        # model's call in the service, search, answer) or around it (HTTP, multipart, client).
        result["p50_in_service_ms"] = 1000 * statistics.median(
            measured.in_service["multipart"])
        result["p50_around_service_ms"] = 1000 * statistics.median(
            whole - inside for whole, inside in zip(measured.round_trip["multipart"],
                                                    measured.in_service["multipart"],
                                                    strict=True))
        result["paired_bare_call_ms"] = 1000 * statistics.median(measured.bare)
        result["model_device"] = runtime_device(runtime)
        asyncio.run(search_throughput(port, requests, 16, 1.0))  # warm-up
        b32, windows, model_cpu = [], [], 0.0
        for _ in range(LOAD_ROUNDS):
            best_b32, best_cpu = 0.0, 0.0
            for model in filter(None, (runtime, lanes)):
                before = time.process_time()
                images_per_s = 32 / timed(lambda m=model: m.embed_batch(batch), B32_CALLS)
                if images_per_s > best_b32:
                    best_b32, best_cpu = images_per_s, time.process_time() - before
            b32.append(best_b32)
            model_cpu += best_cpu
            windows.append(asyncio.run(search_throughput(port, requests, 16, LOAD_WINDOW_S,
                                                         server_pid=server.pid)))
        answered = sum(w.requests for w in windows)
        result["paired_b32_images_per_s_rounds"] = b32
        result["throughput_16_clients_per_s_rounds"] = [w.per_s for w in windows]
        result["paired_b32_images_per_s"] = statistics.median(b32)
        result["throughput_16_clients_per_s"] = statistics.median(w.per_s for w in windows)
        result["client_cpu_ms_per_request"] = sum(w.client_cpu_s for w in windows) * 1000 / answered
        # Where the CPU goes under load: the model's own CPU per image (batch 32, every
        # call of a round incl. the untimed one) against everything the service and the
        # client spend per request. Their ratio bounds the load ratio on a CPU-bound machine.
        result["model_cpu_ms_per_image"] = model_cpu * 1000 / (LOAD_ROUNDS * (B32_CALLS + 1)
                                                               * 32)
        server_cpu = [w.server_cpu_s for w in windows]
        if None not in server_cpu:
            result["server_cpu_ms_per_request"] = sum(server_cpu) * 1000 / answered
        # Enrolment latency as the gallery grows.
        with httpx.Client(base_url=spec.url, timeout=60) as client:
            latencies = []
            for i in range(200):
                data = queries[i % len(queries)]
                start = time.perf_counter()
                r = client.post("/enroll", data={"label": f"bench-{i}"},
                                files={"file": (f"{i}.jpg", data, "image/jpeg")})
                r.raise_for_status()
                latencies.append(time.perf_counter() - start)
            result["enroll_first20_ms"] = 1000 * statistics.median(latencies[:20])
            result["enroll_last20_ms"] = 1000 * statistics.median(latencies[-20:])
            result["enroll_gallery_growth"] = 200
    return result
