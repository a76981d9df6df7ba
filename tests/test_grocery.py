"""Realistic integration: the default checkpoint, real grocery photos, the service as a user
runs it. (The photos are read from ../shared; none are copied into the repository.)"""

import sys

import httpx

from models.checkpoint import DEFAULT_CHECKPOINT
from tests.helpers import free_port, service

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
        # Another photo of the new class, from the test split (a different session).
        other = sorted((grocery / "test" / NEW_CLASS).glob("*.jpg"))[3].read_bytes()
        top = httpx.post(f"{url}/search", files={"file": ("o.jpg", other, "image/jpeg")},
                         timeout=60).json()["results"][0]
        assert top["id"] == new_id and top["label"] == NEW_CLASS
        guess = httpx.post(f"{url}/classify", files={"file": ("o.jpg", other, "image/jpeg")},
                           timeout=60).json()
        assert guess["label"] == NEW_CLASS
