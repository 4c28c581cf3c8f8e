//! Search: plain similarity search, and retrieval (hybrid candidates, fusion, re-ranking,
//! the query cache). Embeddings on their own, for the OpenAI-compatible API.
use super::*;
use crate::error::Error;
use crate::retrieval::{self, SearchMode};
use crate::types::{Filter, Retrieved, SearchHit, SearchPage, TextQuery, VectorQuery};
use tracing::Instrument;
use tracing::field::Empty;

/// Texts per [`Engine::embed_texts`] call at most.
pub const MAX_EMBED_INPUTS: usize = 256;

/// Vectors for texts, with the model that made them and the tokens it read.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// The embedding model.
    pub model: String,
    /// Tokens read (estimated at four bytes a token where the tokenizer is not known).
    pub tokens: usize,
}

impl Engine {
    /// Semantic search over the user's memories.
    #[tracing::instrument(name = "search", level = "info", skip_all, fields(top_k = options.top_k))]
    pub async fn search(
        &self,
        user: &str,
        text: &str,
        options: &SearchOptions,
    ) -> Result<SearchPage> {
        let limits = self.store.limits();
        limits.check_user_id(user)?;
        limits.check_content(text)?;
        limits.check_page_size(options.top_k)?;
        limits.check_filter(&options.filter)?;
        let this = self.scoped(user).await?;
        let vector = this
            .embedder
            .embed_one(text)
            .instrument(tracing::info_span!("embed_query"))
            .await?;
        let vector = this.adapt_query(user, vector).await?;
        // A key's match is its memory's, and each memory is returned once, on the page of its
        // best row: rows are read until the page is full, and on a later page a memory one of
        // whose rows scores better was returned before.
        let filter = key_search::with_keys(&options.filter).into_owned();
        let mut hits: Vec<SearchHit> = Vec::with_capacity(options.top_k);
        let mut seen = std::collections::HashSet::new();
        let mut cursor = options.cursor.clone();
        let next_cursor = loop {
            let page = self
                .store
                .search(
                    user,
                    &VectorQuery {
                        embedding: this.embedding(vector.clone()),
                        top_k: options.top_k - hits.len(),
                        min_score: options.min_score,
                        filter: filter.clone(),
                        cursor: cursor.clone(),
                    },
                )
                .await?;
            let found = self
                .resolve_keys(
                    user,
                    page.hits
                        .into_iter()
                        .map(|h| (h.memory, (h.score, h.distance)))
                        .collect(),
                    &options.filter,
                )
                .await?;
            let found: Vec<_> = found
                .into_iter()
                .filter(|(m, _)| seen.insert(m.id))
                .collect();
            let earlier = match &options.cursor {
                Some(_) => {
                    let firsts: Vec<(i64, f32)> =
                        found.iter().map(|(m, (s, _))| (m.id, *s)).collect();
                    this.returned_before(user, &vector, &firsts, &filter)
                        .await?
                }
                None => Default::default(),
            };
            hits.extend(
                found
                    .into_iter()
                    .filter(|(m, _)| !earlier.contains(&m.id))
                    .map(|(memory, (score, distance))| SearchHit {
                        memory,
                        score,
                        distance,
                    }),
            );
            match page.next_cursor {
                Some(next) if hits.len() < options.top_k => cursor = Some(next),
                next => break next,
            }
        };
        Ok(SearchPage { hits, next_cursor })
    }

    /// The memories that matter for `query`: candidates from the mode's retrievers, fused,
    /// re-ranked with the configured signals (and the cross-encoder, when there is one),
    /// thresholded and diversified. Repeated queries are answered from the query cache until
    /// the user's memories change.
    #[tracing::instrument(
        name = "retrieval",
        level = "info",
        skip_all,
        fields(mode = options.mode.as_str(), top_k = options.top_k, cached = Empty, hits = Empty)
    )]
    pub async fn retrieve(
        &self,
        user: &str,
        query: &str,
        options: &RetrieveOptions,
    ) -> Result<Vec<Retrieved>> {
        let limits = self.store.limits();
        limits.check_user_id(user)?;
        limits.check_content(query)?;
        limits.check_page_size(options.top_k)?;
        limits.check_page_size(options.ranking.candidates)?;
        limits.check_filter(&options.filter)?;
        options.ranking.validate()?;
        // Recency moves with the clock: without a pinned `now`, results are computed at the
        // cache's clock step (a minute by default, a 1e-5 change of a 30-day recency), so
        // that repeated searches within a step get the same answer from the cache.
        let mut options = options.clone();
        let now = *options.now.get_or_insert_with(|| self.cache.now());
        let key = serde_json::to_string(&(query, &options))
            .map_err(|e| Error::Internal(format!("cache key: {e}")))?;
        let span = tracing::Span::current();
        if let Some(mut hit) = self.cache.get(user, &key) {
            // A memory that expired since the answer was cached is left out (no write
            // invalidated the cache for it).
            hit.retain(|r| options.filter.valid(&r.memory));
            span.record("cached", true);
            span.record("hits", hit.len());
            return Ok(hit);
        }
        span.record("cached", false);
        let generation = self.cache.generation(user);
        let out = self
            .scoped(user)
            .await?
            .retrieve_uncached(user, query, &options, now)
            .await?;
        span.record("hits", out.len());
        self.cache.put(user, &key, generation, out.clone());
        Ok(out)
    }

    async fn retrieve_uncached(
        &self,
        user: &str,
        query: &str,
        options: &RetrieveOptions,
        now: DateTime<Utc>,
    ) -> Result<Vec<Retrieved>> {
        let cfg = &options.ranking;
        let n = cfg.candidates.max(options.top_k);
        // Keys are searched with the memories; each found key stands for its memory. A user
        // with keys has up to twice the rows: half as many again are read (a key and its
        // memory often both match, so twice as many was more than the lists keep; on the
        // dev data 1.5× and 2× ranked alike, docs/benchmarks.md).
        let store_filter = key_search::with_keys(&options.filter).into_owned();
        let keyed = self
            .store
            .get_user(user)
            .await?
            .is_some_and(|u| u.memory_keys);
        let fetch = if keyed {
            (n + n / 2).min(self.limits().max_page_size).max(n)
        } else {
            n
        };
        let mode = options.mode;
        let model = self.embedder.model_id().to_owned();
        // The full-text search runs on its own task while the query is embedded and the
        // vector search runs here: on a multi-threaded runtime the two scans overlap.
        let text_task = match mode {
            SearchMode::Vector => None,
            _ => {
                let store = self.store.clone();
                let user = user.to_owned();
                let query = TextQuery {
                    text: query.to_owned(),
                    top_k: fetch,
                    filter: store_filter.clone(),
                };
                let span = tracing::info_span!("text_search", top_k = fetch);
                Some(tokio::spawn(
                    async move { store.text_search(&user, &query).await }.instrument(span),
                ))
            }
        };
        let query_vector = match mode {
            SearchMode::Text => None,
            _ => {
                let v = self
                    .embedder
                    .embed_one(query)
                    .instrument(tracing::info_span!("embed_query"))
                    .await?;
                Some(self.adapt_query(user, v).await?)
            }
        };
        let vector_hits = self
            .vector_hits(user, query_vector.as_deref(), fetch, store_filter.clone())
            .await?;
        let text_hits = match text_task {
            Some(t) => t
                .await
                .map_err(|e| Error::Internal(format!("text search task: {e}")))??,
            None => vec![],
        };
        let [mut vector_hits, mut text_hits] = self
            .resolve_keys_of(
                user,
                [
                    vector_hits
                        .into_iter()
                        .map(|h| (h.memory, h.score))
                        .collect(),
                    text_hits.into_iter().map(|h| (h.memory, h.score)).collect(),
                ],
                &options.filter,
            )
            .await?;
        vector_hits.truncate(n);
        text_hits.truncate(n);
        let mut candidates = retrieval::merge(vector_hits, text_hits);
        let query_emotion = if cfg.emotion_weight > 0.0 {
            self.emotion.detect(&[query]).await?.pop()
        } else {
            None
        };
        let cues = retrieval::QueryCues {
            emotion: query_emotion,
            ..retrieval::QueryCues::read(query, now, cfg)
        };
        // A query that names a time also searches inside it: the memories of that day or
        // month can be far down an unfiltered list.
        for w in &cues.windows {
            let Some(filter) = store_filter.within(w.since, w.until) else {
                continue;
            };
            let text_hits = if mode != SearchMode::Vector {
                self.store
                    .text_search(
                        user,
                        &TextQuery {
                            text: query.to_owned(),
                            top_k: fetch,
                            filter: filter.clone(),
                        },
                    )
                    .await?
            } else {
                vec![]
            };
            let vector_hits = self
                .vector_hits(user, query_vector.as_deref(), fetch, filter)
                .await?;
            let [text_hits, vector_hits] = self
                .resolve_keys_of(
                    user,
                    [
                        text_hits.into_iter().map(|h| (h.memory, h.score)).collect(),
                        vector_hits
                            .into_iter()
                            .map(|h| (h.memory, h.score))
                            .collect(),
                    ],
                    &options.filter,
                )
                .await?;
            retrieval::add_candidates(
                &mut candidates,
                text_hits
                    .into_iter()
                    .take(n)
                    .map(|(m, s)| (m, None, Some(s))),
            );
            retrieval::add_candidates(
                &mut candidates,
                vector_hits
                    .into_iter()
                    .take(n)
                    .map(|(m, s)| (m, Some(s), None)),
            );
        }
        // Stored vectors: for the similarity of text-only candidates, and for MMR.
        if retrieval::needs_vectors(mode, cfg) {
            self.load_vectors(user, &model, &mut candidates).await?;
        }
        retrieval::score(
            &mut candidates,
            query_vector.as_deref(),
            mode,
            cfg,
            now,
            &cues,
        );
        // The turns around the best candidates join them, and lend them their relevance.
        if cfg.uses_neighbours() && !candidates.is_empty() {
            retrieval::sort(&mut candidates);
            let centres: Vec<i64> = candidates
                .iter()
                .take(retrieval::NEIGHBOURHOOD_CENTRES)
                .map(|c| c.memory.id)
                .collect();
            let pairs = self
                .store
                .neighbours(user, &centres, cfg.neighbours)
                .await?;
            let links: Vec<(i64, i64)> = pairs.iter().map(|(c, m)| (*c, m.id)).collect();
            let before = candidates.len();
            retrieval::add_candidates(
                &mut candidates,
                pairs
                    .into_iter()
                    .filter(|(_, m)| options.filter.matches(m))
                    .map(|(_, m)| (m, None, None)),
            );
            if query_vector.is_some() {
                // `score` gives them their similarity from these.
                self.load_vectors(user, &model, &mut candidates[before..])
                    .await?;
            }
            retrieval::score(
                &mut candidates,
                query_vector.as_deref(),
                mode,
                cfg,
                now,
                &cues,
            );
            retrieval::apply_neighbours(&mut candidates, &links, cfg.neighbour_weight);
        }
        if let Some(reranker) = &self.reranker
            && cfg.cross_encoder_weight > 0.0
            && cfg.cross_encoder_top_n > 0
        {
            retrieval::sort(&mut candidates);
            let top = cfg.cross_encoder_top_n.min(candidates.len());
            let docs: Vec<String> = candidates[..top]
                .iter()
                .map(|c| c.memory.content.clone())
                .collect();
            let logits = reranker
                .score(query, docs)
                .instrument(tracing::info_span!("rerank", candidates = top))
                .await?;
            retrieval::apply_cross_encoder(
                &mut candidates[..top],
                &logits,
                cfg.cross_encoder_weight,
            );
            // Candidates the cross-encoder did not see cannot outrank those it did.
            let floor = candidates[..top]
                .iter()
                .map(|c| c.score)
                .fold(f32::INFINITY, f32::min);
            for c in candidates[top..].iter_mut() {
                c.score = c.score.min(floor - f32::EPSILON);
            }
        }
        Ok(retrieval::finish(candidates, options.top_k, cfg))
    }

    /// The stored vectors of the candidates (none where a memory has none for `model`).
    /// The store's `top_k` nearest memories to `vector` that pass `filter`; none without a
    /// vector (text mode).
    async fn vector_hits(
        &self,
        user: &str,
        vector: Option<&[f32]>,
        top_k: usize,
        filter: Filter,
    ) -> Result<Vec<SearchHit>> {
        let Some(v) = vector else {
            return Ok(vec![]);
        };
        let query = VectorQuery {
            embedding: self.embedding(v.to_vec()),
            top_k,
            min_score: None,
            filter,
            cursor: None,
        };
        Ok(self
            .store
            .search(user, &query)
            .instrument(tracing::info_span!("vector_search", top_k))
            .await?
            .hits)
    }

    async fn load_vectors(
        &self,
        user: &str,
        model: &str,
        candidates: &mut [retrieval::Candidate],
    ) -> Result<()> {
        if candidates.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = candidates.iter().map(|c| c.memory.id).collect();
        let mut vectors = self.store.vectors(user, model, &ids).await?;
        for c in candidates.iter_mut() {
            c.vector = vectors.remove(&c.memory.id);
        }
        Ok(())
    }

    /// Embeds texts with the engine's model (1 to [`MAX_EMBED_INPUTS`] of them, each within
    /// the content limit). `model`, when given, must name that model.
    pub async fn embed_texts(&self, texts: Vec<String>, model: Option<&str>) -> Result<Embeddings> {
        if texts.is_empty() || texts.len() > MAX_EMBED_INPUTS {
            return Err(Error::invalid(format!(
                "send 1 to {MAX_EMBED_INPUTS} inputs"
            )));
        }
        let limits = self.store.limits();
        for (i, t) in texts.iter().enumerate() {
            limits
                .check_content(t)
                .map_err(|e| Error::invalid(format!("input {i}: {e}")))?;
        }
        let served = self.embedder.model_id();
        if let Some(m) = model
            && m != served
        {
            return Err(Error::not_found("embedding model", m.to_owned()));
        }
        let tokens = texts
            .iter()
            .map(|t| {
                self.embedder
                    .token_spans(t)
                    .map_or(t.len().div_ceil(4), |s| s.len())
            })
            .sum();
        let vectors = self.embedder.embed(texts).await?;
        Ok(Embeddings {
            vectors,
            model: served.to_owned(),
            tokens,
        })
    }
}
