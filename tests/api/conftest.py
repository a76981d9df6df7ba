"""Fixtures of the API tests: the service running in-process on the synthetic gallery."""

import pytest

from tests.api.helpers import running


@pytest.fixture()
def client(tiny_checkpoint, gallery_dir, tmp_path):
    with running(tiny_checkpoint, tmp_path / "data", gallery_dir) as c:
        yield c
