"""The asyncio client against a real server: the main flow of test_client.py (each test runs its
own event loop with `asyncio.run`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from deep_recall_client import (
    AsyncDeepRecall,
    ChatChunk,
    ChatDelta,
    ChatFinal,
    DeepMemoryPair,
    DeepRecallError,
    MemoryEvent,
)

from .conftest import Server, make_token

T = TypeVar("T")


def run(
    server: Server, token: str, test: Callable[[AsyncDeepRecall], Awaitable[T]]
) -> T:
    """Runs `test` with a client of its own, in an event loop of its own, for 60 s at most."""

    async def main() -> T:
        async with AsyncDeepRecall(server.url, token=token, retry_delay=0.01) as c:
            return await asyncio.wait_for(test(c), 60)

    return asyncio.run(main())


async def collect(chunks: AsyncIterator[ChatChunk]) -> tuple[list[str], ChatFinal]:
    deltas: list[str] = []
    final: ChatFinal | None = None
    async for chunk in chunks:
        assert final is None, "nothing comes after the final result"
        if isinstance(chunk, ChatDelta):
            deltas.append(chunk.delta)
        else:
            final = chunk
    assert final is not None
    return deltas, final


def test_add_messages_search_and_pages(server: Server, token: str, user: str) -> None:
    async def test(c: AsyncDeepRecall) -> None:
        await c.add_messages(
            "trip",
            [
                {"role": "user", "content": "I moved to Lisbon in May."},
                {"role": "assistant", "content": "Lisbon is lovely in spring."},
            ],
        )
        for i in range(4):
            await c.add_messages(f"s{i}", [{"role": "user", "content": f"note {i}"}])
        hits = await c.search("Lisbon", mode="vector")
        assert hits and hits[0].memory.kind == "message"
        assert hits[0].memory.role in ("user", "assistant")
        assert all(isinstance(h.score, float) for h in hits)
        assert (await c.me()).id == user

        sessions = [s.id async for s in c.sessions(page_size=2)]
        assert sorted(sessions) == ["s0", "s1", "s2", "s3", "trip"]
        messages = [m.content async for m in c.messages("trip", page_size=1)]
        assert messages == ["I moved to Lisbon in May.", "Lisbon is lovely in spring."]
        memories = [m async for m in c.memories(page_size=2)]
        assert len(memories) == 6
        assert [m async for m in c.memories(kinds=["summary"])] == []

    run(server, token, test)


def test_delete_and_errors(server: Server, token: str) -> None:
    async def test(c: AsyncDeepRecall) -> None:
        memory = await c.add_memory("The boat is called Aurora.", kind="fact")
        assert await c.delete_memory(memory.id) is True
        assert [m async for m in c.memories()] == []
        with pytest.raises(DeepRecallError) as e:
            await c.delete_memory(memory.id)
        assert e.value.code == "NOT_FOUND"
        with pytest.raises(DeepRecallError) as e:
            await c.search("boat", top_k=-1)
        assert e.value.code == "BAD_INPUT"
        with pytest.raises(DeepRecallError) as e:
            await c.add_messages("s", [{"role": "user", "content": ""}])
        assert e.value.code == "BAD_INPUT"

    run(server, token, test)


def test_memories_stay_true_sessions_and_keys(server: Server, token: str) -> None:
    async def test(c: AsyncDeepRecall) -> None:
        paris = await c.add_memory("Jo lives in Paris.", metadata={"priority": 1})
        berlin = await c.add_memory(
            "Jo moved to Berlin.", supersedes=paris.id, metadata={"priority": 3}
        )
        q = "Where does Jo live?"
        assert paris.id not in [h.memory.id for h in await c.search(q)]
        history = await c.search(q, include_superseded=True)
        assert paris.id in [h.memory.id for h in history]
        then = await c.search(q, as_of=paris.created_at)
        assert [h.memory.id for h in then] == [paris.id]
        high = await c.search(
            "Jo", metadata=[{"key": "priority", "op": "gt", "value": 2}]
        )
        assert [h.memory.id for h in high] == [berlin.id]
        since = await c.search(q, include_superseded=True, since=berlin.created_at)
        assert [h.memory.id for h in since] == [berlin.id]
        listed = c.memories(as_of=paris.created_at)
        assert [m.id async for m in listed] == [paris.id]
        chain = await c.memory_history(paris.id)
        assert [m.id for m in chain] == [paris.id, berlin.id]
        brief = await c.add_memory("Locker 12 today.", ttl_seconds=60)
        assert brief.expires_at is not None
        s = await c.create_session("trip", persona="You are Moss, a quiet gardener.")
        assert s.persona == "You are Moss, a quiet gardener."
        persona = await c.search("gardener", kinds=["persona"])
        assert [h.memory.content for h in persona] == [s.persona]
        queued = await c.write_memory_keys(context=True, facts=False, sessions=False)
        seen = [j async for j in c.job_progress(queued.id)]
        assert seen[-1].status == "succeeded", seen
        assert await c.job(queued.id) == seen[-1]
        later = await c.schedule_delete_my_data(datetime.now(UTC) + timedelta(days=1))
        assert later.status == "queued"
        assert (await c.cancel_job(later.id)).status == "cancelled"
        status = await c.deep_memory_status()
        assert (status.trained, status.enabled) == (False, False)
        with pytest.raises(DeepRecallError) as e:
            await c.deep_memory_enable()
        assert e.value.code == "BAD_INPUT"
        pair: DeepMemoryPair = {
            "question": "Where does Jo live?",
            "memory_id": berlin.id,
        }
        assert await c.deep_memory_add_pairs([pair]) == 1
        assert (await c.deep_memory_disable()).enabled is False
        assert (await c.set_memory_keys(False)).enabled is False
        assert (await c.memory_keys()).enabled is False

    run(server, token, test)


def test_no_token_is_unauthenticated(server: Server) -> None:
    async def test(c: AsyncDeepRecall) -> None:
        with pytest.raises(DeepRecallError) as e:
            await c.me()
        assert (e.value.code, e.value.status) == ("UNAUTHENTICATED", 401)
        with pytest.raises(DeepRecallError) as e:
            await c.chat("s", "hello").__anext__()
        assert e.value.code == "UNAUTHENTICATED"

    run(server, "not-a-token", test)


def test_get_token_may_be_a_coroutine(server: Server, user: str) -> None:
    calls: list[str] = []

    async def get_token() -> str:
        calls.append("token")
        return make_token(user)

    async def main() -> None:
        async with AsyncDeepRecall(server.url, get_token=get_token) as c:
            assert (await c.me()).id == user
            _, final = await collect(c.chat("s", "hi", max_tokens=3))
            assert final.usage.completion_tokens > 0

    asyncio.run(main())
    assert calls == ["token", "token"]


def test_chat_streams_then_stops_early(server: Server, token: str) -> None:
    async def test(c: AsyncDeepRecall) -> None:
        told = await c.add_memory("My sister Margot lives in Lyon.")
        deltas, final = await collect(
            c.chat("visit", "Where does my sister live?", max_tokens=12)
        )
        assert deltas and final.text == "".join(deltas)
        assert told.id in [m.memory_id for m in final.context]
        assert final.finish_reason in ("stop", "length")
        assert final.usage.completion_tokens > 0

        # Leaving the loop early closes the subscription; the client goes on working.
        async for chunk in c.chat("visit", "Tell me a long story.", max_tokens=200):
            assert isinstance(chunk, ChatDelta)
            break
        chunks = c.chat("visit", "Another long story?", max_tokens=200)
        await chunks.__anext__()
        await chunks.aclose()
        assert await c.search("Margot")
        deltas, final = await collect(c.chat("visit", "Short answer?", max_tokens=4))
        assert final.text == "".join(deltas)

    run(server, token, test)


def test_memory_events_report_additions(server: Server, token: str) -> None:
    async def test(c: AsyncDeepRecall) -> None:
        async def first_event() -> MemoryEvent:
            async for event in c.memory_events():
                return event
            raise AssertionError("the events ended")

        listener = asyncio.ensure_future(first_event())
        # Added again and again: events are delivered from the moment the subscription
        # reaches the server, which the protocol does not acknowledge.
        for _ in range(75):
            await c.add_memory("I started learning the cello.")
            done, _ = await asyncio.wait({listener}, timeout=0.2)
            if done:
                break
        event = await asyncio.wait_for(listener, 1)
        assert event.action == "added" and event.kind == "fact"
        assert event.memory is not None
        assert event.memory.content == "I started learning the cello."

    run(server, token, test)


def test_export_and_delete_my_data(server: Server, token: str, user: str) -> None:
    async def test(c: AsyncDeepRecall) -> None:
        await c.add_messages("diary", [{"role": "user", "content": "I adopted Miso."}])
        exported = await c.export_my_data()
        assert "Miso" in str(exported) and user in str(exported)
        report = await c.delete_my_data()
        assert report.existed and report.messages == 1 and report.memories == 1
        assert [s async for s in c.sessions()] == []

    run(server, token, test)


def test_many_clients_at_once(server: Server) -> None:
    """Requests and subscriptions of several clients run concurrently in one loop."""

    async def one(i: int) -> str:
        async with AsyncDeepRecall(server.url, token=make_token(f"py-many-{i}")) as c:
            await c.add_memory(f"my number is {i}")
            _, final = await collect(c.chat("s", "my number?", max_tokens=3))
            return final.context[0].content

    async def main() -> list[str]:
        tasks: list[Coroutine[Any, Any, str]] = [one(i) for i in range(3)]
        return await asyncio.wait_for(asyncio.gather(*tasks), 120)

    assert asyncio.run(main()) == [f"my number is {i}" for i in range(3)]
