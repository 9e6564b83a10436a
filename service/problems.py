"""RFC 9457 problem details: the one body shape of every error the service answers with.

```
HTTP/1.1 422 Unprocessable Content
Content-Type: application/problem+json

{"type": "/problems/image-decode", "title": "Image decode error", "status": 422,
 "detail": "image 'a.jpg' is truncated", ...extension members such as "errors"}
```

- `type` is stable per error class: `/problems/<kebab-case class name without "Error">`, a URI
  reference relative to the server. Plain HTTP conditions that have no error class of ours (an
  unknown route, a wrong method, an unexpected 500) use `about:blank`, whose title is the HTTP
  status phrase, as RFC 9457 section 4.2.1 says.
- `title` is stable per type; `detail` says what went wrong with this request and what to do.
- `status` repeats the HTTP status code.

Built from an error in exactly one way (`problem_from_error`), so the exception handlers and the
plain-ASGI middlewares (413 body cap, 504 timeout) render identical bodies. An error class may
refine its problem with two optional hooks: `http_headers()` (e.g. Retry-After) and
`to_problem()` (a complete override, used when one request carries several failures).
This module knows no web framework.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from featurizer.errors import DecafError
from service.echo import shorten

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "/problems/"
BLANK_TYPE = "about:blank"
# A 503 without an estimate of its own: a model still loading or a server shutting down.
DEFAULT_RETRY_AFTER_S = 5
# A safety net: messages quote input through `service.echo`; one that does not still cannot make
# an error answer as large as the request that caused it.
MAX_DETAIL_CHARS = 2000


@dataclass(frozen=True)
class Problem:
    """One problem-details document plus the response headers that go with it."""

    status: int
    title: str
    detail: str
    type: str = BLANK_TYPE
    extensions: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON document; the standard members win over extension members of that name."""
        return {
            **self.extensions,
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }

    def encode(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=True, default=str).encode("utf-8")


def _slug(error_class: type[BaseException]) -> str:
    name = error_class.__name__.removesuffix("Error") or error_class.__name__
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


def problem_type(error_class: type[BaseException]) -> str:
    """`/problems/image-decode` for ImageDecodeError: stable as long as the class name is."""
    return PROBLEM_TYPE_PREFIX + _slug(error_class)


def problem_title(error_class: type[BaseException]) -> str:
    """A short summary of the type: the class's `title` if it has one, else its name in words."""
    title = getattr(error_class, "title", None)
    if isinstance(title, str) and title:
        return title
    words = _slug(error_class).replace("-", " ")
    return f"{words[:1].upper()}{words[1:]} error"


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Client Closed Request" if status == 499 else f"HTTP {status}"


def problem_from_error(exc: DecafError) -> Problem:
    """The problem for a typed error: its class gives type, title and status; its message the
    detail. An error's `to_problem()` replaces all of it; its `http_headers()` adds headers."""
    override = getattr(exc, "to_problem", None)
    if callable(override):
        return override()
    status = int(type(exc).http_status)
    headers = dict(_error_headers(exc))
    if status == 503:
        headers.setdefault("Retry-After", str(DEFAULT_RETRY_AFTER_S))
    return Problem(
        status=status,
        title=problem_title(type(exc)),
        detail=shorten(str(exc), MAX_DETAIL_CHARS) or problem_title(type(exc)),
        type=problem_type(type(exc)),
        headers=headers,
    )


def _error_headers(exc: BaseException) -> dict[str, str]:
    hook = getattr(exc, "http_headers", None)
    return dict(hook()) if callable(hook) else {}


def http_problem(
    status: int, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any
) -> Problem:
    """A plain HTTP condition (`about:blank`): unknown route, wrong method, internal error."""
    return Problem(
        status=status,
        title=status_phrase(status),
        detail=shorten(detail, MAX_DETAIL_CHARS),
        headers=dict(headers or {}),
        extensions=extensions,
    )
