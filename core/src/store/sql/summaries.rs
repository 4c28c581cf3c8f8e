//! Rolling summaries of sessions.
use super::keys::{MEMORY_CONTENT, MEMORY_METADATA, SUMMARY_CONTENT};
use super::*;

impl<V: VectorIndex> SqlStore<V> {
    pub(crate) async fn add_summary(&self, user: &str, new: NewSummary) -> Result<Option<Summary>> {
        self.limits.check_content(&new.content)?;
        check_embedding(&new.embedding.model, &new.embedding.vector)?;
        self.register_key().await?;
        let txn = begin_write(&self.db).await?;
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
        // Compare and set: the summary moves the session's watermark from where its writer
        // read it; a writer that lost the race writes nothing.
        if let Some(last) = new.last_message_id {
            if last <= new.expected_through.unwrap_or(0) {
                return Err(Error::invalid(
                    "a summary must reach past the session's summarized_through",
                ));
            }
            let moved = txn
                .execute_raw(stmt(
                    txn.get_database_backend(),
                    "UPDATE sessions SET summarized_through = $1 \
                     WHERE id = $2 AND COALESCE(summarized_through, 0) = $3",
                    vec![
                        last.into(),
                        s.id.into(),
                        new.expected_through.unwrap_or(0).into(),
                    ],
                ))
                .await?
                .rows_affected();
            if moved == 0 {
                txn.rollback().await?;
                return Ok(None);
            }
        }
        let t = now();
        let stored = summary::Entity::insert(summary::ActiveModel {
            id: NotSet,
            user_id: Set(u.id),
            session_id: Set(s.id),
            content: Set(self.seal(SUMMARY_CONTENT, &new.content)?),
            first_message_id: Set(new.first_message_id),
            last_message_id: Set(new.last_message_id),
            model: Set(new.model.clone()),
            created_at: Set(t),
            key_id: Set(self.key_id()),
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
            content: Set(self.seal(MEMORY_CONTENT, &new.content)?),
            tags: Set(tags_json(&[])),
            metadata: Set(self.seal_json(MEMORY_METADATA, &Value::Null)?),
            importance: Set(0.5),
            emotion: Set(None),
            created_at: Set(t),
            updated_at: Set(t),
            key_id: Set(self.key_id()),
            expires_at: Set(None),
            supersedes: Set(None),
            superseded_by: Set(None),
            key_for: Set(None),
            superseded_at: Set(None),
        };
        let mut delta = Delta::default();
        self.insert_memories(&txn, u.id, vec![(row, &memory)], &mut delta)
            .await?;
        let revision = self.bump_revision(&txn, u.id).await?;
        txn.commit().await?;
        self.index.committed(u.id, revision, delta);
        Ok(Some(Summary {
            id: stored.id,
            session: new.session,
            content: new.content,
            first_message_id: stored.first_message_id,
            last_message_id: stored.last_message_id,
            model: stored.model,
            created_at: stored.created_at,
        }))
    }

    pub(crate) async fn list_summaries(&self, user: &str, session: &str) -> Result<Vec<Summary>> {
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
        rows.into_iter()
            .map(|m| {
                let m = open_summary(&self.keys, m)?;
                Ok(Summary {
                    id: m.id,
                    session: session.to_owned(),
                    content: m.content,
                    first_message_id: m.first_message_id,
                    last_message_id: m.last_message_id,
                    model: m.model,
                    created_at: m.created_at,
                })
            })
            .collect()
    }
}
