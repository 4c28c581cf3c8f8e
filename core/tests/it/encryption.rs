//! Encryption at rest, on both stores: with a data key, a secret written through every path
//! (messages, memories, metadata, summaries, an update, a restore) reads back whole through
//! the store and is found by vector and full-text search, yet is absent from the SQLite files
//! and from every Postgres table read with plain SQL; a missing or wrong key fails at open,
//! naming the key; rotation (clear → key A → key B → clear) leaves everything readable.
use std::path::Path;
use std::sync::Arc;

use recall_core::crypto::{DataKey, Keyring};
use recall_core::store::{self, StoreConfig};
use recall_core::types::{
    Actor, ExportOptions, MemoryKind, MemoryPatch, MessageWrite, NewMemory, NewMessage, NewSummary,
    Role, TextQuery, VectorQuery,
};
use recall_core::{ErrorKind, MemoryStore};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde_json::json;

use crate::fixtures::{PgDb, emb};

const SECRET: &str = "my locker code at the Zanzibar gym is 4417";
/// Words of the secret that no clear column holds. The number is looked for with its
/// neighbour or as a full-text lexeme (`'4417'`): four bare digits turn up by chance in hex
/// ciphertext, UUIDs, microseconds and vector components (CI: "4417" found in a dump).
const TELLS: [&str; 5] = ["Zanzibar", "zanzibar", "locker", "is 4417", "'4417'"];

enum Where {
    Pg(PgDb),
    Embedded(tempfile::TempDir),
}

impl Where {
    async fn new(pg: bool) -> Self {
        if pg {
            Where::Pg(PgDb::create().await)
        } else {
            Where::Embedded(tempfile::tempdir().unwrap())
        }
    }

    fn config(&self, keys: Keyring) -> StoreConfig {
        let mut c = match self {
            Where::Pg(db) => StoreConfig::postgres(db.url.clone()),
            Where::Embedded(dir) => StoreConfig::embedded(dir.path()),
        };
        c.keys = Arc::new(keys);
        c
    }

    async fn open(&self, keys: Keyring) -> Arc<dyn MemoryStore> {
        store::open(&self.config(keys)).await.unwrap()
    }

    /// Every stored byte that could hold user text, read around the store: the SQLite files,
    /// or every Postgres table in the public schema, row by row as text.
    async fn raw(&self) -> String {
        match self {
            Where::Embedded(dir) => raw_files(dir.path()),
            Where::Pg(db) => {
                let conn = Database::connect(db.url.as_str()).await.unwrap();
                let tables = conn
                    .query_all_raw(Statement::from_string(
                        DbBackend::Postgres,
                        "SELECT table_name::text FROM information_schema.tables \
                         WHERE table_schema = 'public'",
                    ))
                    .await
                    .unwrap();
                let mut out = String::new();
                for t in tables {
                    let name: String = t.try_get_by_index(0).unwrap();
                    let rows = conn
                        .query_all_raw(Statement::from_string(
                            DbBackend::Postgres,
                            format!("SELECT t::text FROM \"{name}\" t"),
                        ))
                        .await
                        .unwrap();
                    for r in rows {
                        out += &r.try_get_by_index::<String>(0).unwrap();
                        out.push('\n');
                    }
                }
                conn.close().await.unwrap();
                out
            }
        }
    }

    async fn close(self) {
        if let Where::Pg(db) = self {
            db.drop_db().await;
        }
    }
}

fn raw_files(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        out += &String::from_utf8_lossy(&bytes);
    }
    out
}

fn key(byte: u8) -> DataKey {
    DataKey::from_bytes([byte; 32])
}

fn ring(current: Option<u8>, previous: &[u8]) -> Keyring {
    Keyring::new(current.map(key), previous.iter().map(|b| key(*b)).collect())
}

/// Writes the secret through every path that stores text.
async fn write_secrets(s: &dyn MemoryStore, user: &str) {
    let out = s
        .append_messages(
            user,
            vec![MessageWrite {
                message: NewMessage {
                    metadata: json!({ "note": SECRET }),
                    ..NewMessage::new("gym", Role::User, SECRET)
                },
                memories: vec![NewMemory {
                    metadata: json!({ "said": SECRET }),
                    ..NewMemory::new(MemoryKind::Message, SECRET, emb(&[1.0, 0.0, 0.0]))
                }],
                answers: None,
            }],
        )
        .await
        .unwrap();
    let fact = s
        .add_memories(
            user,
            vec![NewMemory::new(
                MemoryKind::Fact,
                "placeholder fact",
                emb(&[0.0, 1.0, 0.0]),
            )],
        )
        .await
        .unwrap();
    s.update_memory(
        user,
        fact[0].id,
        MemoryPatch {
            content: Some(format!("fact: {SECRET}")),
            embedding: Some(emb(&[0.0, 1.0, 0.1])),
            metadata: Some(json!({ "source": SECRET })),
            ..MemoryPatch::default()
        },
    )
    .await
    .unwrap();
    let stored = s
        .add_training_pairs(
            user,
            vec![recall_core::deep_memory::NewTrainingPair {
                memory_id: fact[0].id,
                question: format!("pair: {SECRET}?"),
                source: recall_core::deep_memory::PairSource::User,
                model: None,
                prompt_version: None,
            }],
        )
        .await
        .unwrap();
    assert_eq!(stored, 1);
    s.add_summary(
        user,
        NewSummary {
            session: "gym".into(),
            content: format!("summary: {SECRET}"),
            first_message_id: Some(out[0].message.id),
            last_message_id: Some(out[0].message.id),
            model: None,
            embedding: emb(&[0.0, 0.0, 1.0]),
            expected_through: None,
        },
    )
    .await
    .unwrap();
}

/// Everything written by [`write_secrets`] reads back whole, and both searches find it.
async fn assert_readable(s: &dyn MemoryStore, user: &str) {
    let export = s
        .export_user(user, &ExportOptions::default(), &Actor::cli())
        .await
        .unwrap();
    assert_eq!(export.messages.len(), 1);
    assert_eq!(export.messages[0].content, SECRET);
    assert_eq!(export.messages[0].metadata, json!({ "note": SECRET }));
    let mut texts: Vec<String> = export
        .memories
        .iter()
        .map(|m| m.memory.content.clone())
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        vec![
            format!("fact: {SECRET}"),
            SECRET.to_owned(),
            format!("summary: {SECRET}")
        ]
    );
    let fact = export
        .memories
        .iter()
        .find(|m| m.memory.kind == MemoryKind::Fact)
        .unwrap();
    assert_eq!(fact.memory.metadata, json!({ "source": SECRET }));
    assert_eq!(export.summaries[0].content, format!("summary: {SECRET}"));
    let pairs = s.training_pairs(user).await.unwrap();
    assert_eq!(pairs[0].question, format!("pair: {SECRET}?"));
    assert_eq!(export.deep_memory_pairs, pairs);
    let summaries = s.list_summaries(user, "gym").await.unwrap();
    assert_eq!(summaries[0].content, format!("summary: {SECRET}"));

    let hits = s
        .search(user, &VectorQuery::new(emb(&[1.0, 0.0, 0.0]), 1))
        .await
        .unwrap()
        .hits;
    assert_eq!(hits[0].memory.content, SECRET);
    assert_eq!(hits[0].memory.metadata, json!({ "said": SECRET }));
    let found = s
        .text_search(user, &TextQuery::new("Zanzibar locker", 5))
        .await
        .unwrap();
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found.iter().all(|h| h.memory.content.contains(SECRET)));
}

fn assert_absent(raw: &str, what: &str) {
    for tell in TELLS {
        assert!(
            !raw.contains(tell),
            "{what}: {tell:?} is stored in the clear"
        );
    }
}

async fn sealed_at_rest(pg: bool) {
    let place = Where::new(pg).await;
    // A key that sealed nothing is not required afterwards.
    drop(place.open(ring(Some(3), &[])).await);
    drop(place.open(ring(None, &[])).await);
    let s = place.open(ring(Some(1), &[])).await;
    write_secrets(s.as_ref(), "ana").await;
    assert_readable(s.as_ref(), "ana").await;
    // A backup restored into the same store is sealed again.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.backup");
    let engine =
        recall_core::Engine::without_models(s.clone()).with_data_key(Some(Arc::new(key(1))));
    engine
        .backup(&file, &recall_core::backup::BackupOptions::default())
        .await
        .unwrap();
    engine
        .restore(
            &file,
            &recall_core::backup::RestoreOptions {
                force: true,
                ..Default::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    assert_readable(s.as_ref(), "ana").await;
    drop(engine);
    drop(s);
    assert_absent(&place.raw().await, if pg { "postgres" } else { "sqlite" });

    // Without the key, or with another one, the store does not open.
    for keys in [ring(None, &[]), ring(Some(2), &[])] {
        let e = store::open(&place.config(keys))
            .await
            .err()
            .expect("refused");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains(&key(1).id()), "{e}");
    }
    place.close().await;
}

#[tokio::test]
async fn embedded_store_seals_text_at_rest() {
    sealed_at_rest(false).await;
}

#[tokio::test]
async fn postgres_store_seals_text_at_rest() {
    sealed_at_rest(true).await;
}

async fn rotation(pg: bool) {
    let place = Where::new(pg).await;
    // Clear rows first; then a key is set: old rows still read, new rows are sealed.
    let s = place.open(ring(None, &[])).await;
    write_secrets(s.as_ref(), "ana").await;
    drop(s);
    let s = place.open(ring(Some(1), &[])).await;
    write_secrets(s.as_ref(), "bo").await;
    assert_readable(s.as_ref(), "ana").await;
    assert_readable(s.as_ref(), "bo").await;
    let mut seen = Vec::new();
    let report = s
        .rotate_keys(&mut |done, total| seen.push((done, total)))
        .await
        .unwrap();
    // ana's 1 message, 3 memories, 1 summary and 1 deep memory pair were in the clear.
    assert_eq!(report.resealed, 6);
    assert_eq!(seen.last(), Some(&(6, 6)));
    assert_eq!(report.key_id, Some(key(1).id()));
    drop(s);
    assert_absent(&place.raw().await, "after sealing the clear rows");

    // Key 1 → key 2: key 1 opens what is not yet rotated, then is retired.
    let s = place.open(ring(Some(2), &[1])).await;
    write_secrets(s.as_ref(), "cy").await;
    let report = s.rotate_keys(&mut |_, _| {}).await.unwrap();
    assert_eq!(report.resealed, 12);
    assert_eq!(report.retired, vec![key(1).id()]);
    assert_eq!(report.remaining, 0);
    // Run again: nothing left to do.
    assert_eq!(s.rotate_keys(&mut |_, _| {}).await.unwrap().resealed, 0);
    drop(s);
    let s = place.open(ring(Some(2), &[])).await;
    for user in ["ana", "bo", "cy"] {
        assert_readable(s.as_ref(), user).await;
    }
    drop(s);
    assert_absent(&place.raw().await, "after rotating");

    // Key 2 → clear: every row opened, then the store needs no key.
    let s = place.open(ring(None, &[2])).await;
    let report = s.rotate_keys(&mut |_, _| {}).await.unwrap();
    assert_eq!((report.resealed, report.key_id), (18, None));
    drop(s);
    let s = place.open(ring(None, &[])).await;
    for user in ["ana", "bo", "cy"] {
        assert_readable(s.as_ref(), user).await;
    }
    drop(s);
    assert!(place.raw().await.contains("Zanzibar"));
    place.close().await;
}

#[tokio::test]
async fn embedded_store_rotates_keys() {
    rotation(false).await;
}

#[tokio::test]
async fn postgres_store_rotates_keys() {
    rotation(true).await;
}

/// A restore the store refuses writes nothing, the key registry included: the store still
/// opens without the key the refused restore was run with.
#[tokio::test]
async fn a_refused_restore_does_not_make_the_key_required() {
    use recall_core::Engine;
    use recall_core::backup::{BackupOptions, RestoreOptions};
    for pg in [false, true] {
        let place = Where::new(pg).await;
        let s = place.open(ring(None, &[])).await;
        write_secrets(s.as_ref(), "ana").await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("all.backup");
        Engine::without_models(s.clone())
            .backup(&file, &BackupOptions::default())
            .await
            .unwrap();
        drop(s);
        let s = place.open(ring(Some(1), &[])).await;
        let err = Engine::without_models(s.clone())
            .restore(&file, &RestoreOptions::default(), &Actor::cli())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        drop(s);
        let s = place.open(ring(None, &[])).await;
        assert_readable(s.as_ref(), "ana").await;
        drop(s);
        place.close().await;
    }
}

/// Postgres with a key searches text in process: the index follows updates, deletions and
/// additions, including those another replica makes.
#[tokio::test]
async fn postgres_sealed_text_search_follows_every_replica() {
    let place = Where::new(true).await;
    let a = place.open(ring(Some(1), &[])).await;
    let b = place.open(ring(Some(1), &[])).await;
    write_secrets(a.as_ref(), "ana").await;
    let found = |s: Arc<dyn MemoryStore>| async move {
        let mut ids: Vec<i64> = s
            .text_search("ana", &TextQuery::new("Zanzibar", 10))
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.memory.id)
            .collect();
        ids.sort();
        ids
    };
    let all = found(a.clone()).await;
    assert_eq!(all.len(), 3);
    assert_eq!(found(b.clone()).await, all);
    // B changes one, deletes another and adds a new one; A sees each change.
    b.update_memory(
        "ana",
        all[0],
        MemoryPatch {
            content: Some("nothing to see".into()),
            embedding: Some(emb(&[0.5, 0.5, 0.0])),
            ..MemoryPatch::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(found(a.clone()).await, all[1..].to_vec());
    b.delete_memories("ana", &[all[1]]).await.unwrap();
    assert_eq!(found(a.clone()).await, all[2..].to_vec());
    let added = b
        .add_memories(
            "ana",
            vec![NewMemory::new(
                MemoryKind::Fact,
                "a second gym in Zanzibar",
                emb(&[0.1, 0.2, 0.3]),
            )],
        )
        .await
        .unwrap();
    assert_eq!(found(a.clone()).await, vec![all[2], added[0].id]);
    b.update_memory(
        "ana",
        all[0],
        MemoryPatch {
            content: Some("back in Zanzibar".into()),
            embedding: Some(emb(&[0.5, 0.5, 0.1])),
            ..MemoryPatch::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(found(a.clone()).await, vec![all[0], all[2], added[0].id]);
    drop((a, b));
    place.close().await;
}
