import io
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from models.base import usable_cpus
from tests.api.helpers import enroll, photo, running, upload
from tests.helpers import COLOURS, jpeg_bytes, make_image_folder, make_tiny_checkpoint, png_bytes
from tests.helpers import synthetic_image as synth

pytestmark = pytest.mark.both_stores


def test_health_readiness_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["gallery_items"] == 12
    assert ready["runtime"] == "onnx" and ready["device"] == "cpu"
    cores = usable_cpus()  # one lane per CPU this process may use
    assert ready["model_lanes"] == (cores if cores > 1 else 0)
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/enroll", "/classify", "/labels", "/items", "/items/{item_id}",
            "/items/{item_id}/image", "/labels/{label}", "/metrics"} <= set(paths)


def test_search_returns_k_best_first_with_working_image_urls(client):
    body = client.post("/search", files=upload(photo()), params={"k": 7}).json()
    results = body["results"]
    assert len(results) == 7 and body["k"] == 7 and body["took_ms"] > 0
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1.0001 for s in scores)
    assert {"id", "label", "score", "image_url"} <= set(results[0])
    image = client.get(results[0]["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (80, 80)
    assert len(client.post("/search", files=upload(photo())).json()["results"]) == 5


def test_the_photo_may_come_as_the_raw_request_body(client):
    data = photo("green", 11)
    for route in ("/search", "/classify"):
        as_form = client.post(route, files=upload(data)).json()
        for content_type in ("image/jpeg", "image/png", "application/octet-stream"):
            raw = client.post(route, content=data, headers={"Content-Type": content_type})
            assert raw.status_code == 200, raw.text
            body = raw.json()
            assert {**body, "took_ms": 0} == {**as_form, "took_ms": 0}
    document = client.get("/openapi.json").json()["paths"]["/search"]["post"]
    assert set(document["requestBody"]["content"]) == {"multipart/form-data", "image/*"}


@pytest.mark.parametrize("request_kwargs, code, message", [
    ({"content": b"label=x", "headers": {"Content-Type": "text/plain"}}, 415,
     "multipart/form-data"),
    ({"content": b"x"}, 415, "no content type"),
    ({"data": {"label": "x"}, "files": {"other": ("a.jpg", b"abc", "image/jpeg")}}, 422,
     "no file field 'file'"),
    ({"files": [("file", ("a.jpg", b"a", "image/jpeg")), ("file", ("b.jpg", b"b",
                                                                    "image/jpeg"))]}, 400,
     "Too many files"),
], ids=["text", "no-type", "no-file-field", "two-files"])
def test_a_search_body_that_carries_no_photo_is_a_clear_4xx(client, request_kwargs, code,
                                                            message):
    for route in ("/search", "/classify"):
        response = client.post(route, **request_kwargs)
        assert response.status_code == code, response.text
        assert message in response.json()["detail"]


def test_enrolled_photo_is_searchable_in_the_next_request(client):
    data = photo("cyan", 1)
    response = enroll(client, data, "cyan")
    assert response.status_code == 201
    (item,) = response.json()["items"]
    assert item["created"] and item["label"] == "cyan"
    top = client.post("/search", files=upload(data)).json()["results"][0]
    assert top["id"] == item["id"] and top["label"] == "cyan"
    assert top["score"] == pytest.approx(1.0, abs=1e-3)
    assert client.get(f"/items/{item['id']}").json()["source"] == "enrolled"
    assert client.get(item["image_url"]).content == data


def test_same_bytes_same_label_returns_the_existing_id(client):
    data = photo("purple", 2)
    first = enroll(client, data, "purple").json()["items"][0]
    again = enroll(client, data, "purple")
    assert again.status_code == 200
    assert again.json()["items"][0] == {**first, "created": False, "warnings": []}
    assert client.get("/labels").json()["labels"][-2:][0]["label"] in {"green", "purple"}
    counts = {x["label"]: x["count"] for x in client.get("/labels").json()["labels"]}
    assert counts["purple"] == 1
    # Under another label the same bytes are a new item.
    assert enroll(client, data, "violet").status_code == 201


def test_enrol_several_files_at_once(client):
    files = [("file", (f"{i}.png", png_bytes(synth(COLOURS["yellow"], 900 + i)), "image/png"))
             for i in range(3)]
    response = client.post("/enroll", files=files, data={"label": "sunny"})
    assert response.status_code == 201
    ids = [i["id"] for i in response.json()["items"]]
    assert len(set(ids)) == 3
    page = client.get("/items", params={"label": "sunny"}).json()
    assert page["total"] == 3 and sorted(i["id"] for i in page["items"]) == sorted(ids)
    assert client.get(f"/items/{ids[0]}/image").headers["content-type"] == "image/png"


def test_an_item_records_its_photos_upright_size_not_the_decoded_draft(client):
    """A big JPEG decodes at a reduced scale for the model; the item keeps the photo's own
    size, turned upright by its EXIF orientation."""
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated a quarter turn: 300 wide, 800 high
    data = jpeg_bytes(synth(COLOURS["cyan"], 77).resize((800, 300)), exif=exif.tobytes())
    item = enroll(client, data, "tall").json()["items"][0]
    stored = client.get(f"/items/{item['id']}").json()
    assert (stored["width"], stored["height"]) == (300, 800)


def test_classify_uses_prototypes_and_the_threshold(tiny_checkpoint, gallery_dir, tmp_path):
    with running(tiny_checkpoint, tmp_path / "a", gallery_dir, classify_threshold=-1) as c:
        body = c.post("/classify", files=upload(photo("red", 7))).json()
        assert body["label"] == body["candidates"][0]["label"] != "unknown"
        assert {x["label"] for x in body["candidates"]} == {"red", "green", "blue"}
        scores = [x["score"] for x in body["candidates"]]
        assert scores == sorted(scores, reverse=True) and body["score"] == scores[0]
    with running(tiny_checkpoint, tmp_path / "b", gallery_dir, classify_threshold=1.0) as c:
        body = c.post("/classify", files=upload(photo("red", 7))).json()
        assert body["label"] == "unknown" and body["score"] < 1.0


def test_the_few_shot_bonus_is_the_checkpoints_unless_set(tiny_checkpoint, gallery_dir,
                                                          tmp_path):
    from models.checkpoint import set_checkpoint_extra
    from models.decision import ShotCalibration

    checkpoint = tmp_path / "calibrated.pt"
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    set_checkpoint_extra(checkpoint, "openset", ShotCalibration(
        (1, 4), (0.5, 0.6), (0.1, 0.1), 0.0, (1.0, 0.0, 0.0), few_shot_bonus=0.4).to_dict())
    scores = []
    for name, bonus in (("stored", None), ("set", 1.5)):
        with running(checkpoint, tmp_path / name, gallery_dir,
                     classify_few_shot_bonus=bonus) as c:
            # 200 on the second run with PostgreSQL, whose gallery outlives a service
            assert enroll(c, photo("yellow", 3), "sunny").status_code in (200, 201)
            body = c.post("/classify", files=upload(photo("red", 7))).json()
            scores.append({x["label"]: x["score"] for x in body["candidates"]})
    # "sunny" has one photo: its score rises by the whole difference; the gallery's labels
    # (4 photos each) by its share at four, 1 - ln 4 / ln 5.
    assert scores[1]["sunny"] - scores[0]["sunny"] == pytest.approx(1.1, abs=1e-4)
    assert scores[1]["red"] - scores[0]["red"] == pytest.approx(
        1.1 * (1 - np.log(4) / np.log(5)), abs=1e-4)


def test_items_paging_and_filtering(client):
    page = client.get("/items", params={"offset": 2, "limit": 5}).json()
    assert page["total"] == 12 and page["offset"] == 2 and len(page["items"]) == 5
    all_ids = [i["id"] for i in client.get("/items", params={"limit": 500}).json()["items"]]
    assert [i["id"] for i in page["items"]] == all_ids[2:7]
    blue = client.get("/items", params={"label": "blue"}).json()
    assert blue["total"] == 4 and {i["label"] for i in blue["items"]} == {"blue"}
    assert {x["label"]: x["count"] for x in client.get("/labels").json()["labels"]} == {
        "blue": 4, "green": 4, "red": 4}


def test_delete_item_and_label(client):
    item = enroll(client, photo("cyan", 3), "teal").json()["items"][0]
    assert client.delete(f"/items/{item['id']}").json() == {"deleted": [item["id"]]}
    assert client.get(f"/items/{item['id']}").status_code == 404
    assert client.delete(f"/items/{item['id']}").status_code == 404
    hits = client.post("/search", files=upload(photo("cyan", 3)), params={"k": 100}).json()
    assert item["id"] not in [h["id"] for h in hits["results"]]
    deleted = client.delete("/labels/green").json()["deleted"]
    assert len(deleted) == 4
    assert "green" not in {x["label"] for x in client.get("/labels").json()["labels"]}
    assert client.delete("/labels/green").status_code == 404
    assert client.get("/readyz").json()["gallery_items"] == 8


def test_api_key_guards_enrol_and_delete(tiny_checkpoint, gallery_dir, tmp_path):
    with running(tiny_checkpoint, tmp_path / "d", gallery_dir, api_key="s3cret") as c:
        assert enroll(c, photo(), "x").status_code == 401
        assert enroll(c, photo(), "x", headers={"X-API-Key": "wrong"}).status_code == 401
        r = enroll(c, photo(), "x", headers={"X-API-Key": "s3cret"})
        assert r.status_code == 201
        item_id = r.json()["items"][0]["id"]
        assert c.delete(f"/items/{item_id}").status_code == 401
        assert c.delete("/labels/x").status_code == 401
        assert c.post("/search", files=upload(photo())).status_code == 200  # open
        assert c.delete(f"/items/{item_id}", headers={"X-API-Key": "s3cret"}).status_code == 200
    with running(tiny_checkpoint, tmp_path / "e", gallery_dir, api_key="k",
                 search_requires_key=True) as c:
        assert c.post("/search", files=upload(photo())).status_code == 401
        assert c.get("/items").status_code == 401
        ok = c.post("/search", files=upload(photo()), headers={"X-API-Key": "k"})
        assert ok.status_code == 200


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    synth(COLOURS["red"], 1).convert("CMYK").save(buffer, "JPEG")
    return buffer.getvalue()


def sixteen_bit_png() -> bytes:
    return png_bytes(Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)))


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return jpeg_bytes(synth(COLOURS["blue"], 2, 60).crop((0, 0, 60, 30)), exif=exif.tobytes())


@pytest.mark.parametrize("data", [
    cmyk_jpeg(),
    png_bytes(synth(COLOURS["red"], 1).convert("P")),
    png_bytes(synth(COLOURS["red"], 1).convert("RGBA")),
    sixteen_bit_png(),
    png_bytes(synth(COLOURS["red"], 1).convert("L")),
    rotated_jpeg(),
], ids=["cmyk", "palette", "rgba", "16bit", "grey", "exif-rotated"])
def test_odd_but_valid_images_work(client, data):
    assert client.post("/search", files=upload(data)).status_code == 200
    r = enroll(client, data, "odd")
    assert r.status_code == 201


def ico_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, "ICO")
    return buffer.getvalue()


@pytest.mark.parametrize("data, code, message", [
    (b"", 400, "empty"),
    (b"just some text, not a photo", 400, "not an image"),
    (photo()[:700], 400, "truncated"),
    (ico_bytes(), 415, "unsupported image format"),
    (png_bytes(Image.new("L", (2100, 2000))), 413, "too large"),
], ids=["empty", "text", "truncated", "ico", "bomb"])
def test_bad_images_get_clear_4xx(tiny_checkpoint, tmp_path, data, code, message):
    with running(tiny_checkpoint, tmp_path / "f", max_image_pixels=4_000_000) as c:
        raw = {"content": data, "headers": {"Content-Type": "image/jpeg"}}
        for response in (c.post("/search", files=upload(data)), enroll(c, data, "x"),
                         c.post("/classify", files=upload(data)), c.post("/search", **raw),
                         c.post("/classify", **raw)):
            assert response.status_code == code, response.text
            assert message in response.json()["detail"]


def test_upload_over_the_size_limit_is_413(tiny_checkpoint, tmp_path):
    big = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3),
                                                                       dtype=np.uint8)))
    assert len(big) > 100_000
    with running(tiny_checkpoint, tmp_path / "g", max_upload_mb=0.05,
                 max_files_per_enroll=2) as c:
        r = c.post("/search", files=upload(big))
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        r = c.post("/search", content=big, headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        r = c.post("/search", content=big[:60_000], headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and "0.05 MB limit" in r.json()["detail"]
        small = [("file", (f"{i}.jpg", photo("red", i), "image/jpeg")) for i in range(3)]
        r = c.post("/enroll", files=small, data={"label": "x"})
        assert r.status_code == 413 and "at most 2 files" in r.json()["detail"]


@pytest.mark.parametrize("request_kwargs, message", [
    ({"data": {"label": "x"}}, "file"),
    ({"files": upload(b"x")}, "label"),
    ({"files": upload(b"x"), "data": {"label": "   "}}, "empty"),
    ({"files": upload(b"x"), "data": {"label": "a" * 101}}, "longer than 100"),
    ({"files": upload(b"x"), "data": {"label": "bad\x00label"}}, "control"),
    ({"files": upload(b"x"), "data": {"label": "!!!"}}, "letter or digit"),
    ({"files": upload(b"x"), "data": {"label": "unknown"}}, "reserved"),
], ids=["no-file", "no-label", "blank", "long", "control", "punctuation", "reserved"])
def test_bad_enrol_requests_get_422_with_a_message(client, request_kwargs, message):
    response = client.post("/enroll", **request_kwargs)
    assert response.status_code == 422
    assert message in str(response.json()["detail"])


@pytest.mark.parametrize("k", ["0", "101", "five", "-1"])
def test_bad_k_is_422(client, k):
    response = client.post("/search", files=upload(photo()), params={"k": k})
    assert response.status_code == 422 and "k" in str(response.json()["detail"])


def test_unknown_ids_are_404_with_a_message(client):
    for response in (client.get("/items/99999"), client.get("/items/99999/image"),
                     client.delete("/items/99999")):
        assert response.status_code == 404 and "99999" in response.json()["detail"]
    assert client.get("/items/not-a-number").status_code == 422


def test_not_ready_is_503_with_the_reason(tmp_path):
    with running(tmp_path / "missing.pt", tmp_path / "h") as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "does not exist" in ready.json()["detail"]
        assert c.get("/healthz").status_code == 200
        r = c.post("/search", files=upload(photo()))
        assert r.status_code == 503 and "not ready" in r.json()["detail"]


def test_restart_keeps_enrolled_items_and_embeds_nothing_again(tiny_checkpoint, gallery_dir,
                                                               tmp_path):
    data_dir = tmp_path / "persist"
    with running(tiny_checkpoint, data_dir, gallery_dir) as c:
        item = enroll(c, photo("cyan", 5), "cyan").json()["items"][0]
        first_stats = c.app.state.service.startup_stats
    assert first_stats["added"] == 12
    with running(tiny_checkpoint, data_dir, gallery_dir) as c:
        assert c.app.state.service.startup_stats == {"scanned": 12, "added": 0, "removed": 0,
                                                     "embedded": 0, "not_indexed": 0,
                                                     "missing_photos": 0}
        assert c.get(f"/items/{item['id']}").json()["label"] == "cyan"
        top = c.post("/search", files=upload(photo("cyan", 5))).json()["results"][0]
        assert top["id"] == item["id"]
        assert c.get("/readyz").json()["gallery_items"] == 13


def test_checkpoint_change_recomputes_embeddings_never_mixing(gallery_dir, tmp_path, store):
    first = make_tiny_checkpoint(tmp_path / "a.pt", seed=1)
    second = make_tiny_checkpoint(tmp_path / "b.pt", seed=2)
    data_dir = tmp_path / "ckchange"
    with running(first, data_dir, gallery_dir) as c:
        item = enroll(c, photo("cyan", 6), "cyan").json()["items"][0]
    with running(second, data_dir, gallery_dir) as c:
        stats = c.app.state.service.startup_stats
        assert stats["embedded"] == 13 and stats["added"] == 0
        top = c.post("/search", files=upload(photo("cyan", 6))).json()["results"][0]
        assert top["id"] == item["id"] and top["score"] == pytest.approx(1.0, abs=1e-3)
        fingerprint = c.app.state.service.gallery.store.fingerprint
        assert c.get("/consistency").json()["indexed"] == 13
    if store == "embedded":  # one embedding per item: the new checkpoint's
        with sqlite3.connect(data_dir / "gallery.sqlite3") as db:
            rows = db.execute("SELECT fingerprint, count(*) FROM embeddings GROUP BY 1"
                              ).fetchall()
        assert rows == [(fingerprint, 13)]


def test_gallery_photos_are_stored_as_the_mean_of_their_views(gallery_dir, tmp_path):
    from models.base import embed_for_gallery
    from models.checkpoint import set_checkpoint_extra

    checkpoint = make_tiny_checkpoint(tmp_path / "views.pt", seed=3)
    set_checkpoint_extra(checkpoint, "note", "two views", gallery_views=2)
    halves = np.zeros((80, 80, 3), np.uint8)
    halves[:, :40], halves[:, 40:] = COLOURS["red"], COLOURS["blue"]  # its mirror differs
    data = jpeg_bytes(Image.fromarray(halves))
    with running(checkpoint, tmp_path / "data", gallery_dir) as c:
        service = c.app.state.service
        embedder = service.embedding.embedder  # the ONNX export carries the views
        assert embedder.preprocessing.gallery_views == 2
        item = enroll(c, data, "cyan").json()["items"][0]
        x = service.embedding.decode(data)[1][None]
        query, stored = embedder.embed_batch(x)[0], embed_for_gallery(embedder, x)[0]
        assert query @ stored < 0.9999  # the mirror image moved it: not the query's vector
        top = c.post("/search", files=upload(data)).json()["results"][0]
        assert top["id"] == item["id"]
        assert top["score"] == pytest.approx(float(query @ stored), abs=1e-4)
        # The folder's photos, embedded in batches at start-up, alike.
        stats = service.gallery.store.label_stats()
        red = np.stack([service.embedding.decode(p.read_bytes())[1]
                        for p in sorted((gallery_dir / "red").glob("*.jpg"))])
        np.testing.assert_allclose(stats.sums[list(stats.labels).index("red")],
                                   embed_for_gallery(embedder, red).sum(0), atol=1e-4)


def test_gallery_folder_changes_are_picked_up(tiny_checkpoint, tmp_path):
    folder = make_image_folder(tmp_path / "g", {"red": COLOURS["red"]}, per_class=3)
    with running(tiny_checkpoint, tmp_path / "data", folder) as c:
        ids = [i["id"] for i in c.get("/items").json()["items"]]
        c.delete(f"/items/{ids[0]}")  # deleted through the API: stays deleted
    (folder / "red" / "001.jpg").unlink()  # removed from the folder
    make_image_folder(folder, {"blue": COLOURS["blue"]}, per_class=2)
    with running(tiny_checkpoint, tmp_path / "data", folder) as c:
        labels = {x["label"]: x["count"] for x in c.get("/labels").json()["labels"]}
        assert labels == {"red": 1, "blue": 2}


def test_concurrent_searches_and_enrolments(client):
    def search(i):
        return client.post("/search", files=upload(photo("red", 1000 + i))).status_code

    def add(i):
        return enroll(client, photo("green", 2000 + i), f"label-{i % 3}").status_code

    with ThreadPoolExecutor(8) as pool:
        searches = [pool.submit(search, i) for i in range(24)]
        adds = [pool.submit(add, i) for i in range(12)]
        assert [f.result() for f in searches] == [200] * 24
        assert [f.result() for f in adds] == [201] * 12
    assert client.get("/readyz").json()["gallery_items"] == 24


@pytest.mark.parametrize("lanes", [0, 3])
def test_concurrent_searches_get_their_own_answers(tiny_checkpoint, gallery_dir, tmp_path,
                                                    lanes):
    """With MODEL_LANES=3 the waiting searches go to three single-threaded model calls side
    by side; with 0, to one call on all threads. Either way each gets its own answer."""
    colours = ["red", "blue"] * 8

    with running(tiny_checkpoint, tmp_path / "data", gallery_dir, model_lanes=lanes) as c:
        assert c.get("/readyz").json()["model_lanes"] == lanes

        def top_label(i: int) -> str:
            body = c.post("/search", files=upload(photo(colours[i], 3000 + i))).json()
            return body["results"][0]["label"]

        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(top_label, range(len(colours)))) == colours


def test_metrics_are_prometheus_text(client):
    client.post("/search", files=upload(photo()))
    client.get("/items/424242")
    text = client.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/search",status="200"} 1.0' in text
    assert 'route="/items/{item_id}",status="404"' in text
    assert "http_request_duration_seconds_bucket" in text
    assert "gallery_items 12.0" in text
    assert "http_requests_in_flight 1.0" in text  # the scrape itself; the others are done


@pytest.mark.embedded_only  # SQLite files and the in-memory FAISS index
def test_a_corrupt_or_foreign_database_is_a_clear_start_up_error(tiny_checkpoint, tmp_path):
    corrupt, foreign = tmp_path / "corrupt", tmp_path / "foreign"
    corrupt.mkdir()
    (corrupt / "gallery.sqlite3").write_bytes(b"\x00garbage" * 1000)
    foreign.mkdir()
    with sqlite3.connect(foreign / "gallery.sqlite3") as db:
        db.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
    for data_dir, reason in ((corrupt, "not a readable SQLite database"),
                             (foreign, "a SQLite database of something else")):
        with running(tiny_checkpoint, data_dir) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503 and reason in ready.json()["detail"]
            search = client.post("/search", files=upload(photo()))
            assert search.status_code == 503 and reason in search.json()["detail"]
    assert (corrupt / "gallery.sqlite3").read_bytes() == b"\x00garbage" * 1000  # untouched


@pytest.mark.embedded_only  # SQLite files and the in-memory FAISS index
def test_missing_stored_photos_are_reported_at_start_up(tiny_checkpoint, tmp_path):
    with running(tiny_checkpoint, tmp_path / "d") as client:
        ids = [enroll(client, photo("cyan", s), "Cyan").json()["items"][0]["id"]
               for s in range(3)]
    removed = next((tmp_path / "d" / "images").rglob("*.jpg"))
    removed.unlink()
    with running(tiny_checkpoint, tmp_path / "d") as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["startup"]["missing_photos"] == 1
        report = client.get("/consistency").json()
        assert report["consistent"] and len(report["missing_photos"]) == 1
        assert report["missing_photos"][0] in ids
        gone = report["missing_photos"][0]
        assert client.get(f"/items/{gone}/image").json()["code"] == "image_missing"
        assert client.get("/labels").json()["total_items"] == 3  # not a silent loss


def test_classify_explains_itself(client):
    body = client.post("/classify", files=upload(photo("red", 7))).json()
    assert body["closest_label"] == "red" and body["label"] in ("red", "unknown")
    scores = [c["score"] for c in body["candidates"]]
    assert body["margin"] == pytest.approx(scores[0] - scores[1])
    assert 1 <= len(body["matches"]) <= 3 and {m["label"] for m in body["matches"]} == {"red"}
    assert body["matches"] == sorted(body["matches"], key=lambda m: -m["score"])
    assert client.get(body["matches"][0]["image_url"]).status_code == 200


def test_classify_names_the_closest_label_when_the_answer_is_unknown(tiny_checkpoint,
                                                                     gallery_dir, tmp_path):
    with running(tiny_checkpoint, tmp_path / "d", gallery_dir, classify_threshold=1.0) as c:
        body = c.post("/classify", files=upload(photo("blue", 8))).json()
        assert body["label"] == "unknown" and body["closest_label"] == "blue"
        assert body["matches"][0]["label"] == "blue"


def test_enrol_warns_of_near_duplicates_and_shots_closer_to_another_label(client):
    red = (client.get("/items", params={"label": "red"}).json()["items"][0])
    stored = client.get(red["image_url"]).content
    near = Image.open(io.BytesIO(stored)).convert("RGB")
    near.putpixel((0, 0), (0, 0, 0))  # other bytes, the same photo to the encoder
    first = enroll(client, jpeg_bytes(near, quality=95), "Crimson").json()["items"][0]
    assert first["created"] and any("near-duplicate of item" in w and "red" in w
                                    for w in first["warnings"])
    # Crimson's next shot is a green photo: nearer to 'green' than to Crimson's own photo.
    second = enroll(client, photo("green", 901), "Crimson").json()["items"][0]
    assert second["created"] and any("closer to 'green'" in w for w in second["warnings"])
    gallery = client.app.state.service.gallery  # a vector far from every stored photo
    far = np.random.default_rng(0).normal(size=gallery.embedding.dim).astype(np.float32)
    warnings = gallery.enrol_warnings("blue", (far / np.linalg.norm(far))[None])
    assert not any("near-duplicate" in w for w in warnings[0])
    again = enroll(client, jpeg_bytes(near, quality=95), "Crimson").json()["items"][0]
    assert not again["created"] and again["warnings"] == []  # itself, not a warning
