"""The /v1 routers: one per resource, all under the `/v1` prefix.

What every /v1 operation shares is applied by path, not by router, so a route added any other
way is covered too: the API key (`service.middleware.ApiKeyMiddleware`, before the body is read)
and the documented problem answers and security (`service.api.errors.document_problems`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.paths import NAME_PATTERN

# `{name}` of a dataset, in every route that has one: the pattern the server enforces, stated.
DatasetName = Annotated[str, Path(pattern=NAME_PATTERN, description="store name")]


def v1_router(tag: str) -> APIRouter:
    """A router for one resource under /v1."""
    return APIRouter(prefix="/v1", tags=[tag])
