"""`AsyncDeepRecall`: the asyncio client (httpx for queries and mutations,
`websockets.asyncio` for subscriptions)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Callable,
    TypeVar,
    Union,
)

import httpx

from . import _operations as ops
from . import _types as t
from ._async_ws import AsyncSubscriptions
from ._errors import DeepRecallError, network
from ._transport import (
    RetryPolicy,
    check_credentials,
    decode,
    endpoints,
    headers,
    init_payload,
)

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

T = TypeVar("T")

TokenSource = Callable[[], Union[str, Awaitable[str]]]
"""A function that returns a bearer token, or a coroutine function."""


class AsyncDeepRecall:
    """A client of a `deep-recall serve` server, for asyncio: `DeepRecall`'s methods as
    coroutines, and its iterators as async iterators.

    `url` is the server (`http://localhost:8080`) or its GraphQL endpoint (`.../graphql`). The
    caller is a fixed bearer `token`, or `get_token()` called before every request and
    connection (for short-lived JWTs; it may be a coroutine function); with neither, requests go without credentials (a server
    started with `--allow-anonymous`) and `user` names the user (`X-User-Id`).

    A query that fails with `UNAVAILABLE`, `RATE_LIMITED`, `TIMEOUT` or a network error is
    retried up to `retries` times, a mutation only after `UNAVAILABLE` and `RATE_LIMITED`
    (never after a timeout or a network error, where the write may have happened), waiting `retry_delay` seconds at first
    and twice as long each time, with jitter, or what the server's `Retry-After` asks.
    `timeout` bounds each HTTP request and the opening of the WebSocket, in seconds.

    Use it as an async context manager, or await `close()`.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: TokenSource | None = None,
        user: str | None = None,
        retries: int = 3,
        retry_delay: float = 0.25,
        timeout: float = 60.0,
    ) -> None:
        check_credentials(token, get_token, user)
        self._url, ws_url = endpoints(url)
        self._token = token
        self._get_token = get_token
        self._user = user
        self._retry = RetryPolicy(retries=retries, delay=retry_delay)
        self._http = httpx.AsyncClient(timeout=timeout)
        self._subscriptions = AsyncSubscriptions(ws_url, self._init_payload, timeout)

    async def _current_token(self) -> str | None:
        if self._get_token is None:
            return self._token
        token = self._get_token()
        return await token if inspect.isawaitable(token) else token

    async def _init_payload(self) -> dict[str, str]:
        return init_payload(await self._current_token(), self._user)

    async def _send(self, operation: ops.Operation[T]) -> T:
        attempt = 0
        while True:
            try:
                return operation.parse(await self._send_once(operation))
            except DeepRecallError as e:
                wait = self._retry.wait(attempt, e, operation.mutation)
                if wait is None:
                    raise
            await asyncio.sleep(wait)
            attempt += 1

    async def _send_once(self, operation: ops.Operation[T]) -> t.Json:
        request_headers = headers(await self._current_token(), self._user)
        try:
            r = await self._http.post(
                self._url, json=operation.body(), headers=request_headers
            )
        except httpx.TransportError as e:
            raise network(f"{type(e).__name__}: {e}") from e
        return decode(r.status_code, r.headers.get("retry-after"), r.content)

    async def _pages(
        self, page: Callable[[str | None], ops.Operation[ops.Page[T]]]
    ) -> AsyncIterator[T]:
        after: str | None = None
        while True:
            p = await self._send(page(after))
            for item in p.items:
                yield item
            if not p.has_next or p.end_cursor is None:
                return
            after = p.end_cursor

    async def me(self) -> t.User:
        """The calling user."""
        return await self._send(ops.me())

    async def search(
        self,
        query: str,
        *,
        top_k: int = 10,
        mode: t.SearchMode = "hybrid",
        session: str | None = None,
        kinds: Sequence[t.MemoryKind] | None = None,
        roles: Sequence[t.Role] | None = None,
        tags: Sequence[str] | None = None,
        since: t.Time | None = None,
        until: t.Time | None = None,
        as_of: t.Time | None = None,
        metadata: Sequence[t.MetadataCondition] | None = None,
        include_superseded: bool = False,
    ) -> list[t.SearchHit]:
        """The caller's memories that matter for `query`, best first, narrowed as
        `memories` narrows them."""
        f = ops.memory_filter(
            session,
            kinds,
            roles,
            tags,
            since,
            until,
            as_of,
            metadata,
            include_superseded,
        )
        return await self._send(ops.search(query, top_k, mode, f))

    async def add_messages(
        self, session: str, messages: Sequence[t.NewMessage]
    ) -> list[t.Message]:
        """Stores messages in a session (created if missing; each message also becomes a
        searchable memory), all or none."""
        return await self._send(ops.add_messages(session, messages))

    async def add_memory(
        self,
        content: str,
        *,
        kind: t.MemoryKind = "fact",
        session: str | None = None,
        tags: Sequence[str] | None = None,
        importance: float | None = None,
        metadata: t.Json | None = None,
        expires_at: t.Time | None = None,
        ttl_seconds: int | None = None,
        supersedes: str | None = None,
    ) -> t.Memory:
        """Adds a memory (a fact by default; importance in [0, 1], estimated when absent).
        `supersedes` names a current memory it replaces (kept as history, no longer found);
        `ttl_seconds` or `expires_at` make it expire."""
        return await self._send(
            ops.add_memory(
                content,
                kind,
                session,
                tags,
                importance,
                metadata,
                expires_at,
                ttl_seconds,
                supersedes,
            )
        )

    async def memory_history(self, id: str) -> list[t.Memory]:
        """The memories `id` replaced, itself, and those that replaced it, oldest first."""
        return await self._send(ops.memory_history(id))

    def sessions(self, *, page_size: int = 50) -> AsyncIterator[t.Session]:
        """Every session of the caller, newest first, fetched `page_size` at a time."""
        return self._pages(lambda after: ops.sessions(page_size, after))

    def messages(
        self, session: str, *, page_size: int = 50
    ) -> AsyncIterator[t.Message]:
        """A session's messages, oldest first, fetched `page_size` at a time."""
        return self._pages(lambda after: ops.messages(session, page_size, after))

    def memories(
        self,
        *,
        session: str | None = None,
        kinds: Sequence[t.MemoryKind] | None = None,
        roles: Sequence[t.Role] | None = None,
        tags: Sequence[str] | None = None,
        since: t.Time | None = None,
        until: t.Time | None = None,
        as_of: t.Time | None = None,
        metadata: Sequence[t.MetadataCondition] | None = None,
        include_superseded: bool = False,
        page_size: int = 50,
    ) -> AsyncIterator[t.Memory]:
        """The caller's memories, newest first, fetched `page_size` at a time; narrowed to a
        session, kinds, roles, all of `tags`, written in [since, until), what was true
        `as_of` a time (else what is current; `include_superseded`: the history too), and
        `metadata` conditions that must all hold."""
        f = ops.memory_filter(
            session,
            kinds,
            roles,
            tags,
            since,
            until,
            as_of,
            metadata,
            include_superseded,
        )
        return self._pages(lambda after: ops.memories(page_size, after, f))

    async def delete_memory(self, id: str) -> bool:
        """Deletes a memory (a missing one is a `NOT_FOUND` error)."""
        return await self._send(ops.delete_memory(id))

    async def create_session(
        self, id: str, *, title: str | None = None, persona: str | None = None
    ) -> t.Session:
        """Creates a session, or sets what is given of an existing one's title and persona
        card (who the assistant is: a name, a manner, a backstory). The card is stored as the
        session's `persona` memories, chunked by sentences, replacing those of the card
        before."""
        return await self._send(ops.create_session(id, title, persona))

    async def memory_keys(self) -> t.MemoryKeysStatus:
        """Whether the caller's memory keys are on, and how many they have."""
        return await self._send(ops.memory_keys_status())

    async def set_memory_keys(self, enabled: bool) -> t.MemoryKeysStatus:
        """Turns the caller's memory keys on (the server writes them in the background from
        then on) or off (their keys are deleted; memories are untouched)."""
        return await self._send(ops.memory_keys_enable(enabled))

    async def write_memory_keys(
        self,
        *,
        context: bool | None = None,
        facts: bool | None = None,
        sessions: bool | None = None,
        max_keys: int | None = None,
        pause_ms: int | None = None,
    ) -> t.Job:
        """Queues a job that writes the keys the caller's memories lack (keys must be on):
        `context` keys (each turn with the one before it), `facts` and `sessions` keys from
        the chat model; at most `max_keys`, pausing `pause_ms` after each group. Follow it
        with `job_progress`."""
        op = ops.memory_keys_write(context, facts, sessions, max_keys, pause_ms)
        return await self._send(op)

    async def job(self, id: str) -> t.Job | None:
        """One of the caller's background jobs, or None when they have none with this id."""
        return await self._send(ops.job(id))

    def job_progress(self, id: str) -> AsyncGenerator[t.Job, None]:
        """The job as it is now, then each change, until it succeeds, fails or is cancelled
        (another user's job, or none, is a `NOT_FOUND` error)."""
        return self._subscribe(ops.job_progress(id))

    async def cancel_job(self, id: str) -> t.Job:
        """Cancels one of the caller's queued jobs (a scheduled deletion, say)."""
        return await self._send(ops.cancel_job(id))

    async def schedule_delete_my_data(self, at: t.Time) -> t.Job:
        """Schedules the deletion of everything stored about the caller at `at` (at most a
        year ahead; a past time means now); `cancel_job` stops it until it starts."""
        return await self._send(ops.schedule_delete_my_data(at))

    async def deep_memory_status(self) -> t.DeepMemoryStatus:
        """Where the caller's deep memory stands: pairs, the adapter, its evaluation."""
        return await self._send(ops.deep_memory_status())

    async def deep_memory_add_pairs(self, pairs: Sequence[t.DeepMemoryPair]) -> int:
        """Adds questions that the caller's memories answer (at most 1000 per call); how
        many were stored. A memory that is not theirs is `NOT_FOUND`."""
        return await self._send(ops.deep_memory_add_pairs(pairs))

    async def deep_memory_generate(
        self, *, questions_per_memory: int | None = None, max_pairs: int | None = None
    ) -> t.Job:
        """Queues a job in which the chat model writes questions the caller's memories
        answer; follow it with `job_progress`."""
        op = ops.deep_memory_generate(questions_per_memory, max_pairs)
        return await self._send(op)

    async def deep_memory_train(
        self,
        *,
        rank: int | None = None,
        epochs: int | None = None,
        learning_rate: float | None = None,
        hard_negatives: int | None = None,
    ) -> t.Job:
        """Queues the training of the caller's adapter on their pairs (the job's result
        holds its evaluation); a new adapter stays off until `deep_memory_enable`."""
        op = ops.deep_memory_train(rank, epochs, learning_rate, hard_negatives)
        return await self._send(op)

    async def deep_memory_enable(self) -> t.DeepMemoryStatus:
        """Turns the caller's adapter on; `BAD_INPUT` when none is trained or it does not
        help."""
        return await self._send(ops.deep_memory_switch(True))

    async def deep_memory_disable(self) -> t.DeepMemoryStatus:
        """Turns the caller's adapter off, at once."""
        return await self._send(ops.deep_memory_switch(False))

    async def delete_session(self, id: str) -> bool:
        """Deletes a session with its messages and their memories."""
        return await self._send(ops.delete_session(id))

    async def export_my_data(self) -> t.Json:
        """Everything stored about the caller, as a JSON object."""
        return await self._send(ops.export_my_data())

    async def delete_my_data(self) -> t.DeletionReport:
        """Deletes everything stored about the caller."""
        return await self._send(ops.delete_my_data())

    def chat(
        self,
        session: str,
        message: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        system: str | None = None,
        memory_top_k: int | None = None,
        mode: t.SearchMode = "hybrid",
    ) -> AsyncGenerator[t.ChatChunk, None]:
        """Answers `message` with the caller's memory: yields a `ChatDelta` for each piece of
        the answer as it arrives, then one `ChatFinal`. Stopping early (leaving the loop, or
        `aclose()` on the generator) tells the server to stop generating."""
        sub = ops.chat(
            session,
            message,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
            system=system,
            memory_top_k=memory_top_k,
            mode=mode,
        )
        return self._subscribe(sub)

    def memory_events(self) -> AsyncGenerator[t.MemoryEvent, None]:
        """Changes to the caller's memories (added, updated, deleted), from the moment the
        subscription reaches the server (the first `__anext__()`), until the generator is
        closed."""
        return self._subscribe(ops.memory_events())

    async def _subscribe(self, sub: ops.Subscription[T]) -> AsyncGenerator[T, None]:
        stream = self._subscriptions.stream(sub.payload())
        try:
            async for data in stream:
                yield sub.parse(data)
        finally:
            await stream.aclose()

    async def close(self) -> None:
        """Closes the WebSocket and the HTTP connections."""
        await self._subscriptions.close()
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
