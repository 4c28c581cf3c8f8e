"""The blocking client against a real server: writes and search, pagination, deletion, errors,
users kept apart, streamed chat (to the end and stopped early), memory events, export and
deletion of a user's data, anonymous mode."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from deep_recall_client import (
    ChatChunk,
    ChatDelta,
    ChatFinal,
    DeepMemoryPair,
    DeepRecall,
    DeepRecallError,
    Job,
    MemoryEvent,
    SearchHit,
)

from .conftest import Server, make_token


@pytest.fixture
def client(server: Server, token: str) -> Iterator[DeepRecall]:
    with DeepRecall(server.url, token=token, retry_delay=0.01) as c:
        yield c


def test_add_messages_then_search(client: DeepRecall, user: str) -> None:
    stored = client.add_messages(
        "trip",
        [
            {"role": "user", "content": "I moved to Lisbon in May.", "tags": ["home"]},
            {"role": "assistant", "content": "Lisbon is lovely in spring."},
        ],
    )
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[0].session == "trip" and stored[0].tags == ["home"]
    assert stored[0].created_at.endswith(("Z", "+00:00"))

    for mode in ("hybrid", "vector", "text"):
        hits = client.search("Where do I live now? Lisbon", mode=mode)
        assert hits, mode
        assert all(isinstance(h, SearchHit) for h in hits)
        assert all(isinstance(h.score, float) for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert {h.memory.kind for h in hits} == {"message"}
        assert {h.memory.role for h in hits} <= {"user", "assistant"}
        assert any(h.memory.content == "I moved to Lisbon in May." for h in hits)
    hits = client.search("Lisbon", top_k=1, session="trip", kinds=["message"])
    assert len(hits) == 1 and hits[0].memory.session == "trip"
    assert client.search("Lisbon", session="elsewhere") == []
    said = client.search("Lisbon", roles=["assistant"])
    assert [h.memory.content for h in said] == ["Lisbon is lovely in spring."]

    me = client.me()
    assert me.id == user and me.admin is False and me.memory_count == 2
    assert me.created_at is not None


def test_pagination_over_several_pages(client: DeepRecall) -> None:
    for i in range(5):
        client.add_messages(f"s{i}", [{"role": "user", "content": f"note number {i}"}])
    client.add_messages(
        "long", [{"role": "user", "content": f"line {i}"} for i in range(5)]
    )

    sessions = list(client.sessions(page_size=2))
    assert {s.id for s in sessions} == {"s0", "s1", "s2", "s3", "s4", "long"}
    assert len(sessions) == 6

    messages = list(client.messages("long", page_size=2))
    assert [m.content for m in messages] == [f"line {i}" for i in range(5)]
    assert all(m.session == "long" and m.role == "user" for m in messages)

    memories = list(client.memories(page_size=2))
    assert len(memories) == 10 and len({m.id for m in memories}) == 10
    in_long = list(client.memories(session="long", kinds=["message"], page_size=2))
    assert sorted(m.content for m in in_long) == [f"line {i}" for i in range(5)]
    assert list(client.memories(kinds=["fact"], page_size=2)) == []


def test_delete_memory_then_it_is_gone(client: DeepRecall) -> None:
    memory = client.add_memory(
        "My sister Margot lives in Lyon.", tags=["family"], importance=0.8
    )
    assert memory.kind == "fact" and memory.tags == ["family"]
    assert memory.importance == pytest.approx(0.8)
    assert [m.id for m in client.memories()] == [memory.id]

    assert client.delete_memory(memory.id) is True
    assert list(client.memories()) == []
    assert client.search("Where does Margot live?") == []
    with pytest.raises(DeepRecallError) as e:
        client.delete_memory(memory.id)
    assert e.value.code == "NOT_FOUND" and e.value.status == 200


def test_a_replaced_fact_stays_as_history(client: DeepRecall, server: Server) -> None:
    paris = client.add_memory("Hana lives in Paris.", metadata={"topic": "home"})
    berlin = client.add_memory(
        "Hana moved to Berlin.",
        supersedes=paris.id,
        metadata={"topic": "home", "priority": 3},
    )
    assert berlin.supersedes == paris.id
    found = [h.memory.id for h in client.search("Where does Hana live?")]
    assert berlin.id in found and paris.id not in found
    history = client.memory_history(berlin.id)
    assert [m.id for m in history] == [paris.id, berlin.id]
    assert history[0].superseded_by == berlin.id
    everything = client.search("Where does Hana live?", include_superseded=True)
    assert paris.id in [h.memory.id for h in everything]
    then = client.search("Where does Hana live?", as_of=paris.created_at)
    assert [h.memory.id for h in then] == [paris.id]
    high = client.search(
        "Hana", metadata=[{"key": "priority", "op": "gte", "value": 2}]
    )
    assert [h.memory.id for h in high] == [berlin.id]
    # By when each was written (`since` inclusive, `until` exclusive), in a search and a
    # listing; a listing as of a time, with the history, and by metadata.
    q = "Where does Hana live?"
    since = client.search(q, include_superseded=True, since=berlin.created_at)
    assert [h.memory.id for h in since] == [berlin.id]
    until = client.search(q, include_superseded=True, until=berlin.created_at)
    assert [h.memory.id for h in until] == [paris.id]
    assert [m.id for m in client.memories()] == [berlin.id]
    assert [m.id for m in client.memories(include_superseded=True)] == [
        berlin.id,
        paris.id,
    ]
    assert [m.id for m in client.memories(as_of=paris.created_at)] == [paris.id]
    listed = client.memories(
        include_superseded=True,
        metadata=[{"key": "priority", "op": "exists", "value": False}],
    )
    assert [m.id for m in listed] == [paris.id]
    brief = client.add_memory("Parking spot B12.", ttl_seconds=3600)
    assert brief.expires_at is not None and brief.expires_at > brief.created_at
    with pytest.raises(DeepRecallError) as e:
        client.add_memory("x", ttl_seconds=0)
    assert e.value.code == "BAD_INPUT"
    with DeepRecall(server.url, token=make_token("other-user")) as other:
        with pytest.raises(DeepRecallError) as e:
            other.add_memory("takeover", supersedes=berlin.id)
        assert e.value.code == "NOT_FOUND"


def test_a_persona_card_becomes_persona_memories(
    client: DeepRecall, server: Server
) -> None:
    card = "You are Captain Rhea, a retired sea captain.\nRhea rounded Cape Horn twelve times."
    s = client.create_session("voyage", title="Voyage", persona=card)
    assert (s.id, s.title, s.persona) == ("voyage", "Voyage", card)
    q = "How many times did the captain round Cape Horn?"
    hits = client.search(q, kinds=["persona"])
    assert hits and all(h.memory.kind == "persona" for h in hits)
    assert "Cape Horn" in hits[0].memory.content
    # A title alone leaves the card; nobody else finds it.
    assert client.create_session("voyage", title="Renamed").persona == card
    with DeepRecall(server.url, token=make_token("persona-other")) as other:
        assert other.search(q, kinds=["persona"]) == []


def test_memory_keys_are_switched_per_user(client: DeepRecall) -> None:
    client.add_memory("Ines keeps bees on the roof.")
    off = client.set_memory_keys(False)
    assert (off.enabled, off.keys) == (False, 0)
    assert client.memory_keys() == off
    assert client.set_memory_keys(True).enabled is True
    assert client.memory_keys().enabled is True


def test_background_jobs_are_followed_and_cancelled(
    client: DeepRecall, server: Server
) -> None:
    client.add_messages(
        "harbour",
        [
            {"role": "user", "content": "We took the ferry across the Tagus estuary."},
            {"role": "assistant", "content": "Exactly, that's the project."},
        ],
    )
    queued = client.write_memory_keys(context=True, facts=False, sessions=False)
    assert isinstance(queued, Job) and queued.kind == "memory_keys"
    seen = list(client.job_progress(queued.id))
    assert seen[0].id == queued.id
    last = seen[-1]
    assert last.status == "succeeded", seen
    assert last.finished_at is not None and isinstance(last.result, dict)
    assert client.job(queued.id) == last
    assert client.memory_keys().keys >= 1
    with pytest.raises(DeepRecallError) as e:
        client.write_memory_keys(context=False, facts=False, sessions=False)
    assert e.value.code == "BAD_INPUT"
    # A deletion an hour ahead waits; cancelled, it never runs. Nobody else sees either job.
    later = client.schedule_delete_my_data(datetime.now(UTC) + timedelta(hours=1))
    assert (later.kind, later.status) == ("delete_user", "queued")
    with DeepRecall(server.url, token=make_token("jobs-other")) as other:
        assert other.job(queued.id) is None
        with pytest.raises(DeepRecallError) as e:
            list(other.job_progress(queued.id))
        assert e.value.code == "NOT_FOUND"
        with pytest.raises(DeepRecallError) as e:
            other.cancel_job(later.id)
        assert e.value.code == "NOT_FOUND"
    assert client.cancel_job(later.id).status == "cancelled"
    job = client.job(later.id)
    assert job is not None and job.status == "cancelled"
    assert client.me().memory_count >= 2


PEOPLE = [
    "Ada",
    "Bram",
    "Cleo",
    "Dev",
    "Esme",
    "Finn",
    "Gia",
    "Hal",
    "Ines",
    "Jude",
    "Kai",
    "Lea",
    "Milo",
    "Nia",
    "Oren",
    "Pia",
    "Quin",
    "Rui",
    "Sia",
    "Tom",
    "Uli",
    "Vera",
    "Wim",
    "Xia",
    "Yael",
    "Zed",
    "Alba",
    "Bo",
    "Cai",
    "Dita",
]
HOBBIES = [
    "violin",
    "kayak",
    "telescope",
    "sourdough",
    "chess",
    "pottery",
    "orchids",
    "fencing",
    "karate",
    "origami",
    "beekeeping",
    "archery",
    "juggling",
    "knitting",
    "climbing",
    "surfing",
    "baking",
    "rowing",
    "tango",
    "calligraphy",
    "sailing",
    "fishing",
    "cycling",
    "painting",
    "birding",
    "yoga",
    "pinball",
    "gardening",
    "carving",
    "poetry",
]


def test_deep_memory_is_trained_and_switched(
    client: DeepRecall, server: Server
) -> None:
    # Enough memories that some are held out for the evaluation (a fifth of them, by id).
    pairs: list[DeepMemoryPair] = []
    for name, hobby in zip(PEOPLE, HOBBIES):
        m = client.add_memory(f"{name} spends every Sunday on {hobby}.")
        pairs.append(
            {"question": f"What does {name} do on Sundays?", "memory_id": m.id}
        )
        pairs.append(
            {"question": f"Which hobby fills {name}'s weekends?", "memory_id": m.id}
        )
    before = client.deep_memory_status()
    assert (before.pairs, before.trained, before.enabled) == (0, False, False)
    assert before.memories == len(PEOPLE) and before.evaluation is None
    with pytest.raises(DeepRecallError) as e:
        client.deep_memory_enable()
    assert e.value.code == "BAD_INPUT"
    assert client.deep_memory_add_pairs(pairs) == len(pairs)
    with DeepRecall(server.url, token=make_token("deep-other")) as other:
        with pytest.raises(DeepRecallError) as e:
            other.deep_memory_add_pairs([pairs[0]])
        assert e.value.code == "NOT_FOUND"
        assert other.deep_memory_status().pairs == 0
    generate = client.deep_memory_generate(max_pairs=1)
    assert generate.kind == "deep_memory_generate"
    generated = list(client.job_progress(generate.id))[-1]
    assert generated.status == "succeeded" and generated.result is not None, generated
    assert client.deep_memory_status().generated_pairs == generated.result["pairs"]
    train = client.deep_memory_train(epochs=10)
    trained = list(client.job_progress(train.id))[-1]
    assert trained.status == "succeeded", trained
    after = client.deep_memory_status()
    assert (after.trained, after.version, after.enabled) == (True, 1, False)
    ev = after.evaluation
    assert ev is not None and ev.pairs > 0, after
    assert 0 <= ev.before.mrr <= 1 and 0 <= ev.after.recall_at_10 <= 1
    # It can be turned on only when it helps; off at once.
    if ev.helps:
        on = client.deep_memory_enable()
        assert (on.enabled, on.active) == (True, True)
    else:
        with pytest.raises(DeepRecallError) as e:
            client.deep_memory_enable()
        assert e.value.code == "BAD_INPUT"
    assert client.deep_memory_disable().enabled is False


def test_bad_input_is_bad_input(client: DeepRecall) -> None:
    with pytest.raises(DeepRecallError) as e:
        client.search("anything", top_k=-1)
    assert e.value.code == "BAD_INPUT"
    with pytest.raises(DeepRecallError) as e:
        client.add_messages("s", [{"role": "user", "content": ""}])
    assert e.value.code == "BAD_INPUT" and "empty" in e.value.message
    with pytest.raises(DeepRecallError) as e:
        client.add_messages(
            "s",
            [
                {"role": "user", "content": "ok"},
                {"role": "user", "content": "late", "ts": "2024-01-01"},  # type: ignore[typeddict-unknown-key]
            ],
        )
    assert e.value.code == "BAD_INPUT" and "message 1" in e.value.message
    assert "ts" in e.value.message
    with pytest.raises(DeepRecallError) as e:
        client.add_memory("ok", importance=7)
    assert e.value.code == "BAD_INPUT"
    with pytest.raises(DeepRecallError) as e:
        client.delete_memory("not-a-number")
    assert e.value.code == "BAD_INPUT"
    # Nothing of it was written.
    assert list(client.sessions()) == []


def test_no_or_invalid_token_is_unauthenticated(server: Server, user: str) -> None:
    tokens = [
        None,
        "not-a-token",
        make_token(user, secret="another-secret-0123456789"),
        make_token(user, expires_in=-3600),
    ]
    for token in tokens:
        with DeepRecall(server.url, token=token, retry_delay=0.01) as c:
            with pytest.raises(DeepRecallError) as e:
                c.me()
            assert e.value.code == "UNAUTHENTICATED", token
            assert e.value.status == 401
            with pytest.raises(DeepRecallError) as e:
                next(c.chat("s", "hello", max_tokens=4))
            assert e.value.code == "UNAUTHENTICATED", token


def test_get_token_is_called_for_every_request(server: Server, user: str) -> None:
    calls: list[str] = []

    def get_token() -> str:
        calls.append("token")
        return make_token(user)

    with DeepRecall(server.url, get_token=get_token) as c:
        c.add_memory("I like green tea.")
        assert c.me().id == user
        chunks = list(c.chat("s", "Which tea?", max_tokens=4))
        assert isinstance(chunks[-1], ChatFinal)
    assert len(calls) == 3


def test_users_see_only_their_own_data(server: Server) -> None:
    alice, bob = make_token("py-alice-iso"), make_token("py-bob-iso")
    with (
        DeepRecall(server.url, token=alice) as a,
        DeepRecall(server.url, token=bob) as b,
    ):
        a.add_messages("secret", [{"role": "user", "content": "My PIN is 4921."}])
        fact = a.add_memory("Alice keeps her savings in a Lisbon bank.")
        assert [s.id for s in a.sessions()] == ["secret"]

        assert list(b.sessions()) == []
        assert list(b.memories()) == []
        assert list(b.messages("secret")) == []
        assert b.search("PIN savings Lisbon bank") == []
        with pytest.raises(DeepRecallError) as e:
            b.delete_memory(fact.id)
        assert e.value.code == "NOT_FOUND"
        assert len(list(a.memories())) == 2


def _chat(chunks: Iterator[ChatChunk]) -> tuple[list[ChatDelta], ChatFinal]:
    deltas: list[ChatDelta] = []
    final: ChatFinal | None = None
    for chunk in chunks:
        assert final is None, "nothing comes after the final result"
        if isinstance(chunk, ChatDelta):
            deltas.append(chunk)
        else:
            final = chunk
    assert final is not None
    return deltas, final


def test_chat_streams_deltas_then_the_result(client: DeepRecall) -> None:
    told = client.add_memory("My sister Margot lives in Lyon and teaches the violin.")
    deltas, final = _chat(
        client.chat("visit", "Where does my sister Margot live?", max_tokens=12, seed=7)
    )
    assert deltas and all(d.delta for d in deltas)
    assert final.text == "".join(d.delta for d in deltas)
    assert told.id in [c.memory_id for c in final.context]
    assert {c.kind for c in final.context} <= {"fact", "message"}
    assert final.finish_reason in ("stop", "length")
    assert 0 < final.usage.completion_tokens <= 12
    assert final.usage.total_tokens == (
        final.usage.prompt_tokens + final.usage.completion_tokens
    )
    assert final.model and final.reply_id is not None
    assert final.latency.total_ms >= final.latency.first_token_ms >= 0
    # The turn was stored: the question, then the answer.
    stored = list(client.messages("visit"))
    assert [(m.role, m.id) for m in stored] == [
        ("user", final.message_id),
        ("assistant", final.reply_id),
    ]


def test_stopping_a_chat_early_leaves_the_client_usable(client: DeepRecall) -> None:
    client.add_memory("I am allergic to peanuts.")
    for chunk in client.chat(
        "s", "Tell me a long story about peanuts.", max_tokens=200
    ):
        assert isinstance(chunk, ChatDelta)
        break
    assert client.search("peanuts")
    deltas, final = _chat(client.chat("s", "And a short one?", max_tokens=6))
    assert final.text == "".join(d.delta for d in deltas)

    chunks = client.chat("s", "One more?", max_tokens=200)
    next(chunks)
    chunks.close()
    assert client.me().memory_count >= 1


def _first_event(listener: DeepRecall, writer: DeepRecall, content: str) -> MemoryEvent:
    """The first event the listener gets while the writer adds `content` (again and again:
    events are delivered from the moment the subscription reaches the server, which the
    protocol does not acknowledge). The writer closes the listener after 15 s, which ends
    the wait with an error."""
    stop = threading.Event()

    def write() -> None:
        for _ in range(75):
            writer.add_memory(content)
            if stop.wait(0.2):
                return
        listener.close()

    thread = threading.Thread(target=write)
    events = listener.memory_events()
    try:
        thread.start()
        return next(events)
    finally:
        events.close()
        stop.set()
        thread.join()


def test_memory_events_report_additions(
    server: Server, client: DeepRecall, token: str
) -> None:
    with DeepRecall(server.url, token=token) as writer:
        event = _first_event(client, writer, "I started learning the cello.")
    assert event.action == "added" and event.kind == "fact"
    assert event.memory is not None
    assert event.memory.content == "I started learning the cello."
    assert event.memory_id == event.memory.id


def test_export_and_delete_my_data(client: DeepRecall, user: str) -> None:
    client.add_messages(
        "diary", [{"role": "user", "content": "I adopted a cat, Miso."}]
    )
    client.add_memory("The cat is called Miso.", session="diary")
    exported = client.export_my_data()
    assert "Miso" in str(exported)
    assert user in str(exported)

    report = client.delete_my_data()
    assert report.existed is True
    assert (report.sessions, report.messages, report.memories) == (1, 1, 2)
    assert (report.embeddings, report.summaries) == (2, 0)
    assert list(client.sessions()) == []
    assert list(client.memories()) == []
    assert client.search("Miso") == []
    assert client.delete_my_data().existed is False


def test_anonymous_mode_names_the_user(anonymous_server: Server, user: str) -> None:
    url = anonymous_server.url
    with DeepRecall(url, user=user) as c, DeepRecall(url, user=user) as writer:
        assert c.me().id == user
        c.add_memory("Anonymous users are for development.")
        with DeepRecall(url, user=user + "-other") as other:
            assert list(other.memories()) == []
        # Over the WebSocket too (`x-user-id` in the connection_init payload).
        event = _first_event(c, writer, "mine")
        assert event.memory is not None and event.memory.content == "mine"
    with DeepRecall(url) as nobody:
        with pytest.raises(DeepRecallError) as e:
            nobody.me()
        assert e.value.code == "UNAUTHENTICATED"
        with pytest.raises(DeepRecallError) as e:
            next(nobody.memory_events())
        assert e.value.code == "UNAUTHENTICATED"


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        DeepRecall("http://localhost:8080", token="a", get_token=lambda: "b")
    with pytest.raises(ValueError):
        DeepRecall("http://localhost:8080", token="a", user="u")
    with pytest.raises(ValueError):
        DeepRecall("localhost:8080")
