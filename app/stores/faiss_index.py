"""The FAISS index (ID-mapped, inner product), derived from the store and rebuilt from it,
and the read-write lock the gallery guards it with: searches share the read side and run
concurrently; adds and removals take the write side, so no search sees half a change.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np


def single_threaded() -> None:
    """Run FAISS on the calling thread alone. One query is microseconds of work on one
    thread; OpenMP's default (a team of every core) makes it milliseconds, and the team's
    spinning threads take the cores the model needs. OpenMP keeps this setting per thread,
    so it is made on the thread that calls FAISS (the event loop, a worker), not at import
    (which may happen on another)."""
    faiss.omp_set_num_threads(1)


class ReadWriteLock:
    """Many readers or one writer; a waiting writer stops new readers from starving it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class VectorIndex:
    """Not thread-safe by itself: the gallery holds its lock around every call."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        single_threaded()
        self._index.add_with_ids(np.ascontiguousarray(vectors, np.float32),
                                 np.asarray(ids, np.int64))

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def remove(self, ids: list[int]) -> None:
        if ids:
            single_threaded()
            self._index.remove_ids(np.asarray(ids, np.int64))

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        k = min(k, len(self))
        if k == 0:
            return []
        single_threaded()
        scores, ids = self._index.search(np.ascontiguousarray(vector[None], np.float32), k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
