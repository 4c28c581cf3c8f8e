"""What the client returns and accepts: frozen dataclasses for the server's objects, lower-case
string literals for its enums, and the conversions from the GraphQL answers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, TypedDict, Union

Role = Literal["user", "assistant", "system"]
"""Who wrote a message."""
MemoryKind = Literal["message", "fact", "persona", "summary", "key"]
"""What a memory is."""
SearchMode = Literal["hybrid", "vector", "text"]
"""Which retrievers a search uses."""
FinishReason = Literal["stop", "length", "cancelled"]
"""Why an answer ended."""
MemoryAction = Literal["added", "updated", "deleted"]
"""What happened to a memory."""
MetadataOp = Literal["eq", "ne", "in", "gt", "gte", "lt", "lte", "contains", "exists"]
"""A comparison of a metadata value."""

Json = dict[str, Any]
"""A JSON object."""
Time = Union[str, datetime]
"""A time: an RFC 3339 string, or a datetime (naive ones are taken as UTC)."""

# Each class declares `__slots__` by hand: `dataclass(slots=True)` needs Python 3.10.


@dataclass(frozen=True)
class Memory:
    """A memory: what retrieval finds."""

    __slots__ = (
        "content",
        "created_at",
        "emotion",
        "expires_at",
        "id",
        "importance",
        "key_for",
        "kind",
        "message_id",
        "metadata",
        "role",
        "session",
        "superseded_at",
        "superseded_by",
        "supersedes",
        "tags",
        "updated_at",
    )
    id: str
    kind: MemoryKind
    content: str
    session: str | None
    """The session it came from."""
    message_id: str | None
    """The message it came from."""
    role: Role | None
    """The role of that message."""
    tags: list[str]
    metadata: Json
    importance: float
    """In [0, 1]."""
    emotion: str | None
    """The detected emotion."""
    created_at: str
    """When its source was written (RFC 3339)."""
    updated_at: str
    expires_at: str | None
    """When it stops being returned (and is purged); None: never."""
    supersedes: str | None
    """The memory it replaced."""
    superseded_by: str | None
    """The memory that replaced it (searches return that one instead)."""
    superseded_at: str | None
    """Since when it is no longer current."""
    key_for: str | None
    """For a key (kind ``key``): the memory it is for."""


class _MetadataConditionRequired(TypedDict):
    key: str
    op: MetadataOp


class MetadataCondition(_MetadataConditionRequired, total=False):
    """A condition on a memory's metadata: ``{"key": "priority", "op": "gte", "value": 2}``
    (``key`` a dotted path; ``value`` any JSON: a list for ``in``, a number or an RFC 3339 time
    to compare, a bool for ``exists``)."""

    value: Any


@dataclass(frozen=True)
class SearchHit:
    """A search result."""

    __slots__ = ("bm25", "memory", "score", "similarity")
    memory: Memory
    score: float
    """The final score (higher is better; the raw cosine similarity in vector mode)."""
    similarity: float | None
    """Embedding similarity, when the vector retriever found it."""
    bm25: float | None
    """BM25 score, when the text retriever found it."""


@dataclass(frozen=True)
class Message:
    """A stored message."""

    __slots__ = ("content", "created_at", "id", "metadata", "role", "session", "tags")
    id: str
    session: str
    role: Role
    content: str
    tags: list[str]
    metadata: Json
    created_at: str


class _NewMessageRequired(TypedDict):
    role: Role
    content: str


class NewMessage(_NewMessageRequired, total=False):
    """A message to store (`add_messages`): `role` and `content`, the rest optional."""

    created_at: Time
    """When it was written; now when absent."""
    tags: list[str]
    metadata: Json


@dataclass(frozen=True)
class Session:
    """A conversation."""

    __slots__ = ("created_at", "id", "persona", "title", "updated_at")
    id: str
    title: str | None
    persona: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class User:
    """The calling user."""

    __slots__ = ("admin", "created_at", "id", "memory_count")
    id: str
    admin: bool
    created_at: str | None
    """When the user was first seen (None before their first write)."""
    memory_count: int


@dataclass(frozen=True)
class MemoryKeysStatus:
    """Whether the caller's memory keys are on, and how many they have. A key is a second way
    to find a memory; searches return the memory, never the key."""

    __slots__ = ("enabled", "keys")
    enabled: bool
    keys: int


class DeepMemoryPair(TypedDict):
    """A question that one of the caller's memories answers (`deep_memory_add_pairs`)."""

    question: str
    memory_id: str


@dataclass(frozen=True)
class RecallFigures:
    """Held-out recall of a deep memory adapter: without (`before`) or with it (`after`)."""

    __slots__ = ("mrr", "recall_at_1", "recall_at_5", "recall_at_10")
    recall_at_1: float
    recall_at_5: float
    recall_at_10: float
    mrr: float


@dataclass(frozen=True)
class DeepMemoryEvaluation:
    """An adapter judged on the held-out pairs; it can be turned on only when it `helps`."""

    __slots__ = ("after", "before", "helps", "pairs")
    pairs: int
    helps: bool
    before: RecallFigures
    after: RecallFigures


@dataclass(frozen=True)
class DeepMemoryStatus:
    """Where the caller's deep memory stands: pairs, the adapter, its evaluation."""

    __slots__ = (
        "active",
        "embedding_model",
        "enabled",
        "evaluation",
        "generated_pairs",
        "held_out_pairs",
        "inactive_reason",
        "memories",
        "memories_with_pairs",
        "new_memories",
        "pairs",
        "trained",
        "trained_at",
        "training",
        "version",
    )
    pairs: int
    """Question-memory pairs stored."""
    generated_pairs: int
    """Of which written by the chat model."""
    held_out_pairs: int
    """Of which held out for evaluation."""
    memories_with_pairs: int
    memories: int
    trained: bool
    version: int | None
    """One up per training."""
    enabled: bool
    active: bool
    """Searches use it now (on, and trained for the embedding model in use)."""
    inactive_reason: str | None
    embedding_model: str | None
    trained_at: str | None
    new_memories: int
    """Memories added since the training."""
    evaluation: DeepMemoryEvaluation | None
    training: Json | None
    """The training (pairs, epochs, loss per epoch, seconds)."""


JobKind = Literal[
    "delete_user",
    "backup",
    "optimize",
    "rotate_keys",
    "reembed",
    "deep_memory_generate",
    "deep_memory_train",
    "memory_keys",
]
"""What a background job does."""

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
"""Where a background job is: queued, running, then succeeded, failed or cancelled."""


@dataclass(frozen=True)
class Job:
    """One of the caller's background jobs (`write_memory_keys`, `schedule_delete_my_data`)."""

    __slots__ = (
        "attempts",
        "created_at",
        "error",
        "finished_at",
        "id",
        "kind",
        "message",
        "progress",
        "result",
        "run_at",
        "started_at",
        "status",
        "updated_at",
    )
    id: str
    kind: JobKind
    status: JobStatus
    progress: float
    """Share done, 0 to 1."""
    message: str | None
    """What it is doing now."""
    result: Json | None
    """What it did, once succeeded."""
    error: str | None
    """Why it failed."""
    attempts: int
    run_at: str
    """Not before this time."""
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None


@dataclass(frozen=True)
class DeletionReport:
    """What `delete_my_data` removed."""

    __slots__ = (
        "embeddings",
        "existed",
        "memories",
        "messages",
        "sessions",
        "summaries",
    )
    existed: bool
    sessions: int
    messages: int
    memories: int
    embeddings: int
    """Embedding vectors removed."""
    summaries: int


@dataclass(frozen=True)
class ContextMemory:
    """A memory that went into a chat answer's prompt."""

    __slots__ = ("content", "created_at", "kind", "memory_id", "score", "session")
    memory_id: str
    kind: MemoryKind
    content: str
    session: str | None
    score: float
    created_at: str


@dataclass(frozen=True)
class Usage:
    """Token counts."""

    __slots__ = ("completion_tokens", "prompt_tokens", "total_tokens")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class Latency:
    """Timings in milliseconds."""

    __slots__ = ("first_token_ms", "retrieval_ms", "total_ms")
    retrieval_ms: float
    first_token_ms: float
    total_ms: float


@dataclass(frozen=True)
class ChatDelta:
    """The next piece of a streamed answer."""

    __slots__ = ("delta",)
    delta: str


@dataclass(frozen=True)
class ChatFinal:
    """The end of a streamed answer: the whole result."""

    __slots__ = (
        "confidence",
        "context",
        "finish_reason",
        "latency",
        "message_id",
        "model",
        "reply_id",
        "text",
        "usage",
    )
    text: str
    context: list[ContextMemory]
    """The memories the answer was given, best first."""
    usage: Usage
    finish_reason: FinishReason
    message_id: str
    """The stored user message."""
    reply_id: str | None
    """The stored answer."""
    model: str
    latency: Latency
    confidence: float | None
    """Mean log-probability of the answer's tokens (0 is certain); None when unknown."""


ChatChunk = Union[ChatDelta, ChatFinal]
"""What `chat` yields: deltas, then one final result."""


@dataclass(frozen=True)
class MemoryEvent:
    """A change to one of the caller's memories."""

    __slots__ = ("action", "kind", "memory", "memory_id")
    action: MemoryAction
    memory_id: str
    kind: MemoryKind | None
    memory: Memory | None
    """The memory after the change, when the writer had it."""


# From the GraphQL answers (upper-case enums, camelCase fields) to the types above.


def _object(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def memory(d: Json) -> Memory:
    return Memory(
        id=d["id"],
        kind=_lower(d["kind"]),
        content=d["content"],
        session=d.get("session"),
        message_id=d.get("messageId"),
        role=_lower(d.get("role")),
        tags=list(d.get("tags") or []),
        metadata=_object(d.get("metadata")),
        importance=d["importance"],
        emotion=d.get("emotion"),
        created_at=d["createdAt"],
        updated_at=d["updatedAt"],
        expires_at=d.get("expiresAt"),
        supersedes=d.get("supersedes"),
        superseded_by=d.get("supersededBy"),
        superseded_at=d.get("supersededAt"),
        key_for=d.get("keyFor"),
    )


def search_hit(d: Json) -> SearchHit:
    return SearchHit(
        memory=memory(d["memory"]),
        score=d["score"],
        similarity=d.get("similarity"),
        bm25=d.get("bm25"),
    )


def message(d: Json) -> Message:
    return Message(
        id=d["id"],
        session=d["session"],
        role=_lower(d["role"]),
        content=d["content"],
        tags=list(d.get("tags") or []),
        metadata=_object(d.get("metadata")),
        created_at=d["createdAt"],
    )


def session(d: Json) -> Session:
    return Session(
        id=d["id"],
        title=d.get("title"),
        persona=d.get("persona"),
        created_at=d["createdAt"],
        updated_at=d["updatedAt"],
    )


def _recall(d: Json) -> RecallFigures:
    return RecallFigures(
        recall_at_1=float(d["recallAt1"]),
        recall_at_5=float(d["recallAt5"]),
        recall_at_10=float(d["recallAt10"]),
        mrr=float(d["mrr"]),
    )


def deep_memory_status(d: Json) -> DeepMemoryStatus:
    e = d.get("evaluation")
    training = d.get("training")
    return DeepMemoryStatus(
        pairs=d["pairs"],
        generated_pairs=d["generatedPairs"],
        held_out_pairs=d["heldOutPairs"],
        memories_with_pairs=d["memoriesWithPairs"],
        memories=d["memories"],
        trained=bool(d["trained"]),
        version=d.get("version"),
        enabled=bool(d["enabled"]),
        active=bool(d["active"]),
        inactive_reason=d.get("inactiveReason"),
        embedding_model=d.get("embeddingModel"),
        trained_at=d.get("trainedAt"),
        new_memories=d["newMemories"],
        evaluation=None
        if e is None
        else DeepMemoryEvaluation(
            pairs=e["pairs"],
            helps=bool(e["helps"]),
            before=_recall(e["before"]),
            after=_recall(e["after"]),
        ),
        training=None if training is None else _object(training),
    )


def memory_keys_status(d: Json) -> MemoryKeysStatus:
    return MemoryKeysStatus(enabled=bool(d["enabled"]), keys=int(d["keys"]))


def user(d: Json) -> User:
    return User(
        id=d["id"],
        admin=d["admin"],
        created_at=d.get("createdAt"),
        memory_count=d["memoryCount"],
    )


def job(d: Json) -> Job:
    result = d.get("result")
    return Job(
        id=d["id"],
        kind=_lower(d["kind"]),
        status=_lower(d["status"]),
        progress=float(d["progress"]),
        message=d.get("message"),
        result=None if result is None else _object(result),
        error=d.get("error"),
        attempts=d["attempts"],
        run_at=d["runAt"],
        created_at=d["createdAt"],
        updated_at=d["updatedAt"],
        started_at=d.get("startedAt"),
        finished_at=d.get("finishedAt"),
    )


def deletion_report(d: Json) -> DeletionReport:
    return DeletionReport(
        existed=d["existed"],
        sessions=d["sessions"],
        messages=d["messages"],
        memories=d["memories"],
        embeddings=d["embeddings"],
        summaries=d["summaries"],
    )


def chat_chunk(d: Json) -> ChatChunk:
    result = d.get("result")
    if not d.get("done") or not isinstance(result, dict):
        return ChatDelta(delta=d.get("delta") or "")
    usage, latency = result["usage"], result["latency"]
    return ChatFinal(
        text=result["text"],
        context=[
            ContextMemory(
                memory_id=c["memoryId"],
                kind=_lower(c["kind"]),
                content=c["content"],
                session=c.get("session"),
                score=c["score"],
                created_at=c["createdAt"],
            )
            for c in result["context"]
        ],
        usage=Usage(
            prompt_tokens=usage["promptTokens"],
            completion_tokens=usage["completionTokens"],
            total_tokens=usage["totalTokens"],
        ),
        finish_reason=_lower(result["finishReason"]),
        message_id=result["messageId"],
        reply_id=result.get("replyId"),
        model=result["model"],
        latency=Latency(
            retrieval_ms=latency["retrievalMs"],
            first_token_ms=latency["firstTokenMs"],
            total_ms=latency["totalMs"],
        ),
        confidence=result.get("confidence"),
    )


def memory_event(d: Json) -> MemoryEvent:
    m = d.get("memory")
    return MemoryEvent(
        action=_lower(d["action"]),
        memory_id=d["memoryId"],
        kind=_lower(d.get("kind")),
        memory=memory(m) if isinstance(m, dict) else None,
    )


# From the caller's arguments to GraphQL input values.


def upper(value: str) -> str:
    return value.upper()


def time(value: Time) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat()
    return value
