"""The shared store: PostgreSQL with pgvector, for several replicas behind one gallery.

Everything lives in the database, so a replica holds no state of its own: items, the photos
themselves (``bytea``: replicas share them and ``pg_dump`` backs up everything), embeddings
as ``vector`` by checkpoint fingerprint, tombstones, and per-label counts and sums. Each
write is one transaction that commits before the API answers. Searches run in the
database: exact below ``exact_search_below`` items, through an HNSW index above.

The schema is versioned: ``schema_migrations`` records the versions applied and start-up
applies the missing ones from ``MIGRATIONS`` in order, under an advisory lock, so replicas
starting together migrate once. Start-up work (gallery folder sync, re-embedding for a new
checkpoint) runs under another advisory lock: one replica does it, the others wait and
find it done.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import errors, sql
from psycopg_pool import ConnectionPool, PoolTimeout

from app.stores.base import (
    GalleryStore,
    Hit,
    Item,
    LabelStats,
    NewPhoto,
    StorageFull,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE photos (
        sha256 text PRIMARY KEY,
        data bytea NOT NULL
    );
    CREATE TABLE items (
        id bigserial PRIMARY KEY,
        label text NOT NULL,
        sha256 text NOT NULL REFERENCES photos (sha256),
        source text NOT NULL CHECK (source IN ('gallery', 'enrolled')),
        path text NOT NULL,
        width integer NOT NULL,
        height integer NOT NULL,
        created_at double precision NOT NULL,
        UNIQUE (label, sha256)
    );
    CREATE INDEX items_sha256 ON items (sha256);
    CREATE INDEX items_gallery_path ON items (path) WHERE source = 'gallery';
    CREATE TABLE embeddings (
        item_id bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
        fingerprint text NOT NULL,
        vector vector NOT NULL,
        PRIMARY KEY (item_id, fingerprint)
    );
    CREATE INDEX embeddings_fingerprint ON embeddings (fingerprint, item_id);
    CREATE TABLE label_stats (
        fingerprint text NOT NULL,
        label text NOT NULL,
        count integer NOT NULL CHECK (count > 0),
        sum vector NOT NULL,
        PRIMARY KEY (fingerprint, label)
    );
    -- Gallery files deleted through the API stay deleted when the folder is scanned again.
    CREATE TABLE tombstones (
        path text PRIMARY KEY,
        sha256 text NOT NULL
    );
    """,
]
MIGRATION_LOCK, STARTUP_LOCK = 0x46534731, 0x46534732  # advisory lock keys ("FSG1", "FSG2")
RETRIED = (errors.SerializationFailure, errors.DeadlockDetected, errors.ForeignKeyViolation)
ITEM = "i.id, i.label, i.sha256, i.source, i.path, i.width, i.height, i.created_at"
FIND_ITEM = f"SELECT {ITEM} FROM items i WHERE label = %s AND sha256 = %s"
# Items this checkpoint has not embedded yet, by id; %s is the fingerprint.
WITHOUT_EMBEDDING = ("FROM items i WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE "
                     "e.item_id = i.id AND e.fingerprint = %s) ORDER BY i.id")


def migrate(conninfo: str) -> tuple[int, int]:
    """Bring the schema to the newest version: (version found, version now in force)."""
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY "
                     "KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        current = int(row[0]) if row else 0
        if current > len(MIGRATIONS):
            raise StoreError(f"the database's schema is version {current}, newer than this "
                             f"service knows ({len(MIGRATIONS)}): upgrade the service")
        for version in range(current + 1, len(MIGRATIONS) + 1):
            log.info("migrating the gallery database to schema version %d", version)
            conn.execute(MIGRATIONS[version - 1])
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        return current, len(MIGRATIONS)


SIZE_TTL_S = 5.0  # how long a replica trusts its count of the gallery for the search plan


class PostgresStore(GalleryStore):
    reads_in_memory = False

    def __init__(self, conninfo: str, dim: int, fingerprint: str, pool_size: int = 8,
                 exact_search_below: int = 1000, hnsw_ef_search: int = 100) -> None:
        self.fingerprint, self.dim = fingerprint, dim
        self.exact_search_below = exact_search_below
        try:
            found, _ = migrate(conninfo)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot reach the gallery database: {exc}") from None

        def configure(conn: psycopg.Connection) -> None:
            register_vector(conn)
            conn.execute(f"SET hnsw.ef_search = {int(hnsw_ef_search)}")
            conn.commit()

        self.pool = ConnectionPool(conninfo, min_size=1, max_size=pool_size, timeout=5,
                                   configure=configure, check=ConnectionPool.check_connection,
                                   kwargs={"connect_timeout": 5}, open=True)
        self.created = found == 0
        # The HNSW index covers this checkpoint's vectors only: a partial index on the
        # vectors cast to their dimension (the column holds vectors of any checkpoint).
        self._cast = sql.SQL("(e.vector::vector({}))").format(sql.Literal(dim))
        self._only_this = sql.SQL("e.fingerprint = {}").format(sql.Literal(fingerprint))
        # The gallery's size as last counted, and when: it only chooses exact or HNSW search
        # (both correct), so a few seconds' staleness saves a query per search.
        self._size: tuple[float, int] | None = None
        self.clock: Callable[[], float] = time.monotonic

    # Connections -------------------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection inside one transaction; unreachable database -> 503."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailable(f"the gallery database is unreachable: {exc}") from None
        except errors.DiskFull as exc:
            raise StorageFull(28, f"the gallery database is full: {exc}") from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the gallery database is unreachable: {exc}") from None

    def _transaction(self, work: Callable[[psycopg.Connection], T]) -> T:
        """Run ``work`` in one transaction, again when it lost a race with another replica
        (serialisation failure, deadlock, a photo deleted under it)."""
        for attempt in range(5):
            try:
                with self._connection() as conn:
                    return work(conn)
            except RETRIED:
                if attempt == 4:
                    raise
                time.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    def _items(self, query: sql.Composable | str, params: tuple | dict = ()) -> list[Item]:
        with self._connection() as conn:
            return [Item(*row) for row in conn.execute(query, params).fetchall()]

    # Start-up ----------------------------------------------------------------------------
    @contextmanager
    def startup(self) -> Iterator[None]:
        with self._connection() as conn:
            conn.autocommit = True
            conn.execute("SELECT pg_advisory_lock(%s)", (STARTUP_LOCK,))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (STARTUP_LOCK,))
                conn.autocommit = False

    def open_index(self) -> None:
        index = sql.Identifier("embeddings_hnsw_" + re.sub(r"\W", "_", self.fingerprint))

        def rebuild(conn: psycopg.Connection) -> None:
            conn.execute(sql.SQL(
                "CREATE INDEX IF NOT EXISTS {} ON embeddings USING hnsw "
                "((vector::vector({})) vector_ip_ops) WHERE fingerprint = {}").format(
                    index, sql.Literal(self.dim), sql.Literal(self.fingerprint)))
            # Derived from the embeddings once per start, then kept by every write.
            conn.execute("DELETE FROM label_stats WHERE fingerprint = %s", (self.fingerprint,))
            conn.execute(
                "INSERT INTO label_stats SELECT e.fingerprint, i.label, count(*), sum(e.vector)"
                " FROM embeddings e JOIN items i ON i.id = e.item_id WHERE e.fingerprint = %s"
                " GROUP BY e.fingerprint, i.label", (self.fingerprint,))

        self._transaction(rebuild)

    def gallery_items(self) -> dict[str, Item]:
        items = self._items(f"SELECT {ITEM} FROM items i WHERE source = 'gallery'")
        return {item.path: item for item in items}

    def tombstoned_paths(self) -> set[str]:
        with self._connection() as conn:
            return {r[0] for r in conn.execute("SELECT path FROM tombstones")}

    def forget_gallery_items(self, items: list[Item]) -> None:
        self._delete(items, tombstone=False)

    def missing_embedding(self, limit: int) -> list[Item]:
        return self._items(f"SELECT {ITEM} {WITHOUT_EMBEDDING} LIMIT %s",
                           (self.fingerprint, limit))

    def set_embeddings(self, ids: list[int], vectors: np.ndarray) -> None:
        def write(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO embeddings VALUES (%s, %s, %s) ON CONFLICT (item_id, "
                    "fingerprint) DO UPDATE SET vector = excluded.vector",
                    [(i, self.fingerprint, _vector(v)) for i, v in
                     zip(ids, vectors, strict=True)])

        self._transaction(write)  # label_stats follow in open_index

    # Reads -------------------------------------------------------------------------------
    def _searchable(self, where: str = "") -> str:
        return (f"SELECT {ITEM} FROM items i JOIN embeddings e ON e.item_id = i.id AND "
                f"e.fingerprint = %(fp)s {where} ORDER BY i.id")

    def get(self, item_id: int) -> Item | None:
        found = self._items(self._searchable("WHERE i.id = %(id)s"),
                            {"fp": self.fingerprint, "id": item_id})
        return found[0] if found else None

    def find(self, label: str, sha256: str) -> Item | None:
        found = self._items(FIND_ITEM, (label, sha256))
        return found[0] if found else None

    def list_items(self, label: str | None = None) -> list[Item]:
        if label is None:
            return self._items(self._searchable(), {"fp": self.fingerprint})
        return self._items(self._searchable("WHERE i.label = %(label)s"),
                           {"fp": self.fingerprint, "label": label})

    def count(self) -> int:
        with self._connection() as conn:
            return self._count(conn)

    def _count(self, conn: psycopg.Connection) -> int:
        row = conn.execute("SELECT coalesce(sum(count), 0) FROM label_stats WHERE "
                           "fingerprint = %s", (self.fingerprint,)).fetchone()
        return int(row[0]) if row else 0

    def label_stats(self) -> LabelStats:
        with self._connection() as conn:
            rows = conn.execute("SELECT label, count, sum FROM label_stats WHERE fingerprint"
                                " = %s ORDER BY label", (self.fingerprint,)).fetchall()
        if not rows:
            return LabelStats([], np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32))
        return LabelStats([r[0] for r in rows], np.array([r[1] for r in rows], np.int64),
                          np.stack([_array(r[2]) for r in rows]))

    def search(self, vector: np.ndarray, k: int, label: str | None = None) -> list[Hit]:
        query = _vector(vector)
        with self._connection() as conn:
            if label is not None:  # one label's photos: exact, through the label's rows
                rows = conn.execute(
                    f"SELECT {ITEM}, -(e.vector <#> %(q)s) FROM items i JOIN embeddings e ON "
                    "e.item_id = i.id AND e.fingerprint = %(fp)s WHERE i.label = %(label)s "
                    "ORDER BY e.vector <#> %(q)s, i.id LIMIT %(k)s",
                    {"q": query, "fp": self.fingerprint, "label": label, "k": k}).fetchall()
            else:
                # The cast matches the HNSW index's expression; without it, an exact scan.
                distance = (self._cast if self._gallery_size(conn) >= self.exact_search_below
                            else sql.SQL("e.vector"))
                rows = conn.execute(sql.SQL(
                    "SELECT {item}, -(e.vector <#> %(q)s) FROM embeddings e JOIN items i ON "
                    "i.id = e.item_id WHERE {only} ORDER BY {d} <#> %(q)s LIMIT %(k)s").format(
                        item=sql.SQL(ITEM), only=self._only_this, d=distance),
                    {"q": query, "k": k}).fetchall()
        return [Hit(Item(*row[:8]), float(row[8])) for row in rows]

    def _gallery_size(self, conn: psycopg.Connection) -> int:
        now = self.clock()
        if self._size is None or now - self._size[0] > SIZE_TTL_S:
            self._size = (now, self._count(conn))
        return self._size[1]

    def read_photo(self, item: Item) -> bytes | None:
        with self._connection() as conn:
            row = conn.execute("SELECT data FROM photos WHERE sha256 = %s",
                               (item.sha256,)).fetchone()
        return bytes(row[0]) if row else None

    def missing_photos(self) -> list[int]:
        return []  # a foreign key binds every item to its photo's row

    def check(self) -> dict[str, object]:
        def read(conn: psycopg.Connection) -> dict[str, object]:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot
            items = conn.execute("SELECT count(*) FROM items").fetchone()
            indexed = conn.execute("SELECT count(*) FROM embeddings WHERE fingerprint = %s",
                                   (self.fingerprint,)).fetchone()
            without = conn.execute(f"SELECT i.id {WITHOUT_EMBEDDING}",
                                   (self.fingerprint,)).fetchall()
            mismatched = conn.execute(
                "SELECT coalesce(s.label, x.label) FROM (SELECT label, count, sum FROM "
                "label_stats WHERE fingerprint = %(fp)s) s FULL JOIN (SELECT i.label, count(*) "
                "AS count, sum(e.vector) AS sum FROM embeddings e JOIN items i ON i.id = "
                "e.item_id WHERE e.fingerprint = %(fp)s GROUP BY i.label) x ON s.label = "
                "x.label WHERE s.count IS DISTINCT FROM x.count OR s.sum IS NULL OR x.sum IS "
                "NULL OR l2_distance(s.sum, x.sum) > 1e-3 ORDER BY 1",
                {"fp": self.fingerprint}).fetchall()
            return {"items": int(items[0]) if items else 0,
                    "indexed": int(indexed[0]) if indexed else 0,
                    "not_indexed": [], "indexed_not_stored": [], "served_not_indexed": [],
                    "label_mismatches": [r[0] for r in mismatched],
                    "without_embedding": [r[0] for r in without], "missing_photos": []}

        return self._transaction(read)

    # Writes ------------------------------------------------------------------------------
    def add(self, photos: list[NewPhoto], vectors: np.ndarray) -> list[tuple[Item, bool]]:
        def write(conn: psycopg.Connection) -> list[tuple[Item, bool]]:
            # In input order, so ids follow it (two replicas adding overlapping photos in
            # opposite orders may deadlock: PostgreSQL aborts one, and _transaction retries).
            results: dict[int, tuple[Item, bool]] = {}
            now = time.time()
            for position in range(len(photos)):
                photo, vector = photos[position], _vector(vectors[position])
                path = photo.path or f"images/{photo.sha256[:2]}/{photo.sha256}{photo.extension}"
                conn.execute("INSERT INTO photos VALUES (%s, %s) ON CONFLICT DO NOTHING",
                             (photo.sha256, photo.data))
                # The unique (label, sha256) decides between two replicas enrolling the
                # same photo at once: one inserts, the other finds that row.
                row = conn.execute(
                    "INSERT INTO items (label, sha256, source, path, width, height, "
                    "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (label, "
                    "sha256) DO NOTHING RETURNING id",
                    (photo.label, photo.sha256, photo.source, path, photo.width,
                     photo.height, now)).fetchone()
                if row is None:
                    existing = conn.execute(FIND_ITEM, (photo.label, photo.sha256)).fetchone()
                    assert existing is not None
                    results[position] = (Item(*existing), False)
                    continue
                item = Item(int(row[0]), photo.label, photo.sha256, photo.source, path,
                            photo.width, photo.height, now)
                conn.execute("INSERT INTO embeddings VALUES (%s, %s, %s)",
                             (item.id, self.fingerprint, vector))
                conn.execute(
                    "INSERT INTO label_stats VALUES (%s, %s, 1, %s) ON CONFLICT (fingerprint, "
                    "label) DO UPDATE SET count = label_stats.count + 1, sum = "
                    "label_stats.sum + excluded.sum", (self.fingerprint, photo.label, vector))
                results[position] = (item, True)
            return [results[p] for p in range(len(photos))]

        return self._transaction(write)

    def delete(self, items: list[Item]) -> None:
        self._delete(items, tombstone=True)

    def _delete(self, items: list[Item], tombstone: bool) -> None:
        ids = sorted(item.id for item in items)

        def write(conn: psycopg.Connection) -> None:
            if tombstone:
                for item in items:
                    if item.source == "gallery":
                        conn.execute("INSERT INTO tombstones VALUES (%s, %s) ON CONFLICT "
                                     "(path) DO UPDATE SET sha256 = excluded.sha256",
                                     (item.path, item.sha256))
            # Every checkpoint's label sums lose these items' vectors.
            removed = conn.execute(
                "SELECT e.fingerprint, i.label, count(*), sum(e.vector) FROM items i JOIN "
                "embeddings e ON e.item_id = i.id WHERE i.id = ANY(%s) GROUP BY 1, 2 "
                "ORDER BY 1, 2 ", (ids,)).fetchall()
            for fingerprint, label, count, total in removed:
                conn.execute("UPDATE label_stats SET count = count - %s, sum = sum - %s WHERE "
                             "fingerprint = %s AND label = %s AND count > %s",
                             (count, total, fingerprint, label, count))
                conn.execute("DELETE FROM label_stats WHERE fingerprint = %s AND label = %s "
                             "AND count <= %s", (fingerprint, label, count))
            shas = conn.execute("DELETE FROM items WHERE id = ANY(%s) RETURNING sha256",
                                (ids,)).fetchall()
            conn.execute("DELETE FROM photos p WHERE sha256 = ANY(%s) AND NOT EXISTS (SELECT 1"
                         " FROM items i WHERE i.sha256 = p.sha256)",
                         (sorted({r[0] for r in shas}),))

        self._transaction(write)

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT 1")

    def close(self) -> None:
        self.pool.close()


def _array(value: object) -> np.ndarray:
    """A vector read from the database (pgvector's Vector, or already an array)."""
    to_numpy = getattr(value, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else value, np.float32)


def _vector(vector: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vector, dtype=np.float32)

