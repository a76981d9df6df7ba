"""Benchmarks (``make bench``): embedding throughput, /search latency and throughput over
HTTP, start-up time, FAISS flat vs HNSW, PostgreSQL exact vs HNSW (the shared store's own
query, beside FAISS flat), and enrolment latency as the gallery grows.

Every target is a ratio between two numbers measured in the same run, because the machines
are shared and noisy (``bench/report.py`` holds the targets). Writes ``bench/results.json``
and ``bench/results.md``.

    python -m bench.run --gallery ../shared/data/grocery/train --out bench/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench.embedding import bench_embedding, service_lanes
from bench.faiss_index import bench_faiss
from bench.harness import ROOT, cpu_description
from bench.http_load import bench_search
from bench.postgres_search import bench_postgres
from bench.report import add_ratios, load_ratio, markdown
from bench.startup import bench_startup
from models.base import DEFAULT_CHECKPOINT
from models.checkpoint import load_checkpoint
from models.runtimes.factory import open_embedder


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
    p.add_argument("--postgres-sizes", default="10000,100000,1000000",
                   help="gallery sizes for PostgreSQL search, exact and HNSW")
    p.add_argument("--skip", default="",
                   help="comma-separated: embedding,startup,search,faiss,postgres")
    args = p.parse_args(argv)
    skip = set(args.skip.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    queries = [path.read_bytes() for path in sorted(args.gallery.rglob("*.jpg"))[::50][:40]]
    # With --skip, the other parts' earlier numbers are kept.
    earlier = json.loads(args.out.read_text()) if skip - {""} and args.out.exists() else {}
    results: dict = {**earlier,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {cpu_description()}, "
                   f"torch {torch.__version__}, "
                   f"CUDA {'yes' if torch.cuda.is_available() else 'no'}",
        "checkpoint": str(args.checkpoint),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        if {"embedding", "search"} - skip:  # both measure the service's runtime
            loaded = load_checkpoint(args.checkpoint)
            service_runtime = open_embedder(loaded, "auto", "auto", cache_dir=work).embedder
            lanes = service_lanes(service_runtime)
            fp32_onnx = (open_embedder(loaded, "onnx", "cpu", cache_dir=work).embedder
                         if service_runtime.name == "int8" else None)
        if "embedding" not in skip:
            print("embedding throughput ...", flush=True)
            results["embedding"] = bench_embedding(loaded, service_runtime, lanes, fp32_onnx)
        if "startup" not in skip:
            print("start-up: first start and restart ...", flush=True)
            results["startup"] = bench_startup(args.gallery, args.checkpoint, work)
        if "search" not in skip:
            print("/search latency and throughput, enrolment ...", flush=True)
            results["search"] = bench_search(args.gallery, args.checkpoint, work, queries,
                                             service_runtime, lanes)
            results["load_ratio"] = load_ratio(results["search"])
        if "embedding" in results and "search" in results:
            add_ratios(results)
        if "faiss" not in skip:
            print("FAISS flat vs HNSW ...", flush=True)
            results["faiss"] = bench_faiss({
                kind: [int(n) for n in sizes.split(",") if n]
                for kind, sizes in (("clustered", args.faiss_sizes),
                                    ("uniform", args.faiss_uniform_sizes))})
        if "postgres" not in skip:
            print("PostgreSQL search, exact vs HNSW ...", flush=True)
            results["postgres"] = bench_postgres(
                [int(n) for n in args.postgres_sizes.split(",") if n])
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
