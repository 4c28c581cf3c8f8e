//! The domain model: users, sessions, messages, memories and their embeddings, summaries,
//! queries and results. Plain data, shared by every store and every front door.
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

mod filter;
pub use filter::{Filter, MetadataCondition, MetadataOp};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The end user.
    User,
    /// The assistant (the LLM).
    Assistant,
    /// A system or developer instruction.
    System,
}

impl Role {
    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
        }
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            "system" => Ok(Role::System),
            other => Err(Error::invalid(format!(
                "unknown role {other:?} (expected user, assistant or system)"
            ))),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a memory is: the searchable units of a user's memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryKind {
    /// A message, or a chunk of one.
    Message,
    /// A fact about the user, extracted or added explicitly (the default of a memory added
    /// on its own).
    #[default]
    Fact,
    /// A chunk of a session's persona / system prompt.
    Persona,
    /// A summary of older history.
    Summary,
    /// An extra key of another memory (`key_for`): text written about it in the background
    /// (an extracted fact with names and dates resolved). Search finds keys and returns the
    /// memory they point at, never the key itself.
    Key,
}

impl MemoryKind {
    /// Every kind.
    pub const ALL: [MemoryKind; 5] = [
        MemoryKind::Message,
        MemoryKind::Fact,
        MemoryKind::Persona,
        MemoryKind::Summary,
        MemoryKind::Key,
    ];

    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryKind::Message => "message",
            MemoryKind::Fact => "fact",
            MemoryKind::Persona => "persona",
            MemoryKind::Summary => "summary",
            MemoryKind::Key => "key",
        }
    }
}

impl FromStr for MemoryKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "message" => Ok(MemoryKind::Message),
            "fact" => Ok(MemoryKind::Fact),
            "persona" => Ok(MemoryKind::Persona),
            "summary" => Ok(MemoryKind::Summary),
            "key" => Ok(MemoryKind::Key),
            other => Err(Error::invalid(format!(
                "unknown memory kind {other:?} (expected message, fact, persona, summary or key)"
            ))),
        }
    }
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How vectors are compared. Every metric is turned into a similarity `score` (higher is
/// closer) and a `distance` (lower is closer), see [`Metric::score`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity; distance = 1 - cosine.
    #[default]
    Cosine,
    /// Euclidean distance; score = 1 / (1 + distance).
    L2,
    /// Inner product; distance = -dot.
    Dot,
}

impl Metric {
    /// The name used in configuration and index names.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::Dot => "dot",
        }
    }

    /// The similarity score for a distance under this metric.
    pub fn score(self, distance: f64) -> f64 {
        match self {
            Metric::Cosine => 1.0 - distance,
            Metric::L2 => 1.0 / (1.0 + distance),
            Metric::Dot => -distance,
        }
    }

    /// The largest distance whose score is at least `min_score`.
    pub fn max_distance(self, min_score: f64) -> f64 {
        match self {
            Metric::Cosine => 1.0 - min_score,
            Metric::L2 if min_score <= 0.0 => f64::INFINITY,
            Metric::L2 => 1.0 / min_score - 1.0,
            Metric::Dot => -min_score,
        }
    }
}

impl FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" | "cos" => Ok(Metric::Cosine),
            "l2" | "euclidean" => Ok(Metric::L2),
            "dot" | "ip" | "inner_product" => Ok(Metric::Dot),
            other => Err(Error::invalid(format!(
                "unknown metric {other:?} (expected cosine, l2 or dot)"
            ))),
        }
    }
}

/// A user as the store knows them. Users are created on first write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// The caller's id for the user (for example a JWT `sub`).
    pub id: String,
    /// When the user was first seen.
    pub created_at: DateTime<Utc>,
    /// Whether the background job writes extra keys for the user's memories.
    #[serde(default)]
    pub memory_keys: bool,
    /// The last of their memories (by id) the key job has read for facts: later ones wait
    /// for it.
    #[serde(default)]
    pub memory_keys_through: Option<i64>,
    /// The last of their memories (by id) the key job has read for session topics.
    #[serde(default)]
    pub memory_sessions_through: Option<i64>,
    /// The last of their memories (by id) the key job has read for context keys (moved back
    /// when a turn that a context key quotes changes or goes).
    #[serde(default)]
    pub memory_context_through: Option<i64>,
    /// How many times `memory_context_through` was moved back: a key job that read another
    /// value leaves the watermark where it is.
    #[serde(default)]
    pub memory_context_epoch: i64,
}

/// A conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The caller's id for the session, unique per user.
    pub id: String,
    /// An optional display title.
    pub title: Option<String>,
    /// The session's persona / system prompt.
    pub persona: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed (a message added or the session edited).
    pub updated_at: DateTime<Utc>,
    /// The last message (by id) folded into a rolling summary; later messages are the
    /// session's unsummarised history.
    #[serde(default)]
    pub summarized_through: Option<i64>,
}

/// A memory that was deleted (with its session, say), as its deletion is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedMemory {
    /// Its id.
    pub id: i64,
    /// What it was.
    pub kind: MemoryKind,
    /// For a key, the memory it stood for, where the deletion knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_for: Option<i64>,
}

/// Changes to a session; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionPatch {
    /// New title (`Some(None)` clears it).
    pub title: Option<Option<String>>,
    /// New persona (`Some(None)` clears it).
    pub persona: Option<Option<String>>,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Store-assigned id.
    pub id: i64,
    /// The session's id.
    pub session: String,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// Free-form labels.
    pub tags: Vec<String>,
    /// Free-form JSON object.
    pub metadata: Value,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

/// A message to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMessage {
    /// The session's id; the session is created if it does not exist.
    pub session: String,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// When it was written; now when absent.
    pub created_at: Option<DateTime<Utc>>,
    /// Free-form labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form JSON object (`null` is stored as `{}`).
    #[serde(default)]
    pub metadata: Value,
}

impl NewMessage {
    /// A message with no tags, no metadata and the current time.
    pub fn new(session: impl Into<String>, role: Role, content: impl Into<String>) -> Self {
        Self {
            session: session.into(),
            role,
            content: content.into(),
            created_at: None,
            tags: Vec::new(),
            metadata: Value::Null,
        }
    }
}

/// An embedding vector and the model that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// The embedding model's id (for example `all-MiniLM-L6-v2`).
    pub model: String,
    /// The vector.
    pub vector: Vec<f32>,
}

/// A stored memory: the unit that retrieval finds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Store-assigned id.
    pub id: i64,
    /// What it is.
    pub kind: MemoryKind,
    /// The searchable text.
    pub content: String,
    /// The session it came from, if any.
    pub session: Option<String>,
    /// The message it came from, if any.
    pub message_id: Option<i64>,
    /// The summary it holds, if any.
    pub summary_id: Option<i64>,
    /// The role of the source message, if any.
    pub role: Option<Role>,
    /// Free-form labels.
    pub tags: Vec<String>,
    /// Free-form JSON object.
    pub metadata: Value,
    /// Importance in [0, 1].
    pub importance: f32,
    /// Detected emotion label, if any.
    pub emotion: Option<String>,
    /// When the source was written.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// When it stops being returned (the purge then deletes it); never when absent.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// The memory this one replaced, if any.
    #[serde(default)]
    pub supersedes: Option<i64>,
    /// The memory that replaced this one, if any: search then returns that one instead.
    #[serde(default)]
    pub superseded_by: Option<i64>,
    /// Since when it is no longer current (the time of the memory that replaced it).
    #[serde(default)]
    pub superseded_at: Option<DateTime<Utc>>,
    /// For a key ([`MemoryKind::Key`]): the memory it points at.
    #[serde(default)]
    pub key_for: Option<i64>,
}

impl Memory {
    /// Whether the memory was current at `t`: written by then, not yet replaced and not yet
    /// expired.
    pub fn current_at(&self, t: DateTime<Utc>) -> bool {
        self.created_at <= t
            && self.superseded_at.is_none_or(|s| s > t)
            && self.expires_at.is_none_or(|e| e > t)
    }
}

/// A memory to store, with its embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMemory {
    /// What it is.
    pub kind: MemoryKind,
    /// The searchable text.
    pub content: String,
    /// The session it belongs to (created if missing). For memories written with a message,
    /// the message's session is used.
    pub session: Option<String>,
    /// The role (for memories written with a message, the message's role).
    pub role: Option<Role>,
    /// Free-form labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form JSON object.
    #[serde(default)]
    pub metadata: Value,
    /// Importance in [0, 1]; 0.5 when absent.
    pub importance: Option<f32>,
    /// Emotion label.
    pub emotion: Option<String>,
    /// When the source was written; the message's time or now when absent.
    pub created_at: Option<DateTime<Utc>>,
    /// The embedding of `content`.
    pub embedding: Embedding,
    /// When it stops being returned; never when absent.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// One of the user's current memories that this one replaces: the old one is kept as
    /// history (see [`Filter::as_of`]) and no longer returned by default.
    #[serde(default)]
    pub supersedes: Option<i64>,
    /// For a key ([`MemoryKind::Key`]): the user's memory it points at (written by the
    /// keys job only).
    #[serde(default)]
    pub key_for: Option<i64>,
}

impl NewMemory {
    /// A memory of `kind` with defaults for everything optional.
    pub fn new(kind: MemoryKind, content: impl Into<String>, embedding: Embedding) -> Self {
        Self {
            kind,
            content: content.into(),
            session: None,
            role: None,
            tags: Vec::new(),
            metadata: Value::Null,
            importance: None,
            emotion: None,
            created_at: None,
            embedding,
            expires_at: None,
            supersedes: None,
            key_for: None,
        }
    }
}

/// A message and the memories made from it, written together in one transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageWrite {
    /// The message.
    pub message: NewMessage,
    /// Memories derived from it (the message itself, or its chunks). Their session, role,
    /// tags (when empty) and time default to the message's.
    pub memories: Vec<NewMemory>,
    /// A message of the same user that this one answers (a chat reply). When that message is
    /// gone (its user's data was deleted while the answer was written), the write fails with
    /// `NotFound` and stores nothing: a late reply never brings erased data back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<i64>,
}

/// What [`crate::MemoryStore::append_messages`] wrote for one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppendedMessage {
    /// The stored message.
    pub message: Message,
    /// Ids of the memories made from it.
    pub memory_ids: Vec<i64>,
}

/// Changes to a memory; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryPatch {
    /// New text. Must come with `embedding`; the memory's other embeddings are dropped.
    pub content: Option<String>,
    /// The embedding of the new text.
    pub embedding: Option<Embedding>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New metadata.
    pub metadata: Option<Value>,
    /// New importance in [0, 1].
    pub importance: Option<f32>,
    /// New emotion (`Some(None)` clears it).
    pub emotion: Option<Option<String>>,
    /// New expiry (`Some(None)`: never expires).
    #[serde(default)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

/// A summary of part of a session's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Store-assigned id.
    pub id: i64,
    /// The session summarised.
    pub session: String,
    /// The summary text.
    pub content: String,
    /// First message covered.
    pub first_message_id: Option<i64>,
    /// Last message covered.
    pub last_message_id: Option<i64>,
    /// The model that wrote it.
    pub model: Option<String>,
    /// Written.
    pub created_at: DateTime<Utc>,
}

/// A summary to store; it also becomes a searchable memory of kind `summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewSummary {
    /// The session summarised (must exist).
    pub session: String,
    /// The summary text.
    pub content: String,
    /// First message covered.
    pub first_message_id: Option<i64>,
    /// Last message covered.
    pub last_message_id: Option<i64>,
    /// The model that wrote it.
    pub model: Option<String>,
    /// The embedding of `content`.
    pub embedding: Embedding,
    /// The session's `summarized_through` when the covered messages were read. The summary
    /// moves it to `last_message_id`; if another writer moved it first, nothing is written.
    #[serde(default)]
    pub expected_through: Option<i64>,
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Store-assigned id.
    pub id: i64,
    /// The user whose data was touched.
    pub user: String,
    /// Who did it (the user, an admin, `cli`).
    pub actor: String,
    /// What was done (`export`, `delete_user`, `update_settings`, ...).
    pub action: String,
    /// Counts and ids; never message content.
    pub detail: Value,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A nearest-neighbour query over one user's memories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorQuery {
    /// The query embedding; only memories embedded by the same model are searched.
    pub embedding: Embedding,
    /// How many hits per page.
    pub top_k: usize,
    /// Drop hits scoring below this.
    pub min_score: Option<f32>,
    /// Narrowing.
    #[serde(default)]
    pub filter: Filter,
    /// Continue after the page that returned this cursor.
    pub cursor: Option<String>,
}

impl VectorQuery {
    /// The first page of the `top_k` nearest memories, unfiltered.
    pub fn new(embedding: Embedding, top_k: usize) -> Self {
        Self {
            embedding,
            top_k,
            min_score: None,
            filter: Filter::default(),
            cursor: None,
        }
    }
}

/// A full-text (lexical) query over one user's memories; see [`crate::text`] for how text
/// becomes terms. A memory matches when it shares at least one term with the query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextQuery {
    /// The query text.
    pub text: String,
    /// How many hits at most.
    pub top_k: usize,
    /// Narrowing.
    #[serde(default)]
    pub filter: Filter,
}

impl TextQuery {
    /// The `top_k` best lexical matches, unfiltered.
    pub fn new(text: impl Into<String>, top_k: usize) -> Self {
        Self {
            text: text.into(),
            top_k,
            filter: Filter::default(),
        }
    }
}

/// One full-text result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextHit {
    /// The memory.
    pub memory: Memory,
    /// Its BM25 score (higher is better; comparable only within one query).
    pub score: f32,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// The memory.
    pub memory: Memory,
    /// Similarity under the store's metric (raw cosine similarity by default).
    pub score: f32,
    /// Distance under the store's metric.
    pub distance: f32,
}

/// A page of search results, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchPage {
    /// The hits.
    pub hits: Vec<SearchHit>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Which page of a listing to return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageRequest {
    /// Page size.
    pub first: usize,
    /// Continue after the page that returned this cursor.
    pub after: Option<String>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            first: 50,
            after: None,
        }
    }
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
    /// The position of each item: passing one as `after` continues after that item
    /// (Relay edge cursors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cursors: Vec<String>,
}

impl<T> Page<T> {
    /// An empty last page.
    pub fn empty() -> Self {
        Self {
            items: Vec::new(),
            next_cursor: None,
            cursors: Vec::new(),
        }
    }

    /// The same page with each item converted (the cursors stay).
    pub fn try_map<U>(self, f: impl FnMut(T) -> Result<U>) -> Result<Page<U>> {
        Ok(Page {
            items: self.items.into_iter().map(f).collect::<Result<_>>()?,
            next_cursor: self.next_cursor,
            cursors: self.cursors,
        })
    }
}

/// An embedding as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedEmbedding {
    /// The model that made it.
    pub model: String,
    /// Its dimension.
    pub dims: usize,
    /// The vector, when the export asked for vectors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// A memory as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedMemory {
    /// The memory.
    #[serde(flatten)]
    pub memory: Memory,
    /// Its embeddings.
    pub embeddings: Vec<ExportedEmbedding>,
}

/// Everything the store holds about one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserExport {
    /// Format marker, `deep-recall.export.v1`.
    pub format: String,
    /// When the export was made.
    pub exported_at: DateTime<Utc>,
    /// The user.
    pub user: User,
    /// Per-user settings.
    pub settings: Value,
    /// Sessions.
    pub sessions: Vec<Session>,
    /// Messages, oldest first.
    pub messages: Vec<Message>,
    /// Memories, oldest first.
    pub memories: Vec<ExportedMemory>,
    /// Summaries.
    pub summaries: Vec<Summary>,
    /// The audit log of the user's data, oldest first.
    pub audit: Vec<AuditEntry>,
    /// Deep memory pairs: questions that the user's memories answer, oldest first.
    #[serde(default)]
    pub deep_memory_pairs: Vec<crate::deep_memory::TrainingPair>,
}

/// The format marker of [`UserExport`].
pub const EXPORT_FORMAT: &str = "deep-recall.export.v1";

/// What a user deletion removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionReport {
    /// Whether the user existed.
    pub existed: bool,
    /// Sessions removed.
    pub sessions: u64,
    /// Messages removed.
    pub messages: u64,
    /// Memories removed.
    pub memories: u64,
    /// Embedding vectors removed.
    pub embeddings: u64,
    /// Summaries removed.
    pub summaries: u64,
}

/// Who performed a data-management action, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor(pub String);

impl Actor {
    /// The user acting on their own data.
    pub fn user(id: &str) -> Self {
        Self(format!("user:{id}"))
    }
    /// The command line.
    pub fn cli() -> Self {
        Self("cli".into())
    }
}

/// Options of [`MemoryStore::export_user`](crate::MemoryStore::export_user).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportOptions {
    /// Include the embedding vectors (large) and not just their model names.
    pub include_vectors: bool,
}

/// The signals behind one result's score.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Raw vector similarity (cosine by default), when known.
    pub similarity: Option<f32>,
    /// BM25 score, when the memory matched the query's words.
    pub bm25: Option<f32>,
    /// Position in the vector candidates (1-based).
    pub vector_rank: Option<usize>,
    /// Position in the text candidates (1-based).
    pub text_rank: Option<usize>,
    /// Relevance from the mode (before the other signals).
    pub relevance: f32,
    /// `0.5^(age / half-life)`.
    pub recency: f32,
    /// The memory's importance.
    pub importance: f32,
    /// Emotional match with the query.
    pub emotion: f32,
    /// 1 when the memory falls in a time window the query names ("in May 2023", "last
    /// week"), else 0.
    #[serde(default)]
    pub time: f32,
    /// Share of the names and quoted phrases of the query that the memory mentions.
    #[serde(default)]
    pub entity: f32,
    /// 1 when the memory was said by someone the query names, else 0.
    #[serde(default)]
    pub speaker: f32,
    /// 1 when the memory ends with a question, else 0.
    #[serde(default)]
    pub question: f32,
    /// How much the memory says: its content words (after a speaker label) on a log scale,
    /// 1 at [`crate::text::CONTENT_WORDS_FULL`] or more.
    #[serde(default)]
    pub content: f32,
    /// 1 when the query asks for a time ("When did…") and the memory names one, else 0.
    #[serde(default)]
    pub time_answer: f32,
    /// The best relevance among the turns next to it in its session.
    #[serde(default)]
    pub neighbour: f32,
    /// The cross-encoder's probability, when it scored this memory.
    pub cross_encoder: Option<f32>,
}

/// One retrieved memory: what it says, where it came from, and why it ranked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retrieved {
    /// The memory (with its session, source message and timestamp).
    pub memory: Memory,
    /// The final score (higher is better).
    pub score: f32,
    /// The signals behind it.
    pub signals: Signals,
}
