"""Fixtures of the API tests: the service running in-process on the synthetic gallery.

Tests in modules marked ``both_stores`` run twice: on the embedded store and on PostgreSQL
(a real server, see ``postgres_server``), unless marked ``embedded_only``."""

import pytest

from tests.api import helpers
from tests.api.helpers import running

STORES = ["embedded", "postgres"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store" not in metafunc.fixturenames:
        return
    both = (metafunc.definition.get_closest_marker("both_stores")
            and not metafunc.definition.get_closest_marker("embedded_only"))
    metafunc.parametrize("store", STORES if both else STORES[:1], indirect=True)


@pytest.fixture(autouse=True)
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which store ``running`` starts the service on: embedded, or a fresh PostgreSQL
    database."""
    kind = getattr(request, "param", "embedded")
    if kind == "postgres":
        monkeypatch.setattr(helpers, "DATABASE_URL", request.getfixturevalue("database_url"))
    return kind


@pytest.fixture()
def client(tiny_checkpoint, gallery_dir, tmp_path):
    with running(tiny_checkpoint, tmp_path / "data", gallery_dir) as c:
        yield c
