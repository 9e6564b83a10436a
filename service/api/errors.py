"""The one place errors become HTTP answers: RFC 9457 `application/problem+json` for all of them.

- `DecafError` (any subclass, from any package): its class's `http_status`, problem type and
  title, its message as `detail` (see `service.problems`); Retry-After on 503s.
- Request validation (FastAPI/pydantic): 422, type `/problems/invalid-request`, one entry per
  invalid field in `errors` (`loc`, `detail`, `code`).
  Echoed input (a field name in `loc`, a message) is shortened (`service.echo`).
- Starlette HTTP errors (unknown route 404, wrong method 405): `about:blank` with their headers;
  a 405 lists in `Allow` every method of *all* the routes of that path (Starlette names only the
  first route's), and `OPTIONS` on a known path answers 204 with that `Allow`.
- Anything else: 500 `about:blank`, by `service.middleware.UnexpectedErrorMiddleware` (logged
  with its traceback, which never reaches the client; the connection stays usable).

`problem_responses(...)` documents those answers in OpenAPI (the `Problem` schema under
`application/problem+json`), and `document_problems` completes the spec by rule, for every /v1
operation (also ones added later): the security schemes and 401 (when the server has a key),
400/413 where a body is sent, 422 where anything is validated, 500/503/504 everywhere.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from featurizer.errors import DecafError
from service.batcher import QueueFullError
from service.echo import shorten
from service.errors import InvalidRequestError
from service.problems import (
    MAX_DETAIL_CHARS,
    PROBLEM_MEDIA_TYPE,
    Problem,
    http_problem,
    problem_from_error,
)
from service.schemas import Problem as ProblemSchema
from service.uploads import ClientDisconnectedError

log = logging.getLogger(__name__)

PROBLEM_SCHEMA_REF = "#/components/schemas/Problem"

_DESCRIPTIONS = {
    400: "bad request (e.g. a malformed body or an invalid name)",
    401: "missing or invalid API key (when the server has DECAF_API_KEY)",
    403: "forbidden (e.g. a path outside DECAF_DATA_ROOTS)",
    404: "not found",
    406: "the requested representation cannot hold the answer",
    409: "conflicts with the current state (or features that do not match a probe)",
    413: "upload or request too large",
    415: "unsupported media type",
    422: "invalid request (validation errors, unknown layers or backbones, unusable images)",
    500: "internal error (details in the server log)",
    501: "not available on this server",
    503: "not ready, or the batch queue is full (see Retry-After)",
    504: "the request took longer than DECAF_REQUEST_TIMEOUT_S",
}


def problem_response(problem: Problem) -> Response:
    return Response(
        problem.encode(),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for error statuses, all with the Problem schema."""
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, "error"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}},
        }
        for status in statuses
    }


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


# --------------------------------------------------------------------------- handlers
async def _decaf_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DecafError)
    problem = problem_from_error(exc)
    if isinstance(exc, ClientDisconnectedError):
        log.info("client disconnected from %s before the answer", request.url.path)
    elif problem.status >= 500:
        # A full queue is routine under overload (and counted in /metrics): keep it out of WARN.
        level = logging.INFO if isinstance(exc, QueueFullError) else logging.WARNING
        log.log(level, "%s on %s: %s", type(exc).__name__, request.url.path, exc)
    return problem_response(problem)


def allowed_methods(request: Request) -> str:
    """The `Allow` value of the request's path: each method some route of that path takes.

    Asked of the router itself, method by method (a route matches FULL only for its methods),
    so routes in included routers count as well as ones added straight on the app.
    """
    routes = request.app.router.routes

    def routed(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(scope)[0] is Match.FULL for route in routes)

    return ", ".join(m for m in HTTP_METHODS if m == "OPTIONS" or routed(m))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {shorten(request.url.path)}; the API is described at /docs"
    elif exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
        if request.method == "OPTIONS":  # no route declares it: the methods are the answer
            return Response(status_code=204, headers=headers)
        detail = f"{request.method} is not allowed on {shorten(request.url.path)}"
    return problem_response(http_problem(exc.status_code, detail, headers=headers))


def _short(part: Any) -> Any:
    return shorten(part) if isinstance(part, str) else part


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # A field *name* may be client input too (an unknown key of a 10 MB body): shortened.
    errors = [
        {
            "loc": [_short(part) for part in err.get("loc", ())],
            "detail": shorten(str(err.get("msg", "invalid")), 500),
            "code": err.get("type"),
        }
        for err in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['detail']}" for e in errors)
    base = problem_from_error(InvalidRequestError())
    problem = Problem(
        status=base.status,
        title=base.title,
        detail=shorten(f"invalid request: {summary}", MAX_DETAIL_CHARS),
        type=base.type,
        extensions={"errors": errors},
    )
    return problem_response(problem)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DecafError, _decaf_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


# --------------------------------------------------------------------------- OpenAPI
API_KEY_SCHEMES: dict[str, dict[str, str]] = {
    "ApiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "the server's DECAF_API_KEY",
    },
    "BearerToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "the server's DECAF_API_KEY as `Authorization: Bearer <key>`",
    },
}
HTTP_VERBS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _v1_problem_statuses(operation: dict[str, Any], *, api_key: bool) -> list[int]:
    """The error statuses any /v1 operation can answer, from what it takes (see the middlewares)."""
    statuses = [500, 503, 504]
    if api_key:
        statuses.append(401)
    if "requestBody" in operation:
        statuses += [400, 413]  # malformed or too deep / over the body cap
    if "requestBody" in operation or operation.get("parameters"):
        statuses.append(422)
    return statuses


def complete_v1_operations(spec: dict[str, Any], *, api_key: bool) -> None:
    """Document, on every /v1 operation, what the edge of the server does to all of them."""
    if api_key:
        components = spec.setdefault("components", {})
        components.setdefault("securitySchemes", {}).update(API_KEY_SCHEMES)
    for path, operations in spec.get("paths", {}).items():
        if path != "/v1" and not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            if method not in HTTP_VERBS:
                continue
            if api_key:
                operation["security"] = [{name: []} for name in API_KEY_SCHEMES]
            responses = operation.setdefault("responses", {})
            for status, entry in problem_responses(
                *_v1_problem_statuses(operation, api_key=api_key)
            ).items():
                # FastAPI's own 422 is its HTTPValidationError, which this server never sends.
                if str(status) not in responses or status == 422:
                    responses[str(status)] = entry
    _drop_unreferenced(spec, ("HTTPValidationError", "ValidationError"))


def _drop_unreferenced(spec: dict[str, Any], names: tuple[str, ...]) -> None:
    schemas = spec.get("components", {}).get("schemas", {})
    for name in names:
        schema = schemas.pop(name, None)
        if schema is not None and f'"#/components/schemas/{name}"' in json.dumps(spec):
            schemas[name] = schema  # still used somewhere: keep it


def document_problems(app: FastAPI, *, api_key: bool = False) -> None:
    """Complete the app's OpenAPI: the Problem schema the error responses refer to, and the
    answers every /v1 operation shares (`complete_v1_operations`)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schemas["Problem"] = ProblemSchema.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            complete_v1_operations(spec, api_key=api_key)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
