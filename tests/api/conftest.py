"""Fixtures of the API tests: a small synthetic gallery and a running service."""

from pathlib import Path

import pytest

from tests.api.helpers import running
from tests.helpers import COLOURS, make_image_folder


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("gallery"),
                             {k: COLOURS[k] for k in ["red", "green", "blue"]}, per_class=4)


@pytest.fixture()
def client(tiny_checkpoint, gallery_dir, tmp_path):
    with running(tiny_checkpoint, tmp_path / "data", gallery_dir) as c:
        yield c
