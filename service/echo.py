"""Echoing user input in messages: short, so an error about a 10 MB value is not 10 MB long.

Error messages quote what the client sent (a root, a name, a field key) so the client sees which
input was wrong; `echo` bounds that quote. A leaf module: any service module may use it.
"""

from __future__ import annotations

MAX_ECHO_CHARS = 200


def shorten(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` itself when short, else its first `limit` characters and "…"."""
    return text if len(text) <= limit else f"{text[:limit]}…"


def echo(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """`repr(value)` for a message, cut after `limit` characters with "…" and the full length."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(value)
    return f"{text[:limit]!r}… ({len(text)} characters)"
