//! Re-ranking with a cross-encoder: a model that reads the query and a candidate together and
//! scores their relevance, more accurately (and more slowly) than comparing embeddings.
use async_trait::async_trait;

use crate::error::Result;

#[cfg(feature = "native")]
pub mod classifier;

#[cfg(feature = "native")]
pub use classifier::{ClassifierEmotionDetector, CrossEncoder, SequenceClassifier};

/// Scores (query, document) pairs.
#[async_trait]
pub trait Reranker: Send + Sync {
    /// A short name for reports.
    fn name(&self) -> &str;

    /// One relevance logit per document, in order (higher is more relevant).
    async fn score(&self, query: &str, documents: Vec<String>) -> Result<Vec<f32>>;
}
