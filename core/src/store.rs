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

use crate::backup::{BackupSink, BackupSource, RestoreOptions, RestoreReport, Verified};
use crate::crypto::Keyring;
use crate::deep_memory::{NewTrainingPair, PairSource, StoredAdapter, TrainingPair};
use crate::error::{Error, Result};
use crate::events::Fanout;
use crate::jobs::JobQueue;
use crate::limits::Limits;
use crate::types::{
    Actor, AppendedMessage, AuditEntry, DeletedMemory, DeletionReport, Embedding, ExportOptions,
    Filter, Memory, MemoryPatch, Message, MessageWrite, Metric, NewMemory, NewSummary, Page,
    PageRequest, SearchPage, Session, SessionPatch, Summary, TextHit, TextQuery, User, UserExport,
    VectorQuery,
};

/// Implements [`MemoryStore`] for a wrapper `struct X { inner: SqlStore<_> }` by forwarding to
/// the SQL store's inherent methods.
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
            fn fanout(&self) -> Option<std::sync::Arc<dyn $crate::events::Fanout>> {
                self.inner.fanout()
            }
            fn jobs(&self) -> std::sync::Arc<dyn $crate::jobs::JobQueue> {
                self.inner.jobs()
            }
            async fn upsert_user(&self, user: &str) -> $crate::error::Result<$crate::types::User> {
                self.inner.upsert_user(user).await
            }
            async fn get_user(
                &self,
                user: &str,
            ) -> $crate::error::Result<Option<$crate::types::User>> {
                self.inner.get_user(user).await
            }
            async fn upsert_session(
                &self,
                user: &str,
                session: &str,
                patch: $crate::types::SessionPatch,
            ) -> $crate::error::Result<$crate::types::Session> {
                self.inner.upsert_session(user, session, patch).await
            }
            async fn get_session(
                &self,
                user: &str,
                session: &str,
            ) -> $crate::error::Result<Option<$crate::types::Session>> {
                self.inner.get_session(user, session).await
            }
            async fn list_sessions(
                &self,
                user: &str,
                page: &$crate::types::PageRequest,
            ) -> $crate::error::Result<$crate::types::Page<$crate::types::Session>> {
                self.inner.list_sessions(user, page).await
            }
            async fn delete_session(
                &self,
                user: &str,
                session: &str,
            ) -> $crate::error::Result<Option<Vec<$crate::types::DeletedMemory>>> {
                self.inner.delete_session(user, session).await
            }
            async fn append_messages(
                &self,
                user: &str,
                writes: Vec<$crate::types::MessageWrite>,
            ) -> $crate::error::Result<Vec<$crate::types::AppendedMessage>> {
                self.inner.append_messages(user, writes).await
            }
            async fn append_message_stream(
                &self,
                user: &str,
                batches: futures::stream::BoxStream<
                    '_,
                    $crate::error::Result<Vec<$crate::types::MessageWrite>>,
                >,
            ) -> $crate::error::Result<Vec<$crate::types::AppendedMessage>> {
                self.inner.append_message_stream(user, batches).await
            }
            async fn list_messages(
                &self,
                user: &str,
                session: &str,
                page: &$crate::types::PageRequest,
            ) -> $crate::error::Result<$crate::types::Page<$crate::types::Message>> {
                self.inner.list_messages(user, session, page).await
            }
            async fn messages_after(
                &self,
                user: &str,
                session: &str,
                after_id: i64,
                limit: usize,
                newest: bool,
            ) -> $crate::error::Result<Vec<$crate::types::Message>> {
                self.inner
                    .messages_after(user, session, after_id, limit, newest)
                    .await
            }
            async fn count_messages_after(
                &self,
                user: &str,
                session: &str,
                after_id: i64,
            ) -> $crate::error::Result<u64> {
                self.inner
                    .count_messages_after(user, session, after_id)
                    .await
            }
            async fn add_memories(
                &self,
                user: &str,
                memories: Vec<$crate::types::NewMemory>,
            ) -> $crate::error::Result<Vec<$crate::types::Memory>> {
                self.inner.add_memories(user, memories).await
            }
            async fn get_memory(
                &self,
                user: &str,
                id: i64,
            ) -> $crate::error::Result<Option<$crate::types::Memory>> {
                self.inner.get_memory(user, id).await
            }
            async fn get_memories(
                &self,
                user: &str,
                ids: &[i64],
            ) -> $crate::error::Result<Vec<$crate::types::Memory>> {
                self.inner.get_memories(user, ids).await
            }
            async fn update_memory(
                &self,
                user: &str,
                id: i64,
                patch: $crate::types::MemoryPatch,
            ) -> $crate::error::Result<$crate::types::Memory> {
                self.inner.update_memory(user, id, patch).await
            }
            async fn delete_memories(&self, user: &str, ids: &[i64]) -> $crate::error::Result<u64> {
                self.inner.delete_memories(user, ids).await
            }
            async fn list_memories(
                &self,
                user: &str,
                filter: &$crate::types::Filter,
                page: &$crate::types::PageRequest,
            ) -> $crate::error::Result<$crate::types::Page<$crate::types::Memory>> {
                self.inner.list_memories(user, filter, page).await
            }
            async fn list_memories_by_id(
                &self,
                user: &str,
                filter: &$crate::types::Filter,
                after: Option<i64>,
                first: usize,
            ) -> $crate::error::Result<Vec<$crate::types::Memory>> {
                self.inner
                    .list_memories_by_id(user, filter, after, first)
                    .await
            }
            async fn count_memories_after(
                &self,
                user: &str,
                filter: &$crate::types::Filter,
                after: Option<i64>,
            ) -> $crate::error::Result<u64> {
                self.inner.count_memories_after(user, filter, after).await
            }
            async fn keys_for(
                &self,
                user: &str,
                targets: &[i64],
            ) -> $crate::error::Result<Vec<$crate::types::Memory>> {
                self.inner.keys_for(user, targets).await
            }
            async fn count_memories(&self, user: &str) -> $crate::error::Result<u64> {
                self.inner.count_memories(user).await
            }
            async fn purge_expired(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                limit: usize,
            ) -> $crate::error::Result<Vec<(String, Vec<$crate::types::DeletedMemory>)>> {
                self.inner.purge_expired(now, limit).await
            }
            async fn search(
                &self,
                user: &str,
                query: &$crate::types::VectorQuery,
            ) -> $crate::error::Result<$crate::types::SearchPage> {
                self.inner.search(user, query).await
            }
            async fn text_search(
                &self,
                user: &str,
                query: &$crate::types::TextQuery,
            ) -> $crate::error::Result<Vec<$crate::types::TextHit>> {
                self.inner.text_search(user, query).await
            }
            async fn vectors(
                &self,
                user: &str,
                model: &str,
                ids: &[i64],
            ) -> $crate::error::Result<std::collections::HashMap<i64, Vec<f32>>> {
                self.inner.vectors(user, model, ids).await
            }
            async fn neighbours(
                &self,
                user: &str,
                ids: &[i64],
                radius: usize,
            ) -> $crate::error::Result<Vec<(i64, $crate::types::Memory)>> {
                self.inner.neighbours(user, ids, radius).await
            }
            async fn add_summary(
                &self,
                user: &str,
                summary: $crate::types::NewSummary,
            ) -> $crate::error::Result<Option<$crate::types::Summary>> {
                self.inner.add_summary(user, summary).await
            }
            async fn list_summaries(
                &self,
                user: &str,
                session: &str,
            ) -> $crate::error::Result<Vec<$crate::types::Summary>> {
                self.inner.list_summaries(user, session).await
            }
            async fn get_settings(&self, user: &str) -> $crate::error::Result<serde_json::Value> {
                self.inner.get_settings(user).await
            }
            async fn put_settings(
                &self,
                user: &str,
                settings: serde_json::Value,
                actor: &$crate::types::Actor,
            ) -> $crate::error::Result<serde_json::Value> {
                self.inner.put_settings(user, settings, actor).await
            }
            async fn export_user(
                &self,
                user: &str,
                options: &$crate::types::ExportOptions,
                actor: &$crate::types::Actor,
            ) -> $crate::error::Result<$crate::types::UserExport> {
                self.inner.export_user(user, options, actor).await
            }
            async fn delete_user(
                &self,
                user: &str,
                actor: &$crate::types::Actor,
            ) -> $crate::error::Result<(
                $crate::types::DeletionReport,
                Vec<$crate::types::DeletedMemory>,
            )> {
                self.inner.delete_user(user, actor).await
            }
            async fn audit_log(
                &self,
                user: &str,
                page: &$crate::types::PageRequest,
            ) -> $crate::error::Result<$crate::types::Page<$crate::types::AuditEntry>> {
                self.inner.audit_log(user, page).await
            }
            async fn optimize(&self) -> $crate::error::Result<$crate::store::OptimizeReport> {
                self.inner.optimize().await
            }
            async fn begin_bulk_load(&self) -> $crate::error::Result<()> {
                self.inner.begin_bulk_load().await
            }
            async fn end_bulk_load(&self) -> $crate::error::Result<Vec<String>> {
                self.inner.end_bulk_load().await
            }
            async fn embedding_model(&self, user: &str) -> $crate::error::Result<Option<String>> {
                self.inner.embedding_model(user).await
            }
            fn set_embedding_model_for_new_users(&self, model: Option<String>) {
                *self
                    .inner
                    .embedding_model_for_new_users
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = model;
            }
            async fn user_ids(
                &self,
                after: Option<&str>,
                limit: usize,
            ) -> $crate::error::Result<Vec<String>> {
                self.inner.user_ids(after, limit).await
            }
            async fn missing_embeddings(
                &self,
                user: &str,
                model: &str,
                limit: usize,
            ) -> $crate::error::Result<(Vec<(i64, String)>, u64)> {
                self.inner.missing_embeddings(user, model, limit).await
            }
            async fn add_embeddings(
                &self,
                user: &str,
                rows: Vec<(i64, $crate::types::Embedding)>,
            ) -> $crate::error::Result<u64> {
                self.inner.add_embeddings(user, rows).await
            }
            async fn switch_embedding_model(
                &self,
                user: &str,
                model: &str,
            ) -> $crate::error::Result<bool> {
                self.inner.switch_embedding_model(user, model).await
            }
            async fn rotate_keys(
                &self,
                on_rows: &mut (dyn FnMut(u64, u64) + Send),
            ) -> $crate::error::Result<$crate::store::KeyRotationReport> {
                self.inner.rotate_keys(on_rows).await
            }
            async fn backup(
                &self,
                user: Option<&str>,
                sink: &mut dyn $crate::backup::BackupSink,
            ) -> $crate::error::Result<()> {
                self.inner.backup(user, sink).await
            }
            async fn restore(
                &self,
                plan: &$crate::backup::Verified,
                options: &$crate::backup::RestoreOptions,
                source: &mut dyn $crate::backup::BackupSource,
                actor: &$crate::types::Actor,
            ) -> $crate::error::Result<$crate::backup::RestoreReport> {
                self.inner.restore(plan, options, source, actor).await
            }
            async fn add_training_pairs(
                &self,
                user: &str,
                pairs: Vec<$crate::deep_memory::NewTrainingPair>,
            ) -> $crate::error::Result<u64> {
                self.inner.add_training_pairs(user, pairs).await
            }
            async fn training_pairs(
                &self,
                user: &str,
            ) -> $crate::error::Result<Vec<$crate::deep_memory::TrainingPair>> {
                self.inner.training_pairs(user).await
            }
            async fn delete_training_pairs(
                &self,
                user: &str,
                source: Option<$crate::deep_memory::PairSource>,
            ) -> $crate::error::Result<u64> {
                self.inner.delete_training_pairs(user, source).await
            }
            async fn put_adapter(
                &self,
                user: &str,
                adapter: $crate::deep_memory::StoredAdapter,
            ) -> $crate::error::Result<$crate::deep_memory::StoredAdapter> {
                self.inner.put_adapter(user, adapter).await
            }
            async fn get_adapter(
                &self,
                user: &str,
            ) -> $crate::error::Result<Option<$crate::deep_memory::StoredAdapter>> {
                self.inner.get_adapter(user).await
            }
            async fn set_adapter_enabled(
                &self,
                user: &str,
                enabled: bool,
            ) -> $crate::error::Result<bool> {
                self.inner.set_adapter_enabled(user, enabled).await
            }
            async fn enabled_adapters(
                &self,
                after: Option<&str>,
                limit: usize,
            ) -> $crate::error::Result<Vec<(String, u64)>> {
                self.inner.enabled_adapters(after, limit).await
            }
            async fn set_memory_keys(
                &self,
                user: &str,
                enabled: bool,
            ) -> $crate::error::Result<bool> {
                self.inner.set_memory_keys(user, enabled).await
            }
            async fn advance_memory_keys(
                &self,
                user: &str,
                pass: $crate::memory_keys::KeyPass,
                through: i64,
            ) -> $crate::error::Result<bool> {
                self.inner.advance_memory_keys(user, pass, through).await
            }
            async fn advance_context_keys(
                &self,
                user: &str,
                epoch: i64,
                through: i64,
            ) -> $crate::error::Result<bool> {
                self.inner.advance_context_keys(user, epoch, through).await
            }
            async fn rewind_context_keys(&self, user: &str, to: i64) -> $crate::error::Result<()> {
                self.inner.rewind_context_keys(user, to).await
            }
            async fn memory_keys_users(
                &self,
                after: Option<&str>,
                limit: usize,
            ) -> $crate::error::Result<Vec<String>> {
                self.inner.memory_keys_users(after, limit).await
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
mod scan;
mod sql;

#[cfg(feature = "sqlite")]
pub use embedded::EmbeddedStore;
#[cfg(feature = "postgres")]
pub use pg::PgStore;

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

    /// Deletes a session with its messages, memories and summaries; returns the memories that
    /// went with it, or `None` if it did not exist.
    async fn delete_session(&self, user: &str, session: &str)
    -> Result<Option<Vec<DeletedMemory>>>;

    /// Stores messages and the memories made from them, all in one transaction. Sessions are
    /// created as needed.
    async fn append_messages(
        &self,
        user: &str,
        writes: Vec<MessageWrite>,
    ) -> Result<Vec<AppendedMessage>>;

    /// [`MemoryStore::append_messages`] of writes that arrive in batches while they are being
    /// made, still in one transaction: nothing is stored unless every batch is, and an error
    /// from the stream rolls back the batches before it. A store may write each batch as it
    /// arrives (so that writing overlaps making the next) or gather them first.
    async fn append_message_stream(
        &self,
        user: &str,
        batches: futures::stream::BoxStream<'_, Result<Vec<MessageWrite>>>,
    ) -> Result<Vec<AppendedMessage>>;

    /// A session's messages, oldest first.
    async fn list_messages(
        &self,
        user: &str,
        session: &str,
        page: &PageRequest,
    ) -> Result<Page<Message>>;

    /// A session's messages with ids above `after_id` (its unsummarised history, say), in id
    /// order: the oldest `limit` of them, or the newest `limit` when `newest`.
    async fn messages_after(
        &self,
        user: &str,
        session: &str,
        after_id: i64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<Message>>;

    /// How many of a session's messages have ids above `after_id`.
    async fn count_messages_after(&self, user: &str, session: &str, after_id: i64) -> Result<u64>;

    /// Stores free-standing memories (facts, persona chunks) in one transaction.
    async fn add_memories(&self, user: &str, memories: Vec<NewMemory>) -> Result<Vec<Memory>>;

    /// One memory.
    async fn get_memory(&self, user: &str, id: i64) -> Result<Option<Memory>>;

    /// Those of `ids` that are the user's memories (any order; at most a page of ids).
    async fn get_memories(&self, user: &str, ids: &[i64]) -> Result<Vec<Memory>>;

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

    /// The user's memories matching `filter` (which may hold no metadata conditions) with an
    /// id above `after`, lowest id first, at most `first`. For jobs that read a user's
    /// memories from a watermark.
    async fn list_memories_by_id(
        &self,
        user: &str,
        filter: &Filter,
        after: Option<i64>,
        first: usize,
    ) -> Result<Vec<Memory>>;

    /// How many of the user's memories match `filter` (no metadata conditions) with an id
    /// above `after`.
    async fn count_memories_after(
        &self,
        user: &str,
        filter: &Filter,
        after: Option<i64>,
    ) -> Result<u64>;

    /// The keys (memories of kind `key`, superseded or expired too) of those of `targets`
    /// that are the user's memories (at most a page of ids).
    async fn keys_for(&self, user: &str, targets: &[i64]) -> Result<Vec<Memory>>;

    /// How many memories the user has.
    async fn count_memories(&self, user: &str) -> Result<u64>;

    /// Deletes up to `limit` memories (of any users) that expired at or before `now`,
    /// soonest expired first, one transaction per user; returns what went, by user. A
    /// memory that an expired one had superseded stays superseded (it was replaced, not
    /// restored).
    async fn purge_expired(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<DeletedMemory>)>>;

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

    /// For each of the user's message memories `ids`, the message memories up to `radius`
    /// (at most 5) places before and after it in its session, in conversation order, as
    /// `(id, neighbour)` pairs: the turns around a hit. Ids that are not the user's, or not
    /// part of a session's messages, have none.
    async fn neighbours(
        &self,
        user: &str,
        ids: &[i64],
        radius: usize,
    ) -> Result<Vec<(i64, Memory)>>;

    /// Stores a summary of a session and its searchable memory, and moves the session's
    /// `summarized_through` to the summary's last message. `None` (nothing written) when the
    /// session's `summarized_through` is no longer the summary's `expected_through`: another
    /// writer summarised that span first.
    async fn add_summary(&self, user: &str, summary: NewSummary) -> Result<Option<Summary>>;

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
    /// Returns what was removed, with the memories that went (to announce).
    async fn delete_user(
        &self,
        user: &str,
        actor: &Actor,
    ) -> Result<(DeletionReport, Vec<DeletedMemory>)>;

    /// The audit log of the user's data, oldest first.
    async fn audit_log(&self, user: &str, page: &PageRequest) -> Result<Page<AuditEntry>>;

    /// Maintenance: Postgres rebuilds the vector and full-text indexes (`REINDEX
    /// CONCURRENTLY`: reads and writes go on) and runs `VACUUM (ANALYZE)`; the embedded store
    /// checkpoints its write-ahead log, runs `VACUUM` and `ANALYZE` and empties its vector
    /// cache (users reload on their next search).
    async fn optimize(&self) -> Result<OptimizeReport>;

    /// Starts a bulk load: the approximate vector index is no longer kept up to date row
    /// by row, and [`MemoryStore::end_bulk_load`] builds it again in one pass — on
    /// Postgres ~7× faster end to end than inserting into pgvector's HNSW graph row by row
    /// (20k and 100k rows, docs/benchmarks.md). Postgres drops its HNSW indexes (every user's: meanwhile the
    /// searches of users above [`StoreConfig::exact_search_threshold`] scan their vectors
    /// exactly, correct but slower; a process that dies before the end leaves the
    /// configured one to the next [`crate::store::PgStore::open`] and the others to the
    /// first write or search that needs them). The embedded store has nothing
    /// to do. [`Error::InvalidInput`] when this store is already loading.
    async fn begin_bulk_load(&self) -> Result<()>;

    /// Ends a bulk load: builds the indexes [`MemoryStore::begin_bulk_load`] dropped
    /// (`CREATE INDEX CONCURRENTLY`: reads and writes go on) and returns their names.
    /// Nothing to do when no bulk load is under way.
    async fn end_bulk_load(&self) -> Result<Vec<String>>;

    /// The embedding model the user's searches use, once a re-embedding recorded one.
    async fn embedding_model(&self, user: &str) -> Result<Option<String>>;

    /// While a change of embedding model is rolled out, the new model: users seen for the
    /// first time from now on are on it from the start (they have nothing to re-embed, and a
    /// re-embedding run that listed the users before they came would leave them behind).
    /// `None` (the default): new users are on no recorded model.
    fn set_embedding_model_for_new_users(&self, model: Option<String>);

    /// Users by external id, after `after`, at most `limit` (for operators' jobs).
    async fn user_ids(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>>;

    /// Re-embedding: the user's memories with no vector of `model` (id and text), by id, at
    /// most `limit`, and how many there are in all.
    async fn missing_embeddings(
        &self,
        user: &str,
        model: &str,
        limit: usize,
    ) -> Result<(Vec<(i64, String)>, u64)>;

    /// Re-embedding: adds vectors of a new model to some of the user's memories (their own
    /// only), unseen by searches until [`MemoryStore::switch_embedding_model`].
    async fn add_embeddings(&self, user: &str, rows: Vec<(i64, Embedding)>) -> Result<u64>;

    /// Re-embedding: if every memory of the user has a vector of `model`, moves their
    /// searches to it and drops their other vectors, atomically; `false` otherwise.
    async fn switch_embedding_model(&self, user: &str, model: &str) -> Result<bool>;

    /// Encryption at rest: re-seals every row not under the current data key with it (with
    /// none, opens sealed rows into the clear), in batches, then retires the key ids no row
    /// uses. Resumable: run again, it picks up what is left. `on_rows(done, total)` reports
    /// progress.
    async fn rotate_keys(
        &self,
        on_rows: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<KeyRotationReport>;

    /// Writes every user (or one) to `sink` from one consistent snapshot, taken while
    /// writers go on: the backup holds each user as of one instant. See [`crate::backup`].
    async fn backup(&self, user: Option<&str>, sink: &mut dyn BackupSink) -> Result<()>;

    /// Writes a backup that [`crate::backup::verify`] checked (`plan`), read again from
    /// `source`, in one transaction: all of it or nothing. The backup's users replace the
    /// same users in the store; a store that holds users needs `options.force` unless one
    /// user is chosen. `actor` is written to each restored user's audit log.
    async fn restore(
        &self,
        plan: &Verified,
        options: &RestoreOptions,
        source: &mut dyn BackupSource,
        actor: &Actor,
    ) -> Result<RestoreReport>;

    /// Stores (question, memory) pairs for the user's deep memory, the questions sealed like
    /// memories; pairs naming a memory that is not the user's are skipped. How many were
    /// stored. At most [`crate::deep_memory::MAX_PAIRS_PER_USER`] per user.
    async fn add_training_pairs(&self, user: &str, pairs: Vec<NewTrainingPair>) -> Result<u64>;

    /// The user's deep memory pairs, oldest first.
    async fn training_pairs(&self, user: &str) -> Result<Vec<TrainingPair>>;

    /// Deletes the user's pairs of one source (all with `None`); how many.
    async fn delete_training_pairs(&self, user: &str, source: Option<PairSource>) -> Result<u64>;

    /// Replaces the user's query adapter with `adapter`, one version up; what was stored.
    async fn put_adapter(&self, user: &str, adapter: StoredAdapter) -> Result<StoredAdapter>;

    /// The user's query adapter, if any.
    async fn get_adapter(&self, user: &str) -> Result<Option<StoredAdapter>>;

    /// Turns the user's adapter on or off; false when there is none.
    async fn set_adapter_enabled(&self, user: &str, enabled: bool) -> Result<bool>;

    /// Users with an enabled adapter (external ids after `after`, at most `limit`, in
    /// order), each with the number of memories the adapter was trained with.
    async fn enabled_adapters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>>;

    /// Turns the background key writing on or off for the user (see
    /// [`crate::types::MemoryKind::Key`]); false when the user is unknown.
    async fn set_memory_keys(&self, user: &str, enabled: bool) -> Result<bool>;

    /// Records that the key job has read the user's memories up to `through` (by id) for
    /// `pass` (see [`crate::types::User::memory_keys_through`]); never moves back. False when
    /// the user is unknown or their keys are off.
    async fn advance_memory_keys(
        &self,
        user: &str,
        pass: crate::memory_keys::KeyPass,
        through: i64,
    ) -> Result<bool>;

    /// Records that the key job has read the user's memories up to `through` (by id) for
    /// context keys, if the context watermark was not moved back since the job read it
    /// (`epoch`, see [`crate::types::User::memory_context_epoch`]); never moves back. False
    /// when it did not move (the user is unknown, their keys are off, the epoch is another,
    /// or the watermark is already there).
    async fn advance_context_keys(&self, user: &str, epoch: i64, through: i64) -> Result<bool>;

    /// Moves the user's context-key watermark back to `to` where it is above it, and counts
    /// a new epoch either way: the turns after `to` are read again by the next key job, and
    /// a job running now cannot move the watermark past them.
    async fn rewind_context_keys(&self, user: &str, to: i64) -> Result<()>;

    /// Users with key writing on (external ids after `after`, at most `limit`, in order).
    async fn memory_keys_users(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>>;

    /// The channel between the replicas sharing this store (Postgres `LISTEN`/`NOTIFY`);
    /// `None` for a store that only one process uses.
    fn fanout(&self) -> Option<Arc<dyn Fanout>> {
        None
    }

    /// The queue of background jobs on this store's database.
    fn jobs(&self) -> Arc<dyn JobQueue>;
}

/// What [`MemoryStore::rotate_keys`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyRotationReport {
    /// The key every row is now sealed with (`None`: rows were opened into the clear).
    pub key_id: Option<String>,
    /// Rows re-sealed (messages, memories and summaries).
    pub resealed: u64,
    /// Key ids no row uses any more, dropped from the store's registry: their key files
    /// are no longer needed.
    pub retired: Vec<String>,
    /// Rows still under another key (written meanwhile by a replica that does not have the
    /// new key yet): run the rotation again once every replica does.
    pub remaining: u64,
    /// How long it took.
    pub seconds: f64,
}

/// What [`MemoryStore::optimize`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OptimizeReport {
    /// `postgres` or `embedded`.
    pub backend: String,
    /// Indexes rebuilt.
    pub reindexed: Vec<String>,
    /// Invalid leftovers of an interrupted rebuild, dropped (Postgres).
    #[serde(default)]
    pub dropped_invalid: Vec<String>,
    /// Size of the database before (bytes; the SQLite file, or the Postgres database).
    pub bytes_before: u64,
    /// And after.
    pub bytes_after: u64,
    /// Vectors dropped from the in-process cache.
    pub cached_vectors_released: u64,
    /// How long it took.
    pub seconds: f64,
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
    /// Postgres: how long an operation waits for a connection (and the store's opening for
    /// the database to answer) before it fails as unavailable.
    #[serde(default = "default_acquire_timeout")]
    pub acquire_timeout: std::time::Duration,
    /// Postgres: at or below this many candidate rows (after filters) a search is exact, above
    /// it the HNSW index is used.
    #[serde(default = "default_exact_search_threshold")]
    pub exact_search_threshold: u64,
    /// Postgres: the candidate list of the HNSW search (pgvector's `hnsw.ef_search`; raised
    /// to the page size when that is larger, at most 1,000). Larger finds more of the exact
    /// neighbours and costs more: 400 by default, recall@10 0.995 against an exact search at
    /// 100k real embeddings (200: 0.987; docs/benchmarks.md, "HNSW recall on real embeddings").
    #[serde(default = "default_hnsw_ef_search")]
    pub hnsw_ef_search: u32,
    /// Most vectors kept in memory across all users (least recently used users are dropped
    /// first): the embedded store's vector cache; on Postgres, the memories and vectors of
    /// the users searched in process.
    #[serde(default = "default_cache_vectors")]
    pub max_cached_vectors: usize,
    /// Postgres: users with more memories than this are searched in process, as the
    /// embedded store searches every user (vectors and full text read once and held by the
    /// server, kept current by revision; exact, int8 first pass from 8,192 vectors), while
    /// their vectors fit [`StoreConfig::max_cached_vectors`]; `u64::MAX` leaves every search
    /// to Postgres. 0 (the default): every user, so that both stores rank alike (Postgres's
    /// own full text search stems, weighs and counts differently: recall@10 on the LoCoMo
    /// dev set 0.783 against 0.801).
    #[serde(default = "default_in_process_search_threshold")]
    pub in_process_search_threshold: u64,
    /// Embedding dimension to make sure an index exists for at open (Postgres).
    #[serde(default)]
    pub index_dims: Option<usize>,
    /// Whether users seen for the first time start with extra keys on
    /// ([`crate::types::User::memory_keys`]; the key job writes theirs, see
    /// [`crate::memory_keys`]); off by default here, on in the server's settings. Users the
    /// store knows keep what they have.
    #[serde(default)]
    pub memory_keys_for_new_users: bool,
    /// The data keys that seal stored text and metadata (encryption at rest); none by
    /// default. Never serialized.
    #[serde(skip)]
    pub keys: Arc<Keyring>,
}

fn default_max_connections() -> u32 {
    16
}
fn default_acquire_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}
fn default_exact_search_threshold() -> u64 {
    20_000
}
fn default_hnsw_ef_search() -> u32 {
    400
}
fn default_cache_vectors() -> usize {
    2_000_000
}
fn default_in_process_search_threshold() -> u64 {
    0
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
            acquire_timeout: default_acquire_timeout(),
            exact_search_threshold: default_exact_search_threshold(),
            hnsw_ef_search: default_hnsw_ef_search(),
            max_cached_vectors: default_cache_vectors(),
            in_process_search_threshold: default_in_process_search_threshold(),
            index_dims: None,
            memory_keys_for_new_users: false,
            keys: Arc::default(),
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
