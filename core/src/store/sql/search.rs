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
        if !filter.metadata.is_empty() {
            return self.search_metadata(u, query, &filter, after).await;
        }
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

    /// [`SqlStore::search`] with metadata conditions, which are tested on the opened rows: the
    /// nearest rows are read in batches until `top_k` pass and one more is seen, the rows run
    /// out, or [`MAX_METADATA_SCAN`] were read (then the cursor continues after the last row
    /// read, with what passed so far).
    async fn search_metadata(
        &self,
        u: user::Model,
        query: &VectorQuery,
        filter: &ResolvedFilter,
        mut position: Option<SearchCursor>,
    ) -> Result<SearchPage> {
        let batch = (query.top_k * 4).clamp(64, 1000);
        let mut hits: Vec<SearchHit> = Vec::new();
        let mut returned: Option<SearchCursor> = None;
        let mut scanned = 0usize;
        let next = 'scan: loop {
            let mut found = self
                .index
                .search(
                    &self.db,
                    &IndexQuery {
                        user_id: u.id,
                        revision: u.revision,
                        model: &query.embedding.model,
                        vector: &query.embedding.vector,
                        limit: batch + 1,
                        max_distance: query.min_score.map(|s| self.metric.max_distance(s as f64)),
                        filter,
                        after: position,
                    },
                )
                .await?;
            let last_batch = found.len() <= batch;
            found.truncate(batch);
            let mut by_id = self
                .memories_by_id(u.id, found.iter().map(|(id, _)| *id))
                .await?;
            let stand_in = self.stand_in_metadata(u.id, filter, &by_id).await?;
            for (id, distance) in found {
                scanned += 1;
                let here = SearchCursor { d: distance, i: id };
                // A memory deleted between the two reads is skipped.
                if let Some(memory) = by_id.remove(&id)
                    && filter
                        .metadata
                        .iter()
                        .all(|c| c.matches(stand_in.get(&memory.id).unwrap_or(&memory.metadata)))
                {
                    if hits.len() == query.top_k {
                        break 'scan returned;
                    }
                    hits.push(SearchHit {
                        memory,
                        score: self.metric.score(distance) as f32,
                        distance: distance as f32,
                    });
                    returned = Some(here);
                }
                position = Some(here);
            }
            if last_batch {
                break None;
            }
            if scanned >= MAX_METADATA_SCAN {
                break position;
            }
        };
        Ok(SearchPage {
            hits,
            next_cursor: next.map(|c| cursor::encode(&c)),
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
        // With metadata conditions (tested on the opened rows), more of the best matches are
        // read, four times as many each round, until `top_k` pass or the matches run out
        // (at most MAX_METADATA_SCAN).
        let mut limit = if filter.metadata.is_empty() {
            query.top_k
        } else {
            (query.top_k * 4).clamp(64, MAX_METADATA_SCAN)
        };
        loop {
            let found = self
                .index
                .text_search(
                    &self.db,
                    &TextIndexQuery {
                        user_id: u.id,
                        revision: u.revision,
                        text: &query.text,
                        limit,
                        filter: &filter,
                    },
                )
                .await?;
            let exhausted = found.len() < limit;
            let mut by_id = self
                .memories_by_id(u.id, found.iter().map(|(id, _)| *id))
                .await?;
            let stand_in = self.stand_in_metadata(u.id, &filter, &by_id).await?;
            let hits: Vec<TextHit> = found
                .into_iter()
                .filter_map(|(id, score)| {
                    by_id.remove(&id).map(|memory| TextHit {
                        memory,
                        score: score as f32,
                    })
                })
                .filter(|h| {
                    let metadata = stand_in.get(&h.memory.id).unwrap_or(&h.memory.metadata);
                    filter.metadata.iter().all(|c| c.matches(metadata))
                })
                .take(query.top_k)
                .collect();
            if hits.len() == query.top_k || exhausted || limit >= MAX_METADATA_SCAN {
                return Ok(hits);
            }
            limit = (limit * 4).min(MAX_METADATA_SCAN);
        }
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
