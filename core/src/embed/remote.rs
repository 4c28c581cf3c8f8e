//! A remote embedder speaking the OpenAI embeddings API (`POST {base_url}/embeddings`):
//! text-embeddings-inference, vLLM, Ollama, OpenAI. For operators who embed on another machine;
//! nothing leaves this one otherwise.
//!
//! Texts go in requests of at most `max_batch`, with the remote chat client's timeouts,
//! retries (connection failures, timeouts, 429, 5xx) and circuit breaker. The vector size is
//! asked of the provider once at start (one short text), because the store's index is made for
//! it; every answer is checked against it (count, order by `index`, dimension, finite values).
use async_trait::async_trait;
use serde_json::{Value, json};

use super::Embedder;
use crate::error::{Error, Result};
use crate::llm::RemoteConfig;
use crate::llm::remote::Provider;

/// Texts in one request when the settings do not say.
pub const DEFAULT_REMOTE_BATCH: usize = 64;

/// See the module documentation.
pub struct RemoteEmbedder {
    provider: Provider,
    dims: usize,
    max_batch: usize,
}

impl RemoteEmbedder {
    /// A client for `config` (`config.model` is the provider's model name, also recorded with
    /// every vector), sending at most `max_batch` texts a request. Asks the provider for one
    /// vector to learn the dimension: an unreachable provider is an error here, at start.
    pub async fn connect(config: RemoteConfig, max_batch: usize) -> Result<Self> {
        let mut embedder = Self {
            provider: Provider::new(config)?,
            dims: 0,
            max_batch: max_batch.max(1),
        };
        let probe = embedder.request(&["dimension probe".to_owned()]).await?;
        embedder.dims = probe[0].len();
        if embedder.dims == 0 {
            return Err(Error::unavailable(
                "the embedding provider answered an empty vector",
            ));
        }
        Ok(embedder)
    }

    async fn request(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let body = json!({
            "model": self.provider.config.model,
            "input": texts,
            "encoding_format": "float",
        });
        let (resp, ticket) = self.provider.call("/embeddings", &body, false).await?;
        let parsed = match resp.bytes().await {
            Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| format!("the answer is not JSON: {e}"))
                .and_then(|v| self.vectors(&v, texts.len())),
            Err(e) => Err(format!("the answer broke off: {e}")),
        };
        ticket.record(parsed.is_ok());
        parsed.map_err(|why| Error::unavailable(format!("embedding provider: {why}")))
    }

    /// The vectors of an answer, in input order, checked.
    fn vectors(&self, v: &Value, expected: usize) -> std::result::Result<Vec<Vec<f32>>, String> {
        let data = v["data"]
            .as_array()
            .ok_or("the answer has no `data` list")?;
        if data.len() != expected {
            return Err(format!("{} vectors for {expected} texts", data.len()));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; expected];
        for (pos, item) in data.iter().enumerate() {
            let index = item["index"].as_u64().map_or(pos, |i| i as usize);
            let slot = out
                .get_mut(index)
                .ok_or_else(|| format!("index {index} out of range"))?;
            if slot.is_some() {
                return Err(format!("index {index} answered twice"));
            }
            let values = item["embedding"].as_array().ok_or_else(|| {
                format!("item {index} has no `embedding` list (base64 is not asked for)")
            })?;
            let vector: Vec<f32> = values
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32).filter(|f| f.is_finite()))
                .collect::<Option<_>>()
                .ok_or_else(|| format!("item {index} holds a value that is not a finite number"))?;
            if self.dims != 0 && vector.len() != self.dims {
                return Err(format!(
                    "a vector of {} dimensions where the model gave {} before",
                    vector.len(),
                    self.dims
                ));
            }
            *slot = Some(vector);
        }
        Ok(out.into_iter().map(|v| v.unwrap_or_default()).collect())
    }
}

#[async_trait]
impl Embedder for RemoteEmbedder {
    fn model_id(&self) -> &str {
        &self.provider.config.model
    }

    fn dims(&self) -> usize {
        self.dims
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.max_batch) {
            out.extend(self.request(chunk).await?);
        }
        Ok(out)
    }
}
