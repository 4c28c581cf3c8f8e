//! Extra keys (see [`crate::memory_keys`]): whether a user has them on, and how far the key
//! job has read. The keys themselves are memories (kind `key`, `key_for`; see `memories.rs`).
use super::*;
use crate::memory_keys::KeyPass;

impl<V: VectorIndex> SqlStore<V> {
    /// Turns the user's key writing on or off; false when the user is unknown.
    pub(crate) async fn set_memory_keys(&self, user: &str, enabled: bool) -> Result<bool> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(false);
        };
        // Turned off or on, the job starts over from the first memory.
        user::Entity::update_many()
            .col_expr(user::Column::MemoryKeys, Expr::value(enabled))
            .col_expr(user::Column::MemoryKeysThrough, Expr::value(None::<i64>))
            .col_expr(
                user::Column::MemorySessionsThrough,
                Expr::value(None::<i64>),
            )
            .col_expr(user::Column::MemoryContextThrough, Expr::value(None::<i64>))
            .col_expr(
                user::Column::MemoryContextEpoch,
                sea_orm::sea_query::ExprTrait::add(Expr::col(user::Column::MemoryContextEpoch), 1),
            )
            .filter(user::Column::Id.eq(u.id))
            .exec(&self.db)
            .await?;
        Ok(true)
    }

    /// Records that the key job has read the user's memories up to `through` (by id) for
    /// `pass`; never moves back. False when the user is unknown or their keys are off.
    pub(crate) async fn advance_memory_keys(
        &self,
        user: &str,
        pass: KeyPass,
        through: i64,
    ) -> Result<bool> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(false);
        };
        let column = match pass {
            KeyPass::Facts => user::Column::MemoryKeysThrough,
            KeyPass::Sessions => user::Column::MemorySessionsThrough,
        };
        let done = user::Entity::update_many()
            .col_expr(column, Expr::value(through))
            .filter(user::Column::Id.eq(u.id))
            .filter(user::Column::MemoryKeys.eq(true))
            .filter(
                Condition::any()
                    .add(column.is_null())
                    .add(column.lt(through)),
            )
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected > 0)
    }

    /// Records that the key job has read the user's memories up to `through` for context
    /// keys, unless the watermark was moved back since (another `epoch`); never moves back.
    pub(crate) async fn advance_context_keys(
        &self,
        user: &str,
        epoch: i64,
        through: i64,
    ) -> Result<bool> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(false);
        };
        let column = user::Column::MemoryContextThrough;
        let done = user::Entity::update_many()
            .col_expr(column, Expr::value(through))
            .filter(user::Column::Id.eq(u.id))
            .filter(user::Column::MemoryKeys.eq(true))
            .filter(user::Column::MemoryContextEpoch.eq(epoch))
            .filter(
                Condition::any()
                    .add(column.is_null())
                    .add(column.lt(through)),
            )
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected > 0)
    }

    /// Moves the context watermark back to `to` where it is above, in a new epoch.
    pub(crate) async fn rewind_context_keys(&self, user: &str, to: i64) -> Result<()> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(());
        };
        self.db
            .execute_raw(stmt(
                self.db.get_database_backend(),
                "UPDATE users SET memory_context_epoch = memory_context_epoch + 1, \
                 memory_context_through = CASE WHEN memory_context_through > $2 \
                 THEN $2 ELSE memory_context_through END WHERE id = $1",
                vec![u.id.into(), to.into()],
            ))
            .await?;
        Ok(())
    }

    /// Users with key writing on, by external id after `after`, at most `limit`.
    pub(crate) async fn memory_keys_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let mut q = user::Entity::find()
            .select_only()
            .column(user::Column::ExternalId)
            .filter(user::Column::MemoryKeys.eq(true))
            .order_by_asc(user::Column::ExternalId)
            .limit(limit as u64);
        if let Some(a) = after {
            q = q.filter(user::Column::ExternalId.gt(a));
        }
        Ok(q.into_tuple::<String>().all(&self.db).await?)
    }
}
