//! Backups: a snapshot of every user restored into either store gives back the same export,
//! row ids and vectors included; damaged files write nothing; restoring into a store that
//! holds data needs `force` or one user; a backup taken under writes holds a consistent state.
use std::path::Path;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use recall_core::backup::{BackupOptions, Record, RestoreOptions};
use recall_core::store::{self, StoreConfig};
use recall_core::types::{
    Actor, ExportOptions, MemoryKind, MessageWrite, NewMemory, NewMessage, NewSummary, PageRequest,
    Role, UserExport, VectorQuery,
};
use recall_core::{Engine, ErrorKind, MemoryStore};
use serde_json::json;

use crate::fixtures::{PgDb, emb};

/// A store of either kind that cleans up after itself.
struct Place {
    store: Arc<dyn MemoryStore>,
    engine: Engine,
    pg: Option<PgDb>,
    _dir: Option<tempfile::TempDir>,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Pg,
    Embedded,
}

impl Place {
    async fn new(kind: Kind) -> Self {
        let (config, pg, dir) = match kind {
            Kind::Pg => {
                let db = PgDb::create().await;
                (StoreConfig::postgres(db.url.clone()), Some(db), None)
            }
            Kind::Embedded => {
                let dir = tempfile::tempdir().unwrap();
                (StoreConfig::embedded(dir.path()), None, Some(dir))
            }
        };
        let store = store::open(&config).await.unwrap();
        Self {
            engine: Engine::without_models(store.clone()),
            store,
            pg,
            _dir: dir,
        }
    }

    async fn close(self) {
        drop(self.engine);
        drop(self.store);
        if let Some(db) = self.pg {
            db.drop_db().await;
        }
    }

    async fn export(&self, user: &str) -> UserExport {
        self.store
            .export_user(
                user,
                &ExportOptions {
                    include_vectors: true,
                },
                &Actor::cli(),
            )
            .await
            .unwrap()
    }
}

fn said(session: &str, role: Role, text: &str, minute: u32, v: &[f32]) -> MessageWrite {
    MessageWrite {
        message: NewMessage {
            session: session.into(),
            role,
            content: text.into(),
            created_at: Some(Utc.with_ymd_and_hms(2024, 5, 1, 9, minute, 0).unwrap()),
            tags: vec!["t".into()],
            metadata: json!({ "n": minute }),
        },
        memories: vec![NewMemory::new(MemoryKind::Message, text, emb(v))],
        answers: None,
    }
}

/// Two users with messages in two sessions, a fact, a summary, settings and a deleted
/// memory (a gap in the ids).
async fn populate(s: &dyn MemoryStore) {
    for (user, base) in [("ana", 0.1f32), ("bo", 0.2)] {
        let out = s
            .append_messages(
                user,
                vec![
                    said(
                        "s1",
                        Role::User,
                        &format!("{user}: I moved to Lisbon"),
                        1,
                        &[base, 1.0, 0.3],
                    ),
                    said("s1", Role::Assistant, "Lovely city.", 2, &[0.9, base, 0.1]),
                    said(
                        "s2",
                        Role::User,
                        &format!("{user} likes tea"),
                        3,
                        &[0.3, 0.3, base],
                    ),
                ],
            )
            .await
            .unwrap();
        let facts = s
            .add_memories(
                user,
                vec![
                    NewMemory::new(MemoryKind::Fact, "lives in Lisbon", emb(&[base, 0.8, 0.2])),
                    NewMemory::new(MemoryKind::Fact, "to be deleted", emb(&[0.5, 0.5, 0.5])),
                ],
            )
            .await
            .unwrap();
        s.delete_memories(user, &[facts[1].id]).await.unwrap();
        s.add_summary(
            user,
            NewSummary {
                session: "s1".into(),
                content: format!("{user} moved to Lisbon."),
                first_message_id: Some(out[0].message.id),
                last_message_id: Some(out[1].message.id),
                model: Some("test-llm".into()),
                embedding: emb(&[0.7, 0.7, base]),
                expected_through: None,
            },
        )
        .await
        .unwrap();
        s.put_settings(user, json!({ "theme": user }), &Actor::user(user))
            .await
            .unwrap();
    }
}

/// `after` is `before` plus the audit entries of the restore and of its own export.
fn assert_same(before: &UserExport, after: &UserExport) {
    let mut a = after.clone();
    let tail: Vec<&str> = a.audit[before.audit.len()..]
        .iter()
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(tail, ["restore", "export"]);
    a.audit.truncate(before.audit.len());
    a.exported_at = before.exported_at;
    assert_eq!(&a, before);
}

async fn backup_to(p: &Place, path: &Path, user: Option<&str>) {
    let report = p
        .engine
        .backup(
            path,
            &BackupOptions {
                user: user.map(str::to_owned),
            },
        )
        .await
        .unwrap();
    assert_eq!(report.users, if user.is_some() { 1 } else { 2 });
    assert_eq!(report.bytes, std::fs::metadata(path).unwrap().len());
}

async fn restore(
    p: &Place,
    path: &Path,
    user: Option<&str>,
    force: bool,
) -> recall_core::Result<recall_core::backup::RestoreReport> {
    p.engine
        .restore(
            path,
            &RestoreOptions {
                user: user.map(str::to_owned),
                force,
                include_deleted: false,
            },
            &Actor::cli(),
        )
        .await
}

async fn round_trip(from: Kind, to: Kind) {
    let src = Place::new(from).await;
    populate(src.store.as_ref()).await;
    let before = [src.export("ana").await, src.export("bo").await];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.backup");
    backup_to(&src, &file, None).await;

    let dst = Place::new(to).await;
    let report = restore(&dst, &file, None, false).await.unwrap();
    assert_eq!(
        (report.users, report.replaced, report.ids_shifted),
        (2, 0, false)
    );
    assert_eq!(report.memories, 2 * 5, "3 messages, 1 fact, 1 summary each");
    // Into an empty Postgres store the vector indexes are built once, after the rows.
    match to {
        Kind::Pg => assert!(
            report
                .indexes_built
                .contains(&"ix_memory_embeddings_hnsw_cosine_384".to_owned()),
            "{:?}",
            report.indexes_built
        ),
        Kind::Embedded => assert!(report.indexes_built.is_empty()),
    }
    for b in &before {
        assert_same(b, &dst.export(&b.user.id).await);
    }
    // Search runs on the restored vectors and finds the same memories.
    let q = VectorQuery::new(emb(&[0.1, 1.0, 0.3]), 3);
    let ids = |p: &recall_core::types::SearchPage| -> Vec<i64> {
        p.hits.iter().map(|h| h.memory.id).collect()
    };
    assert_eq!(
        ids(&dst.store.search("ana", &q).await.unwrap()),
        ids(&src.store.search("ana", &q).await.unwrap())
    );
    // New rows get fresh ids after the restored ones.
    let more = dst
        .store
        .append_messages(
            "ana",
            vec![said("s1", Role::User, "more", 9, &[1.0, 0.0, 0.0])],
        )
        .await
        .unwrap();
    let last = before[0]
        .messages
        .iter()
        .chain(&before[1].messages)
        .map(|m| m.id)
        .max()
        .unwrap();
    assert!(more[0].message.id > last);
    src.close().await;
    dst.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_postgres_to_embedded() {
    round_trip(Kind::Pg, Kind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_embedded_to_postgres() {
    round_trip(Kind::Embedded, Kind::Pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_postgres_to_postgres() {
    round_trip(Kind::Pg, Kind::Pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_embedded_to_embedded() {
    round_trip(Kind::Embedded, Kind::Embedded).await;
}

async fn rules(kind: Kind) {
    let src = Place::new(kind).await;
    populate(src.store.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.backup");
    backup_to(&src, &file, None).await;
    let ana = src.export("ana").await;

    // A store with data of its own: whole restores need force; its ids collide.
    let dst = Place::new(kind).await;
    dst.store
        .append_messages(
            "cy",
            (0..12)
                .map(|i| said("c", Role::User, &format!("cy {i}"), i, &[0.2, 0.1, 0.9]))
                .collect(),
        )
        .await
        .unwrap();
    let cy = dst.export("cy").await;
    let e = restore(&dst, &file, None, false).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert!(
        dst.store.get_user("ana").await.unwrap().is_none(),
        "nothing written"
    );

    // One user: restored beside cy, ids moved past cy's, references kept.
    let r = restore(&dst, &file, Some("ana"), false).await.unwrap();
    assert_eq!((r.users, r.replaced, r.ids_shifted), (1, 0, true));
    assert!(dst.store.get_user("bo").await.unwrap().is_none());
    let got = dst.export("ana").await;
    let texts = |e: &UserExport| -> Vec<String> {
        e.memories
            .iter()
            .map(|m| m.memory.content.clone())
            .collect()
    };
    assert_eq!(texts(&got), texts(&ana));
    assert_eq!(got.messages.len(), ana.messages.len());
    for m in &got.memories {
        if let Some(id) = m.memory.message_id {
            let msg = got
                .messages
                .iter()
                .find(|x| x.id == id)
                .expect("message of a memory");
            assert_eq!(msg.content, m.memory.content);
        }
        assert_eq!(m.embeddings.len(), 1);
    }
    let s = &got.summaries[0];
    assert_eq!(s.first_message_id, Some(got.messages[0].id));
    assert_eq!(s.last_message_id, Some(got.messages[1].id));
    assert_eq!(got.settings, json!({ "theme": "ana" }));
    // cy is untouched but for the export audit.
    let mut cy_after = dst.export("cy").await;
    cy_after.audit.truncate(cy.audit.len());
    cy_after.exported_at = cy.exported_at;
    assert_eq!(cy_after, cy);

    // Again with force: ana is replaced (not doubled), bo added.
    let r = restore(&dst, &file, None, true).await.unwrap();
    assert_eq!((r.users, r.replaced), (2, 1));
    assert_eq!(dst.export("ana").await.memories.len(), ana.memories.len());
    assert!(dst.store.get_user("bo").await.unwrap().is_some());

    // A user the backup lacks.
    let e = restore(&dst, &file, Some("zed"), false).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // One user's backup holds that user only.
    let one = dir.path().join("bo.backup");
    backup_to(&src, &one, Some("bo")).await;
    let fresh = Place::new(kind).await;
    restore(&fresh, &one, None, false).await.unwrap();
    assert!(fresh.store.get_user("ana").await.unwrap().is_none());
    assert!(fresh.store.get_user("bo").await.unwrap().is_some());
    for p in [src, dst, fresh] {
        p.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_rules_postgres() {
    rules(Kind::Pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_rules_embedded() {
    rules(Kind::Embedded).await;
}

/// A user whose data was deleted after a backup was taken does not come back from it unless
/// asked; a restore keeps the audit log (the record of the deletion), never doubling it.
async fn deletions_stay(kind: Kind) {
    let p = Place::new(kind).await;
    populate(p.store.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.backup");
    backup_to(&p, &file, None).await;
    let log = |user: &'static str| {
        let store = p.store.clone();
        async move {
            store
                .audit_log(
                    user,
                    &PageRequest {
                        first: 100,
                        after: None,
                    },
                )
                .await
                .unwrap()
                .items
        }
    };
    let actions = |entries: &[recall_core::types::AuditEntry]| -> Vec<String> {
        entries.iter().map(|e| e.action.clone()).collect()
    };
    let bo = log("bo").await;
    assert!(!bo.is_empty());
    p.engine
        .delete_user("ana", &Actor::user("ana"))
        .await
        .unwrap();

    let e = restore(&p, &file, None, true).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let said = e.to_string();
    assert!(
        said.contains("ana") && said.contains("--include-deleted"),
        "{said}"
    );
    assert!(!said.contains("bo"), "{said}");
    assert!(
        p.store.get_user("ana").await.unwrap().is_none(),
        "nothing written"
    );

    // bo, restored in place, keeps his log once, with the restore added.
    restore(&p, &file, Some("bo"), true).await.unwrap();
    let after = log("bo").await;
    assert_eq!(after[..bo.len()], bo[..]);
    assert_eq!(actions(&after[bo.len()..]), ["restore"]);

    // Asked for, ana comes back; her log holds the deletion, and what came before it once.
    let ana_before = log("ana").await;
    let r = p
        .engine
        .restore(
            &file,
            &RestoreOptions {
                force: true,
                include_deleted: true,
                ..Default::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    assert_eq!(r.users, 2);
    assert!(p.store.get_user("ana").await.unwrap().is_some());
    let ana = log("ana").await;
    assert_eq!(ana[..ana_before.len()], ana_before[..]);
    assert_eq!(actions(&ana[ana_before.len()..]), ["restore"]);
    assert_eq!(
        actions(&ana).iter().filter(|a| *a == "delete_user").count(),
        1
    );
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_stay_postgres() {
    deletions_stay(Kind::Pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_stay_embedded() {
    deletions_stay(Kind::Embedded).await;
}

/// The records of a backup file, changed by `edit`, written back as a well-formed file (its
/// count and checksum made anew): what a hand-edited or forged file looks like.
fn rewrite(from: &Path, to: &Path, edit: impl Fn(&mut Vec<recall_core::backup::Record>)) {
    use recall_core::backup::Record;
    use sha2::Digest;
    use std::io::{BufRead, Write};
    let text = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(
        std::fs::File::open(from).unwrap(),
    ));
    let mut records: Vec<Record> = text
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .filter(|r| !matches!(r, Record::End { .. }))
        .collect();
    edit(&mut records);
    let mut out =
        flate2::write::GzEncoder::new(std::fs::File::create(to).unwrap(), Default::default());
    let mut hash = sha2::Sha256::new();
    for r in &records {
        let line = serde_json::to_string(r).unwrap() + "\n";
        hash.update(line.as_bytes());
        out.write_all(line.as_bytes()).unwrap();
    }
    let end = Record::End {
        records: records.len() as u64,
        sha256: hex::encode(hash.finalize()),
    };
    out.write_all((serde_json::to_string(&end).unwrap() + "\n").as_bytes())
        .unwrap();
    out.finish().unwrap();
}

/// A file whose rows point at another user's rows (a session, a superseded memory, a memory
/// an embedding or a key belongs to) is refused whole: restored as it is, it would join the
/// two users' data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_across_users_are_refused() {
    use recall_core::backup::Record;
    let src = Place::new(Kind::Embedded).await;
    populate(src.store.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.backup");
    backup_to(&src, &file, None).await;
    let first_of = |records: &[Record], user: &str, table: &str| -> i64 {
        records
            .iter()
            .find_map(|r| match (r, table) {
                (Record::Sessions { user: u, rows }, "sessions") if u == user => Some(rows[0].id),
                (Record::Memories { user: u, rows }, "memories") if u == user => Some(rows[0].id),
                _ => None,
            })
            .unwrap()
    };
    // Unchanged, the rewritten file restores: the rewriting itself is sound.
    let same = dir.path().join("same.backup");
    rewrite(&file, &same, |_| {});
    let dst = Place::new(Kind::Embedded).await;
    restore(&dst, &same, None, false).await.unwrap();
    dst.close().await;

    type Edit = Box<dyn Fn(&mut Vec<Record>)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "memory session",
            Box::new(move |records: &mut Vec<Record>| {
                let theirs = first_of(records, "bo", "sessions");
                for r in records.iter_mut() {
                    if let Record::Memories { user, rows } = r
                        && user == "ana"
                    {
                        rows[0].session_id = Some(theirs);
                    }
                }
            }),
        ),
        (
            "supersedes",
            Box::new(move |records: &mut Vec<Record>| {
                let theirs = first_of(records, "bo", "memories");
                for r in records.iter_mut() {
                    if let Record::Memories { user, rows } = r
                        && user == "ana"
                    {
                        rows[0].supersedes = Some(theirs);
                    }
                }
            }),
        ),
        (
            "embedding",
            Box::new(move |records: &mut Vec<Record>| {
                let theirs = first_of(records, "bo", "memories");
                for r in records.iter_mut() {
                    if let Record::Embeddings { user, rows } = r
                        && user == "ana"
                    {
                        rows[0].memory_id = theirs;
                    }
                }
            }),
        ),
    ];
    for (what, edit) in cases {
        let forged = dir.path().join("forged.backup");
        rewrite(&file, &forged, edit);
        let dst = Place::new(Kind::Embedded).await;
        let e = restore(&dst, &forged, None, false).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}");
        assert!(
            e.to_string().contains("not one of that user's"),
            "{what}: {e}"
        );
        assert!(e.to_string().contains(what), "{what}: {e}");
        for u in ["ana", "bo"] {
            assert!(
                dst.store.get_user(u).await.unwrap().is_none(),
                "{what}: nothing written"
            );
        }
        dst.close().await;
    }
    src.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_write_nothing() {
    let src = Place::new(Kind::Embedded).await;
    populate(src.store.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.backup");
    backup_to(&src, &file, None).await;
    let good = std::fs::read(&file).unwrap();
    let dst = Place::new(Kind::Pg).await;
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    for (what, bytes) in [
        ("truncated", good[..good.len() - 20].to_vec()),
        ("half", good[..good.len() / 2].to_vec()),
        ("flipped", flipped),
        ("empty", Vec::new()),
        ("not a backup", b"hello\n".to_vec()),
    ] {
        let bad = dir.path().join(format!("{what}.backup"));
        std::fs::write(&bad, bytes).unwrap();
        let e = restore(&dst, &bad, None, false).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}");
        assert!(e.to_string().contains("not a valid backup"), "{what}: {e}");
    }
    let e = restore(&dst, &dir.path().join("missing"), None, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    for u in ["ana", "bo"] {
        assert!(
            dst.store.get_user(u).await.unwrap().is_none(),
            "nothing written"
        );
    }
    // A failed backup leaves no file behind under its name.
    let e = src
        .engine
        .backup(&dir.path().join("no/such/dir/x"), &BackupOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no/such/dir"), "{e}");
    src.close().await;
    dst.close().await;
}

/// While one task appends messages (each with its memory and vector, one transaction each),
/// a backup is taken: what it holds is the first `k` messages, each with its memory and
/// vector, never a message without its memory or the reverse.
async fn consistent_under_writes(kind: Kind) {
    let src = Place::new(kind).await;
    let seed: Vec<MessageWrite> = (0..1500)
        .map(|i| said("s", Role::User, &format!("m{i}"), 0, &[1.0, i as f32, 0.5]))
        .collect();
    src.store.append_messages("w", seed).await.unwrap();
    let store = src.store.clone();
    let writer = tokio::spawn(async move {
        for i in 1500..1700 {
            store
                .append_messages(
                    "w",
                    vec![said(
                        "s",
                        Role::User,
                        &format!("m{i}"),
                        0,
                        &[1.0, i as f32, 0.5],
                    )],
                )
                .await
                .unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for n in 0..3 {
        let file = dir.path().join(format!("w{n}.backup"));
        src.engine
            .backup(&file, &BackupOptions::default())
            .await
            .unwrap();
        files.push(file);
    }
    writer.await.unwrap();
    // Each chunk of memories is followed by their embeddings: the user's vectors are not
    // read whole.
    let mut reader = recall_core::backup::open(&files[0], None, &[]).unwrap();
    let mut order = Vec::new();
    while let Some(record) = reader.next_checked().unwrap() {
        match record {
            Record::Memories { rows, .. } => order.push(("memories", rows.len())),
            Record::Embeddings { rows, .. } => order.push(("embeddings", rows.len())),
            _ => {}
        }
    }
    assert!(order.len() >= 4, "{order:?}");
    for pair in order.chunks(2) {
        assert_eq!(pair[0].0, "memories", "{order:?}");
        assert_eq!(pair[1], ("embeddings", pair[0].1), "{order:?}");
    }
    for file in files {
        let dst = Place::new(Kind::Embedded).await;
        restore(&dst, &file, None, false).await.unwrap();
        let got = dst.export("w").await;
        let k = got.messages.len();
        assert!((1500..=1700).contains(&k), "{k}");
        let texts: Vec<String> = got.messages.iter().map(|m| m.content.clone()).collect();
        let want: Vec<String> = (0..k).map(|i| format!("m{i}")).collect();
        assert_eq!(texts, want, "a prefix of the writes");
        assert_eq!(got.memories.len(), k, "every message with its memory");
        assert!(got.memories.iter().all(|m| m.embeddings.len() == 1));
        dst.close().await;
    }
    src.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_writes_is_consistent_postgres() {
    consistent_under_writes(Kind::Pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_writes_is_consistent_embedded() {
    consistent_under_writes(Kind::Embedded).await;
}

/// With a data key, the backup is encrypted (AES-256-GCM): it restores with that key only,
/// and an altered byte anywhere is refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_backups_need_their_key() {
    use recall_core::crypto::{DataKey, MAGIC};
    let key = Arc::new(DataKey::from_bytes([42; 32]));
    let mut src = Place::new(Kind::Embedded).await;
    src.engine = Engine::without_models(src.store.clone()).with_data_key(Some(key.clone()));
    populate(src.store.as_ref()).await;
    let before = src.export("ana").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sealed.backup");
    let report = src
        .engine
        .backup(&file, &BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(report.encrypted_with, Some(key.id()));
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..8], MAGIC);

    let mut dst = Place::new(Kind::Pg).await;
    let e = restore(&dst, &file, None, false).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains(&key.id()), "names the key: {e}");
    dst.engine = Engine::without_models(dst.store.clone())
        .with_data_key(Some(Arc::new(DataKey::from_bytes([43; 32]))));
    let e = restore(&dst, &file, None, false).await.unwrap_err();
    assert!(e.to_string().contains("not with a key given"), "{e}");
    // After a rotation the old key, given as a previous one, still opens the file.
    dst.engine = Engine::without_models(dst.store.clone())
        .with_data_key(Some(Arc::new(DataKey::from_bytes([43; 32]))))
        .with_previous_data_keys(vec![key.clone()]);
    let mut altered = bytes.clone();
    let at = altered.len() - 40;
    altered[at] ^= 1;
    let bad = dir.path().join("altered.backup");
    std::fs::write(&bad, altered).unwrap();
    let e = restore(&dst, &bad, None, false).await.unwrap_err();
    assert!(e.to_string().contains("not a valid backup"), "{e}");
    assert!(
        dst.store.get_user("ana").await.unwrap().is_none(),
        "nothing written"
    );
    restore(&dst, &file, None, false).await.unwrap();
    assert_same(&before, &dst.export("ana").await);
    src.close().await;
    dst.close().await;
}

/// A memory linked to one that is gone (left by an expiry purge before the purge cleared such
/// links) is backed up without the link, and the file restores.
#[tokio::test(flavor = "multi_thread")]
async fn a_link_to_a_memory_that_is_gone_is_left_out() {
    use sea_orm::ConnectionTrait;
    let src = Place::new(Kind::Pg).await;
    let stored = src
        .store
        .add_memories(
            "ana",
            vec![NewMemory::new(
                MemoryKind::Fact,
                "the door code is 2222",
                emb(&[1.0, 0.0]),
            )],
        )
        .await
        .unwrap();
    let id = stored[0].id;
    let conn = src.pg.as_ref().unwrap().connect().await;
    conn.execute_unprepared(&format!(
        "UPDATE memories SET supersedes = {} WHERE id = {id}",
        id + 1000
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.bak");
    src.engine
        .backup(&path, &BackupOptions { user: None })
        .await
        .unwrap();
    let dst = Place::new(Kind::Embedded).await;
    restore(&dst, &path, None, false).await.unwrap();
    let back = dst.export("ana").await.memories;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].memory.content, "the door code is 2222");
    assert_eq!(back[0].memory.supersedes, None);
    src.close().await;
    dst.close().await;
}

/// Restoring a user in place (their rows replaced by older ones) never hands out again the
/// ids of the rows it replaced.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_never_moves_ids_back() {
    for kind in [Kind::Pg, Kind::Embedded] {
        let p = Place::new(kind).await;
        populate(p.store.as_ref()).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ana.backup");
        backup_to(&p, &file, Some("ana")).await;
        let later = p
            .store
            .add_memories(
                "ana",
                vec![NewMemory::new(
                    MemoryKind::Fact,
                    "written after",
                    emb(&[0.3, 0.3, 0.3]),
                )],
            )
            .await
            .unwrap()[0]
            .id;
        restore(&p, &file, Some("ana"), false).await.unwrap();
        let next = p
            .store
            .add_memories(
                "ana",
                vec![NewMemory::new(
                    MemoryKind::Fact,
                    "written anew",
                    emb(&[0.3, 0.3, 0.3]),
                )],
            )
            .await
            .unwrap()[0]
            .id;
        assert!(next > later, "{kind:?}: {next} after {later}");
        p.close().await;
    }
}

/// A user switched to a new embedding model by a re-embedding comes back on it: their vectors
/// are of it, and they search with it.
#[tokio::test(flavor = "multi_thread")]
async fn the_user_s_embedding_model_comes_back() {
    let src = Place::new(Kind::Embedded).await;
    let mut fact = NewMemory::new(MemoryKind::Fact, "Ana collects stamps", emb(&[0.3, 0.4]));
    fact.embedding.model = "model-b".into();
    src.store.add_memories("ana", vec![fact]).await.unwrap();
    assert!(
        src.store
            .switch_embedding_model("ana", "model-b")
            .await
            .unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.backup");
    src.engine
        .backup(&file, &BackupOptions::default())
        .await
        .unwrap();
    let dst = Place::new(Kind::Pg).await;
    restore(&dst, &file, None, false).await.unwrap();
    assert_eq!(
        dst.store.embedding_model("ana").await.unwrap().as_deref(),
        Some("model-b")
    );
    src.close().await;
    dst.close().await;
}
