"""`DeepRecallError` and how GraphQL answers, HTTP statuses and WebSocket closes map to it."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Literal

ErrorCode = Literal[
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "BAD_INPUT",
    "RATE_LIMITED",
    "UNAVAILABLE",
    "TIMEOUT",
    "INTERNAL",
    "NETWORK",
]
"""The stable codes: the server's `extensions.code`, or `NETWORK`."""

CODES: frozenset[str] = frozenset(
    (
        "UNAUTHENTICATED",
        "FORBIDDEN",
        "NOT_FOUND",
        "BAD_INPUT",
        "RATE_LIMITED",
        "UNAVAILABLE",
        "TIMEOUT",
        "INTERNAL",
        "NETWORK",
    )
)


class DeepRecallError(Exception):
    """Every failure of the client.

    `code` is the server's `extensions.code` (`UNAUTHENTICATED`, `FORBIDDEN`, `NOT_FOUND`,
    `BAD_INPUT`, `RATE_LIMITED`, `UNAVAILABLE`, `TIMEOUT`, `INTERNAL`), or `NETWORK` when the
    server could not be reached or answered something that is not GraphQL. `TIMEOUT`: the
    request was cut off, and a change it was making may have been kept. `retry_after` is the
    wait in seconds the server asked for, `status` the HTTP status when there was an HTTP
    answer.
    """

    code: str
    message: str
    retry_after: float | None
    status: int | None

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"DeepRecallError(code={self.code!r}, message={self.message!r}, "
            f"retry_after={self.retry_after!r}, status={self.status!r})"
        )

    def __reduce__(self) -> Any:
        # Keyword-only arguments do not survive the default pickling of exceptions.
        return (_rebuild, (self.code, self.message, self.retry_after, self.status))


def _rebuild(
    code: str, message: str, retry_after: float | None, status: int | None
) -> DeepRecallError:
    return DeepRecallError(code, message, retry_after=retry_after, status=status)


def network(message: str, status: int | None = None) -> DeepRecallError:
    return DeepRecallError("NETWORK", message, status=status)


_STATUS_CODES = {
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    429: "RATE_LIMITED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "TIMEOUT",
}


def _from_status(status: int | None) -> str:
    """The code for an error without one, by the HTTP status it came with."""
    if status is None or status in (200, 400):
        # The server rejected the document itself (a validation error has no code).
        return "BAD_INPUT"
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    return "INTERNAL" if status >= 500 else "BAD_INPUT"


def retry_after_header(value: str | None) -> float | None:
    """A `Retry-After` header: seconds, or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def from_graphql_errors(
    errors: Any, status: int | None = None, retry_after: float | None = None
) -> DeepRecallError:
    """The error for a GraphQL `errors` array: the first error's `extensions.code`."""
    listed = (
        [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    )
    first = listed[0] if listed else {}
    extensions = first.get("extensions")
    extensions = extensions if isinstance(extensions, dict) else {}
    raw = extensions.get("code")
    code = raw if isinstance(raw, str) and raw else _from_status(status)
    wait = extensions.get("retryAfter")
    if isinstance(wait, (int, float)) and not isinstance(wait, bool):
        retry_after = float(wait)
    message = "; ".join(str(e.get("message", "")) for e in listed) or code
    return DeepRecallError(code, message, retry_after=retry_after, status=status)


def from_close(code: int | None, reason: str, acknowledged: bool) -> DeepRecallError:
    """The error for a WebSocket that closed under a subscription.

    The server refuses a `connection_init` whose credentials it rejects by closing the socket
    (1002, or 4401/4403 in graphql-transport-ws terms) before it acknowledges, with a reason
    that starts with the code (`UNAUTHENTICATED: invalid credentials: ...`).
    """
    text = reason or f"the WebSocket closed ({code})"
    # A rate limit's wait is in its text only ("...; retry in 1.5s"): a close frame has no
    # other place for it.
    waited = re.search(r"retry in (\d+(?:\.\d+)?)s", text)
    wait = float(waited.group(1)) if waited else None
    named, sep, rest = text.partition(": ")
    if sep and named in CODES:
        return DeepRecallError(named, rest, retry_after=wait)
    if code in (4401, 4403) or (code == 1002 and not acknowledged):
        return DeepRecallError("UNAUTHENTICATED", text)
    if code == 4429:
        return DeepRecallError("RATE_LIMITED", text, retry_after=wait)
    if code == 4400:
        return DeepRecallError("BAD_INPUT", text)
    return network(text)
