"""Benchmarks (``make bench``): embedding throughput, /search latency and throughput over
HTTP, start-up time, FAISS flat vs HNSW, and enrolment latency as the gallery grows.

Every target is a ratio between two numbers measured in the same run, because the machines
are shared and noisy. Writes ``bench/results.json`` and ``bench/results.md``.

    python -m bench.run --gallery ../shared/data/grocery/train --out bench/results.json
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch

from models.checkpoint import LoadedEncoder, load_checkpoint
from models.inference import TorchEmbedder, make_embedder
from models.runtime import DEFAULT_CHECKPOINT, Embedder, model_lanes, usable_cpus
from tests.helpers import free_port, service

ROOT = Path(__file__).resolve().parents[1]
LOAD_ROUNDS = 9  # rounds of 16-client load, each after batch-32 timings of its own
LOAD_WINDOW_S = 2.5  # the counted window of each round
B32_CALLS = 3  # timed batch-32 calls before each round (after one untimed)


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid`` so far; None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SideBySide:
    """The service's lanes under load as one runtime: single-threaded calls of
    ``embedder``, one image each, ``lanes`` of them at a time, each lane taking the next
    image as soon as its call ends."""

    def __init__(self, embedder: Embedder, lanes: int) -> None:
        self.embedder, self.lanes = embedder, lanes
        self.pool = ThreadPoolExecutor(lanes)

    def embed_batch(self, batch) -> np.ndarray:
        images = np.asarray(batch)
        return np.concatenate(list(self.pool.map(
            lambda i: self.embedder.embed_batch(images[i : i + 1]), range(len(images)))))


def runtime_device(runtime: Embedder) -> str:
    """"cuda:0", "cpu", ...: where the runtime computes (ONNX Runtime here: the CPU)."""
    return str(getattr(runtime, "device", "cpu"))


def service_lanes(runtime: Embedder) -> SideBySide | None:
    """The lanes the service runs under load with this runtime at its default settings
    (``models.runtime.model_lanes``), or None."""
    lane_embedder, lanes = model_lanes(runtime)
    return SideBySide(lane_embedder, lanes) if lane_embedder else None


def bench_embedding(loaded: LoadedEncoder, service_runtime: Embedder,
                    lanes: SideBySide | None = None) -> dict:
    """Eager fp32 PyTorch against the service's runtime (and its lanes at batch 32) in
    alternating blocks of calls, so that a drifting machine slows all alike. Each block
    starts with an untimed call: the runtime that ran before may still hold the cores
    (PyTorch's OpenMP threads spin for a while after a call) and the caches."""
    size = loaded.meta.preprocessing.image_size
    device = runtime_device(service_runtime)
    # Eager fp32 on the service's device, each on a copy of the encoder (a PyTorch service
    # runtime holds ``loaded.encoder`` itself, moved and converted): plain, the reference
    # of the target, and channels_last, the fastest eager PyTorch on a CPU.
    eager = {channels_last: TorchEmbedder(copy.deepcopy(loaded.encoder),
                                          loaded.meta.preprocessing, device, bf16=False,
                                          channels_last=channels_last)
             for channels_last in (False, True)}
    out: dict = {"service_runtime": service_runtime.name, "device": device,
                 "lanes": lanes.lanes if lanes else 0}
    for batch, blocks, per_block in ((1, 5, 4), (32, 4, 2)):
        x = torch.randn(batch, 3, size, size)
        runs: dict[str, tuple[Embedder | SideBySide, torch.Tensor]] = {
            "eager_fp32": (eager[False], x), "eager_fp32_channels_last": (eager[True], x),
            "service": (service_runtime, x)}
        if lanes and batch > 1:  # (a lone request gets the all-core call, "service")
            runs["lanes"] = (lanes, x)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(blocks):
            for name, (runtime, inputs) in runs.items():
                runtime.embed_batch(inputs)
                for _ in range(per_block):
                    start = time.perf_counter()
                    runtime.embed_batch(inputs)
                    times[name].append(time.perf_counter() - start)
        for name, seconds in times.items():
            out[f"{name}_b{batch}_images_per_s"] = len(runs[name][1]) / statistics.median(seconds)
    # Under load the service embeds its batches in lanes where it has them.
    best = max(out["service_b32_images_per_s"], out.get("lanes_b32_images_per_s", 0.0))
    out["speedup_b32"] = best / out["eager_fp32_b32_images_per_s"]
    out["speedup_b32_over_channels_last"] = best / out["eager_fp32_channels_last_b32_images_per_s"]
    out["bare_single_image_ms"] = 1000 / out["service_b1_images_per_s"]
    return out


def start_service(data_dir: Path, gallery: Path, port: int, checkpoint: str):
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "CHECKPOINT": checkpoint,
           "DATA_DIR": str(data_dir), "GALLERY_DIR": str(gallery), "LOG_LEVEL": "WARNING"}
    env.pop("API_KEY", None)
    return service([sys.executable, "-m", "app"], env, port, timeout=1800)


def bench_startup(gallery: Path, checkpoint: str, work: Path) -> dict:
    data_dir = work / "startup-data"
    times = {}
    for name in ("first_start_s", "restart_s"):
        port = free_port()
        start = time.perf_counter()
        with start_service(data_dir, gallery, port, checkpoint):
            times[name] = time.perf_counter() - start
            items = httpx.get(f"http://127.0.0.1:{port}/readyz").json()["gallery_items"]
    times["gallery_items"] = items
    times["restart_speedup"] = times["first_start_s"] / times["restart_s"]
    return times


BOUNDARY = "bench-7f3a9c"


def search_request(image: bytes, port: int) -> bytes:
    """A complete ``POST /search`` HTTP/1.1 request with the image as multipart form data."""
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"'
            f"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + image + \
        f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
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


async def search_latencies(port: int, requests: list[bytes], count: int,
                           bare_call: Callable[[], object] | None = None, blocks: int = 5,
                           ) -> tuple[list[float], list[float]]:
    """Seconds per request, one client sending one request after another. With
    ``bare_call``, blocks of requests alternate with blocks of bare model calls, so that the
    two are compared under the same conditions of a shared, drifting machine (blocks, not
    single pairs: alternating call by call, the two processes evict each other's weights
    from the CPU caches and both slow down)."""
    connection = await BareConnection.open(port)
    latencies, bare = [], []
    per_block = max(1, count // blocks)
    for block in range(blocks):
        if bare_call is not None:
            for i in range(per_block + 2):  # two warm-up calls per block
                start = time.perf_counter()
                bare_call()
                if i >= 2:
                    bare.append(time.perf_counter() - start)
        for i in range(per_block + 2):  # and two warm-up requests
            start = time.perf_counter()
            await connection.send(requests[(block * per_block + i) % len(requests)])
            if i >= 2:
                latencies.append(time.perf_counter() - start)
    connection.close()
    return latencies, bare


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
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    requests = [search_request(query, port) for query in queries]
    with start_service(work / "startup-data", gallery, port, checkpoint) as server:
        latencies, bare = asyncio.run(search_latencies(
            port, requests, 100, lambda: runtime.embed_batch(one)))
        latencies.sort()
        result = {f"p{p}_ms": 1000 * latencies[int(len(latencies) * p / 100) - 1]
                  for p in (50, 95, 99)}
        result["paired_bare_call_ms"] = 1000 * statistics.median(bare)
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
        with httpx.Client(base_url=url, timeout=60) as client:
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


def vectors(kind: str, n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """n random unit vectors. ``uniform``: no structure at all, the worst case for any
    approximate index. ``clustered``: like a gallery's embeddings, photos grouped around
    n/100 class centres in a 32-d subspace (a trained 128-d embedding has far fewer than
    128 intrinsic dimensions), plus isotropic noise."""
    if kind == "uniform":
        base = rng.standard_normal((n, dim), dtype=np.float32)
    else:
        latent = 32
        centres = rng.standard_normal((max(1, n // 100), latent), dtype=np.float32)
        z = centres[rng.integers(0, len(centres), n)]
        z += 0.5 * rng.standard_normal((n, latent), dtype=np.float32)
        base = z @ rng.standard_normal((latent, dim), dtype=np.float32)
        base += np.sqrt(latent) * 0.1 * rng.standard_normal((n, dim), dtype=np.float32)
    return base / np.linalg.norm(base, axis=1, keepdims=True)


def near(base: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Queries near stored vectors (noise of norm ~0.05), as a photo near its gallery twin."""
    noise = rng.standard_normal((count, base.shape[1]), dtype=np.float32)
    q = base[rng.choice(len(base), count, replace=False)] + noise * (0.05 / np.sqrt(base.shape[1]))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def search_one_by_one(index, q: np.ndarray) -> list:
    return [index.search(q[i : i + 1], 5) for i in range(len(q))]


def recall_at_5(exact, approximate, q: np.ndarray) -> float:
    truth, found = exact.search(q, 5)[1], approximate.search(q, 5)[1]
    return float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(truth, found, strict=True)]))


@contextmanager
def faiss_threads(count: int) -> Iterator[None]:
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def bench_faiss(sizes: dict[str, list[int]], dim: int = 128, queries: int = 200,
                target_recall: float = 0.95) -> dict:
    """Flat (exact) vs HNSW (M 32), one query per call on one thread, as the service
    searches (indexes are built and recall computed with all cores). efSearch
    is the smallest that reaches ``target_recall`` on separate tuning queries, as one would
    tune it in production; recall and time are then measured on fresh queries."""
    import faiss

    rng = np.random.default_rng(0)
    out: dict = {}
    for kind, kind_sizes in sizes.items():
        for n in kind_sizes:
            base = vectors(kind, n, dim, rng)
            tune, q = near(base, queries, rng), near(base, queries, rng)
            flat = faiss.IndexFlatIP(dim)
            flat.add(base)
            with faiss_threads(1):  # as the service searches (app/services/index.py)
                flat_s = timed(lambda f=flat, q=q: search_one_by_one(f, q), 2) / queries
            hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = 64
            build = time.perf_counter()
            hnsw.add(base)
            build = time.perf_counter() - build
            for ef in (16, 32, 64, 128, 256, 512, 1024, 2048):
                hnsw.hnsw.efSearch = ef
                if recall_at_5(flat, hnsw, tune) >= target_recall:
                    break
            with faiss_threads(1):
                hnsw_s = timed(lambda h=hnsw, q=q: search_one_by_one(h, q), 2) / queries
            result = out[f"{kind} {n}"] = {
                "vectors": kind, "n": n, "flat_ms_per_query": flat_s * 1000,
                "hnsw_ms_per_query": hnsw_s * 1000, "hnsw_speedup": flat_s / hnsw_s,
                "hnsw_recall@5": recall_at_5(flat, hnsw, q), "hnsw_ef_search": ef,
                "hnsw_build_s": build,
            }
            print(f"  {kind} {n:,}: {result}", flush=True)
    return out


def markdown(results: dict) -> str:
    e, s, st = results["embedding"], results["search"], results["startup"]
    bare_ms = s.get("paired_bare_call_ms", e["bare_single_image_ms"])
    lines = [
        f"Machine: {results['machine']}; checkpoint {results['checkpoint']}.",
        "",
        "| measurement | value | target | met |",
        "|---|---|---|---|",
        f"| eager fp32 PyTorch, batch 1 / 32 (img/s) | {e['eager_fp32_b1_images_per_s']:.1f} / "
        f"{e['eager_fp32_b32_images_per_s']:.1f} | | |",
        *([f"| eager fp32 PyTorch, channels_last, batch 1 / 32 (img/s) | "
           f"{e['eager_fp32_channels_last_b1_images_per_s']:.1f} / "
           f"{e['eager_fp32_channels_last_b32_images_per_s']:.1f} | | |"]
          if "eager_fp32_channels_last_b32_images_per_s" in e else []),
        f"| service runtime ({e['service_runtime']}), batch 1 / 32 (img/s) | "
        f"{e['service_b1_images_per_s']:.1f} / {e['service_b32_images_per_s']:.1f} | | |",
        *([f"| service runtime, {e['lanes']} single-threaded lanes side by side, one image "
           f"a call, 32 images (img/s) | {e['lanes_b32_images_per_s']:.1f} | | |"]
          if e.get("lanes") else []),
        f"| service (one call or the lanes, the faster) / eager at batch 32 | "
        f"{e['speedup_b32']:.2f}x | >= 3.5x | "
        f"{_ok(e['speedup_b32'] >= 3.5)} |",
        *([f"| the same / eager channels_last at batch 32 | "
           f"{e['speedup_b32_over_channels_last']:.2f}x | | |"]
          if "speedup_b32_over_channels_last" in e else []),
        f"| /search p50 / p95 / p99, 1 client (ms) | {s['p50_ms']:.1f} / {s['p95_ms']:.1f} / "
        f"{s['p99_ms']:.1f} | | |",
        f"| bare single-image model call, timed between the blocks of requests (ms) | "
        f"{bare_ms:.1f} | | |",
        f"| /search p50 / bare call | {s['p50_ms'] / bare_ms:.2f}x | <= 1.5x | "
        f"{_ok(s['p50_ms'] / bare_ms <= 1.5)} |",
        f"| /search throughput, 16 clients, sustained (req/s; median of {LOAD_ROUNDS} rounds) | "
        f"{s['throughput_16_clients_per_s']:.1f} | | |",
        f"| model at batch 32 (one call or the lanes, the faster), measured just before the "
        f"16 clients (img/s) | "
        f"{s.get('paired_b32_images_per_s', float('nan')):.1f} | | |",
        f"| load generator's CPU per request (ms) | "
        f"{s.get('client_cpu_ms_per_request', float('nan')):.2f} | | |",
        f"| 16-client throughput / best batch throughput of the same minutes (each round "
        f"against batch 32 just before it or the bare call; median) | "
        f"{results['load_ratio']:.2f} | >= 0.8 | "
        f"{_ok(results['load_ratio'] >= 0.8)} |",
        *cpu_rows(s),
        f"| start-up to ready, {st['gallery_items']} photos: first / restart (s) | "
        f"{st['first_start_s']:.1f} / {st['restart_s']:.1f} | | |",
        f"| restart speed-up | {st['restart_speedup']:.1f}x | >= 10x | "
        f"{_ok(st['restart_speedup'] >= 10)} |",
        f"| enrol latency, first 20 / last 20 of 200 (ms) | {s['enroll_first20_ms']:.1f} / "
        f"{s['enroll_last20_ms']:.1f} | flat | "
        f"{_ok(s['enroll_last20_ms'] <= 1.5 * s['enroll_first20_ms'])} |",
    ]
    for f in results["faiss"].values():
        lines.append(
            f"| FAISS {f['n']:,} {f['vectors']} 128-d: flat / HNSW ms per query "
            f"(efSearch {f['hnsw_ef_search']}), recall@5 | "
            f"{f['flat_ms_per_query']:.3f} / {f['hnsw_ms_per_query']:.3f} "
            f"({f['hnsw_speedup']:.1f}x), {f['hnsw_recall@5']:.3f} | "
            + ("HNSW >= 20x, recall >= 0.95 | "
               f"{_ok(f['hnsw_speedup'] >= 20 and f['hnsw_recall@5'] >= 0.95)} |"
               if f["n"] >= 1_000_000 else "| |"))
    return "\n".join(lines) + "\n"


def load_ratio(search: dict) -> float:
    """16-client throughput over the best batch throughput measured in the same minutes,
    round by round (median): batch 32 (one call or the lanes, the faster) timed just
    before the round, or the bare single-image call timed between the blocks of requests."""
    bare = 1000 / search["paired_bare_call_ms"]
    return statistics.median(
        load / max(b32, bare) for load, b32 in zip(search["throughput_16_clients_per_s_rounds"],
                                                  search["paired_b32_images_per_s_rounds"],
                                                  strict=True))


def cpu_rows(s: dict) -> list[str]:
    """The CPU accounting of the 16-client rounds (Linux: read from /proc)."""
    if "server_cpu_ms_per_request" not in s:
        return []
    spent = s["server_cpu_ms_per_request"] + s["client_cpu_ms_per_request"]
    cores = usable_cpus()
    busy = spent * s["throughput_16_clients_per_s"] / 1000
    rows = [
        f"| CPU per request at 16 clients: service + load generator / the model's share "
        f"(batch 32) (ms) | {spent:.1f} / {s['model_cpu_ms_per_image']:.1f} | | |",
        f"| cores busy during the 16-client rounds | {busy:.2f} of {cores} | | |",
    ]
    if s.get("model_device", "cpu") == "cpu":  # on a GPU the model's CPU bounds nothing
        rows.insert(1, f"| CPU-bound ceiling of the load ratio (model CPU / all CPU per "
                       f"request) | {s['model_cpu_ms_per_image'] / spent:.2f} | | |")
    return rows


def _ok(flag: bool) -> str:
    return "yes" if flag else "**no**"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", type=Path, required=True, help="<class>/*.jpg folder")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    p.add_argument("--faiss-sizes", default="10000,100000,1000000",
                   help="gallery sizes of clustered (embedding-like) vectors")
    p.add_argument("--faiss-uniform-sizes", default="10000,100000",
                   help="sizes of uniformly random vectors, the worst case (1M takes "
                        "~10 min to index on 2 cores)")
    p.add_argument("--skip", default="", help="comma-separated: embedding,startup,search,faiss")
    args = p.parse_args(argv)
    skip = set(args.skip.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    queries = [path.read_bytes() for path in sorted(args.gallery.rglob("*.jpg"))[::50][:40]]
    # With --skip, the other parts' earlier numbers are kept.
    earlier = json.loads(args.out.read_text()) if skip - {""} and args.out.exists() else {}
    results: dict = {**earlier,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"CUDA {'yes' if torch.cuda.is_available() else 'no'}",
        "checkpoint": str(args.checkpoint),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        if {"embedding", "search"} - skip:  # both measure the service's runtime
            loaded = load_checkpoint(args.checkpoint)
            service_runtime = make_embedder(loaded, "auto", "auto", cache_dir=work)
            lanes = service_lanes(service_runtime)
        if "embedding" not in skip:
            print("embedding throughput ...", flush=True)
            results["embedding"] = bench_embedding(loaded, service_runtime, lanes)
        if "startup" not in skip:
            print("start-up: first start and restart ...", flush=True)
            results["startup"] = bench_startup(args.gallery, args.checkpoint, work)
        if "search" not in skip:
            print("/search latency and throughput, enrolment ...", flush=True)
            results["search"] = bench_search(args.gallery, args.checkpoint, work, queries,
                                             service_runtime, lanes)
            results["load_ratio"] = load_ratio(results["search"])
        if "faiss" not in skip:
            print("FAISS flat vs HNSW ...", flush=True)
            results["faiss"] = bench_faiss({
                kind: [int(n) for n in sizes.split(",") if n]
                for kind, sizes in (("clustered", args.faiss_sizes),
                                    ("uniform", args.faiss_uniform_sizes))})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if {"embedding", "search", "startup", "faiss"} <= set(results):
        table = markdown(results)
        args.out.with_suffix(".md").write_text(table)
        print(table)
    else:
        print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
