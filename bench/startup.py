"""Start-up: the first start (embedding the gallery) against a restart (nothing to embed)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from bench.harness import free_port, start_service


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
