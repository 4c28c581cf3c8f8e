//! Settings of every command, loaded in layers with [figment]: built-in defaults, then a TOML
//! file (`--config`), then environment variables `DEEP_RECALL__SECTION__KEY` (for example
//! `DEEP_RECALL__LIMITS__REQUESTS_PER_MINUTE=600` or `DEEP_RECALL__STORE__DATABASE_URL=...`),
//! then command-line flags. Unknown keys are errors. Secrets are redacted in `Debug` output
//! and never logged.
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use recall_core::cache::QueryCacheConfig;
use recall_core::device::DeviceConfig;
use recall_core::embed::{DEFAULT_EMBEDDING_MODEL, Precision};
use recall_core::error::Error;
use recall_core::types::Metric;
use serde::{Deserialize, Serialize};

/// All settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the server listens on.
    pub bind: SocketAddr,
    /// Where the data lives.
    pub store: StoreSettings,
    /// Where the models are and where they run.
    pub models: ModelSettings,
    /// The query cache.
    pub cache: CacheSettings,
    /// Authentication.
    pub auth: AuthSettings,
    /// Request limits.
    pub limits: LimitSettings,
    /// Allowed CORS origins (`*` allows any; empty allows none).
    pub cors_origins: Vec<String>,
    /// Reverse proxies (CIDR blocks) whose `X-Forwarded-For` names the client, for per-IP
    /// limits and logs; empty (the default) never reads the header.
    pub trusted_proxies: Vec<String>,
    /// Serve GraphiQL on `GET /graphql`.
    pub graphiql: bool,
    /// The chat model: local, or a remote OpenAI-compatible provider.
    pub chat: ChatSettings,
    /// Background jobs and events between replicas.
    pub jobs: JobSettings,
    /// Logs.
    pub log: LogSettings,
    /// OpenTelemetry traces.
    pub telemetry: TelemetrySettings,
    /// The MCP endpoint at `/mcp`.
    pub mcp: McpSettings,
    /// The web chat UI at `/`.
    pub web: WebSettings,
    /// Who may read `/metrics`, and where.
    pub metrics: MetricsSettings,
    /// HTTPS on the main address.
    pub tls: TlsSettings,
    /// Scheduled backups.
    pub backup: BackupSettings,
    /// The data key.
    pub encryption: EncryptionSettings,
    /// Per-user query adapters.
    pub deep_memory: DeepMemorySettings,
    /// Extra keys written by the chat model for users who turn them on.
    pub memory_keys: MemoryKeySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            store: StoreSettings::default(),
            models: ModelSettings::default(),
            cache: CacheSettings::default(),
            auth: AuthSettings::default(),
            limits: LimitSettings::default(),
            cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            graphiql: false,
            deep_memory: DeepMemorySettings::default(),
            memory_keys: MemoryKeySettings::default(),
            chat: ChatSettings::default(),
            jobs: JobSettings::default(),
            log: LogSettings::default(),
            telemetry: TelemetrySettings::default(),
            mcp: McpSettings::default(),
            web: WebSettings::default(),
            metrics: MetricsSettings::default(),
            tls: TlsSettings::default(),
            backup: BackupSettings::default(),
            encryption: EncryptionSettings::default(),
        }
    }
}

/// The data key: a file of 32 random bytes (raw, or 64 hex digits). With it, stored message
/// and memory text, metadata and summaries are sealed (AES-256-GCM), and so are backups; keep
/// a copy apart from them, or they cannot be read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionSettings {
    /// The key file (`--encryption-key-file`, `DEEP_RECALL_ENCRYPTION_KEY_FILE`).
    pub key_file: Option<PathBuf>,
    /// Keys being rotated away from: they only open rows that `deep-recall keys rotate` has
    /// not re-sealed yet (`--previous-encryption-key-file`, repeatable).
    pub previous_key_files: Vec<PathBuf>,
}

/// Scheduled backups: a background job (one across replicas) every `every`, on the clock's
/// multiples of it, writing `dir/deep-recall-<UTC time>.backup` and keeping the newest `keep`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSettings {
    /// Where backups are written (also for `runSystemJob(kind: BACKUP)`).
    pub dir: Option<PathBuf>,
    /// How often: a number and a unit, `s`, `m`, `h` or `d` (`24h`); none by default.
    pub every: Option<String>,
    /// How many scheduled backups to keep.
    pub keep: u32,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            dir: None,
            every: None,
            keep: 7,
        }
    }
}

impl BackupSettings {
    /// `every` as a duration (validated by [`Settings::validate`]).
    pub fn interval(&self) -> recall_core::Result<Option<std::time::Duration>> {
        let Some(text) = self.every.as_deref() else {
            return Ok(None);
        };
        let bad = || {
            Error::invalid(format!(
                "backup.every: {text:?} is not a number and a unit (s, m, h, d), like 24h"
            ))
        };
        let t = text.trim();
        let unit = t.chars().last().ok_or_else(bad)?;
        let n: u64 = t[..t.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
        let per = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let secs = n.checked_mul(per).ok_or_else(bad)?;
        if secs == 0 {
            return Err(bad());
        }
        if secs > MAX_PERIOD_SECS {
            return Err(Error::invalid(format!(
                "backup.every: {text:?} is longer than a year"
            )));
        }
        Ok(Some(std::time::Duration::from_secs(secs)))
    }
}

/// HTTPS with rustls: both files, or neither (plain HTTP, for a proxy that terminates TLS).
/// The files are read again on SIGHUP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain (leaf first).
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// Which store, and where.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Postgres URL (`postgres://...`); the embedded store in `data_dir` when absent.
    pub database_url: Option<String>,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// How vectors are compared: `cosine`, `l2` or `dot`.
    pub metric: Metric,
    /// Largest connection pool.
    pub max_connections: u32,
    /// Most vectors held in memory over all users: the embedded store's vector cache; on
    /// Postgres, the memories and vectors of the users searched in process (about 2 KB
    /// each with 384 dimensions). Least recently searched users are dropped first.
    pub max_cached_vectors: usize,
    /// Postgres: users with more memories than this are searched in process by the server
    /// (vectors and full text held; exact, ~10× faster than Postgres's own scan at 20k, and
    /// ranked as the embedded store ranks); the others, and users too large for
    /// `max_cached_vectors`, by Postgres. 0 (the default): every user.
    pub in_process_search_threshold: u64,
    /// Postgres: pgvector's `hnsw.ef_search` for the users searched through the HNSW index
    /// (above `exact_search_threshold` rows and not held in process), 1–1,000: larger finds
    /// more of the exact neighbours and costs more.
    pub hnsw_ef_search: u32,
    /// Deduplication on add: a new free-standing memory (a fact, not a message) merges into
    /// the user's memory of the same kind and session that is at least this similar (tags
    /// united, the higher importance kept, `metadata.merged` counted) instead of being stored
    /// again; absent (the default): every add stores a new memory. 0.95 merges "I am allergic
    /// to peanuts" into "I am allergic to peanuts." (0.99) and keeps "my number is 1" and "my
    /// number is 2" (0.86) apart.
    pub dedupe_similarity: Option<f32>,
    /// Time to live by tag, in seconds: a memory (or a message's memory) with one of these
    /// tags expires that long after it is stored, unless it is given its own expiry. For
    /// example `{ "scratch" = 86400 }`.
    pub tag_ttl_seconds: BTreeMap<String, u64>,
    /// How often the server deletes expired memories (seconds; 0: never, reads leave them
    /// out all the same).
    pub purge_every_secs: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            database_url: None,
            data_dir: PathBuf::from("data"),
            metric: Metric::default(),
            max_connections: 16,
            max_cached_vectors: 2_000_000,
            in_process_search_threshold: 0,
            hnsw_ef_search: 400,
            dedupe_similarity: None,
            tag_ttl_seconds: BTreeMap::new(),
            purge_every_secs: 60,
        }
    }
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("data_dir", &self.data_dir)
            .field("metric", &self.metric)
            .field("max_connections", &self.max_connections)
            .field("max_cached_vectors", &self.max_cached_vectors)
            .field(
                "in_process_search_threshold",
                &self.in_process_search_threshold,
            )
            .field("hnsw_ef_search", &self.hnsw_ef_search)
            .field("dedupe_similarity", &self.dedupe_similarity)
            .field("tag_ttl_seconds", &self.tag_ttl_seconds)
            .field("purge_every_secs", &self.purge_every_secs)
            .finish()
    }
}

/// The models.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Directory holding the models (filled by `deep-recall models fetch`).
    pub dir: PathBuf,
    /// Embedding model: a directory name under `dir`, or a path; with `embedding_url`, the
    /// model name the provider knows (recorded with every vector).
    pub embedding: String,
    /// A remote embedding provider's base URL up to the API version
    /// (`http://tei:8080/v1`), speaking the OpenAI embeddings API; the local embedding model
    /// is not loaded when it is set.
    pub embedding_url: Option<String>,
    /// The embedding provider's bearer token.
    pub embedding_api_key: Option<String>,
    /// A file holding the embedding provider's bearer token (instead of `embedding_api_key`).
    pub embedding_api_key_file: Option<PathBuf>,
    /// Texts in one request to the embedding provider at most.
    pub embedding_batch: usize,
    /// The embedding provider model's input limit in tokens (512 for BERT models in
    /// text-embeddings-inference, 8191 for OpenAI's): longer messages are split into pieces
    /// within it; unset, texts are sent whole (and a provider may refuse long ones).
    pub embedding_max_tokens: Option<usize>,
    /// Where models run: `auto`, `cpu`, `cuda[:N]` or `metal[:N]`.
    pub device: String,
    /// The local embedder's arithmetic on the CPU: `f32` (sentence-transformers' vectors) or
    /// `int8` (about twice as fast; cosine ≥ 0.99 to the F32 vectors).
    pub embedding_precision: Precision,
    /// While changing the embedding model: the local model the stored vectors were made with
    /// (`--previous-embedding-model`). Both are loaded; users keep searching with this one
    /// until the re-embedding job, queued at start, has moved them to `embedding`.
    pub previous_embedding: Option<String>,
    /// Re-embedding: memories per batch.
    pub reembed_batch: usize,
    /// Re-embedding: pause after each batch, in milliseconds (leaves the CPU to requests).
    pub reembed_pause_ms: u64,
    /// Cross-encoder directory to re-rank the top candidates of every search.
    pub cross_encoder: Option<PathBuf>,
    /// Emotion classifier directory, instead of the built-in lexicon.
    pub emotion: Option<PathBuf>,
    /// `models fetch`: look here for already downloaded wheels first.
    pub wheel_dir: Option<PathBuf>,
    /// `models fetch`: the package index ("simple" API) to download from.
    pub index_url: String,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("models"),
            embedding: DEFAULT_EMBEDDING_MODEL.to_owned(),
            embedding_url: None,
            embedding_api_key: None,
            embedding_api_key_file: None,
            embedding_batch: recall_core::embed::remote::DEFAULT_REMOTE_BATCH,
            embedding_max_tokens: None,
            device: "auto".to_owned(),
            embedding_precision: Precision::default(),
            previous_embedding: None,
            reembed_batch: 64,
            reembed_pause_ms: 50,
            cross_encoder: None,
            emotion: None,
            wheel_dir: None,
            index_url: recall_core::models::DEFAULT_INDEX.to_owned(),
        }
    }
}

impl fmt::Debug for ModelSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelSettings")
            .field("dir", &self.dir)
            .field("embedding", &self.embedding)
            .field("embedding_url", &self.embedding_url)
            .field(
                "embedding_api_key",
                &self.embedding_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("embedding_api_key_file", &self.embedding_api_key_file)
            .field("embedding_batch", &self.embedding_batch)
            .field("embedding_max_tokens", &self.embedding_max_tokens)
            .field("device", &self.device)
            .field("embedding_precision", &self.embedding_precision)
            .field("previous_embedding", &self.previous_embedding)
            .field("reembed_batch", &self.reembed_batch)
            .field("reembed_pause_ms", &self.reembed_pause_ms)
            .field("cross_encoder", &self.cross_encoder)
            .field("emotion", &self.emotion)
            .field("wheel_dir", &self.wheel_dir)
            .field("index_url", &self.index_url)
            .finish()
    }
}

impl ModelSettings {
    /// The device setting, parsed.
    pub fn device(&self) -> recall_core::Result<DeviceConfig> {
        self.device.parse()
    }
}

/// The cache of retrieval results (per user; dropped on every write of the user).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Results kept at most (0 turns the cache off).
    pub capacity: usize,
    /// Seconds a result stays valid.
    pub ttl_secs: u64,
    /// Recency is computed at the clock rounded down to this many seconds, so that repeated
    /// searches within a step are answered from the cache (0: the exact clock, no reuse).
    pub clock_step_secs: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        let core = QueryCacheConfig::default();
        Self {
            capacity: core.capacity,
            ttl_secs: core.ttl.as_secs(),
            clock_step_secs: core.clock_step.as_secs(),
        }
    }
}

impl CacheSettings {
    /// The core cache configuration.
    pub fn config(&self) -> QueryCacheConfig {
        QueryCacheConfig {
            capacity: self.capacity,
            ttl: std::time::Duration::from_secs(self.ttl_secs),
            clock_step: std::time::Duration::from_secs(self.clock_step_secs),
        }
    }
}

/// How callers prove who they are.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 secret for JWTs.
    pub jwt_secret: Option<String>,
    /// PEM file with the RS256 public key for JWTs.
    pub jwt_public_key: Option<PathBuf>,
    /// Expected `iss` claim, when set.
    pub jwt_issuer: Option<String>,
    /// Expected `aud` claim, when set.
    pub jwt_audience: Option<String>,
    /// Service API keys, stored as SHA-256 hashes (`deep-recall keys hash < key.txt` prints one).
    pub api_keys: Vec<ApiKeySettings>,
    /// Let requests without credentials in (local development only); the `X-User-Id` header
    /// (or the REST `user` field) then names the user. Refused on an address other than
    /// loopback unless `dangerously_allow_anonymous_on_network` is set too.
    pub allow_anonymous: bool,
    /// Allow anonymous mode on a non-loopback address, where anyone who reaches the server
    /// can read and delete any user's memory by naming them.
    pub dangerously_allow_anonymous_on_network: bool,
}

impl fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwt_public_key", &self.jwt_public_key)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("api_keys", &self.api_keys.len())
            .field("allow_anonymous", &self.allow_anonymous)
            .field(
                "dangerously_allow_anonymous_on_network",
                &self.dangerously_allow_anonymous_on_network,
            )
            .finish()
    }
}

/// One service API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// The user the key acts as.
    pub user: String,
    /// Whether the key has the admin role.
    #[serde(default)]
    pub admin: bool,
}

/// Request limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Requests per minute per user (0 turns the limit off).
    pub requests_per_minute: u32,
    /// Requests per minute per client IP (0 turns the limit off).
    pub ip_requests_per_minute: u32,
    /// Requests a user may send at once above the steady rate.
    pub burst: u32,
    /// Requests an IP may send at once above the steady rate.
    pub ip_burst: u32,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Streams (chat subscriptions, streamed completions) open at once per user.
    pub max_streams_per_user: usize,
    /// Event subscriptions (`memoryEvents`, `jobProgress`) open at once per user.
    pub max_subscriptions_per_user: usize,
    /// Seconds a non-streaming request may take (and a query or mutation over a WebSocket).
    pub request_timeout_secs: u64,
    /// GraphQL query depth limit.
    pub max_query_depth: usize,
    /// GraphQL query complexity limit.
    pub max_query_complexity: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            requests_per_minute: 600,
            ip_requests_per_minute: 1200,
            burst: 60,
            ip_burst: 240,
            max_body_bytes: 2 * 1024 * 1024,
            max_streams_per_user: 4,
            max_subscriptions_per_user: 16,
            request_timeout_secs: 120,
            max_query_depth: 12,
            max_query_complexity: 1000,
        }
    }
}

/// The chat model: the local worker, or a remote OpenAI-compatible provider when `url` is set.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSettings {
    /// A .gguf path, a safetensors directory, or a name under the models directory; the
    /// packaged SmolLM2 by default.
    pub model: Option<String>,
    /// Requests waiting for the worker at most.
    pub queue_capacity: usize,
    /// Sequences decoded together at most.
    pub max_sequences: usize,
    /// MiB of finished answers' attention caches kept for prompts that begin with the same
    /// tokens (a conversation's next turn then reads only its new messages; 0: none).
    pub prefix_cache_mib: usize,
    /// Tokens per answer when the request does not say.
    pub max_tokens: usize,
    /// Summarise a session once this many messages are not yet in a summary (0: never).
    pub summary_trigger_messages: usize,
    /// A remote provider's base URL up to the API version (`http://vllm:8000/v1`); the local
    /// model is not loaded when it is set.
    pub url: Option<String>,
    /// The remote provider's bearer token.
    pub api_key: Option<String>,
    /// A file holding the remote provider's bearer token (instead of `api_key`).
    pub api_key_file: Option<PathBuf>,
    /// The model name the remote provider knows.
    pub model_name: Option<String>,
    /// The remote model's context window in tokens.
    pub context_length: usize,
    /// Seconds to the first byte of a remote answer (and for a whole non-streamed one).
    pub timeout_secs: u64,
    /// Retries of a failed remote call (connection errors, 429, 5xx), with back-off.
    pub max_retries: u32,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            model: None,
            queue_capacity: 64,
            max_sequences: 8,
            prefix_cache_mib: 64,
            max_tokens: 256,
            summary_trigger_messages: 40,
            url: None,
            api_key: None,
            api_key_file: None,
            model_name: None,
            context_length: 8192,
            timeout_secs: 60,
            max_retries: 3,
        }
    }
}

impl fmt::Debug for ChatSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatSettings")
            .field("model", &self.model)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_sequences", &self.max_sequences)
            .field("prefix_cache_mib", &self.prefix_cache_mib)
            .field("max_tokens", &self.max_tokens)
            .field("summary_trigger_messages", &self.summary_trigger_messages)
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_file", &self.api_key_file)
            .field("model_name", &self.model_name)
            .field("context_length", &self.context_length)
            .field("timeout_secs", &self.timeout_secs)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

/// Background jobs (scheduled deletions) and the fan-out of events between replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// Run due jobs in this process (every replica may; each job runs once).
    pub run: bool,
    /// How often to look for due jobs, in milliseconds.
    pub poll_ms: u64,
    /// How long a replica holds a job before another may take it over, in seconds.
    pub lease_secs: u64,
    /// Postgres: share subscription events (and cache invalidation) with the other replicas
    /// through LISTEN/NOTIFY.
    pub fanout: bool,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            run: true,
            poll_ms: 1000,
            lease_secs: 60,
            fanout: true,
        }
    }
}

/// Deep memory: per-user query adapters (see `recall_core::deep_memory`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeepMemorySettings {
    /// Retrain a user's adapter (writing pairs for their new memories first) once they have
    /// this many memories more than it was trained with; 0 never does.
    pub retrain_after: u64,
    /// How often to look for adapters due for retraining, in seconds.
    pub check_secs: u64,
    /// Questions the chat model writes per memory (1 to 5).
    pub questions_per_memory: usize,
    /// Pause after each group of questions, in milliseconds, to leave the chat model to live
    /// chat.
    pub pause_ms: u64,
    /// Questions a job writes at most (`deepMemoryGenerate` may ask for fewer).
    pub max_pairs_per_run: usize,
}

impl Default for DeepMemorySettings {
    fn default() -> Self {
        Self {
            retrain_after: 200,
            check_secs: 600,
            questions_per_memory: 1,
            pause_ms: 0,
            max_pairs_per_run: 5000,
        }
    }
}

impl DeepMemorySettings {
    /// The options of a question-writing job.
    pub fn generate(&self) -> recall_core::deep_memory::GenerateOptions {
        recall_core::deep_memory::GenerateOptions {
            questions_per_memory: self.questions_per_memory,
            pause_ms: self.pause_ms,
            max_pairs: self.max_pairs_per_run,
            ..Default::default()
        }
    }
}

/// Extra keys (see `recall_core::memory_keys`): written in the background for the users who
/// have them on (new users by default, `memoryKeysEnable`): context keys, and with the chat
/// model facts and session topics where these are turned on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryKeySettings {
    /// Users seen for the first time start with keys on (on by default: context keys raised
    /// recall@10 on the dev data from 0.800 to 0.830, for about twice the rows and a few ms
    /// more search p95 at 100k memories; docs/benchmarks.md). Off: each user turns them on
    /// with `memoryKeysEnable`. Users already known keep what they have.
    pub new_users: bool,
    /// How often to queue the key job of the users with keys on who wrote since the last
    /// time (and at start, of every user with keys on), so that new memories get theirs, in
    /// seconds; 0 never does (then only `memoryKeysWrite` queues it).
    pub check_secs: u64,
    /// Pause after each group of memories, in milliseconds, to leave the chat model to live
    /// chat.
    pub pause_ms: u64,
    /// Keys a job writes at most (`memoryKeysWrite` may ask for fewer).
    pub max_keys_per_run: usize,
    /// Facts: a key for each message and fact, from what the model reads in it alone (off by
    /// default: the packaged model's facts did not raise recall on the dev data).
    pub facts: bool,
    /// Session keys: a key for each turn, from the topic the model gives its stretch of the
    /// session (off by default: they lowered recall on the dev data, docs/benchmarks.md).
    pub sessions: bool,
    /// Context keys: a key for each turn holding the turn before it, its own text and the
    /// turn after when that goes on with them; written without the chat model (on by default: they raised recall on the dev data).
    pub context: bool,
}

impl Default for MemoryKeySettings {
    fn default() -> Self {
        Self {
            new_users: true,
            check_secs: 600,
            pause_ms: 0,
            max_keys_per_run: 10_000,
            facts: false,
            sessions: false,
            context: true,
        }
    }
}

impl MemoryKeySettings {
    /// The options of a key job; facts and session keys only with a chat model (`chat`).
    pub fn options(&self, chat: bool) -> recall_core::memory_keys::KeyOptions {
        recall_core::memory_keys::KeyOptions {
            pause_ms: self.pause_ms,
            max_keys: self.max_keys_per_run,
            facts: self.facts && chat,
            sessions: self.sessions && chat,
            context: self.context,
            ..Default::default()
        }
    }
}

/// OpenTelemetry traces (see `crate::telemetry`); off without an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP collector: its base URL (`http://otel-collector:4318`, spans go to
    /// `/v1/traces`) or the full traces URL (`--otlp-endpoint`).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
    /// The share of traces kept (0 to 1) when the caller did not decide; a caller's sampled
    /// `traceparent` is followed.
    pub sample_ratio: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "deep-recall".into(),
            sample_ratio: 1.0,
        }
    }
}

/// Logs (to standard error).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A `tracing` filter (`info`, `recall_core=debug,warn`: the targets are the crates,
    /// `recall_server` and `recall_core`); the server logs at `info`, the other commands at
    /// `warn` by default.
    pub filter: Option<String>,
    /// `json` or `text`; the server logs JSON by default, the other commands text.
    pub format: Option<LogFormat>,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The MCP endpoint (`/mcp`, streamable HTTP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpSettings {
    /// Serve `/mcp`.
    pub enabled: bool,
    /// `Host` header values accepted at `/mcp` (names, or `name:port`), against DNS
    /// rebinding; loopback only by default: add the names the server is reached by. An empty
    /// list accepts any host.
    pub allowed_hosts: Vec<String>,
}

impl Default for McpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        }
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `/metrics` on this address only (an internal port for the scraper) instead of
    /// the main one.
    pub bind: Option<SocketAddr>,
    /// Require an admin credential (a JWT with `role: "admin"` or an admin API key).
    pub require_admin: bool,
}

/// The web chat UI, served at `/` from its built assets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSettings {
    /// Serve the UI at `/`.
    pub enabled: bool,
    /// The built UI (`npm run build` in `clients/web` writes `clients/web/dist`); when it is
    /// missing, `/` is a page that says how to build it.
    pub dir: PathBuf,
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("clients/web/dist"),
        }
    }
}

/// Environment variables read by [`Settings::load`] start with this.
pub const ENV_PREFIX: &str = "DEEP_RECALL__";

/// Largest `chat.prefix_cache_mib` (64 GiB).
const MAX_PREFIX_CACHE_MIB: usize = 1 << 16;

impl Settings {
    /// Defaults, then `file` (TOML) when given, then the `DEEP_RECALL__*` environment
    /// variables; validated.
    pub fn load(file: Option<&Path>) -> recall_core::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| Error::input_file(path, e))?;
            figment = figment.merge(Toml::string(&text));
        }
        let settings: Settings = figment
            .merge(Env::prefixed(ENV_PREFIX).split("__"))
            .extract()
            .map_err(|e| Error::invalid(format!("settings: {e}")))?;
        settings.validate()?;
        Ok(settings)
    }

    /// The effective settings as JSON, with every secret replaced by `"<redacted>"`: what
    /// `deep-recall config` prints, for an operator to check what a deployment will run with.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("settings serialise");
        for (section, key) in [
            ("store", "database_url"),
            ("models", "embedding_api_key"),
            ("auth", "jwt_secret"),
            ("chat", "api_key"),
        ] {
            if let Some(field) = v.get_mut(section).and_then(|s| s.get_mut(key))
                && !field.is_null()
            {
                *field = serde_json::Value::from("<redacted>");
            }
        }
        v
    }

    /// Checks ranges and combinations.
    pub fn validate(&self) -> recall_core::Result<()> {
        crate::proxy::TrustedProxies::parse(&self.trusted_proxies)?;
        if self.backup.interval()?.is_some() && self.backup.dir.is_none() {
            return Err(Error::invalid("backup.every needs backup.dir"));
        }
        if self.backup.keep == 0 {
            return Err(Error::invalid("backup.keep must be at least 1"));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(Error::invalid(
                "tls: give both a certificate (tls.cert, --tls-cert) and a key (tls.key, \
                 --tls-key), or neither",
            ));
        }
        if let Some(d) = self.store.dedupe_similarity
            && let Err(Error::InvalidInput { message }) =
                recall_core::engine::check_dedupe_similarity(d)
        {
            return Err(Error::invalid(format!("store.{message}")));
        }
        let max_ttl = recall_core::engine::MAX_TTL_SECONDS;
        if let Some((tag, secs)) = self
            .store
            .tag_ttl_seconds
            .iter()
            .find(|(_, s)| **s == 0 || **s > max_ttl)
        {
            return Err(Error::invalid(format!(
                "store.tag_ttl_seconds.{tag} = {secs}: a time to live is 1 to {max_ttl} seconds"
            )));
        }
        if let Err(Error::InvalidInput { message }) = self.memory_keys.options(true).validate() {
            return Err(Error::invalid(format!("memory_keys: {message}")));
        }
        if let Err(Error::InvalidInput { message }) = self.deep_memory.generate().validate() {
            return Err(Error::invalid(format!("deep_memory: {message}")));
        }
        // Periods in seconds: up to a year (a larger one overflows the clocks it is added to).
        for (name, secs) in [
            ("cache.ttl_secs", self.cache.ttl_secs),
            ("cache.clock_step_secs", self.cache.clock_step_secs),
            ("memory_keys.check_secs", self.memory_keys.check_secs),
            ("deep_memory.check_secs", self.deep_memory.check_secs),
            (
                "limits.request_timeout_secs",
                self.limits.request_timeout_secs,
            ),
        ] {
            if secs > MAX_PERIOD_SECS {
                return Err(Error::invalid(format!(
                    "{name} = {secs}: at most {MAX_PERIOD_SECS} (a year)"
                )));
            }
        }
        if self.limits.request_timeout_secs == 0 {
            return Err(Error::invalid(
                "limits.request_timeout_secs must be at least 1",
            ));
        }
        let t = &self.telemetry;
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return Err(Error::invalid(
                "telemetry.sample_ratio must be between 0 and 1",
            ));
        }
        if let Some(url) = &t.otlp_endpoint
            && !url.starts_with("http://")
        {
            return Err(Error::invalid(format!(
                "telemetry.otlp_endpoint {url:?}: an http:// URL of the OTLP/HTTP collector \
                 (a sidecar or an in-cluster service; https is not supported yet)"
            )));
        }
        let l = &self.limits;
        if l.max_body_bytes < 1024 {
            return Err(Error::invalid(
                "limits.max_body_bytes must be at least 1024",
            ));
        }
        if l.max_streams_per_user == 0 {
            return Err(Error::invalid(
                "limits.max_streams_per_user must be at least 1",
            ));
        }
        if l.max_subscriptions_per_user == 0 {
            return Err(Error::invalid(
                "limits.max_subscriptions_per_user must be at least 1",
            ));
        }
        if l.max_query_depth == 0 || l.max_query_complexity == 0 {
            return Err(Error::invalid(
                "GraphQL depth and complexity limits must be positive",
            ));
        }
        let c = &self.chat;
        if c.queue_capacity == 0 || c.max_sequences == 0 {
            return Err(Error::invalid(
                "chat.queue_capacity and chat.max_sequences must be positive",
            ));
        }
        if c.prefix_cache_mib > MAX_PREFIX_CACHE_MIB {
            return Err(Error::invalid(format!(
                "chat.prefix_cache_mib is at most {MAX_PREFIX_CACHE_MIB}"
            )));
        }
        if c.api_key.is_some() && c.api_key_file.is_some() {
            return Err(Error::invalid(
                "give chat.api_key or chat.api_key_file, not both",
            ));
        }
        if c.url.is_some() && c.context_length < 16 {
            return Err(Error::invalid("chat.context_length must be at least 16"));
        }
        if self.store.max_connections == 0 {
            return Err(Error::invalid("store.max_connections must be positive"));
        }
        if !(1..=1000).contains(&self.store.hnsw_ef_search) {
            return Err(Error::invalid(
                "store.hnsw_ef_search must be between 1 and 1000",
            ));
        }
        self.models.device()?;
        for k in &self.auth.api_keys {
            if k.user.trim().is_empty() {
                return Err(Error::invalid("auth.api_keys: a key has an empty user"));
            }
            if k.sha256.len() != 64 || hex::decode(&k.sha256).is_err() {
                return Err(Error::invalid(format!(
                    "auth.api_keys: the key of user {:?} is not a hex SHA-256",
                    k.user
                )));
            }
        }
        Ok(())
    }
}

/// The longest period a setting may name, in seconds: a year.
const MAX_PERIOD_SECS: u64 = 366 * 86_400;

#[cfg(test)]
mod tests;
