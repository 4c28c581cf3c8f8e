"""The Python client of a Deep Recall server (`deep-recall serve`): long-term memory for LLMs
over GraphQL.

    from deep_recall_client import DeepRecall

    with DeepRecall("http://localhost:8080", token=jwt) as client:
        client.add_messages("trip", [{"role": "user", "content": "I'm allergic to peanuts."}])
        print(client.search("What can't I eat?")[0].memory.content)

`DeepRecall` blocks; `AsyncDeepRecall` has the same methods for asyncio. Every failure is a
`DeepRecallError` with a stable `code`.
"""

from __future__ import annotations

from ._async_client import AsyncDeepRecall, TokenSource
from ._client import DeepRecall
from ._errors import DeepRecallError, ErrorCode
from ._types import (
    ChatChunk,
    ChatDelta,
    ChatFinal,
    ContextMemory,
    DeepMemoryEvaluation,
    DeepMemoryPair,
    DeepMemoryStatus,
    DeletionReport,
    FinishReason,
    Job,
    JobKind,
    JobStatus,
    Json,
    Latency,
    Memory,
    MemoryAction,
    MemoryEvent,
    MemoryKeysStatus,
    MemoryKind,
    Message,
    MetadataCondition,
    MetadataOp,
    NewMessage,
    RecallFigures,
    Role,
    SearchHit,
    SearchMode,
    Session,
    Time,
    Usage,
    User,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncDeepRecall",
    "ChatChunk",
    "ChatDelta",
    "ChatFinal",
    "ContextMemory",
    "DeepMemoryEvaluation",
    "DeepMemoryPair",
    "DeepMemoryStatus",
    "DeepRecall",
    "DeepRecallError",
    "DeletionReport",
    "ErrorCode",
    "FinishReason",
    "Job",
    "JobKind",
    "JobStatus",
    "Json",
    "Latency",
    "Memory",
    "MemoryAction",
    "MemoryEvent",
    "MemoryKeysStatus",
    "MemoryKind",
    "Message",
    "MetadataCondition",
    "MetadataOp",
    "NewMessage",
    "RecallFigures",
    "Role",
    "SearchHit",
    "SearchMode",
    "Session",
    "Time",
    "TokenSource",
    "Usage",
    "User",
]
