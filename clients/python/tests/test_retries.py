"""Retries, error details and lazy pages, against a small scripted HTTP server (the standard
library's, in a thread) that counts the requests it gets."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from deep_recall_client import AsyncDeepRecall, DeepRecall, DeepRecallError

if TYPE_CHECKING:
    from typing_extensions import Self


def failure(call: Callable[[], object]) -> DeepRecallError:
    """The error `call` raises."""
    with pytest.raises(DeepRecallError) as e:
        call()
    return e.value


UNAVAILABLE = {
    "data": None,
    "errors": [{"message": "the model is busy", "extensions": {"code": "UNAVAILABLE"}}],
}
ME = {
    "data": {"me": {"id": "ana", "admin": False, "createdAt": None, "memoryCount": 0}}
}
DROP = "drop"
"""Read the request, then close the connection without an answer."""


class Answer:
    def __init__(
        self, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        self.status, self.body, self.headers = status, body, headers or {}


class Scripted:
    """A server that gives the scripted answers in order (the last one again and again)."""

    def __init__(self, *answers: Answer | str) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                script.requests.append(json.loads(body))
                n = len(script.requests) - 1
                answer = script.answers[min(n, len(script.answers) - 1)]
                if answer == DROP:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                assert isinstance(answer, Answer)
                data = answer.body
                raw = (
                    data.encode()
                    if isinstance(data, str)
                    else json.dumps(data).encode()
                )
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def operations(self) -> list[str]:
        return [r["operationName"] for r in self.requests]


@pytest.fixture
def unavailable_twice() -> Iterator[Scripted]:
    with Scripted(
        Answer(503, UNAVAILABLE), Answer(503, UNAVAILABLE), Answer(200, ME)
    ) as s:
        yield s


def test_a_query_is_retried_until_it_succeeds(unavailable_twice: Scripted) -> None:
    with DeepRecall(unavailable_twice.url, token="t", retry_delay=0.01) as c:
        assert c.me().id == "ana"
    assert unavailable_twice.operations() == ["Me", "Me", "Me"]


def test_async_retries_too(unavailable_twice: Scripted) -> None:
    async def main() -> str:
        async with AsyncDeepRecall(unavailable_twice.url, retry_delay=0.01) as c:
            return (await c.me()).id

    assert asyncio.run(main()) == "ana"
    assert len(unavailable_twice.requests) == 3


def test_retries_give_up_with_the_last_error() -> None:
    s = Scripted(Answer(503, UNAVAILABLE, {"Retry-After": "0"}))
    with s, DeepRecall(s.url, retries=2, retry_delay=0.01) as c:
        err = failure(c.me)
    assert (err.code, err.status, err.retry_after) == ("UNAVAILABLE", 503, 0)
    assert err.message == "the model is busy"
    assert len(s.requests) == 3


def test_a_mutation_is_not_retried_after_a_network_error() -> None:
    with Scripted(DROP, Answer(200, {"data": {"deleteMemory": True}})) as s:
        with DeepRecall(s.url, retry_delay=0.01) as c:
            err = failure(lambda: c.delete_memory("1"))
        assert err.code == "NETWORK" and err.status is None
        assert s.operations() == ["DeleteMemory"]

        async def main() -> None:
            async with AsyncDeepRecall(s.url, retry_delay=0.01) as c:
                await c.delete_memory("1")

        s.answers = [DROP]
        assert failure(lambda: asyncio.run(main())).code == "NETWORK"
        assert s.operations() == ["DeleteMemory", "DeleteMemory"]


TIMEOUT = {
    "data": None,
    "errors": [{"message": "the request timed out", "extensions": {"code": "TIMEOUT"}}],
}


def test_a_timeout_retries_a_query_but_not_a_mutation() -> None:
    # The server cut the request off: a write may have been kept.
    s = Scripted(Answer(504, TIMEOUT), Answer(200, {"data": {"deleteMemory": True}}))
    with s, DeepRecall(s.url, retry_delay=0.01) as c:
        err = failure(lambda: c.delete_memory("1"))
        assert (err.code, err.status) == ("TIMEOUT", 504)
        assert s.operations() == ["DeleteMemory"]
        s.answers = [Answer(504, TIMEOUT), Answer(200, ME)]
        s.requests.clear()
        assert c.me().id == "ana"
        assert s.operations() == ["Me", "Me"]


def test_a_query_is_retried_after_a_network_error() -> None:
    s = Scripted(DROP, DROP, Answer(200, ME))
    with s, DeepRecall(s.url, retry_delay=0.01) as c:
        assert c.me().id == "ana"
    assert len(s.requests) == 3


def test_a_mutation_is_retried_when_the_server_did_not_run_it() -> None:
    limited = {
        "data": None,
        "errors": [
            {
                "message": "slow down",
                "extensions": {"code": "RATE_LIMITED", "retryAfter": 1},
            }
        ],
    }
    s = Scripted(Answer(429, limited), Answer(200, {"data": {"deleteMemory": True}}))
    with s, DeepRecall(s.url, retry_delay=0.01) as c:
        started = time.monotonic()
        assert c.delete_memory("1") is True
        # Retry-After is honoured: one second, not the 10 ms back-off.
        assert time.monotonic() - started >= 0.95
    assert len(s.requests) == 2


def test_error_details() -> None:
    limited = {
        "data": None,
        "errors": [
            {
                "message": "slow down",
                "extensions": {"code": "RATE_LIMITED", "retryAfter": 7},
            }
        ],
    }
    s = Scripted(Answer(429, limited, {"Retry-After": "7"}))
    with s, DeepRecall(s.url, retries=0) as c:
        err = failure(c.me)
    assert (err.code, err.retry_after, err.status) == ("RATE_LIMITED", 7.0, 429)
    assert str(err) == "RATE_LIMITED: slow down"

    # A proxy's page is not GraphQL; a validation error has no code.
    s = Scripted(
        Answer(502, "<html>Bad Gateway</html>"),
        Answer(200, {"data": None, "errors": [{"message": 'Unknown field "x"'}]}),
    )
    with s, DeepRecall(s.url, retries=0) as c:
        err = failure(c.me)
        assert (err.code, err.status) == ("NETWORK", 502)
        err = failure(c.me)
        assert (err.code, err.status) == ("BAD_INPUT", 200)

    # A refusal before the request was read: a body over the server's limit is the
    # caller's (not retried), a proxy's rate limit is waited out, a mutation included.
    s = Scripted(
        Answer(413, "length limit exceeded"),
        Answer(429, "Too Many Requests", {"Retry-After": "1"}),
        Answer(200, {"data": {"deleteMemory": True}}),
    )
    with s, DeepRecall(s.url, retry_delay=0.01) as c:
        err = failure(c.me)
        assert (err.code, err.status) == ("BAD_INPUT", 413)
        assert len(s.requests) == 1
        started = time.monotonic()
        assert c.delete_memory("1") is True
        assert time.monotonic() - started >= 0.95
    assert len(s.requests) == 3


def test_an_unreachable_server_is_a_network_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with DeepRecall(f"http://127.0.0.1:{port}", retries=1, retry_delay=0.01) as c:
        assert failure(c.me).code == "NETWORK"
        assert failure(lambda: next(c.memory_events())).code == "NETWORK"


def _sessions_page(ids: list[str], after: str | None) -> dict[str, Any]:
    nodes = [
        {"id": i, "title": None, "persona": None, "createdAt": "t", "updatedAt": "t"}
        for i in ids
    ]
    info = {"hasNextPage": after is not None, "endCursor": after}
    return {"data": {"sessions": {"pageInfo": info, "nodes": nodes}}}


def test_pages_are_fetched_as_they_are_needed() -> None:
    with Scripted(
        Answer(200, _sessions_page(["a", "b"], "c1")),
        Answer(200, _sessions_page(["c", "d"], "c2")),
        Answer(200, _sessions_page(["e"], None)),
    ) as s:
        with DeepRecall(s.url + "/graphql/", token="t") as c:
            sessions = c.sessions(page_size=2)
            assert s.requests == []
            assert next(sessions).id == "a"
            assert len(s.requests) == 1
            assert [x.id for x in sessions] == ["b", "c", "d", "e"]
        variables = [r["variables"] for r in s.requests]
        assert variables == [
            {"first": 2, "after": None},
            {"first": 2, "after": "c1"},
            {"first": 2, "after": "c2"},
        ]
