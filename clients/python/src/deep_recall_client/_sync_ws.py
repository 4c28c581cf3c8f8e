"""A graphql-transport-ws client over `websockets.sync`: one WebSocket shared by the
subscriptions that are open at a time, opened with the first and closed after the last (so
every connection authenticates with a fresh token), read by one thread that hands each
message to its subscription."""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import threading
import time
from collections.abc import Generator
from typing import Any, Callable

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from ._errors import DeepRecallError, from_close, from_graphql_errors, network
from ._transport import KEEPALIVE, PROTOCOL, data_of


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class _Connection:
    """One acknowledged WebSocket, its reader thread and the subscriptions on it."""

    def __init__(self, ws: ClientConnection, stack: contextlib.ExitStack) -> None:
        self.ws = ws
        self.stack = stack
        self.lock = threading.Lock()
        # Each subscription's inbox receives its messages, then None when the socket closes.
        self.inboxes: dict[str, queue.SimpleQueue[dict[str, Any] | None]] = {}
        self.closed = False
        self.failure: DeepRecallError = network("the WebSocket closed")
        self.last_sent = time.monotonic()
        self.reader = threading.Thread(
            target=self._read, name="deep-recall-subscriptions", daemon=True
        )
        self.reader.start()

    @classmethod
    def open(cls, url: str, payload: dict[str, str], timeout: float) -> _Connection:
        # Entered as a context manager, as websockets 17 asks (plain `connect()` is its
        # deprecated form), and left in `close()`.
        stack = contextlib.ExitStack()
        try:
            ws = stack.enter_context(
                connect(
                    url,
                    subprotocols=[Subprotocol(PROTOCOL)],
                    open_timeout=timeout,
                    # WebSocket pings, answered by the peer's WebSocket layer: a server or
                    # network that stopped answering ends the subscriptions with `NETWORK`
                    # instead of leaving them waiting for ever.
                    ping_interval=KEEPALIVE,
                    ping_timeout=KEEPALIVE,
                    close_timeout=KEEPALIVE,
                )
            )
        except InvalidStatus as e:
            status = e.response.status_code
            raise network(
                f"the WebSocket upgrade was refused ({status})", status
            ) from e
        except (OSError, TimeoutError, WebSocketException) as e:
            raise network(f"could not open the WebSocket: {e}") from e
        try:
            ws.send(_dumps({"type": "connection_init", "payload": payload}))
            deadline = time.monotonic() + timeout
            while True:
                message = json.loads(
                    ws.recv(timeout=max(0.0, deadline - time.monotonic()))
                )
                kind = message.get("type") if isinstance(message, dict) else None
                if kind == "connection_ack":
                    return cls(ws, stack)
                if kind == "ping":
                    ws.send(_dumps({"type": "pong"}))
        except ConnectionClosed as e:
            stack.close()
            code, reason = (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, "")
            raise from_close(code, reason, acknowledged=False) from e
        except TimeoutError as e:
            stack.close()
            raise network("the server did not acknowledge the connection") from e
        except (OSError, ValueError) as e:
            stack.close()
            raise network(f"the WebSocket failed: {e}") from e

    def _read(self) -> None:
        try:
            while True:
                wait = self.last_sent + KEEPALIVE - time.monotonic()
                if wait <= 0:
                    self._send({"type": "ping"})
                    continue
                try:
                    raw = self.ws.recv(timeout=wait)
                except TimeoutError:
                    continue
                message = json.loads(raw)
                if not isinstance(message, dict):
                    continue
                kind = message.get("type")
                if kind == "ping":
                    self._send({"type": "pong"})
                elif kind in ("next", "error", "complete"):
                    with self.lock:
                        inbox = self.inboxes.get(str(message.get("id")))
                    if inbox is not None:
                        inbox.put(message)
        except ConnectionClosed as e:
            if e.rcvd is not None and e.rcvd.code != 1000:
                self.failure = from_close(e.rcvd.code, e.rcvd.reason, acknowledged=True)
        except (OSError, ValueError) as e:
            self.failure = network(f"the WebSocket failed: {e}")
            self.ws.close()
        finally:
            with self.lock:
                self.closed = True
                inboxes = list(self.inboxes.values())
            for inbox in inboxes:
                inbox.put(None)

    def add(self, sid: str) -> queue.SimpleQueue[dict[str, Any] | None] | None:
        """A new subscription's inbox, or None when the socket has closed."""
        with self.lock:
            if self.closed:
                return None
            inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
            self.inboxes[sid] = inbox
            return inbox

    def remove(self, sid: str) -> int:
        """Forgets a subscription; how many are left."""
        with self.lock:
            self.inboxes.pop(sid, None)
            return len(self.inboxes)

    def _send(self, message: dict[str, Any]) -> None:
        self.last_sent = time.monotonic()
        self.ws.send(_dumps(message))

    def send(self, message: dict[str, Any]) -> None:
        try:
            self._send(message)
        except (ConnectionClosed, OSError) as e:
            raise self.failure from e

    def close(self) -> None:
        self.stack.close()


class SyncSubscriptions:
    """Subscriptions of one client."""

    def __init__(
        self, url: str, init_payload: Callable[[], dict[str, str]], timeout: float
    ) -> None:
        self._url = url
        self._init_payload = init_payload
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        # What `_conn` was opened with (its credentials).
        self._conn_payload: dict[str, str] | None = None
        self._ids = itertools.count(1)

    def _open(
        self,
    ) -> tuple[_Connection, str, queue.SimpleQueue[dict[str, Any] | None]]:
        with self._lock:
            sid = str(next(self._ids))
            payload = self._init_payload()
            if payload != self._conn_payload:
                # New credentials (a refreshed token): the socket opened with the old ones
                # ends when they expire, with every subscription on it, so new ones go on a
                # socket of their own; the old one closes with its last subscription.
                self._conn = None
            for _ in range(2):  # A socket that closed meanwhile is replaced once.
                if self._conn is None or self._conn.closed:
                    self._conn = _Connection.open(self._url, payload, self._timeout)
                    self._conn_payload = payload
                inbox = self._conn.add(sid)
                if inbox is not None:
                    return self._conn, sid, inbox
                self._conn = None
            raise network("the WebSocket closed as it opened")

    def _release(self, conn: _Connection, sid: str) -> None:
        with self._lock:
            if conn.remove(sid) > 0:
                return
            if self._conn is conn:
                self._conn = None
        conn.close()

    def stream(self, payload: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
        """The `data` of each event of one subscription, until the server completes it.
        Closing the generator early sends `complete`, so that the server stops."""
        conn, sid, inbox = self._open()
        done = False
        try:
            conn.send({"id": sid, "type": "subscribe", "payload": payload})
            while True:
                message = inbox.get()
                if message is None:
                    done = True
                    raise conn.failure
                kind = message.get("type")
                if kind == "next":
                    yield data_of(message.get("payload"))
                elif kind == "error":
                    done = True
                    raise from_graphql_errors(message.get("payload"))
                elif kind == "complete":
                    done = True
                    return
        finally:
            if not done:
                try:
                    conn.send({"id": sid, "type": "complete"})
                except DeepRecallError:
                    pass
            self._release(conn, sid)

    def close(self) -> None:
        """Closes the WebSocket; open subscriptions end with a `NETWORK` error."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.failure = network("the client was closed")
            conn.close()
