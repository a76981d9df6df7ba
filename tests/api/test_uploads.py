"""The one-pass multipart reader of /search and /classify (app/api/uploads.py)."""

from __future__ import annotations

import pytest

from app.api.errors import ServiceError
from app.api.uploads import file_from_form

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart body of (field name, file name or None, content) parts."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else "")
        body += (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def refusal(body: bytes, content_type: str = CONTENT_TYPE) -> tuple[int, str]:
    with pytest.raises(ServiceError) as raised:
        file_from_form(body, content_type, "file", max_fields=2)
    return raised.value.status_code, str(raised.value.detail)


def test_the_file_part_comes_back_byte_for_byte():
    # Bytes that look like line breaks and boundaries inside the file stay in it.
    content = bytes(range(256)) * 40 + f"\r\n--{BOUNDARY}x\r\n\r\n".encode() + b"\r" * 7
    body = form(("note", None, b"hello"), ("file", "photo.jpg", content))
    assert file_from_form(body, CONTENT_TYPE, "file", max_fields=2) == ("photo.jpg", content)
    quoted = f'multipart/form-data; boundary="{BOUNDARY}"'
    assert file_from_form(body, quoted, "file", max_fields=2)[1] == content


def test_an_empty_file_part_is_returned_empty():
    assert file_from_form(form(("file", "", b"")), CONTENT_TYPE, "file", 2) == ("upload", b"")


@pytest.mark.parametrize("body, content_type, status, message", [
    (form(("file", "a.jpg", b"a")), "multipart/form-data", 400, "Missing boundary"),
    (form(("file", "a.jpg", b"a"), ("file", "b.jpg", b"b")), CONTENT_TYPE, 400,
     "Too many files"),
    (form(("a", None, b"1"), ("b", None, b"2"), ("c", None, b"3"), ("file", "a.jpg", b"a")),
     CONTENT_TYPE, 400, "Too many fields"),
    (b"no multipart here at all", CONTENT_TYPE, 400, "Invalid multipart data"),
    (form(("other", "a.jpg", b"a")), CONTENT_TYPE, 422, "no file field 'file'"),
    (form(("file", None, b"not a file part")), CONTENT_TYPE, 422, "no file field 'file'"),
    (form(("file", "a.jpg", b"cut off"))[:-20], CONTENT_TYPE, 422, "no file field 'file'"),
], ids=["no-boundary", "two-files", "too-many-fields", "garbage", "other-name", "text-field",
        "truncated"])
def test_a_form_without_exactly_one_photo_is_refused_with_a_4xx(body, content_type, status,
                                                                 message):
    code, detail = refusal(body, content_type)
    assert code == status and message in detail
