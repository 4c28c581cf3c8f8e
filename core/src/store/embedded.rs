//! The embedded store: SQLite (through sea-orm) in a data directory, with vectors searched
//! in-process. Nothing to install or start.
//!
//! Embeddings are stored as little-endian `f32` blobs. A search loads the user's vectors once
//! into memory (with the fields that filters need) and keeps them there, kept current by the
//! store's own writes and checked against the user's `revision` so that writes by another
//! process are seen too. Every vector of the user is compared: exactly for users with fewer
//! than 8,192 vectors of a model; for larger users through int8 codes first (a quarter of the
//! bytes), the best candidates re-scored exactly. 100k memories of one user answer in a few
//! milliseconds, a million in ~15 ms (docs/benchmarks.md), as long as they fit the cache.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use recall_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    TransactionTrait, Value as DbValue,
};

use super::scan::ModelVectors;
use super::sql::keys::MEMORY_CONTENT;
use super::sql::{
    Delta, EmbeddingRow, IndexQuery, IndexedMemory, Meta, SqlStore, TextIndexQuery, VectorIndex,
    embeddings_statement, stmt,
};
use super::{StoreConfig, StoreLocation};
use crate::crypto::Keyring;
use crate::error::{Error, Result};
use crate::text::Bm25Index;
use crate::types::{ExportedEmbedding, Metric};

/// The database file inside the data directory.
pub const DB_FILE: &str = "deep-recall.sqlite3";

/// Rows per multi-row INSERT of embeddings.
const CHUNK: usize = 500;

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(b: &[u8]) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(Error::Internal(
            "embedding blob length is not a multiple of 4".into(),
        ));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Everything cached for one user: vectors per embedding model, and the full-text index.
#[derive(Debug, Default)]
struct UserVectors {
    revision: i64,
    models: HashMap<String, ModelVectors>,
    lexical: Bm25Index,
    /// Filter fields of every memory in `lexical`.
    docs: HashMap<i64, Meta>,
}

impl UserVectors {
    fn len(&self) -> usize {
        self.models.values().map(ModelVectors::len).sum()
    }

    fn add(&mut self, m: IndexedMemory) {
        let meta = m.meta();
        if !self.docs.contains_key(&meta.id) {
            self.lexical.insert(meta.id, &m.content);
            self.docs.insert(meta.id, meta.clone());
        }
        let entry = self.models.entry(m.model).or_default();
        if entry.dims == 0 {
            entry.dims = m.vector.len();
        }
        if entry.dims != m.vector.len() {
            return;
        }
        entry.push(meta, &m.vector);
    }

    /// Records that a memory was superseded (at `at`), or is current again (`None`).
    fn supersede(&mut self, id: i64, at: Option<DateTime<Utc>>) {
        for mv in self.models.values_mut() {
            if let Some(&pos) = mv.position.get(&id) {
                mv.meta[pos].superseded_at = at;
            }
        }
        if let Some(meta) = self.docs.get_mut(&id) {
            meta.superseded_at = at;
        }
    }

    fn remove(&mut self, id: i64) {
        for mv in self.models.values_mut() {
            mv.remove(id);
        }
        self.lexical.remove(id);
        self.docs.remove(&id);
    }
}

struct CacheEntry {
    vectors: Arc<RwLock<UserVectors>>,
    last_used: AtomicU64,
}

#[derive(Default)]
struct Cache {
    users: HashMap<i64, CacheEntry>,
    tick: u64,
}

/// The in-process vector side of [`EmbeddedStore`].
pub(crate) struct LocalVectors {
    metric: Metric,
    /// Opens sealed memory text for the full-text index.
    keys: Arc<Keyring>,
    max_vectors: usize,
    cache: Mutex<Cache>,
}

impl LocalVectors {
    /// The cached vectors of a user at `revision` or later, loading them if needed.
    async fn user_vectors(
        &self,
        db: &DatabaseConnection,
        user_id: i64,
        revision: i64,
    ) -> Result<Arc<RwLock<UserVectors>>> {
        {
            let mut cache = self.cache.lock().expect("vector cache");
            cache.tick += 1;
            let tick = cache.tick;
            if let Some(entry) = cache.users.get(&user_id) {
                let fresh = entry.vectors.read().expect("user vectors").revision >= revision;
                if fresh {
                    entry.last_used.store(tick, AtomicOrdering::Relaxed);
                    return Ok(entry.vectors.clone());
                }
            }
        }
        let loaded = load_user(db, &self.keys, user_id).await?;
        let mut cache = self.cache.lock().expect("vector cache");
        cache.tick += 1;
        let tick = cache.tick;
        if let Some(entry) = cache.users.get(&user_id) {
            // Another task may have loaded (or advanced) it meanwhile; keep the newer one.
            if entry.vectors.read().expect("user vectors").revision >= loaded.revision {
                entry.last_used.store(tick, AtomicOrdering::Relaxed);
                return Ok(entry.vectors.clone());
            }
        }
        let vectors = Arc::new(RwLock::new(loaded));
        cache.users.insert(
            user_id,
            CacheEntry {
                vectors: vectors.clone(),
                last_used: AtomicU64::new(tick),
            },
        );
        self.evict(&mut cache, user_id);
        Ok(vectors)
    }

    /// Drops least recently used users until the cache fits (never `keep`).
    fn evict(&self, cache: &mut Cache, keep: i64) {
        let mut total: usize = cache
            .users
            .values()
            .map(|e| e.vectors.read().expect("user vectors").len())
            .sum();
        while total > self.max_vectors {
            let Some((&victim, _)) = cache
                .users
                .iter()
                .filter(|(id, _)| **id != keep)
                .min_by_key(|(_, e)| e.last_used.load(AtomicOrdering::Relaxed))
            else {
                break;
            };
            if let Some(e) = cache.users.remove(&victim) {
                total -= e.vectors.read().expect("user vectors").len();
            }
        }
    }
}

async fn load_user(db: &DatabaseConnection, keys: &Keyring, user_id: i64) -> Result<UserVectors> {
    // One read transaction: the revision and the rows come from the same snapshot.
    let txn = db.begin().await?;
    let revision: i64 = txn
        .query_one_raw(stmt(
            DbBackend::Sqlite,
            "SELECT revision FROM users WHERE id = $1",
            vec![user_id.into()],
        ))
        .await?
        .map(|r| r.try_get_by_index(0))
        .transpose()?
        .unwrap_or(0);
    let rows = txn
        .query_all_raw(stmt(
            DbBackend::Sqlite,
            "SELECT e.memory_id, e.model, e.embedding, m.session_id, m.kind, m.role, m.tags, \
             m.created_at, m.content, m.key_id, m.expires_at, m.superseded_at \
             FROM memory_embeddings e JOIN memories m ON m.id = e.memory_id \
             WHERE e.user_id = $1 AND m.user_id = $1 ORDER BY e.memory_id",
            vec![user_id.into()],
        ))
        .await?;
    txn.commit().await?;
    let mut user = UserVectors {
        revision,
        ..UserVectors::default()
    };
    for r in rows {
        let tags: serde_json::Value = r.try_get_by_index(6)?;
        let role: Option<String> = r.try_get_by_index(5)?;
        let kind: String = r.try_get_by_index(4)?;
        user.add(IndexedMemory {
            memory_id: r.try_get_by_index(0)?,
            model: r.try_get_by_index(1)?,
            vector: from_blob(&r.try_get_by_index::<Vec<u8>>(2)?)?,
            session_id: r.try_get_by_index(3)?,
            kind: kind.parse()?,
            role: role.as_deref().map(str::parse).transpose()?,
            tags: tags
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            created_at: r.try_get_by_index(7)?,
            expires_at: r.try_get_by_index(10)?,
            superseded_at: r.try_get_by_index(11)?,
            content: keys.open(
                r.try_get_by_index::<Option<String>>(9)?.as_deref(),
                MEMORY_CONTENT,
                &r.try_get_by_index::<String>(8)?,
            )?,
        });
    }
    Ok(user)
}

#[async_trait]
impl VectorIndex for LocalVectors {
    async fn insert(&self, txn: &DatabaseTransaction, rows: &[EmbeddingRow<'_>]) -> Result<()> {
        for chunk in rows.chunks(CHUNK) {
            let mut text = String::from(
                "INSERT INTO memory_embeddings \
                 (memory_id, model, user_id, dims, embedding, created_at) VALUES ",
            );
            let mut values: Vec<DbValue> = Vec::with_capacity(chunk.len() * 6);
            for (i, r) in chunk.iter().enumerate() {
                if i > 0 {
                    text.push_str(", ");
                }
                // Plain `?` in order: numbered ones (`?7`) make binding quadratic in SQLite
                // (each `sqlite3_bind_parameter_name` walks the list of names; 3,000 a
                // statement here).
                text.push_str("(?, ?, ?, ?, ?, ?)");
                values.push(r.memory_id.into());
                values.push(r.model.to_owned().into());
                values.push(r.user_id.into());
                values.push((r.vector.len() as i32).into());
                values.push(to_blob(r.vector).into());
                values.push(r.created_at.into());
            }
            txn.execute_raw(sea_orm::Statement::from_sql_and_values(
                DbBackend::Sqlite,
                text,
                values,
            ))
            .await?;
        }
        Ok(())
    }

    async fn search(&self, db: &DatabaseConnection, q: &IndexQuery<'_>) -> Result<Vec<(i64, f64)>> {
        let vectors = self.user_vectors(db, q.user_id, q.revision).await?;
        let user = vectors.read().expect("user vectors");
        let Some(mv) = user.models.get(q.model) else {
            return Ok(vec![]);
        };
        mv.search(self.metric, q)
    }

    async fn text_search(
        &self,
        db: &DatabaseConnection,
        q: &TextIndexQuery<'_>,
    ) -> Result<Vec<(i64, f64)>> {
        let vectors = self.user_vectors(db, q.user_id, q.revision).await?;
        let user = vectors.read().expect("user vectors");
        Ok(user.lexical.search_text(q.text, q.limit, |id| {
            user.docs.get(&id).is_some_and(|m| m.matches(q.filter))
        }))
    }

    async fn vectors_of(
        &self,
        db: &DatabaseConnection,
        user_id: i64,
        revision: i64,
        model: &str,
        ids: &[i64],
    ) -> Result<Vec<(i64, Vec<f32>)>> {
        let vectors = self.user_vectors(db, user_id, revision).await?;
        let user = vectors.read().expect("user vectors");
        let Some(mv) = user.models.get(model) else {
            return Ok(vec![]);
        };
        Ok(mv.vectors_of(ids))
    }

    async fn embeddings_of(
        &self,
        db: &DatabaseTransaction,
        user_id: i64,
        with_vectors: bool,
        ids: Option<&[i64]>,
    ) -> Result<Vec<(i64, ExportedEmbedding)>> {
        let Some((sql, values)) = embeddings_statement(user_id, with_vectors, ids) else {
            return Ok(vec![]);
        };
        let rows = db
            .query_all_raw(stmt(DbBackend::Sqlite, &sql, values))
            .await?;
        rows.into_iter()
            .map(|r| {
                let vector = if with_vectors {
                    Some(from_blob(&r.try_get_by_index::<Vec<u8>>(3)?)?)
                } else {
                    None
                };
                Ok((
                    r.try_get_by_index::<i64>(0)?,
                    ExportedEmbedding {
                        model: r.try_get_by_index(1)?,
                        dims: r.try_get_by_index::<i32>(2)? as usize,
                        vector,
                    },
                ))
            })
            .collect()
    }

    fn tracks_changes(&self) -> bool {
        true
    }

    fn compact(&self) -> usize {
        let mut cache = self.cache.lock().expect("vector cache");
        let released = cache
            .users
            .values()
            .map(|e| e.vectors.read().expect("user vectors").len())
            .sum();
        cache.users.clear();
        released
    }

    fn committed(&self, user_id: i64, revision: i64, delta: Delta) {
        let mut cache = self.cache.lock().expect("vector cache");
        let Some(entry) = cache.users.get(&user_id) else {
            return;
        };
        let mut user = entry.vectors.write().expect("user vectors");
        if delta.reset || user.revision != revision - 1 {
            // The cache missed a change (or cannot apply this one): reload on next search.
            drop(user);
            cache.users.remove(&user_id);
            return;
        }
        for id in &delta.removed {
            user.remove(*id);
        }
        for m in delta.added {
            user.add(m);
        }
        for (id, at) in delta.superseded {
            user.supersede(id, at);
        }
        user.revision = revision;
        drop(user);
        self.evict(&mut cache, user_id);
    }
}

/// The embedded default store: SQLite in `<dir>/deep-recall.sqlite3`.
pub struct EmbeddedStore {
    inner: SqlStore<LocalVectors>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) and migrates the store in the configured directory.
    pub async fn open(config: &StoreConfig) -> Result<Self> {
        let StoreLocation::Embedded { dir } = &config.location else {
            return Err(Error::invalid("EmbeddedStore needs a directory location"));
        };
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(DB_FILE);
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut options = ConnectOptions::new(url);
        options
            .max_connections(config.max_connections.max(1))
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    // With WAL, NORMAL loses no committed transaction when the process dies;
                    // only a power cut can roll back the last few.
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(std::time::Duration::from_secs(30))
            });
        let db = Database::connect(options)
            .await
            .map_err(|e| Error::Unavailable {
                message: format!("cannot open {}", path.display()),
                source: Some(Box::new(e)),
            })?;
        Migrator::up(&db, None).await?;
        let mut store = Self {
            inner: SqlStore::new(
                db,
                LocalVectors {
                    metric: config.metric,
                    keys: config.keys.clone(),
                    max_vectors: config.max_cached_vectors,
                    cache: Mutex::new(Cache::default()),
                },
                config.metric,
                config.limits.clone(),
                "embedded",
                None,
                config.keys.clone(),
            ),
        };
        store.inner.memory_keys_for_new_users = config.memory_keys_for_new_users;
        store.inner.check_keys().await?;
        Ok(store)
    }

    /// The underlying connection (for maintenance and tests).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.inner.db
    }
}

super::delegate_store!(EmbeddedStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trip() {
        let v = vec![1.5f32, -0.25, 3.0e-8];
        assert_eq!(from_blob(&to_blob(&v)).unwrap(), v);
        assert!(from_blob(&[1, 2, 3]).is_err());
    }

    /// Rows fetched by id are looked up by primary key, not found by walking the user's whole
    /// index range (which made every search on a large user cost a scan of their memories).
    #[tokio::test]
    async fn rows_by_id_are_looked_up_by_key() {
        use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryTrait};

        use super::super::entity::memory;
        use super::super::sql::owned;

        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&StoreConfig::embedded(dir.path()))
            .await
            .unwrap();
        let db = store.connection();
        let select = memory::Entity::find()
            .filter(owned(memory::Column::UserId, 1))
            // As many ids as a search fetches (with a few, SQLite picks the key on its own).
            .filter(memory::Column::Id.is_in(1..=50i64))
            .build(db.get_database_backend());
        let plan = db
            .query_all_raw(sea_orm::Statement::from_sql_and_values(
                db.get_database_backend(),
                format!("EXPLAIN QUERY PLAN {}", select.sql),
                select.values.map(|v| v.0).unwrap_or_default(),
            ))
            .await
            .unwrap();
        let details: Vec<String> = plan
            .iter()
            .map(|r| r.try_get::<String>("", "detail").unwrap())
            .collect();
        assert!(
            details.iter().any(|d| d.contains("PRIMARY KEY")),
            "{details:?}"
        );
        assert!(
            !details.iter().any(|d| d.contains("ix_memories_user")),
            "{details:?}"
        );
    }
}
