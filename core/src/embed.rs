//! Text embeddings: the [`Embedder`] trait, a candle BERT-family embedder ([`bert`]) and the
//! service that runs it off the async runtime with batching and back-pressure ([`service`]).
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::device::DeviceConfig;
use crate::error::Result;

pub mod bert;
pub mod encoder;
pub mod graph;
#[cfg(feature = "native")]
pub mod remote;
#[cfg(feature = "native")]
pub mod service;

pub use bert::{BertEmbedder, Kernels};
#[cfg(feature = "native")]
pub use remote::RemoteEmbedder;
#[cfg(feature = "native")]
pub use service::EmbeddingService;

/// The arithmetic of the local embedder's dense layers on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// F32 throughout: sentence-transformers' vectors to about 1e-6.
    #[default]
    F32,
    /// Dense-layer weights quantized to int8 per output channel at load, their inputs per
    /// row: about twice the speed (four times the matrix throughput on CPUs with AVX-512
    /// VNNI), a quarter of the weight memory, vectors at cosine ≥ 0.99 to the F32 ones. On
    /// GPUs, where candle's BERT runs in F16, it changes nothing.
    Int8,
}

impl Precision {
    /// The name used in settings and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Precision::F32),
            "int8" | "i8" => Ok(Precision::Int8),
            other => Err(crate::error::Error::invalid(format!(
                "unknown embedding precision {other:?} (expected f32 or int8)"
            ))),
        }
    }
}

/// The default embedding model: all-MiniLM-L6-v2 (384 dimensions).
pub const DEFAULT_EMBEDDING_MODEL: &str = "all-MiniLM-L6-v2";

/// Turns texts into vectors.
#[async_trait]
pub trait Embedder: Send + Sync {
    /// The model's id, recorded with every vector it makes.
    fn model_id(&self) -> &str;

    /// The vector dimension.
    fn dims(&self) -> usize;

    /// The longest text, in model tokens, that is embedded whole (longer ones are truncated);
    /// `None` when unknown.
    fn max_tokens(&self) -> Option<usize> {
        None
    }

    /// Byte ranges of the text's model tokens (no special tokens, no truncation), for
    /// splitting long texts; `None` when the embedder cannot tell.
    fn token_spans(&self, _text: &str) -> Option<Vec<(usize, usize)>> {
        None
    }

    /// Embeds texts, one vector per text, in order.
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>>;

    /// Embeds one text.
    async fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
        let mut v = self.embed(vec![text.to_owned()]).await?;
        v.pop()
            .ok_or_else(|| crate::error::Error::Internal("embedder returned no vector".into()))
    }
}

/// The embedder of an engine that loaded no model ([`crate::engine::Engine::without_models`]):
/// every embedding fails with a model error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEmbedder;

#[async_trait]
impl Embedder for NoEmbedder {
    fn model_id(&self) -> &str {
        "none"
    }

    fn dims(&self) -> usize {
        0
    }

    async fn embed(&self, _texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        Err(crate::error::Error::model(
            "no embedding model is loaded for this command",
        ))
    }
}

/// Configuration of a local embedding model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedConfig {
    /// A Hugging Face-style directory: `config.json`, `tokenizer.json`, `model.safetensors`
    /// (and optionally sentence-transformers' `sentence_bert_config.json`,
    /// `1_Pooling/config.json`, `modules.json`).
    pub model_dir: PathBuf,
    /// The id recorded with vectors; the directory name when absent.
    pub model_id: Option<String>,
    /// Where to run.
    #[serde(default)]
    pub device: DeviceConfig,
    /// Most texts in one forward pass.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Most requests waiting for the worker; callers wait when it is full.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Longest input in tokens (longer texts are truncated); the model's own limit when absent.
    pub max_seq_len: Option<usize>,
    /// The arithmetic of the dense layers on the CPU.
    #[serde(default)]
    pub precision: Precision,
}

fn default_max_batch() -> usize {
    32
}
fn default_queue() -> usize {
    256
}

impl EmbedConfig {
    /// The model in `model_dir`, everything else default.
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            model_id: None,
            device: DeviceConfig::default(),
            max_batch: default_max_batch(),
            queue_capacity: default_queue(),
            max_seq_len: None,
            precision: Precision::default(),
        }
    }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}
