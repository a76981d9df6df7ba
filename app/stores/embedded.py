"""The embedded store, the default: SQLite in ``DATA_DIR`` is the truth, a FAISS index and
the per-label sums in memory are derived from it at start-up and updated after each commit.
One process owns the data directory.
"""

from __future__ import annotations

import errno
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from app.stores.base import GalleryStore, Hit, Item, LabelStats, NewPhoto, StorageFull
from app.stores.faiss_index import ReadWriteLock, VectorIndex
from app.stores.sqlite import SqliteDatabase, is_storage_full


class EmbeddedStore(GalleryStore):
    reads_in_memory = True

    def __init__(self, data_dir: Path, dim: int, fingerprint: str) -> None:
        self.db = SqliteDatabase(data_dir)
        self.created = self.db.created
        self.fingerprint = fingerprint
        self.index = VectorIndex(dim)
        self._items: dict[int, Item] = {}
        self._vectors: dict[int, np.ndarray] = {}
        self._label_ids: dict[str, set[int]] = defaultdict(set)
        self._label_sums: dict[str, np.ndarray] = {}
        self._mutate = threading.RLock()  # serialises every change (start-up holds it too)
        self._rw = ReadWriteLock()  # guards the derived state against concurrent searches

    # Start-up ----------------------------------------------------------------------------
    @contextmanager
    def startup(self) -> Iterator[None]:
        with self._mutate:
            yield

    def open_index(self) -> None:
        """Rebuild the derived state from the database (start-up's writes included)."""
        with self._rw.write():
            self.index = VectorIndex(self.index.dim)
            for state in (self._items, self._vectors, self._label_ids, self._label_sums):
                state.clear()
        ids, vectors = self.db.embeddings(self.fingerprint)
        by_id = {item.id: item for item in self.db.all_items()}
        self._apply_add([by_id[i] for i in ids.tolist()], vectors)

    def gallery_items(self) -> dict[str, Item]:
        return {i.path: i for i in self.db.all_items() if i.source == "gallery"}

    def tombstoned_paths(self) -> set[str]:
        return self.db.tombstoned_paths()

    def forget_gallery_items(self, items: list[Item]) -> None:
        self.db.forget_gallery_paths(items)

    def missing_embedding(self, limit: int) -> list[Item]:
        return self.db.items_missing_embedding(self.fingerprint)[:limit]

    def set_embeddings(self, ids: list[int], vectors: np.ndarray) -> None:
        self.db.set_embeddings(ids, vectors, self.fingerprint)

    # Reads -------------------------------------------------------------------------------
    def get(self, item_id: int) -> Item | None:
        with self._rw.read():
            return self._items.get(item_id)

    def find(self, label: str, sha256: str) -> Item | None:
        return self.db.find(label, sha256)

    def list_items(self, label: str | None = None) -> list[Item]:
        with self._rw.read():
            if label is None:
                items = list(self._items.values())
            else:
                items = [self._items[i] for i in self._label_ids.get(label, ())]
        return sorted(items, key=lambda i: i.id)

    def count(self) -> int:
        with self._rw.read():
            return len(self.index)

    def label_stats(self) -> LabelStats:
        with self._rw.read():
            labels = sorted(self._label_sums)
            counts = np.array([len(self._label_ids[label]) for label in labels], np.int64)
            sums = (np.stack([self._label_sums[label] for label in labels]) if labels
                    else np.zeros((0, self.index.dim), np.float32))
        return LabelStats(labels, counts, sums)

    def search(self, vector: np.ndarray, k: int, label: str | None = None) -> list[Hit]:
        with self._rw.read():
            if label is None:
                return [Hit(self._items[i], s) for i, s in self.index.search(vector, k)]
            ids = sorted(self._label_ids.get(label, ()))
            if not ids:
                return []
            scores = np.stack([self._vectors[i] for i in ids]) @ vector
            order = np.argsort(-scores, kind="stable")[:k]
            return [Hit(self._items[ids[i]], float(scores[i])) for i in order]

    def read_photo(self, item: Item) -> bytes | None:
        try:
            return self.db.image_path(item).read_bytes()
        except OSError:
            return None

    def missing_photos(self) -> list[int]:
        return self._without_photo(self.db.all_items())

    def _without_photo(self, items: list[Item]) -> list[int]:
        return [i.id for i in items if not self.db.image_path(i).is_file()]

    def check(self) -> dict[str, object]:
        with self._mutate:  # no change between the two readings
            items = self.db.all_items()
            ids, vectors = self.db.embeddings(self.fingerprint)
            with self._rw.read():
                indexed = set(self.index.ids().tolist())
                served = set(self._items)
                counts = {label: len(ids) for label, ids in self._label_ids.items()}
                sums = {label: total.copy() for label, total in self._label_sums.items()}
        by_id = {item.id: item for item in items}
        expected_counts: dict[str, int] = defaultdict(int)
        expected_sums: dict[str, np.ndarray] = {}
        for item_id, vector in zip(ids.tolist(), vectors, strict=True):
            label = by_id[item_id].label
            expected_counts[label] += 1
            expected_sums[label] = expected_sums.get(label, 0) + vector
        embedded = set(ids.tolist())
        return {
            "items": len(items),
            "indexed": len(indexed),
            "not_indexed": sorted(embedded - indexed),
            "indexed_not_stored": sorted(indexed - embedded),
            "served_not_indexed": sorted(served ^ indexed),
            "label_mismatches": label_mismatches(counts, sums, expected_counts, expected_sums),
            "without_embedding": sorted(set(by_id) - embedded),
            "missing_photos": self._without_photo(items),
        }

    # Writes ------------------------------------------------------------------------------
    def add(self, photos: list[NewPhoto], vectors: np.ndarray) -> list[tuple[Item, bool]]:
        results: list[tuple[Item, bool] | None] = [None] * len(photos)
        written: list[str] = []  # photo files this call stored, removed again if it fails
        with self._mutate:
            try:
                rows, positions = [], []
                for position, photo in enumerate(photos):
                    existing = self.db.find(photo.label, photo.sha256)
                    if existing is not None:
                        results[position] = (existing, False)
                        continue
                    path = photo.path
                    if photo.source == "enrolled":
                        path, wrote = self.db.save_image(photo.data, photo.sha256,
                                                         photo.extension)
                        if wrote:
                            written.append(path)
                    rows.append((photo.label, photo.sha256, photo.source, path, photo.width,
                                 photo.height))
                    positions.append(position)
                new_vectors = vectors[positions] if positions else vectors[:0]
                created = (self.db.insert_items(rows, new_vectors, self.fingerprint)
                           if rows else [])
            except Exception as exc:
                for path in written:
                    self.db.remove_unused_image(path)
                if is_storage_full(exc):
                    raise StorageFull(errno.ENOSPC, f"no space left to store photos: {exc}"
                                      ) from exc
                raise
            self._apply_add(created, new_vectors)
        for position, item in zip(positions, created, strict=True):
            results[position] = (item, True)
        return [r for r in results if r is not None]

    def delete(self, items: list[Item]) -> None:
        with self._mutate:
            self.db.delete_items(items)
            self._apply_remove(items)

    def ping(self) -> None:
        """In this process: always reachable."""

    def close(self) -> None:
        self.db.close()

    # Derived state -----------------------------------------------------------------------
    def _apply_add(self, items: list[Item], vectors: np.ndarray) -> None:
        if not items:
            return
        with self._rw.write():
            self.index.add(np.array([i.id for i in items], np.int64), vectors)
            for item, vector in zip(items, vectors, strict=True):
                self._items[item.id] = item
                self._vectors[item.id] = vector
                self._label_ids[item.label].add(item.id)
                self._label_sums[item.label] = self._label_sums.get(item.label, 0) + vector

    def _apply_remove(self, items: list[Item]) -> None:
        with self._rw.write():
            self.index.remove([item.id for item in items])
            for item in items:
                self._items.pop(item.id, None)
                vector = self._vectors.pop(item.id, None)
                if vector is None:
                    continue
                self._label_ids[item.label].discard(item.id)
                if not self._label_ids[item.label]:
                    self._label_sums.pop(item.label, None)
                    self._label_ids.pop(item.label, None)
                else:
                    self._label_sums[item.label] = self._label_sums[item.label] - vector


def label_mismatches(counts: dict[str, int], sums: dict[str, np.ndarray],
                     expected_counts: dict[str, int],
                     expected_sums: dict[str, np.ndarray]) -> list[str]:
    """Labels whose served count or embedding sum differs from what the store holds."""
    labels = sorted(set(counts) | set(expected_counts))
    return [label for label in labels
            if counts.get(label) != expected_counts.get(label)
            or not np.allclose(sums.get(label, 0), expected_sums.get(label, 0), atol=1e-3)]
