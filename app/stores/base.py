"""What a gallery store is: the interface both stores implement, and the records they hold.

A store keeps items (a labelled photo), their photos, their embeddings by checkpoint
fingerprint, tombstones of deleted gallery-folder files, and the per-label statistics
``/classify`` needs (count and sum of the label's embeddings). Every write is one
transaction that commits before the method returns: what it acknowledged survives a crash.
A store serves one checkpoint (its ``fingerprint``); embeddings of others stay stored but
are never mixed in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Item:
    id: int
    label: str
    sha256: str
    source: str  # "gallery" (a file of the gallery folder) or "enrolled" (through the API)
    path: str
    width: int
    height: int
    created_at: float


@dataclass(frozen=True)
class Hit:
    item: Item
    score: float


@dataclass(frozen=True)
class NewPhoto:
    """A photo to store under a label, with its content hash."""

    label: str
    sha256: str
    source: str
    path: str  # the gallery folder's file ("" for an enrolled photo: the store names it)
    extension: str  # ".jpg", ".png", ...
    width: int
    height: int
    data: bytes


@dataclass(frozen=True)
class LabelStats:
    """Per label: how many photos, and the sum of their (unit) embeddings."""

    labels: list[str]
    counts: np.ndarray  # (L,) int
    sums: np.ndarray  # (L, dim) float32


class StorageFull(OSError):
    """The disk (or the database) is full: the write was refused and nothing was kept."""


class StoreError(RuntimeError):
    """The gallery database cannot be used; the message says why and what to do."""


class StoreUnavailable(RuntimeError):
    """The gallery database cannot be reached right now (a shared server down or
    restarting); the request may be retried."""


class GalleryStore(ABC):
    fingerprint: str
    created: bool  # the store was created empty by this process
    # True: reads answer from memory, cheap enough for the event loop; False: they do I/O
    # and the API runs them in a worker thread.
    reads_in_memory: bool

    # Start-up ----------------------------------------------------------------------------
    @abstractmethod
    def startup(self) -> AbstractContextManager[None]:
        """Held while one process syncs the gallery folder and re-embeds: exclusive across
        every process that shares the store."""

    @abstractmethod
    def open_index(self) -> None:
        """Make this checkpoint's embeddings searchable (after start-up's writes)."""

    @abstractmethod
    def gallery_items(self) -> dict[str, Item]:
        """Items of the gallery folder by file path."""

    @abstractmethod
    def tombstoned_paths(self) -> set[str]: ...

    @abstractmethod
    def forget_gallery_items(self, items: list[Item]) -> None:
        """Drop gallery items whose files are gone from the folder (no tombstone)."""

    @abstractmethod
    def missing_embedding(self, limit: int) -> list[Item]:
        """Up to ``limit`` items without an embedding from this checkpoint."""

    @abstractmethod
    def set_embeddings(self, ids: list[int], vectors: np.ndarray) -> None: ...

    # Reads -------------------------------------------------------------------------------
    @abstractmethod
    def get(self, item_id: int) -> Item | None: ...

    @abstractmethod
    def find(self, label: str, sha256: str) -> Item | None: ...

    @abstractmethod
    def list_items(self, label: str | None = None) -> list[Item]:
        """Searchable items (embedded by this checkpoint), by id."""

    @abstractmethod
    def count(self) -> int:
        """Searchable items."""

    @abstractmethod
    def label_stats(self) -> LabelStats: ...

    @abstractmethod
    def search(self, vector: np.ndarray, k: int, label: str | None = None) -> list[Hit]:
        """The ``k`` items most similar to ``vector`` (cosine), of ``label`` if given."""

    @abstractmethod
    def read_photo(self, item: Item) -> bytes | None:
        """The stored photo, or None if it is missing."""

    @abstractmethod
    def missing_photos(self) -> list[int]:
        """Ids of items whose photo is gone."""

    @abstractmethod
    def check(self) -> dict[str, object]:
        """The consistency report of ``GET /consistency`` (see ``ConsistencyReport``)."""

    # Writes ------------------------------------------------------------------------------
    @abstractmethod
    def add(self, photos: list[NewPhoto], vectors: np.ndarray) -> list[tuple[Item, bool]]:
        """Store photos (distinct ``(label, sha256)``) with their embeddings in one
        transaction: (item, created) each; a photo already stored under its label returns
        the existing item. Raises StorageFull when the disk is full."""

    @abstractmethod
    def delete(self, items: list[Item]) -> None:
        """Delete items (and their photos when nothing else uses them); gallery-folder
        files deleted so stay deleted when the folder is scanned again."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot be reached now."""
