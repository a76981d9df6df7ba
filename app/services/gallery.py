"""The gallery: labelled photos kept in a store (embedded or PostgreSQL), searchable.

It owns the rules both stores share: syncing the gallery folder, re-embedding what this
checkpoint has not embedded, one item per photo and label, the enrolment warnings and the
per-label ranking of ``/classify``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.services.embedding import EmbeddingService
from app.stores.base import GalleryStore, Hit, Item, NewPhoto
from models.decision import Ranking, ShotCalibration, rank
from models.preprocessing import ImageDecodeError, class_folder_images

log = logging.getLogger(__name__)
NEAR_DUPLICATE = 0.98  # cosine above which a new shot adds (almost) nothing to its label


@dataclass(frozen=True)
class NewImage:
    data: bytes
    model_input: np.ndarray  # preprocessed, (3, H, W) float32
    width: int
    height: int
    extension: str


class Gallery:
    def __init__(self, store: GalleryStore, embedding: EmbeddingService,
                 calibration: ShotCalibration | None = None) -> None:
        self.store = store
        self.embedding = embedding
        self.calibration = calibration  # the checkpoint's shot calibration for classify

    # Start-up ----------------------------------------------------------------------------
    def load(self, gallery_dir: Path | None, batch_size: int = 32) -> dict[str, int]:
        """Sync the gallery folder into the store, (re-)embed what this checkpoint hasn't
        embedded yet, and open the index."""
        stats = {"scanned": 0, "added": 0, "removed": 0, "embedded": 0}
        with self.store.startup():
            if gallery_dir is not None:
                stats.update(self._sync_folder(Path(gallery_dir), batch_size))
            stats["embedded"] += self._embed_missing(batch_size)
            self.store.open_index()
        stats["not_indexed"] = len(self.store.missing_embedding(10**9))
        missing = self.store.missing_photos()
        stats["missing_photos"] = len(missing)
        if missing:
            log.error("repair report: the photos of %d items are missing (ids %s%s); they "
                      "stay searchable by their stored embeddings, but re-enrol them or "
                      "delete them (GET /consistency lists them)", len(missing),
                      missing[:20], " ..." if len(missing) > 20 else "")
        if self.store.created and not self.store.count():
            log.info("created a new, empty gallery")
        return stats

    def _sync_folder(self, root: Path, batch_size: int) -> dict[str, int]:
        if not root.is_dir():
            log.warning("gallery folder %s does not exist: starting with the stored items "
                        "only; enrol photos to fill the gallery", root)
            return {}
        known = self.store.gallery_items()
        tombstones = self.store.tombstoned_paths()
        files = [(label, path.resolve())
                 for label, paths in class_folder_images(root).items() for path in paths]
        present = {str(path) for _, path in files}
        gone = [item for path, item in known.items() if path not in present]
        if gone:
            self.store.forget_gallery_items(gone)
        todo = [(label, path) for label, path in files
                if str(path) not in known and str(path) not in tombstones]
        log.info("gallery %s: %d images, %d new, %d gone", root, len(files), len(todo),
                 len(gone))
        added = 0
        for start in tqdm(range(0, len(todo), batch_size), desc="embedding gallery",
                          unit="batch", disable=not todo):
            photos: dict[tuple[str, str], NewPhoto] = {}
            inputs = []
            for label, path in todo[start : start + batch_size]:
                try:
                    data = path.read_bytes()
                    image, model_input = self.embedding.decode(data)
                except (OSError, ImageDecodeError) as exc:
                    log.warning("skipping unreadable gallery image %s: %s", path, exc)
                    continue
                sha = hashlib.sha256(data).hexdigest()
                if (label, sha) in photos or self.store.find(label, sha):
                    continue  # the same photo twice under one label: keep one
                photos[label, sha] = NewPhoto(label, sha, "gallery", str(path), path.suffix,
                                              *image.size, data)
                inputs.append(model_input)
            if photos:
                added += sum(created for _, created in self.store.add(
                    list(photos.values()), self.embedding.embed_gallery_inputs(inputs)))
            if start and start % (batch_size * 10) == 0:
                log.info("embedded %d/%d gallery images", start, len(todo))
        return {"scanned": len(files), "added": added, "removed": len(gone)}

    def _embed_missing(self, batch_size: int) -> int:
        """Items without an embedding from this checkpoint (new checkpoint, or a crash
        between steps): recompute from the stored photos, never mixing checkpoints."""
        embedded, unreadable = 0, set()
        while batch := [i for i in self.store.missing_embedding(batch_size + len(unreadable))
                        if i.id not in unreadable][:batch_size]:
            if not embedded:
                log.info("computing embeddings for checkpoint %s from stored photos",
                         self.store.fingerprint)
            ids, inputs = [], []
            for item in batch:
                data = self.store.read_photo(item)
                try:
                    if data is None:
                        raise OSError("the photo is missing")
                    _, model_input = self.embedding.decode(data)
                except (OSError, ImageDecodeError) as exc:
                    log.error("item %d: stored photo unreadable (%s); it is left out of the "
                              "index", item.id, exc)
                    unreadable.add(item.id)
                    continue
                ids.append(item.id)
                inputs.append(model_input)
            if ids:
                self.store.set_embeddings(ids, self.embedding.embed_gallery_inputs(inputs))
                embedded += len(ids)
        return embedded

    # Queries -----------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        return self.store.search(vector, k)

    def get(self, item_id: int) -> Item | None:
        return self.store.get(item_id)

    def list_items(self, label: str | None = None) -> list[Item]:
        return self.store.list_items(label)

    def __len__(self) -> int:
        return self.store.count()

    def labels(self) -> dict[str, int]:
        stats = self.store.label_stats()
        return dict(zip(stats.labels, stats.counts.tolist(), strict=True))

    def classify(self, vector: np.ndarray, top: int = 5) -> Ranking:
        """Labels ranked by the decision rule (``models/decision.py``): the cosine to each
        label's prototype, standardised by its number of photos (and a few-shot label's
        bonus) where the checkpoint carries a shot calibration."""
        stats = self.store.label_stats()
        return rank(vector, stats.labels, stats.sums, stats.counts, self.calibration, top)

    def best_of_label(self, vector: np.ndarray, label: str, k: int) -> list[Hit]:
        """The ``k`` photos of ``label`` most similar to ``vector``, best first."""
        return self.store.search(vector, k, label=label)

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

    def check(self) -> dict[str, object]:
        """Compare what the service serves with what it has stored, item by item."""
        report = self.store.check()
        report["consistent"] = not any(report[k] for k in (
            "not_indexed", "indexed_not_stored", "served_not_indexed", "label_mismatches"))
        return report

    # Changes -----------------------------------------------------------------------------
    def enroll(self, label: str, images: list[NewImage],
               vectors: np.ndarray) -> list[tuple[Item, bool]]:
        """Store and index new images under ``label``; (item, created) in input order.
        The same bytes under the same label return the existing item."""
        shas = [hashlib.sha256(image.data).hexdigest() for image in images]
        first: dict[str, int] = {}  # sha -> position of its first occurrence
        for position, sha in enumerate(shas):
            first.setdefault(sha, position)
        unique = list(first.values())
        stored = self.store.add(
            [NewPhoto(label, shas[p], "enrolled", "", images[p].extension, images[p].width,
                      images[p].height, images[p].data) for p in unique], vectors[unique])
        by_sha = dict(zip((shas[p] for p in unique), stored, strict=True))
        return [by_sha[sha] if first[sha] == position else (by_sha[sha][0], False)
                for position, sha in enumerate(shas)]

    def delete(self, items: list[Item]) -> None:
        self.store.delete(items)
