//! Runs an embedding model on a dedicated thread. Requests wait in a bounded queue (callers
//! are held back when it is full); the worker merges waiting requests into one batch.
use std::sync::Arc;
use std::thread;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{BertEmbedder, EmbedConfig, Embedder};
use crate::device;
use crate::error::{Error, Result};

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
}

/// An [`Embedder`] backed by a [`BertEmbedder`] on its own thread.
pub struct EmbeddingService {
    model_id: String,
    dims: usize,
    max_batch: usize,
    queue: mpsc::Sender<Job>,
    max_tokens: usize,
    splitter: tokenizers::Tokenizer,
}

impl EmbeddingService {
    /// Loads the model (blocking: call it at start-up or through `spawn_blocking`) and starts
    /// the worker thread.
    pub fn start(config: &EmbedConfig) -> Result<Self> {
        let device = device::select(config.device)?;
        let model = BertEmbedder::load_with(
            &config.model_dir,
            &device,
            config.max_batch,
            config.max_seq_len,
            super::Kernels::Auto,
            config.precision,
        )?;
        let model_id = config.model_id.clone().unwrap_or_else(|| {
            config
                .model_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| super::DEFAULT_EMBEDDING_MODEL.to_owned())
        });
        Ok(Self::with_model(model, model_id, config))
    }

    /// Starts the worker around an already loaded model.
    pub fn with_model(model: BertEmbedder, model_id: String, config: &EmbedConfig) -> Self {
        let dims = model.dims();
        let max_tokens = model.max_tokens();
        let splitter = model.splitting_tokenizer();
        let max_batch = config.max_batch.max(1);
        let (tx, rx) = mpsc::channel::<Job>(config.queue_capacity.max(1));
        let model = Arc::new(model);
        thread::Builder::new()
            .name("deep-recall-embed".into())
            .spawn(move || worker(model, rx, max_batch))
            .expect("spawn embedding worker");
        Self {
            model_id,
            dims,
            max_batch,
            queue: tx,
            max_tokens,
            splitter,
        }
    }

    /// Requests waiting for the worker.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

fn worker(model: Arc<BertEmbedder>, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    while let Some(first) = rx.blocking_recv() {
        // Take whatever else is waiting, up to one batch of texts.
        let mut jobs = vec![first];
        let mut count = jobs[0].texts.len();
        while count < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.texts.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // Skip callers that went away.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let texts: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        match model.embed(&texts) {
            Ok(mut vectors) => {
                for job in jobs.into_iter().rev() {
                    let rest = vectors.split_off(vectors.len() - job.texts.len());
                    let _ = job.reply.send(Ok(rest));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for job in jobs {
                    let _ = job
                        .reply
                        .send(Err(Error::Internal(format!("embedding failed: {message}"))));
                }
            }
        }
    }
}

#[async_trait]
impl Embedder for EmbeddingService {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn max_tokens(&self) -> Option<usize> {
        Some(self.max_tokens)
    }

    fn token_spans(&self, text: &str) -> Option<Vec<(usize, usize)>> {
        let enc = self.splitter.encode(text, false).ok()?;
        Some(enc.get_offsets().to_vec())
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        // Large requests go in batch-sized jobs, so that other callers get turns in between.
        let mut pending = Vec::new();
        let mut texts = texts.into_iter().peekable();
        while texts.peek().is_some() {
            let chunk: Vec<String> = texts.by_ref().take(self.max_batch).collect();
            let (reply, rx) = oneshot::channel();
            self.queue
                .send(Job {
                    texts: chunk,
                    reply,
                })
                .await
                .map_err(|_| Error::unavailable("embedding worker has stopped"))?;
            pending.push(rx);
        }
        let mut out = Vec::new();
        for rx in pending {
            out.extend(
                rx.await
                    .map_err(|_| Error::unavailable("embedding worker has stopped"))??,
            );
        }
        Ok(out)
    }
}
