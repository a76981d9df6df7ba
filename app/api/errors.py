"""One error shape for every answer that is not a success, declared in the OpenAPI document:
``{"detail": "<words for a person>", "code": "<a machine-readable name>"}``, and for invalid
requests also ``errors``, one entry per field at fault."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.services.embedding import ShuttingDown
from app.stores.base import StorageFull, StoreUnavailable
from models.preprocessing import ImageDecodeError, ImageTooLargeError, UnsupportedFormatError

log = logging.getLogger(__name__)


class FieldProblem(BaseModel):
    field: str = Field(description="where: e.g. 'query.k' or 'body.label'")
    message: str


class ApiError(BaseModel):
    detail: str = Field(description="what went wrong, in words for a person")
    code: str = Field(description="what went wrong, for a program: one of the codes listed "
                                  "in each operation's error responses")
    errors: list[FieldProblem] | None = Field(
        None, description="invalid requests (422): each field at fault")

    model_config = {"json_schema_extra": {"examples": [
        {"detail": "no item with id 7", "code": "not_found"}]}}


class ServiceError(HTTPException):
    """An HTTP error with its machine-readable code."""

    def __init__(self, status_code: int, detail: str, code: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, detail, headers)
        self.code = code


# The code of an error raised without one, by its status.
DEFAULT_CODES = {
    status.HTTP_400_BAD_REQUEST: "bad_request",
    status.HTTP_401_UNAUTHORIZED: "unauthorized",
    status.HTTP_404_NOT_FOUND: "not_found",
    status.HTTP_405_METHOD_NOT_ALLOWED: "method_not_allowed",
    status.HTTP_408_REQUEST_TIMEOUT: "request_timeout",
    status.HTTP_413_CONTENT_TOO_LARGE: "too_large",
    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE: "unsupported_format",
    status.HTTP_422_UNPROCESSABLE_CONTENT: "invalid_request",
    status.HTTP_500_INTERNAL_SERVER_ERROR: "internal_error",
    status.HTTP_503_SERVICE_UNAVAILABLE: "not_ready",
    status.HTTP_507_INSUFFICIENT_STORAGE: "storage_full",
}

# What each error status means in this API, with the codes it carries (the OpenAPI text).
MEANINGS = {
    400: ("The upload is not a usable image: `not_an_image` (also empty or truncated files), "
          "`empty_file`."),
    401: "A valid `X-API-Key` header is required: `unauthorized`.",
    404: "No such item or label: `not_found`; the item's stored photo is gone: `image_missing`.",
    408: "The request body did not arrive within BODY_TIMEOUT_S: `request_timeout`.",
    413: ("Too large: `upload_too_large` (over MAX_UPLOAD_MB), `image_too_large` (over "
          "MAX_IMAGE_PIXELS), `too_many_files` (over MAX_FILES_PER_ENROLL)."),
    415: ("An image format the service does not accept: `unsupported_format`; a request "
          "body that is neither multipart/form-data nor an image: `unsupported_media_type`."),
    422: ("The request does not fit the API: `invalid_request` (with `errors`), "
          "`invalid_label`."),
    503: ("Not ready yet, or shutting down: `not_ready`, `shutting_down`; retry after the "
          "`Retry-After` header's seconds."),
    507: "The service's disk is full; nothing was stored: `storage_full`.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries of a route for these error statuses."""
    return {code: {"model": ApiError, "description": MEANINGS[code]} for code in codes}


def error_response(status_code: int, detail: str, code: str,
                   headers: dict[str, str] | None = None,
                   errors: list[FieldProblem] | None = None) -> JSONResponse:
    body = ApiError(detail=detail, code=code, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status_code, headers=headers)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the API serves at ``path``, from its OpenAPI document (Starlette's 405
    names only the first route whose path matched, e.g. GET of /items/{id}, not DELETE)."""
    methods: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods |= {m.upper() for m in operations if m != "parameters"}
    if "GET" in methods:
        methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or DEFAULT_CODES.get(exc.status_code, "error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        return error_response(exc.status_code, str(exc.detail), code, headers or None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [FieldProblem(field=".".join(str(p) for p in e.get("loc", ())),
                                 message=str(e.get("msg", "invalid")))
                    for e in exc.errors()]
        detail = "; ".join(f"{p.field}: {p.message}" for p in problems) or "invalid request"
        return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, detail, "invalid_request",
                              errors=problems)

    @app.exception_handler(ImageDecodeError)
    async def bad_image(_: Request, exc: ImageDecodeError) -> JSONResponse:
        if isinstance(exc, UnsupportedFormatError):
            return error_response(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, str(exc),
                                  "unsupported_format")
        if isinstance(exc, ImageTooLargeError):
            return error_response(status.HTTP_413_CONTENT_TOO_LARGE, str(exc),
                                  "image_too_large")
        return error_response(status.HTTP_400_BAD_REQUEST, str(exc), "not_an_image")

    @app.exception_handler(ShuttingDown)
    async def shutting_down(_: Request, exc: ShuttingDown) -> JSONResponse:
        return error_response(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), "shutting_down",
                              {"Retry-After": "5"})

    @app.exception_handler(StorageFull)
    async def storage_full(_: Request, exc: StorageFull) -> JSONResponse:
        log.error("refused a write: %s", exc)
        return error_response(status.HTTP_507_INSUFFICIENT_STORAGE,
                              "the service's disk is full: nothing was stored; searches still "
                              "work", "storage_full")

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("gallery database unavailable: %s", exc)
        return error_response(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc),
                              "database_unavailable", {"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(status.HTTP_500_INTERNAL_SERVER_ERROR,
                              "internal error: the service logged the details",
                              "internal_error")
