"""The gallery: labelled photos kept in the store, searchable through the index.

It owns the consistency rules: the store is the truth; the index and the per-label
prototypes are derived from it at start-up and updated after each committed change.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.services.embedding import EmbeddingService
from app.services.index import ReadWriteLock, VectorIndex
from app.services.store import Item, StorageFull, Store, is_storage_full
from models.preprocessing import ImageDecodeError, class_folder_images
from models.prototypes import prototypes

log = logging.getLogger(__name__)
NEAR_DUPLICATE = 0.98  # cosine above which a new shot adds (almost) nothing to its label


@dataclass(frozen=True)
class Hit:
    item: Item
    score: float


@dataclass(frozen=True)
class NewImage:
    data: bytes
    model_input: np.ndarray  # preprocessed, (3, H, W) float32
    width: int
    height: int
    extension: str


class Gallery:
    def __init__(self, store: Store, embedding: EmbeddingService, fingerprint: str) -> None:
        self.store = store
        self.embedding = embedding
        self.fingerprint = fingerprint
        self.index = VectorIndex(embedding.dim)
        self.items: dict[int, Item] = {}
        self._label_sums: dict[str, np.ndarray] = {}
        self._vectors: dict[int, np.ndarray] = {}
        self._label_ids: dict[str, set[int]] = defaultdict(set)
        self._mutate = threading.Lock()  # serialises every change to store + index
        self._rw = ReadWriteLock()  # guards the derived state against concurrent searches

    # Start-up ----------------------------------------------------------------------------
    def load(self, gallery_dir: Path | None, batch_size: int = 32) -> dict[str, int]:
        """Sync the gallery folder into the store, (re-)embed what this checkpoint hasn't
        embedded yet, and build the index from the store."""
        stats = {"scanned": 0, "added": 0, "removed": 0, "embedded": 0}
        with self._mutate:
            if gallery_dir is not None:
                stats.update(self._sync_folder(Path(gallery_dir), batch_size))
            stats["embedded"] += self._embed_missing(batch_size)
            ids, vectors = self.store.embeddings(self.fingerprint)
            items = self.store.all_items()
            by_id = {item.id: item for item in items}
            self._apply_add([by_id[i] for i in ids.tolist()], vectors)
            missing = [i.id for i in items if not self.store.image_path(i).is_file()]
        stats["not_indexed"] = len(items) - len(ids)
        stats["missing_photos"] = len(missing)
        if missing:
            log.error("repair report: the photos of %d items are missing (ids %s%s); they "
                      "stay searchable by their stored embeddings, but re-enrol them or "
                      "delete them (GET /consistency lists them)", len(missing),
                      missing[:20], " ..." if len(missing) > 20 else "")
        if self.store.created and not items:
            log.info("created a new, empty gallery database at %s", self.store.path)
        return stats

    def check(self) -> dict[str, object]:
        """Compare the index and the per-label prototypes with the store, item by item:
        what the service serves against what it has stored."""
        with self._mutate:  # no change between the two readings
            items = self.store.all_items()
            ids, vectors = self.store.embeddings(self.fingerprint)
            with self._rw.read():
                indexed = set(self.index.ids().tolist())
                served = set(self.items)
                counts = {label: len(ids) for label, ids in self._label_ids.items()}
                sums = {label: total.copy() for label, total in self._label_sums.items()}
        by_id = {item.id: item for item in items}
        embedded = set(ids.tolist())
        expected_counts: dict[str, int] = defaultdict(int)
        expected_sums: dict[str, np.ndarray] = {}
        for item_id, vector in zip(ids.tolist(), vectors, strict=True):
            label = by_id[item_id].label
            expected_counts[label] += 1
            expected_sums[label] = expected_sums.get(label, 0) + vector
        labels = sorted(set(counts) | set(expected_counts))
        label_mismatches = [label for label in labels
                            if counts.get(label) != expected_counts.get(label)
                            or not np.allclose(sums.get(label, 0), expected_sums.get(label, 0),
                                               atol=1e-3)]
        report: dict[str, object] = {
            "items": len(items),
            "indexed": len(indexed),
            "not_indexed": sorted(embedded - indexed),
            "indexed_not_stored": sorted(indexed - embedded),
            "served_not_indexed": sorted(served ^ indexed),
            "label_mismatches": label_mismatches,
            "without_embedding": sorted(set(by_id) - embedded),
            "missing_photos": [i.id for i in items if not self.store.image_path(i).is_file()],
        }
        report["consistent"] = not any(report[k] for k in (
            "not_indexed", "indexed_not_stored", "served_not_indexed", "label_mismatches"))
        return report

    def _sync_folder(self, root: Path, batch_size: int) -> dict[str, int]:
        if not root.is_dir():
            log.warning("gallery folder %s does not exist: starting with the stored items "
                        "only; enrol photos to fill the gallery", root)
            return {}
        known = {item.path: item for item in self.store.all_items() if item.source == "gallery"}
        tombstones = self.store.tombstoned_paths()
        files = [(label, path.resolve())
                 for label, paths in class_folder_images(root).items() for path in paths]
        present = {str(path) for _, path in files}
        gone = [item for path, item in known.items() if path not in present]
        if gone:
            self.store.forget_gallery_paths(gone)
        todo = [(label, path) for label, path in files
                if str(path) not in known and str(path) not in tombstones]
        log.info("gallery %s: %d images, %d new, %d gone", root, len(files), len(todo),
                 len(gone))
        added = 0
        for start in tqdm(range(0, len(todo), batch_size), desc="embedding gallery",
                          unit="batch", disable=not todo):
            rows, inputs = [], []
            for label, path in todo[start : start + batch_size]:
                try:
                    data = path.read_bytes()
                    image, model_input = self.embedding.decode(data)
                except (OSError, ImageDecodeError) as exc:
                    log.warning("skipping unreadable gallery image %s: %s", path, exc)
                    continue
                sha = hashlib.sha256(data).hexdigest()
                if self.store.find(label, sha) or any(r[0] == label and r[1] == sha
                                                      for r in rows):
                    continue  # the same photo twice under one label: keep one
                rows.append((label, sha, "gallery", str(path), image.width, image.height))
                inputs.append(model_input)
            if rows:
                self.store.insert_items(rows, self.embedding.embed_inputs(inputs),
                                        self.fingerprint)
                added += len(rows)
            if start and start % (batch_size * 10) == 0:
                log.info("embedded %d/%d gallery images", start, len(todo))
        return {"scanned": len(files), "added": added, "removed": len(gone)}

    def _embed_missing(self, batch_size: int) -> int:
        """Items without an embedding from this checkpoint (new checkpoint, or a crash
        between steps): recompute from the stored images, never mixing checkpoints."""
        missing = self.store.items_missing_embedding(self.fingerprint)
        if missing:
            log.info("computing %d embeddings for checkpoint %s from stored images",
                     len(missing), self.fingerprint)
        unreadable = []
        for start in tqdm(range(0, len(missing), batch_size), desc="re-embedding",
                          unit="batch", disable=not missing):
            ids, inputs = [], []
            for item in missing[start : start + batch_size]:
                try:
                    _, model_input = self.embedding.decode(self.store.image_path(item).read_bytes())
                except (OSError, ImageDecodeError) as exc:
                    log.error("item %d: stored image unreadable (%s); it is left out of the "
                              "index", item.id, exc)
                    unreadable.append(item)
                    continue
                ids.append(item.id)
                inputs.append(model_input)
            if ids:
                self.store.set_embeddings(ids, self.embedding.embed_inputs(inputs),
                                          self.fingerprint)
        return len(missing) - len(unreadable)

    # Queries -----------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        with self._rw.read():
            return [Hit(self.items[i], s) for i, s in self.index.search(vector, k)]

    def get(self, item_id: int) -> Item | None:
        with self._rw.read():
            return self.items.get(item_id)

    def list_items(self, label: str | None = None) -> list[Item]:
        with self._rw.read():
            items = list(self.items.values())
        return sorted((i for i in items if label is None or i.label == label),
                      key=lambda i: i.id)

    def __len__(self) -> int:
        with self._rw.read():
            return len(self.index)

    def classify(self, vector: np.ndarray, top: int = 5) -> list[tuple[str, float]]:
        """Labels ranked by cosine similarity to their prototype (normalised mean)."""
        with self._rw.read():
            labels = list(self._label_sums)
            if not labels:
                return []
            sums = np.stack([self._label_sums[label] for label in labels])
        scores = prototypes(sums) @ vector
        order = np.argsort(-scores)[:top]
        return [(labels[i], float(scores[i])) for i in order]

    def best_of_label(self, vector: np.ndarray, label: str, k: int) -> list[Hit]:
        """The ``k`` photos of ``label`` most similar to ``vector``, best first."""
        with self._rw.read():
            ids = sorted(self._label_ids.get(label, ()))
            if not ids:
                return []
            scores = np.stack([self._vectors[i] for i in ids]) @ vector
            order = np.argsort(-scores)[:k]
            return [Hit(self.items[ids[i]], float(scores[i])) for i in order]

    def enrol_warnings(self, label: str, vectors: np.ndarray) -> list[list[str]]:
        """For each new shot of ``label``: is it a near-duplicate of a stored photo, or
        closer to another label's photos than to its own label's? (Warnings, not errors:
        the caller enrols it all the same.)"""
        warnings = []
        for vector in vectors:
            found, hits = [], self.search(vector, 10)
            if hits and hits[0].score >= NEAR_DUPLICATE:
                found.append(f"near-duplicate of item {hits[0].item.id} "
                             f"({hits[0].item.label}, cosine {hits[0].score:.3f})")
            own = self.best_of_label(vector, label, 1)
            other = next((h for h in hits if h.item.label != label), None)
            if own and other and other.score > own[0].score:
                found.append(f"closer to {other.item.label!r} (item {other.item.id}, cosine "
                             f"{other.score:.3f}) than to any photo of {label!r} "
                             f"({own[0].score:.3f})")
            warnings.append(found)
        return warnings

    def labels(self) -> dict[str, int]:
        with self._rw.read():
            return {label: len(ids) for label, ids in sorted(self._label_ids.items())}

    # Changes -----------------------------------------------------------------------------
    def enroll(self, label: str, images: list[NewImage],
               vectors: np.ndarray) -> list[tuple[Item, bool]]:
        """Store and index new images under ``label``; (item, created) in input order.
        The same bytes under the same label return the existing item."""
        results: list[tuple[Item, bool] | None] = [None] * len(images)
        written: list[str] = []  # photos this call stored, removed again if it fails
        with self._mutate:
            try:
                created, positions = self._store_new(label, images, vectors, results, written)
            except Exception as exc:
                for path in written:
                    self.store.remove_unused_image(path)
                if is_storage_full(exc):
                    raise StorageFull(errno.ENOSPC, f"no space left to store photos: {exc}"
                                      ) from exc
                raise
            first_use = set()
            for position, row in positions:
                results[position] = (created[row], row not in first_use)
                first_use.add(row)
        return [r for r in results if r is not None]

    def _store_new(self, label: str, images: list[NewImage], vectors: np.ndarray,
                   results: list[tuple[Item, bool] | None],
                   written: list[str]) -> tuple[list[Item], list[tuple[int, int]]]:
        """Save the new photos and insert their items in one transaction; the already
        enrolled ones go straight into ``results``. Returns the created items and, for each
        new input position, its row among them."""
        rows, new_vectors, positions = [], [], []
        seen: dict[str, int] = {}
        for position, image in enumerate(images):
            sha = hashlib.sha256(image.data).hexdigest()
            existing = self.store.find(label, sha)
            if existing is not None:
                results[position] = (existing, False)
                continue
            if sha in seen:  # the same file twice in one request
                positions.append((position, seen[sha]))
                continue
            path, wrote = self.store.save_image(image.data, sha, image.extension)
            if wrote:
                written.append(path)
            seen[sha] = len(rows)
            rows.append((label, sha, "enrolled", path, image.width, image.height))
            new_vectors.append(vectors[position])
            positions.append((position, len(rows) - 1))
        created = (self.store.insert_items(rows, np.stack(new_vectors), self.fingerprint)
                   if rows else [])
        if created:
            self._apply_add(created, np.stack(new_vectors))
        return created, positions

    def delete(self, items: list[Item]) -> None:
        with self._mutate:
            self.store.delete_items(items)
            self._apply_remove(items)

    # Derived state -----------------------------------------------------------------------
    def _apply_add(self, items: list[Item], vectors: np.ndarray) -> None:
        if not items:
            return
        with self._rw.write():
            self.index.add(np.array([i.id for i in items], np.int64), vectors)
            for item, vector in zip(items, vectors, strict=True):
                self.items[item.id] = item
                self._vectors[item.id] = vector
                self._label_ids[item.label].add(item.id)
                self._label_sums[item.label] = self._label_sums.get(item.label, 0) + vector

    def _apply_remove(self, items: list[Item]) -> None:
        with self._rw.write():
            self.index.remove([item.id for item in items])
            for item in items:
                self.items.pop(item.id, None)
                vector = self._vectors.pop(item.id, None)
                if vector is None:
                    continue
                self._label_ids[item.label].discard(item.id)
                if not self._label_ids[item.label]:
                    self._label_sums.pop(item.label, None)
                    self._label_ids.pop(item.label, None)
                else:
                    self._label_sums[item.label] = self._label_sums[item.label] - vector
