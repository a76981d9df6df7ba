"""`python -m app.backup`: the whole gallery as one file, restored into a fresh data directory
on a machine without the gallery folder, searchable at once without re-embedding."""

import io
import shutil
import tarfile

import pytest

from app import backup
from tests.api.helpers import enroll, photo, running, upload
from tests.helpers import COLOURS, make_image_folder


def test_round_trip_into_a_fresh_data_directory(tiny_checkpoint, tmp_path):
    folder = make_image_folder(tmp_path / "gallery", {k: COLOURS[k] for k in ("red", "blue")},
                               per_class=3)
    query = photo("red", 77)
    with running(tiny_checkpoint, tmp_path / "old", folder) as client:
        enrolled = enroll(client, photo("cyan", 5), "Cyan").json()["items"][0]
        gone = client.get("/items", params={"label": "blue"}).json()["items"][0]
        client.delete(f"/items/{gone['id']}")
        before = client.get("/items", params={"limit": 500}).json()
        hits = client.post("/search", files=upload(query)).json()["results"]
    out = tmp_path / "gallery.tar"
    assert backup.main(["export", str(out), "--data-dir", str(tmp_path / "old")])["items"] == 6
    shutil.rmtree(folder)  # the new machine has no gallery folder
    counts = backup.main(["import", str(out), "--data-dir", str(tmp_path / "new")])
    assert counts == {"items": 6, "embeddings": 6, "gallery_photos_stored": 5}
    with running(tiny_checkpoint, tmp_path / "new") as client:
        state = client.app.state.service
        assert state.startup_stats["embedded"] == 0  # the stored embeddings were used
        after = client.get("/items", params={"limit": 500}).json()
        assert [(i["id"], i["label"]) for i in after["items"]] == [
            (i["id"], i["label"]) for i in before["items"]]
        assert client.post("/search", files=upload(query)).json()["results"] == hits
        image = client.get(enrolled["image_url"])
        assert image.status_code == 200 and image.content == photo("cyan", 5)


def test_import_refuses_a_non_empty_directory_and_foreign_or_tampered_files(
        tiny_checkpoint, gallery_dir, tmp_path):
    with running(tiny_checkpoint, tmp_path / "data", gallery_dir):
        pass
    out = tmp_path / "b.tar"
    backup.main(["export", str(out), "--data-dir", str(tmp_path / "data")])
    with pytest.raises(SystemExit, match="already holds a gallery"):
        backup.main(["import", str(out), "--data-dir", str(tmp_path / "data")])
    not_a_backup = tmp_path / "x.tar"
    not_a_backup.write_bytes(b"hello")
    with pytest.raises(SystemExit, match="import failed"):
        backup.main(["import", str(not_a_backup), "--data-dir", str(tmp_path / "e1")])
    tampered = tmp_path / "t.tar"
    with tarfile.open(out) as source, tarfile.open(tampered, "w") as target:
        flipped = False
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name.startswith("photos/") and not flipped:
                data, flipped = data[:-1] + bytes([data[-1] ^ 1]), True  # one bit, one photo
            target.addfile(member, io.BytesIO(data))
    with pytest.raises(SystemExit, match="does not match its hash"):
        backup.main(["import", str(tampered), "--data-dir", str(tmp_path / "e2")])
