"""The graphql-transport-ws client against a scripted WebSocket server (websockets' own, in a
thread): keep-alive pings, answering the server's pings, refused connections and error
messages."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve
from websockets.typing import Subprotocol

from deep_recall_client import AsyncDeepRecall, DeepRecall, DeepRecallError, MemoryEvent

Handler = Callable[[ServerConnection], None]

EVENT = {
    "data": {
        "memoryEvents": {
            "action": "ADDED",
            "memoryId": "7",
            "kind": "FACT",
            "memory": None,
        }
    }
}


def receive(ws: ServerConnection) -> dict[str, Any]:
    message = json.loads(ws.recv(timeout=5))
    assert isinstance(message, dict)
    return message


def send(ws: ServerConnection, message: dict[str, Any]) -> None:
    ws.send(json.dumps(message))


def accept(ws: ServerConnection) -> str:
    """Acknowledges the connection; the id of the first subscription."""
    init = receive(ws)
    assert init == {"type": "connection_init", "payload": {"Authorization": "Bearer t"}}
    send(ws, {"type": "connection_ack"})
    subscribe = receive(ws)
    assert subscribe["type"] == "subscribe"
    assert subscribe["payload"]["operationName"] == "MemoryEvents"
    return str(subscribe["id"])


@pytest.fixture
def ws_server() -> Iterator[Callable[[Handler], str]]:
    """Starts a server that runs the given handler for each connection; its URL."""
    servers = []

    def start(handler: Handler) -> str:
        server = serve(
            handler, "127.0.0.1", 0, subprotocols=[Subprotocol("graphql-transport-ws")]
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.socket.getsockname()[1]}"

    yield start
    for server in servers:
        server.shutdown()


def quiet_until_pinged(ws: ServerConnection) -> None:
    """Sends nothing until the client pings, then one event."""
    sid = accept(ws)
    assert receive(ws) == {"type": "ping"}
    send(ws, {"type": "next", "id": sid, "payload": EVENT})
    send(ws, {"type": "complete", "id": sid})
    ws.recv(timeout=5)  # Until the client closes the socket.


def test_the_client_pings_to_keep_the_connection(
    ws_server: Callable[[Handler], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("deep_recall_client._sync_ws.KEEPALIVE", 0.1)
    monkeypatch.setattr("deep_recall_client._async_ws.KEEPALIVE", 0.1)
    url = ws_server(quiet_until_pinged)
    with DeepRecall(url, token="t") as c:
        events = list(c.memory_events())
    assert events == [
        MemoryEvent(action="added", memory_id="7", kind="fact", memory=None)
    ]

    async def main() -> list[MemoryEvent]:
        async with AsyncDeepRecall(url, token="t") as c:
            return [e async for e in c.memory_events()]

    assert asyncio.run(main()) == events


def pings_then_errors(ws: ServerConnection) -> None:
    sid = accept(ws)
    send(ws, {"type": "ping"})
    assert receive(ws) == {"type": "pong"}
    send(ws, {"type": "next", "id": sid, "payload": EVENT})
    errors = [{"message": "too many streams", "extensions": {"code": "RATE_LIMITED"}}]
    send(ws, {"type": "error", "id": sid, "payload": errors})
    ws.recv(timeout=5)


def test_pongs_and_errors(ws_server: Callable[[Handler], str]) -> None:
    url = ws_server(pings_then_errors)
    seen: list[MemoryEvent] = []
    with DeepRecall(url, token="t") as c, pytest.raises(DeepRecallError) as e:
        seen.extend(c.memory_events())
    assert len(seen) == 1
    assert (e.value.code, e.value.message) == ("RATE_LIMITED", "too many streams")

    async def main() -> None:
        async with AsyncDeepRecall(url, token="t") as c:
            async for event in c.memory_events():
                seen.append(event)

    with pytest.raises(DeepRecallError) as e:
        asyncio.run(main())
    assert len(seen) == 2 and e.value.code == "RATE_LIMITED"


def refuses(ws: ServerConnection) -> None:
    receive(ws)
    ws.close(4403, "Forbidden")


def test_a_refused_connection_is_unauthenticated(
    ws_server: Callable[[Handler], str],
) -> None:
    url = ws_server(refuses)
    with DeepRecall(url, token="t") as c, pytest.raises(DeepRecallError) as e:
        next(c.memory_events())
    assert (e.value.code, e.value.message) == ("UNAUTHENTICATED", "Forbidden")

    async def main() -> None:
        async with AsyncDeepRecall(url, token="t") as c:
            await c.memory_events().__anext__()

    with pytest.raises(DeepRecallError) as e:
        asyncio.run(main())
    assert e.value.code == "UNAUTHENTICATED"


def rate_limits(ws: ServerConnection) -> None:
    receive(ws)
    ws.close(1002, "RATE_LIMITED: too many requests from this address; retry in 2.5s")


def test_a_rate_limited_connection_carries_its_wait(
    ws_server: Callable[[Handler], str],
) -> None:
    url = ws_server(rate_limits)
    with (
        DeepRecall(url, token="t", retries=0) as c,
        pytest.raises(DeepRecallError) as e,
    ):
        next(c.memory_events())
    assert (e.value.code, e.value.retry_after) == ("RATE_LIMITED", 2.5)


def test_new_credentials_open_a_socket_of_their_own(
    ws_server: Callable[[Handler], str],
) -> None:
    inits: list[Any] = []

    def answers(ws: ServerConnection) -> None:
        inits.append(receive(ws)["payload"])
        send(ws, {"type": "connection_ack"})
        while True:
            try:
                message = receive(ws)
            except (ConnectionClosed, TimeoutError):
                return
            if message["type"] == "subscribe":
                send(ws, {"type": "next", "id": message["id"], "payload": EVENT})

    url = ws_server(answers)
    token = ["one"]
    with DeepRecall(url, get_token=lambda: token[0]) as c:
        first = c.memory_events()
        next(first)
        # The token is refreshed: the socket opened with the old one ends when it expires,
        # so a new subscription does not join it.
        token[0] = "two"
        second = c.memory_events()
        next(second)
        again = c.memory_events()
        next(again)
        for s in (first, second, again):
            s.close()
    assert inits == [{"Authorization": "Bearer one"}, {"Authorization": "Bearer two"}]


def test_a_server_that_stops_answering_ends_the_subscription(
    ws_server: Callable[[Handler], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server (or a network) that goes silent mid-stream, its TCP connection still open,
    ends the subscription with `NETWORK` once WebSocket pings go unanswered."""
    monkeypatch.setattr("deep_recall_client._sync_ws.KEEPALIVE", 0.3)
    monkeypatch.setattr("deep_recall_client._async_ws.KEEPALIVE", 0.3)

    def one_event(ws: ServerConnection) -> None:
        sid = accept(ws)
        send(ws, {"type": "next", "id": sid, "payload": EVENT})
        try:
            ws.recv(timeout=10)
        except (ConnectionClosed, TimeoutError):
            pass

    upstream = ws_server(one_event).rsplit(":", 1)[1]
    # Between client and server, a proxy that forwards until its first event has passed,
    # then drops everything (nothing answers the client's pings; no socket closes).
    listener = socket.create_server(("127.0.0.1", 0))
    silent = threading.Event()
    held: list[socket.socket] = []

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not silent.is_set():
                dst.sendall(data)

    def proxy() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", int(upstream)))
            held.extend((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=proxy, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with DeepRecall(url, token="t") as c:
            events = c.memory_events()
            next(events)
            silent.set()
            started = time.monotonic()
            with pytest.raises(DeepRecallError) as e:
                next(events)
            # Pings every 0.3 s, each answered within 0.3 s: found in about a second (the
            # library's own 20 s defaults, or none before websockets 15, would take far more).
            assert e.value.code == "NETWORK" and time.monotonic() - started < 10

        async def main() -> None:
            async with AsyncDeepRecall(url, token="t") as c:
                events = c.memory_events()
                await events.__anext__()
                silent.set()
                await asyncio.wait_for(events.__anext__(), 10)

        silent.clear()
        with pytest.raises(DeepRecallError) as e:
            asyncio.run(main())
        assert e.value.code == "NETWORK"
    finally:
        listener.close()
        for s in held:
            s.close()
