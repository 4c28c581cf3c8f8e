//! The part of the store that both SQL backends share: users, sessions, messages, memories,
//! summaries, settings, export, deletion and the audit log, through sea-orm. Vectors differ per
//! backend and go through [`VectorIndex`].
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, SqliteTransactionMode, Statement,
    TransactionOptions, TransactionTrait, Value as DbValue,
};
use serde_json::Value;

use super::cursor::{self, ListCursor, SearchCursor};
use super::entity::{audit_log, job, memory, message, session, summary, user, user_setting};
use super::{Actor, ExportOptions, MemoryStore};
use crate::error::{Error, Result};
use crate::events::Fanout;
use crate::jobs::{Job, JobKind, JobOutcome, JobStatus, NewJob};
use crate::limits::{Limits, check_embedding, check_importance};
use crate::types::{
    AppendedMessage, AuditEntry, DeletionReport, EXPORT_FORMAT, ExportedEmbedding, ExportedMemory,
    Filter, Memory, MemoryKind, MemoryPatch, Message, MessageWrite, Metric, NewMemory, NewSummary,
    Page, PageRequest, Role, SearchHit, SearchPage, Session, SessionPatch, Summary, TextHit,
    TextQuery, User, UserExport, VectorQuery,
};

/// Rows per multi-row INSERT (well under both backends' bound-parameter limits).
const INSERT_CHUNK: usize = 500;

/// A filter with the session resolved to its row id.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResolvedFilter {
    pub session_id: Option<i64>,
    pub kinds: Vec<MemoryKind>,
    pub roles: Vec<Role>,
    pub tags: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// A nearest-neighbour query handed to a [`VectorIndex`].
pub(crate) struct IndexQuery<'a> {
    pub user_id: i64,
    /// The user's revision when the query started.
    pub revision: i64,
    pub model: &'a str,
    pub vector: &'a [f32],
    /// Rows to return at most.
    pub limit: usize,
    pub max_distance: Option<f64>,
    pub filter: &'a ResolvedFilter,
    pub after: Option<SearchCursor>,
}

/// A full-text query handed to a [`VectorIndex`].
pub(crate) struct TextIndexQuery<'a> {
    pub user_id: i64,
    /// The user's revision when the query started.
    pub revision: i64,
    pub text: &'a str,
    /// Rows to return at most.
    pub limit: usize,
    pub filter: &'a ResolvedFilter,
}

/// One embedding to write.
pub(crate) struct EmbeddingRow<'a> {
    pub memory_id: i64,
    pub user_id: i64,
    pub model: &'a str,
    pub vector: &'a [f32],
    pub created_at: DateTime<Utc>,
}

/// What an in-process index needs to know about a memory.
#[derive(Debug, Clone)]
pub(crate) struct IndexedMemory {
    pub memory_id: i64,
    pub session_id: Option<i64>,
    pub kind: MemoryKind,
    pub role: Option<Role>,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub content: String,
    pub model: String,
    pub vector: Vec<f32>,
}

/// A committed change to a user's memories, for indexes that cache them.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    pub added: Vec<IndexedMemory>,
    pub removed: Vec<i64>,
    /// Forget everything cached for the user.
    pub reset: bool,
}

/// Vector storage and nearest-neighbour search of one backend.
#[async_trait]
pub(crate) trait VectorIndex: Send + Sync + 'static {
    /// Writes embedding rows inside the caller's transaction.
    async fn insert(&self, txn: &DatabaseTransaction, rows: &[EmbeddingRow<'_>]) -> Result<()>;

    /// The nearest memories of one user: `(memory id, distance)`, ordered by distance then id.
    async fn search(
        &self,
        db: &DatabaseConnection,
        query: &IndexQuery<'_>,
    ) -> Result<Vec<(i64, f64)>>;

    /// The best full-text matches of one user: `(memory id, BM25 score)`, best first, then by
    /// id.
    async fn text_search(
        &self,
        db: &DatabaseConnection,
        query: &TextIndexQuery<'_>,
    ) -> Result<Vec<(i64, f64)>>;

    /// The vectors of some of a user's memories for one model.
    async fn vectors_of(
        &self,
        db: &DatabaseConnection,
        user_id: i64,
        revision: i64,
        model: &str,
        ids: &[i64],
    ) -> Result<Vec<(i64, Vec<f32>)>>;

    /// The embeddings of a user's memories, for export.
    async fn embeddings_of(
        &self,
        db: &DatabaseTransaction,
        user_id: i64,
        with_vectors: bool,
    ) -> Result<Vec<(i64, ExportedEmbedding)>>;

    /// Whether [`VectorIndex::committed`] wants the `added` rows (they cost a copy).
    fn tracks_changes(&self) -> bool {
        false
    }

    /// Called after a transaction that changed the user's memories has committed and moved
    /// the user to `revision`.
    fn committed(&self, _user_id: i64, _revision: i64, _delta: Delta) {}
}

/// A store over a sea-orm connection with the vector index `V`.
pub(crate) struct SqlStore<V> {
    pub db: DatabaseConnection,
    pub index: V,
    pub metric: Metric,
    pub limits: Limits,
    pub backend_name: &'static str,
    /// The channel between replicas (Postgres).
    pub fanout: Option<Arc<dyn Fanout>>,
}

/// Timestamps are kept to the microsecond, the precision of Postgres, so that both backends
/// give back exactly what was written.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(t: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(t).ok_or_else(|| Error::invalid("malformed cursor"))
}

fn tags_json(tags: &[String]) -> Value {
    Value::Array(tags.iter().map(|t| Value::String(t.clone())).collect())
}

fn tags_from_json(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn metadata_json(v: &Value) -> Value {
    match v {
        Value::Null => Value::Object(Default::default()),
        other => other.clone(),
    }
}

/// A statement written with `$1, $2, ...` placeholders, adapted to the backend.
pub(crate) fn stmt(backend: DbBackend, sql: &str, values: Vec<DbValue>) -> Statement {
    let sql = match backend {
        DbBackend::Sqlite => sql.replace('$', "?"),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

fn session_to_api(m: session::Model) -> Session {
    Session {
        id: m.external_id,
        title: m.title,
        persona: m.persona,
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

fn audit_to_api(m: audit_log::Model) -> AuditEntry {
    AuditEntry {
        id: m.id,
        user: m.user_external_id,
        actor: m.actor,
        action: m.action,
        detail: m.detail,
        created_at: m.created_at,
    }
}

fn opt_micros(t: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    t.map(from_micros).transpose()
}

fn job_to_api(m: job::Model) -> Result<Job> {
    Ok(Job {
        id: m.id,
        user: m.user_external_id,
        kind: JobKind::parse(&m.kind)?,
        status: JobStatus::parse(&m.status)?,
        progress: m.progress,
        message: m.message,
        params: m.params,
        result: m.result,
        error: m.error,
        attempts: m.attempts.max(0) as u32,
        run_at: from_micros(m.run_at_us)?,
        created_at: from_micros(m.created_at_us)?,
        updated_at: from_micros(m.updated_at_us)?,
        started_at: opt_micros(m.started_at_us)?,
        finished_at: opt_micros(m.finished_at_us)?,
    })
}

/// Longest error text kept on a failed job.
const MAX_JOB_ERROR: usize = 2000;

fn page_of<T>(mut items: Vec<T>, first: usize, cursor_of: impl Fn(&T) -> String) -> Page<T> {
    let more = items.len() > first;
    items.truncate(first);
    let cursors: Vec<String> = items.iter().map(cursor_of).collect();
    let next_cursor = if more { cursors.last().cloned() } else { None };
    Page {
        items,
        next_cursor,
        cursors,
    }
}

fn internal(msg: impl Into<String>) -> Error {
    Error::Internal(msg.into())
}

impl<V: VectorIndex> SqlStore<V> {
    /// Starts a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads first could not upgrade once
    /// another writer had committed, and would fail instead of waiting.
    async fn begin_write(&self) -> Result<DatabaseTransaction> {
        Ok(self
            .db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await?)
    }

    async fn find_user<C: ConnectionTrait>(
        &self,
        db: &C,
        user: &str,
    ) -> Result<Option<user::Model>> {
        self.limits.check_user_id(user)?;
        Ok(user::Entity::find()
            .filter(user::Column::ExternalId.eq(user))
            .one(db)
            .await?)
    }

    async fn ensure_user<C: ConnectionTrait>(&self, db: &C, user: &str) -> Result<user::Model> {
        if let Some(found) = self.find_user(db, user).await? {
            return Ok(found);
        }
        user::Entity::insert(user::ActiveModel {
            id: NotSet,
            external_id: Set(user.to_owned()),
            revision: Set(0),
            created_at: Set(now()),
        })
        .on_conflict(
            OnConflict::column(user::Column::ExternalId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
        self.find_user(db, user)
            .await?
            .ok_or_else(|| internal("user vanished after insert"))
    }

    async fn find_session<C: ConnectionTrait>(
        &self,
        db: &C,
        user_id: i64,
        session: &str,
    ) -> Result<Option<session::Model>> {
        self.limits.check_session_id(session)?;
        Ok(session::Entity::find()
            .filter(session::Column::UserId.eq(user_id))
            .filter(session::Column::ExternalId.eq(session))
            .one(db)
            .await?)
    }

    async fn ensure_session<C: ConnectionTrait>(
        &self,
        db: &C,
        user_id: i64,
        session: &str,
    ) -> Result<session::Model> {
        if let Some(found) = self.find_session(db, user_id, session).await? {
            return Ok(found);
        }
        let t = now();
        session::Entity::insert(session::ActiveModel {
            id: NotSet,
            user_id: Set(user_id),
            external_id: Set(session.to_owned()),
            title: Set(None),
            persona: Set(None),
            created_at: Set(t),
            updated_at: Set(t),
        })
        .on_conflict(
            OnConflict::columns([session::Column::UserId, session::Column::ExternalId])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
        self.find_session(db, user_id, session)
            .await?
            .ok_or_else(|| internal("session vanished after insert"))
    }

    /// Moves the user to a new revision (inside the write transaction) and returns it.
    async fn bump_revision(&self, txn: &DatabaseTransaction, user_id: i64) -> Result<i64> {
        let row = txn
            .query_one_raw(stmt(
                txn.get_database_backend(),
                "UPDATE users SET revision = revision + 1 WHERE id = $1 RETURNING revision",
                vec![user_id.into()],
            ))
            .await?
            .ok_or_else(|| internal("user row missing"))?;
        Ok(row.try_get_by_index::<i64>(0)?)
    }

    async fn audit<C: ConnectionTrait>(
        &self,
        db: &C,
        user: &str,
        actor: &Actor,
        action: &str,
        detail: Value,
    ) -> Result<()> {
        audit_log::Entity::insert(audit_log::ActiveModel {
            id: NotSet,
            user_external_id: Set(user.to_owned()),
            actor: Set(actor.0.clone()),
            action: Set(action.to_owned()),
            detail: Set(detail),
            created_at: Set(now()),
        })
        .exec_without_returning(db)
        .await?;
        Ok(())
    }

    /// External ids of the given sessions of one user.
    async fn session_names<C: ConnectionTrait>(
        &self,
        db: &C,
        user_id: i64,
        ids: impl IntoIterator<Item = i64>,
    ) -> Result<HashMap<i64, String>> {
        let ids: Vec<i64> = ids
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut names = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(INSERT_CHUNK) {
            let rows = session::Entity::find()
                .filter(session::Column::UserId.eq(user_id))
                .filter(session::Column::Id.is_in(chunk.iter().copied()))
                .all(db)
                .await?;
            names.extend(rows.into_iter().map(|s| (s.id, s.external_id)));
        }
        Ok(names)
    }

    fn memory_to_api(&self, m: memory::Model, sessions: &HashMap<i64, String>) -> Result<Memory> {
        Ok(Memory {
            id: m.id,
            kind: m.kind.parse()?,
            session: m.session_id.and_then(|s| sessions.get(&s).cloned()),
            message_id: m.message_id,
            summary_id: m.summary_id,
            role: m.role.as_deref().map(str::parse).transpose()?,
            tags: tags_from_json(&m.tags),
            metadata: m.metadata,
            importance: m.importance,
            emotion: m.emotion,
            content: m.content,
            created_at: m.created_at,
            updated_at: m.updated_at,
        })
    }

    async fn memories_to_api<C: ConnectionTrait>(
        &self,
        db: &C,
        user_id: i64,
        models: Vec<memory::Model>,
    ) -> Result<Vec<Memory>> {
        let names = self
            .session_names(db, user_id, models.iter().filter_map(|m| m.session_id))
            .await?;
        models
            .into_iter()
            .map(|m| self.memory_to_api(m, &names))
            .collect()
    }

    /// The user's memories with these ids (a second read after a search: still scoped to the
    /// user).
    async fn memories_by_id(
        &self,
        user_id: i64,
        ids: impl IntoIterator<Item = i64>,
    ) -> Result<HashMap<i64, Memory>> {
        let rows = memory::Entity::find()
            .filter(memory::Column::UserId.eq(user_id))
            .filter(memory::Column::Id.is_in(ids))
            .all(&self.db)
            .await?;
        Ok(self
            .memories_to_api(&self.db, user_id, rows)
            .await?
            .into_iter()
            .map(|m| (m.id, m))
            .collect())
    }

    fn message_to_api(&self, m: message::Model, session: &str) -> Result<Message> {
        Ok(Message {
            id: m.id,
            session: session.to_owned(),
            role: m.role.parse()?,
            content: m.content,
            tags: tags_from_json(&m.tags),
            metadata: m.metadata,
            created_at: m.created_at,
        })
    }

    async fn resolve_filter<C: ConnectionTrait>(
        &self,
        db: &C,
        user_id: i64,
        filter: &Filter,
    ) -> Result<Option<ResolvedFilter>> {
        self.limits.check_filter(filter)?;
        let session_id = match &filter.session {
            Some(name) => match self.find_session(db, user_id, name).await? {
                Some(s) => Some(s.id),
                None => return Ok(None),
            },
            None => None,
        };
        Ok(Some(ResolvedFilter {
            session_id,
            kinds: filter.kinds.clone(),
            roles: filter.roles.clone(),
            tags: filter.tags.clone(),
            since: filter.since,
            until: filter.until,
        }))
    }

    /// The SQL condition of a filter over the `memories` table.
    fn memory_condition(&self, user_id: i64, f: &ResolvedFilter) -> Condition {
        let mut cond = Condition::all().add(memory::Column::UserId.eq(user_id));
        if let Some(s) = f.session_id {
            cond = cond.add(memory::Column::SessionId.eq(s));
        }
        if !f.kinds.is_empty() {
            cond = cond.add(memory::Column::Kind.is_in(f.kinds.iter().map(|k| k.as_str())));
        }
        if !f.roles.is_empty() {
            cond = cond.add(memory::Column::Role.is_in(f.roles.iter().map(|r| r.as_str())));
        }
        if let Some(t) = f.since {
            cond = cond.add(memory::Column::CreatedAt.gte(t));
        }
        if let Some(t) = f.until {
            cond = cond.add(memory::Column::CreatedAt.lt(t));
        }
        if !f.tags.is_empty() {
            cond = cond.add(tags_condition(
                self.db.get_database_backend(),
                "memories",
                &f.tags,
            ));
        }
        cond
    }

    /// Writes memories (already validated) for one user, returning the stored rows in input
    /// order. `sessions` maps session names to ids; `sources` gives each memory its message.
    async fn insert_memories(
        &self,
        txn: &DatabaseTransaction,
        user_id: i64,
        rows: Vec<(memory::ActiveModel, &NewMemory)>,
        delta: &mut Delta,
    ) -> Result<Vec<memory::Model>> {
        let mut stored = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(INSERT_CHUNK) {
            let models = chunk.iter().map(|(am, _)| am.clone());
            let mut inserted = memory::Entity::insert_many(models)
                .exec_with_returning(txn)
                .await?;
            // A multi-row INSERT assigns ids in row order on both backends; RETURNING's order
            // is not promised, so restore it by id.
            inserted.sort_by_key(|m| m.id);
            if inserted.len() != chunk.len() {
                return Err(internal("memory insert returned a different row count"));
            }
            let embeddings: Vec<EmbeddingRow<'_>> = inserted
                .iter()
                .zip(chunk)
                .map(|(m, (_, new))| EmbeddingRow {
                    memory_id: m.id,
                    user_id,
                    model: &new.embedding.model,
                    vector: &new.embedding.vector,
                    created_at: m.created_at,
                })
                .collect();
            self.index.insert(txn, &embeddings).await?;
            if self.index.tracks_changes() {
                for (m, (_, new)) in inserted.iter().zip(chunk) {
                    delta.added.push(IndexedMemory {
                        memory_id: m.id,
                        session_id: m.session_id,
                        kind: new.kind,
                        role: m.role.as_deref().map(str::parse).transpose()?,
                        tags: tags_from_json(&m.tags),
                        created_at: m.created_at,
                        content: new.content.clone(),
                        model: new.embedding.model.clone(),
                        vector: new.embedding.vector.clone(),
                    });
                }
            }
            stored.extend(inserted);
        }
        Ok(stored)
    }

    async fn count<C: ConnectionTrait>(&self, db: &C, sql: &str, user_id: i64) -> Result<u64> {
        let row = db
            .query_one_raw(stmt(db.get_database_backend(), sql, vec![user_id.into()]))
            .await?
            .ok_or_else(|| internal("count returned no row"))?;
        Ok(row.try_get_by_index::<i64>(0)?.max(0) as u64)
    }
}

/// "Has every one of these tags", over a JSON array column `table.tags`.
pub(crate) fn tags_condition(backend: DbBackend, table: &str, tags: &[String]) -> Expr {
    match backend {
        DbBackend::Postgres => Expr::cust_with_values(
            format!("{table}.tags @> $1::jsonb"),
            [tags_json(tags).to_string()],
        ),
        _ => {
            let unique: Vec<String> = tags
                .iter()
                .cloned()
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let placeholders: Vec<String> = (1..=unique.len()).map(|i| format!("${i}")).collect();
            Expr::cust_with_values(
                format!(
                    "(SELECT count(DISTINCT value) FROM json_each({table}.tags) WHERE value IN ({})) = {}",
                    placeholders.join(", "),
                    unique.len()
                ),
                unique,
            )
        }
    }
}

#[async_trait]
impl<V: VectorIndex> MemoryStore for SqlStore<V> {
    fn backend(&self) -> &'static str {
        self.backend_name
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn upsert_user(&self, user: &str) -> Result<User> {
        let m = self.ensure_user(&self.db, user).await?;
        Ok(User {
            id: m.external_id,
            created_at: m.created_at,
        })
    }

    async fn get_user(&self, user: &str) -> Result<Option<User>> {
        Ok(self.find_user(&self.db, user).await?.map(|m| User {
            id: m.external_id,
            created_at: m.created_at,
        }))
    }

    async fn upsert_session(
        &self,
        user: &str,
        session: &str,
        patch: SessionPatch,
    ) -> Result<Session> {
        if let Some(Some(title)) = &patch.title {
            self.limits.check_persona("title", title)?;
        }
        if let Some(Some(persona)) = &patch.persona {
            self.limits.check_persona("persona", persona)?;
        }
        let txn = self.begin_write().await?;
        let u = self.ensure_user(&txn, user).await?;
        let s = self.ensure_session(&txn, u.id, session).await?;
        let model = if patch.title.is_some() || patch.persona.is_some() {
            let mut am: session::ActiveModel = s.into();
            if let Some(title) = patch.title {
                am.title = Set(title);
            }
            if let Some(persona) = patch.persona {
                am.persona = Set(persona);
            }
            am.updated_at = Set(now());
            session::Entity::update(am).exec(&txn).await?
        } else {
            s
        };
        txn.commit().await?;
        Ok(session_to_api(model))
    }

    async fn get_session(&self, user: &str, session: &str) -> Result<Option<Session>> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(None);
        };
        Ok(self
            .find_session(&self.db, u.id, session)
            .await?
            .map(session_to_api))
    }

    async fn list_sessions(&self, user: &str, page: &PageRequest) -> Result<Page<Session>> {
        self.limits.check_page_size(page.first)?;
        let after = list_cursor(page)?;
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(Page {
                items: vec![],
                next_cursor: None,
                cursors: vec![],
            });
        };
        let mut q = session::Entity::find().filter(session::Column::UserId.eq(u.id));
        if let Some(c) = after {
            let t = from_micros(c.t)?;
            q = q.filter(
                Condition::any().add(session::Column::CreatedAt.lt(t)).add(
                    Condition::all()
                        .add(session::Column::CreatedAt.eq(t))
                        .add(session::Column::Id.lt(c.i)),
                ),
            );
        }
        let rows = q
            .order_by_desc(session::Column::CreatedAt)
            .order_by_desc(session::Column::Id)
            .limit(page.first as u64 + 1)
            .all(&self.db)
            .await?;
        let page = page_of(rows, page.first, |s| {
            cursor::encode(&ListCursor {
                t: micros(s.created_at),
                i: s.id,
            })
        });
        Ok(Page {
            items: page.items.into_iter().map(session_to_api).collect(),
            next_cursor: page.next_cursor,
            cursors: page.cursors,
        })
    }

    async fn delete_session(&self, user: &str, session: &str) -> Result<bool> {
        let txn = self.begin_write().await?;
        let Some(u) = self.find_user(&txn, user).await? else {
            return Ok(false);
        };
        let Some(s) = self.find_session(&txn, u.id, session).await? else {
            return Ok(false);
        };
        session::Entity::delete_many()
            .filter(session::Column::Id.eq(s.id))
            .filter(session::Column::UserId.eq(u.id))
            .exec(&txn)
            .await?;
        let revision = self.bump_revision(&txn, u.id).await?;
        txn.commit().await?;
        self.index.committed(
            u.id,
            revision,
            Delta {
                reset: true,
                ..Delta::default()
            },
        );
        Ok(true)
    }

    async fn append_messages(
        &self,
        user: &str,
        writes: Vec<MessageWrite>,
    ) -> Result<Vec<AppendedMessage>> {
        self.limits.check_user_id(user)?;
        for (i, w) in writes.iter().enumerate() {
            self.limits
                .check_message(&w.message)
                .map_err(|e| Error::invalid(format!("message {}: {}", i + 1, strip(&e))))?;
            for m in &w.memories {
                self.limits.check_memory(m).map_err(|e| {
                    Error::invalid(format!("message {}: memory: {}", i + 1, strip(&e)))
                })?;
            }
        }
        if writes.is_empty() {
            return Ok(Vec::new());
        }

        let txn = self.begin_write().await?;
        let u = self.ensure_user(&txn, user).await?;
        let mut sessions: HashMap<String, i64> = HashMap::new();
        for w in &writes {
            if !sessions.contains_key(&w.message.session) {
                let s = self.ensure_session(&txn, u.id, &w.message.session).await?;
                sessions.insert(w.message.session.clone(), s.id);
            }
        }
        let t = now();
        let mut messages = Vec::with_capacity(writes.len());
        for chunk in writes.chunks(INSERT_CHUNK) {
            let models = chunk.iter().map(|w| message::ActiveModel {
                id: NotSet,
                user_id: Set(u.id),
                session_id: Set(sessions[&w.message.session]),
                role: Set(w.message.role.as_str().to_owned()),
                content: Set(w.message.content.clone()),
                tags: Set(tags_json(&w.message.tags)),
                metadata: Set(metadata_json(&w.message.metadata)),
                created_at: Set(w.message.created_at.map_or(t, |c| c.trunc_subsecs(6))),
            });
            let mut inserted = message::Entity::insert_many(models)
                .exec_with_returning(&txn)
                .await?;
            inserted.sort_by_key(|m| m.id);
            if inserted.len() != chunk.len() {
                return Err(internal("message insert returned a different row count"));
            }
            messages.extend(inserted);
        }

        let mut rows = Vec::new();
        let mut owners = Vec::new();
        for (w, m) in writes.iter().zip(&messages) {
            for new in &w.memories {
                let tags = if new.tags.is_empty() {
                    &w.message.tags
                } else {
                    &new.tags
                };
                rows.push((
                    memory::ActiveModel {
                        id: NotSet,
                        user_id: Set(u.id),
                        session_id: Set(Some(m.session_id)),
                        message_id: Set(Some(m.id)),
                        summary_id: Set(None),
                        kind: Set(new.kind.as_str().to_owned()),
                        role: Set(Some(new.role.unwrap_or(w.message.role).as_str().to_owned())),
                        content: Set(new.content.clone()),
                        tags: Set(tags_json(tags)),
                        metadata: Set(metadata_json(&new.metadata)),
                        importance: Set(new.importance.unwrap_or(0.5)),
                        emotion: Set(new.emotion.clone()),
                        created_at: Set(new
                            .created_at
                            .map_or(m.created_at, |c| c.trunc_subsecs(6))),
                        updated_at: Set(t),
                    },
                    new,
                ));
                owners.push(m.id);
            }
        }
        let mut delta = Delta::default();
        let memories = self.insert_memories(&txn, u.id, rows, &mut delta).await?;
        session::Entity::update_many()
            .col_expr(session::Column::UpdatedAt, Expr::value(t))
            .filter(session::Column::UserId.eq(u.id))
            .filter(session::Column::Id.is_in(sessions.values().copied()))
            .exec(&txn)
            .await?;
        let revision = self.bump_revision(&txn, u.id).await?;
        txn.commit().await?;
        self.index.committed(u.id, revision, delta);

        let mut by_message: HashMap<i64, Vec<i64>> = HashMap::new();
        for (owner, m) in owners.iter().zip(&memories) {
            by_message.entry(*owner).or_default().push(m.id);
        }
        messages
            .into_iter()
            .zip(&writes)
            .map(|(m, w)| {
                let memory_ids = by_message.remove(&m.id).unwrap_or_default();
                Ok(AppendedMessage {
                    message: self.message_to_api(m, &w.message.session)?,
                    memory_ids,
                })
            })
            .collect()
    }

    async fn list_messages(
        &self,
        user: &str,
        session: &str,
        page: &PageRequest,
    ) -> Result<Page<Message>> {
        self.limits.check_page_size(page.first)?;
        let after = list_cursor(page)?;
        let empty = Page {
            items: vec![],
            next_cursor: None,
            cursors: vec![],
        };
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(empty);
        };
        let Some(s) = self.find_session(&self.db, u.id, session).await? else {
            return Ok(empty);
        };
        let mut q = message::Entity::find()
            .filter(message::Column::UserId.eq(u.id))
            .filter(message::Column::SessionId.eq(s.id));
        if let Some(c) = after {
            let t = from_micros(c.t)?;
            q = q.filter(
                Condition::any().add(message::Column::CreatedAt.gt(t)).add(
                    Condition::all()
                        .add(message::Column::CreatedAt.eq(t))
                        .add(message::Column::Id.gt(c.i)),
                ),
            );
        }
        let rows = q
            .order_by_asc(message::Column::CreatedAt)
            .order_by_asc(message::Column::Id)
            .limit(page.first as u64 + 1)
            .all(&self.db)
            .await?;
        let page = page_of(rows, page.first, |m| {
            cursor::encode(&ListCursor {
                t: micros(m.created_at),
                i: m.id,
            })
        });
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|m| self.message_to_api(m, session))
                .collect::<Result<_>>()?,
            next_cursor: page.next_cursor,
            cursors: page.cursors,
        })
    }

    async fn add_memories(&self, user: &str, memories: Vec<NewMemory>) -> Result<Vec<Memory>> {
        self.limits.check_user_id(user)?;
        for (i, m) in memories.iter().enumerate() {
            self.limits
                .check_memory(m)
                .map_err(|e| Error::invalid(format!("memory {}: {}", i + 1, strip(&e))))?;
        }
        if memories.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.begin_write().await?;
        let u = self.ensure_user(&txn, user).await?;
        let mut sessions: HashMap<String, i64> = HashMap::new();
        for m in &memories {
            if let Some(name) = &m.session
                && !sessions.contains_key(name)
            {
                let s = self.ensure_session(&txn, u.id, name).await?;
                sessions.insert(name.clone(), s.id);
            }
        }
        let t = now();
        let rows = memories
            .iter()
            .map(|new| {
                (
                    memory::ActiveModel {
                        id: NotSet,
                        user_id: Set(u.id),
                        session_id: Set(new.session.as_ref().map(|s| sessions[s])),
                        message_id: Set(None),
                        summary_id: Set(None),
                        kind: Set(new.kind.as_str().to_owned()),
                        role: Set(new.role.map(|r| r.as_str().to_owned())),
                        content: Set(new.content.clone()),
                        tags: Set(tags_json(&new.tags)),
                        metadata: Set(metadata_json(&new.metadata)),
                        importance: Set(new.importance.unwrap_or(0.5)),
                        emotion: Set(new.emotion.clone()),
                        created_at: Set(new.created_at.map_or(t, |c| c.trunc_subsecs(6))),
                        updated_at: Set(t),
                    },
                    new,
                )
            })
            .collect();
        let mut delta = Delta::default();
        let stored = self.insert_memories(&txn, u.id, rows, &mut delta).await?;
        let revision = self.bump_revision(&txn, u.id).await?;
        txn.commit().await?;
        self.index.committed(u.id, revision, delta);
        self.memories_to_api(&self.db, u.id, stored).await
    }

    async fn get_memory(&self, user: &str, id: i64) -> Result<Option<Memory>> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(None);
        };
        let Some(m) = memory::Entity::find()
            .filter(memory::Column::UserId.eq(u.id))
            .filter(memory::Column::Id.eq(id))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        Ok(self.memories_to_api(&self.db, u.id, vec![m]).await?.pop())
    }

    async fn update_memory(&self, user: &str, id: i64, patch: MemoryPatch) -> Result<Memory> {
        if let Some(content) = &patch.content {
            self.limits.check_content(content)?;
            let Some(e) = &patch.embedding else {
                return Err(Error::invalid("new content needs its embedding"));
            };
            check_embedding(&e.model, &e.vector)?;
        } else if patch.embedding.is_some() {
            return Err(Error::invalid(
                "an embedding can only be replaced with its content",
            ));
        }
        if let Some(tags) = &patch.tags {
            self.limits.check_tags(tags)?;
        }
        if let Some(metadata) = &patch.metadata {
            self.limits.check_metadata(metadata)?;
        }
        if let Some(importance) = patch.importance {
            check_importance(importance)?;
        }
        let txn = self.begin_write().await?;
        let not_found = || Error::not_found("memory", id.to_string());
        let u = self.find_user(&txn, user).await?.ok_or_else(not_found)?;
        let m = memory::Entity::find()
            .filter(memory::Column::UserId.eq(u.id))
            .filter(memory::Column::Id.eq(id))
            .one(&txn)
            .await?
            .ok_or_else(not_found)?;
        let t = now();
        let mut am: memory::ActiveModel = m.into();
        if let Some(content) = patch.content {
            am.content = Set(content);
        }
        if let Some(tags) = &patch.tags {
            am.tags = Set(tags_json(tags));
        }
        if let Some(metadata) = &patch.metadata {
            am.metadata = Set(metadata_json(metadata));
        }
        if let Some(importance) = patch.importance {
            am.importance = Set(importance);
        }
        if let Some(emotion) = patch.emotion {
            am.emotion = Set(emotion);
        }
        am.updated_at = Set(t);
        let updated = memory::Entity::update(am).exec(&txn).await?;
        if let Some(e) = &patch.embedding {
            txn.execute_raw(stmt(
                txn.get_database_backend(),
                "DELETE FROM memory_embeddings WHERE memory_id = $1 AND user_id = $2",
                vec![id.into(), u.id.into()],
            ))
            .await?;
            self.index
                .insert(
                    &txn,
                    &[EmbeddingRow {
                        memory_id: id,
                        user_id: u.id,
                        model: &e.model,
                        vector: &e.vector,
                        created_at: t,
                    }],
                )
                .await?;
        }
        let revision = self.bump_revision(&txn, u.id).await?;
        txn.commit().await?;
        self.index.committed(
            u.id,
            revision,
            Delta {
                reset: true,
                ..Delta::default()
            },
        );
        Ok(self
            .memories_to_api(&self.db, u.id, vec![updated])
            .await?
            .pop()
            .expect("one memory in, one out"))
    }

    async fn delete_memories(&self, user: &str, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let txn = self.begin_write().await?;
        let Some(u) = self.find_user(&txn, user).await? else {
            return Ok(0);
        };
        let mut deleted = 0;
        for chunk in ids.chunks(INSERT_CHUNK) {
            deleted += memory::Entity::delete_many()
                .filter(memory::Column::UserId.eq(u.id))
                .filter(memory::Column::Id.is_in(chunk.iter().copied()))
                .exec(&txn)
                .await?
                .rows_affected;
        }
        let revision = self.bump_revision(&txn, u.id).await?;
        txn.commit().await?;
        self.index.committed(
            u.id,
            revision,
            Delta {
                removed: ids.to_vec(),
                ..Delta::default()
            },
        );
        Ok(deleted)
    }

    async fn list_memories(
        &self,
        user: &str,
        filter: &Filter,
        page: &PageRequest,
    ) -> Result<Page<Memory>> {
        self.limits.check_page_size(page.first)?;
        self.limits.check_filter(filter)?;
        let after = list_cursor(page)?;
        let empty = Page {
            items: vec![],
            next_cursor: None,
            cursors: vec![],
        };
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(empty);
        };
        let Some(f) = self.resolve_filter(&self.db, u.id, filter).await? else {
            return Ok(empty);
        };
        let mut q = memory::Entity::find().filter(self.memory_condition(u.id, &f));
        if let Some(c) = after {
            let t = from_micros(c.t)?;
            q = q.filter(
                Condition::any().add(memory::Column::CreatedAt.lt(t)).add(
                    Condition::all()
                        .add(memory::Column::CreatedAt.eq(t))
                        .add(memory::Column::Id.lt(c.i)),
                ),
            );
        }
        let rows = q
            .order_by_desc(memory::Column::CreatedAt)
            .order_by_desc(memory::Column::Id)
            .limit(page.first as u64 + 1)
            .all(&self.db)
            .await?;
        let page = page_of(rows, page.first, |m| {
            cursor::encode(&ListCursor {
                t: micros(m.created_at),
                i: m.id,
            })
        });
        Ok(Page {
            items: self.memories_to_api(&self.db, u.id, page.items).await?,
            next_cursor: page.next_cursor,
            cursors: page.cursors,
        })
    }

    async fn count_memories(&self, user: &str) -> Result<u64> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(0);
        };
        self.count(
            &self.db,
            "SELECT count(*) FROM memories WHERE user_id = $1",
            u.id,
        )
        .await
    }

    async fn search(&self, user: &str, query: &VectorQuery) -> Result<SearchPage> {
        self.limits.check_page_size(query.top_k)?;
        self.limits.check_filter(&query.filter)?;
        check_embedding(&query.embedding.model, &query.embedding.vector)?;
        if let Some(s) = query.min_score
            && !s.is_finite()
        {
            return Err(Error::invalid("min_score must be a finite number"));
        }
        let after = query
            .cursor
            .as_deref()
            .map(cursor::decode::<SearchCursor>)
            .transpose()?;
        let empty = SearchPage {
            hits: vec![],
            next_cursor: None,
        };
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(empty);
        };
        let Some(filter) = self.resolve_filter(&self.db, u.id, &query.filter).await? else {
            return Ok(empty);
        };
        let mut found = self
            .index
            .search(
                &self.db,
                &IndexQuery {
                    user_id: u.id,
                    revision: u.revision,
                    model: &query.embedding.model,
                    vector: &query.embedding.vector,
                    limit: query.top_k + 1,
                    max_distance: query.min_score.map(|s| self.metric.max_distance(s as f64)),
                    filter: &filter,
                    after,
                },
            )
            .await?;
        let more = found.len() > query.top_k;
        found.truncate(query.top_k);
        let mut by_id = self
            .memories_by_id(u.id, found.iter().map(|(id, _)| *id))
            .await?;
        let mut hits = Vec::with_capacity(found.len());
        let mut last = None;
        for (id, distance) in found {
            // A memory deleted between the two reads is skipped.
            if let Some(memory) = by_id.remove(&id) {
                hits.push(SearchHit {
                    memory,
                    score: self.metric.score(distance) as f32,
                    distance: distance as f32,
                });
            }
            last = Some(SearchCursor { d: distance, i: id });
        }
        Ok(SearchPage {
            hits,
            next_cursor: if more {
                last.map(|c| cursor::encode(&c))
            } else {
                None
            },
        })
    }

    async fn text_search(&self, user: &str, query: &TextQuery) -> Result<Vec<TextHit>> {
        self.limits.check_page_size(query.top_k)?;
        self.limits.check_filter(&query.filter)?;
        self.limits.check_content(&query.text)?;
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(vec![]);
        };
        let Some(filter) = self.resolve_filter(&self.db, u.id, &query.filter).await? else {
            return Ok(vec![]);
        };
        if crate::text::query_terms(&query.text).is_empty() {
            return Ok(vec![]);
        }
        let found = self
            .index
            .text_search(
                &self.db,
                &TextIndexQuery {
                    user_id: u.id,
                    revision: u.revision,
                    text: &query.text,
                    limit: query.top_k,
                    filter: &filter,
                },
            )
            .await?;
        let mut by_id = self
            .memories_by_id(u.id, found.iter().map(|(id, _)| *id))
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|(id, score)| {
                by_id.remove(&id).map(|memory| TextHit {
                    memory,
                    score: score as f32,
                })
            })
            .collect())
    }

    async fn vectors(
        &self,
        user: &str,
        model: &str,
        ids: &[i64],
    ) -> Result<HashMap<i64, Vec<f32>>> {
        self.limits.check_page_size(ids.len().max(1))?;
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(HashMap::new());
        };
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self
            .index
            .vectors_of(&self.db, u.id, u.revision, model, ids)
            .await?
            .into_iter()
            .collect())
    }

    async fn add_summary(&self, user: &str, new: NewSummary) -> Result<Summary> {
        self.limits.check_content(&new.content)?;
        check_embedding(&new.embedding.model, &new.embedding.vector)?;
        let txn = self.begin_write().await?;
        let u = self
            .find_user(&txn, user)
            .await?
            .ok_or_else(|| Error::not_found("session", new.session.clone()))?;
        let s = self
            .find_session(&txn, u.id, &new.session)
            .await?
            .ok_or_else(|| Error::not_found("session", new.session.clone()))?;
        // Covered messages must be the user's own.
        for id in [new.first_message_id, new.last_message_id]
            .into_iter()
            .flatten()
        {
            let owned = message::Entity::find()
                .filter(message::Column::UserId.eq(u.id))
                .filter(message::Column::SessionId.eq(s.id))
                .filter(message::Column::Id.eq(id))
                .one(&txn)
                .await?;
            if owned.is_none() {
                return Err(Error::not_found("message", id.to_string()));
            }
        }
        let t = now();
        let stored = summary::Entity::insert(summary::ActiveModel {
            id: NotSet,
            user_id: Set(u.id),
            session_id: Set(s.id),
            content: Set(new.content.clone()),
            first_message_id: Set(new.first_message_id),
            last_message_id: Set(new.last_message_id),
            model: Set(new.model.clone()),
            created_at: Set(t),
        })
        .exec_with_returning(&txn)
        .await?;
        let memory = NewMemory {
            session: Some(new.session.clone()),
            ..NewMemory::new(
                MemoryKind::Summary,
                new.content.clone(),
                new.embedding.clone(),
            )
        };
        let row = memory::ActiveModel {
            id: NotSet,
            user_id: Set(u.id),
            session_id: Set(Some(s.id)),
            message_id: Set(None),
            summary_id: Set(Some(stored.id)),
            kind: Set(MemoryKind::Summary.as_str().to_owned()),
            role: Set(None),
            content: Set(new.content.clone()),
            tags: Set(tags_json(&[])),
            metadata: Set(metadata_json(&Value::Null)),
            importance: Set(0.5),
            emotion: Set(None),
            created_at: Set(t),
            updated_at: Set(t),
        };
        let mut delta = Delta::default();
        self.insert_memories(&txn, u.id, vec![(row, &memory)], &mut delta)
            .await?;
        let revision = self.bump_revision(&txn, u.id).await?;
        txn.commit().await?;
        self.index.committed(u.id, revision, delta);
        Ok(Summary {
            id: stored.id,
            session: new.session,
            content: stored.content,
            first_message_id: stored.first_message_id,
            last_message_id: stored.last_message_id,
            model: stored.model,
            created_at: stored.created_at,
        })
    }

    async fn list_summaries(&self, user: &str, session: &str) -> Result<Vec<Summary>> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(vec![]);
        };
        let Some(s) = self.find_session(&self.db, u.id, session).await? else {
            return Ok(vec![]);
        };
        let rows = summary::Entity::find()
            .filter(summary::Column::UserId.eq(u.id))
            .filter(summary::Column::SessionId.eq(s.id))
            .order_by_asc(summary::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|m| Summary {
                id: m.id,
                session: session.to_owned(),
                content: m.content,
                first_message_id: m.first_message_id,
                last_message_id: m.last_message_id,
                model: m.model,
                created_at: m.created_at,
            })
            .collect())
    }

    async fn get_settings(&self, user: &str) -> Result<Value> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(Value::Object(Default::default()));
        };
        Ok(user_setting::Entity::find_by_id(u.id)
            .one(&self.db)
            .await?
            .map_or(Value::Object(Default::default()), |s| s.settings))
    }

    async fn put_settings(&self, user: &str, settings: Value, actor: &Actor) -> Result<Value> {
        if !settings.is_object() {
            return Err(Error::invalid("settings must be a JSON object"));
        }
        self.limits.check_metadata(&settings)?;
        let txn = self.begin_write().await?;
        let u = self.ensure_user(&txn, user).await?;
        user_setting::Entity::insert(user_setting::ActiveModel {
            user_id: Set(u.id),
            settings: Set(settings.clone()),
            updated_at: Set(now()),
        })
        .on_conflict(
            OnConflict::column(user_setting::Column::UserId)
                .update_columns([
                    user_setting::Column::Settings,
                    user_setting::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        let keys: Vec<&String> = settings
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        self.audit(
            &txn,
            user,
            actor,
            "update_settings",
            serde_json::json!({ "keys": keys }),
        )
        .await?;
        txn.commit().await?;
        Ok(settings)
    }

    async fn export_user(
        &self,
        user: &str,
        options: &ExportOptions,
        actor: &Actor,
    ) -> Result<UserExport> {
        let txn = self.begin_write().await?;
        let u = self
            .find_user(&txn, user)
            .await?
            .ok_or_else(|| Error::not_found("user", user))?;
        let sessions = session::Entity::find()
            .filter(session::Column::UserId.eq(u.id))
            .order_by_asc(session::Column::Id)
            .all(&txn)
            .await?;
        let names: HashMap<i64, String> = sessions
            .iter()
            .map(|s| (s.id, s.external_id.clone()))
            .collect();
        let messages = message::Entity::find()
            .filter(message::Column::UserId.eq(u.id))
            .order_by_asc(message::Column::CreatedAt)
            .order_by_asc(message::Column::Id)
            .all(&txn)
            .await?
            .into_iter()
            .map(|m| {
                let session = names.get(&m.session_id).cloned().unwrap_or_default();
                self.message_to_api(m, &session)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut embeddings: HashMap<i64, Vec<ExportedEmbedding>> = HashMap::new();
        for (id, e) in self
            .index
            .embeddings_of(&txn, u.id, options.include_vectors)
            .await?
        {
            embeddings.entry(id).or_default().push(e);
        }
        let memories = memory::Entity::find()
            .filter(memory::Column::UserId.eq(u.id))
            .order_by_asc(memory::Column::CreatedAt)
            .order_by_asc(memory::Column::Id)
            .all(&txn)
            .await?
            .into_iter()
            .map(|m| {
                let id = m.id;
                Ok(ExportedMemory {
                    memory: self.memory_to_api(m, &names)?,
                    embeddings: embeddings.remove(&id).unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let summaries = summary::Entity::find()
            .filter(summary::Column::UserId.eq(u.id))
            .order_by_asc(summary::Column::Id)
            .all(&txn)
            .await?
            .into_iter()
            .map(|m| Summary {
                id: m.id,
                session: names.get(&m.session_id).cloned().unwrap_or_default(),
                content: m.content,
                first_message_id: m.first_message_id,
                last_message_id: m.last_message_id,
                model: m.model,
                created_at: m.created_at,
            })
            .collect();
        let settings = user_setting::Entity::find_by_id(u.id)
            .one(&txn)
            .await?
            .map_or(Value::Object(Default::default()), |s| s.settings);
        self.audit(
            &txn,
            user,
            actor,
            "export",
            serde_json::json!({
                "sessions": sessions.len(),
                "messages": messages.len(),
                "memories": memories.len(),
                "include_vectors": options.include_vectors,
            }),
        )
        .await?;
        let audit = audit_log::Entity::find()
            .filter(audit_log::Column::UserExternalId.eq(user))
            .order_by_asc(audit_log::Column::Id)
            .all(&txn)
            .await?
            .into_iter()
            .map(audit_to_api)
            .collect();
        txn.commit().await?;
        Ok(UserExport {
            format: EXPORT_FORMAT.to_owned(),
            exported_at: now(),
            user: User {
                id: u.external_id,
                created_at: u.created_at,
            },
            settings,
            sessions: sessions.into_iter().map(session_to_api).collect(),
            messages,
            memories,
            summaries,
            audit,
        })
    }

    async fn delete_user(&self, user: &str, actor: &Actor) -> Result<DeletionReport> {
        let txn = self.begin_write().await?;
        let Some(u) = self.find_user(&txn, user).await? else {
            self.audit(
                &txn,
                user,
                actor,
                "delete_user",
                serde_json::json!({ "existed": false }),
            )
            .await?;
            txn.commit().await?;
            return Ok(DeletionReport::default());
        };
        let report = DeletionReport {
            existed: true,
            sessions: self
                .count(
                    &txn,
                    "SELECT count(*) FROM sessions WHERE user_id = $1",
                    u.id,
                )
                .await?,
            messages: self
                .count(
                    &txn,
                    "SELECT count(*) FROM messages WHERE user_id = $1",
                    u.id,
                )
                .await?,
            memories: self
                .count(
                    &txn,
                    "SELECT count(*) FROM memories WHERE user_id = $1",
                    u.id,
                )
                .await?,
            embeddings: self
                .count(
                    &txn,
                    "SELECT count(*) FROM memory_embeddings WHERE user_id = $1",
                    u.id,
                )
                .await?,
            summaries: self
                .count(
                    &txn,
                    "SELECT count(*) FROM summaries WHERE user_id = $1",
                    u.id,
                )
                .await?,
        };
        // Foreign keys cascade from `users` to every table that holds the user's data.
        user::Entity::delete_by_id(u.id).exec(&txn).await?;
        self.audit(
            &txn,
            user,
            actor,
            "delete_user",
            serde_json::to_value(&report).map_err(|e| internal(e.to_string()))?,
        )
        .await?;
        txn.commit().await?;
        self.index.committed(
            u.id,
            i64::MAX,
            Delta {
                reset: true,
                ..Delta::default()
            },
        );
        Ok(report)
    }

    async fn audit_log(&self, user: &str, page: &PageRequest) -> Result<Page<AuditEntry>> {
        self.limits.check_user_id(user)?;
        self.limits.check_page_size(page.first)?;
        let mut q = audit_log::Entity::find().filter(audit_log::Column::UserExternalId.eq(user));
        if let Some(c) = list_cursor(page)? {
            q = q.filter(audit_log::Column::Id.gt(c.i));
        }
        let rows = q
            .order_by_asc(audit_log::Column::Id)
            .limit(page.first as u64 + 1)
            .all(&self.db)
            .await?;
        let page = page_of(rows, page.first, |a| {
            cursor::encode(&ListCursor { t: 0, i: a.id })
        });
        Ok(Page {
            items: page.items.into_iter().map(audit_to_api).collect(),
            next_cursor: page.next_cursor,
            cursors: page.cursors,
        })
    }

    fn fanout(&self) -> Option<Arc<dyn Fanout>> {
        self.fanout.clone()
    }

    async fn create_job(&self, user: &str, new: NewJob, actor: &Actor) -> Result<Job> {
        self.limits.check_user_id(user)?;
        if !new.params.is_object() {
            return Err(Error::invalid("job parameters must be a JSON object"));
        }
        let t = micros(now());
        let txn = self.begin_write().await?;
        if let Some(pending) = job::Entity::find()
            .filter(job::Column::UserExternalId.eq(user))
            .filter(job::Column::Kind.eq(new.kind.as_str()))
            .filter(
                job::Column::Status
                    .is_in([JobStatus::Queued.as_str(), JobStatus::Running.as_str()]),
            )
            .one(&txn)
            .await?
        {
            return Err(Error::invalid(format!(
                "a {} job is already pending (job {}); cancel it first",
                new.kind.as_str(),
                pending.id
            )));
        }
        let inserted = job::Entity::insert(job::ActiveModel {
            id: NotSet,
            user_external_id: Set(user.to_owned()),
            kind: Set(new.kind.as_str().to_owned()),
            status: Set(JobStatus::Queued.as_str().to_owned()),
            progress: Set(0.0),
            message: Set(None),
            params: Set(new.params),
            result: Set(None),
            error: Set(None),
            attempts: Set(0),
            run_at_us: Set(micros(new.run_at)),
            locked_by: Set(None),
            locked_until_us: Set(None),
            created_at_us: Set(t),
            updated_at_us: Set(t),
            started_at_us: Set(None),
            finished_at_us: Set(None),
        })
        .exec_with_returning(&txn)
        .await;
        let row = match inserted {
            Ok(row) => row,
            // A concurrent request scheduled the same kind first (the partial unique index).
            Err(e)
                if matches!(
                    e.sql_err(),
                    Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                ) =>
            {
                return Err(Error::invalid(format!(
                    "a {} job is already pending; cancel it first",
                    new.kind.as_str()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        self.audit(
            &txn,
            user,
            actor,
            "schedule_job",
            serde_json::json!({ "job": row.id, "kind": row.kind, "run_at_us": row.run_at_us }),
        )
        .await?;
        txn.commit().await?;
        job_to_api(row)
    }

    async fn get_job(&self, user: &str, id: i64) -> Result<Option<Job>> {
        self.limits.check_user_id(user)?;
        job::Entity::find_by_id(id)
            .filter(job::Column::UserExternalId.eq(user))
            .one(&self.db)
            .await?
            .map(job_to_api)
            .transpose()
    }

    async fn list_jobs(&self, user: &str, page: &PageRequest) -> Result<Page<Job>> {
        self.limits.check_user_id(user)?;
        self.limits.check_page_size(page.first)?;
        let mut q = job::Entity::find().filter(job::Column::UserExternalId.eq(user));
        if let Some(c) = list_cursor(page)? {
            q = q.filter(job::Column::Id.lt(c.i));
        }
        let rows = q
            .order_by_desc(job::Column::Id)
            .limit(page.first as u64 + 1)
            .all(&self.db)
            .await?;
        let page = page_of(rows, page.first, |j| {
            cursor::encode(&ListCursor { t: 0, i: j.id })
        });
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(job_to_api)
                .collect::<Result<_>>()?,
            next_cursor: page.next_cursor,
            cursors: page.cursors,
        })
    }

    async fn cancel_job(&self, user: &str, id: i64, actor: &Actor) -> Result<Job> {
        self.limits.check_user_id(user)?;
        let txn = self.begin_write().await?;
        let Some(row) = job::Entity::find_by_id(id)
            .filter(job::Column::UserExternalId.eq(user))
            .one(&txn)
            .await?
        else {
            return Err(Error::not_found("job", id.to_string()));
        };
        if row.status != JobStatus::Queued.as_str() {
            return Err(Error::invalid(format!(
                "job {id} is {}; only a queued job can be cancelled",
                row.status
            )));
        }
        let t = micros(now());
        let mut change: job::ActiveModel = row.into();
        change.status = Set(JobStatus::Cancelled.as_str().to_owned());
        change.updated_at_us = Set(t);
        change.finished_at_us = Set(Some(t));
        let row = sea_orm::ActiveModelTrait::update(change, &txn).await?;
        self.audit(
            &txn,
            user,
            actor,
            "cancel_job",
            serde_json::json!({ "job": row.id, "kind": row.kind }),
        )
        .await?;
        txn.commit().await?;
        job_to_api(row)
    }

    async fn claim_job(&self, worker: &str, lease: Duration) -> Result<Option<Job>> {
        let t = micros(now());
        let backend = self.db.get_database_backend();
        // Postgres: replicas claim concurrently; SKIP LOCKED hands each a different job.
        // SQLite: one process, and the write transaction is exclusive.
        let lock = if backend == DbBackend::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let txn = self.begin_write().await?;
        let due = txn
            .query_one_raw(stmt(
                backend,
                &format!(
                    "SELECT id FROM jobs WHERE (status = 'queued' AND run_at_us <= $1) \
                     OR (status = 'running' AND locked_until_us < $1) \
                     ORDER BY run_at_us, id LIMIT 1{lock}"
                ),
                vec![t.into()],
            ))
            .await?;
        let Some(due) = due else {
            txn.commit().await?;
            return Ok(None);
        };
        let id: i64 = due.try_get_by_index(0)?;
        let row = job::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or_else(|| internal("claimed job vanished"))?;
        let (attempts, started) = (row.attempts, row.started_at_us);
        let mut change: job::ActiveModel = row.into();
        change.status = Set(JobStatus::Running.as_str().to_owned());
        change.locked_by = Set(Some(worker.to_owned()));
        change.locked_until_us = Set(Some(t + lease.as_micros() as i64));
        change.attempts = Set(attempts + 1);
        change.started_at_us = Set(started.or(Some(t)));
        change.updated_at_us = Set(t);
        let row = sea_orm::ActiveModelTrait::update(change, &txn).await?;
        txn.commit().await?;
        job_to_api(row).map(Some)
    }

    async fn finish_job(&self, id: i64, worker: &str, outcome: JobOutcome) -> Result<Option<Job>> {
        let txn = self.begin_write().await?;
        let Some(row) = job::Entity::find_by_id(id).one(&txn).await? else {
            txn.commit().await?;
            return Ok(None);
        };
        if row.status != JobStatus::Running.as_str() || row.locked_by.as_deref() != Some(worker) {
            // Another runner took it over after this one's lease ran out.
            txn.commit().await?;
            return Ok(None);
        }
        let t = micros(now());
        let mut change: job::ActiveModel = row.into();
        match outcome {
            JobOutcome::Succeeded(result) => {
                change.status = Set(JobStatus::Succeeded.as_str().to_owned());
                change.progress = Set(1.0);
                change.result = Set(Some(result));
            }
            JobOutcome::Failed(error) => {
                let mut error = error;
                if error.len() > MAX_JOB_ERROR {
                    let mut cut = MAX_JOB_ERROR;
                    while !error.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    error.truncate(cut);
                }
                change.status = Set(JobStatus::Failed.as_str().to_owned());
                change.error = Set(Some(error));
            }
        }
        change.locked_by = Set(None);
        change.locked_until_us = Set(None);
        change.updated_at_us = Set(t);
        change.finished_at_us = Set(Some(t));
        let row = sea_orm::ActiveModelTrait::update(change, &txn).await?;
        txn.commit().await?;
        job_to_api(row).map(Some)
    }
}

fn list_cursor(page: &PageRequest) -> Result<Option<ListCursor>> {
    page.after.as_deref().map(cursor::decode).transpose()
}

/// The message of an [`Error::InvalidInput`] without its "invalid input: " prefix.
fn strip(e: &Error) -> String {
    match e {
        Error::InvalidInput { message } => message.clone(),
        other => other.to_string(),
    }
}
