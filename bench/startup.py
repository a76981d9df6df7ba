"""Start-up: the first start (embedding the gallery) against a restart (nothing to embed)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from bench.harness import Service


def bench_startup(gallery: Path, checkpoint: str, work: Path) -> dict:
    data_dir = work / "startup-data"
    times = {}
    for name in ("first_start_s", "restart_s"):
        spec = Service(checkpoint, data_dir, gallery)
        start = time.perf_counter()
        with spec.run():
            times[name] = time.perf_counter() - start
            items = httpx.get(f"{spec.url}/readyz").json()["gallery_items"]
    times["gallery_items"] = items
    times["restart_speedup"] = times["first_start_s"] / times["restart_s"]
    return times
