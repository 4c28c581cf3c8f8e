//! Context keys on both stores: each turn keyed with the turn before it by the key job (no
//! chat model), from the context watermark on, a range of memories at a time; keys that quote
//! a turn go when it changes or goes, and the watermark moves back (by epoch) so that the next
//! run keys those turns again; never another user's.
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use recall_core::embed::Embedder;
use recall_core::error::ErrorKind;
use recall_core::memory_keys::KeyOptions;
use recall_core::retrieval::{RetrieveOptions, SearchMode};
use recall_core::store::{self, StoreConfig};
use recall_core::types::{
    Filter, Memory, MemoryKind, MetadataCondition, MetadataOp, NewMessage, Role,
};
use recall_core::{Engine, MemoryUpdate, SearchOptions};

use crate::fixtures::PgDb;
use crate::memory_keys::{TRIP, ingest_trip, keys_of, minilm, ranking, text_found};

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
    // Where the answer (which names the museums) and the turn that only names Rome rank.
    let places = |r: &[Memory]| {
        let at = |id: i64| r.iter().position(|m| m.id == id).unwrap();
        (at(trip[2]), at(trip[0]))
    };
    let before = ranking(&engine, "alice", MUSEUMS, Filter::default()).await;
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
    // The first turn of the session has none before it; the answer has two.
    assert_eq!(
        (
            report.keys,
            report.context_keys,
            report.skipped,
            report.left
        ),
        (3, 3, 1, 0),
        "{report:?}"
    );
    assert_eq!(progress.last(), Some(&(3, 3, 3)), "{progress:?}");
    let keys = keys_of(&engine, "alice").await;
    // The museums question's key holds its reply too, which goes on with it ("museums");
    // the reply's own key has no turn after it yet.
    let museums = keys.iter().find(|k| k.key_for == Some(trip[1])).unwrap();
    assert_eq!(
        museums.content,
        format!("{}\n{}\n{}", TRIP[0], TRIP[1], TRIP[2])
    );
    assert_eq!(museums.metadata["key"], "context");
    assert_eq!(museums.metadata["context_of"], trip[0]);
    assert_eq!(museums.metadata["next"], trip[2]);
    assert!(museums.metadata.get("asked_about").is_none(), "{museums:?}");
    assert_eq!(museums.session.as_deref(), Some("s2"));
    // The reply answers the museums question: its key starts with the turn the question
    // was about ("Rome"), and its second key is the exchange alone; both name the same
    // turns (so that they go together) and have no turn after them yet.
    let answer_keys = |keys: &[Memory], turn: i64| {
        let mine: Vec<Memory> = keys
            .iter()
            .filter(|k| k.key_for == Some(turn))
            .cloned()
            .collect();
        assert_eq!(mine.len(), 2, "{mine:?}");
        let (exchange, first): (Vec<Memory>, Vec<Memory>) = mine
            .into_iter()
            .partition(|k| k.metadata.get("view").is_some());
        assert_eq!(exchange[0].metadata["view"], "exchange");
        (first[0].clone(), exchange[0].clone())
    };
    let (reply, exchange) = answer_keys(&keys, trip[2]);
    assert_eq!(
        reply.content,
        format!("{}\n{}\n{}", TRIP[0], TRIP[1], TRIP[2])
    );
    assert_eq!(exchange.content, format!("{}\n{}", TRIP[1], TRIP[2]));
    for k in [&reply, &exchange] {
        assert_eq!(k.metadata["context_of"], trip[1]);
        assert_eq!(k.metadata["asked_about"], trip[0]);
        assert!(k.metadata.get("next").is_none(), "{k:?}");
    }

    // "Rome" is in the first turn only; the museums question after it and its answer are
    // found by it now, as themselves (never the keys). The answer's exchange key matches
    // the museums question: the answer ranks above the Rome turn now, below it before.
    // Bob's turns are as before.
    assert_eq!(text_found(&engine, "alice", "Rome").await, trip[..]);
    let hits = ranking(&engine, "alice", MUSEUMS, Filter::default()).await;
    let ((answer, rome), (answer_before, rome_before)) = (places(&hits), places(&before));
    assert!(answer_before > rome_before, "{before:?}");
    assert!(answer < rome, "{hits:?}");
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
    // Its key, and the turn before's two again, now with its reply ("gallery"), in place
    // of the two it had.
    assert_eq!((again.context_keys, again.skipped), (3, 0), "{again:?}");
    let keys = keys_of(&engine, "alice").await;
    let key = keys.iter().find(|k| k.key_for == Some(last)).unwrap();
    assert_eq!(key.metadata["context_of"], trip[2]);
    let (replied, exchange) = answer_keys(&keys, trip[2]);
    assert_eq!(
        replied.content,
        format!(
            "{}\n{}\n{}\nMelanie: Send me photos of the gallery!",
            TRIP[0], TRIP[1], TRIP[2]
        )
    );
    assert_eq!(
        exchange.content,
        format!(
            "{}\n{}\nMelanie: Send me photos of the gallery!",
            TRIP[1], TRIP[2]
        )
    );
    assert_eq!(replied.metadata["next"], last);
    assert_eq!(exchange.metadata["next"], last);
    assert_eq!(through(&engine).await, (Some(last), epoch));

    // New text in the reply drops the keys that hold it (and the reply's own); the watermark
    // goes back before the turn it was a reply to, and the next run writes them again: the
    // new reply goes on with nothing of the turn's, so the keys hold no reply.
    engine
        .update_memory(
            "alice",
            last,
            MemoryUpdate {
                content: Some("Melanie: Have a wonderful time!".into()),
                ..MemoryUpdate::default()
            },
        )
        .await
        .unwrap();
    let keys = keys_of(&engine, "alice").await;
    assert!(keys.iter().all(|k| k.key_for == Some(trip[1])), "{keys:?}");
    assert_eq!(through(&engine).await.0, Some(trip[2] - 1));
    let again = engine
        .write_memory_keys("alice", &context_only, &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(again.context_keys, 3, "{again:?}");
    let keys = keys_of(&engine, "alice").await;
    let (replied, exchange) = answer_keys(&keys, trip[2]);
    assert_eq!(
        replied.content,
        format!("{}\n{}\n{}", TRIP[0], TRIP[1], TRIP[2])
    );
    assert!(replied.metadata.get("next").is_none(), "{replied:?}");
    assert!(exchange.metadata.get("next").is_none(), "{exchange:?}");
    let (_, epoch) = through(&engine).await;

    // Deleting the first turn takes the keys that quote it (the museums question's, and
    // the answer's two, which name it as what was asked about): "Rome" is in no row of hers.
    engine.delete_memories("alice", &trip[..1]).await.unwrap();
    assert!(text_found(&engine, "alice", "Rome").await.is_empty());
    let keys = keys_of(&engine, "alice").await;
    assert!(keys.iter().all(|k| k.key_for == Some(last)), "{keys:?}");
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
        "Caroline: Only the Uffizi this time.\nMelanie: Have a wonderful time!"
    );
    if let Some(db) = db {
        db.drop_db().await;
    }
}

/// Paged search of a user with keys, on one store: a key's match is its memory's, and every
/// memory comes once in the walk over all pages, at its best row (its own or a key's), best
/// first; every page is full but the last, as for a user without keys.
async fn paged_search_with_keys(pg: bool) {
    let root = tempfile::tempdir().unwrap();
    let db = if pg { Some(PgDb::create().await) } else { None };
    let config = match &db {
        Some(db) => StoreConfig::postgres(db.url.clone()),
        None => StoreConfig::embedded(root.path().join("store")),
    };
    let engine = Engine::new(store::open(&config).await.unwrap(), minilm());
    let t = Utc.with_ymd_and_hms(2023, 6, 1, 9, 0, 0).unwrap();
    let turns = [
        "Caroline: I booked my flights to Rome for June!",
        "Melanie: Which museums are you going to see there?",
        "Caroline: The Vatican museums and the Borghese gallery, I hope.",
        "Melanie: My kids loved the pottery class last weekend.",
        "Caroline: Pottery sounds fun, what did they make?",
        "Melanie: Little bowls, one for every grandparent.",
        "Caroline: I am training for a half marathon in the autumn.",
        "Melanie: How far do you run each week?",
        "Caroline: About thirty kilometres, more on holidays.",
    ];
    for user in ["alice", "bob"] {
        let messages = turns
            .iter()
            .enumerate()
            .map(|(i, text)| NewMessage {
                created_at: Some(t + chrono::Duration::minutes(i as i64)),
                ..NewMessage::new("s1", Role::User, *text)
            })
            .collect();
        engine.add_messages(user, messages).await.unwrap();
    }
    engine.set_memory_keys("alice", true).await.unwrap();
    let report = engine
        .write_memory_keys("alice", &KeyOptions::default(), &mut |_, _, _| {})
        .await
        .unwrap();
    // A key for each turn after the first, and a second for each of the three answers.
    assert_eq!(report.context_keys as usize, turns.len() - 1 + 3);
    let walk = |user: &'static str| {
        let engine = &engine;
        async move {
            let mut pages = Vec::new();
            let mut cursor = None;
            loop {
                let page = engine
                    .search(
                        user,
                        "a trip to see museums in Italy",
                        &SearchOptions {
                            top_k: 2,
                            cursor,
                            ..SearchOptions::default()
                        },
                    )
                    .await
                    .unwrap();
                pages.push(page.hits);
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => return pages,
                }
            }
        }
    };
    for user in ["alice", "bob"] {
        let pages = walk(user).await;
        let hits: Vec<_> = pages.iter().flatten().collect();
        assert!(hits.iter().all(|h| h.memory.kind == MemoryKind::Message));
        let mut contents: Vec<&str> = hits.iter().map(|h| h.memory.content.as_str()).collect();
        contents.sort_unstable();
        let mut all = turns.to_vec();
        all.sort_unstable();
        assert_eq!(contents, all, "{user}: every memory once");
        let n = pages.len();
        assert!(
            pages[..n - 1].iter().all(|p| p.len() == 2),
            "{user}: {pages:?}"
        );
        assert!(
            hits.windows(2).all(|w| w[0].score >= w[1].score),
            "{user}: best first"
        );
    }
    // Alice's keys find her reply about the museums as well as the turn that asks.
    let first = &walk("alice").await[0];
    assert!(
        first.iter().any(|h| h.memory.content == turns[2]),
        "{first:?}"
    );
    if let Some(db) = db {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_search_with_keys_on_the_embedded_store() {
    paged_search_with_keys(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_search_with_keys_on_postgres() {
    paged_search_with_keys(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_keys_on_the_embedded_store() {
    context_keys(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_keys_on_postgres() {
    context_keys(true).await;
}

/// A key stands in for its memory under every filter: a metadata condition is held to the
/// memory's metadata (a key carries none of it), and a memory's new tags are its keys' too.
async fn keys_under_metadata_and_tag_filters(pg: bool) {
    let root = tempfile::tempdir().unwrap();
    let db = if pg { Some(PgDb::create().await) } else { None };
    let config = match &db {
        Some(db) => StoreConfig::postgres(db.url.clone()),
        None => StoreConfig::embedded(root.path().join("store")),
    };
    let engine = Engine::new(store::open(&config).await.unwrap(), minilm());
    let t = Utc.with_ymd_and_hms(2023, 5, 20, 9, 0, 0).unwrap();
    let messages = TRIP
        .iter()
        .enumerate()
        .map(|(i, text)| NewMessage {
            created_at: Some(t + chrono::Duration::minutes(i as i64)),
            metadata: serde_json::json!({ "project": if i == 2 { "apollo" } else { "gemini" } }),
            ..NewMessage::new("s2", Role::User, *text)
        })
        .collect();
    let trip: Vec<i64> = engine
        .add_messages("alice", messages)
        .await
        .unwrap()
        .iter()
        .flat_map(|a| a.memory_ids.clone())
        .collect();
    engine.set_memory_keys("alice", true).await.unwrap();
    engine
        .write_memory_keys("alice", &KeyOptions::default(), &mut |_, _, _| {})
        .await
        .unwrap();
    let found = |filter: Filter| {
        let engine = engine.clone();
        async move {
            let options = RetrieveOptions {
                filter,
                ..RetrieveOptions::for_mode(SearchMode::Text, 10)
            };
            let mut ids: Vec<i64> = engine
                .retrieve("alice", "Rome", &options)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.memory.id)
                .collect();
            ids.sort_unstable();
            ids
        }
    };
    // "Rome" is in the first turn only; its keys bring the other two back.
    assert_eq!(found(Filter::default()).await, trip);
    let project = |op, value| Filter {
        metadata: vec![MetadataCondition::new(
            "project",
            op,
            serde_json::json!(value),
        )],
        ..Filter::default()
    };
    assert_eq!(found(project(MetadataOp::Eq, "apollo")).await, [trip[2]]);
    assert_eq!(found(project(MetadataOp::Ne, "apollo")).await, trip[..2]);
    // New tags are the keys' too: the museums question is found by its key under them.
    let tags = MemoryUpdate {
        tags: Some(vec!["museums".into()]),
        ..MemoryUpdate::default()
    };
    engine.update_memory("alice", trip[1], tags).await.unwrap();
    let museums = Filter {
        tags: vec!["museums".into()],
        ..Filter::default()
    };
    assert_eq!(found(museums).await, [trip[1]]);
    if let Some(db) = db {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_under_filters_on_the_embedded_store() {
    keys_under_metadata_and_tag_filters(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_under_filters_on_postgres() {
    keys_under_metadata_and_tag_filters(true).await;
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

/// An engine on an embedded store in `root` whose embedder meddles (see `DeletingEmbedder`).
async fn meddled(root: &tempfile::TempDir) -> (Engine, Arc<DeletingEmbedder>) {
    let config = StoreConfig::embedded(root.path().join("store"));
    let embedder = Arc::new(DeletingEmbedder {
        inner: minilm(),
        engine: std::sync::OnceLock::new(),
        delete: std::sync::Mutex::new(None),
        update: std::sync::Mutex::new(None),
    });
    let engine = Engine::new(store::open(&config).await.unwrap(), embedder.clone());
    assert!(embedder.engine.set(engine.clone()).is_ok());
    (engine, embedder)
}

/// A turn deleted after the job read it and before its quoting key was stored: the key is
/// dropped at once, and its text is in no row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_deleted_during_the_job_leaves_no_key_quoting_it() {
    let root = tempfile::tempdir().unwrap();
    let (engine, embedder) = meddled(&root).await;
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
    // The museums turn's key quoted the deleted turn, and so did the answer's (what the
    // question was about): both gone.
    assert_eq!(report.context_keys, 0, "{report:?}");
    assert!(keys_of(&engine, "alice").await.is_empty());
    assert!(text_found(&engine, "alice", "Rome").await.is_empty());
    assert_eq!(text_found(&engine, "alice", "museums").await, trip[1..]);
}

/// A turn given new text after the job read it and before its keys were stored: its own key
/// (with the old text) and the key quoting it both go at once, the watermark stays before
/// it, and the next run keys both turns from the new text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_changed_during_the_job_is_keyed_again_from_its_new_text() {
    let root = tempfile::tempdir().unwrap();
    let (engine, embedder) = meddled(&root).await;
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
    // The question's key, and the answer's two (it answers the new question too).
    assert_eq!(again.context_keys, 3, "{again:?}");
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
            (trip[2], format!("{}\n{NEW}\n{}", TRIP[0], TRIP[2])),
            (trip[2], format!("{NEW}\n{}", TRIP[2])),
        ]
    );
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
    // (The answer has two.)
    assert_eq!(keyed("alice").await, [trip[1], trip[2], trip[2]]);
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
    // The last turn of the first range is keyed before its reply is read (in the next
    // range), and again with it as that range starts: turns 1 to 1,199 take the 1,200 keys.
    let first_left = cut.max_keys;
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
    // (And once more for the last turn of the second range.)
    let rest = (turns - first_left) as u64;
    assert_eq!(
        (report.context_keys, report.skipped, report.left),
        (rest + 1, 0, 0)
    );
    assert_eq!(progress.last(), Some(&(rest, rest, rest + 1)));
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

/// A reply that expires takes the key that holds it (the turn before's, which expires with
/// it); purging moves the watermark back before that turn, and the next run keys it again
/// without the reply. Embedded store (the purge is the store conformance suite's on both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_reply_takes_the_key_that_held_it() {
    let root = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::embedded(root.path().join("store")))
        .await
        .unwrap();
    let engine = Engine::new(store.clone(), minilm());
    let trip = ingest_trip(&engine, "alice").await;
    engine
        .update_memory(
            "alice",
            trip[2],
            MemoryUpdate {
                expires_at: Some(Some(Utc::now() + chrono::Duration::seconds(2))),
                ..MemoryUpdate::default()
            },
        )
        .await
        .unwrap();
    engine.set_memory_keys("alice", true).await.unwrap();
    let report = engine
        .write_memory_keys("alice", &KeyOptions::default(), &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(report.context_keys, 3, "{report:?}");
    let keys = keys_of(&engine, "alice").await;
    let museums = keys.iter().find(|k| k.key_for == Some(trip[1])).unwrap();
    assert_eq!(museums.metadata["next"], trip[2]);
    assert!(museums.content.contains("Vatican"), "{museums:?}");
    let reply = engine.memory("alice", trip[2]).await.unwrap().unwrap();
    assert_eq!(museums.expires_at, reply.expires_at);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // Reads leave the reply and the three keys out at once; the purge deletes them.
    assert!(keys_of(&engine, "alice").await.is_empty());
    assert!(text_found(&engine, "alice", "Vatican").await.is_empty());
    assert!(engine.purge_expired(100).await.unwrap() >= 4);
    let u = store.get_user("alice").await.unwrap().unwrap();
    assert!(
        u.memory_context_through.is_some_and(|t| t < trip[1]),
        "{:?}",
        u.memory_context_through
    );
    let again = engine
        .write_memory_keys("alice", &KeyOptions::default(), &mut |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(again.context_keys, 1, "{again:?}");
    let keys = keys_of(&engine, "alice").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].key_for, Some(trip[1]));
    assert_eq!(keys[0].content, format!("{}\n{}", TRIP[0], TRIP[1]));
    assert!(keys[0].metadata.get("next").is_none(), "{:?}", keys[0]);
}
