//! Nearest-neighbour and full-text search over one user's memories.
use super::*;

impl<V: VectorIndex> SqlStore<V> {
    pub(crate) async fn search(&self, user: &str, query: &VectorQuery) -> Result<SearchPage> {
        self.limits.check_page_size(query.top_k)?;
        self.limits.check_filter(&query.filter)?;
        check_embedding(&query.embedding.model, &query.embedding.vector)?;
        if let Some(s) = query.min_score
            && !s.is_finite()
        {
            return Err(Error::invalid("min_score must be a finite number"));
        }
        let after = query
            .cursor
            .as_deref()
            .map(cursor::decode::<SearchCursor>)
            .transpose()?;
        let empty = SearchPage {
            hits: vec![],
            next_cursor: None,
        };
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(empty);
        };
        let Some(filter) = self.resolve_filter(&self.db, u.id, &query.filter).await? else {
            return Ok(empty);
        };
        let mut found = self
            .index
            .search(
                &self.db,
                &IndexQuery {
                    user_id: u.id,
                    revision: u.revision,
                    model: &query.embedding.model,
                    vector: &query.embedding.vector,
                    limit: query.top_k + 1,
                    max_distance: query.min_score.map(|s| self.metric.max_distance(s as f64)),
                    filter: &filter,
                    after,
                },
            )
            .await?;
        let more = found.len() > query.top_k;
        found.truncate(query.top_k);
        let mut by_id = self
            .memories_by_id(u.id, found.iter().map(|(id, _)| *id))
            .await?;
        let mut hits = Vec::with_capacity(found.len());
        let mut last = None;
        for (id, distance) in found {
            // A memory deleted between the two reads is skipped.
            if let Some(memory) = by_id.remove(&id) {
                hits.push(SearchHit {
                    memory,
                    score: self.metric.score(distance) as f32,
                    distance: distance as f32,
                });
            }
            last = Some(SearchCursor { d: distance, i: id });
        }
        Ok(SearchPage {
            hits,
            next_cursor: if more {
                last.map(|c| cursor::encode(&c))
            } else {
                None
            },
        })
    }

    pub(crate) async fn text_search(&self, user: &str, query: &TextQuery) -> Result<Vec<TextHit>> {
        self.limits.check_page_size(query.top_k)?;
        self.limits.check_filter(&query.filter)?;
        self.limits.check_content(&query.text)?;
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(vec![]);
        };
        let Some(filter) = self.resolve_filter(&self.db, u.id, &query.filter).await? else {
            return Ok(vec![]);
        };
        if crate::text::query_terms(&query.text).is_empty() {
            return Ok(vec![]);
        }
        let found = self
            .index
            .text_search(
                &self.db,
                &TextIndexQuery {
                    user_id: u.id,
                    revision: u.revision,
                    text: &query.text,
                    limit: query.top_k,
                    filter: &filter,
                },
            )
            .await?;
        let mut by_id = self
            .memories_by_id(u.id, found.iter().map(|(id, _)| *id))
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|(id, score)| {
                by_id.remove(&id).map(|memory| TextHit {
                    memory,
                    score: score as f32,
                })
            })
            .collect())
    }

    pub(crate) async fn vectors(
        &self,
        user: &str,
        model: &str,
        ids: &[i64],
    ) -> Result<HashMap<i64, Vec<f32>>> {
        self.limits.check_page_size(ids.len().max(1))?;
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(HashMap::new());
        };
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self
            .index
            .vectors_of(&self.db, u.id, u.revision, model, ids)
            .await?
            .into_iter()
            .collect())
    }
}

/// The widest neighbourhood [`SqlStore::neighbours`] reads (turns on each side).
pub(crate) const MAX_NEIGHBOUR_RADIUS: usize = 5;

impl<V: VectorIndex> SqlStore<V> {
    /// For each of the user's message memories `ids`, the message memories up to `radius`
    /// places before and after it in its session (conversation order: message, then memory
    /// id), as `(id, neighbour)` pairs. Ids of other users, or of memories that are not part
    /// of a session's messages, have no neighbours. One statement, one short index range per
    /// side.
    pub(crate) async fn neighbours(
        &self,
        user: &str,
        ids: &[i64],
        radius: usize,
    ) -> Result<Vec<(i64, Memory)>> {
        self.limits.check_page_size(ids.len().max(1))?;
        if radius > MAX_NEIGHBOUR_RADIUS {
            return Err(Error::invalid(format!(
                "neighbourhood radius is at most {MAX_NEIGHBOUR_RADIUS}"
            )));
        }
        if ids.is_empty() || radius == 0 {
            return Ok(vec![]);
        }
        let Some(u) = self.find_user(&self.db, user).await? else {
            return Ok(vec![]);
        };
        let centres = memory::Entity::find()
            .filter(owned(memory::Column::UserId, u.id))
            .filter(memory::Column::Id.is_in(ids.iter().copied()))
            .filter(memory::Column::Kind.eq(MemoryKind::Message.as_str()))
            .filter(memory::Column::SessionId.is_not_null())
            .filter(memory::Column::MessageId.is_not_null())
            .all(&self.db)
            .await?;
        if centres.is_empty() {
            return Ok(vec![]);
        }
        let mut parts = Vec::with_capacity(centres.len() * 2);
        let mut values: Vec<DbValue> = vec![u.id.into(), (radius as i64).into()];
        for c in &centres {
            let (Some(s), Some(m)) = (c.session_id, c.message_id) else {
                continue;
            };
            let at = values.len();
            values.extend([c.id.into(), s.into(), m.into()]);
            let (centre, session, message) = (at + 1, at + 2, at + 3);
            for (cmp, order) in [("<", "DESC"), (">", "ASC")] {
                parts.push(format!(
                    "SELECT * FROM (SELECT ${centre} AS centre, id FROM memories \
                     WHERE user_id = $1 AND session_id = ${session} AND kind = 'message' \
                     AND (message_id {cmp} ${message} \
                          OR (message_id = ${message} AND id {cmp} ${centre})) \
                     ORDER BY message_id {order}, id {order} LIMIT $2) AS n{}",
                    parts.len()
                ));
            }
        }
        let rows = self
            .db
            .query_all_raw(stmt(
                self.db.get_database_backend(),
                &parts.join(" UNION ALL "),
                values,
            ))
            .await?;
        let mut pairs = Vec::with_capacity(rows.len());
        for r in rows {
            pairs.push((r.try_get::<i64>("", "centre")?, r.try_get::<i64>("", "id")?));
        }
        let by_id = self
            .memories_by_id(u.id, pairs.iter().map(|(_, n)| *n))
            .await?;
        Ok(pairs
            .into_iter()
            .filter_map(|(centre, n)| by_id.get(&n).map(|m| (centre, m.clone())))
            .collect())
    }
}
