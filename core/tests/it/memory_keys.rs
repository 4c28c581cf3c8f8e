//! Extra keys on both stores with the packaged MiniLM: off until the user turns them on; the
//! job writes one per message (resumable, rate-limited, through the job runner with
//! progress); a key's match brings back its message, never the key; keys go with their
//! memory and when keys are turned off; and another user's keys never touch a user's ranking.
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use recall_core::embed::Embedder;
use recall_core::error::ErrorKind;
use recall_core::jobs::JobStatus;
use recall_core::llm::ChatModel;
use recall_core::memory_keys::{KeyOptions, KeyStatus};
use recall_core::retrieval::{RetrieveOptions, SearchMode};
use recall_core::runner::{JobRunner, JobRunnerConfig};
use recall_core::store::{self, StoreConfig};
use recall_core::types::{Actor, Filter, Memory, MemoryKind, NewMessage, PageRequest, Role};
use recall_core::{Engine, MemoryUpdate, SearchOptions};

use crate::fixtures::{PgDb, ScriptedChat, cpu_embedder, fact, minilm_dir};

/// A chat model that knows the fact in some messages and the topic of some stretches of
/// conversation (a stand-in for the local model, whose facts are not the point here) and
/// answers "?" for the rest.
fn fact_writer() -> ScriptedChat {
    ScriptedChat {
        name: "fact-writer",
        reply: Box::new(|prompt| {
            if prompt.ends_with("Topic:") {
                return if prompt.contains("Rome") {
                    "Caroline and Melanie plan Caroline's trip to Rome in June."
                } else if prompt.contains("weekend") {
                    "Caroline and Melanie catch up on their weekend."
                } else {
                    "?"
                }
                .to_owned();
            }
            TURNS
                .iter()
                .find(|(message, fact)| fact.is_some() && prompt.contains(&format!("): {message}")))
                .and_then(|(_, fact)| *fact)
                .unwrap_or("?")
                .to_owned()
        }),
    }
}

/// A second session, about a trip: only its first turn names the city.
const TRIP: [&str; 3] = [
    "Caroline: I booked my flights to Rome for June!",
    "Melanie: Which museums are you going to see there?",
    "Caroline: The Vatican museums and the Borghese gallery, I hope.",
];

/// The conversation: (speaker line, the fact the model reads in it).
const TURNS: [(&str, Option<&str>); 6] = [
    ("Melanie: What did you get up to this weekend?", None),
    (
        "Caroline: I finally signed the papers for the little guy, he sleeps on my feet now!",
        Some("Caroline adopted a puppy from the animal shelter."),
    ),
    (
        "Caroline: My sister's puppy chewed through my favourite shoes again.",
        None,
    ),
    (
        "Caroline: I have been painting sunsets by the lake again.",
        Some("Caroline paints sunsets at the lake."),
    ),
    (
        "Melanie: Work has been hectic, the quarterly review is next week.",
        Some("Melanie has a quarterly review at work."),
    ),
    (
        "Caroline: The pottery class starts on Thursday evening.",
        Some("Caroline takes a pottery class on Thursday evenings."),
    ),
];

const QUESTION: &str = "Did Caroline adopt a puppy?";

/// The keys the chat model writes (facts, and topics where asked), without context keys
/// (their own test is below).
fn model_keys() -> KeyOptions {
    KeyOptions {
        facts: true,
        context: false,
        ..KeyOptions::default()
    }
}

fn minilm() -> Arc<dyn Embedder> {
    cpu_embedder(&minilm_dir())
}

async fn ingest(engine: &Engine, user: &str) -> Vec<Memory> {
    let t = Utc.with_ymd_and_hms(2023, 5, 8, 13, 0, 0).unwrap();
    let messages = TURNS
        .iter()
        .enumerate()
        .map(|(i, (text, _))| NewMessage {
            created_at: Some(t + chrono::Duration::minutes(i as i64)),
            ..NewMessage::new(
                "s1",
                if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                },
                *text,
            )
        })
        .collect();
    let out = engine.add_messages(user, messages).await.unwrap();
    let mut memories = Vec::new();
    for id in out.iter().flat_map(|a| &a.memory_ids) {
        memories.push(engine.memory(user, *id).await.unwrap().unwrap());
    }
    assert_eq!(memories.len(), TURNS.len());
    memories
}

async fn ingest_trip(engine: &Engine, user: &str) -> Vec<i64> {
    let t = Utc.with_ymd_and_hms(2023, 5, 20, 9, 0, 0).unwrap();
    let messages = TRIP
        .iter()
        .enumerate()
        .map(|(i, text)| NewMessage {
            created_at: Some(t + chrono::Duration::minutes(i as i64)),
            ..NewMessage::new("s2", Role::User, *text)
        })
        .collect();
    let out = engine.add_messages(user, messages).await.unwrap();
    out.iter().flat_map(|a| a.memory_ids.clone()).collect()
}

/// The ids of the memories a full-text search for `query` finds.
async fn text_found(engine: &Engine, user: &str, query: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = engine
        .retrieve(
            user,
            query,
            &RetrieveOptions::for_mode(SearchMode::Text, 10),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.memory.id)
        .collect();
    ids.sort_unstable();
    ids
}

async fn ranking(engine: &Engine, user: &str, query: &str, filter: Filter) -> Vec<Memory> {
    let options = RetrieveOptions {
        filter,
        ..RetrieveOptions::for_mode(SearchMode::Hybrid, 10)
    };
    engine
        .retrieve(user, query, &options)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.memory)
        .collect()
}

async fn keys_of(engine: &Engine, user: &str) -> Vec<Memory> {
    let filter = Filter {
        kinds: vec![MemoryKind::Key],
        ..Filter::default()
    };
    engine
        .memories(
            user,
            &filter,
            &PageRequest {
                first: 100,
                after: None,
            },
        )
        .await
        .unwrap()
        .items
}

async fn memory_keys(pg: bool) {
    let root = tempfile::tempdir().unwrap();
    let db = if pg { Some(PgDb::create().await) } else { None };
    let config = match &db {
        Some(db) => StoreConfig::postgres(db.url.clone()),
        None => StoreConfig::embedded(root.path().join("store")),
    };
    let writer = Arc::new(fact_writer());
    let engine = Engine::new(store::open(&config).await.unwrap(), minilm())
        .with_llm(Some(writer as Arc<dyn ChatModel>));
    let alice = ingest(&engine, "alice").await;
    let trip = ingest_trip(&engine, "alice").await;
    let adopted = alice[1].clone();
    // Bob said the same things; he never turns keys on.
    ingest(&engine, "bob").await;
    let bob_trip = ingest_trip(&engine, "bob").await;
    let bob_before = ranking(&engine, "bob", QUESTION, Filter::default()).await;
    // Only the first turn of the trip names Rome.
    assert_eq!(text_found(&engine, "alice", "Rome").await, trip[..1]);

    // Without keys her sister's puppy outranks the adoption, which never says "puppy".
    let before = ranking(&engine, "alice", QUESTION, Filter::default()).await;
    assert_ne!(before[0].id, adopted.id, "{:?}", before[0].content);

    // Off by default: the job refuses, and nobody adds a key by hand.
    let status = engine.memory_keys_status("alice").await.unwrap();
    assert!(!status.enabled);
    let err = engine
        .write_memory_keys("alice", &model_keys(), &mut |_, _, _| {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = engine
        .queue_memory_keys_job("alice", &model_keys(), &Actor("test".into()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = engine
        .add_memory(
            "alice",
            recall_core::NewMemoryText {
                kind: MemoryKind::Key,
                ..fact("Caroline adopted a puppy.")
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");

    // On: the job runs through the runner, one group at a time, and reports progress.
    let status = engine.set_memory_keys("alice", true).await.unwrap();
    assert!(status.enabled && status.keys == 0, "{status:?}");
    let runner = JobRunner::start(
        engine.clone(),
        JobRunnerConfig {
            worker: "keys-test".into(),
            poll_interval: Duration::from_millis(50),
            ..JobRunnerConfig::default()
        },
    );
    let options = KeyOptions {
        concurrency: 2,
        pause_ms: 20,
        sessions: true,
        session_turns: 4,
        ..model_keys()
    };
    let job = engine
        .queue_memory_keys_job("alice", &options, &Actor("test".into()))
        .await
        .unwrap();
    let job = loop {
        let j = engine.job("alice", job.id).await.unwrap().unwrap();
        if j.status.is_final() {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    runner.stop().await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.progress, 1.0, "{job:?}");
    // Facts for four turns (the other five have none); topics for three windows (the weekend
    // in two of three turns, the trip), of which the model knows two.
    let result = job.result.unwrap();
    assert_eq!(result["keys"], 10, "{result}");
    assert_eq!(result["rejected"], 5, "{result}");
    assert_eq!(result["session_keys"], 6, "{result}");
    assert_eq!(result["windows"], 3, "{result}");
    assert_eq!(result["rejected_windows"], 1, "{result}");
    assert_eq!(result["left"], 0, "{result}");

    // The keys point at their messages and carry the day they were said.
    let keys = keys_of(&engine, "alice").await;
    assert_eq!(keys.len(), 10);
    let is_session = |k: &Memory| k.metadata["key"] == "session";
    let key = keys
        .iter()
        .find(|k| k.key_for == Some(adopted.id) && !is_session(k))
        .unwrap();
    assert_eq!(
        key.content,
        format!(
            "Caroline adopted a puppy from the animal shelter. (said on Monday, 8 May 2023)\n{}",
            adopted.content
        )
    );
    assert_eq!(key.session.as_deref(), Some("s1"));
    assert_eq!(key.created_at, adopted.created_at);
    assert_eq!(key.metadata["model"], "fact-writer");
    assert_eq!(key.metadata["key"], "fact");
    // Session keys: the window's topic for each of its turns, then the turn.
    let mut session_keyed: Vec<i64> = keys
        .iter()
        .filter(|k| is_session(k))
        .filter_map(|k| k.key_for)
        .collect();
    session_keyed.sort_unstable();
    let mut expected: Vec<i64> = alice[..3]
        .iter()
        .map(|m| m.id)
        .chain(trip.clone())
        .collect();
    expected.sort_unstable();
    assert_eq!(session_keyed, expected);
    let museums = keys.iter().find(|k| k.key_for == Some(trip[1])).unwrap();
    assert_eq!(
        museums.content,
        format!(
            "Caroline and Melanie plan Caroline's trip to Rome in June. (conversation of \
             Saturday, 20 May 2023)\n{}",
            TRIP[1]
        )
    );
    assert_eq!(museums.session.as_deref(), Some("s2"));
    assert_eq!(engine.memory_keys_status("alice").await.unwrap().keys, 10);

    // Every turn of the trip is found by the city's name now; Bob's are as before.
    assert_eq!(text_found(&engine, "alice", "Rome").await, trip);
    assert_eq!(text_found(&engine, "bob", "Rome").await, bob_trip[..1]);

    // A second run has nothing left to do: it reads nothing before the watermark (turns
    // without a fact or topic are not asked again).
    let again = engine
        .write_memory_keys("alice", &model_keys(), &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(
        (again.keys, again.skipped, again.memories, again.windows),
        (0, 0, 0, 0)
    );
    assert_eq!(
        engine
            .user("alice")
            .await
            .unwrap()
            .unwrap()
            .memory_keys_through,
        trip.iter().max().copied()
    );

    // The key's match is the message's: it now ranks first, and no key is ever returned.
    let after = ranking(&engine, "alice", QUESTION, Filter::default()).await;
    assert_eq!(after[0].id, adopted.id, "{:?}", after[0].content);
    assert!(after.iter().all(|m| m.kind != MemoryKind::Key));
    let mut ids: Vec<i64> = after.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), after.len(), "each memory once");
    let page = engine
        .search("alice", QUESTION, &SearchOptions::default())
        .await
        .unwrap();
    assert!(page.hits.iter().all(|h| h.memory.kind != MemoryKind::Key));
    assert_eq!(page.hits[0].memory.id, adopted.id);
    // A filter on the message's kind still reads keys; one on another kind does not.
    let messages = Filter {
        kinds: vec![MemoryKind::Message],
        ..Filter::default()
    };
    assert_eq!(
        ranking(&engine, "alice", QUESTION, messages).await[0].id,
        adopted.id
    );
    let in_other_session = Filter {
        session: Some("elsewhere".into()),
        ..Filter::default()
    };
    assert!(
        ranking(&engine, "alice", QUESTION, in_other_session)
            .await
            .is_empty()
    );

    // Another user's keys touch nothing of Bob's: the same ranking, his memories only.
    let bob_after = ranking(&engine, "bob", QUESTION, Filter::default()).await;
    let bob_ids = |r: &[Memory]| r.iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(bob_ids(&bob_after), bob_ids(&bob_before));
    let alice_ids: Vec<i64> = alice
        .iter()
        .map(|m| m.id)
        .chain(keys.iter().map(|k| k.id))
        .collect();
    assert!(bob_after.iter().all(|m| !alice_ids.contains(&m.id)));
    assert_eq!(engine.memory_keys_status("bob").await.unwrap().keys, 0);

    // New text drops the keys written about the old; deletion takes them along.
    let painting = &alice[3];
    engine
        .update_memory(
            "alice",
            painting.id,
            MemoryUpdate {
                content: Some("Caroline: I sold my first painting.".into()),
                ..MemoryUpdate::default()
            },
        )
        .await
        .unwrap();
    let keys = keys_of(&engine, "alice").await;
    assert_eq!(keys.len(), 9);
    assert!(keys.iter().all(|k| k.key_for != Some(painting.id)));
    engine
        .delete_memories("alice", &[adopted.id])
        .await
        .unwrap();
    let keys = keys_of(&engine, "alice").await;
    assert_eq!(keys.len(), 7);
    assert!(keys.iter().all(|k| k.key_for != Some(adopted.id)));
    let gone = ranking(&engine, "alice", QUESTION, Filter::default()).await;
    assert!(
        gone.iter()
            .all(|m| m.id != adopted.id && m.kind != MemoryKind::Key)
    );

    // Off: the keys are deleted and the job refuses again.
    let status = engine.set_memory_keys("alice", false).await.unwrap();
    assert!(!status.enabled && status.keys == 0, "{status:?}");
    assert!(keys_of(&engine, "alice").await.is_empty());
    assert_eq!(
        engine
            .write_memory_keys("alice", &model_keys(), &mut |_, _, _| {})
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    if let Some(db) = db {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_on_the_embedded_store() {
    memory_keys(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_on_postgres() {
    memory_keys(true).await;
}

/// Facts and session topics each have their own watermark: a job without session keys
/// leaves them to a later one that has them (turned on later, they still read the turns
/// stored before), and neither pass asks again what the other already read.
async fn passes_have_their_own_watermarks(pg: bool) {
    let root = tempfile::tempdir().unwrap();
    let db = if pg { Some(PgDb::create().await) } else { None };
    let config = match &db {
        Some(db) => StoreConfig::postgres(db.url.clone()),
        None => StoreConfig::embedded(root.path().join("store")),
    };
    let engine = Engine::new(store::open(&config).await.unwrap(), minilm())
        .with_llm(Some(Arc::new(fact_writer()) as Arc<dyn ChatModel>));
    ingest(&engine, "alice").await;
    let trip = ingest_trip(&engine, "alice").await;
    let last = *trip.iter().max().unwrap();
    engine.set_memory_keys("alice", true).await.unwrap();
    let watermarks = || async {
        let u = engine.user("alice").await.unwrap().unwrap();
        (u.memory_keys_through, u.memory_sessions_through)
    };
    let run = |options: KeyOptions| {
        let engine = engine.clone();
        async move {
            engine
                .write_memory_keys("alice", &options, &mut |_, _, _| {})
                .await
                .unwrap()
        }
    };
    let sessions = KeyOptions {
        session_turns: 4,
        sessions: true,
        ..model_keys()
    };

    // Facts only (the default): four facts, no window read, the sessions' watermark unset.
    let facts = run(model_keys()).await;
    assert_eq!((facts.keys, facts.memories, facts.windows), (4, 9, 0));
    assert_eq!(watermarks().await, (Some(last), None));

    // Session keys only, later: every turn stored before is read for its topic, no fact is
    // asked again.
    let topics = KeyOptions {
        facts: false,
        ..sessions.clone()
    };
    let report = run(topics).await;
    assert_eq!(
        (
            report.keys,
            report.session_keys,
            report.memories,
            report.windows,
            report.rejected_windows
        ),
        (6, 6, 0, 3, 1)
    );
    assert_eq!(watermarks().await, (Some(last), Some(last)));

    // Both: nothing is left to read (and nothing is read: both watermarks are past it).
    let again = run(sessions.clone()).await;
    assert_eq!(
        (again.keys, again.memories, again.windows, again.skipped),
        (0, 0, 0, 0)
    );

    // A new turn: read by each pass once.
    let t = Utc.with_ymd_and_hms(2023, 5, 20, 9, 30, 0).unwrap();
    let added = engine
        .add_messages(
            "alice",
            vec![NewMessage {
                created_at: Some(t),
                ..NewMessage::new("s2", Role::User, "Caroline: Rome in June will be hot.")
            }],
        )
        .await
        .unwrap();
    let new = added[0].memory_ids[0];
    let once = run(sessions.clone()).await;
    assert_eq!((once.memories, once.windows), (1, 1));
    assert_eq!(watermarks().await, (Some(new), Some(new)));
    assert_eq!(run(sessions).await.windows, 0);
    if let Some(db) = db {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_on_the_embedded_store() {
    passes_have_their_own_watermarks(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_on_postgres() {
    passes_have_their_own_watermarks(true).await;
}

/// Keys turned off while a job runs: the group being written is taken back, the report
/// counts only what earlier groups wrote (topics included), and no key is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_turned_off_during_a_run() {
    let root = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::embedded(root.path().join("store")))
        .await
        .unwrap();
    // The model stops at the first prompt about the trip (the last group) until told to go.
    let (reached_tx, reached_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(Some((reached_tx, go_rx)));
    let inner = fact_writer();
    let model = ScriptedChat {
        name: "fact-writer",
        reply: Box::new(move |prompt| {
            if prompt.contains("Rome")
                && let Some((reached, go)) = gate.lock().unwrap().take()
            {
                reached.send(()).unwrap();
                go.recv().unwrap();
            }
            (inner.reply)(prompt)
        }),
    };
    let engine = Engine::new(store, minilm()).with_llm(Some(Arc::new(model) as Arc<dyn ChatModel>));
    ingest(&engine, "alice").await;
    ingest_trip(&engine, "alice").await;
    engine.set_memory_keys("alice", true).await.unwrap();
    let options = KeyOptions {
        sessions: true,
        session_turns: 4,
        ..model_keys()
    };
    let job = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .write_memory_keys("alice", &options, &mut |_, _, _| {})
                .await
        }
    });
    tokio::task::spawn_blocking(move || reached_rx.recv().unwrap())
        .await
        .unwrap();
    engine.set_memory_keys("alice", false).await.unwrap();
    go_tx.send(()).unwrap();
    let report = job.await.unwrap().unwrap();
    // The two windows of the first session: four facts and the weekend's three topics; the
    // trip's three topics were written, then taken back.
    assert_eq!((report.keys, report.session_keys), (7, 3), "{report:?}");
    assert_eq!(report.windows, 3, "{report:?}");
    assert!(keys_of(&engine, "alice").await.is_empty());
    assert!(!engine.memory_keys_status("alice").await.unwrap().enabled);
}

/// Context keys, on one store: written without a chat model for each turn with one before it
/// in its session (the turn before, then the turn), so a search for what the turn before
/// said finds the turn; never for another user; gone with the turn they quote.
async fn context_keys(pg: bool) {
    let root = tempfile::tempdir().unwrap();
    let db = if pg { Some(PgDb::create().await) } else { None };
    let config = match &db {
        Some(db) => StoreConfig::postgres(db.url.clone()),
        None => StoreConfig::embedded(root.path().join("store")),
    };
    // No chat model: facts are refused, context keys (the default) are not.
    let engine = Engine::new(store::open(&config).await.unwrap(), minilm());
    let trip = ingest_trip(&engine, "alice").await;
    let bob_trip = ingest_trip(&engine, "bob").await;
    assert_eq!(text_found(&engine, "alice", "Rome").await, trip[..1]);
    const MUSEUMS: &str = "Which museums are on the Rome trip?";
    let place = |r: &[Memory]| r.iter().position(|m| m.id == trip[1]);
    let before = place(&ranking(&engine, "alice", MUSEUMS, Filter::default()).await);
    engine.set_memory_keys("alice", true).await.unwrap();
    let facts = KeyOptions {
        facts: true,
        ..KeyOptions::default()
    };
    let err = engine
        .write_memory_keys("alice", &facts, &mut |_, _, _| {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let context_only = KeyOptions::default();
    assert!(!context_only.facts && !context_only.sessions && context_only.context);
    let mut progress = Vec::new();
    let report = engine
        .write_memory_keys("alice", &context_only, &mut |done, total, keys| {
            progress.push((done, total, keys))
        })
        .await
        .unwrap();
    // The first turn of the session has none before it.
    assert_eq!(
        (
            report.keys,
            report.context_keys,
            report.skipped,
            report.left
        ),
        (2, 2, 1, 0),
        "{report:?}"
    );
    assert_eq!(progress.last(), Some(&(3, 3, 2)), "{progress:?}");
    let keys = keys_of(&engine, "alice").await;
    let museums = keys.iter().find(|k| k.key_for == Some(trip[1])).unwrap();
    assert_eq!(museums.content, format!("{}\n{}", TRIP[0], TRIP[1]));
    assert_eq!(museums.metadata["key"], "context");
    assert_eq!(museums.metadata["context_of"], trip[0]);
    assert_eq!(museums.session.as_deref(), Some("s2"));

    // "Rome" is in the first turn only; the museums question after it is found by it now,
    // as itself (never the key). Bob's turns are as before.
    assert_eq!(text_found(&engine, "alice", "Rome").await, trip[..2]);
    let hits = ranking(&engine, "alice", MUSEUMS, Filter::default()).await;
    assert!(place(&hits) < before, "{before:?} {hits:?}");
    assert!(hits.iter().all(|m| m.kind != MemoryKind::Key));
    assert_eq!(text_found(&engine, "bob", "Rome").await, bob_trip[..1]);
    assert_eq!(engine.memory_keys_status("bob").await.unwrap().keys, 0);

    // The run read her memories through the last turn: the next reads none of them; a new
    // turn gets its key in the next run, which reads only it.
    let through = |engine: &Engine| {
        let engine = engine.clone();
        async move {
            let u = engine.user("alice").await.unwrap().unwrap();
            (u.memory_context_through, u.memory_context_epoch)
        }
    };
    let (mark, epoch) = through(&engine).await;
    assert_eq!(mark, Some(trip[2]));
    let mut progress = Vec::new();
    let again = engine
        .write_memory_keys("alice", &context_only, &mut |done, total, keys| {
            progress.push((done, total, keys))
        })
        .await
        .unwrap();
    assert_eq!(
        (again.keys, again.skipped, again.left),
        (0, 0, 0),
        "{again:?}"
    );
    assert_eq!(progress, [(0, 0, 0)]);
    let t = Utc.with_ymd_and_hms(2023, 5, 20, 9, 10, 0).unwrap();
    let more = engine
        .add_messages(
            "alice",
            vec![NewMessage {
                created_at: Some(t),
                ..NewMessage::new("s2", Role::User, "Melanie: Send me photos of the gallery!")
            }],
        )
        .await
        .unwrap();
    let last = more[0].memory_ids[0];
    let again = engine
        .write_memory_keys("alice", &context_only, &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!((again.context_keys, again.skipped), (1, 0), "{again:?}");
    let key = keys_of(&engine, "alice")
        .await
        .into_iter()
        .find(|k| k.key_for == Some(last))
        .unwrap();
    assert_eq!(key.metadata["context_of"], trip[2]);
    assert_eq!(through(&engine).await, (Some(last), epoch));

    // Deleting the first turn takes the key that quotes it: "Rome" is in no row of hers.
    engine.delete_memories("alice", &trip[..1]).await.unwrap();
    assert!(text_found(&engine, "alice", "Rome").await.is_empty());
    // New text in a turn drops the key that quotes the old (and the turn's own).
    engine
        .update_memory(
            "alice",
            trip[2],
            MemoryUpdate {
                content: Some("Caroline: Only the Uffizi this time.".into()),
                ..MemoryUpdate::default()
            },
        )
        .await
        .unwrap();
    let keys = keys_of(&engine, "alice").await;
    assert!(keys.is_empty(), "{keys:?}");
    assert!(text_found(&engine, "alice", "Vatican").await.is_empty());
    // The watermark went back before the first turn changed, in a new epoch each time.
    assert_eq!(through(&engine).await, (Some(trip[0] - 1), epoch + 2));
    // The next run keys the turns again from what is there now.
    let again = engine
        .write_memory_keys("alice", &context_only, &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(again.context_keys, 2, "{again:?}");
    let key = keys_of(&engine, "alice")
        .await
        .into_iter()
        .find(|k| k.key_for == Some(last))
        .unwrap();
    assert_eq!(
        key.content,
        "Caroline: Only the Uffizi this time.\nMelanie: Send me photos of the gallery!"
    );
    if let Some(db) = db {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_keys_on_the_embedded_store() {
    context_keys(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_keys_on_postgres() {
    context_keys(true).await;
}

/// An embedder that deletes a memory of Alice's, or gives one new text, the first time it
/// is asked for a context key (a text of two turns): a turn deleted or changed while a long
/// key job runs.
struct DeletingEmbedder {
    inner: Arc<dyn Embedder>,
    engine: std::sync::OnceLock<Engine>,
    delete: std::sync::Mutex<Option<i64>>,
    update: std::sync::Mutex<Option<(i64, &'static str)>>,
}

#[async_trait::async_trait]
impl Embedder for DeletingEmbedder {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }
    fn dims(&self) -> usize {
        self.inner.dims()
    }
    async fn embed(&self, texts: Vec<String>) -> recall_core::Result<Vec<Vec<f32>>> {
        let id = if texts.iter().any(|t| t.contains('\n')) {
            self.delete.lock().unwrap().take()
        } else {
            None
        };
        if let (Some(id), Some(engine)) = (id, self.engine.get()) {
            engine.delete_memories("alice", &[id]).await?;
        }
        let update = if texts.iter().any(|t| t.contains('\n')) {
            self.update.lock().unwrap().take()
        } else {
            None
        };
        if let (Some((id, text)), Some(engine)) = (update, self.engine.get()) {
            engine
                .update_memory(
                    "alice",
                    id,
                    MemoryUpdate {
                        content: Some(text.into()),
                        ..MemoryUpdate::default()
                    },
                )
                .await?;
        }
        self.inner.embed(texts).await
    }
}

/// A turn deleted after the job read it and before its quoting key was stored: the key is
/// dropped at once, and its text is in no row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_deleted_during_the_job_leaves_no_key_quoting_it() {
    let root = tempfile::tempdir().unwrap();
    let config = StoreConfig::embedded(root.path().join("store"));
    let embedder = Arc::new(DeletingEmbedder {
        inner: minilm(),
        engine: std::sync::OnceLock::new(),
        delete: std::sync::Mutex::new(None),
        update: std::sync::Mutex::new(None),
    });
    let engine = Engine::new(store::open(&config).await.unwrap(), embedder.clone());
    assert!(embedder.engine.set(engine.clone()).is_ok());
    let trip = ingest_trip(&engine, "alice").await;
    engine.set_memory_keys("alice", true).await.unwrap();
    *embedder.delete.lock().unwrap() = Some(trip[0]);
    let report = engine
        .write_memory_keys("alice", &KeyOptions::default(), &mut |_, _, _| {})
        .await
        .unwrap();
    assert!(
        embedder.delete.lock().unwrap().is_none(),
        "the deletion ran"
    );
    assert!(engine.memory("alice", trip[0]).await.unwrap().is_none());
    // The museums turn's key quoted the deleted turn: gone; the next turn's key stays.
    assert_eq!(report.context_keys, 1, "{report:?}");
    let keys = keys_of(&engine, "alice").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].key_for, Some(trip[2]));
    assert!(text_found(&engine, "alice", "Rome").await.is_empty());
}

/// A turn given new text after the job read it and before its keys were stored: its own key
/// (with the old text) and the key quoting it both go at once, the watermark stays before
/// it, and the next run keys both turns from the new text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_changed_during_the_job_is_keyed_again_from_its_new_text() {
    let root = tempfile::tempdir().unwrap();
    let config = StoreConfig::embedded(root.path().join("store"));
    let embedder = Arc::new(DeletingEmbedder {
        inner: minilm(),
        engine: std::sync::OnceLock::new(),
        delete: std::sync::Mutex::new(None),
        update: std::sync::Mutex::new(None),
    });
    let engine = Engine::new(store::open(&config).await.unwrap(), embedder.clone());
    assert!(embedder.engine.set(engine.clone()).is_ok());
    let trip = ingest_trip(&engine, "alice").await;
    engine.set_memory_keys("alice", true).await.unwrap();
    const NEW: &str = "Melanie: Are you going to the Uffizi?";
    *embedder.update.lock().unwrap() = Some((trip[1], NEW));
    let report = engine
        .write_memory_keys("alice", &KeyOptions::default(), &mut |_, _, _| {})
        .await
        .unwrap();
    assert!(embedder.update.lock().unwrap().is_none(), "the update ran");
    assert_eq!(report.context_keys, 0, "{report:?}");
    assert!(keys_of(&engine, "alice").await.is_empty());
    assert_eq!(text_found(&engine, "alice", "museums").await, trip[2..]);
    let u = engine.user("alice").await.unwrap().unwrap();
    assert!(
        u.memory_context_through.is_none_or(|t| t < trip[1]),
        "{u:?}"
    );
    let again = engine
        .write_memory_keys("alice", &KeyOptions::default(), &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(again.context_keys, 2, "{again:?}");
    let mut keys: Vec<(i64, String)> = keys_of(&engine, "alice")
        .await
        .into_iter()
        .map(|k| (k.key_for.unwrap(), k.content))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            (trip[1], format!("{}\n{NEW}", TRIP[0])),
            (trip[2], format!("{NEW}\n{}", TRIP[2])),
        ]
    );
}

/// A store told to (the server's default): users seen for the first time start with keys on,
/// so the key job writes their context keys without anyone asking; users the store knew
/// keep keys off, and a new user may still turn them off.
async fn new_users_start_with_keys_on(pg: bool) {
    let root = tempfile::tempdir().unwrap();
    let db = if pg { Some(PgDb::create().await) } else { None };
    let mut config = match &db {
        Some(db) => StoreConfig::postgres(db.url.clone()),
        None => StoreConfig::embedded(root.path().join("store")),
    };
    assert!(!config.memory_keys_for_new_users);
    {
        let engine = Engine::new(store::open(&config).await.unwrap(), minilm());
        ingest_trip(&engine, "carol").await;
        assert!(!engine.memory_keys_status("carol").await.unwrap().enabled);
    }
    config.memory_keys_for_new_users = true;
    let engine = Engine::new(store::open(&config).await.unwrap(), minilm());
    let trip = ingest_trip(&engine, "alice").await;
    ingest_trip(&engine, "bob").await;
    ingest_trip(&engine, "carol").await;
    assert_eq!(
        engine.memory_keys_status("alice").await.unwrap(),
        KeyStatus {
            enabled: true,
            keys: 0
        }
    );
    assert!(!engine.memory_keys_status("carol").await.unwrap().enabled);
    engine.set_memory_keys("bob", false).await.unwrap();
    let report = engine
        .write_memory_keys("alice", &KeyOptions::default(), &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!((report.context_keys, report.left), (2, 0), "{report:?}");
    let mut targets: Vec<i64> = keys_of(&engine, "alice")
        .await
        .iter()
        .filter_map(|k| k.key_for)
        .collect();
    targets.sort();
    assert_eq!(targets, trip[1..]);
    for user in ["bob", "carol"] {
        let err = engine
            .write_memory_keys(user, &KeyOptions::default(), &mut |_, _, _| {})
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(keys_of(&engine, user).await.is_empty());
    }
    assert_eq!(
        engine.memory_keys_users().await.unwrap(),
        vec!["alice".to_owned()]
    );
    if let Some(db) = db {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_users_start_with_keys_on_the_embedded_store() {
    new_users_start_with_keys_on(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_users_start_with_keys_on_postgres() {
    new_users_start_with_keys_on(true).await;
}

/// The store's side of the context watermark, and the listing by id the key job reads with:
/// an old epoch never moves the watermark over turns that were moved back since; a listing
/// is the user's own, by id, from a point.
async fn context_watermark_in_the_store(pg: bool) {
    let root = tempfile::tempdir().unwrap();
    let db = if pg { Some(PgDb::create().await) } else { None };
    let config = match &db {
        Some(db) => StoreConfig::postgres(db.url.clone()),
        None => StoreConfig::embedded(root.path().join("store")),
    };
    let store = store::open(&config).await.unwrap();
    let engine = Engine::new(store.clone(), minilm());
    let trip = ingest_trip(&engine, "alice").await;
    let bob = ingest_trip(&engine, "bob").await;
    let mark = || async {
        let u = store.get_user("alice").await.unwrap().unwrap();
        (u.memory_context_through, u.memory_context_epoch)
    };
    // Keys off: nothing moves.
    assert!(!store.advance_context_keys("alice", 0, 10).await.unwrap());
    engine.set_memory_keys("alice", true).await.unwrap();
    let (through, epoch) = mark().await;
    assert_eq!(through, None);
    assert!(
        store
            .advance_context_keys("alice", epoch, 10)
            .await
            .unwrap()
    );
    assert!(!store.advance_context_keys("alice", epoch, 9).await.unwrap());
    assert_eq!(mark().await, (Some(10), epoch));
    // Moved back: a run that read the old epoch leaves it there; one that read the new
    // moves it on.
    store.rewind_context_keys("alice", 5).await.unwrap();
    assert_eq!(mark().await, (Some(5), epoch + 1));
    assert!(
        !store
            .advance_context_keys("alice", epoch, 12)
            .await
            .unwrap()
    );
    assert_eq!(mark().await, (Some(5), epoch + 1));
    assert!(
        store
            .advance_context_keys("alice", epoch + 1, 12)
            .await
            .unwrap()
    );
    // A rewind above it moves nothing back but still starts a new epoch.
    store.rewind_context_keys("alice", 20).await.unwrap();
    assert_eq!(mark().await, (Some(12), epoch + 2));
    // Bob's is his own; turning keys off and on starts over.
    store.rewind_context_keys("bob", 0).await.unwrap();
    assert_eq!(mark().await, (Some(12), epoch + 2));
    engine.set_memory_keys("alice", false).await.unwrap();
    engine.set_memory_keys("alice", true).await.unwrap();
    assert_eq!(mark().await.0, None);

    // The listing by id: hers only, lowest id first, from a point, with how many follow it.
    let messages = Filter {
        kinds: vec![MemoryKind::Message],
        ..Filter::default()
    };
    let ids = |page: Vec<Memory>| page.iter().map(|m| m.id).collect::<Vec<_>>();
    let all = store
        .list_memories_by_id("alice", &messages, None, 10)
        .await
        .unwrap();
    assert_eq!(ids(all), trip);
    let count = |after| {
        let (store, messages) = (store.clone(), messages.clone());
        async move {
            store
                .count_memories_after("alice", &messages, after)
                .await
                .unwrap()
        }
    };
    assert_eq!(count(None).await, 3);
    let rest = store
        .list_memories_by_id("alice", &messages, Some(trip[0]), 1)
        .await
        .unwrap();
    assert_eq!((ids(rest), count(Some(trip[0])).await), (vec![trip[1]], 2));
    // Bob's turns come after hers: none of them follows her last.
    assert!(bob[0] > trip[2]);
    let none = store
        .list_memories_by_id("alice", &messages, Some(trip[2]), 10)
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(count(Some(trip[2])).await, 0);
    let keys = store
        .list_memories_by_id(
            "alice",
            &Filter {
                kinds: vec![MemoryKind::Key],
                ..Filter::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert!(keys.is_empty());
    let with_metadata = Filter {
        metadata: vec![recall_core::types::MetadataCondition {
            key: "a".into(),
            op: recall_core::types::MetadataOp::Exists,
            value: serde_json::json!(true),
        }],
        ..Filter::default()
    };
    let err = store
        .list_memories_by_id("alice", &with_metadata, None, 10)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");

    // The keys of some memories: hers, asked by her; none for anyone else.
    engine
        .write_memory_keys("alice", &KeyOptions::default(), &mut |_, _, _| {})
        .await
        .unwrap();
    let keyed = |user: &'static str| {
        let (store, trip) = (store.clone(), trip.clone());
        async move {
            let mut t: Vec<i64> = store
                .keys_for(user, &trip)
                .await
                .unwrap()
                .iter()
                .map(|k| k.key_for.unwrap())
                .collect();
            t.sort_unstable();
            t
        }
    };
    assert_eq!(keyed("alice").await, trip[1..]);
    assert!(keyed("bob").await.is_empty());
    if let Some(db) = db {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_watermark_in_the_embedded_store() {
    context_watermark_in_the_store(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_watermark_in_postgres() {
    context_watermark_in_the_store(true).await;
}

/// An embedder that costs nothing: each word hashed into one of 384 dimensions (enough
/// for a job over thousands of turns).
struct WordHashEmbedder;

#[async_trait::async_trait]
impl Embedder for WordHashEmbedder {
    fn model_id(&self) -> &str {
        "word-hash"
    }
    fn dims(&self) -> usize {
        384
    }
    async fn embed(&self, texts: Vec<String>) -> recall_core::Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0f32; 384];
                for w in t.split_whitespace() {
                    let h = w.bytes().fold(7u64, |h, b| h.wrapping_mul(31) + b as u64);
                    v[(h % 384) as usize] += 1.0;
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                v.iter().map(|x| x / norm).collect()
            })
            .collect())
    }
}

/// A long conversation takes several of the job's ranges: every turn but the first gets its
/// context key (the first of each range quoting the last of the range before), a run cut at
/// `max_keys` leaves the watermark before the first turn it did not key, and the next run
/// reads only from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_conversation_is_keyed_a_range_at_a_time() {
    let root = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::embedded(root.path().join("store")))
        .await
        .unwrap();
    let engine = Engine::new(store.clone(), Arc::new(WordHashEmbedder));
    let turns = 2 * recall_core::memory_keys::KEY_RANGE + 300;
    let t = Utc.with_ymd_and_hms(2023, 5, 20, 9, 0, 0).unwrap();
    let mut ids = Vec::new();
    for chunk in (0..turns).collect::<Vec<_>>().chunks(100) {
        let messages = chunk
            .iter()
            .map(|i| NewMessage {
                created_at: Some(t + chrono::Duration::seconds(*i as i64)),
                ..NewMessage::new("long", Role::User, format!("turn number {i} of the day"))
            })
            .collect();
        for added in engine.add_messages("alice", messages).await.unwrap() {
            ids.extend(added.memory_ids);
        }
    }
    assert_eq!(ids.len(), turns);
    engine.set_memory_keys("alice", true).await.unwrap();
    let cut = KeyOptions {
        max_keys: recall_core::memory_keys::KEY_RANGE + 200,
        ..KeyOptions::default()
    };
    let mut progress = Vec::new();
    let report = engine
        .write_memory_keys("alice", &cut, &mut |done, total, keys| {
            progress.push((done, total, keys))
        })
        .await
        .unwrap();
    let first_left = cut.max_keys + 1;
    assert_eq!(
        (report.context_keys, report.skipped, report.left),
        (cut.max_keys as u64, 1, (turns - first_left) as u64),
        "{report:?}"
    );
    assert_eq!(
        progress.last(),
        Some(&(first_left as u64, turns as u64, cut.max_keys as u64))
    );
    let u = store.get_user("alice").await.unwrap().unwrap();
    assert_eq!(u.memory_context_through, Some(ids[first_left] - 1));
    // The rest, read from there.
    let mut progress = Vec::new();
    let report = engine
        .write_memory_keys("alice", &KeyOptions::default(), &mut |done, total, keys| {
            progress.push((done, total, keys))
        })
        .await
        .unwrap();
    let rest = (turns - first_left) as u64;
    assert_eq!(
        (report.context_keys, report.skipped, report.left),
        (rest, 0, 0)
    );
    assert_eq!(progress.last(), Some(&(rest, rest, rest)));
    let u = store.get_user("alice").await.unwrap().unwrap();
    assert_eq!(u.memory_context_through, ids.last().copied());
    // Every turn but the first has one key, quoting the turn before it.
    let only_keys = Filter {
        kinds: vec![MemoryKind::Key],
        ..Filter::default()
    };
    let mut keys = Vec::new();
    loop {
        let after = keys.last().map(|k: &Memory| k.id);
        let page = store
            .list_memories_by_id("alice", &only_keys, after, 1000)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        keys.extend(page);
    }
    assert_eq!(keys.len(), turns - 1);
    let mut quoted: Vec<(i64, i64)> = keys
        .iter()
        .map(|k| {
            (
                k.key_for.unwrap(),
                k.metadata["context_of"].as_i64().unwrap(),
            )
        })
        .collect();
    quoted.sort_unstable();
    let expected: Vec<(i64, i64)> = ids.windows(2).map(|w| (w[1], w[0])).collect();
    assert_eq!(quoted, expected);
}
