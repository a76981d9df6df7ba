"""The PostgreSQL store on its own: HNSW answers as the exact scan does, label sums follow
every write, and /consistency finds sums that do not match the embeddings."""

import numpy as np
import psycopg

from app.stores import postgres
from app.stores.base import NewPhoto
from app.stores.postgres import PostgresStore


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def filled(database_url: str, n: int = 60, dim: int = 8) -> tuple[PostgresStore, np.ndarray]:
    store = PostgresStore(database_url, dim, "fp1")
    vectors = unit_rows(n, dim, 0)
    photos = [NewPhoto(f"l{i % 3}", f"{i:064x}", "enrolled", "", ".jpg", 1, 1, b"x%d" % i)
              for i in range(n)]
    assert all(created for _, created in store.add(photos, vectors))
    store.open_index()
    return store, vectors


def test_hnsw_finds_what_the_exact_scan_finds(database_url):
    store, vectors = filled(database_url)
    queries = unit_rows(10, 8, 1)
    exact = [[h.item.id for h in store.search(q, 5)] for q in queries]
    store.exact_search_below = 0  # the HNSW index from here on
    approx = [[h.item.id for h in store.search(q, 5)] for q in queries]
    assert approx == exact
    expected = np.argsort(-(vectors @ queries[0]))[:5] + 1  # ids count from 1
    assert exact[0] == expected.tolist()
    store.close()


def test_the_search_plan_recounts_the_gallery_at_most_every_few_seconds(database_url):
    store, _ = filled(database_url)
    now = [100.0]
    store.clock = lambda: now[0]
    query = unit_rows(1, 8, 1)[0]
    store.search(query, 5)
    more = [NewPhoto("l0", f"{i:064x}", "enrolled", "", ".jpg", 1, 1, b"y%d" % i)
            for i in range(100, 103)]
    store.add(more, unit_rows(3, 8, 2))
    assert len(store.search(query, 100)) == 63  # the new items are found at once ...
    assert store._gallery_size(None) == 60  # ... while the count is the one of 100.0 s
    now[0] += postgres.SIZE_TTL_S + 0.1
    store.search(query, 5)
    assert store._gallery_size(None) == 63
    store.close()


def test_label_sums_follow_writes_and_a_tampered_sum_is_reported(database_url):
    store, vectors = filled(database_url)
    stats = store.label_stats()
    assert stats.labels == ["l0", "l1", "l2"] and stats.counts.tolist() == [20, 20, 20]
    np.testing.assert_allclose(stats.sums[0], vectors[0::3].sum(0), atol=1e-4)
    store.delete([item for item in store.list_items("l1")][:5])
    assert store.label_stats().counts.tolist() == [20, 15, 20]
    assert store.check()["label_mismatches"] == []
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE label_stats SET count = count + 1 WHERE label = 'l2'")
    assert store.check()["label_mismatches"] == ["l2"]
    store.open_index()  # start-up derives the sums again
    assert store.check()["label_mismatches"] == []
    store.close()
