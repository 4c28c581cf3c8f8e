//! Deep memory: a user's (question, memory) pairs, sealed like memories, and their query
//! adapter (see [`crate::deep_memory`]).
use super::keys::DEEP_MEMORY_QUESTION;
use super::*;
use crate::deep_memory::{
    Adapter, MAX_PAIRS_PER_USER, NewTrainingPair, PairSource, StoredAdapter, TrainingPair,
};

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(internal("adapter weights of a length not a multiple of 4"));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

impl<V: VectorIndex> SqlStore<V> {
    /// Stores pairs of the user's memories; pairs naming a memory that is not the user's are
    /// skipped. How many were stored.
    pub(crate) async fn add_training_pairs(
        &self,
        user: &str,
        pairs: Vec<NewTrainingPair>,
    ) -> Result<u64> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(0);
        };
        if pairs.is_empty() {
            return Ok(0);
        }
        let backend = self.db.get_database_backend();
        self.register_key().await?;
        let txn = begin_write(&self.db).await?;
        let held = self
            .count(
                &txn,
                "SELECT count(*) FROM deep_memory_pairs WHERE user_id = $1",
                u.id,
            )
            .await?;
        if held as usize + pairs.len() > MAX_PAIRS_PER_USER {
            return Err(Error::invalid(format!(
                "a user holds at most {MAX_PAIRS_PER_USER} deep memory pairs ({held} stored, \
                 {} more given)",
                pairs.len()
            )));
        }
        let key_id = self.key_id();
        let created = now();
        let mut stored = 0;
        for p in pairs {
            let done = txn
                .execute_raw(stmt(
                    backend,
                    "INSERT INTO deep_memory_pairs \
                     (user_id, memory_id, content, key_id, source, model, prompt_version, created_at) \
                     SELECT $1, m.id, $3, $4, $5, $6, $7, $8 FROM memories m \
                     WHERE m.id = $2 AND m.user_id = $1",
                    vec![
                        u.id.into(),
                        p.memory_id.into(),
                        self.seal(DEEP_MEMORY_QUESTION, &p.question)?.into(),
                        key_id.clone().into(),
                        p.source.as_str().into(),
                        p.model.into(),
                        p.prompt_version.map(|v| v as i32).into(),
                        created.into(),
                    ],
                ))
                .await?;
            stored += done.rows_affected();
        }
        txn.commit().await?;
        Ok(stored)
    }

    /// The user's pairs, oldest first.
    pub(crate) async fn training_pairs(&self, user: &str) -> Result<Vec<TrainingPair>> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(vec![]);
        };
        self.pairs_of(&self.db, u.id).await
    }

    /// The pairs of the user with row id `uid`, oldest first, read through `db`.
    pub(crate) async fn pairs_of<C: ConnectionTrait>(
        &self,
        db: &C,
        uid: i64,
    ) -> Result<Vec<TrainingPair>> {
        let rows = db
            .query_all_raw(stmt(
                db.get_database_backend(),
                "SELECT id, memory_id, content, key_id, source, model, prompt_version, created_at \
                 FROM deep_memory_pairs WHERE user_id = $1 ORDER BY id",
                vec![uid.into()],
            ))
            .await?;
        rows.into_iter()
            .map(|r| {
                let key: Option<String> = r.try_get_by_index(3)?;
                let content: String = r.try_get_by_index(2)?;
                let source: String = r.try_get_by_index(4)?;
                let version: Option<i32> = r.try_get_by_index(6)?;
                Ok(TrainingPair {
                    id: r.try_get_by_index(0)?,
                    memory_id: r.try_get_by_index(1)?,
                    question: self
                        .keys
                        .open(key.as_deref(), DEEP_MEMORY_QUESTION, &content)?,
                    source: PairSource::parse(&source)?,
                    model: r.try_get_by_index(5)?,
                    prompt_version: version.map(|v| v.max(0) as u32),
                    created_at: r.try_get_by_index(7)?,
                })
            })
            .collect()
    }

    /// Deletes the user's pairs (of one source, or all); how many.
    pub(crate) async fn delete_training_pairs(
        &self,
        user: &str,
        source: Option<PairSource>,
    ) -> Result<u64> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(0);
        };
        let (sql, values): (&str, Vec<DbValue>) = match source {
            Some(s) => (
                "DELETE FROM deep_memory_pairs WHERE user_id = $1 AND source = $2",
                vec![u.id.into(), s.as_str().into()],
            ),
            None => (
                "DELETE FROM deep_memory_pairs WHERE user_id = $1",
                vec![u.id.into()],
            ),
        };
        Ok(self
            .db
            .execute_raw(stmt(self.db.get_database_backend(), sql, values))
            .await?
            .rows_affected())
    }

    /// Stores the user's adapter in place of the one they had, one version up; the stored
    /// adapter (with its version).
    pub(crate) async fn put_adapter(
        &self,
        user: &str,
        mut adapter: StoredAdapter,
    ) -> Result<StoredAdapter> {
        let backend = self.db.get_database_backend();
        let txn = begin_write(&self.db).await?;
        // An adapter is trained on the user's data: when that data was deleted while it
        // trained (the user gone, or made anew since), it is not stored.
        let u = self
            .find_user(&txn, user)
            .await?
            .filter(|u| u.created_at <= adapter.trained_at)
            .ok_or_else(|| Error::not_found("user", user))?;
        let version = txn
            .query_one_raw(stmt(
                backend,
                "SELECT version FROM deep_memory_adapters WHERE user_id = $1",
                vec![u.id.into()],
            ))
            .await?
            .map(|r| r.try_get_by_index::<i32>(0))
            .transpose()?
            .unwrap_or(0);
        adapter.version = version.max(0) as u32 + 1;
        adapter.updated_at = now();
        adapter.trained_at = adapter.trained_at.trunc_subsecs(6);
        txn.execute_raw(stmt(
            backend,
            "DELETE FROM deep_memory_adapters WHERE user_id = $1",
            vec![u.id.into()],
        ))
        .await?;
        Self::insert_adapter(&txn, u.id, &adapter).await?;
        txn.commit().await?;
        Ok(adapter)
    }

    /// Writes an adapter row for the user with row id `uid` (who has none) through `db`.
    pub(crate) async fn insert_adapter<C: ConnectionTrait>(
        db: &C,
        uid: i64,
        adapter: &StoredAdapter,
    ) -> Result<()> {
        let metrics =
            serde_json::to_string(&adapter.report).map_err(|e| internal(e.to_string()))?;
        db.execute_raw(stmt(
            db.get_database_backend(),
            "INSERT INTO deep_memory_adapters (user_id, embedding_model, version, dims, rank, \
             weights, metrics, enabled, memories, pairs, trained_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            vec![
                uid.into(),
                adapter.embedding_model.clone().into(),
                (adapter.version as i32).into(),
                (adapter.adapter.dims() as i32).into(),
                (adapter.adapter.rank() as i32).into(),
                to_bytes(&adapter.adapter.weights()).into(),
                metrics.into(),
                adapter.enabled.into(),
                (adapter.memories as i64).into(),
                (adapter.pairs as i64).into(),
                adapter.trained_at.into(),
                adapter.updated_at.into(),
            ],
        ))
        .await?;
        Ok(())
    }

    /// The user's adapter, if they have one.
    pub(crate) async fn get_adapter(&self, user: &str) -> Result<Option<StoredAdapter>> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(None);
        };
        Self::adapter_of(&self.db, u.id).await
    }

    /// The adapter of the user with row id `uid`, read through `db`.
    pub(crate) async fn adapter_of<C: ConnectionTrait>(
        db: &C,
        uid: i64,
    ) -> Result<Option<StoredAdapter>> {
        let Some(r) = db
            .query_one_raw(stmt(
                db.get_database_backend(),
                "SELECT embedding_model, version, dims, rank, weights, metrics, enabled, \
                 memories, pairs, trained_at, updated_at \
                 FROM deep_memory_adapters WHERE user_id = $1",
                vec![uid.into()],
            ))
            .await?
        else {
            return Ok(None);
        };
        let dims: i32 = r.try_get_by_index(2)?;
        let rank: i32 = r.try_get_by_index(3)?;
        let weights = from_bytes(&r.try_get_by_index::<Vec<u8>>(4)?)?;
        let metrics: String = r.try_get_by_index(5)?;
        let version: i32 = r.try_get_by_index(1)?;
        let memories: i64 = r.try_get_by_index(7)?;
        let pairs: i64 = r.try_get_by_index(8)?;
        Ok(Some(StoredAdapter {
            embedding_model: r.try_get_by_index(0)?,
            version: version.max(0) as u32,
            adapter: Adapter::from_weights(dims.max(0) as usize, rank.max(0) as usize, weights)?,
            report: serde_json::from_str(&metrics)
                .map_err(|e| internal(format!("adapter metrics: {e}")))?,
            enabled: r.try_get_by_index(6)?,
            memories: memories.max(0) as u64,
            pairs: pairs.max(0) as u64,
            trained_at: r.try_get_by_index(9)?,
            updated_at: r.try_get_by_index(10)?,
        }))
    }

    /// Turns the user's adapter on or off; false when they have none.
    pub(crate) async fn set_adapter_enabled(&self, user: &str, enabled: bool) -> Result<bool> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(false);
        };
        Ok(self
            .db
            .execute_raw(stmt(
                self.db.get_database_backend(),
                "UPDATE deep_memory_adapters SET enabled = $1, updated_at = $2 WHERE user_id = $3",
                vec![enabled.into(), now().into(), u.id.into()],
            ))
            .await?
            .rows_affected()
            > 0)
    }

    /// Users with an enabled adapter, by external id after `after`, at most `limit`, with the
    /// number of memories their adapter was trained with.
    pub(crate) async fn enabled_adapters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>> {
        self.limits.check_page_size(limit)?;
        let rows = self
            .db
            .query_all_raw(stmt(
                self.db.get_database_backend(),
                &format!(
                    "SELECT u.external_id, a.memories FROM deep_memory_adapters a \
                     JOIN users u ON u.id = a.user_id \
                     WHERE a.enabled AND u.external_id > $1 \
                     ORDER BY u.external_id LIMIT {limit}"
                ),
                vec![after.unwrap_or("").into()],
            ))
            .await?;
        rows.into_iter()
            .map(|r| {
                let memories: i64 = r.try_get_by_index(1)?;
                Ok((r.try_get_by_index(0)?, memories.max(0) as u64))
            })
            .collect()
    }
}
