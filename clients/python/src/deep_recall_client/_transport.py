"""What both clients share about the wire: the endpoints, the credentials, reading a GraphQL
answer, and when to retry."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from ._errors import DeepRecallError, from_graphql_errors, network, retry_after_header

PROTOCOL = "graphql-transport-ws"
"""The WebSocket subprotocol of subscriptions."""
KEEPALIVE = 20.0
"""Seconds between the client's WebSocket messages at most: the server closes a connection
that has sent nothing for a minute, even while it streams an answer, so a `ping` goes out."""

_RETRYABLE = frozenset({"UNAVAILABLE", "RATE_LIMITED"})
# Failures after which a write may have happened: a query is retried, a mutation is not.
_UNKNOWN = frozenset({"TIMEOUT", "NETWORK"})


def endpoints(url: str) -> tuple[str, str]:
    """The GraphQL endpoint over HTTP and over WebSocket, from the server's URL or the
    endpoint itself."""
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, not {url!r}")
    http = base if base.endswith("/graphql") else f"{base}/graphql"
    return http, "ws" + http[len("http") :]


def check_credentials(token: str | None, get_token: object, user: str | None) -> None:
    if token is not None and get_token is not None:
        raise ValueError("pass either token or get_token, not both")
    if user is not None and (token is not None or get_token is not None):
        raise ValueError(
            "user names the caller only without a token (anonymous development mode)"
        )


def headers(token: str | None, user: str | None) -> dict[str, str]:
    """HTTP headers for the caller."""
    if token:
        return {"Authorization": f"Bearer {token}"}
    if user:
        return {"X-User-Id": user}
    return {}


def init_payload(token: str | None, user: str | None) -> dict[str, str]:
    """The `connection_init` payload for the caller (browsers cannot set headers on a
    WebSocket, so the server reads credentials from here)."""
    if token:
        return {"Authorization": f"Bearer {token}"}
    if user:
        return {"x-user-id": user}
    return {}


def decode(status: int, retry_after: str | None, content: bytes) -> dict[str, Any]:
    """The `data` of a GraphQL answer over HTTP, or the error it carries."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not ("data" in body or "errors" in body):
        # Refusals before the request was read are the caller's to act on: a body over the
        # server's limit (413, not worth retrying) and a rate limit (429, a proxy's too: the
        # request was not run, so a mutation may be sent again after the wait). Any other
        # page without GraphQL (a proxy's 502) is a network error: what ran is unknown.
        if status in (413, 429):
            code = "BAD_INPUT" if status == 413 else "RATE_LIMITED"
            raise DeepRecallError(
                code,
                f"the server refused the request with HTTP {status}",
                retry_after=retry_after_header(retry_after),
                status=status,
            )
        raise network(f"the server answered HTTP {status} without GraphQL", status)
    errors = body.get("errors")
    if errors:
        raise from_graphql_errors(errors, status, retry_after_header(retry_after))
    data = body.get("data")
    if not isinstance(data, dict):
        raise network(f"the server answered HTTP {status} without data", status)
    return data


def data_of(payload: Any) -> dict[str, Any]:
    """The `data` of a subscription's `next` message, or the error it carries."""
    if not isinstance(payload, dict):
        raise network("a subscription event without a payload")
    if payload.get("errors"):
        raise from_graphql_errors(payload["errors"])
    data = payload.get("data")
    if not isinstance(data, dict):
        raise network("a subscription event without data")
    return data


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures are retried, and after how long.

    Queries are retried on `UNAVAILABLE`, `RATE_LIMITED`, `TIMEOUT` and network errors;
    mutations only on `UNAVAILABLE` and `RATE_LIMITED` (the server did not complete them, or,
    for a chat turn, a retry reuses the message it stored), never after a timeout or a network
    error, where the write may have happened. The wait doubles from `delay` seconds with each
    retry, with jitter, at least what the server asked for (`Retry-After`), at most
    `max_delay`.
    """

    retries: int = 3
    delay: float = 0.25
    max_delay: float = 30.0

    def wait(
        self, attempt: int, error: DeepRecallError, mutation: bool
    ) -> float | None:
        """Seconds to wait before retry number `attempt + 1`, or None to give up."""
        if attempt >= self.retries:
            return None
        if error.code not in _RETRYABLE and (mutation or error.code not in _UNKNOWN):
            return None
        backoff = self.delay * 2.0**attempt * (0.5 + random.random() / 2)
        return min(max(backoff, error.retry_after or 0.0), self.max_delay)
