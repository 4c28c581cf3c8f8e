//! Free-standing memories: add, read, change, delete, list.
use std::collections::BTreeMap;

use super::keys::{MEMORY_CONTENT, MEMORY_METADATA, SUMMARY_CONTENT};
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
                        expires_at: Set(new.expires_at.map(|e| e.trunc_subsecs(6))),
                        supersedes: Set(new.supersedes),
                        superseded_by: Set(None),
                        superseded_at: Set(None),
                        key_for: Set(new.key_for),
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

    pub(crate) async fn get_memories(&self, user: &str, ids: &[i64]) -> Result<Vec<Memory>> {
        self.limits.check_page_size(ids.len())?;
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(Vec::new());
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let found = memory::Entity::find()
            .filter(owned(memory::Column::UserId, u.id))
            .filter(memory::Column::Id.is_in(ids.iter().copied()))
            .all(&self.db)
            .await?;
        self.memories_to_api(&self.db, u.id, found).await
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
        let summary_id = m.summary_id;
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
        if let Some(expires_at) = patch.expires_at {
            am.expires_at = Set(expires_at.map(|e| e.trunc_subsecs(6)));
        }
        am.updated_at = Set(t);
        let updated = memory::Entity::update(am).exec(&txn).await?;
        // A summary's memory is the summary: the prompt shows (and the next fold reads) the
        // text it is given.
        if let (Some(text), Some(sid)) = (&patch.content, summary_id) {
            summary::Entity::update_many()
                .col_expr(
                    summary::Column::Content,
                    Expr::value(self.seal(SUMMARY_CONTENT, text)?),
                )
                .col_expr(summary::Column::KeyId, Expr::value(self.key_id()))
                .filter(summary::Column::UserId.eq(u.id))
                .filter(summary::Column::Id.eq(sid))
                .exec(&txn)
                .await?;
        }
        // Its keys were written about the old text: they go with it (the keys job writes new
        // ones). Kept keys expire with it.
        if patch.content.is_some() {
            let keys = self.keys_of(&txn, u.id, &[id]).await?;
            self.delete_rows(&txn, u.id, &keys).await?;
        } else if patch.expires_at.is_some() || patch.tags.is_some() {
            // Its keys stand in for it in searches: they carry its expiry and its tags (and
            // are stamped, so that replicas holding the user in memory read them again).
            let mut keys =
                memory::Entity::update_many().col_expr(memory::Column::UpdatedAt, Expr::value(t));
            if let Some(expires_at) = patch.expires_at {
                keys = keys.col_expr(
                    memory::Column::ExpiresAt,
                    Expr::value(expires_at.map(|e| e.trunc_subsecs(6))),
                );
            }
            if let Some(tags) = &patch.tags {
                keys = keys.col_expr(memory::Column::Tags, Expr::value(tags_json(tags)));
            }
            keys.filter(memory::Column::UserId.eq(u.id))
                .filter(memory::Column::KeyFor.eq(id))
                .exec(&txn)
                .await?;
        }
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
        // Their keys go with them.
        let keys = self.keys_of(&txn, u.id, ids).await?;
        let mut delta = Delta {
            removed: ids.iter().chain(&keys).copied().collect(),
            ..Delta::default()
        };
        self.relink_superseded(&txn, u.id, ids, &mut delta).await?;
        self.delete_rows(&txn, u.id, &keys).await?;
        // A summary's memory is the summary: deleting it deletes the summary, which the
        // prompt would still show (and the next fold carry on). The messages it folded stay
        // folded: what the user deleted does not come back as history either.
        let mut summaries = Vec::new();
        for chunk in ids.chunks(INSERT_CHUNK) {
            summaries.extend(
                memory::Entity::find()
                    .select_only()
                    .column(memory::Column::SummaryId)
                    .filter(memory::Column::UserId.eq(u.id))
                    .filter(memory::Column::Id.is_in(chunk.iter().copied()))
                    .filter(memory::Column::SummaryId.is_not_null())
                    .into_tuple::<Option<i64>>()
                    .all(&txn)
                    .await?
                    .into_iter()
                    .flatten(),
            );
        }
        let deleted = self.delete_rows(&txn, u.id, ids).await?;
        for chunk in summaries.chunks(INSERT_CHUNK) {
            summary::Entity::delete_many()
                .filter(summary::Column::UserId.eq(u.id))
                .filter(summary::Column::Id.is_in(chunk.iter().copied()))
                .exec(&txn)
                .await?;
        }
        let revision = self.bump_revision(&txn, u.id).await?;
        txn.commit().await?;
        self.index.committed(u.id, revision, delta);
        Ok(deleted)
    }

    /// The keys ([`MemoryKind::Key`]) of some of the user's memories.
    pub(crate) async fn keys_of(
        &self,
        txn: &DatabaseTransaction,
        user_id: i64,
        ids: &[i64],
    ) -> Result<Vec<i64>> {
        let mut keys = Vec::new();
        for chunk in ids.chunks(INSERT_CHUNK) {
            keys.extend(
                memory::Entity::find()
                    .select_only()
                    .column(memory::Column::Id)
                    .filter(memory::Column::UserId.eq(user_id))
                    .filter(memory::Column::KeyFor.is_in(chunk.iter().copied()))
                    .into_tuple::<i64>()
                    .all(txn)
                    .await?,
            );
        }
        Ok(keys)
    }

    /// Deletes memory rows of the user by id; how many.
    async fn delete_rows(
        &self,
        txn: &DatabaseTransaction,
        user_id: i64,
        ids: &[i64],
    ) -> Result<u64> {
        let mut deleted = 0;
        for chunk in ids.chunks(INSERT_CHUNK) {
            deleted += memory::Entity::delete_many()
                .filter(owned(memory::Column::UserId, user_id))
                .filter(memory::Column::Id.is_in(chunk.iter().copied()))
                .exec(txn)
                .await?
                .rows_affected;
        }
        Ok(deleted)
    }

    /// Clears the supersede links that point at memories `ids`, which expired and are being
    /// purged, so that none points at a row that is gone. A memory one of them replaced
    /// stays replaced (expiry is not a retraction: nothing comes back as current).
    async fn clear_links_to(
        &self,
        txn: &DatabaseTransaction,
        user_id: i64,
        ids: &[i64],
    ) -> Result<()> {
        for chunk in ids.chunks(INSERT_CHUNK) {
            for column in [memory::Column::Supersedes, memory::Column::SupersededBy] {
                memory::Entity::update_many()
                    .col_expr(column, Expr::value(None::<i64>))
                    .col_expr(memory::Column::UpdatedAt, Expr::value(now()))
                    .filter(memory::Column::UserId.eq(user_id))
                    .filter(column.is_in(chunk.iter().copied()))
                    .exec(txn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Keeps supersede chains whole when memories `ids` are deleted (by hand, not by
    /// expiry): across each run of deleted memories, the memory before it is now superseded
    /// by the one after it, or current again when nothing after it survives.
    pub(crate) async fn relink_superseded(
        &self,
        txn: &DatabaseTransaction,
        user_id: i64,
        ids: &[i64],
        delta: &mut Delta,
    ) -> Result<()> {
        let mut links: HashMap<i64, (Option<i64>, Option<i64>)> = HashMap::new();
        for chunk in ids.chunks(INSERT_CHUNK) {
            let rows = memory::Entity::find()
                .select_only()
                .column(memory::Column::Id)
                .column(memory::Column::Supersedes)
                .column(memory::Column::SupersededBy)
                .filter(owned(memory::Column::UserId, user_id))
                .filter(memory::Column::Id.is_in(chunk.iter().copied()))
                .filter(
                    Condition::any()
                        .add(memory::Column::Supersedes.is_not_null())
                        .add(memory::Column::SupersededBy.is_not_null()),
                )
                .into_tuple::<(i64, Option<i64>, Option<i64>)>()
                .all(txn)
                .await?;
            links.extend(
                rows.into_iter()
                    .map(|(id, before, after)| (id, (before, after))),
            );
        }
        let gone: HashSet<i64> = ids.iter().copied().collect();
        for (&id, &(before, _)) in &links {
            // Each run of deleted memories once, from its first.
            if before.is_some_and(|b| gone.contains(&b)) {
                continue;
            }
            let mut after = links[&id].1;
            let mut steps = 0;
            while let Some(a) = after.filter(|a| gone.contains(a)) {
                after = links.get(&a).and_then(|l| l.1);
                steps += 1;
                if steps > links.len() {
                    return Err(internal("a supersede chain loops"));
                }
            }
            let set = |id: i64, column: memory::Column, value: Option<i64>| {
                memory::Entity::update_many()
                    .col_expr(column, Expr::value(value))
                    .col_expr(memory::Column::UpdatedAt, Expr::value(now()))
                    .filter(memory::Column::UserId.eq(user_id))
                    .filter(memory::Column::Id.eq(id))
                    .exec(txn)
            };
            match (before, after) {
                (Some(b), Some(a)) => {
                    set(b, memory::Column::SupersededBy, Some(a)).await?;
                    set(a, memory::Column::Supersedes, Some(b)).await?;
                }
                (Some(b), None) => {
                    memory::Entity::update_many()
                        .col_expr(memory::Column::SupersededBy, Expr::value(None::<i64>))
                        .col_expr(
                            memory::Column::SupersededAt,
                            Expr::value(None::<DateTime<Utc>>),
                        )
                        .col_expr(memory::Column::UpdatedAt, Expr::value(now()))
                        .filter(memory::Column::UserId.eq(user_id))
                        .filter(memory::Column::Id.eq(b))
                        .exec(txn)
                        .await?;
                    delta.superseded.push((b, None));
                }
                (None, Some(a)) => {
                    set(a, memory::Column::Supersedes, None).await?;
                }
                (None, None) => {}
            }
        }
        Ok(())
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
        let key_of = |m: &memory::Model| ListCursor {
            t: micros(m.created_at),
            i: m.id,
        };
        if f.metadata.is_empty() {
            let page = keyset_page(&self.db, q, page.first, after, keyset, key_of).await?;
            return Ok(Page {
                items: self.memories_to_api(&self.db, u.id, page.items).await?,
                next_cursor: page.next_cursor,
                cursors: page.cursors,
            });
        }
        // Metadata conditions are tested on the opened rows, a batch at a time, until the
        // page is full, the rows run out, or MAX_METADATA_SCAN rows were read (then the
        // cursor continues from the last row read).
        let batch = (page.first * 4).clamp(64, 1000);
        let mut position = after;
        let (mut items, mut cursors) = (Vec::new(), Vec::new());
        let mut scanned = 0usize;
        let next_cursor = 'scan: loop {
            let keyset = Keyset {
                time: Some(memory::Column::CreatedAt),
                id: memory::Column::Id,
                descending: true,
            };
            let rows = keyset_page(&self.db, q.clone(), batch, position, keyset, key_of).await?;
            let last_batch = rows.next_cursor.is_none();
            let keys: Vec<ListCursor> = rows.items.iter().map(key_of).collect();
            let opened = self.memories_to_api(&self.db, u.id, rows.items).await?;
            for (m, key) in opened.into_iter().zip(keys) {
                scanned += 1;
                if f.metadata.iter().all(|c| c.matches(&m.metadata)) {
                    if items.len() == page.first {
                        // One more passes: the page is full and another follows.
                        break 'scan cursors.last().cloned();
                    }
                    items.push(m);
                    cursors.push(cursor::encode(&key));
                }
                position = Some(key);
            }
            if last_batch {
                break None;
            }
            if scanned >= MAX_METADATA_SCAN {
                break position.map(|p| cursor::encode(&p));
            }
        };
        Ok(Page {
            items,
            next_cursor,
            cursors,
        })
    }

    pub(crate) async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<DeletedMemory>)>> {
        self.limits.check_page_size(limit)?;
        let due = memory::Entity::find()
            .select_only()
            .column(memory::Column::UserId)
            .column(memory::Column::Id)
            .column(memory::Column::Kind)
            .column(memory::Column::KeyFor)
            .filter(memory::Column::ExpiresAt.lte(now))
            .order_by_asc(memory::Column::ExpiresAt)
            .order_by_asc(memory::Column::Id)
            .limit(limit as u64)
            .into_tuple::<(i64, i64, String, Option<i64>)>()
            .all(&self.db)
            .await?;
        let mut by_user: BTreeMap<i64, Vec<(i64, String, Option<i64>)>> = BTreeMap::new();
        for (user_id, id, kind, key_for) in due {
            by_user
                .entry(user_id)
                .or_default()
                .push((id, kind, key_for));
        }
        let mut out = Vec::with_capacity(by_user.len());
        for (user_id, rows) in by_user {
            let txn = begin_write(&self.db).await?;
            let Some(u) = user::Entity::find_by_id(user_id).one(&txn).await? else {
                continue;
            };
            let ids: Vec<i64> = rows.iter().map(|(id, _, _)| *id).collect();
            // Expiry is checked again inside the transaction: a memory given a later expiry
            // since the first read stays.
            let gone: HashSet<i64> = memory::Entity::find()
                .select_only()
                .column(memory::Column::Id)
                .filter(memory::Column::UserId.eq(user_id))
                .filter(memory::Column::Id.is_in(ids.iter().copied()))
                .filter(memory::Column::ExpiresAt.lte(now))
                .into_tuple::<i64>()
                .all(&txn)
                .await?
                .into_iter()
                .collect();
            if gone.is_empty() {
                continue;
            }
            let ids: Vec<i64> = gone.iter().copied().collect();
            // Their keys go with them.
            let keys: Vec<i64> = self
                .keys_of(&txn, user_id, &ids)
                .await?
                .into_iter()
                .filter(|k| !gone.contains(k))
                .collect();
            self.clear_links_to(&txn, user_id, &ids).await?;
            self.delete_rows(&txn, user_id, &keys).await?;
            self.delete_rows(&txn, user_id, &ids).await?;
            let revision = self.bump_revision(&txn, user_id).await?;
            txn.commit().await?;
            self.index.committed(
                user_id,
                revision,
                Delta {
                    removed: ids.iter().chain(&keys).copied().collect(),
                    ..Delta::default()
                },
            );
            let deleted = rows
                .into_iter()
                .filter(|(id, _, _)| gone.contains(id))
                .map(|(id, kind, key_for)| {
                    Ok(DeletedMemory {
                        id,
                        kind: kind.parse()?,
                        key_for,
                    })
                })
                .chain(keys.iter().map(|&id| {
                    Ok(DeletedMemory {
                        id,
                        kind: MemoryKind::Key,
                        key_for: None,
                    })
                }))
                .collect::<Result<Vec<_>>>()?;
            out.push((u.external_id, deleted));
        }
        Ok(out)
    }

    pub(crate) async fn list_memories_by_id(
        &self,
        user: &str,
        filter: &Filter,
        after: Option<i64>,
        first: usize,
    ) -> Result<Vec<Memory>> {
        self.limits.check_page_size(first)?;
        let Some((user_id, cond)) = self.condition_after(user, filter, after).await? else {
            return Ok(Vec::new());
        };
        let rows = memory::Entity::find()
            .filter(cond)
            .order_by_asc(memory::Column::Id)
            .limit(first as u64)
            .all(&self.db)
            .await?;
        self.memories_to_api(&self.db, user_id, rows).await
    }

    pub(crate) async fn count_memories_after(
        &self,
        user: &str,
        filter: &Filter,
        after: Option<i64>,
    ) -> Result<u64> {
        let Some((_, cond)) = self.condition_after(user, filter, after).await? else {
            return Ok(0);
        };
        Ok(sea_orm::PaginatorTrait::count(memory::Entity::find().filter(cond), &self.db).await?)
    }

    /// The condition of the user's memories matching `filter` (no metadata conditions)
    /// with an id above `after`, with the user's row id; `None` when nothing can match.
    async fn condition_after(
        &self,
        user: &str,
        filter: &Filter,
        after: Option<i64>,
    ) -> Result<Option<(i64, Condition)>> {
        self.limits.check_filter(filter)?;
        if !filter.metadata.is_empty() {
            return Err(Error::invalid(
                "a listing by id takes no metadata conditions",
            ));
        }
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(None);
        };
        let Some(f) = self.resolve_filter(&self.db, u.id, filter).await? else {
            return Ok(None);
        };
        let mut cond = self.memory_condition(u.id, &f);
        if let Some(a) = after {
            cond = cond.add(memory::Column::Id.gt(a));
        }
        Ok(Some((u.id, cond)))
    }

    pub(crate) async fn keys_for(&self, user: &str, targets: &[i64]) -> Result<Vec<Memory>> {
        self.limits.check_page_size(targets.len().max(1))?;
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(Vec::new());
        };
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let rows = memory::Entity::find()
            .filter(owned(memory::Column::UserId, u.id))
            .filter(memory::Column::Kind.eq(MemoryKind::Key.as_str()))
            .filter(memory::Column::KeyFor.is_in(targets.iter().copied()))
            .all(&self.db)
            .await?;
        self.memories_to_api(&self.db, u.id, rows).await
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
