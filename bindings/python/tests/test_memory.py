"""The Python package against the embedded store and Postgres: isolation, the reference
cosine, export and forget, errors as exceptions, streaming chat, and asyncio."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import pathlib
import re
import threading
import time
from collections.abc import Iterator
from typing import Callable

import pytest
from conftest import ROOT, Store, models_dir
from deep_recall import (
    AsyncMemory,
    ChatResult,
    DeepRecallError,
    Hit,
    InvalidInput,
    KeyStatus,
    Memory,
    ModelError,
    NotFound,
    Session,
    StoredMemory,
    Unavailable,
)


def test_users_are_isolated(store: Store) -> None:
    m = store.memory
    alice, bob = store.user("alice"), store.user("bob")
    ids = m.add_messages(
        alice,
        "trip",
        [
            {"role": "user", "content": "I moved to Lisbon in May.", "tags": ["home"]},
            {"role": "assistant", "content": "Lisbon is lovely in spring."},
        ],
    )
    assert len(ids) == 2 and ids[0] < ids[1]
    m.add_messages(
        bob,
        "trip",
        [{"role": "user", "content": "Bob keeps his savings in a Lisbon bank."}],
    )
    for mode in ["hybrid", "vector", "text"]:
        hits = m.search(alice, "Lisbon savings bank", mode=mode)
        assert hits, mode
        assert all(isinstance(h, Hit) for h in hits)
        assert not any("Bob" in h.content for h in hits), mode
        assert {h.session for h in hits} == {"trip"}
    assert [h.role for h in m.search(alice, "Lisbon", session="trip", top_k=2)] != []
    assert m.search(alice, "Lisbon", session="elsewhere") == []

    exported = m.export(alice)
    assert exported["user"]["id"] == alice
    assert [x["content"] for x in exported["messages"]] == [
        "I moved to Lisbon in May.",
        "Lisbon is lovely in spring.",
    ]
    assert exported["messages"][0]["tags"] == ["home"]
    assert "savings" not in json.dumps(exported)

    report = m.forget(alice)
    assert report["existed"] is True and report["messages"] == 2
    assert m.search(alice, "Lisbon") == []
    with pytest.raises(NotFound):
        m.export(alice)
    assert m.search(bob, "Lisbon")[0].content.startswith("Bob"), "Bob keeps his"


def test_the_reference_cosine(store: Store) -> None:
    m = store.memory
    u = store.user("ref")
    m.add_messages(u, "s", [{"role": "user", "content": "A man is eating food."}])
    hits = m.search(u, "A man is eating a piece of bread.", mode="vector")
    assert hits[0].content == "A man is eating food."
    assert hits[0].score == pytest.approx(0.7553, abs=1e-3)
    assert hits[0].created_at.tzinfo is not None


def test_errors_are_typed_exceptions(store: Store, tmp_path: object) -> None:
    m = store.memory
    u = store.user("err")
    cases: list[Callable[[], object]] = [
        lambda: m.add_messages(u, "s", [{"role": "user", "content": ""}]),
        lambda: m.add_messages(u, "s", [{"role": "robot", "content": "hi"}]),
        lambda: m.add_messages(u, "", [{"role": "user", "content": "hi"}]),
        lambda: m.add_messages(
            u, "s", [{"role": "user", "content": "hi", "ts": "yesterday"}]
        ),
        lambda: m.search(u, "x", mode="fuzzy"),
        lambda: m.search(u, "x", top_k=0),
        lambda: m.search(u, "x", top_k=-1),
        lambda: list(m.memories(u, page_size=-1)),
        lambda: list(m.sessions(u, page_size=-1)),
        lambda: m.search(u, ""),
    ]
    for case in cases:
        with pytest.raises(InvalidInput):
            case()
    with pytest.raises(NotFound):
        m.export(u)
    assert issubclass(InvalidInput, DeepRecallError)
    # Nothing was half-written by the refused calls.
    assert m.search(u, "hi") == []


def test_missing_models_and_an_unreachable_database() -> None:
    with pytest.raises(ModelError):
        Memory(
            data_dir="/tmp/deep-recall-py-no-models", models_dir="/nonexistent/models"
        )
    with pytest.raises(Unavailable):
        Memory(
            database_url="postgres://nobody@127.0.0.1:9/none", models_dir=models_dir()
        )


def test_a_closed_memory_refuses_calls(tmp_path: pathlib.Path) -> None:
    data = str(tmp_path / "data")
    with Memory(data_dir=data, models_dir=models_dir(), device="cpu") as m:
        m.add_memory("ivy", "Ivy grows tomatoes.")
    with pytest.raises(InvalidInput, match="closed"):
        m.search("ivy", "What does Ivy grow?")
    m.close()

    async def go() -> None:
        async with AsyncMemory(
            data_dir=data, models_dir=models_dir(), device="cpu"
        ) as a:
            hits = await a.search("ivy", "What does Ivy grow?")
            assert "tomatoes" in hits[0].content
        with pytest.raises(InvalidInput, match="closed"):
            await a.search("ivy", "tomatoes")

    asyncio.run(go())


def test_a_stream_outlives_the_memory_that_started_it(tmp_path: pathlib.Path) -> None:
    def ask() -> Iterator[str | ChatResult]:
        m = Memory(
            data_dir=str(tmp_path / "data"), models_dir=models_dir(), device="cpu"
        )
        return m.chat_stream("kim", "c", "Hello!", max_tokens=4)

    # The Memory is gone from the caller's hands: the stream still ends with its result.
    pieces = list(ask())
    assert pieces and isinstance(pieces[-1], ChatResult), pieces


def test_chat_streams_deltas_then_the_result(chat_memory: Memory) -> None:
    m = chat_memory
    m.add_messages(
        "maya", "facts", [{"role": "user", "content": "My favourite city is Paris."}]
    )
    pieces = list(
        m.chat_stream("maya", "talk", "What is the capital of France?", max_tokens=24)
    )
    *deltas, result = pieces
    assert deltas and all(isinstance(d, str) for d in deltas)
    assert isinstance(result, ChatResult)
    assert result.text == "".join(str(d) for d in deltas)
    assert "Paris" in result.text
    assert result.usage.completion_tokens > 0
    assert (
        result.usage.total_tokens
        == result.usage.prompt_tokens + result.usage.completion_tokens
    )
    assert any("Paris" in h.content for h in result.context)
    assert result.reply_id is not None and result.message_id < result.reply_id
    whole = m.chat("maya", "talk2", "Say hello.", max_tokens=6, temperature=0.0, seed=7)
    assert whole.usage.completion_tokens <= 6
    assert whole.finish_reason in ("stop", "length")
    with pytest.raises(InvalidInput):
        m.chat("maya", "talk", "hi", max_tokens=0)
    with pytest.raises(InvalidInput):
        m.chat("maya", "talk", "hi", temperature=9.0)
    # How many memories reach the prompt, and how they are found.
    m.add_memory("maya", "My sister lives in Lyon and plays the cello.")
    m.add_memory("maya", "My sister's cello teacher is from Lyon.")
    ask = "Where does my sister live?"
    one = m.chat("maya", "talk3", ask, max_tokens=2, memory_top_k=1)
    assert len(one.context) == 1 and "Lyon" in one.context[0].content
    wide = m.chat("maya", "talk5", ask, max_tokens=2, top_k=5)
    assert len(wide.context) >= 2
    odd = "Qwertyuiop zxcvbnm?"
    assert m.chat("maya", "talk4", odd, max_tokens=2, mode="text").context == []
    assert m.chat("maya", "talk4", odd, max_tokens=2, mode="vector").context != []
    for bad in ({"memory_top_k": 0}, {"mode": "sideways"}, {"top_k": 0}):
        with pytest.raises(InvalidInput):
            m.chat("maya", "talk", "hi", **bad)
    # Leaving a stream early stops it; the user message is kept, no half answer.
    stream = m.chat_stream(
        "maya", "cut", "Tell me a long story about the sea.", max_tokens=200
    )
    first = next(stream)
    assert isinstance(first, str)
    stream.close()  # type: ignore[attr-defined]
    time.sleep(0.5)
    messages = m.export("maya")["messages"]
    assert [x["role"] for x in messages if x["session"] == "cut"] == ["user"]


def test_asyncio_runs_searches_together_without_blocking_the_loop(store: Store) -> None:
    u = store.user("async")

    async def main() -> None:
        memory = AsyncMemory.of(store.memory)  # the same engine, used from asyncio
        await memory.add_messages(
            u,
            "s",
            [
                {"role": "user", "content": "My sister Ana is a marine biologist."},
                {"role": "user", "content": "I play the cello on Sundays."},
            ],
        )
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        a, b = await asyncio.gather(
            memory.search(u, "What does my sister do?"),
            memory.search(u, "Which instrument do I play?"),
        )
        t.cancel()
        assert "marine biologist" in a[0].content
        assert "cello" in b[0].content
        assert ticks > 0, "the event loop kept running while Rust worked"
        exported = await memory.export(u)
        assert len(exported["messages"]) == 2
        listed = [x.content async for x in memory.memories(u, page_size=1)]
        assert sorted(listed) == sorted(m["content"] for m in exported["messages"])
        assert [x.id async for x in memory.sessions(u)] == ["s"]

    asyncio.run(main())


def test_async_memory_opens_and_streams(chat_memory: Memory, tmp_path: object) -> None:
    async def main() -> None:
        memory = await AsyncMemory.open(
            data_dir=f"{tmp_path}/data", models_dir=models_dir(), device="cpu"
        )
        await memory.add_messages(
            "zoe", "s", [{"role": "user", "content": "I live in Oslo."}]
        )
        pieces = [
            p
            async for p in memory.chat_stream(
                "zoe", "c", "Where do I live?", max_tokens=12
            )
        ]
        assert isinstance(pieces[-1], ChatResult)
        assert pieces[-1].text == "".join(p for p in pieces[:-1] if isinstance(p, str))
        with pytest.raises(InvalidInput):
            await memory.search("zoe", "x", mode="fuzzy")

        # A stream given up on (a timeout, a cancelled task) ends with that, not another
        # error, and the memory goes on working.
        async def read_all() -> None:
            async for _ in memory.chat_stream(
                "zoe", "long", "Tell me a long story about the sea.", max_tokens=400
            ):
                pass

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(read_all(), 0.3)
        again = [
            p async for p in memory.chat_stream("zoe", "c", "Hello!", max_tokens=4)
        ]
        assert isinstance(again[-1], ChatResult)

    asyncio.run(main())


def test_async_streams_leave_the_default_executor_free(chat_memory: Memory) -> None:
    """A stream waits for its pieces on threads of its own: with the loop's default
    executor busy (here its one thread), it still reads to the end."""

    async def main() -> None:
        memory = AsyncMemory.of(chat_memory)
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
        stream = memory.chat_stream("ola", "c", "Tell me about the sea.", max_tokens=8)
        pieces = [await asyncio.wait_for(stream.__anext__(), 60)]
        release = threading.Event()
        busy = loop.run_in_executor(None, release.wait)
        try:

            async def rest() -> None:
                async for p in stream:
                    pieces.append(p)

            await asyncio.wait_for(rest(), 30)
        finally:
            release.set()
            await busy
        assert isinstance(pieces[-1], ChatResult), pieces

    asyncio.run(main())


def test_the_shared_vectors(tmp_path: object) -> None:
    """The core's results on tests/vectors/retrieval.json, reproduced through the package."""
    vectors = json.loads((ROOT / "tests" / "vectors" / "retrieval.json").read_text())
    m = Memory(data_dir=f"{tmp_path}/data", models_dir=models_dir(), device="cpu")
    m.add_messages("vectors", vectors["session"], vectors["messages"])
    for case in vectors["queries"]:
        hits = m.search(
            "vectors", case["query"], top_k=case["top_k"], mode=case["mode"]
        )
        expected = case["expected"]
        assert [h.content for h in hits] == [e["content"] for e in expected], case
        for h, e in zip(hits, expected):
            assert h.score == pytest.approx(e["score"], abs=1e-4), case


def test_int8_embeddings_find_the_same_memory(tmp_path: object) -> None:
    """`embedding_precision="int8"` loads the int8 forward pass; a search still finds the
    memory that answers, and an unknown precision is an InvalidInput before anything opens."""
    m = Memory(
        data_dir=f"{tmp_path}/data",
        models_dir=models_dir(),
        device="cpu",
        embedding_precision="int8",
    )
    m.add_messages(
        "ines",
        "s",
        [
            {"role": "user", "content": "My dog Biscuit is a beagle."},
            {"role": "user", "content": "I work night shifts at the hospital."},
        ],
    )
    hits = m.search("ines", "What breed is my pet?", top_k=1, mode="vector")
    assert [h.content for h in hits] == ["My dog Biscuit is a beagle."]
    with pytest.raises(InvalidInput, match="precision"):
        Memory(
            data_dir=f"{tmp_path}/other",
            models_dir=models_dir(),
            embedding_precision="int4",
        )


def test_memories_stay_true(store: Store, tmp_path: object) -> None:
    m = store.memory
    alice, bob = store.user("alice"), store.user("bob")
    paris = m.add_memory(alice, "Alice lives in Paris.", metadata={"topic": "home"})
    assert isinstance(paris, StoredMemory) and paris.kind == "fact"
    assert paris.metadata["topic"] == "home"
    berlin = m.add_memory(
        alice,
        "Alice moved to Berlin.",
        supersedes=paris.id,
        metadata={"topic": "home", "priority": 3},
    )
    assert berlin.supersedes == paris.id
    hits = m.search(alice, "Where does Alice live?")
    assert berlin.id in [h.memory_id for h in hits]
    assert paris.id not in [h.memory_id for h in hits]
    # History, and what was true when Paris was stored.
    assert [h.id for h in m.memory_history(alice, berlin.id)] == [paris.id, berlin.id]
    then = m.search(alice, "Where does Alice live?", filter={"as_of": paris.created_at})
    assert [h.memory_id for h in then] == [paris.id]
    # Listings, a page at a time: the current facts, or the history with them.
    assert [x.id for x in m.memories(alice, page_size=1)] == [berlin.id]
    listed = m.memories(alice, filter={"include_superseded": True}, page_size=1)
    assert [x.id for x in listed] == [berlin.id, paris.id]
    assert [x.id for x in m.memories(bob)] == []
    # A hit says where it stands in the history: the old fact names its replacement.
    both = m.search(
        alice, "Where does Alice live?", filter={"include_superseded": True}
    )
    by_id = {h.memory_id: h for h in both}
    assert by_id[paris.id].superseded_by == berlin.id
    assert by_id[paris.id].superseded_at is not None
    assert by_id[berlin.id].supersedes == paris.id
    assert by_id[berlin.id].superseded_by is None
    assert by_id[berlin.id].expires_at is None
    assert by_id[berlin.id].importance == berlin.importance
    # Metadata conditions.
    high = m.search(
        alice,
        "Alice",
        filter={"metadata": [{"key": "priority", "op": "gte", "value": 2}]},
    )
    assert [h.memory_id for h in high] == [berlin.id]
    # A message's metadata is its memory's: conditions find it by what it came with.
    m.add_messages(
        alice,
        "chat",
        [
            {
                "role": "user",
                "content": "Alice parks at the station.",
                "metadata": {"channel": "sms"},
            },
            {
                "role": "user",
                "content": "Alice parks in the garage.",
                "metadata": {"channel": "email"},
            },
        ],
    )
    sms = m.search(
        alice,
        "Where does Alice park?",
        filter={"metadata": [{"key": "channel", "op": "eq", "value": "sms"}]},
    )
    assert [h.content for h in sms] == ["Alice parks at the station."]
    by_channel = m.memories(
        alice,
        filter={
            "kinds": ["message"],
            "metadata": [{"key": "channel", "op": "eq", "value": "email"}],
        },
    )
    assert [x.content for x in by_channel] == ["Alice parks in the garage."]
    assert [x.id for x in m.sessions(alice, page_size=1)] == ["chat"]
    assert list(m.sessions(bob)) == []
    with pytest.raises(InvalidInput):
        list(m.memories(alice, page_size=0))
    with pytest.raises(InvalidInput):
        list(m.memories(alice, filter={"metadata": [{"key": "k", "op": "near"}]}))
    assert sms[0].metadata["channel"] == "sms"
    # Expiry.
    brief = m.add_memory(alice, "Parking spot B12 today.", ttl_seconds=3600)
    assert brief.expires_at is not None and brief.expires_at > paris.created_at
    spot = m.search(alice, "parking spot B12")
    assert [h.expires_at for h in spot if h.memory_id == brief.id] == [brief.expires_at]
    # Bad input is a typed exception and writes nothing; Bob cannot reach Alice's memory.
    with pytest.raises(InvalidInput):
        m.add_memory(alice, "x", ttl_seconds=0)
    with pytest.raises(InvalidInput):
        m.search(
            alice, "x", filter={"metadata": [{"key": "p", "op": "bigger", "value": 1}]}
        )
    with pytest.raises(InvalidInput):
        m.search(alice, "x", filter={"as_off": "2024-01-01T00:00:00Z"})
    with pytest.raises(NotFound):
        m.add_memory(bob, "Bob's takeover", supersedes=berlin.id)
    with pytest.raises(NotFound):
        m.memory_history(bob, berlin.id)
    # Deleting the replacement makes the old fact current again.
    assert m.delete_memories(alice, [berlin.id]) == 1
    hits = m.search(alice, "Where does Alice live?")
    assert paris.id in [h.memory_id for h in hits]


def test_a_persona_card_becomes_persona_memories(store: Store) -> None:
    m = store.memory
    alice, bob = store.user("alice"), store.user("bob")
    card = "You are Captain Rhea, a retired sea captain from Valparaiso.\n" + " ".join(
        f"In her {i}th year at sea Rhea anchored at {port} and learnt the local knots."
        for i, port in enumerate(["Cape Town", "Hobart", "Reykjavik", "Dakar"], 10)
    )
    card += "\nRhea rounded Cape Horn twelve times and never lost a sailor."
    session = m.create_session(alice, "voyage", title="Voyage", persona=card)
    assert isinstance(session, Session)
    assert (session.id, session.title, session.persona) == ("voyage", "Voyage", card)
    assert session.created_at.tzinfo is not None
    # Times cross from the native layer as Python 3.9's `fromisoformat` reads them: six
    # digits of a second and `+00:00` (it takes no `Z`, nor nine digits).
    wire = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
    raw = json.loads(m._engine.sessions(alice, 10))["items"][0]
    assert wire.match(raw["created_at"]) and wire.match(raw["updated_at"]), raw
    only_persona = {"kinds": ["persona"]}
    q = "How many times did the captain round Cape Horn?"
    hits = m.search(alice, q, top_k=10, session="voyage", filter=only_persona)
    assert len(hits) >= 2, "a long card comes as chunks"
    assert all(h.kind == "persona" and len(h.content) <= 400 for h in hits)
    assert "Cape Horn" in hits[0].content
    assert m.search(bob, q, filter=only_persona) == []
    # A title alone leaves the card; a new card replaces the chunks.
    assert m.create_session(alice, "voyage", title="Renamed").persona == card
    m.create_session(alice, "voyage", persona="You are Moss, a quiet gardener.")
    hits = m.search(alice, q, top_k=10, filter=only_persona)
    assert [h.content for h in hits] == ["You are Moss, a quiet gardener."]


def test_deduplication_and_tag_ttl_are_options(tmp_path: object) -> None:
    data = str(tmp_path) + "/data"
    m = Memory(
        data_dir=data,
        models_dir=models_dir(),
        device="cpu",
        dedupe_similarity=0.95,
        tag_ttl_seconds={"scratch": 60},
    )
    first = m.add_memory("u", "I am allergic to peanuts")
    again = m.add_memory("u", "I am allergic to peanuts.")
    assert again.id == first.id and again.metadata["merged"] == 1
    note = m.add_memory("u", "Scratch: call the plumber", tags=["scratch"])
    assert note.expires_at is not None
    assert (note.expires_at - note.created_at).total_seconds() <= 61
    for bad in [
        {"dedupe_similarity": 1.5},
        {"tag_ttl_seconds": {"x": 0}},
        {"tag_ttl_seconds": {"x": -1}},
    ]:
        with pytest.raises(InvalidInput):
            Memory(data_dir=data + "2", models_dir=models_dir(), device="cpu", **bad)  # type: ignore[arg-type]


TURN = "We took the ferry across the Tagus estuary to see the old shipyards."
REPLY = "Exactly, that's the project."


def text_hits(m: Memory, user: str) -> list[str]:
    """What a text search for the turn's words finds: the reply says none of them, so it
    comes back only through its key (which holds the turn before it)."""
    return [h.content for h in m.search(user, "Tagus estuary shipyards", mode="text")]


def test_memory_keys_are_written_in_the_background(
    store: Store, tmp_path: object
) -> None:
    if store.kind == "embedded":
        m = Memory(
            data_dir=str(tmp_path) + "/keys",
            models_dir=models_dir(),
            device="cpu",
            memory_keys_check_seconds=1,
        )
    else:
        m = Memory(
            database_url=store.memory_url,
            models_dir=models_dir(),
            device="cpu",
            memory_keys_check_seconds=1,
        )
    u, other = store.user("keys"), store.user("other")
    m.add_messages(
        u,
        "harbour",
        [{"role": "user", "content": TURN}, {"role": "assistant", "content": REPLY}],
    )
    m.add_messages(other, "harbour", [{"role": "user", "content": TURN}])
    # Searchable at once by its own words; by the turn before once its key is written.
    assert REPLY in [h.content for h in m.search(u, "the project", mode="text")]
    deadline = time.monotonic() + 60
    while REPLY not in text_hits(m, u) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(text_hits(m, u)) == sorted([TURN, REPLY])
    status = m.memory_keys(u)
    assert status == KeyStatus(enabled=True, keys=1)
    # Keys never cross users: the other user's search finds their own turn only.
    assert text_hits(m, other) == [TURN]

    assert m.set_memory_keys(u, False) == KeyStatus(enabled=False, keys=0)
    assert text_hits(m, u) == [TURN]
    m.forget(u)
    m.forget(other)


def test_another_process_writes_are_seen_at_once(store: Store) -> None:
    """Two `Memory` on one database (two processes, or one beside a server): the other's
    writes and deletions drop this one's cached searches at once, not after the cache's
    minute (a forgotten user's turns must not come back from the cache)."""
    if store.kind == "embedded":
        pytest.skip("an embedded store is one process's")
    reader = Memory(
        database_url=store.memory_url,
        models_dir=models_dir(),
        device="cpu",
        memory_keys_check_seconds=0,
    )
    u = store.user("shared")
    store.memory.add_messages(u, "harbour", [{"role": "user", "content": TURN}])

    def found() -> list[str]:
        return [h.content for h in reader.search(u, "Tagus estuary", mode="text")]

    assert found() == [TURN]  # and cached
    more = "The Tagus estuary is wide where it meets Lisbon."
    store.memory.add_messages(u, "harbour", [{"role": "user", "content": more}])
    deadline = time.monotonic() + 15
    while len(found()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(found()) == sorted([TURN, more])
    store.memory.forget(u)
    deadline = time.monotonic() + 15
    while found() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert found() == []


def test_memory_keys_written_on_demand_and_off_for_new_users(tmp_path: object) -> None:
    m = Memory(
        data_dir=str(tmp_path) + "/now",
        models_dir=models_dir(),
        device="cpu",
        memory_keys_check_seconds=0,
    )
    turns = [{"role": "user", "content": TURN}, {"role": "assistant", "content": REPLY}]
    m.add_messages("ana", "harbour", turns)
    assert m.memory_keys("ana") == KeyStatus(enabled=True, keys=0)
    assert text_hits(m, "ana") == [TURN]
    assert m.write_memory_keys("ana") == 1
    assert REPLY in text_hits(m, "ana")
    assert m.write_memory_keys("ana") == 0, "nothing left to key"
    assert asyncio.run(AsyncMemory.of(m).memory_keys("ana")).keys == 1

    off = Memory(
        data_dir=str(tmp_path) + "/off",
        models_dir=models_dir(),
        device="cpu",
        memory_keys=False,
        memory_keys_check_seconds=1,
    )
    off.add_messages("ben", "harbour", turns)
    assert off.memory_keys("ben") == KeyStatus(enabled=False, keys=0)
    with pytest.raises(InvalidInput):
        off.write_memory_keys("ben")
    time.sleep(2.5)
    assert text_hits(off, "ben") == [TURN], "no background keys while they are off"
    assert off.set_memory_keys("ben", True).enabled
    assert off.write_memory_keys("ben") == 1
    assert REPLY in text_hits(off, "ben")
