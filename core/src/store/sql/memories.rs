//! Free-standing memories: add, read, change, delete, list.
use super::keys::{MEMORY_CONTENT, MEMORY_METADATA};
use super::*;

impl<V: VectorIndex> SqlStore<V> {
    pub(crate) async fn add_memories(
        &self,
        user: &str,
        memories: Vec<NewMemory>,
    ) -> Result<Vec<Memory>> {
        self.limits.check_user_id(user)?;
        for (i, m) in memories.iter().enumerate() {
            self.limits
                .check_memory(m)
                .map_err(|e| Error::invalid(format!("memory {}: {}", i + 1, strip(&e))))?;
        }
        if memories.is_empty() {
            return Ok(Vec::new());
        }
        self.register_key().await?;
        let txn = begin_write(&self.db).await?;
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
                Ok((
                    memory::ActiveModel {
                        id: NotSet,
                        user_id: Set(u.id),
                        session_id: Set(new.session.as_ref().map(|s| sessions[s])),
                        message_id: Set(None),
                        summary_id: Set(None),
                        kind: Set(new.kind.as_str().to_owned()),
                        role: Set(new.role.map(|r| r.as_str().to_owned())),
                        content: Set(self.seal(MEMORY_CONTENT, &new.content)?),
                        tags: Set(tags_json(&new.tags)),
                        metadata: Set(self.seal_json(MEMORY_METADATA, &new.metadata)?),
                        importance: Set(new.importance.unwrap_or(0.5)),
                        emotion: Set(new.emotion.clone()),
                        created_at: Set(new.created_at.map_or(t, |c| c.trunc_subsecs(6))),
                        updated_at: Set(t),
                        key_id: Set(self.key_id()),
                    },
                    new,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut delta = Delta::default();
        let stored = self.insert_memories(&txn, u.id, rows, &mut delta).await?;
        let revision = self.bump_revision(&txn, u.id).await?;
        txn.commit().await?;
        self.index.committed(u.id, revision, delta);
        self.memories_to_api(&self.db, u.id, stored).await
    }

    pub(crate) async fn get_memory(&self, user: &str, id: i64) -> Result<Option<Memory>> {
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

    pub(crate) async fn update_memory(
        &self,
        user: &str,
        id: i64,
        patch: MemoryPatch,
    ) -> Result<Memory> {
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
        // Outside the transaction, which deletes the old vector first (see
        // VectorIndex::prepare).
        if let Some(e) = &patch.embedding {
            self.index.prepare(e.vector.len()).await?;
        }
        if let Some(importance) = patch.importance {
            check_importance(importance)?;
        }
        self.register_key().await?;
        let txn = begin_write(&self.db).await?;
        let not_found = || Error::not_found("memory", id.to_string());
        let u = self.find_user(&txn, user).await?.ok_or_else(not_found)?;
        let m = memory::Entity::find()
            .filter(memory::Column::UserId.eq(u.id))
            .filter(memory::Column::Id.eq(id))
            .one(&txn)
            .await?
            .ok_or_else(not_found)?;
        let t = now();
        // Sealed fields are written again whole, under the current key.
        let m = open_memory(&self.keys, m)?;
        let content = self.seal(MEMORY_CONTENT, patch.content.as_ref().unwrap_or(&m.content))?;
        let metadata = self.seal_json(
            MEMORY_METADATA,
            patch.metadata.as_ref().unwrap_or(&m.metadata),
        )?;
        let mut am: memory::ActiveModel = m.into();
        am.content = Set(content);
        am.metadata = Set(metadata);
        am.key_id = Set(self.key_id());
        if let Some(tags) = &patch.tags {
            am.tags = Set(tags_json(tags));
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
        self.index.committed(u.id, revision, Delta::reset());
        Ok(self
            .memories_to_api(&self.db, u.id, vec![updated])
            .await?
            .pop()
            .expect("one memory in, one out"))
    }

    pub(crate) async fn delete_memories(&self, user: &str, ids: &[i64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let txn = begin_write(&self.db).await?;
        let Some(u) = self.find_user(&txn, user).await? else {
            return Ok(0);
        };
        let mut deleted = 0;
        for chunk in ids.chunks(INSERT_CHUNK) {
            deleted += memory::Entity::delete_many()
                .filter(owned(memory::Column::UserId, u.id))
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

    pub(crate) async fn list_memories(
        &self,
        user: &str,
        filter: &Filter,
        page: &PageRequest,
    ) -> Result<Page<Memory>> {
        let after = page_start(&self.limits, page)?;
        self.limits.check_filter(filter)?;
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(Page::empty());
        };
        let Some(f) = self.resolve_filter(&self.db, u.id, filter).await? else {
            return Ok(Page::empty());
        };
        let keyset = Keyset {
            time: Some(memory::Column::CreatedAt),
            id: memory::Column::Id,
            descending: true,
        };
        let q = memory::Entity::find().filter(self.memory_condition(u.id, &f));
        let page = keyset_page(&self.db, q, page.first, after, keyset, |m| ListCursor {
            t: micros(m.created_at),
            i: m.id,
        })
        .await?;
        Ok(Page {
            items: self.memories_to_api(&self.db, u.id, page.items).await?,
            next_cursor: page.next_cursor,
            cursors: page.cursors,
        })
    }

    pub(crate) async fn count_memories(&self, user: &str) -> Result<u64> {
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
}
