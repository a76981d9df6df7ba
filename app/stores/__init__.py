"""Gallery stores: embedded (SQLite + FAISS in ``DATA_DIR``, the default) or PostgreSQL with
pgvector (``DATABASE_URL``), shared by several replicas."""

from __future__ import annotations

from app.core.config import Settings
from app.stores.base import GalleryStore


def open_store(settings: Settings, dim: int, fingerprint: str) -> GalleryStore:
    if settings.database_url is None:
        from app.stores.embedded import EmbeddedStore

        return EmbeddedStore(settings.data_dir, dim, fingerprint)
    from app.stores.postgres import PostgresStore

    return PostgresStore(settings.database_url, dim, fingerprint,
                         pool_size=settings.database_pool_size,
                         exact_search_below=settings.exact_search_below)
