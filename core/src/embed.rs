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

    /// Byte ranges of the pieces a text is embedded in: the whole text when it fits the
    /// model's window (or the embedder cannot tell), else chunks of it
    /// ([`crate::chunk::chunk_ranges`] with the default [`crate::chunk::ChunkConfig`]).
    fn piece_ranges(&self, text: &str) -> Vec<(usize, usize)> {
        let chunking = crate::chunk::ChunkConfig::default();
        let max = chunking
            .max_tokens
            .or(self.max_tokens())
            .unwrap_or(usize::MAX);
        match self.token_spans(text) {
            Some(spans) if spans.len() > max => {
                crate::chunk::chunk_ranges(text, &spans, max, chunking.overlap_tokens)
            }
            _ => vec![(0, text.len())],
        }
    }

    /// Embeds texts that are stored as one memory each, however long: a text over the
    /// model's window is split as messages are ([`Embedder::piece_ranges`]) and its vector
    /// is the mean of its pieces' vectors (at their mean length), so that all of it is found,
    /// not only what fits in the first window (the rest would be cut off).
    async fn embed_whole(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let mut owners: Vec<usize> = Vec::with_capacity(texts.len());
        let mut pieces: Vec<String> = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            for (a, b) in self.piece_ranges(text) {
                owners.push(i);
                pieces.push(text[a..b].to_owned());
            }
        }
        if pieces.len() == texts.len() {
            return self.embed(texts).await;
        }
        let vectors = self.embed(pieces).await?;
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let mut counts = vec![0usize; texts.len()];
        let mut norms = vec![0f32; texts.len()];
        for (&i, v) in owners.iter().zip(&vectors) {
            if out[i].is_empty() {
                out[i] = vec![0.0; v.len()];
            }
            for (s, x) in out[i].iter_mut().zip(v) {
                *s += x;
            }
            counts[i] += 1;
            norms[i] += v.iter().map(|x| x * x).sum::<f32>().sqrt();
        }
        for ((v, n), norm) in out.iter_mut().zip(counts).zip(norms) {
            let length = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if n > 1 && length > 0.0 {
                let scale = norm / n as f32 / length;
                v.iter_mut().for_each(|x| *x *= scale);
            }
        }
        Ok(out)
    }

    /// [`Embedder::embed_whole`] of one text.
    async fn embed_one_whole(&self, text: &str) -> Result<Vec<f32>> {
        let mut v = self.embed_whole(vec![text.to_owned()]).await?;
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
