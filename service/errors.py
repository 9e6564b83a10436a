"""Typed errors of the HTTP layer that no single service module owns.

Each carries its HTTP status (`http_status`), so routes only raise and the one handler in
`service.api.errors` renders them (see `service.problems`). Errors that belong to one module live
beside it: the batcher's (QueueFullError, ...), the jobs' (JobNotFoundError, ...), the uploads'
(FileTooLargeError, ...), paths (PathNotAllowedError, ...), datasets and probes.
"""

from __future__ import annotations

from typing import ClassVar

from featurizer.errors import DecafError


class ApiKeyError(DecafError):
    """The request lacks the API key this server requires, or sent a wrong one."""

    http_status: ClassVar[int] = 401
    title: ClassVar[str] = "Missing or invalid API key"

    def http_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="decaf"'}


class NotReadyError(DecafError):
    """The server is starting up or shutting down: the model, database or jobs are not there."""

    http_status: ClassVar[int] = 503
    title: ClassVar[str] = "Service not ready"


class InvalidRequestError(DecafError, ValueError):
    """The request does not match the API's schema (rendered from FastAPI's validation errors,
    one entry per invalid field)."""

    http_status: ClassVar[int] = 422
    title: ClassVar[str] = "Invalid request"


class InvalidOptionError(DecafError, ValueError):
    """An option value the server does not understand (query, form field or body part)."""

    http_status: ClassVar[int] = 422


class MalformedBodyError(DecafError, ValueError):
    """The request body cannot be parsed at all (e.g. not JSON)."""

    http_status: ClassVar[int] = 400


class UnsupportedMediaTypeError(DecafError):
    """The request body's content type is not one this route accepts."""

    http_status: ClassVar[int] = 415


class NotAcceptableError(DecafError):
    """No representation the client accepts can hold the answer."""

    http_status: ClassVar[int] = 406


class NotFoundError(DecafError, LookupError):
    """A named resource does not exist."""

    http_status: ClassVar[int] = 404


class ConflictError(DecafError):
    """The request conflicts with the current state of a resource."""

    http_status: ClassVar[int] = 409


class FeatureUnavailableError(DecafError):
    """The server cannot do this here (e.g. an optional engine that is not installed)."""

    http_status: ClassVar[int] = 501
