//! Users and sessions.
use super::*;

impl<V: VectorIndex> SqlStore<V> {
    pub(crate) async fn upsert_user(&self, user: &str) -> Result<User> {
        let m = self.ensure_user(&self.db, user).await?;
        Ok(User {
            id: m.external_id,
            created_at: m.created_at,
            memory_keys: m.memory_keys,
            memory_keys_through: m.memory_keys_through,
            memory_sessions_through: m.memory_sessions_through,
            memory_context_through: m.memory_context_through,
            memory_context_epoch: m.memory_context_epoch,
        })
    }

    pub(crate) async fn get_user(&self, user: &str) -> Result<Option<User>> {
        Ok(self.find_user(&self.db, user).await?.map(|m| User {
            id: m.external_id,
            created_at: m.created_at,
            memory_keys: m.memory_keys,
            memory_keys_through: m.memory_keys_through,
            memory_sessions_through: m.memory_sessions_through,
            memory_context_through: m.memory_context_through,
            memory_context_epoch: m.memory_context_epoch,
        }))
    }

    pub(crate) async fn upsert_session(
        &self,
        user: &str,
        session: &str,
        patch: SessionPatch,
    ) -> Result<Session> {
        if let Some(Some(title)) = &patch.title {
            self.limits.check_persona("title", title)?;
        }
        if let Some(Some(persona)) = &patch.persona {
            self.limits.check_persona("persona", persona)?;
        }
        let txn = begin_write(&self.db).await?;
        let u = self.ensure_user(&txn, user).await?;
        let s = self.ensure_session(&txn, u.id, session).await?;
        let model = if patch.title.is_some() || patch.persona.is_some() {
            let mut am: session::ActiveModel = s.into();
            if let Some(title) = patch.title {
                am.title = Set(title);
            }
            if let Some(persona) = patch.persona {
                am.persona = Set(persona);
            }
            am.updated_at = Set(now());
            session::Entity::update(am).exec(&txn).await?
        } else {
            s
        };
        txn.commit().await?;
        Ok(session_to_api(model))
    }

    pub(crate) async fn get_session(&self, user: &str, session: &str) -> Result<Option<Session>> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(None);
        };
        Ok(self
            .find_session(&self.db, u.id, session)
            .await?
            .map(session_to_api))
    }

    pub(crate) async fn list_sessions(
        &self,
        user: &str,
        page: &PageRequest,
    ) -> Result<Page<Session>> {
        let after = page_start(&self.limits, page)?;
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(Page::empty());
        };
        let keyset = Keyset {
            time: Some(session::Column::CreatedAt),
            id: session::Column::Id,
            descending: true,
        };
        let q = session::Entity::find().filter(session::Column::UserId.eq(u.id));
        keyset_page(&self.db, q, page.first, after, keyset, |s| ListCursor {
            t: micros(s.created_at),
            i: s.id,
        })
        .await?
        .try_map(|s| Ok(session_to_api(s)))
    }

    /// The user's memories (of one session, or all), by id: those a deletion about to
    /// cascade takes with it, to announce.
    pub(crate) async fn memories_going(
        &self,
        txn: &DatabaseTransaction,
        user_id: i64,
        session_id: Option<i64>,
    ) -> Result<Vec<DeletedMemory>> {
        let mut q = memory::Entity::find()
            .select_only()
            .column(memory::Column::Id)
            .column(memory::Column::Kind)
            .filter(memory::Column::UserId.eq(user_id));
        if let Some(s) = session_id {
            q = q.filter(memory::Column::SessionId.eq(s));
        }
        q.order_by_asc(memory::Column::Id)
            .into_tuple::<(i64, String)>()
            .all(txn)
            .await?
            .into_iter()
            .map(|(id, kind)| {
                Ok(DeletedMemory {
                    id,
                    kind: kind.parse()?,
                    key_for: None,
                })
            })
            .collect()
    }

    pub(crate) async fn delete_session(
        &self,
        user: &str,
        session: &str,
    ) -> Result<Option<Vec<DeletedMemory>>> {
        let txn = begin_write(&self.db).await?;
        let Some(u) = self.find_user(&txn, user).await? else {
            return Ok(None);
        };
        let Some(s) = self.find_session(&txn, u.id, session).await? else {
            return Ok(None);
        };
        // The memories that go with it (by the foreign keys' cascade), to announce.
        let gone = self.memories_going(&txn, u.id, Some(s.id)).await?;
        let ids: Vec<i64> = gone.iter().map(|m| m.id).collect();
        self.relink_superseded(&txn, u.id, &ids, &mut Delta::default())
            .await?;
        session::Entity::delete_many()
            .filter(session::Column::Id.eq(s.id))
            .filter(session::Column::UserId.eq(u.id))
            .exec(&txn)
            .await?;
        let revision = self.bump_revision(&txn, u.id).await?;
        txn.commit().await?;
        self.index.committed(u.id, revision, Delta::reset());
        Ok(Some(gone))
    }
}
