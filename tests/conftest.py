from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the network: hub libraries fail at once instead of trying. Set before
# anything imports them, since they read these variables once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # pgserver's platformdirs asks for one

from tests.helpers import COLOURS, make_image_folder, make_tiny_checkpoint  # noqa: E402

GROCERY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "grocery"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four easy colour classes, 12 images each, flat <root>/<class>/* layout."""
    names = ["red", "green", "blue", "yellow"]
    return make_image_folder(tmp_path_factory.mktemp("synthetic"),
                             {n: COLOURS[n] for n in names}, per_class=12)


@pytest.fixture(scope="session")
def grocery() -> Path:
    if not GROCERY.is_dir():
        pytest.fail(f"the grocery photos are expected at {GROCERY}")
    return GROCERY


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory):
    """A real PostgreSQL 16 with pgvector (the pgserver package), for this test session."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server
    server.cleanup()


@pytest.fixture()
def database_url(postgres_server, request: pytest.FixtureRequest) -> str:
    """A new, empty database on the session's server: postgresql://... for DATABASE_URL."""
    import psycopg

    uri = postgres_server.get_uri()
    name = f"t{abs(hash(request.node.nodeid)) % 10**12}_{os.getpid()}"
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return uri.replace("/postgres?", f"/{name}?", 1)


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three colour classes, 4 images each: the service's gallery folder in API tests."""
    return make_image_folder(tmp_path_factory.mktemp("gallery"),
                             {k: COLOURS[k] for k in ["red", "green", "blue"]}, per_class=4)
