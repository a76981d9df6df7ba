"""FAISS flat (exact) against HNSW at gallery sizes the service may grow to."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from bench.harness import timed


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
            with faiss_threads(1):  # as the service searches (app/stores/faiss_index.py)
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
