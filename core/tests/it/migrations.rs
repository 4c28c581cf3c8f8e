//! Migrations run up and down against the real servers, and leave the schema they promise.
use recall_migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

use crate::fixtures::PgDb;

const TABLES: [&str; 12] = [
    "deep_memory_pairs",
    "deep_memory_adapters",
    "encryption_keys",
    "jobs",
    "users",
    "sessions",
    "messages",
    "summaries",
    "memories",
    "memory_embeddings",
    "user_settings",
    "audit_log",
];

async fn tables(db: &DatabaseConnection) -> Vec<String> {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => {
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' \
             AND table_name <> 'seaql_migrations' ORDER BY 1"
        }
        _ => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name <> 'seaql_migrations' ORDER BY 1"
        }
    };
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.try_get_by_index::<String>(0).unwrap())
        .collect()
}

async fn up_down_up(db: &DatabaseConnection) {
    let mut expected: Vec<String> = TABLES.iter().map(|s| s.to_string()).collect();
    expected.sort();
    Migrator::up(db, None).await.unwrap();
    assert_eq!(tables(db).await, expected);
    assert!(
        Migrator::get_pending_migrations(db)
            .await
            .unwrap()
            .is_empty()
    );
    Migrator::down(db, None).await.unwrap();
    assert!(tables(db).await.is_empty(), "down removes every table");
    assert_eq!(
        Migrator::get_pending_migrations(db).await.unwrap().len(),
        Migrator::migrations().len()
    );
    Migrator::up(db, None).await.unwrap();
    assert_eq!(tables(db).await, expected, "up again after down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_up_down_up_and_indexes() {
    let pg = PgDb::create().await;
    let db = pg.connect().await;
    up_down_up(&db).await;
    let indexes: Vec<(String, String)> = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.try_get_by_index(0).unwrap(),
                r.try_get_by_index(1).unwrap(),
            )
        })
        .collect();
    let def = |name: &str| {
        indexes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("index {name} missing; have {indexes:?}"))
    };
    let hnsw = def("ix_memory_embeddings_hnsw_cosine_384");
    assert!(
        hnsw.contains("USING hnsw") && hnsw.contains("vector_cosine_ops"),
        "{hnsw}"
    );
    assert!(hnsw.contains("WHERE (dims = 384)"), "{hnsw}");
    assert!(def("ix_memories_tsv").contains("USING gin"));
    assert!(def("ix_memories_tags").contains("jsonb_path_ops"));
    // The generated tsvector column follows content.
    db.execute_unprepared(
        "INSERT INTO users (external_id, revision, created_at) VALUES ('u', 0, now());
         INSERT INTO memories (user_id, kind, content, tags, metadata, importance, created_at, updated_at)
         VALUES ((SELECT id FROM users), 'fact', 'Dolphins swimming in the estuary', '[]', '{}', 0.5, now(), now());",
    )
    .await
    .unwrap();
    let hit: i64 = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) FROM memories WHERE tsv @@ plainto_tsquery('english', 'dolphin swim')",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap();
    assert_eq!(hit, 1);
    db.close().await.unwrap();
    pg.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_up_down_up() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("m.sqlite3").display()
    );
    let db = Database::connect(&url).await.unwrap();
    up_down_up(&db).await;
    db.close().await.unwrap();
}

/// Replicas that start together against a fresh database all open it: the migrations run
/// once, under an advisory lock, and the others find them done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let pg = PgDb::create().await;
    let opens = (0..6).map(|_| {
        let config = recall_core::store::StoreConfig::postgres(pg.url.clone());
        tokio::spawn(async move { recall_core::store::PgStore::open(&config).await })
    });
    for open in futures::future::join_all(opens).await {
        let store = open.unwrap().expect("every replica opens the store");
        store.connection().clone().close().await.ok();
    }
    let db = pg.connect().await;
    let applied: i64 = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) FROM seaql_migrations",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap();
    assert_eq!(
        applied as usize,
        recall_migrations::Migrator::migrations().len()
    );
    db.close().await.unwrap();
    pg.drop_db().await;
}

/// A migration that fails part-way on SQLite leaves nothing of itself: once the cause is
/// gone, it runs again whole (the columns it had added, kept, made it fail for ever after
/// with "duplicate column", and the store never opened again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failed_migration_runs_again_whole() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("m.sqlite3").display()
    );
    let db = Database::connect(&url).await.unwrap();
    let before = Migrator::migrations()
        .iter()
        .position(|m| m.name() == "m20261201_000005_memory_validity")
        .unwrap();
    Migrator::up(&db, Some(before as u32)).await.unwrap();
    // In the way of the migration's last statement, after its new columns.
    db.execute_unprepared("CREATE INDEX ix_memories_expires ON memories (id)")
        .await
        .unwrap();
    assert!(Migrator::up(&db, Some(1)).await.is_err());
    db.execute_unprepared("DROP INDEX ix_memories_expires")
        .await
        .unwrap();
    Migrator::up(&db, None).await.unwrap();
    assert!(
        Migrator::get_pending_migrations(&db)
            .await
            .unwrap()
            .is_empty()
    );
    db.close().await.unwrap();
}

/// Steps down from the last migration until `name` is undone.
async fn down_through(db: &DatabaseConnection, name: &str) -> Result<(), sea_orm::DbErr> {
    let all = Migrator::migrations();
    let at = all.iter().position(|m| m.name() == name).unwrap();
    Migrator::down(db, Some((all.len() - at) as u32)).await
}

/// Going below encryption at rest is refused while sealed rows exist (their ciphertext
/// would be served as text); going below memory keys takes the keys with it (the older
/// version refuses every read that meets a memory of kind `key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_down_refuses_sealed_rows_and_takes_the_keys() {
    use recall_core::crypto::{DataKey, Keyring};
    use recall_core::types::{MemoryKind, NewMemory};

    let fact =
        |text: &str| NewMemory::new(MemoryKind::Fact, text, crate::fixtures::emb(&[1.0, 0.0]));
    let url = |dir: &tempfile::TempDir| {
        format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("deep-recall.sqlite3").display()
        )
    };

    let sealed = tempfile::tempdir().unwrap();
    let mut config = recall_core::store::StoreConfig::embedded(sealed.path());
    config.keys = std::sync::Arc::new(Keyring::new(Some(DataKey::from_bytes([7; 32])), vec![]));
    let store = recall_core::store::open(&config).await.unwrap();
    store
        .add_memories("ann", vec![fact("A sealed fact.")])
        .await
        .unwrap();
    drop(store);
    let db = Database::connect(&url(&sealed)).await.unwrap();
    let refused = down_through(&db, "m20261201_000001_encryption_at_rest").await;
    assert!(refused.is_err_and(|e| e.to_string().contains("sealed rows")));
    db.close().await.unwrap();

    let plain = tempfile::tempdir().unwrap();
    let store = recall_core::store::open(&recall_core::store::StoreConfig::embedded(plain.path()))
        .await
        .unwrap();
    let ids = store
        .add_memories("ann", vec![fact("A turn.")])
        .await
        .unwrap();
    let key = NewMemory {
        key_for: Some(ids[0].id),
        ..NewMemory::new(
            MemoryKind::Key,
            "A turn's key.",
            crate::fixtures::emb(&[0.0, 1.0]),
        )
    };
    store.add_memories("ann", vec![key]).await.unwrap();
    drop(store);
    let db = Database::connect(&url(&plain)).await.unwrap();
    down_through(&db, "m20261202_000001_memory_keys")
        .await
        .unwrap();
    let kinds: Vec<String> = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT kind FROM memories ORDER BY id",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.try_get_by_index(0).unwrap())
        .collect();
    assert_eq!(kinds, ["fact"]);
    db.close().await.unwrap();
}

/// Going below memory validity is refused while a memory is superseded (it would read as
/// current again) or due to expire (it would stay for ever); a store with neither goes down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_down_refuses_superseded_and_expiring_memories() {
    use recall_core::types::{MemoryKind, NewMemory};

    let fact =
        |text: &str| NewMemory::new(MemoryKind::Fact, text, crate::fixtures::emb(&[1.0, 0.0]));
    let down = |dir: tempfile::TempDir| async move {
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("deep-recall.sqlite3").display()
        );
        let db = Database::connect(&url).await.unwrap();
        let result = down_through(&db, "m20261201_000005_memory_validity").await;
        db.close().await.unwrap();
        result
    };
    async fn open(
        dir: &tempfile::TempDir,
    ) -> recall_core::Result<std::sync::Arc<dyn recall_core::store::MemoryStore>> {
        recall_core::store::open(&recall_core::store::StoreConfig::embedded(dir.path())).await
    }

    let superseded = tempfile::tempdir().unwrap();
    let store = open(&superseded).await.unwrap();
    let old = store
        .add_memories("ann", vec![fact("Ann lives in Oslo.")])
        .await
        .unwrap();
    let new = NewMemory {
        supersedes: Some(old[0].id),
        ..fact("Ann lives in Bergen.")
    };
    store.add_memories("ann", vec![new]).await.unwrap();
    drop(store);
    let refused = down(superseded).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("superseded")));

    let expiring = tempfile::tempdir().unwrap();
    let store = open(&expiring).await.unwrap();
    let later = NewMemory {
        expires_at: Some(chrono::Utc::now() + chrono::Duration::days(1)),
        ..fact("Ann is in Rome this week.")
    };
    store.add_memories("ann", vec![later]).await.unwrap();
    drop(store);
    let refused = down(expiring).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("expiring")));

    let plain = tempfile::tempdir().unwrap();
    let store = open(&plain).await.unwrap();
    store
        .add_memories("ann", vec![fact("Ann likes tea.")])
        .await
        .unwrap();
    drop(store);
    down(plain).await.unwrap();
}
