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
    max_tokens: Option<usize>,
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
            max_tokens: None,
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

    /// The provider model's input limit in tokens: longer messages are split into pieces of
    /// at most about that many (tokens estimated from the text, [`estimated_tokens`]), and
    /// other texts cut there, as for a local model, instead of being sent whole (providers
    /// refuse over-long inputs). None (the default): texts are sent whole.
    pub fn with_max_tokens(mut self, max_tokens: Option<usize>) -> Self {
        self.max_tokens = max_tokens.map(|n| n.max(1));
        self
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

    fn max_tokens(&self) -> Option<usize> {
        self.max_tokens
    }

    fn token_spans(&self, text: &str) -> Option<Vec<(usize, usize)>> {
        self.max_tokens.map(|_| estimated_tokens(text))
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        // Past the limit a text is cut, as a local model's tokenizer cuts it (messages are
        // split before they come here; a memory key, say, may still run over).
        let texts: Vec<String> = match self.max_tokens {
            Some(max) => texts
                .into_iter()
                .map(|t| match estimated_tokens(&t).get(max) {
                    Some(&(cut, _)) => t[..cut].trim_end().to_owned(),
                    None => t,
                })
                .collect(),
            None => texts,
        };
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.max_batch) {
            out.extend(self.request(chunk).await?);
        }
        Ok(out)
    }
}

/// Byte ranges that each stand for at most about one token, without the provider's
/// tokenizer: a punctuation mark, up to four ASCII letters or digits of a word, one other
/// letter (a CJK character is often a token or more). Counted this way, prose is not longer
/// in real tokens than in these, so pieces cut to the limit fit; strings of random letters
/// (hashes, base64) can run over, and set a lower limit there.
pub fn estimated_tokens(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The ASCII run being read: where it starts, and its length.
    let mut run: Option<(usize, usize)> = None;
    for (i, c) in text.char_indices() {
        if c.is_ascii_alphanumeric() {
            run = match run {
                Some((start, n)) if n < 4 => Some((start, n + 1)),
                Some((start, _)) => {
                    out.push((start, i));
                    Some((i, 1))
                }
                None => Some((i, 1)),
            };
            continue;
        }
        if let Some((start, _)) = run.take() {
            out.push((start, i));
        }
        if !c.is_whitespace() {
            out.push((i, i + c.len_utf8()));
        }
    }
    if let Some((start, _)) = run {
        out.push((start, text.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::estimated_tokens;

    #[test]
    fn estimated_tokens_cut_words_marks_and_other_letters() {
        let text = "The spare-key, 2024: 東京 café";
        let pieces: Vec<&str> = estimated_tokens(text)
            .into_iter()
            .map(|(a, b)| &text[a..b])
            .collect();
        assert_eq!(
            pieces,
            [
                "The", "spar", "e", "-", "key", ",", "2024", ":", "東", "京", "caf", "é"
            ]
        );
        assert!(estimated_tokens("").is_empty());
    }
}
