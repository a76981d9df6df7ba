"""Realistic integration: the default checkpoint, real grocery photos, the service as a user
runs it. (The photos are read from ../shared; none are copied into the repository.)"""

import sys

import httpx
import pytest

from bench.harness import free_port, service
from models.base import DEFAULT_CHECKPOINT

# They start the service as a process (or a browser): deselect with -m 'not slow'.
pytestmark = pytest.mark.slow

GALLERY_CLASSES = ["Banana", "Granny-Smith", "Red-Delicious", "Lemon", "Lime", "Carrots",
                   "Arla-Medium-Fat-Milk", "Oatly-Natural-Oatghurt", "Yellow-Onion", "Cucumber"]
NEW_CLASS = "Pineapple"  # not in the gallery: enrolled from one photo


def test_search_then_one_shot_enrolment_with_real_photos(grocery, tmp_path):
    gallery = tmp_path / "gallery"
    for name in GALLERY_CLASSES:
        (gallery / name).mkdir(parents=True)
        for photo in sorted((grocery / "train" / name).glob("*.jpg"))[:8]:
            (gallery / name / photo.name).symlink_to(photo)
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PORT": str(port), "HOST": "127.0.0.1",
           "CHECKPOINT": str(DEFAULT_CHECKPOINT), "DATA_DIR": str(tmp_path / "data"),
           "GALLERY_DIR": str(gallery), "LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
    url = f"http://127.0.0.1:{port}"
    with service([sys.executable, "-m", "app"], env, port):
        banana = sorted((grocery / "test" / "Banana").glob("*.jpg"))[0].read_bytes()
        found = httpx.post(f"{url}/search", files={"file": ("b.jpg", banana, "image/jpeg")},
                           timeout=60).json()["results"]
        assert len(found) == 5
        assert [r["label"] for r in found[:3]].count("Banana") >= 2, found

        photos = sorted((grocery / "train" / NEW_CLASS).glob("*.jpg"))
        enrolled = httpx.post(f"{url}/enroll", data={"label": NEW_CLASS},
                              files={"file": ("p.jpg", photos[0].read_bytes(), "image/jpeg")},
                              timeout=60)
        assert enrolled.status_code == 201
        new_id = enrolled.json()["items"][0]["id"]
        # Other photos of the new class, from the test split (taken in another session):
        # the one enrolled photo should come first for most of them (9 of 10 measured with
        # the default checkpoint; 9 of 10 with plain ImageNet features).
        others = sorted((grocery / "test" / NEW_CLASS).glob("*.jpg"))[:10]
        first, classified = 0, 0
        for path in others:
            files = {"file": ("o.jpg", path.read_bytes(), "image/jpeg")}
            top = httpx.post(f"{url}/search", files=files, timeout=60).json()["results"][0]
            first += top["id"] == new_id
            guess = httpx.post(f"{url}/classify", files=files, timeout=60).json()
            # The best-ranked prototype; whether it clears CLASSIFY_THRESHOLD is a setting.
            classified += guess["candidates"][0]["label"] == NEW_CLASS
        assert first >= 7 and classified >= 7, (first, classified)
