//! Messages: appended with the memories made from them, listed in order.
use futures::StreamExt;
use futures::stream::BoxStream;
use sea_orm::PaginatorTrait;

use super::keys::{MEMORY_CONTENT, MEMORY_METADATA, MESSAGE_CONTENT, MESSAGE_METADATA};
use super::*;

impl<V: VectorIndex> SqlStore<V> {
    pub(crate) async fn append_messages(
        &self,
        user: &str,
        writes: Vec<MessageWrite>,
    ) -> Result<Vec<AppendedMessage>> {
        self.check_writes(user, &writes)?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut open = self.begin_append(user).await?;
        self.append_batch(&mut open, writes).await?;
        self.commit_append(open).await
    }

    /// [`SqlStore::append_messages`] of writes that arrive in batches, all in one transaction
    /// (an error from the stream rolls back what came before it). On Postgres each batch is
    /// written as it arrives, while the next one is still being made (ingest's pipeline: a
    /// batch's rows go in while the next is embedded); SQLite has one writer at a time, so
    /// there the batches are gathered and written at the end rather than holding its write
    /// lock while they are made.
    pub(crate) async fn append_message_stream(
        &self,
        user: &str,
        mut batches: BoxStream<'_, Result<Vec<MessageWrite>>>,
    ) -> Result<Vec<AppendedMessage>> {
        self.limits.check_user_id(user)?;
        if self.db.get_database_backend() == DbBackend::Sqlite {
            let mut all = Vec::new();
            while let Some(batch) = batches.next().await {
                all.extend(batch?);
            }
            return self.append_messages(user, all).await;
        }
        let mut open = None;
        let mut seen = 0usize;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            // Message numbers in errors count from the first message of the call.
            self.check_writes(user, &batch).map_err(|e| match e {
                Error::InvalidInput { message } => Error::invalid(renumber(&message, seen)),
                e => e,
            })?;
            seen += batch.len();
            if batch.is_empty() {
                continue;
            }
            let txn = match &mut open {
                Some(txn) => txn,
                None => open.insert(self.begin_append(user).await?),
            };
            self.append_batch(txn, batch).await?;
        }
        match open {
            Some(open) => self.commit_append(open).await,
            None => Ok(Vec::new()),
        }
    }

    /// Every write within the limits (messages numbered from 1 in errors).
    fn check_writes(&self, user: &str, writes: &[MessageWrite]) -> Result<()> {
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
        Ok(())
    }

    /// Opens the transaction of an append: the user's row, created if needed.
    async fn begin_append(&self, user: &str) -> Result<OpenAppend> {
        self.register_key().await?;
        let txn = begin_write(&self.db).await?;
        let user = self.ensure_user(&txn, user).await?;
        Ok(OpenAppend {
            txn,
            user,
            at: now(),
            sessions: HashMap::new(),
            delta: Delta::default(),
            out: Vec::new(),
        })
    }

    /// Writes one batch of messages with their memories inside an open append.
    async fn append_batch(&self, open: &mut OpenAppend, writes: Vec<MessageWrite>) -> Result<()> {
        let (txn, uid, t) = (&open.txn, open.user.id, open.at);
        for answered in writes.iter().filter_map(|w| w.answers) {
            let exists = message::Entity::find_by_id(answered)
                .filter(message::Column::UserId.eq(uid))
                .one(txn)
                .await?
                .is_some();
            if !exists {
                return Err(Error::not_found("message", answered.to_string()));
            }
        }
        for w in &writes {
            if !open.sessions.contains_key(&w.message.session) {
                let s = self.ensure_session(txn, uid, &w.message.session).await?;
                open.sessions.insert(w.message.session.clone(), s.id);
            }
        }
        let sessions = &open.sessions;
        let mut messages = Vec::with_capacity(writes.len());
        for chunk in writes.chunks(INSERT_CHUNK) {
            let models = chunk
                .iter()
                .map(|w| {
                    Ok(message::ActiveModel {
                        id: NotSet,
                        user_id: Set(uid),
                        session_id: Set(sessions[&w.message.session]),
                        role: Set(w.message.role.as_str().to_owned()),
                        content: Set(self.seal(MESSAGE_CONTENT, &w.message.content)?),
                        tags: Set(tags_json(&w.message.tags)),
                        metadata: Set(self.seal_json(MESSAGE_METADATA, &w.message.metadata)?),
                        created_at: Set(w.message.created_at.map_or(t, |c| c.trunc_subsecs(6))),
                        key_id: Set(self.key_id()),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut inserted = message::Entity::insert_many(models)
                .exec_with_returning(txn)
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
                        user_id: Set(uid),
                        session_id: Set(Some(m.session_id)),
                        message_id: Set(Some(m.id)),
                        summary_id: Set(None),
                        kind: Set(new.kind.as_str().to_owned()),
                        role: Set(Some(new.role.unwrap_or(w.message.role).as_str().to_owned())),
                        content: Set(self.seal(MEMORY_CONTENT, &new.content)?),
                        tags: Set(tags_json(tags)),
                        metadata: Set(self.seal_json(MEMORY_METADATA, &new.metadata)?),
                        importance: Set(new.importance.unwrap_or(0.5)),
                        emotion: Set(new.emotion.clone()),
                        created_at: Set(new
                            .created_at
                            .map_or(m.created_at, |c| c.trunc_subsecs(6))),
                        updated_at: Set(t),
                        key_id: Set(self.key_id()),
                        expires_at: Set(new.expires_at.map(|e| e.trunc_subsecs(6))),
                        supersedes: Set(new.supersedes),
                        superseded_by: Set(None),
                        key_for: Set(None),
                        superseded_at: Set(None),
                    },
                    new,
                ));
                owners.push(m.id);
            }
        }
        let memories = self
            .insert_memories(txn, uid, rows, &mut open.delta)
            .await?;
        let mut by_message: HashMap<i64, Vec<i64>> = HashMap::new();
        for (owner, m) in owners.iter().zip(&memories) {
            by_message.entry(*owner).or_default().push(m.id);
        }
        for (m, w) in messages.into_iter().zip(&writes) {
            let memory_ids = by_message.remove(&m.id).unwrap_or_default();
            open.out.push(AppendedMessage {
                message: self.message_to_api(m, &w.message.session)?,
                memory_ids,
            });
        }
        Ok(())
    }

    /// Ends an append: the sessions' times and the user's revision, committed; what it wrote.
    async fn commit_append(&self, open: OpenAppend) -> Result<Vec<AppendedMessage>> {
        let OpenAppend {
            txn,
            user,
            at,
            sessions,
            delta,
            out,
        } = open;
        session::Entity::update_many()
            .col_expr(session::Column::UpdatedAt, Expr::value(at))
            .filter(owned(session::Column::UserId, user.id))
            .filter(session::Column::Id.is_in(sessions.values().copied()))
            .exec(&txn)
            .await?;
        let revision = self.bump_revision(&txn, user.id).await?;
        txn.commit().await?;
        self.index.committed(user.id, revision, delta);
        Ok(out)
    }

    pub(crate) async fn list_messages(
        &self,
        user: &str,
        session: &str,
        page: &PageRequest,
    ) -> Result<Page<Message>> {
        let after = page_start(&self.limits, page)?;
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(Page::empty());
        };
        let Some(s) = self.find_session(&self.db, u.id, session).await? else {
            return Ok(Page::empty());
        };
        let keyset = Keyset {
            time: Some(message::Column::CreatedAt),
            id: message::Column::Id,
            descending: false,
        };
        let q = message::Entity::find()
            .filter(message::Column::UserId.eq(u.id))
            .filter(message::Column::SessionId.eq(s.id));
        keyset_page(&self.db, q, page.first, after, keyset, |m| ListCursor {
            t: micros(m.created_at),
            i: m.id,
        })
        .await?
        .try_map(|m| self.message_to_api(m, session))
    }

    pub(crate) async fn messages_after(
        &self,
        user: &str,
        session: &str,
        after_id: i64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<Message>> {
        self.limits.check_page_size(limit)?;
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(Vec::new());
        };
        let Some(s) = self.find_session(&self.db, u.id, session).await? else {
            return Ok(Vec::new());
        };
        let q = message::Entity::find()
            .filter(message::Column::UserId.eq(u.id))
            .filter(message::Column::SessionId.eq(s.id))
            .filter(message::Column::Id.gt(after_id));
        let q = if newest {
            q.order_by_desc(message::Column::Id)
        } else {
            q.order_by_asc(message::Column::Id)
        };
        let mut rows = q.limit(limit as u64).all(&self.db).await?;
        if newest {
            rows.reverse();
        }
        rows.into_iter()
            .map(|m| self.message_to_api(m, session))
            .collect()
    }

    pub(crate) async fn count_messages_after(
        &self,
        user: &str,
        session: &str,
        after_id: i64,
    ) -> Result<u64> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(0);
        };
        let Some(s) = self.find_session(&self.db, u.id, session).await? else {
            return Ok(0);
        };
        Ok(message::Entity::find()
            .filter(message::Column::UserId.eq(u.id))
            .filter(message::Column::SessionId.eq(s.id))
            .filter(message::Column::Id.gt(after_id))
            .count(&self.db)
            .await?)
    }
}

/// An append in progress: its transaction and what it has written so far.
struct OpenAppend {
    txn: DatabaseTransaction,
    user: user::Model,
    /// The time of the append (messages without their own, and sessions' update).
    at: DateTime<Utc>,
    /// Session ids by name.
    sessions: HashMap<String, i64>,
    delta: Delta,
    out: Vec<AppendedMessage>,
}

/// "message N: …" of a batch, renumbered to count from the call's first message (`before`
/// messages came in earlier batches).
fn renumber(error: &str, before: usize) -> String {
    let Some(rest) = error.strip_prefix("message ") else {
        return error.to_owned();
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    match rest[..digits].parse::<usize>() {
        Ok(n) => format!("message {}{}", n + before, &rest[digits..]),
        Err(_) => error.to_owned(),
    }
}
