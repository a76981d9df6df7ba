"""Several replicas, one gallery: two ``python -m app`` processes on one PostgreSQL (a real
server, started here in its own folder so the tests may stop it)."""

import os
import signal
import threading
import time
from contextlib import ExitStack

import httpx
import psycopg
import pytest

from bench.harness import Service
from tests.api.helpers import photo, upload

pytestmark = pytest.mark.slow  # starts service processes


@pytest.fixture()
def database(tmp_path_factory):
    """Its own PostgreSQL server (restartable) with one empty database."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pgr"), cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS replicas WITH (FORCE)")
        conn.execute("CREATE DATABASE replicas")
    yield server, server.get_uri().replace("/postgres?", "/replicas?", 1)
    server.cleanup()


def replica(tiny_checkpoint, tmp_path, url: str, name: str) -> Service:
    return Service(str(tiny_checkpoint), tmp_path / name,
                   env={"DATABASE_URL": url, "RUNTIME": "torch", "DEVICE": "cpu"},
                   timeout=120)


def enrol(base: str, data: bytes, label: str) -> httpx.Response:
    return httpx.post(f"{base}/enroll", files=upload(data), data={"label": label}, timeout=30)


def top_hit(base: str, data: bytes) -> dict:
    return httpx.post(f"{base}/search", files=upload(data), timeout=30).json()["results"][0]


def test_what_one_replica_changes_the_other_serves_in_the_next_request(
        tiny_checkpoint, tmp_path, database):
    _, url = database
    a, b = (replica(tiny_checkpoint, tmp_path, url, n) for n in ("a", "b"))
    with a.run(), b.run():
        item = enrol(a.url, photo("cyan", 1), "cyan").json()["items"][0]
        assert top_hit(b.url, photo("cyan", 1))["id"] == item["id"]
        image = httpx.get(b.url + item["image_url"])  # the photo itself is shared too
        assert image.status_code == 200 and image.content == photo("cyan", 1)
        assert httpx.delete(f"{b.url}/items/{item['id']}").status_code == 200
        assert httpx.get(f"{a.url}/items/{item['id']}").status_code == 404
        assert httpx.get(f"{a.url}/labels").json()["total_items"] == 0
        # The same photo under the same label through both at once: one item.
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda base=base: results.append(
            enrol(base, photo("red", 2), "red"))) for base in (a.url, b.url) * 3]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(r.status_code for r in results) == [200] * 5 + [201]  # 201: created
        assert len({r.json()["items"][0]["id"] for r in results}) == 1
        assert sum(r.json()["items"][0]["created"] for r in results) == 1
        assert httpx.get(f"{a.url}/consistency").json()["consistent"]


def test_a_replica_killed_mid_enrolment_loses_nothing_it_acknowledged(
        tiny_checkpoint, tmp_path, database):
    _, url = database
    a, b = (replica(tiny_checkpoint, tmp_path, url, n) for n in ("a", "b"))
    acknowledged: dict[int, bytes] = {}
    with ExitStack() as stack:
        process = stack.enter_context(a.run())
        stack.enter_context(b.run())

        def loop() -> None:
            for seed in range(10_000):
                data = photo("green", 1000 + seed)
                try:
                    response = enrol(a.url, data, "green")
                except httpx.TransportError:
                    return  # the replica is gone
                if response.status_code == 201:
                    acknowledged[response.json()["items"][0]["id"]] = data

        writer = threading.Thread(target=loop)
        writer.start()
        deadline = time.time() + 30
        while len(acknowledged) < 8 and time.time() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        writer.join(30)
        assert len(acknowledged) >= 8
        for item_id, data in acknowledged.items():
            assert httpx.get(f"{b.url}/items/{item_id}").status_code == 200
            assert top_hit(b.url, data)["id"] == item_id
        assert httpx.get(f"{b.url}/consistency").json()["consistent"]


def test_the_database_restarting_is_503_with_a_reason_then_recovers(
        tiny_checkpoint, tmp_path, database):
    from pgserver.postgres_server import pg_ctl

    server, url = database
    a = replica(tiny_checkpoint, tmp_path, url, "a")
    with a.run():
        item = enrol(a.url, photo("blue", 3), "blue").json()["items"][0]
        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=server.pgdata, user=server.system_user)
        down = httpx.post(f"{a.url}/search", files=upload(photo("blue", 3)), timeout=30)
        assert down.status_code == 503 and down.json()["code"] == "database_unavailable"
        assert "unreachable" in down.json()["detail"] and down.headers["Retry-After"]
        ready = httpx.get(f"{a.url}/readyz", timeout=30)
        assert ready.status_code == 503 and "database" in ready.json()["detail"]
        server.ensure_postgres_running()
        deadline = time.time() + 30
        while time.time() < deadline:  # recovers by itself: no restart of the replica
            response = httpx.post(f"{a.url}/search", files=upload(photo("blue", 3)),
                                  timeout=30)
            if response.status_code == 200:
                break
            time.sleep(0.2)
        assert response.status_code == 200 and response.json()["results"][0]["id"] == item["id"]
        assert httpx.get(f"{a.url}/readyz").status_code == 200


def test_replicas_starting_together_migrate_and_sync_the_gallery_once(
        tiny_checkpoint, tmp_path, database, gallery_dir):
    _, url = database
    services = [replica(tiny_checkpoint, tmp_path, url, n) for n in ("a", "b", "c")]
    for s in services:
        s.gallery = gallery_dir
    with ExitStack() as stack:
        threads = [threading.Thread(target=stack.enter_context, args=(s.run(),))
                   for s in services]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        labels = [httpx.get(f"{s.url}/labels").json() for s in services]
        assert all(lab == labels[0] for lab in labels) and labels[0]["total_items"] == 12
        embedded = [httpx.get(f"{s.url}/readyz").json()["startup"]["added"] for s in services]
        assert sorted(embedded) == [0, 0, 12]  # one replica did the work
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] >= 1

