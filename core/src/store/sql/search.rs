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
