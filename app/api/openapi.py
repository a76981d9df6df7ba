"""The OpenAPI document of this instance: the API key is declared where this configuration
enforces it (enrolment and deletion when API_KEY is set; reads too with
SEARCH_REQUIRES_KEY), with the 401 those operations can then answer, and nowhere else."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.deps import READ_SCHEME, WRITE_SCHEME
from app.api.errors import MEANINGS
from app.core.config import Settings

SCHEME = "ApiKey"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def enforced_schemes(settings: Settings) -> set[str]:
    if settings.api_key is None:
        return set()
    return {WRITE_SCHEME, READ_SCHEME} if settings.search_requires_key else {WRITE_SCHEME}


def for_instance(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Rewrite FastAPI's document: each operation keeps the key requirement (as ``ApiKey``)
    and gets its 401 only where ``settings`` enforce it."""
    enforced = enforced_schemes(settings)
    for path in schema.get("paths", {}).values():
        for method, operation in path.items():
            if method not in METHODS:
                continue
            schemes = {name for requirement in operation.pop("security", [])
                       for name in requirement}
            if schemes & enforced:
                operation["security"] = [{SCHEME: []}]
                operation["responses"]["401"] = {
                    "description": MEANINGS[401],
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ApiError"}}}}
    security_schemes = schema.get("components", {}).pop("securitySchemes", {})
    if enforced:
        scheme = dict(security_schemes.get(WRITE_SCHEME, {"type": "apiKey", "in": "header",
                                                          "name": "X-API-Key"}))
        scheme["description"] = "this instance's API_KEY"
        schema["components"]["securitySchemes"] = {SCHEME: scheme}
    return schema


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = for_instance(
                get_openapi(title=app.title, version=app.version, summary=app.summary,
                            description=app.description, routes=app.routes), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
