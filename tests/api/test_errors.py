"""One error shape everywhere, the OpenAPI document of each configuration, and the answers to
a full disk and to a stopping service."""

import errno
import sqlite3

import pytest

import app.stores.sqlite as store_module
from tests.api.helpers import enroll, photo, running, upload

pytestmark = pytest.mark.both_stores


def assert_error(response, status: int, code: str) -> dict:
    body = response.json()
    assert response.status_code == status, body
    assert isinstance(body["detail"], str) and body["detail"] and body["code"] == code, body
    return body


def test_every_error_has_a_string_detail_and_a_code(client):
    assert_error(client.post("/search", files=upload(b"not an image")), 400, "not_an_image")
    assert_error(client.post("/search", files=upload(b"")), 400, "empty_file")
    assert_error(client.get("/items/123456"), 404, "not_found")
    assert_error(client.get("/no/such/path"), 404, "not_found")
    assert_error(enroll(client, photo(), "!!!"), 422, "invalid_label")
    body = assert_error(client.post("/search", files=upload(photo()), params={"k": "0"}),
                        422, "invalid_request")
    assert "query.k" in body["detail"]  # a string, not FastAPI's list of errors
    assert body["errors"][0]["field"] == "query.k" and body["errors"][0]["message"]


def test_wrong_method_is_405_listing_every_method_of_the_path(client):
    response = client.request("PATCH", "/items/1")
    assert_error(response, 405, "method_not_allowed")
    assert {"GET", "DELETE"} <= {m.strip() for m in response.headers["allow"].split(",")}


def test_openapi_declares_one_error_model_and_no_fastapi_validation_error(client):
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    search = schema["paths"]["/search"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(search)
    assert search["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ApiError")
    assert {"404", "503"} <= set(schema["paths"]["/items/{item_id}"]["delete"]["responses"])
    assert "507" in schema["paths"]["/enroll"]["post"]["responses"]


@pytest.mark.parametrize("settings, guarded", [
    ({}, set()),
    ({"api_key": "k"}, {"POST /enroll", "DELETE /items/{item_id}", "DELETE /labels/{label}"}),
    ({"api_key": "k", "search_requires_key": True},
     {"POST /enroll", "DELETE /items/{item_id}", "DELETE /labels/{label}", "POST /search",
      "POST /classify", "GET /labels", "GET /items", "GET /items/{item_id}",
      "GET /items/{item_id}/image", "GET /consistency"}),
], ids=["open", "key-for-writes", "key-for-all"])
def test_openapi_declares_the_key_only_where_this_instance_enforces_it(
        tiny_checkpoint, gallery_dir, tmp_path, settings, guarded):
    with running(tiny_checkpoint, tmp_path / "d", gallery_dir, **settings) as client:
        schema = client.get("/openapi.json").json()
        declared = {f"{method.upper()} {path}" for path, item in schema["paths"].items()
                    for method, op in item.items() if op.get("security")}
        with_401 = {f"{method.upper()} {path}" for path, item in schema["paths"].items()
                    for method, op in item.items() if "401" in op["responses"]}
        assert declared == with_401 == guarded
        assert ("ApiKey" in schema["components"].get("securitySchemes", {})) == bool(guarded)
        for name in guarded:  # and the service enforces exactly these
            method, path = name.split(" ")
            path = path.replace("{item_id}", "1").replace("{label}", "red")
            kwargs = {"files": upload(photo())} if method == "POST" else {}
            assert_error(client.request(method, path, **kwargs), 401, "unauthorized")
        if not settings.get("search_requires_key"):
            assert client.get("/labels").status_code == 200


def stored_photos(client) -> set:
    data_dir = client.app.state.service.settings.data_dir
    return {p.name for p in (data_dir / "images").rglob("*") if p.is_file()}


@pytest.mark.embedded_only  # SQLite files and the in-memory FAISS index
@pytest.mark.parametrize("where", ["photo", "database"])
def test_a_full_disk_is_507_with_nothing_half_written(client, monkeypatch, where):
    before_items, before_photos = client.get("/labels").json(), stored_photos(client)

    def no_space(*_args, **_kwargs):
        if where == "photo":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise sqlite3.OperationalError("database or disk is full")

    target = "atomic_write_with" if where == "photo" else None
    if target:
        monkeypatch.setattr(store_module, target, no_space)
    else:
        monkeypatch.setattr(store_module.SqliteDatabase, "insert_items", no_space)
    assert_error(enroll(client, photo("cyan", 1), "Cyan"), 507, "storage_full")
    assert client.get("/labels").json() == before_items  # no item, no label
    assert stored_photos(client) == before_photos  # no photo left behind
    top = client.post("/search", files=upload(photo("red", 3))).json()["results"][0]
    assert top["label"] == "red"  # searches keep working
    monkeypatch.undo()  # space is back
    assert enroll(client, photo("cyan", 1), "Cyan").status_code == 201


def test_a_stopping_service_answers_503_shutting_down(client):
    embedding = client.app.state.service.embedding
    client.portal.call(embedding.stop)
    body = assert_error(client.post("/search", files=upload(photo())), 503, "shutting_down")
    assert "shutting down" in body["detail"]


@pytest.mark.embedded_only  # SQLite files and the in-memory FAISS index
def test_the_service_checks_itself_and_finds_a_tampered_index(client):
    enroll(client, photo("cyan", 9), "Cyan")
    report = client.get("/consistency").json()
    assert report["consistent"] and report["items"] == report["indexed"] == 13
    store = client.app.state.service.gallery.store
    victim = store.list_items()[0].id
    store.index.remove([victim])  # as a bug would: the store keeps it, the index not
    report = client.get("/consistency").json()
    assert not report["consistent"] and report["not_indexed"] == [victim]
    assert report["served_not_indexed"] == [victim]
