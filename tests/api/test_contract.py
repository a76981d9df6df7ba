"""The API contract: the OpenAPI document says what this instance does, and schemathesis
(`--checks all`, bench.reliability.schemathesis) finds no answer that contradicts it, with
and without an API key. CI runs 25 cases an operation; `make reliability` many more."""

import pytest

from bench.harness import Service
from bench.reliability import schemathesis
from tests.helpers import COLOURS, make_image_folder

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("api_key", [None, "s3cret"], ids=["no-key", "key"])
def test_schemathesis_finds_no_contract_failure(tiny_checkpoint, tmp_path, api_key):
    gallery = make_image_folder(tmp_path / "gallery",
                                {k: COLOURS[k] for k in ("red", "green", "blue")}, per_class=3)
    spec = Service(str(tiny_checkpoint), tmp_path / "data", gallery,
                   {"API_KEY": api_key} if api_key else {})
    with spec.run():
        runs = [schemathesis(spec.url, 25)]
        if api_key:  # and as a client that has the key, reaching enrolment and deletion
            runs.append(schemathesis(spec.url, 25, "-H", f"X-API-Key: {api_key}"))
    for run in runs:
        assert run["ok"] and run["generated"] > 100, run.get("output", run)
