//! The engine: a store and an embedder working together. This is what the command line, the
//! server and the bindings call; it embeds what it stores and what it searches for.
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cache::{CacheStats, QueryCache, QueryCacheConfig};
use crate::chunk::{ChunkConfig, chunk_ranges};
use crate::context::{
    AssembledContext, ChatTurn, ContextBudget, ContextInput, Summarizer, SummaryPolicy,
    TokenCounter, assemble,
};
use crate::embed::Embedder;
use crate::emotion::{EmotionDetector, EmotionScore, LexiconDetector};
use crate::error::{Error, Result};
use crate::events::{Event, EventBus, MemoryAction, MemoryEvent, WireEvent, WireMessage};
use crate::importance::importance;
use crate::jobs::{self, Job, JobKind, NewJob};
use crate::rerank::Reranker;
use crate::retrieval::{self, EMOTION_CONFIDENCE_KEY, RankingConfig, Retrieved, SearchMode};
use crate::store::{Actor, MemoryStore};
use crate::types::{
    AppendedMessage, DeletionReport, Embedding, Filter, Memory, MemoryKind, MemoryPatch, Message,
    MessageWrite, NewMemory, NewMessage, NewSummary, Page, PageRequest, Role, SearchPage, Summary,
    TextQuery, VectorQuery,
};

/// Messages embedded between two progress reports.
const PROGRESS_STEP: usize = 256;

/// Search options of [`Engine::search`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchOptions {
    /// Hits per page.
    pub top_k: usize,
    /// Drop hits scoring below this.
    pub min_score: Option<f32>,
    /// Narrowing.
    #[serde(default)]
    pub filter: Filter,
    /// Continue after a previous page.
    pub cursor: Option<String>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self {
            top_k: 10,
            min_score: None,
            filter: Filter::default(),
            cursor: None,
        }
    }
}

/// Options of [`Engine::retrieve`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetrieveOptions {
    /// Results wanted.
    pub top_k: usize,
    /// Which retrievers run.
    pub mode: SearchMode,
    /// Narrowing.
    pub filter: Filter,
    /// Re-ranking.
    pub ranking: RankingConfig,
    /// "Now" for recency (the current time when absent).
    pub now: Option<DateTime<Utc>>,
}

impl Default for RetrieveOptions {
    fn default() -> Self {
        Self {
            top_k: 10,
            mode: SearchMode::Hybrid,
            filter: Filter::default(),
            ranking: RankingConfig::default(),
            now: None,
        }
    }
}

/// Options of [`Engine::build_context`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContextOptions {
    /// The system prompt.
    pub system: Option<String>,
    /// The persona; the session's own persona when absent.
    pub persona: Option<String>,
    /// Token budget and shares.
    pub budget: ContextBudget,
    /// How memories are retrieved for the new message.
    pub retrieve: RetrieveOptions,
    /// Unsummarised messages loaded at most (the newest).
    pub max_history: usize,
    /// The conversation so far as the caller holds it (an OpenAI-style client sends it with
    /// every request), oldest first. When given it replaces the stored history and summaries;
    /// its system turns are used as the system prompt when `system` is absent.
    pub conversation: Option<Vec<ChatTurn>>,
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self {
            system: None,
            persona: None,
            budget: ContextBudget::default(),
            retrieve: RetrieveOptions::default(),
            max_history: 500,
            conversation: None,
        }
    }
}

/// The running fan-out of an engine's events (see [`Engine::start_fanout`]); stops when
/// dropped.
pub struct FanoutHandle {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FanoutHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A store, an embedder and the retrieval machinery around them.
#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn MemoryStore>,
    embedder: Arc<dyn Embedder>,
    emotion: Arc<dyn EmotionDetector>,
    reranker: Option<Arc<dyn Reranker>>,
    cache: Arc<QueryCache>,
    chunking: ChunkConfig,
    /// (user, session) pairs being summarised now.
    summarizing: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
    events: EventBus,
}

impl Engine {
    /// Puts the two together, with the lexicon emotion detector, no cross-encoder, the
    /// default query cache and default chunking.
    pub fn new(store: Arc<dyn MemoryStore>, embedder: Arc<dyn Embedder>) -> Self {
        Self {
            store,
            embedder,
            emotion: Arc::new(LexiconDetector),
            reranker: None,
            cache: Arc::new(QueryCache::new(QueryCacheConfig::default())),
            chunking: ChunkConfig::default(),
            summarizing: Arc::default(),
            events: EventBus::default(),
        }
    }

    /// Changes to memories and jobs made through this engine (and its clones, and other
    /// replicas once [`Engine::start_fanout`] ran), as they happen.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Publishes an event to this engine's subscribers (and the other replicas').
    pub fn publish(&self, event: Event) {
        self.events.publish(event);
    }

    /// The user's data changed: drops their cached queries here and on the other replicas.
    fn changed(&self, user: &str) {
        self.cache.invalidate(user);
        self.events.send_remote(WireEvent::Invalidate {
            user: user.to_owned(),
        });
    }

    fn publish_memory(&self, event: MemoryEvent) {
        self.events.publish(Event::Memory(Box::new(event)));
    }

    /// Starts the fan-out of events between the replicas that share this engine's database
    /// (Postgres `LISTEN`/`NOTIFY`): events published here reach the other replicas'
    /// subscribers and theirs reach this one's; their writes drop this replica's cached
    /// queries. `None` when the store has no fan-out (the embedded store is one process).
    /// Runs until the handle is dropped.
    pub async fn start_fanout(&self) -> Result<Option<FanoutHandle>> {
        let Some(fanout) = self.store.fanout() else {
            return Ok(None);
        };
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let origin = format!(
            "{}-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros(),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        // Listen before anything is sent, so that no event of this replica's is missed.
        let mut listener = fanout.listen().await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<WireEvent>();
        if !self.events.set_outbound(tx) {
            return Err(Error::invalid(
                "the fan-out of this engine is already started",
            ));
        }
        let sender = {
            let fanout = fanout.clone();
            let origin = origin.clone();
            tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    let message = WireMessage {
                        origin: origin.clone(),
                        event,
                    };
                    let payload = match serde_json::to_string(&message) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(error = %e, "fan-out: cannot encode an event");
                            continue;
                        }
                    };
                    if let Err(e) = fanout.notify(&payload).await {
                        tracing::warn!(error = %e, "fan-out: cannot send an event");
                    }
                }
            })
        };
        let engine = self.clone();
        let receiver = tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(payload) => engine.receive_remote(&origin, &payload).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "fan-out: listener lost; reconnecting");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        match fanout.listen().await {
                            Ok(l) => listener = l,
                            Err(e) => tracing::warn!(error = %e, "fan-out: cannot listen"),
                        }
                    }
                }
            }
        });
        Ok(Some(FanoutHandle {
            tasks: vec![sender, receiver],
        }))
    }

    /// Publishes here what another replica announced: a memory read from the store within the
    /// event's user (the wire carries its id only), a job as it was sent.
    async fn receive_remote(&self, own: &str, payload: &str) {
        let message: WireMessage = match serde_json::from_str(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "fan-out: malformed message ignored");
                return;
            }
        };
        if message.origin == own {
            return;
        }
        match message.event {
            WireEvent::Invalidate { user } => self.cache.invalidate(&user),
            WireEvent::Memory {
                user,
                action,
                id,
                kind,
            } => {
                let memory = if action == MemoryAction::Deleted {
                    None
                } else {
                    match self.store.get_memory(&user, id).await {
                        Ok(Some(m)) => Some(m),
                        // Deleted since (its deletion follows) or unreadable: nothing to show.
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "fan-out: cannot read a memory");
                            return;
                        }
                    }
                };
                self.events
                    .publish_local(Event::Memory(Box::new(MemoryEvent {
                        user,
                        action,
                        memory_id: id,
                        kind,
                        memory,
                    })));
            }
            WireEvent::Job { job } => self.events.publish_local(Event::Job(job)),
        }
    }

    fn published(&self, user: &str, action: MemoryAction, memory: &Memory) {
        self.publish_memory(MemoryEvent {
            user: user.to_owned(),
            action,
            memory_id: memory.id,
            kind: Some(memory.kind),
            memory: (action != MemoryAction::Deleted).then(|| memory.clone()),
        });
    }

    /// Uses another emotion detector (a transformer classifier, say) at ingest and query time.
    pub fn with_emotion_detector(mut self, detector: Arc<dyn EmotionDetector>) -> Self {
        self.emotion = detector;
        self
    }

    /// Re-scores the top candidates of every retrieval with a cross-encoder.
    pub fn with_reranker(mut self, reranker: Arc<dyn Reranker>) -> Self {
        self.reranker = Some(reranker);
        self
    }

    /// Replaces the query cache (capacity 0 turns it off).
    pub fn with_query_cache(mut self, config: QueryCacheConfig) -> Self {
        self.cache = Arc::new(QueryCache::new(config));
        self
    }

    /// Changes how long messages are split.
    pub fn with_chunking(mut self, chunking: ChunkConfig) -> Self {
        self.chunking = chunking;
        self
    }

    /// Query cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Tells the query cache that the user's memories changed by another way than this
    /// engine (the engine's own writes do it themselves).
    pub fn invalidate(&self, user: &str) {
        self.changed(user);
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn MemoryStore> {
        &self.store
    }

    /// The embedder.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    fn embedding(&self, vector: Vec<f32>) -> Embedding {
        Embedding {
            model: self.embedder.model_id().to_owned(),
            vector,
        }
    }

    /// Stores messages, each also as a searchable memory, in one transaction. The store checks
    /// every message before the (slow) embedding starts, so bad input costs nothing.
    pub async fn add_messages(
        &self,
        user: &str,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<AppendedMessage>> {
        self.add_messages_with_progress(user, messages, &|_| {})
            .await
    }

    /// [`Engine::add_messages`], calling `progress` with the number of messages embedded so
    /// far.
    pub async fn add_messages_with_progress(
        &self,
        user: &str,
        messages: Vec<NewMessage>,
        progress: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<Vec<AppendedMessage>> {
        let limits = self.store.limits();
        limits.check_user_id(user)?;
        for (i, m) in messages.iter().enumerate() {
            limits
                .check_message(m)
                .map_err(|e| crate::Error::invalid(format!("message {}: {e}", i + 1)))?;
        }
        // Split long messages so that no part goes unembedded; each chunk is one memory.
        let max = self
            .chunking
            .max_tokens
            .or(self.embedder.max_tokens())
            .unwrap_or(usize::MAX);
        let mut pieces: Vec<(usize, String)> = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let ranges = match self.embedder.token_spans(&m.content) {
                Some(spans) if spans.len() > max => {
                    chunk_ranges(&m.content, &spans, max, self.chunking.overlap_tokens)
                }
                _ => vec![(0, m.content.len())],
            };
            pieces.extend(
                ranges
                    .into_iter()
                    .map(|(a, b)| (i, m.content[a..b].to_owned())),
            );
        }
        let texts: Vec<&str> = pieces.iter().map(|(_, t)| t.as_str()).collect();
        let emotions = self.emotion.detect(&texts).await?;
        let mut vectors = Vec::with_capacity(pieces.len());
        let mut done = 0usize;
        for chunk in pieces.chunks(PROGRESS_STEP) {
            vectors.extend(
                self.embedder
                    .embed(chunk.iter().map(|(_, t)| t.clone()).collect())
                    .await?,
            );
            done = chunk.last().map_or(done, |(i, _)| i + 1);
            progress(done);
        }
        let mut memories: Vec<Vec<NewMemory>> = vec![Vec::new(); messages.len()];
        let counts: Vec<usize> = {
            let mut c = vec![0usize; messages.len()];
            for (i, _) in &pieces {
                c[*i] += 1;
            }
            c
        };
        for (((i, text), vector), emotion) in pieces.into_iter().zip(vectors).zip(emotions) {
            let n = memories[i].len();
            let mut metadata = emotion_metadata(emotion);
            if counts[i] > 1 {
                metadata["chunk"] = json!(n);
                metadata["chunks"] = json!(counts[i]);
            }
            memories[i].push(NewMemory {
                importance: Some(importance(&text, Some(emotion))),
                emotion: Some(emotion.emotion.as_str().to_owned()),
                metadata,
                ..NewMemory::new(MemoryKind::Message, text, self.embedding(vector))
            });
        }
        let writes = messages
            .into_iter()
            .zip(memories)
            .map(|(message, memories)| MessageWrite { memories, message })
            .collect();
        let out = self.store.append_messages(user, writes).await;
        self.changed(user);
        if let Ok(appended) = &out {
            for a in appended {
                for &id in &a.memory_ids {
                    self.publish_memory(MemoryEvent {
                        user: user.to_owned(),
                        action: MemoryAction::Added,
                        memory_id: id,
                        kind: Some(MemoryKind::Message),
                        memory: None,
                    });
                }
            }
        }
        out
    }

    /// Stores a free-standing memory (a fact, by default).
    pub async fn add_memory(&self, user: &str, memory: NewMemoryText) -> Result<Memory> {
        self.store.limits().check_user_id(user)?;
        self.store.limits().check_content(&memory.content)?;
        let vector = self.embedder.embed_one(&memory.content).await?;
        let emotion = self
            .emotion
            .detect(&[memory.content.as_str()])
            .await?
            .pop()
            .unwrap_or(EmotionScore::neutral(0.5));
        let stored = self
            .store
            .add_memories(
                user,
                vec![NewMemory {
                    session: memory.session,
                    tags: memory.tags,
                    importance: Some(
                        memory
                            .importance
                            .unwrap_or_else(|| importance(&memory.content, Some(emotion))),
                    ),
                    emotion: Some(emotion.emotion.as_str().to_owned()),
                    metadata: emotion_metadata(emotion),
                    ..NewMemory::new(memory.kind, memory.content, self.embedding(vector))
                }],
            )
            .await;
        self.changed(user);
        let memory = stored?
            .pop()
            .ok_or_else(|| crate::Error::Internal("store returned no memory".into()))?;
        self.published(user, MemoryAction::Added, &memory);
        Ok(memory)
    }

    /// Changes a memory; new text is embedded again (and replaces the old embeddings).
    pub async fn update_memory(&self, user: &str, id: i64, update: MemoryUpdate) -> Result<Memory> {
        let limits = self.store.limits();
        limits.check_user_id(user)?;
        let embedding = match &update.content {
            Some(text) => {
                limits.check_content(text)?;
                Some(self.embedding(self.embedder.embed_one(text).await?))
            }
            None => None,
        };
        if let Some(i) = update.importance
            && !(0.0..=1.0).contains(&i)
        {
            return Err(Error::invalid("importance must be in [0, 1]"));
        }
        let out = self
            .store
            .update_memory(
                user,
                id,
                MemoryPatch {
                    content: update.content,
                    embedding,
                    tags: update.tags,
                    metadata: update.metadata,
                    importance: update.importance,
                    emotion: None,
                },
            )
            .await;
        self.changed(user);
        let memory = out?;
        self.published(user, MemoryAction::Updated, &memory);
        Ok(memory)
    }

    /// Deletes everything of the user (messages, memories and their vectors, summaries,
    /// settings) and drops their cached queries; `actor` is written to the audit log.
    pub async fn delete_user(&self, user: &str, actor: &Actor) -> Result<DeletionReport> {
        let out = self.store.delete_user(user, actor).await;
        self.changed(user);
        out
    }

    /// Schedules the deletion of everything of the user at `at` (a time in the past means
    /// as soon as a job runner looks; at most [`jobs::MAX_SCHEDULE_AHEAD`] ahead). The
    /// returned job can be watched and, until it starts, cancelled. One scheduled deletion
    /// per user at a time.
    pub async fn schedule_delete_user(
        &self,
        user: &str,
        at: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Job> {
        let ahead = at - Utc::now();
        if ahead.num_seconds() > jobs::MAX_SCHEDULE_AHEAD.as_secs() as i64 {
            return Err(Error::invalid(format!(
                "a deletion can be scheduled at most {} days ahead",
                jobs::MAX_SCHEDULE_AHEAD.as_secs() / 86_400
            )));
        }
        let job = self
            .store
            .create_job(
                user,
                NewJob {
                    kind: JobKind::DeleteUser,
                    run_at: at,
                    params: json!({ "actor": actor.0 }),
                },
                actor,
            )
            .await?;
        self.publish(Event::Job(Box::new(job.clone())));
        Ok(job)
    }

    /// One of the user's jobs.
    pub async fn job(&self, user: &str, id: i64) -> Result<Option<Job>> {
        self.store.get_job(user, id).await
    }

    /// The user's jobs, newest first.
    pub async fn jobs(&self, user: &str, page: &PageRequest) -> Result<Page<Job>> {
        self.store.list_jobs(user, page).await
    }

    /// Cancels one of the user's queued jobs.
    pub async fn cancel_job(&self, user: &str, id: i64, actor: &Actor) -> Result<Job> {
        let job = self.store.cancel_job(user, id, actor).await?;
        self.publish(Event::Job(Box::new(job.clone())));
        Ok(job)
    }

    /// Semantic search over the user's memories.
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
        let vector = self.embedder.embed_one(text).await?;
        self.store
            .search(
                user,
                &VectorQuery {
                    embedding: self.embedding(vector),
                    top_k: options.top_k,
                    min_score: options.min_score,
                    filter: options.filter.clone(),
                    cursor: options.cursor.clone(),
                },
            )
            .await
    }
}

impl Engine {
    /// Deletes memories (and invalidates the user's cached queries).
    pub async fn delete_memories(&self, user: &str, ids: &[i64]) -> Result<u64> {
        self.store.limits().check_page_size(ids.len())?;
        // Which of them exist (and are the user's) decides which deletions are announced.
        let mut existing = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(m) = self.store.get_memory(user, id).await? {
                existing.push(m);
            }
        }
        let out = self.store.delete_memories(user, ids).await;
        self.changed(user);
        if out.is_ok() {
            for m in &existing {
                self.published(user, MemoryAction::Deleted, m);
            }
        }
        out
    }

    /// The memories that matter for `query`: candidates from the mode's retrievers, fused,
    /// re-ranked with the configured signals (and the cross-encoder, when there is one),
    /// thresholded and diversified. Repeated queries are answered from the query cache until
    /// the user's memories change.
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
        let key = serde_json::to_string(&(query, options))
            .map_err(|e| Error::Internal(format!("cache key: {e}")))?;
        if let Some(hit) = self.cache.get(user, &key) {
            return Ok(hit);
        }
        let generation = self.cache.generation(user);
        let out = self.retrieve_uncached(user, query, options).await?;
        // Results that depend on the clock are not reused.
        if options.now.is_some() || options.ranking.recency_weight == 0.0 {
            self.cache.put(user, &key, generation, out.clone());
        }
        Ok(out)
    }

    async fn retrieve_uncached(
        &self,
        user: &str,
        query: &str,
        options: &RetrieveOptions,
    ) -> Result<Vec<Retrieved>> {
        let cfg = &options.ranking;
        let n = cfg.candidates.max(options.top_k);
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
                    top_k: n,
                    filter: options.filter.clone(),
                };
                Some(tokio::spawn(async move {
                    store.text_search(&user, &query).await
                }))
            }
        };
        let query_vector = match mode {
            SearchMode::Text => None,
            _ => Some(self.embedder.embed_one(query).await?),
        };
        let vector_hits = match &query_vector {
            Some(v) => {
                self.store
                    .search(
                        user,
                        &VectorQuery {
                            embedding: self.embedding(v.clone()),
                            top_k: n,
                            min_score: None,
                            filter: options.filter.clone(),
                            cursor: None,
                        },
                    )
                    .await?
                    .hits
            }
            None => vec![],
        };
        let text_hits = match text_task {
            Some(t) => t
                .await
                .map_err(|e| Error::Internal(format!("text search task: {e}")))??,
            None => vec![],
        };
        let mut candidates = retrieval::merge(
            vector_hits
                .into_iter()
                .map(|h| (h.memory, h.score))
                .collect(),
            text_hits.into_iter().map(|h| (h.memory, h.score)).collect(),
        );
        // Stored vectors: for the similarity of text-only candidates, and for MMR.
        let needs_vectors = cfg.mmr_lambda.is_some_and(|l| l < 1.0)
            || (mode == SearchMode::Hybrid
                && matches!(cfg.fusion, retrieval::Fusion::Weighted { .. }));
        if needs_vectors && !candidates.is_empty() {
            let ids: Vec<i64> = candidates.iter().map(|c| c.memory.id).collect();
            let mut vectors = self.store.vectors(user, &model, &ids).await?;
            for c in candidates.iter_mut() {
                c.vector = vectors.remove(&c.memory.id);
                if c.signals.similarity.is_none()
                    && let (Some(q), Some(v)) = (&query_vector, &c.vector)
                {
                    c.signals.similarity = Some(crate::embed::cosine(q, v));
                }
            }
        }
        retrieval::relevance(&mut candidates, mode, cfg.fusion);
        let query_emotion = if cfg.emotion_weight > 0.0 {
            self.emotion.detect(&[query]).await?.pop()
        } else {
            None
        };
        retrieval::apply_signals(
            &mut candidates,
            cfg,
            options.now.unwrap_or_else(Utc::now),
            query_emotion,
        );
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
            let logits = reranker.score(query, docs).await?;
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
}

impl Engine {
    /// The session's summaries and the messages after the last one (oldest first, the newest
    /// `max` at most).
    async fn unsummarized(
        &self,
        user: &str,
        session: &str,
        max: usize,
    ) -> Result<(Vec<Summary>, Vec<Message>)> {
        let summaries = self.store.list_summaries(user, session).await?;
        let covered = summaries
            .iter()
            .filter_map(|s| s.last_message_id)
            .max()
            .unwrap_or(0);
        let mut messages: std::collections::VecDeque<Message> = Default::default();
        let mut page = PageRequest {
            first: self.store.limits().max_page_size,
            after: None,
        };
        loop {
            let got = self.store.list_messages(user, session, &page).await?;
            for m in got.items {
                if m.id > covered {
                    messages.push_back(m);
                    if messages.len() > max {
                        messages.pop_front();
                    }
                }
            }
            match got.next_cursor {
                Some(c) => page.after = Some(c),
                None => break,
            }
        }
        Ok((summaries, messages.into()))
    }

    /// The prompt for replying to `message` in `session`: system prompt and persona, the
    /// session's summaries, memories retrieved for the message, and recent history, within
    /// the token budget of the chat model whose tokenizer `counter` is. The message itself is
    /// not stored here.
    pub async fn build_context(
        &self,
        user: &str,
        session: &str,
        message: &str,
        counter: &dyn TokenCounter,
        options: &ContextOptions,
    ) -> Result<AssembledContext> {
        Ok(self
            .context_with_memories(user, session, message, counter, options)
            .await?
            .0)
    }

    /// [`Engine::build_context`], also returning the memories retrieved for the message
    /// (best first; the report says which of them fitted).
    pub async fn context_with_memories(
        &self,
        user: &str,
        session: &str,
        message: &str,
        counter: &dyn TokenCounter,
        options: &ContextOptions,
    ) -> Result<(AssembledContext, Vec<Retrieved>)> {
        options.budget.validate()?;
        let limits = self.store.limits();
        limits.check_user_id(user)?;
        limits.check_session_id(session)?;
        limits.check_content(message)?;
        let persona = match &options.persona {
            Some(p) => Some(p.clone()),
            None => self
                .store
                .get_session(user, session)
                .await?
                .and_then(|s| s.persona),
        };
        let mut system = options.system.clone();
        let (summaries, history) = match &options.conversation {
            None => {
                self.unsummarized(user, session, options.max_history)
                    .await?
            }
            Some(turns) => {
                let mut history = Vec::with_capacity(turns.len());
                let mut system_turns = Vec::new();
                for (i, t) in turns.iter().enumerate() {
                    limits.check_content(&t.content).map_err(|e| {
                        Error::invalid(format!("conversation message {}: {e}", i + 1))
                    })?;
                    if t.role == Role::System {
                        system_turns.push(t.content.as_str());
                        continue;
                    }
                    history.push(Message {
                        // Not stored: ids below zero never match a stored message.
                        id: -(i as i64) - 1,
                        session: session.to_owned(),
                        role: t.role,
                        content: t.content.clone(),
                        tags: Vec::new(),
                        metadata: Value::Null,
                        created_at: Utc::now(),
                    });
                }
                if system.is_none() && !system_turns.is_empty() {
                    system = Some(system_turns.join("\n\n"));
                }
                (Vec::new(), history)
            }
        };
        let memories = self.retrieve(user, message, &options.retrieve).await?;
        let assembled = assemble(
            &ContextInput {
                system: system.as_deref(),
                persona: persona.as_deref(),
                memories: &memories,
                summaries: &summaries,
                history: &history,
                message,
            },
            counter,
            &options.budget,
        )?;
        Ok((assembled, memories))
    }

    /// Folds the session's older history into a summary when `policy` says it is due: the
    /// messages not yet covered by a summary, less the newest `keep_recent`, are summarised
    /// (with the previous summary) and stored as a summary memory. Returns the new summary,
    /// or `None` when nothing was due (or another summarisation of the session is running).
    pub async fn summarize_if_due(
        &self,
        user: &str,
        session: &str,
        summarizer: &dyn Summarizer,
        policy: SummaryPolicy,
    ) -> Result<Option<Summary>> {
        let key = (user.to_owned(), session.to_owned());
        if !self
            .summarizing
            .lock()
            .expect("summarizing set")
            .insert(key.clone())
        {
            return Ok(None);
        }
        let out = self.summarize_now(user, session, summarizer, policy).await;
        self.summarizing
            .lock()
            .expect("summarizing set")
            .remove(&key);
        out
    }

    async fn summarize_now(
        &self,
        user: &str,
        session: &str,
        summarizer: &dyn Summarizer,
        policy: SummaryPolicy,
    ) -> Result<Option<Summary>> {
        let (summaries, history) = self.unsummarized(user, session, usize::MAX).await?;
        if history.len() < policy.trigger_messages.max(1) || history.len() <= policy.keep_recent {
            return Ok(None);
        }
        let fold = &history[..history.len() - policy.keep_recent];
        let previous = summaries.last().map(|s| s.content.as_str());
        let text = summarizer.summarize(previous, fold).await?;
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::Internal(
                "the summarizer returned an empty summary".into(),
            ));
        }
        let vector = self.embedder.embed_one(text).await?;
        let summary = self
            .store
            .add_summary(
                user,
                NewSummary {
                    session: session.to_owned(),
                    content: text.to_owned(),
                    first_message_id: fold.first().map(|m| m.id),
                    last_message_id: fold.last().map(|m| m.id),
                    model: Some(summarizer.model_id().to_owned()),
                    embedding: self.embedding(vector),
                },
            )
            .await;
        self.changed(user);
        summary.map(Some)
    }

    /// [`Engine::summarize_if_due`] on its own task, off the reply path.
    pub fn spawn_summarize_if_due(
        &self,
        user: &str,
        session: &str,
        summarizer: Arc<dyn Summarizer>,
        policy: SummaryPolicy,
    ) -> tokio::task::JoinHandle<Result<Option<Summary>>> {
        let engine = self.clone();
        let (user, session) = (user.to_owned(), session.to_owned());
        tokio::spawn(async move {
            engine
                .summarize_if_due(&user, &session, summarizer.as_ref(), policy)
                .await
        })
    }
}

fn emotion_metadata(emotion: EmotionScore) -> Value {
    json!({ EMOTION_CONFIDENCE_KEY: (emotion.confidence * 1000.0).round() / 1000.0 })
}

/// A memory given as text, for [`Engine::add_memory`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMemoryText {
    /// What it is.
    pub kind: MemoryKind,
    /// The text.
    pub content: String,
    /// Session it belongs to.
    pub session: Option<String>,
    /// Labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Importance in [0, 1].
    pub importance: Option<f32>,
}

/// Changes to a memory for [`Engine::update_memory`]; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryUpdate {
    /// New text (embedded again).
    pub content: Option<String>,
    /// New labels.
    pub tags: Option<Vec<String>>,
    /// New metadata (a JSON object).
    pub metadata: Option<Value>,
    /// New importance in [0, 1].
    pub importance: Option<f32>,
}
