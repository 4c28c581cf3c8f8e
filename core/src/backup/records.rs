//! The records of a backup file: the header, one row type per table, and [`Record`], one
//! line of the file.
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The first record of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT`](super::FORMAT).
    pub format: String,
    /// [`VERSION`](super::VERSION) of the writer.
    pub version: u32,
    /// The last schema migration of the store the data was read from.
    pub schema: String,
    /// When the snapshot was taken.
    pub created_at: DateTime<Utc>,
    /// `postgres` or `embedded`.
    pub backend: String,
    /// The store's vector metric.
    pub metric: String,
    /// The embedding models present, with their dimensions.
    pub models: Vec<ModelDims>,
    /// The one user backed up, or `None` for all of them.
    pub user: Option<String>,
    /// How many users follow.
    #[serde(default)]
    pub users: u64,
}

/// An embedding model and its dimension.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelDims {
    /// The model id recorded with each vector.
    pub model: String,
    /// Its dimension.
    pub dims: usize,
}

/// A user, with their settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRow {
    /// The user's id.
    pub id: String,
    /// When they were created.
    pub created_at: DateTime<Utc>,
    /// Their settings, if any were stored.
    pub settings: Option<Value>,
    /// When the settings last changed.
    pub settings_updated_at: Option<DateTime<Utc>>,
    /// Whether the background job writes extra keys for their memories.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory_keys: bool,
    /// The embedding model their searches use, once a re-embedding switched them (their
    /// vectors are of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
}

/// A session row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRow {
    pub id: i64,
    pub external_id: String,
    pub title: Option<String>,
    pub persona: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub summarized_through: Option<i64>,
}

/// A message row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRow {
    pub id: i64,
    pub session_id: i64,
    pub role: String,
    pub content: String,
    pub tags: Value,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
}

/// A summary row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub id: i64,
    pub session_id: i64,
    pub content: String,
    pub first_message_id: Option<i64>,
    pub last_message_id: Option<i64>,
    pub model: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A memory row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryRow {
    pub id: i64,
    pub session_id: Option<i64>,
    pub message_id: Option<i64>,
    pub summary_id: Option<i64>,
    pub kind: String,
    pub role: Option<String>,
    pub content: String,
    pub tags: Value,
    pub metadata: Value,
    pub importance: f32,
    pub emotion: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_for: Option<i64>,
}

/// One memory's vector of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingRow {
    pub memory_id: i64,
    pub model: String,
    /// Base64 of the little-endian `f32` components.
    pub vector: String,
}

impl EmbeddingRow {
    /// Encodes a vector.
    pub fn new(memory_id: i64, model: String, vector: &[f32]) -> Self {
        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        Self {
            memory_id,
            model,
            vector: B64.encode(bytes),
        }
    }

    /// Decodes the vector.
    pub fn decode(&self) -> Result<Vec<f32>> {
        let bytes = B64
            .decode(&self.vector)
            .map_err(|e| Error::invalid(format!("backup: a vector is not base64: {e}")))?;
        if bytes.is_empty() || bytes.len() % 4 != 0 {
            return Err(Error::invalid("backup: a vector has a broken length"));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// A deep memory pair (its own id is not kept; its memory's is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRow {
    pub memory_id: i64,
    pub question: String,
    pub source: crate::deep_memory::PairSource,
    pub model: Option<String>,
    pub prompt_version: Option<u32>,
    pub created_at: DateTime<Utc>,
}

/// A user's query adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRow {
    pub embedding_model: String,
    pub version: u32,
    pub dims: usize,
    pub rank: usize,
    /// Base64 of the little-endian `f32` weights (`U` then `V`).
    pub weights: String,
    pub report: crate::deep_memory::TrainingReport,
    pub enabled: bool,
    pub memories: u64,
    pub pairs: u64,
    pub trained_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl AdapterRow {
    /// The row of a stored adapter.
    pub fn new(a: &crate::deep_memory::StoredAdapter) -> Self {
        let bytes: Vec<u8> = a
            .adapter
            .weights()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        Self {
            embedding_model: a.embedding_model.clone(),
            version: a.version,
            dims: a.adapter.dims(),
            rank: a.adapter.rank(),
            weights: B64.encode(bytes),
            report: a.report.clone(),
            enabled: a.enabled,
            memories: a.memories,
            pairs: a.pairs,
            trained_at: a.trained_at,
            updated_at: a.updated_at,
        }
    }

    /// The stored adapter it holds.
    pub fn decode(&self) -> Result<crate::deep_memory::StoredAdapter> {
        let bytes = B64
            .decode(&self.weights)
            .map_err(|e| Error::invalid(format!("backup: adapter weights are not base64: {e}")))?;
        if !bytes.len().is_multiple_of(4) {
            return Err(Error::invalid(
                "backup: adapter weights have a broken length",
            ));
        }
        let weights = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(crate::deep_memory::StoredAdapter {
            embedding_model: self.embedding_model.clone(),
            version: self.version,
            adapter: crate::deep_memory::Adapter::from_weights(self.dims, self.rank, weights)
                .map_err(|_| Error::invalid("backup: adapter weights do not fit its shape"))?,
            report: self.report.clone(),
            enabled: self.enabled,
            memories: self.memories,
            pairs: self.pairs,
            trained_at: self.trained_at,
            updated_at: self.updated_at,
        })
    }
}

/// An audit log row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    pub id: i64,
    pub actor: String,
    pub action: String,
    pub detail: Value,
    pub created_at: DateTime<Utc>,
}

/// One line of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Record {
    Header(Header),
    User(UserRow),
    Sessions {
        user: String,
        rows: Vec<SessionRow>,
    },
    Messages {
        user: String,
        rows: Vec<MessageRow>,
    },
    Summaries {
        user: String,
        rows: Vec<SummaryRow>,
    },
    Memories {
        user: String,
        rows: Vec<MemoryRow>,
    },
    Embeddings {
        user: String,
        rows: Vec<EmbeddingRow>,
    },
    Audit {
        user: String,
        rows: Vec<AuditRow>,
    },
    DeepMemoryPairs {
        user: String,
        rows: Vec<PairRow>,
    },
    DeepMemoryAdapter {
        user: String,
        row: AdapterRow,
    },
    /// The last line: how many records came before it and the SHA-256 (hex) of their bytes.
    End {
        records: u64,
        sha256: String,
    },
}

impl Record {
    /// The rows of a record in two records of about half each (a line too long to write
    /// whole is written as two); `None` for a record that is not rows, or holds one.
    pub(crate) fn halves(&self) -> Option<(Record, Record)> {
        macro_rules! halves {
            ($variant:ident, $user:expr, $rows:expr) => {{
                if $rows.len() < 2 {
                    return None;
                }
                let (a, b) = $rows.split_at($rows.len() / 2);
                Some((
                    Record::$variant {
                        user: $user.clone(),
                        rows: a.to_vec(),
                    },
                    Record::$variant {
                        user: $user.clone(),
                        rows: b.to_vec(),
                    },
                ))
            }};
        }
        match self {
            Record::Sessions { user, rows } => halves!(Sessions, user, rows),
            Record::Messages { user, rows } => halves!(Messages, user, rows),
            Record::Summaries { user, rows } => halves!(Summaries, user, rows),
            Record::Memories { user, rows } => halves!(Memories, user, rows),
            Record::Embeddings { user, rows } => halves!(Embeddings, user, rows),
            Record::Audit { user, rows } => halves!(Audit, user, rows),
            Record::DeepMemoryPairs { user, rows } => halves!(DeepMemoryPairs, user, rows),
            Record::Header(_)
            | Record::User(_)
            | Record::DeepMemoryAdapter { .. }
            | Record::End { .. } => None,
        }
    }
}

/// The tables whose row ids a backup carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `sessions`
    Sessions,
    /// `messages`
    Messages,
    /// `summaries`
    Summaries,
    /// `memories`
    Memories,
    /// `audit_log`
    Audit,
}

impl Table {
    /// The SQL table name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sessions => "sessions",
            Self::Messages => "messages",
            Self::Summaries => "summaries",
            Self::Memories => "memories",
            Self::Audit => "audit_log",
        }
    }
}
