"""Talking to the service in-process (FastAPI's TestClient), as the API tests do."""

import time
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from tests.helpers import COLOURS, jpeg_bytes
from tests.helpers import synthetic_image as synth

# Set by the ``store`` fixture: the PostgreSQL database the service runs on, or None for
# the embedded store.
DATABASE_URL: str | None = None


def wait_ready(client: TestClient, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200:
            return response.json()
        if "failed" in response.json()["detail"]:
            return response.json()
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout} s: {response.json()}")


@contextmanager
def running(checkpoint: Path, data_dir: Path, gallery: Path | None = None, **overrides):
    overrides.setdefault("database_url", DATABASE_URL)
    settings = Settings(_env_file=None, checkpoint=str(checkpoint), data_dir=data_dir,
                        gallery_dir=gallery, **overrides)
    app = create_app(settings)
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def upload(data: bytes, name: str = "photo.jpg", field: str = "file"):
    return {field: (name, data, "application/octet-stream")}


def photo(colour: str = "red", seed: int = 500) -> bytes:
    return jpeg_bytes(synth(COLOURS[colour], seed))


def enroll(client, data: bytes, label: str, **kwargs):
    return client.post("/enroll", files=upload(data), data={"label": label}, **kwargs)
