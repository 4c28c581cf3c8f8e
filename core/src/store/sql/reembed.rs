//! Re-embedding after a change of embedding model: the memories a model has no vector for,
//! adding vectors of a new model beside the old ones, and the per-user switch (see
//! `Engine::reembed`).
use super::keys::MEMORY_CONTENT;
use super::*;
use crate::types::Embedding;

impl<V: VectorIndex> SqlStore<V> {
    /// The embedding model the user's searches use, if one was recorded.
    pub(crate) async fn embedding_model(&self, user: &str) -> Result<Option<String>> {
        Ok(self
            .find_user(&self.db, user)
            .await?
            .and_then(|u| u.embedding_model))
    }

    /// Users by external id, after `after`, at most `limit`.
    pub(crate) async fn user_ids(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.limits.check_page_size(limit)?;
        let mut q = user::Entity::find().order_by_asc(user::Column::ExternalId);
        if let Some(a) = after {
            q = q.filter(user::Column::ExternalId.gt(a));
        }
        Ok(q.limit(limit as u64)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|u| u.external_id)
            .collect())
    }

    /// The user's memories with no vector of `model` (id and opened text), by id, at most
    /// `limit`; and how many there are in all.
    pub(crate) async fn missing_embeddings(
        &self,
        user: &str,
        model: &str,
        limit: usize,
    ) -> Result<(Vec<(i64, String)>, u64)> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok((vec![], 0));
        };
        let backend = self.db.get_database_backend();
        let missing = "FROM memories m WHERE m.user_id = $1 AND NOT EXISTS \
                       (SELECT 1 FROM memory_embeddings e WHERE e.memory_id = m.id AND e.model = $2)";
        let total = self
            .db
            .query_one_raw(stmt(
                backend,
                &format!("SELECT count(*) {missing}"),
                vec![u.id.into(), model.into()],
            ))
            .await?
            .ok_or_else(|| internal("count returned no row"))?
            .try_get_by_index::<i64>(0)?;
        let rows = self
            .db
            .query_all_raw(stmt(
                backend,
                &format!("SELECT m.id, m.content, m.key_id {missing} ORDER BY m.id LIMIT {limit}"),
                vec![u.id.into(), model.into()],
            ))
            .await?;
        let rows = rows
            .into_iter()
            .map(|r| {
                let key: Option<String> = r.try_get_by_index(2)?;
                let text: String = r.try_get_by_index(1)?;
                Ok((
                    r.try_get_by_index(0)?,
                    self.keys.open(key.as_deref(), MEMORY_CONTENT, &text)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok((rows, total.max(0) as u64))
    }

    /// Adds vectors (of a model the user's searches may not use yet) to some of the user's
    /// memories, replacing any of the same model; memories that are not the user's, or no
    /// longer exist, are skipped. Searches do not see them until the user switches to the
    /// model. Returns how many were written.
    pub(crate) async fn add_embeddings(
        &self,
        user: &str,
        rows: Vec<(i64, Embedding)>,
    ) -> Result<u64> {
        self.limits.check_page_size(rows.len().max(1))?;
        for (_, e) in &rows {
            check_embedding(&e.model, &e.vector)?;
        }
        let Some(first) = rows.first() else {
            return Ok(0);
        };
        self.index.prepare(first.1.vector.len()).await?;
        let txn = begin_write(&self.db).await?;
        let Some(u) = self.find_user(&txn, user).await? else {
            return Ok(0);
        };
        let owned: HashMap<i64, DateTime<Utc>> = memory::Entity::find()
            .filter(owned(memory::Column::UserId, u.id))
            .filter(memory::Column::Id.is_in(rows.iter().map(|(id, _)| *id)))
            .all(&txn)
            .await?
            .into_iter()
            .map(|m| (m.id, m.created_at))
            .collect();
        let rows: Vec<&(i64, Embedding)> = rows
            .iter()
            .filter(|(id, _)| owned.contains_key(id))
            .collect();
        for (id, e) in &rows {
            txn.execute_raw(stmt(
                txn.get_database_backend(),
                "DELETE FROM memory_embeddings WHERE memory_id = $1 AND user_id = $2 AND model = $3",
                vec![(*id).into(), u.id.into(), e.model.clone().into()],
            ))
            .await?;
        }
        let embeddings: Vec<EmbeddingRow<'_>> = rows
            .iter()
            .map(|(id, e)| EmbeddingRow {
                memory_id: *id,
                user_id: u.id,
                model: &e.model,
                vector: &e.vector,
                created_at: owned[id],
            })
            .collect();
        self.index.insert(&txn, &embeddings).await?;
        txn.commit().await?;
        Ok(embeddings.len() as u64)
    }

    /// Moves the user's searches to `model` if every memory of theirs has a vector of it, and
    /// drops their vectors of other models, in one transaction. `false` (nothing changed)
    /// while any memory still lacks one.
    pub(crate) async fn switch_embedding_model(&self, user: &str, model: &str) -> Result<bool> {
        let txn = begin_write(&self.db).await?;
        let Some(u) = self.find_user(&txn, user).await? else {
            return Ok(false);
        };
        let backend = txn.get_database_backend();
        let missing = txn
            .query_one_raw(stmt(
                backend,
                "SELECT count(*) FROM memories m WHERE m.user_id = $1 AND NOT EXISTS \
                 (SELECT 1 FROM memory_embeddings e WHERE e.memory_id = m.id AND e.model = $2)",
                vec![u.id.into(), model.into()],
            ))
            .await?
            .ok_or_else(|| internal("count returned no row"))?
            .try_get_by_index::<i64>(0)?;
        if missing > 0 {
            txn.rollback().await?;
            return Ok(false);
        }
        txn.execute_raw(stmt(
            backend,
            "UPDATE users SET embedding_model = $1 WHERE id = $2",
            vec![model.into(), u.id.into()],
        ))
        .await?;
        txn.execute_raw(stmt(
            backend,
            "DELETE FROM memory_embeddings WHERE user_id = $1 AND model <> $2",
            vec![u.id.into(), model.into()],
        ))
        .await?;
        let revision = self.bump_revision(&txn, u.id).await?;
        txn.commit().await?;
        self.index.committed(u.id, revision, Delta::reset());
        Ok(true)
    }
}
