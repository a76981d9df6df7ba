"""The service as a real process: the container's exact command outside Docker, and a
``kill -9`` right after an acknowledged enrolment."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys

import httpx
import pytest

from bench.harness import ROOT, free_port, service
from tests.helpers import COLOURS, jpeg_bytes, make_image_folder, synthetic_image

# They start the service as a process (or a browser): deselect with -m 'not slow'.
pytestmark = pytest.mark.slow


def dockerfile_runtime() -> tuple[dict[str, str], list[str], list[str]]:
    """ENV, CMD and HEALTHCHECK CMD of the Dockerfile's final stage."""
    text = ROOT.joinpath("Dockerfile").read_text().replace("\\\n", " ")
    final = text[text.rindex("\nFROM "):]
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            env.update(dict(pair.split("=", 1) for pair in shlex.split(line[4:])))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", final, re.M).group(1))
    health = json.loads(re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", final, re.M).group(1))
    return env, cmd, health


def base_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHECKPOINT", "API_KEY"))}
    env.update(values)
    return env


def test_container_command_and_environment_outside_docker(tmp_path):
    docker_env, cmd, health = dockerfile_runtime()
    assert cmd == ["python", "-m", "app"]
    port = free_port()
    gallery = make_image_folder(tmp_path / "gallery", {"red": COLOURS["red"]}, per_class=3)
    env = base_env(**{k: v.replace("/app/", f"{ROOT}/") for k, v in docker_env.items()
                      if k not in {"PATH", "VIRTUAL_ENV"}})
    # The container's paths, mapped onto this checkout and a temporary data volume.
    env.update(PORT=str(port), HOST="127.0.0.1", DATA_DIR=str(tmp_path / "data"),
               GALLERY_DIR=str(gallery))
    assert env["CHECKPOINT"] == f"{ROOT}/models/checkpoints/default.pt"
    exe = [sys.executable, *cmd[1:]]
    with service(exe, env, port):
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
        assert ready["status"] == "ready" and ready["gallery_items"] == 3
        check = subprocess.run([sys.executable, *health[1:]], env=env, timeout=30)
        assert check.returncode == 0


@pytest.mark.parametrize("signal_to_send", [signal.SIGKILL])
def test_acknowledged_enrolment_survives_kill_9(tiny_checkpoint, tmp_path, signal_to_send):
    port = free_port()
    env = base_env(PORT=str(port), HOST="127.0.0.1", CHECKPOINT=str(tiny_checkpoint),
                   DATA_DIR=str(tmp_path / "data"), GALLERY_DIR="", LOG_LEVEL="WARNING")
    cmd = [sys.executable, "-m", "app"]
    acknowledged = []
    with service(cmd, env, port) as process:
        for i in range(3):
            data = jpeg_bytes(synthetic_image(COLOURS["cyan"], 40 + i))
            r = httpx.post(f"http://127.0.0.1:{port}/enroll", data={"label": f"kind-{i}"},
                           files={"file": ("p.jpg", data, "image/jpeg")}, timeout=30)
            assert r.status_code == 201
            acknowledged.append((r.json()["items"][0]["id"], f"kind-{i}", data))
        process.send_signal(signal_to_send)
        process.wait(10)
    with service(cmd, env, port):
        for item_id, label, data in acknowledged:
            item = httpx.get(f"http://127.0.0.1:{port}/items/{item_id}").json()
            assert item["label"] == label
            image = httpx.get(f"http://127.0.0.1:{port}/items/{item_id}/image")
            assert image.content == data
            top = httpx.post(f"http://127.0.0.1:{port}/search",
                             files={"file": ("q.jpg", data, "image/jpeg")}).json()["results"][0]
            assert top["id"] == item_id
