"""The API contract: the OpenAPI document says what this instance does, and schemathesis
(`--checks all`) finds no answer that contradicts it, with and without an API key.

CI runs a bounded number of cases; `make reliability` runs many more (CONTRACT_EXAMPLES)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import free_port, service
from tests.helpers import COLOURS, make_image_folder

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = os.environ.get("CONTRACT_EXAMPLES", "25")


@pytest.fixture(scope="module")
def contract_gallery(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("gallery"),
                             {k: COLOURS[k] for k in ("red", "green", "blue")}, per_class=3)


def schemathesis(port: int, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("schemathesis")
    return subprocess.run(
        [str(exe), "--config-file", str(CONFIG), "run",
         f"http://127.0.0.1:{port}/openapi.json", "--checks", "all", "-n", EXAMPLES,
         "--seed", "1", "--no-color", "--report-dir", str(tmp_path / "report"), *extra],
        capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("api_key", [None, "s3cret"], ids=["no-key", "key"])
def test_schemathesis_finds_no_contract_failure(tiny_checkpoint, contract_gallery, tmp_path,
                                                api_key):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"API_KEY", "CHECKPOINT"}}
    env.update(PORT=str(port), HOST="127.0.0.1", CHECKPOINT=str(tiny_checkpoint),
               DATA_DIR=str(tmp_path / "data"), GALLERY_DIR=str(contract_gallery),
               LOG_LEVEL="WARNING", **({"API_KEY": api_key} if api_key else {}))
    with service([sys.executable, "-m", "app"], env, port):
        runs = [schemathesis(port, tmp_path)]
        if api_key:  # and as a client that has the key, reaching enrolment and deletion
            runs.append(schemathesis(port, tmp_path, "-H", f"X-API-Key: {api_key}"))
    for run in runs:
        summary = run.stdout[-3000:]
        assert run.returncode == 0, summary
        counts = re.search(r"(\d+) generated, (\d+) passed(?:, (\d+) skipped)?\n", summary)
        assert counts, summary
        generated, passed, _skipped = (int(n or 0) for n in counts.groups())
        assert generated > 100 and passed == generated, summary  # none failed
