//! GraphQL types, mapped from core types (core types carry no GraphQL derives).
use async_graphql::{Enum, ID, InputObject, Json, MaybeUndefined, SimpleObject};
use chrono::{DateTime, Utc};
use recall_core::chat::{ChatResult as CoreChatResult, ContextMemory as CoreContextMemory};
use recall_core::events::{MemoryAction as CoreAction, MemoryEvent as CoreMemoryEvent};
use recall_core::jobs::{Job as CoreJob, JobKind as CoreJobKind, JobStatus as CoreJobStatus};
use recall_core::llm::FinishReason as CoreFinish;
use recall_core::retrieval::SearchMode as CoreMode;
use recall_core::types::Retrieved;
use recall_core::types::{self as core};

use super::error::{Code, GqlResult, error};

/// Who wrote a message.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum Role {
    /// The end user.
    User,
    /// The assistant.
    Assistant,
    /// A system instruction.
    System,
}

impl From<core::Role> for Role {
    fn from(r: core::Role) -> Self {
        match r {
            core::Role::User => Role::User,
            core::Role::Assistant => Role::Assistant,
            core::Role::System => Role::System,
        }
    }
}

impl From<Role> for core::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::User => core::Role::User,
            Role::Assistant => core::Role::Assistant,
            Role::System => core::Role::System,
        }
    }
}

/// What a memory is.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum MemoryKind {
    /// A message or a chunk of one.
    Message,
    /// A fact about the user.
    Fact,
    /// A persona chunk.
    Persona,
    /// A summary of older history.
    Summary,
    /// An extra key of another memory (`keyFor`), written by the key job; searches return
    /// the memory it is for.
    Key,
}

impl From<core::MemoryKind> for MemoryKind {
    fn from(k: core::MemoryKind) -> Self {
        match k {
            core::MemoryKind::Message => MemoryKind::Message,
            core::MemoryKind::Fact => MemoryKind::Fact,
            core::MemoryKind::Persona => MemoryKind::Persona,
            core::MemoryKind::Summary => MemoryKind::Summary,
            core::MemoryKind::Key => MemoryKind::Key,
        }
    }
}

impl From<MemoryKind> for core::MemoryKind {
    fn from(k: MemoryKind) -> Self {
        match k {
            MemoryKind::Message => core::MemoryKind::Message,
            MemoryKind::Fact => core::MemoryKind::Fact,
            MemoryKind::Persona => core::MemoryKind::Persona,
            MemoryKind::Summary => core::MemoryKind::Summary,
            MemoryKind::Key => core::MemoryKind::Key,
        }
    }
}

/// Which retrievers a search uses.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug, Default)]
pub enum SearchMode {
    /// Embedding similarity; scores are raw cosine similarities.
    Vector,
    /// Full text (BM25).
    Text,
    /// Both, fused and re-ranked.
    #[default]
    Hybrid,
}

impl From<SearchMode> for CoreMode {
    fn from(m: SearchMode) -> Self {
        match m {
            SearchMode::Vector => CoreMode::Vector,
            SearchMode::Text => CoreMode::Text,
            SearchMode::Hybrid => CoreMode::Hybrid,
        }
    }
}

/// Why an answer ended.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum FinishReason {
    /// The model finished, or a stop sequence appeared.
    Stop,
    /// The token limit was reached.
    Length,
    /// The consumer went away.
    Cancelled,
}

impl From<CoreFinish> for FinishReason {
    fn from(f: CoreFinish) -> Self {
        match f {
            CoreFinish::Stop => FinishReason::Stop,
            CoreFinish::Length => FinishReason::Length,
            CoreFinish::Cancelled => FinishReason::Cancelled,
        }
    }
}

/// The calling user.
#[derive(SimpleObject, Debug, Clone)]
pub struct User {
    /// The user's id (the token's `sub`).
    pub id: ID,
    /// Whether the caller has the admin role.
    pub admin: bool,
    /// When the user was first seen (absent before their first write).
    pub created_at: Option<DateTime<Utc>>,
    /// Memories held.
    pub memory_count: u64,
}

/// A conversation.
#[derive(SimpleObject, Debug, Clone)]
pub struct Session {
    /// The session id (chosen by the client).
    pub id: ID,
    /// Display title.
    pub title: Option<String>,
    /// Persona / system prompt of the session.
    pub persona: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<core::Session> for Session {
    fn from(s: core::Session) -> Self {
        Self {
            id: ID(s.id),
            title: s.title,
            persona: s.persona,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A stored message.
#[derive(SimpleObject, Debug, Clone)]
pub struct Message {
    /// Its id.
    pub id: ID,
    /// The session.
    pub session: String,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// Labels.
    pub tags: Vec<String>,
    /// A JSON object.
    pub metadata: Json<serde_json::Value>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

impl From<core::Message> for Message {
    fn from(m: core::Message) -> Self {
        Self {
            id: ID(m.id.to_string()),
            session: m.session,
            role: m.role.into(),
            content: m.content,
            tags: m.tags,
            metadata: Json(m.metadata),
            created_at: m.created_at,
        }
    }
}

/// A memory: what retrieval finds.
#[derive(SimpleObject, Debug, Clone)]
pub struct Memory {
    /// Its id.
    pub id: ID,
    /// What it is.
    pub kind: MemoryKind,
    /// The text.
    pub content: String,
    /// The session it came from.
    pub session: Option<String>,
    /// The message it came from.
    pub message_id: Option<ID>,
    /// The role of that message.
    pub role: Option<Role>,
    /// Labels.
    pub tags: Vec<String>,
    /// A JSON object.
    pub metadata: Json<serde_json::Value>,
    /// Importance in [0, 1].
    pub importance: f32,
    /// Detected emotion.
    pub emotion: Option<String>,
    /// When its source was written.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// When it stops being returned (and is purged); never when null.
    pub expires_at: Option<DateTime<Utc>>,
    /// The memory this one replaced.
    pub supersedes: Option<ID>,
    /// The memory that replaced this one (searches return that one instead).
    pub superseded_by: Option<ID>,
    /// Since when it is no longer current.
    pub superseded_at: Option<DateTime<Utc>>,
    /// For a key (kind `KEY`): the memory it is for.
    pub key_for: Option<ID>,
}

impl From<core::Memory> for Memory {
    fn from(m: core::Memory) -> Self {
        Self {
            id: ID(m.id.to_string()),
            kind: m.kind.into(),
            content: m.content,
            session: m.session,
            message_id: m.message_id.map(|i| ID(i.to_string())),
            role: m.role.map(Into::into),
            tags: m.tags,
            metadata: Json(m.metadata),
            importance: m.importance,
            emotion: m.emotion,
            created_at: m.created_at,
            updated_at: m.updated_at,
            expires_at: m.expires_at,
            supersedes: m.supersedes.map(|i| ID(i.to_string())),
            superseded_by: m.superseded_by.map(|i| ID(i.to_string())),
            superseded_at: m.superseded_at,
            key_for: m.key_for.map(|i| ID(i.to_string())),
        }
    }
}

/// One search result.
#[derive(SimpleObject, Debug, Clone)]
pub struct SearchResult {
    /// The memory.
    pub memory: Memory,
    /// The final score (higher is better; the raw cosine similarity in vector mode).
    pub score: f32,
    /// Embedding similarity, when the vector retriever found it.
    pub similarity: Option<f32>,
    /// BM25 score, when the text retriever found it.
    pub bm25: Option<f32>,
}

impl From<Retrieved> for SearchResult {
    fn from(r: Retrieved) -> Self {
        Self {
            score: r.score,
            similarity: r.signals.similarity,
            bm25: r.signals.bm25,
            memory: r.memory.into(),
        }
    }
}

/// Narrows listings and searches.
#[derive(InputObject, Debug, Clone, Default)]
pub struct MemoryFilter {
    /// Only this session.
    pub session: Option<String>,
    /// Only these kinds.
    #[graphql(default)]
    pub kinds: Vec<MemoryKind>,
    /// Only these roles.
    #[graphql(default)]
    pub roles: Vec<Role>,
    /// Only memories with all these tags.
    #[graphql(default)]
    pub tags: Vec<String>,
    /// Written at or after.
    pub since: Option<DateTime<Utc>>,
    /// Written before.
    pub until: Option<DateTime<Utc>>,
    /// What was true at this time: memories written by then and neither superseded nor
    /// expired by then (null: what is current now).
    pub as_of: Option<DateTime<Utc>>,
    /// Superseded memories too (the whole history; expired ones never).
    #[graphql(default)]
    pub include_superseded: bool,
    /// Conditions on the metadata, all of which must hold.
    #[graphql(default)]
    pub metadata: Vec<MetadataCondition>,
}

impl From<MemoryFilter> for core::Filter {
    fn from(f: MemoryFilter) -> Self {
        Self {
            session: f.session,
            kinds: f.kinds.into_iter().map(Into::into).collect(),
            roles: f.roles.into_iter().map(Into::into).collect(),
            tags: f.tags,
            since: f.since,
            until: f.until,
            as_of: f.as_of,
            include_superseded: f.include_superseded,
            metadata: f.metadata.into_iter().map(Into::into).collect(),
        }
    }
}

/// A comparison of a metadata value.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum MetadataOp {
    /// Equal (numbers by value).
    Eq,
    /// Absent or not equal.
    Ne,
    /// Equal to one of an array's values.
    In,
    /// Greater than a number, or later than an RFC 3339 time.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// An array holding the value, or a string holding it.
    Contains,
    /// Present (`true`) or absent (`false`).
    Exists,
}

impl From<MetadataOp> for core::MetadataOp {
    fn from(op: MetadataOp) -> Self {
        match op {
            MetadataOp::Eq => Self::Eq,
            MetadataOp::Ne => Self::Ne,
            MetadataOp::In => Self::In,
            MetadataOp::Gt => Self::Gt,
            MetadataOp::Gte => Self::Gte,
            MetadataOp::Lt => Self::Lt,
            MetadataOp::Lte => Self::Lte,
            MetadataOp::Contains => Self::Contains,
            MetadataOp::Exists => Self::Exists,
        }
    }
}

/// One condition on a memory's metadata: `{key: "project", op: EQ, value: "apollo"}`.
#[derive(InputObject, Debug, Clone)]
pub struct MetadataCondition {
    /// A dotted path into the metadata object (`source.app`).
    pub key: String,
    /// The comparison.
    pub op: MetadataOp,
    /// What to compare with (any JSON; an array for IN, a boolean for EXISTS).
    pub value: Option<Json<serde_json::Value>>,
}

impl From<MetadataCondition> for core::MetadataCondition {
    fn from(c: MetadataCondition) -> Self {
        Self {
            key: c.key,
            op: c.op.into(),
            value: c.value.map_or(serde_json::Value::Null, |j| j.0),
        }
    }
}

/// A message to store.
#[derive(InputObject, Debug, Clone)]
pub struct MessageInput {
    /// The session (created if missing).
    pub session: String,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// When it was written (now when absent).
    pub created_at: Option<DateTime<Utc>>,
    /// Labels.
    #[graphql(default)]
    pub tags: Vec<String>,
    /// A JSON object.
    pub metadata: Option<Json<serde_json::Value>>,
}

impl From<MessageInput> for core::NewMessage {
    fn from(m: MessageInput) -> Self {
        Self {
            session: m.session,
            role: m.role.into(),
            content: m.content,
            created_at: m.created_at,
            tags: m.tags,
            metadata: m.metadata.map(|j| j.0).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// A memory to add.
#[derive(InputObject, Debug, Clone)]
pub struct MemoryInput {
    /// What it is (a fact by default).
    #[graphql(default_with = "MemoryKind::Fact")]
    pub kind: MemoryKind,
    /// The text.
    pub content: String,
    /// The session it belongs to.
    pub session: Option<String>,
    /// Labels.
    #[graphql(default)]
    pub tags: Vec<String>,
    /// Importance in [0, 1] (estimated when absent).
    pub importance: Option<f32>,
    /// A JSON object to filter by (`metadata` conditions of a filter).
    pub metadata: Option<Json<serde_json::Value>>,
    /// When it expires (no longer returned, then purged).
    pub expires_at: Option<DateTime<Utc>>,
    /// Expires this many seconds after it is stored (instead of `expiresAt`).
    pub ttl_seconds: Option<u64>,
    /// A current memory of the user's that this one replaces: that one is kept as history
    /// (`memoryHistory`, filters with `asOf` or `includeSuperseded`).
    pub supersedes: Option<ID>,
}

/// Changes to a memory; absent fields stay as they are.
#[derive(InputObject, Debug, Clone)]
pub struct MemoryUpdateInput {
    /// New text (embedded again).
    pub content: Option<String>,
    /// New labels.
    pub tags: Option<Vec<String>>,
    /// New metadata object.
    pub metadata: Option<Json<serde_json::Value>>,
    /// New importance in [0, 1].
    pub importance: Option<f32>,
    /// New expiry; null: never expires.
    pub expires_at: MaybeUndefined<DateTime<Utc>>,
}

/// One chat turn.
#[derive(InputObject, Debug, Clone)]
pub struct ChatInput {
    /// The session (created on first use).
    pub session: String,
    /// The user's message.
    pub message: String,
    /// A system prompt for this turn.
    pub system: Option<String>,
    /// Tokens to generate at most.
    pub max_tokens: Option<u32>,
    /// Sampling temperature (0 is greedy).
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Top-k sampling.
    pub top_k: Option<u32>,
    /// Sampler seed.
    pub seed: Option<u64>,
    /// Texts that end the answer.
    #[graphql(default)]
    pub stop: Vec<String>,
    /// Memories retrieved for the prompt at most.
    pub memory_top_k: Option<u32>,
    /// How memories are retrieved.
    #[graphql(default)]
    pub mode: SearchMode,
}

/// A memory that went into the prompt.
#[derive(SimpleObject, Debug, Clone)]
pub struct ContextMemory {
    /// The memory's id.
    pub memory_id: ID,
    /// What it is.
    pub kind: MemoryKind,
    /// Its text.
    pub content: String,
    /// The session it came from.
    pub session: Option<String>,
    /// Its retrieval score.
    pub score: f32,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

impl From<CoreContextMemory> for ContextMemory {
    fn from(c: CoreContextMemory) -> Self {
        Self {
            memory_id: ID(c.memory_id.to_string()),
            kind: c.kind.into(),
            content: c.content,
            session: c.session,
            score: c.score,
            created_at: c.created_at,
        }
    }
}

/// Token counts.
#[derive(SimpleObject, Debug, Clone, Copy)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
}

/// Timings in milliseconds.
#[derive(SimpleObject, Debug, Clone, Copy)]
pub struct Latency {
    /// Retrieval and prompt assembly.
    pub retrieval_ms: f64,
    /// To the first piece of the answer.
    pub first_token_ms: f64,
    /// To the end.
    pub total_ms: f64,
}

/// The result of a chat turn.
#[derive(SimpleObject, Debug, Clone)]
pub struct ChatResult {
    /// The session.
    pub session: String,
    /// The stored user message.
    pub message_id: ID,
    /// The stored answer.
    pub reply_id: Option<ID>,
    /// The answer.
    pub text: String,
    /// Memories that went into the prompt, best first.
    pub context: Vec<ContextMemory>,
    /// Token counts.
    pub usage: Usage,
    /// Timings.
    pub latency: Latency,
    /// Mean log-probability of the answer's tokens (0 is certain); null when the model did
    /// not report log-probabilities (a remote provider without them).
    pub confidence: Option<f32>,
    /// Why the answer ended.
    pub finish_reason: FinishReason,
    /// The model that answered.
    pub model: String,
}

impl From<CoreChatResult> for ChatResult {
    fn from(r: CoreChatResult) -> Self {
        Self {
            session: r.session,
            message_id: ID(r.message_id.to_string()),
            reply_id: r.reply_id.map(|i| ID(i.to_string())),
            text: r.text,
            context: r.context.into_iter().map(Into::into).collect(),
            usage: Usage {
                prompt_tokens: r.usage.prompt_tokens as u64,
                completion_tokens: r.usage.completion_tokens as u64,
                total_tokens: r.usage.total_tokens as u64,
            },
            latency: Latency {
                retrieval_ms: r.latency.retrieval_ms,
                first_token_ms: r.latency.first_token_ms,
                total_ms: r.latency.total_ms,
            },
            confidence: r.confidence.is_finite().then_some(r.confidence),
            finish_reason: r.finish_reason.into(),
            model: r.model,
        }
    }
}

/// One event of the `chat` subscription: deltas, then one event with `done` and `result`.
#[derive(SimpleObject, Debug, Clone)]
pub struct ChatEvent {
    /// The stored user message (acknowledged before generation starts).
    pub message_id: ID,
    /// Position of this event in the stream, from 0.
    pub index: u32,
    /// The next piece of the answer (absent on the final event).
    pub delta: Option<String>,
    /// Whether this is the final event.
    pub done: bool,
    /// The whole result (final event only).
    pub result: Option<ChatResult>,
}

/// What happened to a memory.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum MemoryAction {
    /// Written.
    Added,
    /// Changed.
    Updated,
    /// Deleted.
    Deleted,
}

/// A change to one of the caller's memories.
#[derive(SimpleObject, Debug, Clone)]
pub struct MemoryEvent {
    /// What happened.
    pub action: MemoryAction,
    /// The memory's id.
    pub memory_id: ID,
    /// Its kind.
    pub kind: Option<MemoryKind>,
    /// The memory after the change, when the writer had it.
    pub memory: Option<Memory>,
}

impl From<CoreMemoryEvent> for MemoryEvent {
    fn from(e: CoreMemoryEvent) -> Self {
        Self {
            action: match e.action {
                CoreAction::Added => MemoryAction::Added,
                CoreAction::Updated => MemoryAction::Updated,
                CoreAction::Deleted => MemoryAction::Deleted,
            },
            memory_id: ID(e.memory_id.to_string()),
            kind: e.kind.map(Into::into),
            memory: e.memory.map(Into::into),
        }
    }
}

/// What `deleteMyData` removed.
#[derive(SimpleObject, Debug, Clone)]
pub struct DeletionReport {
    /// Whether there was anything.
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

impl From<core::DeletionReport> for DeletionReport {
    fn from(r: core::DeletionReport) -> Self {
        Self {
            existed: r.existed,
            sessions: r.sessions,
            messages: r.messages,
            memories: r.memories,
            embeddings: r.embeddings,
            summaries: r.summaries,
        }
    }
}

/// What a background job does.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum JobKind {
    /// Deletes everything stored about the user (a scheduled `deleteMyData`).
    DeleteUser,
    /// An operator's backup of every user (admin; `backup.dir`).
    Backup,
    /// An operator's database maintenance (admin).
    Optimize,
    /// An operator's rotation of the data key (admin).
    RotateKeys,
    /// Re-embedding after a change of embedding model (admin, or queued at start).
    Reembed,
    /// The chat model writes deep memory pairs (`deepMemoryGenerate`).
    DeepMemoryGenerate,
    /// The training of the user's query adapter (`deepMemoryTrain`, or a retraining after
    /// new memories).
    DeepMemoryTrain,
    /// The chat model writes extra keys for the user's memories (`memoryKeysWrite`).
    MemoryKeys,
}

/// Operators' jobs that `runSystemJob` starts.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum SystemJobKind {
    /// A backup of every user into `backup.dir`, keeping the newest `backup.keep`.
    Backup,
    /// Database maintenance: rebuild the vector and full-text indexes, vacuum.
    Optimize,
    /// Re-seal every stored row with the current data key (`encryption.key_file`), opening
    /// old rows with `encryption.previous_key_files`.
    RotateKeys,
    /// Give every memory a vector of the configured embedding model and switch each user to
    /// it (`models.previous_embedding` is what they used before).
    Reembed,
}

/// Where a background job is.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum JobStatus {
    /// Waiting for its time.
    Queued,
    /// Running now.
    Running,
    /// Done; see `result`.
    Succeeded,
    /// Gave up; see `error`.
    Failed,
    /// Cancelled before it ran.
    Cancelled,
}

/// A background job of the caller's (or, for admins, an operator's job).
#[derive(SimpleObject, Debug, Clone)]
pub struct Job {
    /// Its id.
    pub id: ID,
    /// What it does.
    pub kind: JobKind,
    /// Where it is.
    pub status: JobStatus,
    /// Share done, 0 to 1.
    pub progress: f64,
    /// What it is doing now.
    pub message: Option<String>,
    /// What it did (a JSON object), once succeeded; for `DELETE_USER` the deletion counts.
    pub result: Option<Json<serde_json::Value>>,
    /// Why it failed.
    pub error: Option<String>,
    /// How many times a runner took it.
    pub attempts: u32,
    /// Not before this time.
    pub run_at: DateTime<Utc>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final status.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<CoreJob> for Job {
    fn from(j: CoreJob) -> Self {
        Self {
            id: ID(j.id.to_string()),
            kind: match j.kind {
                CoreJobKind::DeleteUser => JobKind::DeleteUser,
                CoreJobKind::Backup => JobKind::Backup,
                CoreJobKind::Optimize => JobKind::Optimize,
                CoreJobKind::RotateKeys => JobKind::RotateKeys,
                CoreJobKind::Reembed => JobKind::Reembed,
                CoreJobKind::DeepMemoryGenerate => JobKind::DeepMemoryGenerate,
                CoreJobKind::DeepMemoryTrain => JobKind::DeepMemoryTrain,
                CoreJobKind::MemoryKeys => JobKind::MemoryKeys,
            },
            status: match j.status {
                CoreJobStatus::Queued => JobStatus::Queued,
                CoreJobStatus::Running => JobStatus::Running,
                CoreJobStatus::Succeeded => JobStatus::Succeeded,
                CoreJobStatus::Failed => JobStatus::Failed,
                CoreJobStatus::Cancelled => JobStatus::Cancelled,
            },
            progress: j.progress,
            message: j.message,
            result: j.result.map(Json),
            error: j.error,
            attempts: j.attempts,
            run_at: j.run_at,
            created_at: j.created_at,
            updated_at: j.updated_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
        }
    }
}

/// Service health.
#[derive(SimpleObject, Debug, Clone)]
pub struct Health {
    /// `ok` when the store answers.
    pub status: String,
    /// The store backend (`postgres` or `embedded`).
    pub store: String,
    /// The embedding model.
    pub embedding_model: String,
    /// The chat model, when one is loaded.
    pub chat_model: Option<String>,
    /// Chat requests waiting or being served.
    pub queue_depth: u64,
}

/// Parses a numeric id argument.
pub fn parse_id(what: &str, id: &ID) -> GqlResult<i64> {
    id.parse::<i64>().map_err(|_| {
        error(
            Code::BadInput,
            format!("{what} id {:?} is not a number", id.0),
        )
    })
}
