"""The shared store's search in PostgreSQL (exact, and HNSW with its recall@5 against exact)
beside FAISS flat in process, on the same vectors, through the store's own query.

    python -m bench.postgres_search --sizes 10000,100000 [--json runs/pg.json]

A real PostgreSQL with pgvector (pgserver) in a temporary folder; vectors as
``bench.faiss_index.vectors("clustered", ...)``, loaded with COPY.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import faiss
import numpy as np
import psycopg

from app.stores.postgres import PostgresStore
from bench.faiss_index import near, vectors
from training.results import write_json

FINGERPRINT = "bench"


def load(url: str, base: np.ndarray) -> None:
    """Photos (one byte each), items and embeddings, by COPY (minutes less than INSERTs)."""
    with psycopg.connect(url) as conn:
        with conn.cursor().copy("COPY photos FROM STDIN") as copy:
            for i in range(len(base)):
                copy.write_row((f"{i}", b"\x00"))
        with conn.cursor().copy("COPY items (label, sha256, source, path, width, height, "
                                "created_at) FROM STDIN") as copy:
            for i in range(len(base)):
                copy.write_row((f"label{i // 100}", f"{i}", "enrolled", f"images/{i}.jpg",
                                1, 1, 0.0))
        with conn.cursor().copy("COPY embeddings FROM STDIN") as copy:
            for i, vector in enumerate(base):
                copy.write_row((i + 1, FINGERPRINT, "[" + ",".join(f"{v:.6f}" for v in vector)
                                + "]"))


def faiss_search(index: faiss.Index, vector: np.ndarray) -> tuple:
    return index.search(vector[None], 5)


def per_query_ms(search, queries: np.ndarray) -> tuple[float, list]:
    results = [search(queries[0])]  # warm-up
    started = time.perf_counter()
    results = [search(q) for q in queries]
    return (time.perf_counter() - started) * 1000 / len(queries), results


def bench_postgres(sizes: list[int], dim: int = 128, queries: int = 100) -> dict:
    import pgserver

    rng = np.random.default_rng(0)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        server = pgserver.get_server(Path(folder), cleanup_mode="stop")
        try:
            for n in sizes:
                name = f"bench{n}"
                with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                    conn.execute(f"CREATE DATABASE {name}")
                url = server.get_uri().replace("/postgres?", f"/{name}?", 1)
                base = vectors("clustered", n, dim, rng)
                q = near(base, queries, rng)
                store = PostgresStore(url, dim, FINGERPRINT, exact_search_below=n + 1)
                started = time.perf_counter()
                load(url, base)
                loaded_s = time.perf_counter() - started
                started = time.perf_counter()
                store.open_index()  # builds the HNSW index and the label sums
                index_s = time.perf_counter() - started
                exact_ms, exact = per_query_ms(partial(store.search, k=5), q)
                store.exact_search_below = 0
                hnsw_ms, approx = per_query_ms(partial(store.search, k=5), q)
                store.close()
                recall = np.mean([len({h.item.id for h in a} & {h.item.id for h in e}) / 5
                                  for a, e in zip(approx, exact, strict=True)])
                flat = faiss.IndexFlatIP(dim)
                flat.add(base)
                faiss_ms, _ = per_query_ms(partial(faiss_search, flat), q)
                out[str(n)] = {"load_s": round(loaded_s, 1), "hnsw_build_s": round(index_s, 1),
                               "exact_ms": round(exact_ms, 2), "hnsw_ms": round(hnsw_ms, 2),
                               "hnsw_recall_at_5": round(float(recall), 3),
                               "faiss_flat_ms": round(faiss_ms, 3)}
                print(n, out[str(n)], flush=True)
        finally:
            server.cleanup()
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.postgres_search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    result = bench_postgres([int(s) for s in args.sizes.split(",")], queries=args.queries)
    print(json.dumps(result, indent=1))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
