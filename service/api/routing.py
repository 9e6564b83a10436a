"""The route class of the /v1 routers: the API key is checked before the body is read.

FastAPI reads (and for multipart, spools to disk) a request's body before it solves the route's
dependencies, so a key checked as a dependency would let anyone without one make the server
parse uploads up to the body cap. This route class checks it first, with the same function.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from service.api.deps import require_api_key
from service.api.errors import V1_PROBLEMS


class KeyCheckedRoute(APIRoute):
    """An APIRoute that answers 401 (ApiKeyError) before touching the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            require_api_key(request)
            return await handler(request)

        return checked


def v1_router(tag: str) -> APIRouter:
    """A /v1 router: API key checked before the body, the shared problem responses documented."""
    return APIRouter(prefix="/v1", tags=[tag], route_class=KeyCheckedRoute, responses=V1_PROBLEMS)
