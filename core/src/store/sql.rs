//! The part of the store that both SQL backends share, through sea-orm: this file holds the
//! store's shape and the helpers every area uses; the areas (sessions, messages, memories,
//! search, summaries, data rights, the job queue) are its children. Vectors differ per backend
//! and go through [`VectorIndex`].
//!
//! [`SqlStore`]'s operations are inherent methods, one area per file; the backends' public
//! stores forward the [`MemoryStore`](super::MemoryStore) trait to them.
mod backup;
mod data;
mod deep_memory;
mod jobs;
pub(crate) mod keys;
mod maintenance;
mod memories;
mod memory_keys;
mod messages;
mod reembed;
mod search;
mod sessions;
mod summaries;
mod vector_index;

pub(crate) use jobs::SqlJobQueue;
pub(crate) use keys::{open_memory, open_message, open_summary};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
pub(crate) use vector_index::{
    Delta, EmbeddingRow, IndexQuery, IndexedMemory, TextIndexQuery, VectorIndex,
    embeddings_statement,
};

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
use super::entity::{audit_log, memory, message, session, summary, user, user_setting};
use crate::crypto::Keyring;
use crate::error::{Error, Result};
use crate::events::Fanout;
use crate::jobs::JobQueue;
use crate::limits::{Limits, MAX_METADATA_SCAN, check_embedding, check_importance};
use crate::types::{
    Actor, AppendedMessage, AuditEntry, DeletedMemory, DeletionReport, EXPORT_FORMAT,
    ExportOptions, ExportedEmbedding, ExportedMemory, Filter, Memory, MemoryKind, MemoryPatch,
    Message, MessageWrite, MetadataCondition, Metric, NewMemory, NewSummary, Page, PageRequest,
    Role, SearchHit, SearchPage, Session, SessionPatch, Summary, TextHit, TextQuery, User,
    UserExport, VectorQuery,
};

/// Rows per multi-row INSERT (well under both backends' bound-parameter limits).
const INSERT_CHUNK: usize = 500;

/// `user_id = ?` for statements that also select rows by primary key (`id IN (…)`), written
/// `user_id + 0 = ?` so that no index on the user column can serve it: without statistics
/// SQLite otherwise walks the user's whole index range (every memory of theirs) and tests each
/// row against the id list, where looking the ids up by key touches only them. Postgres plans
/// the same statement on the primary key either way.
pub(crate) fn owned(user_column: impl sea_orm::ColumnTrait, user_id: i64) -> Expr {
    use sea_orm::sea_query::ExprTrait;
    Expr::col(user_column).add(0i64).eq(user_id)
}

/// A filter with the session resolved to its row id.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResolvedFilter {
    pub session_id: Option<i64>,
    pub kinds: Vec<MemoryKind>,
    pub roles: Vec<Role>,
    pub tags: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The validity rule ([`Filter::valid`]): as of this time, or current at `now`.
    pub as_of: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    pub include_superseded: bool,
    /// Checked in process on the opened metadata by [`SqlStore`], never by an index.
    pub metadata: Vec<MetadataCondition>,
}

/// Filter fields of one cached memory.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub id: i64,
    pub session_id: Option<i64>,
    pub kind: MemoryKind,
    pub role: Option<Role>,
    pub tags: Box<[String]>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub superseded_at: Option<DateTime<Utc>>,
}

impl ResolvedFilter {
    /// No condition beyond the default validity rule (current now), which leaves out the
    /// few memories that were superseded or have expired: counts kept for unfiltered searches
    /// are of the current memories at a revision, and expiry only ever lowers them.
    pub(crate) fn is_empty(&self) -> bool {
        self.session_id.is_none()
            && self.kinds.is_empty()
            && self.roles.is_empty()
            && self.tags.is_empty()
            && self.since.is_none()
            && self.until.is_none()
            && self.as_of.is_none()
            && !self.include_superseded
    }

    /// The validity rule of [`Filter::valid`] on a memory's times.
    pub(crate) fn valid(
        &self,
        created_at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
        superseded_at: Option<DateTime<Utc>>,
    ) -> bool {
        match self.as_of {
            None => {
                (self.include_superseded || superseded_at.is_none())
                    && expires_at.is_none_or(|e| e > self.now)
            }
            Some(t) => {
                created_at <= t
                    && (self.include_superseded || superseded_at.is_none_or(|s| s > t))
                    && expires_at.is_none_or(|e| e > t)
            }
        }
    }
}

impl Meta {
    pub(crate) fn matches(&self, f: &ResolvedFilter) -> bool {
        if f.session_id.is_some() && self.session_id != f.session_id {
            return false;
        }
        if !f.kinds.is_empty() && !f.kinds.contains(&self.kind) {
            return false;
        }
        if !f.roles.is_empty() && !self.role.is_some_and(|r| f.roles.contains(&r)) {
            return false;
        }
        if f.since.is_some_and(|t| self.created_at < t)
            || f.until.is_some_and(|t| self.created_at >= t)
        {
            return false;
        }
        f.valid(self.created_at, self.expires_at, self.superseded_at)
            && f.tags.iter().all(|t| self.tags.contains(t))
    }
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
    /// The job queue, on the same database.
    pub jobs: Arc<SqlJobQueue>,
    /// The data keys that seal stored text (encryption at rest; see `keys.rs`).
    pub keys: Arc<Keyring>,
    /// Whether the current key is known to be in the store's registry.
    pub key_registered: std::sync::atomic::AtomicBool,
    /// Whether users seen for the first time start with extra keys on.
    pub memory_keys_for_new_users: bool,
    /// The embedding model users seen for the first time are on (see
    /// [`super::MemoryStore::set_embedding_model_for_new_users`]).
    pub embedding_model_for_new_users: std::sync::RwLock<Option<String>>,
}

impl<V: VectorIndex> SqlStore<V> {
    /// A store over `db` (already migrated) with the vector index `index`.
    pub fn new(
        db: DatabaseConnection,
        index: V,
        metric: Metric,
        limits: Limits,
        backend_name: &'static str,
        fanout: Option<Arc<dyn Fanout>>,
        keys: Arc<Keyring>,
    ) -> Self {
        let jobs = Arc::new(SqlJobQueue {
            db: db.clone(),
            limits: limits.clone(),
        });
        Self {
            db,
            index,
            metric,
            limits,
            backend_name,
            fanout,
            jobs,
            keys,
            key_registered: Default::default(),
            memory_keys_for_new_users: false,
            embedding_model_for_new_users: std::sync::RwLock::new(None),
        }
    }
}

/// Timestamps are kept to the microsecond, the precision of Postgres, so that both backends
/// give back exactly what was written.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// `t` rounded up to the microsecond, for a bound a stored time is compared with by `>=` or
/// `<`: the same rows match as with `t` itself (stored times are whole microseconds), where
/// Postgres would cut a finer bound down (a `since` of .0000005 s letting in a row of
/// .000000 s that the in-process checks leave out).
pub(crate) fn ceil_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let cut = t.trunc_subsecs(6);
    if cut == t {
        t
    } else {
        cut + chrono::Duration::microseconds(1)
    }
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
        summarized_through: m.summarized_through,
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

/// Starts a transaction that will write. On SQLite it takes the write lock at once
/// (`BEGIN IMMEDIATE`): a deferred transaction that reads first could not upgrade once another
/// writer had committed, and would fail instead of waiting.
async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction> {
    Ok(db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        })
        .await?)
}

/// Writes one row of the audit log (inside the caller's transaction).
async fn audit<C: ConnectionTrait>(
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

/// The order of a keyset-paginated listing: by (time, id) or by id alone, either way.
struct Keyset<C> {
    /// The time column, when the listing is by time first.
    time: Option<C>,
    /// The id column (ties broken by it).
    id: C,
    /// Newest (largest) first.
    descending: bool,
}

/// One page of a listing after `after`: `first` rows at most in the keyset's order, each with
/// its cursor (made by `key_of`), and the cursor of the next page when there is one.
async fn keyset_page<E, C>(
    db: &C,
    query: sea_orm::Select<E>,
    first: usize,
    after: Option<ListCursor>,
    keyset: Keyset<E::Column>,
    key_of: impl Fn(&E::Model) -> ListCursor,
) -> Result<Page<E::Model>>
where
    E: EntityTrait,
    C: ConnectionTrait,
{
    let past = |col: E::Column, v: DbValue| {
        if keyset.descending {
            col.lt(v)
        } else {
            col.gt(v)
        }
    };
    let mut q = query;
    if let Some(c) = after {
        q = q.filter(match keyset.time {
            Some(time) => {
                let t = from_micros(c.t)?;
                Condition::any().add(past(time, t.into())).add(
                    Condition::all()
                        .add(time.eq(t))
                        .add(past(keyset.id, c.i.into())),
                )
            }
            None => Condition::all().add(past(keyset.id, c.i.into())),
        });
    }
    let order = if keyset.descending {
        sea_orm::Order::Desc
    } else {
        sea_orm::Order::Asc
    };
    if let Some(time) = keyset.time {
        q = q.order_by(time, order.clone());
    }
    let rows = q
        .order_by(keyset.id, order)
        .limit(first as u64 + 1)
        .all(db)
        .await?;
    Ok(page_of(rows, first, |m| cursor::encode(&key_of(m))))
}

fn internal(msg: impl Into<String>) -> Error {
    Error::Internal(msg.into())
}

impl<V: VectorIndex> SqlStore<V> {
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
        let model = self
            .embedding_model_for_new_users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        user::Entity::insert(user::ActiveModel {
            id: NotSet,
            external_id: Set(user.to_owned()),
            revision: Set(0),
            created_at: Set(now()),
            embedding_model: Set(model),
            memory_keys: Set(self.memory_keys_for_new_users),
            memory_keys_through: Set(None),
            memory_sessions_through: Set(None),
            memory_context_through: Set(None),
            memory_context_epoch: Set(0),
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
            summarized_through: Set(None),
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
                .filter(owned(session::Column::UserId, user_id))
                .filter(session::Column::Id.is_in(chunk.iter().copied()))
                .all(db)
                .await?;
            names.extend(rows.into_iter().map(|s| (s.id, s.external_id)));
        }
        Ok(names)
    }

    fn memory_to_api(&self, m: memory::Model, sessions: &HashMap<i64, String>) -> Result<Memory> {
        let m = open_memory(&self.keys, m)?;
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
            expires_at: m.expires_at,
            supersedes: m.supersedes,
            superseded_by: m.superseded_by,
            superseded_at: m.superseded_at,
            key_for: m.key_for,
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
            .filter(owned(memory::Column::UserId, user_id))
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

    /// The metadata the filter's conditions test on each key among `rows` (opened rows of a
    /// search): a key carries none of its memory's metadata, so where it stands in for its
    /// memory (a search that admits kinds other than keys) it is held to its memory's. Keys
    /// absent from the answer (a search of keys alone, or one whose memory is gone) are held
    /// to their own.
    async fn stand_in_metadata(
        &self,
        user_id: i64,
        filter: &ResolvedFilter,
        rows: &HashMap<i64, Memory>,
    ) -> Result<HashMap<i64, Value>> {
        let stands_in =
            filter.kinds.is_empty() || filter.kinds.iter().any(|k| *k != MemoryKind::Key);
        if filter.metadata.is_empty() || !stands_in {
            return Ok(HashMap::new());
        }
        let keys: Vec<(i64, i64)> = rows
            .values()
            .filter(|m| m.kind == MemoryKind::Key)
            .filter_map(|m| Some((m.id, m.key_for?)))
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let targets = self
            .memories_by_id(user_id, keys.iter().map(|&(_, t)| t))
            .await?;
        Ok(keys
            .into_iter()
            .filter_map(|(k, t)| Some((k, targets.get(&t)?.metadata.clone())))
            .collect())
    }

    fn message_to_api(&self, m: message::Model, session: &str) -> Result<Message> {
        let m = open_message(&self.keys, m)?;
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
            as_of: filter.as_of,
            now: now(),
            include_superseded: filter.include_superseded,
            metadata: filter.metadata.clone(),
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
            cond = cond.add(memory::Column::CreatedAt.gte(ceil_micros(t)));
        }
        if let Some(t) = f.until {
            cond = cond.add(memory::Column::CreatedAt.lt(ceil_micros(t)));
        }
        if !f.tags.is_empty() {
            cond = cond.add(tags_condition(
                self.db.get_database_backend(),
                "memories",
                &f.tags,
            ));
        }
        let at = f.as_of.unwrap_or(f.now);
        if let Some(t) = f.as_of {
            cond = cond.add(memory::Column::CreatedAt.lte(t));
        }
        if !f.include_superseded {
            cond = cond.add(match f.as_of {
                None => Condition::all().add(memory::Column::SupersededAt.is_null()),
                Some(t) => Condition::any()
                    .add(memory::Column::SupersededAt.is_null())
                    .add(memory::Column::SupersededAt.gt(t)),
            });
        }
        cond.add(
            Condition::any()
                .add(memory::Column::ExpiresAt.is_null())
                .add(memory::Column::ExpiresAt.gt(at)),
        )
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
        let replaced = self.check_supersedes(txn, user_id, &rows).await?;
        self.check_key_targets(txn, user_id, &rows).await?;
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
                        expires_at: m.expires_at,
                        superseded_at: None,
                        content: new.content.clone(),
                        model: new.embedding.model.clone(),
                        vector: new.embedding.vector.clone(),
                    });
                }
            }
            stored.extend(inserted);
        }
        // Each replaced memory is no longer current from the time of the one that replaced
        // it (never before it was itself written).
        for m in &stored {
            let Some(old) = m.supersedes else { continue };
            let at = m.created_at.max(replaced[&old]);
            memory::Entity::update_many()
                .col_expr(memory::Column::SupersededBy, Expr::value(m.id))
                .col_expr(memory::Column::SupersededAt, Expr::value(at))
                .col_expr(memory::Column::UpdatedAt, Expr::value(now()))
                .filter(memory::Column::UserId.eq(user_id))
                .filter(memory::Column::Id.eq(old))
                .exec(txn)
                .await?;
            delta.superseded.push((old, Some(at)));
        }
        Ok(stored)
    }

    /// The memories that `rows` supersede must be the user's, current, and named once: their
    /// creation times by id.
    async fn check_supersedes(
        &self,
        txn: &DatabaseTransaction,
        user_id: i64,
        rows: &[(memory::ActiveModel, &NewMemory)],
    ) -> Result<HashMap<i64, DateTime<Utc>>> {
        let ids: Vec<i64> = rows.iter().filter_map(|(_, n)| n.supersedes).collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let unique: HashSet<i64> = ids.iter().copied().collect();
        if unique.len() != ids.len() {
            return Err(Error::invalid("two new memories supersede the same memory"));
        }
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(INSERT_CHUNK) {
            for m in memory::Entity::find()
                .filter(owned(memory::Column::UserId, user_id))
                .filter(memory::Column::Id.is_in(chunk.iter().copied()))
                .all(txn)
                .await?
            {
                if let Some(by) = m.superseded_by {
                    return Err(Error::invalid(format!(
                        "memory {} was already superseded by memory {by}: supersede that one",
                        m.id
                    )));
                }
                found.insert(m.id, m.created_at);
            }
        }
        match ids.iter().find(|id| !found.contains_key(id)) {
            Some(missing) => Err(Error::not_found("memory", missing.to_string())),
            None => Ok(found),
        }
    }

    /// A key ([`MemoryKind::Key`]) points at one of the user's memories that is not itself a
    /// key, and only a key points at a memory.
    async fn check_key_targets(
        &self,
        txn: &DatabaseTransaction,
        user_id: i64,
        rows: &[(memory::ActiveModel, &NewMemory)],
    ) -> Result<()> {
        let mut ids = Vec::new();
        for (_, n) in rows {
            match (n.kind, n.key_for) {
                (MemoryKind::Key, Some(id)) => ids.push(id),
                (MemoryKind::Key, None) => {
                    return Err(Error::invalid("a key must name the memory it is for"));
                }
                (_, Some(_)) => {
                    return Err(Error::invalid(
                        "only a memory of kind key points at another",
                    ));
                }
                (_, None) => {}
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let mut found = HashSet::with_capacity(ids.len());
        for chunk in ids.chunks(INSERT_CHUNK) {
            found.extend(
                memory::Entity::find()
                    .select_only()
                    .column(memory::Column::Id)
                    .filter(owned(memory::Column::UserId, user_id))
                    .filter(memory::Column::Id.is_in(chunk.iter().copied()))
                    .filter(memory::Column::Kind.ne(MemoryKind::Key.as_str()))
                    .into_tuple::<i64>()
                    .all(txn)
                    .await?,
            );
        }
        match ids.iter().find(|id| !found.contains(id)) {
            Some(missing) => Err(Error::not_found("memory", missing.to_string())),
            None => Ok(()),
        }
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
            // SQLite's placeholder is `?`: sea-query binds `?` in order and writes `$N` as
            // it stands (an unbound parameter, NULL, that no tag equals).
            let placeholders = vec!["?"; unique.len()];
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

impl<V: VectorIndex> SqlStore<V> {
    pub(crate) fn backend(&self) -> &'static str {
        self.backend_name
    }

    pub(crate) fn metric(&self) -> Metric {
        self.metric
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn fanout(&self) -> Option<Arc<dyn Fanout>> {
        self.fanout.clone()
    }

    pub(crate) fn jobs(&self) -> Arc<dyn JobQueue> {
        self.jobs.clone()
    }
}

/// Checks a page request and decodes its cursor.
fn page_start(limits: &Limits, page: &PageRequest) -> Result<Option<ListCursor>> {
    limits.check_page_size(page.first)?;
    page.after.as_deref().map(cursor::decode).transpose()
}

/// The message of an [`Error::InvalidInput`] without its "invalid input: " prefix.
fn strip(e: &Error) -> String {
    match e {
        Error::InvalidInput { message } => message.clone(),
        other => other.to_string(),
    }
}
