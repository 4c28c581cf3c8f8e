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
pub(crate) const TRIP: [&str; 3] = [
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

pub(crate) fn minilm() -> Arc<dyn Embedder> {
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

pub(crate) async fn ingest_trip(engine: &Engine, user: &str) -> Vec<i64> {
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
pub(crate) async fn text_found(engine: &Engine, user: &str, query: &str) -> Vec<i64> {
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

pub(crate) async fn ranking(
    engine: &Engine,
    user: &str,
    query: &str,
    filter: Filter,
) -> Vec<Memory> {
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

pub(crate) async fn keys_of(engine: &Engine, user: &str) -> Vec<Memory> {
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
    // The museums question's key and the answer's two.
    assert_eq!((report.context_keys, report.left), (3, 0), "{report:?}");
    let mut targets: Vec<i64> = keys_of(&engine, "alice")
        .await
        .iter()
        .filter_map(|k| k.key_for)
        .collect();
    targets.sort();
    assert_eq!(targets, [trip[1], trip[2], trip[2]]);
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
