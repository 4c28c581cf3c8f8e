//! The engine: a store and an embedder working together. This is what the command line, the
//! server and the bindings call — every read and write of a user's data goes through it, so
//! that each write embeds what it stores, publishes its events and keeps the query cache
//! honest. Its operations are split by area into the child modules.
mod context_keys;
mod data;
mod deep_memory;
mod fanout;
mod jobs;
mod key_search;
mod keys;
mod memories;
mod prompt;
mod reembed;
mod search;
mod sessions;
mod summaries;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cache::{CacheStats, QueryCache, QueryCacheConfig};
use crate::context::{ChatTurn, ContextBudget};
use crate::embed::Embedder;
use crate::emotion::{EmotionDetector, EmotionScore, LexiconDetector};
use crate::error::Result;
use crate::events::{Event, EventBus, MemoryAction, MemoryEvent, WireEvent};
use crate::jobs::JobQueue;
use crate::limits::Limits;
use crate::rerank::Reranker;
use crate::retrieval::RetrieveOptions;
use crate::store::MemoryStore;
use crate::types::{Embedding, Filter, Memory, MemoryKind};

pub use deep_memory::TrainProgress;
pub use fanout::FanoutHandle;
pub use memories::MAX_HISTORY;
pub use reembed::{ReembedOptions, ReembedReport};
pub use search::{Embeddings, MAX_EMBED_INPUTS};
pub use summaries::SummaryStats;

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

/// A store, an embedder and the retrieval machinery around them.
#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn MemoryStore>,
    jobs: Arc<dyn JobQueue>,
    embedder: Arc<dyn Embedder>,
    emotion: Arc<dyn EmotionDetector>,
    reranker: Option<Arc<dyn Reranker>>,
    cache: Arc<QueryCache>,
    /// (user, session) pairs being summarised now.
    summarizing: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
    summaries: Arc<summaries::Counters>,
    events: EventBus,
    /// [`Engine::add_memory`] merges into a memory at least this similar (off by default;
    /// [`Engine::with_dedupe`]).
    dedupe: Option<f32>,
    /// Time to live in seconds of memories by tag ([`Engine::with_tag_ttl`]).
    tag_ttl: Arc<std::collections::BTreeMap<String, u64>>,
    /// The data key: backups are encrypted with it (see [`Engine::with_data_key`]).
    data_key: Option<Arc<crate::crypto::DataKey>>,
    /// Data keys rotated out, which restores also read backups with.
    previous_data_keys: Vec<Arc<crate::crypto::DataKey>>,
    /// While a change of embedding model is rolled out: the model being left, which users
    /// not yet re-embedded search with (see [`Engine::reembed`]).
    previous_embedder: Option<Arc<dyn Embedder>>,
    /// The chat model that writes deep memory questions ([`Engine::with_llm`]).
    llm: Option<Arc<dyn crate::llm::ChatModel>>,
    /// Users' query adapters as searches use them.
    adapters: deep_memory::AdapterCache,
}

/// A similarity (cosine by default) at or above which a new free-standing memory is the same
/// as one the user has of the same kind, for [`Engine::with_dedupe`]: "I am allergic to
/// peanuts" and "I am allergic to peanuts." score 0.99, "my number is 1" and "my number is 2"
/// 0.86.
pub const DEDUPE_SIMILARITY: f32 = 0.95;

impl Engine {
    /// Puts the two together, with the lexicon emotion detector, no cross-encoder and the
    /// default query cache.
    pub fn new(store: Arc<dyn MemoryStore>, embedder: Arc<dyn Embedder>) -> Self {
        Self {
            jobs: store.jobs(),
            store,
            embedder,
            emotion: Arc::new(LexiconDetector),
            reranker: None,
            cache: Arc::new(QueryCache::new(QueryCacheConfig::default())),
            summarizing: Arc::default(),
            summaries: Arc::default(),
            events: EventBus::default(),
            dedupe: None,
            tag_ttl: Arc::default(),
            data_key: None,
            previous_data_keys: Vec::new(),
            previous_embedder: None,
            llm: None,
            adapters: Arc::default(),
        }
    }

    /// An engine that loads no model, for data management (listing, export, deletion,
    /// settings, jobs): operations that embed fail with a model error.
    pub fn without_models(store: Arc<dyn MemoryStore>) -> Self {
        Self::new(store, Arc::new(crate::embed::NoEmbedder))
    }

    /// Encrypts backups with the data key (AES-256-GCM, [`crate::crypto`]); restores then
    /// read files encrypted with it (and unencrypted ones).
    pub fn with_data_key(mut self, key: Option<Arc<crate::crypto::DataKey>>) -> Self {
        self.data_key = key;
        self
    }

    /// Data keys rotated out (`encryption.previous_key_files`): restores also read backups
    /// encrypted with one of them, and seal the rows with the store's current key.
    pub fn with_previous_data_keys(mut self, keys: Vec<Arc<crate::crypto::DataKey>>) -> Self {
        self.previous_data_keys = keys;
        self
    }

    /// Rolls out a change of embedding model: `previous` is the model the stored vectors
    /// were made with. Each user keeps searching (and writing) with it until
    /// [`Engine::reembed`] has given every memory of theirs a vector of the configured model
    /// and switched them over. Users seen for the first time start on the configured model.
    pub fn with_previous_embedder(mut self, previous: Option<Arc<dyn Embedder>>) -> Self {
        self.previous_embedder = previous.filter(|p| p.model_id() != self.embedder.model_id());
        self.store.set_embedding_model_for_new_users(
            self.previous_embedder
                .as_ref()
                .map(|_| self.embedder.model_id().to_owned()),
        );
        self
    }

    /// The model being left while a re-embedding runs.
    pub fn previous_embedder(&self) -> Option<&Arc<dyn Embedder>> {
        self.previous_embedder.as_ref()
    }

    /// This engine with the embedder of the user's searches: the configured one, or, while
    /// a change of model is rolled out and the user has not been switched yet, the previous
    /// one.
    pub(crate) async fn scoped(&self, user: &str) -> Result<std::borrow::Cow<'_, Engine>> {
        let Some(previous) = &self.previous_embedder else {
            return Ok(std::borrow::Cow::Borrowed(self));
        };
        match self.store.embedding_model(user).await? {
            // Switched (or on a model this engine does not know): the configured embedder.
            Some(m) if m != previous.model_id() => Ok(std::borrow::Cow::Borrowed(self)),
            // Not seen yet: the store makes them on the configured one (see
            // `MemoryStore::set_embedding_model_for_new_users`).
            None if self.store.get_user(user).await?.is_none() => {
                Ok(std::borrow::Cow::Borrowed(self))
            }
            _ => {
                let mut this = self.clone();
                this.embedder = previous.clone();
                Ok(std::borrow::Cow::Owned(this))
            }
        }
    }

    /// The data key, if one was given.
    pub fn data_key(&self) -> Option<&crate::crypto::DataKey> {
        self.data_key.as_deref()
    }

    /// Merges a new free-standing memory into one at least `similarity` alike of the same kind
    /// (and session), e.g. [`DEDUPE_SIMILARITY`]; with `None` (the default) every
    /// [`Engine::add_memory`] stores a new one.
    pub fn with_dedupe(mut self, similarity: Option<f32>) -> Self {
        self.dedupe = similarity;
        self
    }

    /// Memories (and the memories of messages) with one of these tags expire that many
    /// seconds after they are stored, the shortest when several apply, unless they are given
    /// their own expiry. Fails on a TTL of zero or longer than [`MAX_TTL_SECONDS`].
    pub fn with_tag_ttl(
        mut self,
        ttl: std::collections::BTreeMap<String, u64>,
    ) -> crate::error::Result<Self> {
        for (tag, secs) in &ttl {
            check_ttl(*secs)
                .map_err(|e| crate::error::Error::invalid(format!("TTL of tag `{tag}`: {e}")))?;
        }
        self.tag_ttl = Arc::new(ttl);
        Ok(self)
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

    /// Changes to memories and jobs made through this engine (and its clones, and other
    /// replicas once [`Engine::start_fanout`] ran), as they happen.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Publishes an event to this engine's subscribers (and the other replicas').
    pub fn publish(&self, event: Event) {
        self.events.publish(event);
    }

    /// Query cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The embedder.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// `"postgres"` or `"embedded"`.
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// The input limits every operation enforces.
    pub fn limits(&self) -> &Limits {
        self.store.limits()
    }

    /// Whether the store answers (for readiness probes).
    pub async fn ping(&self) -> Result<()> {
        self.store.get_user("deep-recall-readiness-probe").await?;
        Ok(())
    }

    /// The user's data changed: drops their cached queries here and on the other replicas.
    fn changed(&self, user: &str) {
        self.cache.invalidate(user);
        self.events.send_remote(WireEvent::Invalidate {
            user: user.to_owned(),
        });
    }

    /// [`Engine::changed`] for a change that must not wait for cached queries to age out
    /// anywhere (a user's data deleted, a restore): when this engine runs no fan-out (a
    /// command-line process beside the servers), the other replicas are told directly, before
    /// this returns. A failure to tell them is logged; their entries still expire.
    async fn changed_now(&self, user: &str) {
        self.changed(user);
        if self.events.fans_out() {
            return;
        }
        let Some(fanout) = self.store.fanout() else {
            return;
        };
        let message = crate::events::WireMessage {
            origin: format!("once-{}", std::process::id()),
            event: WireEvent::Invalidate {
                user: user.to_owned(),
            },
        };
        let sent = match serde_json::to_string(&message) {
            Ok(payload) => fanout.notify(&payload).await,
            Err(e) => Err(crate::error::Error::Internal(e.to_string())),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot tell the other replicas of a change");
        }
    }

    fn publish_memory(&self, event: MemoryEvent) {
        self.events.publish(Event::Memory(Box::new(event)));
    }

    /// Announces each of `gone` as deleted.
    fn published_deletions(&self, user: &str, gone: &[crate::types::DeletedMemory]) {
        for m in gone {
            self.publish_memory(MemoryEvent {
                user: user.to_owned(),
                action: MemoryAction::Deleted,
                memory_id: m.id,
                kind: Some(m.kind),
                memory: None,
            });
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

    fn embedding(&self, vector: Vec<f32>) -> Embedding {
        Embedding {
            model: self.embedder.model_id().to_owned(),
            vector,
        }
    }

    /// The job queue (for the job runner).
    pub(crate) fn job_queue(&self) -> &Arc<dyn JobQueue> {
        &self.jobs
    }
}

pub use crate::limits::MAX_TTL_SECONDS;
use crate::limits::check_ttl;

/// Checks a deduplication threshold for [`Engine::with_dedupe`]: a similarity in (0, 1].
pub fn check_dedupe_similarity(similarity: f32) -> Result<()> {
    if !(similarity > 0.0 && similarity <= 1.0) {
        return Err(crate::error::Error::invalid(format!(
            "dedupe_similarity {similarity}: a similarity in (0, 1], {DEDUPE_SIMILARITY} for \
             near-identical text"
        )));
    }
    Ok(())
}

/// A memory given as text, for [`Engine::add_memory`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// A JSON object (or null) to search by with metadata filters; the engine adds its own
    /// signals (`emotion_confidence`) beside the caller's keys.
    #[serde(default)]
    pub metadata: Value,
    /// When it expires: no longer returned from then on, and deleted by the purge.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Expires this many seconds after it is stored (instead of `expires_at`). Without
    /// either, the shortest TTL of its tags applies ([`Engine::with_tag_ttl`]), if any.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// One of the user's current memories that this one replaces ("moved to Berlin" for
    /// "lives in Paris"): the old one is kept as history and no longer returned by default.
    #[serde(default)]
    pub supersedes: Option<i64>,
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
    /// New expiry (`Some(None)`: never expires).
    #[serde(default)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
}
