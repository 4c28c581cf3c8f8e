"""Deep Recall in-process: long-term memory for open-source LLMs.

    from deep_recall import Memory

    memory = Memory(data_dir="data", models_dir="models")
    memory.add_messages("alice", "s1", [{"role": "user", "content": "I moved to Lisbon."}])
    for hit in memory.search("alice", "Where does she live?"):
        print(hit.score, hit.content)

The same engine as the `deep-recall` server (one Rust core): the store (the embedded one in
`data_dir`, or Postgres at `database_url`), the local embedding model, hybrid retrieval and
the chat pipeline. `AsyncMemory` has the same methods as awaitables; they run on a thread
pool and release the GIL, so they never block the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from . import _native
from ._native import (
    DeepRecallError,
    InvalidInput,
    ModelError,
    NotFound,
    Unavailable,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "AsyncMemory",
    "ChatResult",
    "DeepRecallError",
    "Hit",
    "InvalidInput",
    "KeyStatus",
    "Memory",
    "ModelError",
    "NotFound",
    "Session",
    "StoredMemory",
    "Unavailable",
    "Usage",
]

T = TypeVar("T")


def _time(v: Any) -> datetime | None:
    return None if v is None else datetime.fromisoformat(str(v))


@dataclass(frozen=True)
class Hit:
    """A memory that matched, with its score (higher is better)."""

    memory_id: int
    content: str
    score: float
    session: str | None
    role: str | None
    kind: str
    created_at: datetime
    tags: list[str]
    #: What it was stored with, beside the engine's signals (``emotion_confidence``, ...).
    metadata: dict[str, Any]
    #: The rest are set on search hits; a chat's context leaves them None.
    importance: float | None = None
    #: When it stops being returned (never when None).
    expires_at: datetime | None = None
    #: The memory it replaced.
    supersedes: int | None = None
    #: The memory that replaced it (a search with ``as_of`` or ``include_superseded``
    #: returns such history).
    superseded_by: int | None = None
    superseded_at: datetime | None = None

    @classmethod
    def _from(cls, v: Mapping[str, Any]) -> Hit:
        importance = v.get("importance")
        return cls(
            memory_id=int(v["memory_id"]),
            content=str(v["content"]),
            score=float(v["score"]),
            session=v.get("session"),
            role=v.get("role"),
            kind=str(v["kind"]),
            created_at=datetime.fromisoformat(str(v["created_at"])),
            tags=list(v.get("tags") or []),
            metadata=dict(v.get("metadata") or {}),
            importance=None if importance is None else float(importance),
            expires_at=_time(v.get("expires_at")),
            supersedes=v.get("supersedes"),
            superseded_by=v.get("superseded_by"),
            superseded_at=_time(v.get("superseded_at")),
        )


@dataclass(frozen=True)
class StoredMemory:
    """A stored memory. ``supersedes``/``superseded_by`` link the facts it replaced and that
    replaced it; ``expires_at`` is when it stops being returned (never when None)."""

    id: int
    kind: str
    content: str
    session: str | None
    role: str | None
    tags: list[str]
    metadata: dict[str, Any]
    importance: float
    created_at: datetime
    expires_at: datetime | None
    supersedes: int | None
    superseded_by: int | None
    superseded_at: datetime | None
    key_for: int | None

    @classmethod
    def _from(cls, v: Mapping[str, Any]) -> StoredMemory:
        return cls(
            id=int(v["id"]),
            kind=str(v["kind"]),
            content=str(v["content"]),
            session=v.get("session"),
            role=v.get("role"),
            tags=list(v.get("tags") or []),
            metadata=dict(v.get("metadata") or {}),
            importance=float(v["importance"]),
            created_at=datetime.fromisoformat(str(v["created_at"])),
            expires_at=_time(v.get("expires_at")),
            supersedes=v.get("supersedes"),
            superseded_by=v.get("superseded_by"),
            superseded_at=_time(v.get("superseded_at")),
            key_for=v.get("key_for"),
        )


@dataclass(frozen=True)
class Session:
    """A conversation: its id, title and persona card (who the assistant is in it)."""

    id: str
    title: str | None
    persona: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def _from(cls, v: Mapping[str, Any]) -> Session:
        return cls(
            id=str(v["id"]),
            title=v.get("title"),
            persona=v.get("persona"),
            created_at=datetime.fromisoformat(str(v["created_at"])),
            updated_at=datetime.fromisoformat(str(v["updated_at"])),
        )


Filter = Mapping[str, Any]
"""Narrows a search: ``{"tags"?: [str], "kinds"?: [str], "roles"?: [str], "since"?, "until"?,
"as_of"?: time, "include_superseded"?: bool, "metadata"?: [{"key": "priority", "op": "gte",
"value": 2}]}`` (times as RFC 3339 strings or aware datetimes; ops: eq, ne, in, gt, gte, lt,
lte, contains, exists)."""


@dataclass(frozen=True)
class KeyStatus:
    """Whether a user's memory keys are on, and how many they have. A key is a second way to
    find a memory (a turn with the turn before it and the reply that goes on with it, so
    that a question about either finds it); searches return the memory, never the key."""

    enabled: bool
    keys: int


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class ChatResult:
    """One answered chat turn: the text, the memories that went into the prompt, usage."""

    text: str
    context: list[Hit]
    usage: Usage
    finish_reason: str
    confidence: float | None
    model: str
    session: str
    message_id: int
    reply_id: int | None

    @classmethod
    def _from(cls, v: Mapping[str, Any]) -> ChatResult:
        return cls(
            text=str(v["text"]),
            context=[Hit._from(h) for h in v["context"]],
            usage=Usage(**v["usage"]),
            finish_reason=str(v["finish_reason"]),
            confidence=v.get("confidence"),
            model=str(v["model"]),
            session=str(v["session"]),
            message_id=int(v["message_id"]),
            reply_id=v.get("reply_id"),
        )


Message = Mapping[str, Any]
"""A message: ``{"role": "user" | "assistant" | "system", "content": str, "ts"?: str |
datetime, "tags"?: list[str], "metadata"?: dict}``."""


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidInput(
                "a time (a message's ts, an expiry, a filter's time) needs a timezone"
            )
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _chat_request(
    session: str,
    message: str,
    max_tokens: int | None,
    temperature: float | None,
    seed: int | None,
    *,
    top_p: float | None = None,
    top_k: int | None = None,
    stop: Sequence[str] | None = None,
    system: str | None = None,
    memory_top_k: int | None = None,
    mode: str | None = None,
) -> str:
    """Core's chat request as JSON: what is not given keeps core's default."""
    given = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "seed": seed,
        "stop": list(stop) if stop is not None else None,
    }
    request: dict[str, Any] = {
        "session": session,
        "message": message,
        "generation": {k: v for k, v in given.items() if v is not None},
    }
    context: dict[str, Any] = {}
    if system is not None:
        context["system"] = system
    retrieve = {"top_k": memory_top_k, "mode": mode}
    if any(v is not None for v in retrieve.values()):
        context["retrieve"] = {k: v for k, v in retrieve.items() if v is not None}
    if context:
        request["context"] = context
    return json.dumps(request)


class Memory:
    """A user-scoped long-term memory over one store (see the module documentation)."""

    def __init__(
        self,
        data_dir: str | None = None,
        database_url: str | None = None,
        models_dir: str | None = None,
        device: str = "auto",
        *,
        embedding_precision: str = "f32",
        chat_model: str | None = None,
        chat_url: str | None = None,
        chat_model_name: str | None = None,
        chat_api_key: str | None = None,
        dedupe_similarity: float | None = None,
        tag_ttl_seconds: Mapping[str, int] | None = None,
        memory_keys: bool = True,
        memory_keys_check_seconds: int = 60,
    ) -> None:
        """Opens the store and loads the embedding model. ``memory_keys``: new users get memory
        keys (see :class:`KeyStatus`), written in the background every
        ``memory_keys_check_seconds`` for the users who wrote (0: only
        :meth:`write_memory_keys` writes them)."""
        options = {
            "data_dir": data_dir,
            "database_url": database_url,
            "models_dir": models_dir,
            "device": device,
            "embedding_precision": embedding_precision,
            "chat_model": chat_model,
            "chat_url": chat_url,
            "chat_model_name": chat_model_name,
            "chat_api_key": chat_api_key,
            "dedupe_similarity": dedupe_similarity,
            "tag_ttl_seconds": dict(tag_ttl_seconds or {}),
            "memory_keys": memory_keys,
            "memory_keys_check_seconds": memory_keys_check_seconds,
        }
        self._open: _native.Engine | None = _native.Engine(json.dumps(options))

    @property
    def _engine(self) -> _native.Engine:
        if self._open is None:
            raise InvalidInput("this Memory is closed")
        return self._open

    def close(self) -> None:
        """Lets go of the store's connections (a Postgres pool), the background key writer and
        the chat model now, rather than when the object is collected; a call or stream under
        way finishes first, later calls raise :class:`InvalidInput`. Closing twice does
        nothing. ``with Memory(...) as m:`` closes it at the end of the block."""
        self._open = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_messages(
        self, user: str, session: str, messages: Sequence[Message]
    ) -> list[int]:
        """Stores messages (each also as a searchable memory), all or none; returns their ids."""
        encoded = json.dumps(list(messages), default=_json_default)
        return self._engine.add_messages(user, session, encoded)

    def search(
        self,
        user: str,
        query: str,
        top_k: int = 10,
        mode: str = "hybrid",
        session: str | None = None,
        filter: Filter | None = None,
    ) -> list[Hit]:
        """The user's memories that matter for ``query``, best first (``mode``: hybrid,
        vector or text), narrowed by ``filter`` (see ``Filter``)."""
        encoded = None if filter is None else json.dumps(filter, default=_json_default)
        hits = json.loads(
            self._engine.search(user, query, top_k, mode, session, encoded)
        )
        return [Hit._from(h) for h in hits]

    def add_memory(
        self,
        user: str,
        content: str,
        *,
        kind: str = "fact",
        session: str | None = None,
        tags: Sequence[str] = (),
        importance: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        expires_at: datetime | None = None,
        ttl_seconds: int | None = None,
        supersedes: int | None = None,
    ) -> StoredMemory:
        """Stores a memory (a fact by default). ``supersedes`` names a current memory that this
        one replaces (kept as history, no longer found); ``ttl_seconds`` or ``expires_at`` make
        it expire."""
        memory = {
            "kind": kind,
            "content": content,
            "session": session,
            "tags": list(tags),
            "importance": importance,
            "metadata": dict(metadata) if metadata is not None else None,
            "expires_at": expires_at,
            "ttl_seconds": ttl_seconds,
            "supersedes": supersedes,
        }
        encoded = json.dumps(memory, default=_json_default)
        return StoredMemory._from(json.loads(self._engine.add_memory(user, encoded)))

    def create_session(
        self,
        user: str,
        session: str,
        *,
        title: str | None = None,
        persona: str | None = None,
    ) -> Session:
        """Creates the session if needed and sets what is given: its title, and its persona
        card (who the assistant is: a name, a manner, a backstory). The card is stored as the
        session's ``persona`` memories, chunked by sentences and replacing those of the card
        before; a chat in the session carries the card whole when it fits its share of the
        prompt, else its opening and the chunks that matter for the message."""
        patch: dict[str, str] = {}
        if title is not None:
            patch["title"] = title
        if persona is not None:
            patch["persona"] = persona
        stored = self._engine.create_session(user, session, json.dumps(patch))
        return Session._from(json.loads(stored))

    def memories(
        self, user: str, *, filter: Filter | None = None, page_size: int = 100
    ) -> Iterator[StoredMemory]:
        """The user's memories, newest first, read ``page_size`` at a time; narrowed by
        ``filter`` as a search is (without ``as_of`` or ``include_superseded``: the current
        ones)."""
        encoded = None if filter is None else json.dumps(filter, default=_json_default)
        after: str | None = None
        while True:
            page = json.loads(self._engine.memories(user, page_size, after, encoded))
            yield from (StoredMemory._from(m) for m in page["items"])
            after = page["next"]
            if after is None:
                return

    def sessions(self, user: str, *, page_size: int = 100) -> Iterator[Session]:
        """The user's sessions, newest first, read ``page_size`` at a time."""
        after: str | None = None
        while True:
            page = json.loads(self._engine.sessions(user, page_size, after))
            yield from (Session._from(s) for s in page["items"])
            after = page["next"]
            if after is None:
                return

    def memory_history(self, user: str, memory_id: int) -> list[StoredMemory]:
        """The memories ``memory_id`` replaced, itself, and those that replaced it, oldest
        first (``NotFound`` when the user has no such memory)."""
        history = json.loads(self._engine.memory_history(user, memory_id))
        return [StoredMemory._from(m) for m in history]

    def delete_memories(self, user: str, ids: Sequence[int]) -> int:
        """Deletes the user's memories with these ids; returns how many there were. A fact
        that a deleted one had replaced is current again."""
        return self._engine.delete_memories(user, list(ids))

    def export(self, user: str) -> dict[str, Any]:
        """Everything stored about the user, as ``deep-recall export`` prints it."""
        data: dict[str, Any] = json.loads(self._engine.export(user))
        return data

    def forget(self, user: str) -> dict[str, Any]:
        """Deletes everything stored about the user; returns what was deleted."""
        report: dict[str, Any] = json.loads(self._engine.forget(user))
        return report

    def memory_keys(self, user: str) -> KeyStatus:
        """Whether the user's memory keys are on, and how many they have."""
        return KeyStatus(**json.loads(self._engine.memory_keys(user)))

    def set_memory_keys(self, user: str, enabled: bool) -> KeyStatus:
        """Turns the user's memory keys on (written in the background from then on) or off
        (their keys are deleted; memories are untouched)."""
        return KeyStatus(**json.loads(self._engine.set_memory_keys(user, enabled)))

    def write_memory_keys(self, user: str) -> int:
        """Writes the keys the user's memories lack now, rather than in the background (after
        an import, say); returns how many were stored. ``InvalidInput`` when the user's keys
        are off."""
        return self._engine.write_memory_keys(user)

    def chat(
        self,
        user: str,
        session: str,
        message: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        *,
        top_p: float | None = None,
        top_k: int | None = None,
        stop: Sequence[str] | None = None,
        system: str | None = None,
        memory_top_k: int | None = None,
        mode: str | None = None,
    ) -> ChatResult:
        """Answers ``message`` with the user's memory (the chat model loads on first use).
        ``top_k`` samples from that many likeliest tokens; ``memory_top_k`` memories are
        retrieved for the prompt (10 by default) in ``mode`` (hybrid, vector or text)."""
        request = _chat_request(
            session,
            message,
            max_tokens,
            temperature,
            seed,
            top_p=top_p,
            top_k=top_k,
            stop=stop,
            system=system,
            memory_top_k=memory_top_k,
            mode=mode,
        )
        return ChatResult._from(json.loads(self._engine.chat(user, request)))

    def chat_stream(
        self,
        user: str,
        session: str,
        message: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        *,
        top_p: float | None = None,
        top_k: int | None = None,
        stop: Sequence[str] | None = None,
        system: str | None = None,
        memory_top_k: int | None = None,
        mode: str | None = None,
    ) -> Iterator[str | ChatResult]:
        """Like :meth:`chat`, streamed: the text as it is generated (``str`` pieces), then the
        :class:`ChatResult`. Leaving the loop early stops the generation."""
        request = _chat_request(
            session,
            message,
            max_tokens,
            temperature,
            seed,
            top_p=top_p,
            top_k=top_k,
            stop=stop,
            system=system,
            memory_top_k=memory_top_k,
            mode=mode,
        )
        return _stream(self._engine.chat_stream(user, request), self)

    def _chat_native(
        self, user: str, session: str, message: str, *args: Any, **kwargs: Any
    ) -> _native.ChatStream:
        """The native stream of :meth:`chat_stream` (for :class:`AsyncMemory`)."""
        request = _chat_request(session, message, *args, **kwargs)
        return self._engine.chat_stream(user, request)


def _stream(stream: _native.ChatStream, owner: Memory) -> Iterator[str | ChatResult]:
    # `owner` is held while the stream is read: its engine runs the generation, which
    # would end with it.
    try:
        for kind, payload in stream:
            if kind == "delta":
                yield payload
            else:
                yield ChatResult._from(json.loads(payload))
    finally:
        stream.close()


_STREAM_READERS: concurrent.futures.ThreadPoolExecutor | None = None
_STREAM_READERS_LOCK = threading.Lock()


def _stream_reader() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that read :class:`AsyncMemory` chat streams (made on first use; a thread
    per stream waiting, up to 64)."""
    global _STREAM_READERS
    with _STREAM_READERS_LOCK:
        if _STREAM_READERS is None:
            _STREAM_READERS = concurrent.futures.ThreadPoolExecutor(
                max_workers=64, thread_name_prefix="deep-recall-stream"
            )
        return _STREAM_READERS


class AsyncMemory:
    """:class:`Memory` for asyncio: the same methods as awaitables (and ``chat_stream`` as an
    async iterator). Rust work runs on the default executor with the GIL released."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._memory = Memory(*args, **kwargs)

    @classmethod
    def of(cls, memory: Memory) -> AsyncMemory:
        """The asyncio face of an open :class:`Memory` (one engine for both)."""
        this = cls.__new__(cls)
        this._memory = memory
        return this

    @classmethod
    async def open(cls, *args: Any, **kwargs: Any) -> AsyncMemory:
        """Opens the store and loads the models without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(cls, *args, **kwargs))

    async def close(self) -> None:
        """:meth:`Memory.close`, off the event loop (stopping the background work waits for
        it); ``async with memory:`` closes it at the end of the block."""
        await self._run(self._memory.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    async def add_messages(
        self, user: str, session: str, messages: Sequence[Message]
    ) -> list[int]:
        return await self._run(self._memory.add_messages, user, session, messages)

    async def search(
        self,
        user: str,
        query: str,
        top_k: int = 10,
        mode: str = "hybrid",
        session: str | None = None,
        filter: Filter | None = None,
    ) -> list[Hit]:
        return await self._run(
            self._memory.search, user, query, top_k, mode, session, filter
        )

    async def add_memory(self, user: str, content: str, **kwargs: Any) -> StoredMemory:
        return await self._run(self._memory.add_memory, user, content, **kwargs)

    async def create_session(self, user: str, session: str, **kwargs: Any) -> Session:
        return await self._run(self._memory.create_session, user, session, **kwargs)

    async def memories(
        self, user: str, *, filter: Filter | None = None, page_size: int = 100
    ) -> AsyncIterator[StoredMemory]:
        """Like :meth:`Memory.memories`, as an async iterator (a page per executor call)."""
        pages = self._memory.memories(user, filter=filter, page_size=page_size)
        while True:
            m = await self._run(next, pages, None)
            if m is None:
                return
            yield m

    async def sessions(
        self, user: str, *, page_size: int = 100
    ) -> AsyncIterator[Session]:
        """Like :meth:`Memory.sessions`, as an async iterator."""
        pages = self._memory.sessions(user, page_size=page_size)
        while True:
            s = await self._run(next, pages, None)
            if s is None:
                return
            yield s

    async def memory_history(self, user: str, memory_id: int) -> list[StoredMemory]:
        return await self._run(self._memory.memory_history, user, memory_id)

    async def delete_memories(self, user: str, ids: Sequence[int]) -> int:
        return await self._run(self._memory.delete_memories, user, ids)

    async def export(self, user: str) -> dict[str, Any]:
        return await self._run(self._memory.export, user)

    async def forget(self, user: str) -> dict[str, Any]:
        return await self._run(self._memory.forget, user)

    async def memory_keys(self, user: str) -> KeyStatus:
        return await self._run(self._memory.memory_keys, user)

    async def set_memory_keys(self, user: str, enabled: bool) -> KeyStatus:
        return await self._run(self._memory.set_memory_keys, user, enabled)

    async def write_memory_keys(self, user: str) -> int:
        return await self._run(self._memory.write_memory_keys, user)

    async def chat(
        self,
        user: str,
        session: str,
        message: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await self._run(
            self._memory.chat,
            user,
            session,
            message,
            max_tokens,
            temperature,
            seed,
            **kwargs,
        )

    async def chat_stream(
        self,
        user: str,
        session: str,
        message: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[str | ChatResult]:
        """Like :meth:`Memory.chat_stream`, as an async iterator."""
        stream = await self._run(
            self._memory._chat_native,
            user,
            session,
            message,
            max_tokens,
            temperature,
            seed,
            **kwargs,
        )
        done: tuple[str, str] = ("", "")
        loop = asyncio.get_running_loop()
        try:
            while True:
                # Read on threads of their own: a stream waits for its next piece (for a
                # place among the model's sequences, first) on its thread, and waiting
                # streams must not take the loop's default executor from every other call.
                kind, payload = await loop.run_in_executor(
                    _stream_reader(), next, stream, done
                )
                if kind == "delta":
                    yield payload
                elif kind == "done":
                    yield ChatResult._from(json.loads(payload))
                else:
                    return
        finally:
            # Safe while a `next` is still under way on the executor (cancelled, say): that
            # one ends, and the generation stops.
            stream.close()
