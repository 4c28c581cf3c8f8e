//! Messages: appended with the memories made from them, listed in order.
use sea_orm::PaginatorTrait;

use super::keys::{MEMORY_CONTENT, MEMORY_METADATA, MESSAGE_CONTENT, MESSAGE_METADATA};
use super::*;

impl<V: VectorIndex> SqlStore<V> {
    pub(crate) async fn append_messages(
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

        self.register_key().await?;
        let txn = begin_write(&self.db).await?;
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
            let models = chunk
                .iter()
                .map(|w| {
                    Ok(message::ActiveModel {
                        id: NotSet,
                        user_id: Set(u.id),
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
        let mut delta = Delta::default();
        let memories = self.insert_memories(&txn, u.id, rows, &mut delta).await?;
        session::Entity::update_many()
            .col_expr(session::Column::UpdatedAt, Expr::value(t))
            .filter(owned(session::Column::UserId, u.id))
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
