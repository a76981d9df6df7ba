"""SQLite, the embedded store's source of truth: items, labels, image hashes, embeddings and
their checkpoint.

Enrolled images live in ``<data_dir>/images``; gallery-folder images stay where they are and
are referenced by path. Writes commit with ``synchronous=FULL`` in WAL mode, so what a request
acknowledged survives a crash or ``kill -9``.
"""

from __future__ import annotations

import dataclasses
import errno
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.stores.base import Item, StoreError
from models.atomic import atomic_write_with

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('gallery', 'enrolled')),
    path TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (label, sha256)
);
CREATE INDEX IF NOT EXISTS items_label ON items (label);
CREATE INDEX IF NOT EXISTS items_path ON items (path);
CREATE TABLE IF NOT EXISTS embeddings (
    item_id INTEGER PRIMARY KEY REFERENCES items (id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    vector BLOB NOT NULL
);
-- Gallery files deleted through the API stay deleted when the folder is scanned again.
CREATE TABLE IF NOT EXISTS tombstones (
    path TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL
);
"""


# Marks the file as this service's gallery (SQLite's application_id, "FSG1").
APPLICATION_ID = 0x46534731
ITEM_COLUMNS = {"id", "label", "sha256", "source", "path", "width", "height", "created_at"}


@dataclass
class Snapshot:
    items: list[Item]
    embeddings: list[tuple[int, str, np.ndarray]]  # (item id, checkpoint fingerprint, vector)
    tombstones: list[tuple[str, str]]  # (gallery path, sha256) deleted through the API


def is_storage_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return "full" in str(exc)  # SQLITE_FULL: "database or disk is full"
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class SqliteDatabase:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.image_dir = self.data_dir / "images"
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.path = self.data_dir / "gallery.sqlite3"
        self.created = not self.path.exists()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"{self.path} is not a readable SQLite database ({exc}): restore "
                             "it from a backup (python -m app.backup import) or move it away "
                             "to start with an empty gallery") from None
        except StoreError:
            self._db.close()
            raise

    def _open(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        tables = {name: {row[1] for row in self._db.execute(f"PRAGMA table_info({name})")}
                  for (name,) in self._db.execute(
                      "SELECT name FROM sqlite_master WHERE type = 'table' "
                      "AND name NOT LIKE 'sqlite_%'")}
        ours = app_id == APPLICATION_ID or (app_id == 0 and tables.get("items") == ITEM_COLUMNS)
        if tables and not ours:
            raise StoreError(f"{self.path} is a SQLite database of something else "
                             f"(tables {sorted(tables)}): point DATA_DIR at this service's "
                             "data directory, or at an empty one for a new gallery")
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (e.g. SQLITE_FULL at COMMIT): a second
                # ROLLBACK would raise and hide the real error.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    # Reads -------------------------------------------------------------------------------
    def all_items(self) -> list[Item]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM items ORDER BY id").fetchall()
        return [Item(*row) for row in rows]

    def find(self, label: str, sha256: str) -> Item | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM items WHERE label = ? AND sha256 = ?",
                                   (label, sha256)).fetchone()
        return Item(*row) if row else None

    def embeddings(self, fingerprint: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the items embedded by the checkpoint ``fingerprint``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT item_id, vector FROM embeddings WHERE fingerprint = ? ORDER BY item_id",
                (fingerprint,),
            ).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        return ids, np.stack([np.frombuffer(r[1], np.float32) for r in rows])

    def items_missing_embedding(self, fingerprint: str) -> list[Item]:
        with self._lock:
            rows = self._db.execute(
                "SELECT items.* FROM items LEFT JOIN embeddings e "
                "ON e.item_id = items.id AND e.fingerprint = ? WHERE e.item_id IS NULL "
                "ORDER BY items.id",
                (fingerprint,),
            ).fetchall()
        return [Item(*row) for row in rows]

    def snapshot(self) -> Snapshot:
        """Everything in the database, read in one transaction (a consistent copy even
        while another process writes)."""
        with self.transaction() as db:
            items = [Item(*row) for row in db.execute("SELECT * FROM items ORDER BY id")]
            embeddings = db.execute("SELECT item_id, fingerprint, vector FROM embeddings "
                                    "ORDER BY item_id").fetchall()
            tombstones = db.execute("SELECT path, sha256 FROM tombstones").fetchall()
        return Snapshot(items, [(i, f, np.frombuffer(v, np.float32)) for i, f, v in embeddings],
                        [tuple(t) for t in tombstones])

    def restore(self, snapshot: Snapshot) -> None:
        """Write ``snapshot`` into this (empty) database in one transaction, ids kept."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM items LIMIT 1").fetchone():
                raise ValueError(f"{self.data_dir} already holds a gallery: restore into an "
                                 "empty data directory")
            db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [dataclasses.astuple(item) for item in snapshot.items])
            db.executemany("INSERT INTO embeddings VALUES (?, ?, ?)",
                           [(i, f, _blob(v)) for i, f, v in snapshot.embeddings])
            db.executemany("INSERT INTO tombstones VALUES (?, ?)", snapshot.tombstones)

    def tombstoned_paths(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT path FROM tombstones")}

    # Writes ------------------------------------------------------------------------------
    def save_image(self, data: bytes, sha256: str, extension: str) -> tuple[str, bool]:
        """Store enrolled image bytes durably: the path relative to the data dir, and
        whether this call wrote the file (False: the same bytes were stored already)."""
        relative = Path("images") / sha256[:2] / f"{sha256}{extension}"
        target = self.data_dir / relative
        if target.exists():
            return relative.as_posix(), False
        atomic_write_with(target, lambda handle: handle.write(data))
        return relative.as_posix(), True

    def remove_unused_image(self, path: str) -> None:
        """Remove an enrolled photo (``path`` relative to the data dir) that no item refers
        to any more: its items were deleted, or their insert failed."""
        with self._lock:
            used = self._db.execute("SELECT 1 FROM items WHERE path = ? LIMIT 1",
                                    (path,)).fetchone()
        if used is None:
            (self.data_dir / path).unlink(missing_ok=True)

    def insert_items(
        self, rows: list[tuple[str, str, str, str, int, int]], vectors: np.ndarray,
        fingerprint: str
    ) -> list[Item]:
        """Insert (label, sha256, source, path, width, height) rows with their embeddings in
        one transaction."""
        now = time.time()
        created = []
        with self.transaction() as db:
            for (label, sha, source, path, width, height), vector in zip(rows, vectors,
                                                                         strict=True):
                cursor = db.execute(
                    "INSERT INTO items (label, sha256, source, path, width, height, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (label, sha, source, path, width, height, now),
                )
                item_id = int(cursor.lastrowid)
                db.execute("INSERT INTO embeddings VALUES (?, ?, ?)",
                           (item_id, fingerprint, _blob(vector)))
                created.append(Item(item_id, label, sha, source, path, width, height, now))
        return created

    def set_embeddings(self, ids: list[int], vectors: np.ndarray, fingerprint: str) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO embeddings VALUES (?, ?, ?) ON CONFLICT (item_id) DO UPDATE SET "
                "fingerprint = excluded.fingerprint, vector = excluded.vector",
                [(i, fingerprint, _blob(v)) for i, v in zip(ids, vectors, strict=True)],
            )

    def delete_items(self, items: list[Item]) -> None:
        with self.transaction() as db:
            for item in items:
                if item.source == "gallery":
                    db.execute("INSERT OR REPLACE INTO tombstones VALUES (?, ?)",
                               (item.path, item.sha256))
                db.execute("DELETE FROM items WHERE id = ?", (item.id,))
        for item in items:
            if item.source == "enrolled":
                self.remove_unused_image(item.path)

    def forget_gallery_paths(self, items: list[Item]) -> None:
        """Drop gallery items whose files are gone from the folder (no tombstone)."""
        with self.transaction() as db:
            db.executemany("DELETE FROM items WHERE id = ?", [(i.id,) for i in items])

    def image_path(self, item: Item) -> Path:
        return Path(item.path) if item.source == "gallery" else self.data_dir / item.path


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()

