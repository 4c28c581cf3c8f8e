//! Backup and restore of whole users, row for row (see [`crate::backup`] for the file).
use sea_orm::{AccessMode, IsolationLevel};

use super::keys::{
    DEEP_MEMORY_QUESTION, MEMORY_CONTENT, MEMORY_METADATA, MESSAGE_CONTENT, MESSAGE_METADATA,
    SUMMARY_CONTENT,
};
use super::*;
use crate::backup::{
    AdapterRow, AuditRow, BackupSink, BackupSource, CHUNK_ROWS, EmbeddingRow as BackupEmbedding,
    FORMAT, Header, MemoryRow, MessageRow, ModelDims, PairRow, Record, RestoreOptions,
    RestoreReport, SessionRow, SummaryRow, Table, UserRow, VERSION, Verified,
};

/// Sends `rows` as records of at most [`CHUNK_ROWS`] rows.
fn chunked<T: Clone>(
    sink: &mut dyn BackupSink,
    rows: &[T],
    make: impl Fn(Vec<T>) -> Record,
) -> Result<()> {
    for chunk in rows.chunks(CHUNK_ROWS) {
        sink.write(&make(chunk.to_vec()))?;
    }
    Ok(())
}

/// An audit entry as a restore tells it apart: actor, action, time.
type AuditMark = (String, String, DateTime<Utc>);

/// The id offset of each table for one restore.
#[derive(Debug, Default)]
struct Offsets {
    sessions: i64,
    messages: i64,
    summaries: i64,
    memories: i64,
    audit: i64,
}

impl Offsets {
    fn opt(v: Option<i64>, by: i64) -> Option<i64> {
        v.map(|x| x + by)
    }
}

impl<V: VectorIndex> SqlStore<V> {
    /// Writes every user (or `only`) to `sink` from one snapshot of the database: a
    /// repeatable-read, read-only transaction on Postgres, a read transaction on SQLite (in
    /// WAL mode its first read fixes what it sees). Writers go on meanwhile.
    pub(crate) async fn backup(&self, only: Option<&str>, sink: &mut dyn BackupSink) -> Result<()> {
        let backend = self.db.get_database_backend();
        let txn = match backend {
            DbBackend::Postgres => {
                self.db
                    .begin_with_options(TransactionOptions {
                        isolation_level: Some(IsolationLevel::RepeatableRead),
                        access_mode: Some(AccessMode::ReadOnly),
                        ..TransactionOptions::default()
                    })
                    .await?
            }
            _ => self.db.begin().await?,
        };
        let schema = txn
            .query_one_raw(Statement::from_string(
                backend,
                "SELECT version FROM seaql_migrations ORDER BY version DESC LIMIT 1",
            ))
            .await?
            .map(|r| r.try_get_by_index::<String>(0))
            .transpose()?
            .unwrap_or_default();
        let users = match only {
            Some(u) => vec![
                self.find_user(&txn, u)
                    .await?
                    .ok_or_else(|| Error::not_found("user", u))?,
            ],
            None => {
                user::Entity::find()
                    .order_by_asc(user::Column::Id)
                    .all(&txn)
                    .await?
            }
        };
        let (models_sql, values) = match &users[..] {
            [u] if only.is_some() => (
                "SELECT DISTINCT model, dims FROM memory_embeddings WHERE user_id = $1 \
                 ORDER BY model, dims",
                vec![u.id.into()],
            ),
            _ => (
                "SELECT DISTINCT model, dims FROM memory_embeddings ORDER BY model, dims",
                vec![],
            ),
        };
        let models = txn
            .query_all_raw(stmt(backend, models_sql, values))
            .await?
            .into_iter()
            .map(|r| {
                Ok(ModelDims {
                    model: r.try_get_by_index(0)?,
                    dims: r.try_get_by_index::<i32>(1)? as usize,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        sink.write(&Record::Header(Header {
            format: FORMAT.into(),
            version: VERSION,
            schema,
            created_at: now(),
            backend: self.backend_name.into(),
            metric: self.metric.as_str().into(),
            models,
            user: only.map(str::to_owned),
            users: users.len() as u64,
        }))?;
        for u in users {
            self.backup_user(&txn, &u, sink).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    async fn backup_user(
        &self,
        txn: &DatabaseTransaction,
        u: &user::Model,
        sink: &mut dyn BackupSink,
    ) -> Result<()> {
        let name = u.external_id.clone();
        let settings = user_setting::Entity::find_by_id(u.id).one(txn).await?;
        sink.write(&Record::User(UserRow {
            id: name.clone(),
            created_at: u.created_at,
            settings_updated_at: settings.as_ref().map(|s| s.updated_at),
            settings: settings.map(|s| s.settings),
            memory_keys: u.memory_keys,
            embedding_model: u.embedding_model.clone(),
        }))?;
        let sessions: Vec<SessionRow> = session::Entity::find()
            .filter(session::Column::UserId.eq(u.id))
            .order_by_asc(session::Column::Id)
            .all(txn)
            .await?
            .into_iter()
            .map(|s| SessionRow {
                id: s.id,
                external_id: s.external_id,
                title: s.title,
                persona: s.persona,
                created_at: s.created_at,
                updated_at: s.updated_at,
                summarized_through: s.summarized_through,
            })
            .collect();
        chunked(sink, &sessions, |rows| Record::Sessions {
            user: name.clone(),
            rows,
        })?;
        let mut after = 0i64;
        loop {
            let rows: Vec<MessageRow> = message::Entity::find()
                .filter(message::Column::UserId.eq(u.id))
                .filter(message::Column::Id.gt(after))
                .order_by_asc(message::Column::Id)
                .limit(CHUNK_ROWS as u64)
                .all(txn)
                .await?
                .into_iter()
                .map(|m| {
                    let m = open_message(&self.keys, m)?;
                    Ok(MessageRow {
                        id: m.id,
                        session_id: m.session_id,
                        role: m.role,
                        content: m.content,
                        tags: m.tags,
                        metadata: m.metadata,
                        created_at: m.created_at,
                    })
                })
                .collect::<Result<_>>()?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            sink.write(&Record::Messages {
                user: name.clone(),
                rows,
            })?;
        }
        let summaries: Vec<SummaryRow> = summary::Entity::find()
            .filter(summary::Column::UserId.eq(u.id))
            .order_by_asc(summary::Column::Id)
            .all(txn)
            .await?
            .into_iter()
            .map(|s| {
                let s = open_summary(&self.keys, s)?;
                Ok(SummaryRow {
                    id: s.id,
                    session_id: s.session_id,
                    content: s.content,
                    first_message_id: s.first_message_id,
                    last_message_id: s.last_message_id,
                    model: s.model,
                    created_at: s.created_at,
                })
            })
            .collect::<Result<_>>()?;
        chunked(sink, &summaries, |rows| Record::Summaries {
            user: name.clone(),
            rows,
        })?;
        let mut after = 0i64;
        loop {
            let mut rows: Vec<MemoryRow> = memory::Entity::find()
                .filter(memory::Column::UserId.eq(u.id))
                .filter(memory::Column::Id.gt(after))
                .order_by_asc(memory::Column::Id)
                .limit(CHUNK_ROWS as u64)
                .all(txn)
                .await?
                .into_iter()
                .map(|m| {
                    let m = open_memory(&self.keys, m)?;
                    Ok(MemoryRow {
                        id: m.id,
                        session_id: m.session_id,
                        message_id: m.message_id,
                        summary_id: m.summary_id,
                        kind: m.kind,
                        role: m.role,
                        content: m.content,
                        tags: m.tags,
                        metadata: m.metadata,
                        importance: m.importance,
                        emotion: m.emotion,
                        created_at: m.created_at,
                        updated_at: m.updated_at,
                        expires_at: m.expires_at,
                        supersedes: m.supersedes,
                        superseded_by: m.superseded_by,
                        superseded_at: m.superseded_at,
                        key_for: m.key_for,
                    })
                })
                .collect::<Result<_>>()?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            // A link to a memory that is gone (a store whose expiry purge left one behind)
            // is left out: the file holds the user's own rows only.
            let targets: Vec<i64> = rows
                .iter()
                .flat_map(|r| [r.supersedes, r.superseded_by])
                .flatten()
                .collect();
            if !targets.is_empty() {
                let present: HashSet<i64> = memory::Entity::find()
                    .select_only()
                    .column(memory::Column::Id)
                    .filter(memory::Column::UserId.eq(u.id))
                    .filter(memory::Column::Id.is_in(targets))
                    .into_tuple::<i64>()
                    .all(txn)
                    .await?
                    .into_iter()
                    .collect();
                for r in &mut rows {
                    r.supersedes = r.supersedes.filter(|x| present.contains(x));
                    r.superseded_by = r.superseded_by.filter(|x| present.contains(x));
                }
            }
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            sink.write(&Record::Memories {
                user: name.clone(),
                rows,
            })?;
            // Each page of memories is followed by their embeddings: a user's vectors are
            // never all in memory at once (a million memories of MiniLM are 1.5 GB).
            let embeddings: Vec<BackupEmbedding> = self
                .index
                .embeddings_of(txn, u.id, true, Some(&ids))
                .await?
                .into_iter()
                .map(|(id, e)| {
                    let vector = e
                        .vector
                        .ok_or_else(|| internal("an embedding was read without its vector"))?;
                    Ok(BackupEmbedding::new(id, e.model, &vector))
                })
                .collect::<Result<_>>()?;
            chunked(sink, &embeddings, |rows| Record::Embeddings {
                user: name.clone(),
                rows,
            })?;
        }
        let audit: Vec<AuditRow> = audit_log::Entity::find()
            .filter(audit_log::Column::UserExternalId.eq(name.as_str()))
            .order_by_asc(audit_log::Column::Id)
            .all(txn)
            .await?
            .into_iter()
            .map(|a| AuditRow {
                id: a.id,
                actor: a.actor,
                action: a.action,
                detail: a.detail,
                created_at: a.created_at,
            })
            .collect();
        chunked(sink, &audit, |rows| Record::Audit {
            user: name.clone(),
            rows,
        })?;
        let pairs: Vec<PairRow> = self
            .pairs_of(txn, u.id)
            .await?
            .into_iter()
            .map(|p| PairRow {
                memory_id: p.memory_id,
                question: p.question,
                source: p.source,
                model: p.model,
                prompt_version: p.prompt_version,
                created_at: p.created_at,
            })
            .collect();
        chunked(sink, &pairs, |rows| Record::DeepMemoryPairs {
            user: name.clone(),
            rows,
        })?;
        if let Some(a) = Self::adapter_of(txn, u.id).await? {
            sink.write(&Record::DeepMemoryAdapter {
                user: name.clone(),
                row: AdapterRow::new(&a),
            })?;
        }
        Ok(())
    }

    /// Writes the verified backup `plan` read from `source`, in one transaction: all of it, or
    /// nothing. Users of the backup that exist in the store are replaced; their audit log is
    /// kept, with the backup's entries it lacks and a `restore` entry added; the rest of the
    /// store is left alone.
    pub(crate) async fn restore(
        &self,
        plan: &Verified,
        options: &RestoreOptions,
        source: &mut dyn BackupSource,
        actor: &Actor,
    ) -> Result<RestoreReport> {
        // Into a store that holds no vectors yet (a new server, a move from one store to the
        // other) the vector index is built once after the rows, not row by row.
        let bulk = self
            .count_all(
                &self.db,
                "SELECT count(*) FROM (SELECT 1 FROM memory_embeddings LIMIT 1) AS any_row",
            )
            .await?
            == 0;
        if !bulk {
            return self.restore_rows(plan, options, source, actor).await;
        }
        self.index.suspend().await?;
        let restored = self.restore_rows(plan, options, source, actor).await;
        // Built again whether or not the rows went in.
        let built = self.index.resume().await;
        let mut report = restored?;
        report.indexes_built = built?;
        Ok(report)
    }

    /// Why a restore must not go ahead, checked on `db`: a whole restore into a store that
    /// holds users without `force`, or a user deleted after the backup was taken.
    async fn refuse_restore<C: ConnectionTrait>(
        &self,
        db: &C,
        plan: &Verified,
        options: &RestoreOptions,
        selected: &[String],
    ) -> Result<()> {
        let held = self.count_all(db, "SELECT count(*) FROM users").await?;
        if held > 0 && options.user.is_none() && !options.force {
            return Err(Error::invalid(format!(
                "the store already holds {held} user(s): restore with --force (the backup's \
                 users replace the same users; others stay) or choose one user with --user"
            )));
        }
        if !options.include_deleted {
            let mut deleted = Vec::new();
            for name in selected {
                let since = audit_log::Entity::find()
                    .filter(audit_log::Column::UserExternalId.eq(name.as_str()))
                    .filter(audit_log::Column::Action.eq("delete_user"))
                    .filter(audit_log::Column::CreatedAt.gt(plan.header.created_at))
                    .one(db)
                    .await?;
                if since.is_some() {
                    deleted.push(name.as_str());
                }
            }
            if !deleted.is_empty() {
                return Err(Error::invalid(format!(
                    "the data of {} was deleted after this backup was taken: it stays deleted \
                     (restore with --include-deleted to bring it back, or leave them out with \
                     --user)",
                    deleted.join(", ")
                )));
            }
        }
        Ok(())
    }

    async fn restore_rows(
        &self,
        plan: &Verified,
        options: &RestoreOptions,
        source: &mut dyn BackupSource,
        actor: &Actor,
    ) -> Result<RestoreReport> {
        let selected: Vec<String> = match &options.user {
            Some(u) if plan.has_user(u) => vec![u.clone()],
            Some(u) => return Err(Error::not_found("user in the backup", u.clone())),
            None => plan.users.clone(),
        };
        // Before the transaction: a replaced user's rows are deleted in it, and Postgres's
        // index creation would wait for it while it waits for the index (a deadlock).
        for m in &plan.header.models {
            self.index.prepare(m.dims).await?;
        }
        // A restore refused writes nothing, the key registry included (a key registered
        // for a restore that never happened would be required at every start after).
        self.refuse_restore(&self.db, plan, options, &selected)
            .await?;
        self.register_key().await?;
        let txn = begin_write(&self.db).await?;
        let backend = txn.get_database_backend();
        self.refuse_restore(&txn, plan, options, &selected).await?;
        let mut report = RestoreReport::default();
        let mut reset = Vec::new();
        // The audit log is the record of what was done to a user's data, deletions included:
        // it is kept, and the backup's entries join it below.
        let mut audited: HashMap<&str, HashSet<AuditMark>> = HashMap::new();
        for name in &selected {
            if let Some(u) = self.find_user(&txn, name).await? {
                user::Entity::delete_by_id(u.id).exec(&txn).await?;
                reset.push(u.id);
                report.replaced += 1;
            }
            let kept = audit_log::Entity::find()
                .filter(audit_log::Column::UserExternalId.eq(name.as_str()))
                .all(&txn)
                .await?;
            audited.insert(
                name.as_str(),
                kept.into_iter()
                    .map(|a| (a.actor, a.action, a.created_at))
                    .collect(),
            );
        }
        // Ids keep their values unless other rows of the store sit in the backup's ranges.
        let mut off = Offsets::default();
        for (table, (lo, hi)) in &plan.id_ranges {
            let t = table.name();
            let clash = txn
                .query_one_raw(stmt(
                    backend,
                    &format!("SELECT count(*) FROM {t} WHERE id BETWEEN $1 AND $2"),
                    vec![(*lo).into(), (*hi).into()],
                ))
                .await?
                .map(|r| r.try_get_by_index::<i64>(0))
                .transpose()?
                .unwrap_or(0);
            if clash == 0 {
                continue;
            }
            let max = self
                .count_all(&txn, &format!("SELECT COALESCE(max(id), 0) FROM {t}"))
                .await? as i64;
            let by = max - lo + 1;
            report.ids_shifted = true;
            match table {
                Table::Sessions => off.sessions = by,
                Table::Messages => off.messages = by,
                Table::Summaries => off.summaries = by,
                Table::Memories => off.memories = by,
                Table::Audit => off.audit = by,
            }
        }
        let mut current: Option<(String, i64)> = None;
        while let Some(record) = source.next_record()? {
            let uid = match (&record, &current) {
                (Record::Header(_) | Record::End { .. }, _) | (Record::User(_), _) => 0,
                (_, Some((_, id))) => *id,
                (_, None) => return Err(internal("backup rows before any user")),
            };
            match record {
                Record::Header(_) | Record::End { .. } => {}
                Record::User(u) => {
                    if !selected.contains(&u.id) {
                        current = None;
                        continue;
                    }
                    user::Entity::insert(user::ActiveModel {
                        id: NotSet,
                        external_id: Set(u.id.clone()),
                        revision: Set(1),
                        created_at: Set(u.created_at),
                        embedding_model: Set(u.embedding_model.clone()),
                        memory_keys: Set(u.memory_keys),
                        // Restored keys keep their ids' order; the job reads everything again
                        // and skips memories that have keys.
                        memory_keys_through: Set(None),
                        memory_sessions_through: Set(None),
                        memory_context_through: Set(None),
                        memory_context_epoch: Set(0),
                    })
                    .exec_without_returning(&txn)
                    .await?;
                    let row = self
                        .find_user(&txn, &u.id)
                        .await?
                        .ok_or_else(|| internal("user vanished after insert"))?;
                    if let Some(settings) = u.settings {
                        user_setting::Entity::insert(user_setting::ActiveModel {
                            user_id: Set(row.id),
                            settings: Set(settings),
                            updated_at: Set(u.settings_updated_at.unwrap_or(u.created_at)),
                        })
                        .exec_without_returning(&txn)
                        .await?;
                    }
                    report.users += 1;
                    current = Some((u.id, row.id));
                }
                Record::Sessions { rows, .. } => {
                    session::Entity::insert_many(rows.into_iter().map(|s| session::ActiveModel {
                        id: Set(s.id + off.sessions),
                        user_id: Set(uid),
                        external_id: Set(s.external_id),
                        title: Set(s.title),
                        persona: Set(s.persona),
                        created_at: Set(s.created_at),
                        updated_at: Set(s.updated_at),
                        summarized_through: Set(Offsets::opt(s.summarized_through, off.messages)),
                    }))
                    .exec_without_returning(&txn)
                    .await?;
                }
                Record::Messages { rows, .. } => {
                    report.messages += rows.len() as u64;
                    for chunk in rows.chunks(INSERT_CHUNK) {
                        let models = chunk
                            .iter()
                            .cloned()
                            .map(|m| {
                                Ok(message::ActiveModel {
                                    id: Set(m.id + off.messages),
                                    user_id: Set(uid),
                                    session_id: Set(m.session_id + off.sessions),
                                    role: Set(m.role),
                                    content: Set(self.seal(MESSAGE_CONTENT, &m.content)?),
                                    tags: Set(m.tags),
                                    metadata: Set(self.seal_json(MESSAGE_METADATA, &m.metadata)?),
                                    created_at: Set(m.created_at),
                                    key_id: Set(self.key_id()),
                                })
                            })
                            .collect::<Result<Vec<_>>>()?;
                        message::Entity::insert_many(models)
                            .exec_without_returning(&txn)
                            .await?;
                    }
                }
                Record::Summaries { rows, .. } => {
                    for chunk in rows.chunks(INSERT_CHUNK) {
                        let models = chunk
                            .iter()
                            .cloned()
                            .map(|s| {
                                Ok(summary::ActiveModel {
                                    id: Set(s.id + off.summaries),
                                    user_id: Set(uid),
                                    session_id: Set(s.session_id + off.sessions),
                                    content: Set(self.seal(SUMMARY_CONTENT, &s.content)?),
                                    first_message_id: Set(Offsets::opt(
                                        s.first_message_id,
                                        off.messages,
                                    )),
                                    last_message_id: Set(Offsets::opt(
                                        s.last_message_id,
                                        off.messages,
                                    )),
                                    model: Set(s.model),
                                    created_at: Set(s.created_at),
                                    key_id: Set(self.key_id()),
                                })
                            })
                            .collect::<Result<Vec<_>>>()?;
                        summary::Entity::insert_many(models)
                            .exec_without_returning(&txn)
                            .await?;
                    }
                }
                Record::Memories { rows, .. } => {
                    report.memories += rows.len() as u64;
                    for chunk in rows.chunks(INSERT_CHUNK) {
                        let models = chunk
                            .iter()
                            .cloned()
                            .map(|m| {
                                Ok(memory::ActiveModel {
                                    id: Set(m.id + off.memories),
                                    user_id: Set(uid),
                                    session_id: Set(Offsets::opt(m.session_id, off.sessions)),
                                    message_id: Set(Offsets::opt(m.message_id, off.messages)),
                                    summary_id: Set(Offsets::opt(m.summary_id, off.summaries)),
                                    kind: Set(m.kind),
                                    role: Set(m.role),
                                    content: Set(self.seal(MEMORY_CONTENT, &m.content)?),
                                    tags: Set(m.tags),
                                    metadata: Set(self.seal_json(MEMORY_METADATA, &m.metadata)?),
                                    importance: Set(m.importance),
                                    emotion: Set(m.emotion),
                                    created_at: Set(m.created_at),
                                    updated_at: Set(m.updated_at),
                                    key_id: Set(self.key_id()),
                                    expires_at: Set(m.expires_at),
                                    supersedes: Set(Offsets::opt(m.supersedes, off.memories)),
                                    superseded_by: Set(Offsets::opt(m.superseded_by, off.memories)),
                                    superseded_at: Set(m.superseded_at),
                                    key_for: Set(Offsets::opt(m.key_for, off.memories)),
                                })
                            })
                            .collect::<Result<Vec<_>>>()?;
                        memory::Entity::insert_many(models)
                            .exec_without_returning(&txn)
                            .await?;
                    }
                }
                Record::Embeddings { rows, .. } => {
                    report.embeddings += rows.len() as u64;
                    let vectors = rows
                        .iter()
                        .map(BackupEmbedding::decode)
                        .collect::<Result<Vec<_>>>()?;
                    let t = now();
                    let write: Vec<EmbeddingRow<'_>> = rows
                        .iter()
                        .zip(&vectors)
                        .map(|(r, v)| EmbeddingRow {
                            memory_id: r.memory_id + off.memories,
                            user_id: uid,
                            model: &r.model,
                            vector: v,
                            created_at: t,
                        })
                        .collect();
                    self.index.insert(&txn, &write).await?;
                }
                Record::DeepMemoryPairs { rows, .. } => {
                    for p in rows {
                        txn.execute_raw(stmt(
                            backend,
                            "INSERT INTO deep_memory_pairs (user_id, memory_id, content, key_id, \
                             source, model, prompt_version, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                            vec![
                                uid.into(),
                                (p.memory_id + off.memories).into(),
                                self.seal(DEEP_MEMORY_QUESTION, &p.question)?.into(),
                                self.key_id().into(),
                                p.source.as_str().into(),
                                p.model.into(),
                                p.prompt_version.map(|v| v as i32).into(),
                                p.created_at.into(),
                            ],
                        ))
                        .await?;
                    }
                }
                Record::DeepMemoryAdapter { row, .. } => {
                    Self::insert_adapter(&txn, uid, &row.decode()?).await?;
                }
                Record::Audit { user, rows } => {
                    // Entries the store still holds (a user restored in place) are not doubled.
                    let kept = audited.get(user.as_str());
                    let rows: Vec<AuditRow> = rows
                        .iter()
                        .filter(|a| {
                            !kept.is_some_and(|k| {
                                k.contains(&(a.actor.clone(), a.action.clone(), a.created_at))
                            })
                        })
                        .cloned()
                        .collect();
                    for chunk in rows.chunks(INSERT_CHUNK) {
                        audit_log::Entity::insert_many(chunk.iter().cloned().map(|a| {
                            audit_log::ActiveModel {
                                id: Set(a.id + off.audit),
                                user_external_id: Set(user.clone()),
                                actor: Set(a.actor),
                                action: Set(a.action),
                                detail: Set(a.detail),
                                created_at: Set(a.created_at),
                            }
                        }))
                        .exec_without_returning(&txn)
                        .await?;
                    }
                }
            }
        }
        if backend == DbBackend::Postgres {
            // Rows came with their ids: move each sequence past them, never back (ids of
            // rows a restore replaced, or handed to a writer still at work, are not given
            // out again).
            for t in [
                "users",
                "sessions",
                "messages",
                "summaries",
                "memories",
                "audit_log",
            ] {
                txn.execute_raw(Statement::from_string(
                    backend,
                    format!(
                        "SELECT setval(pg_get_serial_sequence('{t}', 'id'), \
                         GREATEST((SELECT max(id) FROM {t}), \
                         pg_sequence_last_value(pg_get_serial_sequence('{t}', 'id')::regclass), \
                         1))"
                    ),
                ))
                .await?;
            }
        }
        for name in &selected {
            audit(
                &txn,
                name,
                actor,
                "restore",
                serde_json::json!({
                    "backup_created_at": plan.header.created_at,
                    "backup_sha256": plan.sha256,
                    "ids_shifted": report.ids_shifted,
                }),
            )
            .await?;
        }
        txn.commit().await?;
        for id in reset {
            self.index.committed(id, i64::MAX, Delta::reset());
        }
        Ok(report)
    }

    async fn count_all<C: ConnectionTrait>(&self, db: &C, sql: &str) -> Result<u64> {
        let row = db
            .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
            .await?
            .ok_or_else(|| internal("count returned no row"))?;
        Ok(row.try_get_by_index::<i64>(0)? as u64)
    }
}
