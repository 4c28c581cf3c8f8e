"""The GraphQL operations, written once for both clients: each is a document, its variables
and how to read its answer. The clients only send them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from . import _types as t
from ._errors import DeepRecallError

T = TypeVar("T")

_MEMORY = """
fragment MemoryFields on Memory {
  id kind content session messageId role tags metadata importance emotion createdAt updatedAt
  expiresAt supersedes supersededBy supersededAt keyFor
}"""
_MESSAGE = """
fragment MessageFields on Message { id session role content tags metadata createdAt }"""


@dataclass(frozen=True)
class Operation(Generic[T]):
    """A query or mutation: what to send, and how to read `data`."""

    name: str
    document: str
    variables: dict[str, Any]
    mutation: bool
    parse: Callable[[t.Json], T]

    def body(self) -> t.Json:
        return {
            "query": self.document,
            "variables": self.variables,
            "operationName": self.name,
        }


@dataclass(frozen=True)
class Subscription(Generic[T]):
    """A subscription: what to subscribe with, and how to read each event's `data`."""

    name: str
    document: str
    variables: dict[str, Any]
    parse: Callable[[t.Json], T]

    def payload(self) -> t.Json:
        return {
            "query": self.document,
            "variables": self.variables,
            "operationName": self.name,
        }


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a Relay connection."""

    items: list[T]
    end_cursor: str | None
    has_next: bool


def _page(connection: t.Json, item: Callable[[t.Json], T]) -> Page[T]:
    info = connection["pageInfo"]
    return Page(
        items=[item(n) for n in connection["nodes"]],
        end_cursor=info.get("endCursor"),
        has_next=bool(info.get("hasNextPage")),
    )


def memory_filter(
    session: str | None = None,
    kinds: Sequence[t.MemoryKind] | None = None,
    roles: Sequence[t.Role] | None = None,
    tags: Sequence[str] | None = None,
    since: t.Time | None = None,
    until: t.Time | None = None,
    as_of: t.Time | None = None,
    metadata: Sequence[t.MetadataCondition] | None = None,
    include_superseded: bool = False,
) -> t.Json | None:
    """The GraphQL `MemoryFilter` of these conditions (None when there are none)."""
    f: t.Json = {}
    if as_of is not None:
        f["asOf"] = t.time(as_of)
    if include_superseded:
        f["includeSuperseded"] = True
    if metadata:
        f["metadata"] = [
            {"key": c["key"], "op": t.upper(c["op"]), "value": c.get("value")}
            for c in metadata
        ]
    if session is not None:
        f["session"] = session
    if kinds:
        f["kinds"] = [t.upper(k) for k in kinds]
    if roles:
        f["roles"] = [t.upper(r) for r in roles]
    if tags:
        f["tags"] = list(tags)
    if since is not None:
        f["since"] = t.time(since)
    if until is not None:
        f["until"] = t.time(until)
    return f or None


def me() -> Operation[t.User]:
    return Operation(
        "Me",
        "query Me { me { id admin createdAt memoryCount } }",
        {},
        False,
        lambda d: t.user(d["me"]),
    )


def search(
    query: str, top_k: int, mode: t.SearchMode, filter: t.Json | None
) -> Operation[list[t.SearchHit]]:
    return Operation(
        "Search",
        """query Search($query: String!, $topK: Int!, $mode: SearchMode!, $filter: MemoryFilter) {
  search(query: $query, topK: $topK, mode: $mode, filter: $filter) {
    memory { ...MemoryFields } score similarity bm25
  }
}"""
        + _MEMORY,
        {
            "query": query,
            "topK": top_k,
            "mode": t.upper(mode),
            "filter": filter,
        },
        False,
        lambda d: [t.search_hit(h) for h in d["search"]],
    )


_MESSAGE_KEYS = frozenset(("role", "content", "created_at", "tags", "metadata"))


def _message_input(session: str, i: int, m: t.NewMessage) -> t.Json:
    unknown = sorted(set(m) - _MESSAGE_KEYS)
    if unknown:
        # A key the server would never see (a timestamp named `ts`, say) is refused, not
        # dropped.
        raise DeepRecallError(
            "BAD_INPUT",
            f"message {i}: unknown field(s) {', '.join(unknown)}; a message has "
            f"{', '.join(sorted(_MESSAGE_KEYS))}",
        )
    out: t.Json = {
        "session": session,
        "role": t.upper(m["role"]),
        "content": m["content"],
    }
    if "created_at" in m:
        out["createdAt"] = t.time(m["created_at"])
    if "tags" in m:
        out["tags"] = list(m["tags"])
    if "metadata" in m:
        out["metadata"] = m["metadata"]
    return out


def add_messages(
    session: str, messages: Sequence[t.NewMessage]
) -> Operation[list[t.Message]]:
    return Operation(
        "AddMessages",
        """mutation AddMessages($messages: [MessageInput!]!) {
  addMessages(messages: $messages) { ...MessageFields }
}"""
        + _MESSAGE,
        {"messages": [_message_input(session, i, m) for i, m in enumerate(messages)]},
        True,
        lambda d: [t.message(m) for m in d["addMessages"]],
    )


def add_memory(
    content: str,
    kind: t.MemoryKind,
    session: str | None,
    tags: Sequence[str] | None,
    importance: float | None,
    metadata: t.Json | None = None,
    expires_at: t.Time | None = None,
    ttl_seconds: int | None = None,
    supersedes: str | None = None,
) -> Operation[t.Memory]:
    memory_input: t.Json = {"content": content, "kind": t.upper(kind)}
    if metadata is not None:
        memory_input["metadata"] = metadata
    if expires_at is not None:
        memory_input["expiresAt"] = t.time(expires_at)
    if ttl_seconds is not None:
        memory_input["ttlSeconds"] = ttl_seconds
    if supersedes is not None:
        memory_input["supersedes"] = supersedes
    if session is not None:
        memory_input["session"] = session
    if tags is not None:
        memory_input["tags"] = list(tags)
    if importance is not None:
        memory_input["importance"] = importance
    return Operation(
        "AddMemory",
        """mutation AddMemory($input: MemoryInput!) {
  addMemory(input: $input) { ...MemoryFields }
}"""
        + _MEMORY,
        {"input": memory_input},
        True,
        lambda d: t.memory(d["addMemory"]),
    )


def sessions(first: int, after: str | None) -> Operation[Page[t.Session]]:
    return Operation(
        "Sessions",
        """query Sessions($first: Int, $after: String) {
  sessions(first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    nodes { id title persona createdAt updatedAt }
  }
}""",
        {"first": first, "after": after},
        False,
        lambda d: _page(d["sessions"], t.session),
    )


def messages(session: str, first: int, after: str | None) -> Operation[Page[t.Message]]:
    return Operation(
        "Messages",
        """query Messages($session: ID!, $first: Int, $after: String) {
  messages(session: $session, first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    nodes { ...MessageFields }
  }
}"""
        + _MESSAGE,
        {"session": session, "first": first, "after": after},
        False,
        lambda d: _page(d["messages"], t.message),
    )


def memories(
    first: int, after: str | None, filter: t.Json | None
) -> Operation[Page[t.Memory]]:
    return Operation(
        "Memories",
        """query Memories($filter: MemoryFilter, $first: Int, $after: String) {
  memories(filter: $filter, first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    nodes { ...MemoryFields }
  }
}"""
        + _MEMORY,
        {
            "filter": filter,
            "first": first,
            "after": after,
        },
        False,
        lambda d: _page(d["memories"], t.memory),
    )


def memory_history(id: str) -> Operation[list[t.Memory]]:
    return Operation(
        "MemoryHistory",
        """query MemoryHistory($id: ID!) {
  memoryHistory(id: $id) { ...MemoryFields }
}"""
        + _MEMORY,
        {"id": id},
        False,
        lambda d: [t.memory(m) for m in d["memoryHistory"]],
    )


def delete_memory(id: str) -> Operation[bool]:
    return Operation(
        "DeleteMemory",
        "mutation DeleteMemory($id: ID!) { deleteMemory(id: $id) }",
        {"id": id},
        True,
        lambda d: bool(d["deleteMemory"]),
    )


def create_session(
    id: str, title: str | None, persona: str | None
) -> Operation[t.Session]:
    return Operation(
        "CreateSession",
        """mutation CreateSession($id: ID!, $title: String, $persona: String) {
  createSession(id: $id, title: $title, persona: $persona) {
    id title persona createdAt updatedAt
  }
}""",
        {"id": id, "title": title, "persona": persona},
        True,
        lambda d: t.session(d["createSession"]),
    )


def memory_keys_status() -> Operation[t.MemoryKeysStatus]:
    return Operation(
        "MemoryKeysStatus",
        "query MemoryKeysStatus { memoryKeysStatus { enabled keys } }",
        {},
        False,
        lambda d: t.memory_keys_status(d["memoryKeysStatus"]),
    )


def memory_keys_enable(enabled: bool) -> Operation[t.MemoryKeysStatus]:
    return Operation(
        "MemoryKeysEnable",
        """mutation MemoryKeysEnable($enabled: Boolean!) {
  memoryKeysEnable(enabled: $enabled) { enabled keys }
}""",
        {"enabled": enabled},
        True,
        lambda d: t.memory_keys_status(d["memoryKeysEnable"]),
    )


_JOB = """
fragment JobFields on Job {
  id kind status progress message result error attempts runAt createdAt updatedAt
  startedAt finishedAt
}"""


def memory_keys_write(
    context: bool | None,
    facts: bool | None,
    sessions: bool | None,
    max_keys: int | None,
    pause_ms: int | None,
) -> Operation[t.Job]:
    given = {
        "context": context,
        "facts": facts,
        "sessions": sessions,
        "maxKeys": max_keys,
        "pauseMs": pause_ms,
    }
    return Operation(
        "MemoryKeysWrite",
        """mutation MemoryKeysWrite($input: MemoryKeysWriteInput) {
  memoryKeysWrite(input: $input) { ...JobFields }
}"""
        + _JOB,
        {"input": {k: v for k, v in given.items() if v is not None}},
        True,
        lambda d: t.job(d["memoryKeysWrite"]),
    )


def job(id: str) -> Operation[t.Job | None]:
    return Operation(
        "Job",
        "query Job($id: ID!) { job(id: $id) { ...JobFields } }" + _JOB,
        {"id": id},
        False,
        lambda d: None if d["job"] is None else t.job(d["job"]),
    )


def cancel_job(id: str) -> Operation[t.Job]:
    return Operation(
        "CancelJob",
        "mutation CancelJob($id: ID!) { cancelJob(id: $id) { ...JobFields } }" + _JOB,
        {"id": id},
        True,
        lambda d: t.job(d["cancelJob"]),
    )


def schedule_delete_my_data(at: t.Time) -> Operation[t.Job]:
    return Operation(
        "ScheduleDeleteMyData",
        """mutation ScheduleDeleteMyData($at: DateTime!) {
  scheduleDeleteMyData(at: $at) { ...JobFields }
}"""
        + _JOB,
        {"at": t.time(at)},
        True,
        lambda d: t.job(d["scheduleDeleteMyData"]),
    )


_DEEP_MEMORY = """
fragment DeepMemoryFields on DeepMemoryStatus {
  pairs generatedPairs heldOutPairs memoriesWithPairs memories trained version enabled
  active inactiveReason embeddingModel trainedAt newMemories training
  evaluation {
    pairs helps
    before { recallAt1 recallAt5 recallAt10 mrr }
    after { recallAt1 recallAt5 recallAt10 mrr }
  }
}"""


def deep_memory_status() -> Operation[t.DeepMemoryStatus]:
    return Operation(
        "DeepMemoryStatus",
        "query DeepMemoryStatus { deepMemoryStatus { ...DeepMemoryFields } }"
        + _DEEP_MEMORY,
        {},
        False,
        lambda d: t.deep_memory_status(d["deepMemoryStatus"]),
    )


def deep_memory_add_pairs(pairs: Sequence[t.DeepMemoryPair]) -> Operation[int]:
    return Operation(
        "DeepMemoryAddPairs",
        """mutation DeepMemoryAddPairs($pairs: [DeepMemoryPairInput!]!) {
  deepMemoryAddPairs(pairs: $pairs)
}""",
        {
            "pairs": [
                {"question": p["question"], "memoryId": p["memory_id"]} for p in pairs
            ]
        },
        True,
        lambda d: int(d["deepMemoryAddPairs"]),
    )


def deep_memory_generate(
    questions_per_memory: int | None, max_pairs: int | None
) -> Operation[t.Job]:
    given = {"questionsPerMemory": questions_per_memory, "maxPairs": max_pairs}
    return Operation(
        "DeepMemoryGenerate",
        """mutation DeepMemoryGenerate($input: DeepMemoryGenerateInput) {
  deepMemoryGenerate(input: $input) { ...JobFields }
}"""
        + _JOB,
        {"input": {k: v for k, v in given.items() if v is not None}},
        True,
        lambda d: t.job(d["deepMemoryGenerate"]),
    )


def deep_memory_train(
    rank: int | None,
    epochs: int | None,
    learning_rate: float | None,
    hard_negatives: int | None,
) -> Operation[t.Job]:
    given = {
        "rank": rank,
        "epochs": epochs,
        "learningRate": learning_rate,
        "hardNegatives": hard_negatives,
    }
    return Operation(
        "DeepMemoryTrain",
        """mutation DeepMemoryTrain($input: DeepMemoryTrainInput) {
  deepMemoryTrain(input: $input) { ...JobFields }
}"""
        + _JOB,
        {"input": {k: v for k, v in given.items() if v is not None}},
        True,
        lambda d: t.job(d["deepMemoryTrain"]),
    )


def deep_memory_switch(enabled: bool) -> Operation[t.DeepMemoryStatus]:
    field = "deepMemoryEnable" if enabled else "deepMemoryDisable"
    name = field[0].upper() + field[1:]
    return Operation(
        name,
        f"mutation {name} {{ {field} {{ ...DeepMemoryFields }} }}" + _DEEP_MEMORY,
        {},
        True,
        lambda d: t.deep_memory_status(d[field]),
    )


def delete_session(id: str) -> Operation[bool]:
    return Operation(
        "DeleteSession",
        "mutation DeleteSession($id: ID!) { deleteSession(id: $id) }",
        {"id": id},
        True,
        lambda d: bool(d["deleteSession"]),
    )


def export_my_data() -> Operation[t.Json]:
    return Operation(
        "ExportMyData",
        "mutation ExportMyData { exportMyData }",
        {},
        True,
        lambda d: dict(d["exportMyData"]),
    )


def delete_my_data() -> Operation[t.DeletionReport]:
    return Operation(
        "DeleteMyData",
        """mutation DeleteMyData {
  deleteMyData { existed sessions messages memories embeddings summaries }
}""",
        {},
        True,
        lambda d: t.deletion_report(d["deleteMyData"]),
    )


def chat(
    session: str,
    message: str,
    *,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    seed: int | None,
    stop: Sequence[str] | None,
    system: str | None,
    memory_top_k: int | None,
    mode: t.SearchMode,
) -> Subscription[t.ChatChunk]:
    chat_input: t.Json = {
        "session": session,
        "message": message,
        "stop": list(stop or []),
        "mode": t.upper(mode),
    }
    optional = {
        "maxTokens": max_tokens,
        "temperature": temperature,
        "topP": top_p,
        "topK": top_k,
        "seed": seed,
        "system": system,
        "memoryTopK": memory_top_k,
    }
    chat_input.update({k: v for k, v in optional.items() if v is not None})
    return Subscription(
        "Chat",
        """subscription Chat($input: ChatInput!) {
  chat(input: $input) {
    delta done
    result {
      text finishReason messageId replyId model confidence
      context { memoryId kind content session score createdAt }
      usage { promptTokens completionTokens totalTokens }
      latency { retrievalMs firstTokenMs totalMs }
    }
  }
}""",
        {"input": chat_input},
        lambda d: t.chat_chunk(d["chat"]),
    )


def memory_events() -> Subscription[t.MemoryEvent]:
    return Subscription(
        "MemoryEvents",
        """subscription MemoryEvents {
  memoryEvents { action memoryId kind memory { ...MemoryFields } }
}"""
        + _MEMORY,
        {},
        lambda d: t.memory_event(d["memoryEvents"]),
    )


def job_progress(id: str) -> Subscription[t.Job]:
    return Subscription(
        "JobProgress",
        "subscription JobProgress($id: ID!) { jobProgress(id: $id) { ...JobFields } }"
        + _JOB,
        {"id": id},
        lambda d: t.job(d["jobProgress"]),
    )
