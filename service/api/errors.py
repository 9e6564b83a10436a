"""The one place errors become HTTP answers: RFC 9457 `application/problem+json` for all of them.

- `DecafError` (any subclass, from any package): its class's `http_status`, problem type and
  title, its message as `detail` (see `service.problems`); Retry-After on 503s.
- Request validation (FastAPI/pydantic): 422, type `/problems/invalid-request`, one entry per
  invalid field in `errors` (`loc`, `detail`, `code`).
- Starlette HTTP errors (unknown route 404, wrong method 405): `about:blank` with their headers.
- Anything else: 500 `about:blank`, logged with its traceback, which never reaches the client.

`problem_responses(...)` documents those answers in OpenAPI (the `Problem` schema under
`application/problem+json`), and `document_problems` registers that schema, so the spec says
exactly what the server sends.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from featurizer.errors import DecafError
from service.batcher import QueueFullError
from service.errors import InvalidRequestError
from service.problems import PROBLEM_MEDIA_TYPE, Problem, http_problem, problem_from_error
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


# Every /v1 router documents these; routes add their own (404, 409, ...).
V1_PROBLEMS = problem_responses(401, 422, 500, 503)


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


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}; the API is described at /docs"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(http_problem(exc.status_code, detail, headers=dict(exc.headers or {})))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": list(err.get("loc", ())),
            "detail": err.get("msg", "invalid"),
            "code": err.get("type"),
        }
        for err in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['detail']}" for e in errors)
    base = problem_from_error(InvalidRequestError())
    problem = Problem(
        status=base.status,
        title=base.title,
        detail=f"invalid request: {summary}",
        type=base.type,
        extensions={"errors": errors},
    )
    return problem_response(problem)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        http_problem(500, "internal server error; the server log has the details")
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DecafError, _decaf_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)


# --------------------------------------------------------------------------- OpenAPI
def document_problems(app: FastAPI) -> None:
    """Put the Problem schema into the app's OpenAPI components (the responses refer to it)."""

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
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
