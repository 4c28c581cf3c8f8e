//! The user's data rights: settings, export, deletion, and the audit log.
use super::*;

impl<V: VectorIndex> SqlStore<V> {
    pub(crate) async fn get_settings(&self, user: &str) -> Result<Value> {
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(Value::Object(Default::default()));
        };
        Ok(user_setting::Entity::find_by_id(u.id)
            .one(&self.db)
            .await?
            .map_or(Value::Object(Default::default()), |s| s.settings))
    }

    pub(crate) async fn put_settings(
        &self,
        user: &str,
        settings: Value,
        actor: &Actor,
    ) -> Result<Value> {
        if !settings.is_object() {
            return Err(Error::invalid("settings must be a JSON object"));
        }
        self.limits.check_metadata(&settings)?;
        let txn = begin_write(&self.db).await?;
        let u = self.ensure_user(&txn, user).await?;
        user_setting::Entity::insert(user_setting::ActiveModel {
            user_id: Set(u.id),
            settings: Set(settings.clone()),
            updated_at: Set(now()),
        })
        .on_conflict(
            OnConflict::column(user_setting::Column::UserId)
                .update_columns([
                    user_setting::Column::Settings,
                    user_setting::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        let keys: Vec<&String> = settings
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        audit(
            &txn,
            user,
            actor,
            "update_settings",
            serde_json::json!({ "keys": keys }),
        )
        .await?;
        txn.commit().await?;
        Ok(settings)
    }

    pub(crate) async fn export_user(
        &self,
        user: &str,
        options: &ExportOptions,
        actor: &Actor,
    ) -> Result<UserExport> {
        let txn = begin_write(&self.db).await?;
        let u = self
            .find_user(&txn, user)
            .await?
            .ok_or_else(|| Error::not_found("user", user))?;
        let sessions = session::Entity::find()
            .filter(session::Column::UserId.eq(u.id))
            .order_by_asc(session::Column::Id)
            .all(&txn)
            .await?;
        let names: HashMap<i64, String> = sessions
            .iter()
            .map(|s| (s.id, s.external_id.clone()))
            .collect();
        let messages = message::Entity::find()
            .filter(message::Column::UserId.eq(u.id))
            .order_by_asc(message::Column::CreatedAt)
            .order_by_asc(message::Column::Id)
            .all(&txn)
            .await?
            .into_iter()
            .map(|m| {
                let session = names.get(&m.session_id).cloned().unwrap_or_default();
                self.message_to_api(m, &session)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut embeddings: HashMap<i64, Vec<ExportedEmbedding>> = HashMap::new();
        for (id, e) in self
            .index
            .embeddings_of(&txn, u.id, options.include_vectors, None)
            .await?
        {
            embeddings.entry(id).or_default().push(e);
        }
        let memories = memory::Entity::find()
            .filter(memory::Column::UserId.eq(u.id))
            .order_by_asc(memory::Column::CreatedAt)
            .order_by_asc(memory::Column::Id)
            .all(&txn)
            .await?
            .into_iter()
            .map(|m| {
                let id = m.id;
                Ok(ExportedMemory {
                    memory: self.memory_to_api(m, &names)?,
                    embeddings: embeddings.remove(&id).unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let summaries = summary::Entity::find()
            .filter(summary::Column::UserId.eq(u.id))
            .order_by_asc(summary::Column::Id)
            .all(&txn)
            .await?
            .into_iter()
            .map(|m| {
                let m = open_summary(&self.keys, m)?;
                Ok(Summary {
                    id: m.id,
                    session: names.get(&m.session_id).cloned().unwrap_or_default(),
                    content: m.content,
                    first_message_id: m.first_message_id,
                    last_message_id: m.last_message_id,
                    model: m.model,
                    created_at: m.created_at,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let settings = user_setting::Entity::find_by_id(u.id)
            .one(&txn)
            .await?
            .map_or(Value::Object(Default::default()), |s| s.settings);
        audit(
            &txn,
            user,
            actor,
            "export",
            serde_json::json!({
                "sessions": sessions.len(),
                "messages": messages.len(),
                "memories": memories.len(),
                "include_vectors": options.include_vectors,
            }),
        )
        .await?;
        let audit = audit_log::Entity::find()
            .filter(audit_log::Column::UserExternalId.eq(user))
            .order_by_asc(audit_log::Column::Id)
            .all(&txn)
            .await?
            .into_iter()
            .map(audit_to_api)
            .collect();
        txn.commit().await?;
        let deep_memory_pairs = self.training_pairs(user).await?;
        Ok(UserExport {
            format: EXPORT_FORMAT.to_owned(),
            exported_at: now(),
            user: User {
                id: u.external_id,
                created_at: u.created_at,
                memory_keys: u.memory_keys,
                memory_keys_through: u.memory_keys_through,
                memory_sessions_through: u.memory_sessions_through,
                memory_context_through: u.memory_context_through,
                memory_context_epoch: u.memory_context_epoch,
            },
            settings,
            sessions: sessions.into_iter().map(session_to_api).collect(),
            messages,
            memories,
            summaries,
            audit,
            deep_memory_pairs,
        })
    }

    pub(crate) async fn delete_user(
        &self,
        user: &str,
        actor: &Actor,
    ) -> Result<(DeletionReport, Vec<DeletedMemory>)> {
        let txn = begin_write(&self.db).await?;
        // Jobs name their user by id, without a foreign key: those not running go (queued ones
        // would work on data that is gone; finished ones hold its counts); a running one (this
        // deletion's own, when it was scheduled) records its end.
        txn.execute_raw(stmt(
            self.db.get_database_backend(),
            "DELETE FROM jobs WHERE user_external_id = $1 AND status <> 'running'",
            vec![user.into()],
        ))
        .await?;
        let Some(u) = self.find_user(&txn, user).await? else {
            audit(
                &txn,
                user,
                actor,
                "delete_user",
                serde_json::json!({ "existed": false }),
            )
            .await?;
            txn.commit().await?;
            return Ok((DeletionReport::default(), Vec::new()));
        };
        let report = DeletionReport {
            existed: true,
            sessions: self
                .count(
                    &txn,
                    "SELECT count(*) FROM sessions WHERE user_id = $1",
                    u.id,
                )
                .await?,
            messages: self
                .count(
                    &txn,
                    "SELECT count(*) FROM messages WHERE user_id = $1",
                    u.id,
                )
                .await?,
            memories: self
                .count(
                    &txn,
                    "SELECT count(*) FROM memories WHERE user_id = $1",
                    u.id,
                )
                .await?,
            embeddings: self
                .count(
                    &txn,
                    "SELECT count(*) FROM memory_embeddings WHERE user_id = $1",
                    u.id,
                )
                .await?,
            summaries: self
                .count(
                    &txn,
                    "SELECT count(*) FROM summaries WHERE user_id = $1",
                    u.id,
                )
                .await?,
        };
        let gone = self.memories_going(&txn, u.id, None).await?;
        // Foreign keys cascade from `users` to every table that holds the user's data.
        user::Entity::delete_by_id(u.id).exec(&txn).await?;
        audit(
            &txn,
            user,
            actor,
            "delete_user",
            serde_json::to_value(&report).map_err(|e| internal(e.to_string()))?,
        )
        .await?;
        txn.commit().await?;
        self.index.committed(u.id, i64::MAX, Delta::reset());
        Ok((report, gone))
    }

    pub(crate) async fn audit_log(
        &self,
        user: &str,
        page: &PageRequest,
    ) -> Result<Page<AuditEntry>> {
        self.limits.check_user_id(user)?;
        let after = page_start(&self.limits, page)?;
        let keyset = Keyset {
            time: None,
            id: audit_log::Column::Id,
            descending: false,
        };
        let q = audit_log::Entity::find().filter(audit_log::Column::UserExternalId.eq(user));
        keyset_page(&self.db, q, page.first, after, keyset, |a| ListCursor {
            t: 0,
            i: a.id,
        })
        .await?
        .try_map(|a| Ok(audit_to_api(a)))
    }
}
