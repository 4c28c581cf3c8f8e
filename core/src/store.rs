//! Memory storage: the [`MemoryStore`] trait and its two implementations, Postgres + pgvector
//! ([`pg`]) for production and an embedded SQLite store ([`embedded`]) that needs no set-up.
//!
//! Every operation takes the owning user's id and is scoped to that user inside the store
//! itself: there is no method that can read or change another user's rows. Every write of one
//! call happens in one transaction.
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::events::Fanout;
use crate::jobs::{Job, JobOutcome, NewJob};
use crate::limits::Limits;
use crate::types::{
    AppendedMessage, AuditEntry, DeletionReport, Filter, Memory, MemoryPatch, Message,
    MessageWrite, Metric, NewMemory, NewSummary, Page, PageRequest, SearchPage, Session,
    SessionPatch, Summary, TextHit, TextQuery, User, UserExport, VectorQuery,
};

/// Implements [`MemoryStore`] for a wrapper `struct X { inner: SqlStore<_> }` by forwarding.
macro_rules! delegate_store {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::MemoryStore for $ty {
            fn backend(&self) -> &'static str {
                self.inner.backend()
            }
            fn metric(&self) -> $crate::types::Metric {
                self.inner.metric()
            }
            fn limits(&self) -> &$crate::limits::Limits {
                self.inner.limits()
            }
            async fn upsert_user(&self, user: &str) -> $crate::Result<$crate::types::User> {
                self.inner.upsert_user(user).await
            }
            async fn get_user(&self, user: &str) -> $crate::Result<Option<$crate::types::User>> {
                self.inner.get_user(user).await
            }
            async fn upsert_session(
                &self,
                user: &str,
                session: &str,
                patch: $crate::types::SessionPatch,
            ) -> $crate::Result<$crate::types::Session> {
                self.inner.upsert_session(user, session, patch).await
            }
            async fn get_session(
                &self,
                user: &str,
                session: &str,
            ) -> $crate::Result<Option<$crate::types::Session>> {
                self.inner.get_session(user, session).await
            }
            async fn list_sessions(
                &self,
                user: &str,
                page: &$crate::types::PageRequest,
            ) -> $crate::Result<$crate::types::Page<$crate::types::Session>> {
                self.inner.list_sessions(user, page).await
            }
            async fn delete_session(&self, user: &str, session: &str) -> $crate::Result<bool> {
                self.inner.delete_session(user, session).await
            }
            async fn append_messages(
                &self,
                user: &str,
                writes: Vec<$crate::types::MessageWrite>,
            ) -> $crate::Result<Vec<$crate::types::AppendedMessage>> {
                self.inner.append_messages(user, writes).await
            }
            async fn list_messages(
                &self,
                user: &str,
                session: &str,
                page: &$crate::types::PageRequest,
            ) -> $crate::Result<$crate::types::Page<$crate::types::Message>> {
                self.inner.list_messages(user, session, page).await
            }
            async fn add_memories(
                &self,
                user: &str,
                memories: Vec<$crate::types::NewMemory>,
            ) -> $crate::Result<Vec<$crate::types::Memory>> {
                self.inner.add_memories(user, memories).await
            }
            async fn get_memory(
                &self,
                user: &str,
                id: i64,
            ) -> $crate::Result<Option<$crate::types::Memory>> {
                self.inner.get_memory(user, id).await
            }
            async fn update_memory(
                &self,
                user: &str,
                id: i64,
                patch: $crate::types::MemoryPatch,
            ) -> $crate::Result<$crate::types::Memory> {
                self.inner.update_memory(user, id, patch).await
            }
            async fn delete_memories(&self, user: &str, ids: &[i64]) -> $crate::Result<u64> {
                self.inner.delete_memories(user, ids).await
            }
            async fn list_memories(
                &self,
                user: &str,
                filter: &$crate::types::Filter,
                page: &$crate::types::PageRequest,
            ) -> $crate::Result<$crate::types::Page<$crate::types::Memory>> {
                self.inner.list_memories(user, filter, page).await
            }
            async fn count_memories(&self, user: &str) -> $crate::Result<u64> {
                self.inner.count_memories(user).await
            }
            async fn search(
                &self,
                user: &str,
                query: &$crate::types::VectorQuery,
            ) -> $crate::Result<$crate::types::SearchPage> {
                self.inner.search(user, query).await
            }
            async fn text_search(
                &self,
                user: &str,
                query: &$crate::types::TextQuery,
            ) -> $crate::Result<Vec<$crate::types::TextHit>> {
                self.inner.text_search(user, query).await
            }
            async fn vectors(
                &self,
                user: &str,
                model: &str,
                ids: &[i64],
            ) -> $crate::Result<std::collections::HashMap<i64, Vec<f32>>> {
                self.inner.vectors(user, model, ids).await
            }
            async fn add_summary(
                &self,
                user: &str,
                summary: $crate::types::NewSummary,
            ) -> $crate::Result<$crate::types::Summary> {
                self.inner.add_summary(user, summary).await
            }
            async fn list_summaries(
                &self,
                user: &str,
                session: &str,
            ) -> $crate::Result<Vec<$crate::types::Summary>> {
                self.inner.list_summaries(user, session).await
            }
            async fn get_settings(&self, user: &str) -> $crate::Result<serde_json::Value> {
                self.inner.get_settings(user).await
            }
            async fn put_settings(
                &self,
                user: &str,
                settings: serde_json::Value,
                actor: &$crate::store::Actor,
            ) -> $crate::Result<serde_json::Value> {
                self.inner.put_settings(user, settings, actor).await
            }
            async fn export_user(
                &self,
                user: &str,
                options: &$crate::store::ExportOptions,
                actor: &$crate::store::Actor,
            ) -> $crate::Result<$crate::types::UserExport> {
                self.inner.export_user(user, options, actor).await
            }
            async fn delete_user(
                &self,
                user: &str,
                actor: &$crate::store::Actor,
            ) -> $crate::Result<$crate::types::DeletionReport> {
                self.inner.delete_user(user, actor).await
            }
            async fn audit_log(
                &self,
                user: &str,
                page: &$crate::types::PageRequest,
            ) -> $crate::Result<$crate::types::Page<$crate::types::AuditEntry>> {
                self.inner.audit_log(user, page).await
            }
            fn fanout(&self) -> Option<std::sync::Arc<dyn $crate::events::Fanout>> {
                self.inner.fanout()
            }
            async fn create_job(
                &self,
                user: &str,
                job: $crate::jobs::NewJob,
                actor: &$crate::store::Actor,
            ) -> $crate::Result<$crate::jobs::Job> {
                self.inner.create_job(user, job, actor).await
            }
            async fn get_job(
                &self,
                user: &str,
                id: i64,
            ) -> $crate::Result<Option<$crate::jobs::Job>> {
                self.inner.get_job(user, id).await
            }
            async fn list_jobs(
                &self,
                user: &str,
                page: &$crate::types::PageRequest,
            ) -> $crate::Result<$crate::types::Page<$crate::jobs::Job>> {
                self.inner.list_jobs(user, page).await
            }
            async fn cancel_job(
                &self,
                user: &str,
                id: i64,
                actor: &$crate::store::Actor,
            ) -> $crate::Result<$crate::jobs::Job> {
                self.inner.cancel_job(user, id, actor).await
            }
            async fn claim_job(
                &self,
                worker: &str,
                lease: std::time::Duration,
            ) -> $crate::Result<Option<$crate::jobs::Job>> {
                self.inner.claim_job(worker, lease).await
            }
            async fn finish_job(
                &self,
                id: i64,
                worker: &str,
                outcome: $crate::jobs::JobOutcome,
            ) -> $crate::Result<Option<$crate::jobs::Job>> {
                self.inner.finish_job(id, worker, outcome).await
            }
        }
    };
}
pub(crate) use delegate_store;

pub(crate) mod cursor;
#[cfg(feature = "sqlite")]
pub mod embedded;
pub(crate) mod entity;
#[cfg(feature = "postgres")]
pub mod pg;
mod sql;

#[cfg(feature = "sqlite")]
pub use embedded::EmbeddedStore;
#[cfg(feature = "postgres")]
pub use pg::PgStore;

/// Who performed a data-management action, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor(pub String);

impl Actor {
    /// The user acting on their own data.
    pub fn user(id: &str) -> Self {
        Self(format!("user:{id}"))
    }
    /// The command line.
    pub fn cli() -> Self {
        Self("cli".into())
    }
}

/// Options of [`MemoryStore::export_user`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportOptions {
    /// Include the embedding vectors (large) and not just their model names.
    pub include_vectors: bool,
}

/// The storage interface of Deep Recall. Implemented by [`PgStore`] and [`EmbeddedStore`]; both
/// pass the same conformance suite (`core/tests/it/store_conformance.rs`).
#[async_trait]
pub trait MemoryStore: Send + Sync {
    /// `"postgres"` or `"embedded"`.
    fn backend(&self) -> &'static str;

    /// The metric vectors are compared with.
    fn metric(&self) -> Metric;

    /// The input limits this store enforces.
    fn limits(&self) -> &Limits;

    /// Creates the user if needed.
    async fn upsert_user(&self, user: &str) -> Result<User>;

    /// The user, if they exist.
    async fn get_user(&self, user: &str) -> Result<Option<User>>;

    /// Creates the session if needed and applies `patch`.
    async fn upsert_session(
        &self,
        user: &str,
        session: &str,
        patch: SessionPatch,
    ) -> Result<Session>;

    /// One session.
    async fn get_session(&self, user: &str, session: &str) -> Result<Option<Session>>;

    /// The user's sessions, newest first.
    async fn list_sessions(&self, user: &str, page: &PageRequest) -> Result<Page<Session>>;

    /// Deletes a session with its messages, memories and summaries. False if it did not exist.
    async fn delete_session(&self, user: &str, session: &str) -> Result<bool>;

    /// Stores messages and the memories made from them, all in one transaction. Sessions are
    /// created as needed.
    async fn append_messages(
        &self,
        user: &str,
        writes: Vec<MessageWrite>,
    ) -> Result<Vec<AppendedMessage>>;

    /// A session's messages, oldest first.
    async fn list_messages(
        &self,
        user: &str,
        session: &str,
        page: &PageRequest,
    ) -> Result<Page<Message>>;

    /// Stores free-standing memories (facts, persona chunks) in one transaction.
    async fn add_memories(&self, user: &str, memories: Vec<NewMemory>) -> Result<Vec<Memory>>;

    /// One memory.
    async fn get_memory(&self, user: &str, id: i64) -> Result<Option<Memory>>;

    /// Changes a memory. [`Error::NotFound`] if the user has no such memory.
    async fn update_memory(&self, user: &str, id: i64, patch: MemoryPatch) -> Result<Memory>;

    /// Deletes memories (with their vectors); returns how many existed.
    async fn delete_memories(&self, user: &str, ids: &[i64]) -> Result<u64>;

    /// The user's memories matching `filter`, newest first.
    async fn list_memories(
        &self,
        user: &str,
        filter: &Filter,
        page: &PageRequest,
    ) -> Result<Page<Memory>>;

    /// How many memories the user has.
    async fn count_memories(&self, user: &str) -> Result<u64>;

    /// Nearest memories to the query embedding, best first, with cursor pagination.
    async fn search(&self, user: &str, query: &VectorQuery) -> Result<SearchPage>;

    /// Best full-text matches of the query (BM25 over the user's own memories), best first.
    async fn text_search(&self, user: &str, query: &TextQuery) -> Result<Vec<TextHit>>;

    /// The stored vectors of some of the user's memories for one embedding model (ids that
    /// are not the user's, or have no vector of that model, are absent from the map).
    async fn vectors(
        &self,
        user: &str,
        model: &str,
        ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, Vec<f32>>>;

    /// Stores a summary of a session and its searchable memory.
    async fn add_summary(&self, user: &str, summary: NewSummary) -> Result<Summary>;

    /// A session's summaries, oldest first.
    async fn list_summaries(&self, user: &str, session: &str) -> Result<Vec<Summary>>;

    /// Per-user settings (`{}` when none were stored).
    async fn get_settings(&self, user: &str) -> Result<Value>;

    /// Replaces per-user settings (a JSON object); audited.
    async fn put_settings(&self, user: &str, settings: Value, actor: &Actor) -> Result<Value>;

    /// Everything stored about the user; audited. [`Error::NotFound`] for an unknown user.
    async fn export_user(
        &self,
        user: &str,
        options: &ExportOptions,
        actor: &Actor,
    ) -> Result<UserExport>;

    /// Deletes the user and everything of theirs (sessions, messages, memories, vectors,
    /// summaries, settings); audited. The audit log itself keeps the record of the deletion.
    async fn delete_user(&self, user: &str, actor: &Actor) -> Result<DeletionReport>;

    /// The audit log of the user's data, oldest first.
    async fn audit_log(&self, user: &str, page: &PageRequest) -> Result<Page<AuditEntry>>;

    /// The channel between the replicas sharing this store (Postgres `LISTEN`/`NOTIFY`);
    /// `None` for a store that only one process uses.
    fn fanout(&self) -> Option<Arc<dyn Fanout>> {
        None
    }

    /// Queues a background job for the user; audited. At most one job of each kind may be
    /// pending (queued or running) per user.
    async fn create_job(&self, user: &str, job: NewJob, actor: &Actor) -> Result<Job>;

    /// One of the user's jobs.
    async fn get_job(&self, user: &str, id: i64) -> Result<Option<Job>>;

    /// The user's jobs, newest first.
    async fn list_jobs(&self, user: &str, page: &PageRequest) -> Result<Page<Job>>;

    /// Cancels one of the user's queued jobs; audited. [`Error::NotFound`] if it is not the
    /// user's, [`Error::InvalidInput`] once it has started.
    async fn cancel_job(&self, user: &str, id: i64, actor: &Actor) -> Result<Job>;

    /// For job runners (any user's job): takes the oldest due job (queued and due, or running
    /// with an expired lease) and holds it for `lease`.
    async fn claim_job(&self, worker: &str, lease: std::time::Duration) -> Result<Option<Job>>;

    /// For job runners: records how a claimed job ended. `None` if `worker` no longer holds
    /// the job (its lease ran out and another runner took it).
    async fn finish_job(&self, id: i64, worker: &str, outcome: JobOutcome) -> Result<Option<Job>>;
}

/// Which database to use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreLocation {
    /// Postgres + pgvector at this URL (`postgres://...`).
    Postgres {
        /// Connection URL.
        url: String,
    },
    /// The embedded store in this directory (created if missing).
    Embedded {
        /// Data directory.
        dir: PathBuf,
    },
}

/// Configuration of a store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Where the data lives.
    pub location: StoreLocation,
    /// How vectors are compared.
    #[serde(default)]
    pub metric: Metric,
    /// Input limits.
    #[serde(default)]
    pub limits: Limits,
    /// Largest connection pool.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Postgres: at or below this many candidate rows (after filters) a search is exact, above
    /// it the HNSW index is used.
    #[serde(default = "default_exact_search_threshold")]
    pub exact_search_threshold: u64,
    /// Embedded store: most vectors kept in memory across all users (least recently used
    /// users are dropped first).
    #[serde(default = "default_cache_vectors")]
    pub max_cached_vectors: usize,
    /// Embedding dimension to make sure an index exists for at open (Postgres).
    #[serde(default)]
    pub index_dims: Option<usize>,
}

fn default_max_connections() -> u32 {
    16
}
fn default_exact_search_threshold() -> u64 {
    20_000
}
fn default_cache_vectors() -> usize {
    2_000_000
}

impl StoreConfig {
    /// Postgres at `url`, other settings default.
    pub fn postgres(url: impl Into<String>) -> Self {
        Self::with_location(StoreLocation::Postgres { url: url.into() })
    }

    /// The embedded store in `dir`, other settings default.
    pub fn embedded(dir: impl Into<PathBuf>) -> Self {
        Self::with_location(StoreLocation::Embedded { dir: dir.into() })
    }

    fn with_location(location: StoreLocation) -> Self {
        Self {
            location,
            metric: Metric::default(),
            limits: Limits::default(),
            max_connections: default_max_connections(),
            exact_search_threshold: default_exact_search_threshold(),
            max_cached_vectors: default_cache_vectors(),
            index_dims: None,
        }
    }

    /// Sets the metric.
    pub fn with_metric(mut self, metric: Metric) -> Self {
        self.metric = metric;
        self
    }

    /// Sets the dimension whose vector index must exist (Postgres).
    pub fn with_index_dims(mut self, dims: usize) -> Self {
        self.index_dims = Some(dims);
        self
    }
}

/// Opens (and migrates) the store described by `config`.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn MemoryStore>> {
    match &config.location {
        #[cfg(feature = "postgres")]
        StoreLocation::Postgres { .. } => Ok(Arc::new(PgStore::open(config).await?)),
        #[cfg(feature = "sqlite")]
        StoreLocation::Embedded { .. } => Ok(Arc::new(EmbeddedStore::open(config).await?)),
        #[allow(unreachable_patterns)]
        other => Err(Error::invalid(format!(
            "this build has no support for store {other:?}"
        ))),
    }
}
