"""A graphql-transport-ws client over `websockets.asyncio`: one WebSocket shared by the
subscriptions that are open at a time, opened with the first and closed after the last (so
every connection authenticates with a fresh token), read by one task that hands each message
to its subscription."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from ._errors import DeepRecallError, from_close, from_graphql_errors, network
from ._transport import KEEPALIVE, PROTOCOL, data_of


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class _Connection:
    """One acknowledged WebSocket, its reader task and the subscriptions on it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        # Each subscription's inbox receives its messages, then None when the socket closes.
        self.inboxes: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self.closed = False
        self.failure: DeepRecallError = network("the WebSocket closed")
        loop = asyncio.get_running_loop()
        self.last_sent = loop.time()
        self.reader = loop.create_task(self._read())

    @classmethod
    async def open(
        cls, url: str, payload: dict[str, str], timeout: float
    ) -> _Connection:
        try:
            ws = await connect(
                url,
                subprotocols=[Subprotocol(PROTOCOL)],
                open_timeout=timeout,
                # As in the sync client: a peer that stopped answering ends the socket.
                ping_interval=KEEPALIVE,
                ping_timeout=KEEPALIVE,
                close_timeout=KEEPALIVE,
            )
        except InvalidStatus as e:
            status = e.response.status_code
            raise network(
                f"the WebSocket upgrade was refused ({status})", status
            ) from e
        except (OSError, asyncio.TimeoutError, WebSocketException) as e:
            raise network(f"could not open the WebSocket: {e}") from e
        try:
            await ws.send(_dumps({"type": "connection_init", "payload": payload}))
            await asyncio.wait_for(cls._acknowledged(ws), timeout)
            return cls(ws)
        except ConnectionClosed as e:
            code, reason = (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, "")
            raise from_close(code, reason, acknowledged=False) from e
        except asyncio.TimeoutError as e:
            await ws.close()
            raise network("the server did not acknowledge the connection") from e
        except (OSError, ValueError) as e:
            await ws.close()
            raise network(f"the WebSocket failed: {e}") from e

    @staticmethod
    async def _acknowledged(ws: ClientConnection) -> None:
        while True:
            message = json.loads(await ws.recv())
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "connection_ack":
                return
            if kind == "ping":
                await ws.send(_dumps({"type": "pong"}))

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        # One `recv` at a time, left running across keep-alive pings (never cancelled
        # midway, so that no message can be lost).
        receiving: asyncio.Task[str | bytes] | None = None
        try:
            while True:
                wait = self.last_sent + KEEPALIVE - loop.time()
                if wait <= 0:
                    await self._send({"type": "ping"})
                    continue
                if receiving is None:
                    receiving = loop.create_task(self.ws.recv())
                done, _ = await asyncio.wait({receiving}, timeout=wait)
                if not done:
                    continue
                raw, receiving = receiving.result(), None
                message = json.loads(raw)
                if not isinstance(message, dict):
                    continue
                kind = message.get("type")
                if kind == "ping":
                    await self._send({"type": "pong"})
                elif kind in ("next", "error", "complete"):
                    inbox = self.inboxes.get(str(message.get("id")))
                    if inbox is not None:
                        inbox.put_nowait(message)
        except ConnectionClosed as e:
            if e.rcvd is not None and e.rcvd.code != 1000:
                self.failure = from_close(e.rcvd.code, e.rcvd.reason, acknowledged=True)
        except (OSError, ValueError) as e:
            self.failure = network(f"the WebSocket failed: {e}")
            await self.ws.close()
        finally:
            if receiving is not None:
                receiving.cancel()
            self.closed = True
            for inbox in self.inboxes.values():
                inbox.put_nowait(None)

    def add(self, sid: str) -> asyncio.Queue[dict[str, Any] | None] | None:
        """A new subscription's inbox, or None when the socket has closed."""
        if self.closed:
            return None
        inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.inboxes[sid] = inbox
        return inbox

    def remove(self, sid: str) -> int:
        """Forgets a subscription; how many are left."""
        self.inboxes.pop(sid, None)
        return len(self.inboxes)

    async def _send(self, message: dict[str, Any]) -> None:
        self.last_sent = asyncio.get_running_loop().time()
        await self.ws.send(_dumps(message))

    async def send(self, message: dict[str, Any]) -> None:
        try:
            await self._send(message)
        except (ConnectionClosed, OSError) as e:
            raise self.failure from e

    async def close(self) -> None:
        await self.ws.close()
        try:
            await self.reader
        except asyncio.CancelledError:
            pass


class AsyncSubscriptions:
    """Subscriptions of one client."""

    def __init__(
        self,
        url: str,
        init_payload: Callable[[], Awaitable[dict[str, str]]],
        timeout: float,
    ) -> None:
        self._url = url
        self._init_payload = init_payload
        self._timeout = timeout
        # Made in the event loop that first needs it (Python 3.9 binds a lock to a loop).
        self._lock: asyncio.Lock | None = None
        self._conn: _Connection | None = None
        # What `_conn` was opened with (its credentials).
        self._conn_payload: dict[str, str] | None = None
        self._ids = itertools.count(1)

    async def _open(
        self,
    ) -> tuple[_Connection, str, asyncio.Queue[dict[str, Any] | None]]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            sid = str(next(self._ids))
            payload = await self._init_payload()
            if payload != self._conn_payload:
                # New credentials (a refreshed token): as in the sync client, new
                # subscriptions go on a socket of their own.
                self._conn = None
            for _ in range(2):  # A socket that closed meanwhile is replaced once.
                if self._conn is None or self._conn.closed:
                    self._conn = await _Connection.open(
                        self._url, payload, self._timeout
                    )
                    self._conn_payload = payload
                inbox = self._conn.add(sid)
                if inbox is not None:
                    return self._conn, sid, inbox
                self._conn = None
            raise network("the WebSocket closed as it opened")

    async def _release(self, conn: _Connection, sid: str) -> None:
        if conn.remove(sid) > 0:
            return
        if self._conn is conn:
            self._conn = None
        await conn.close()

    async def stream(
        self, payload: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The `data` of each event of one subscription, until the server completes it.
        Closing the generator early (`aclose()`, or dropping it) sends `complete`, so that the
        server stops."""
        conn, sid, inbox = await self._open()
        done = False
        try:
            await conn.send({"id": sid, "type": "subscribe", "payload": payload})
            while True:
                message = await inbox.get()
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
                    await conn.send({"id": sid, "type": "complete"})
                except DeepRecallError:
                    pass
            await self._release(conn, sid)

    async def close(self) -> None:
        """Closes the WebSocket; open subscriptions end with a `NETWORK` error."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.failure = network("the client was closed")
            await conn.close()
