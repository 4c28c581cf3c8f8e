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

/// What the worker runs: one forward pass over a batch of texts.
trait BatchModel: Send + Sync + 'static {
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
}

impl BatchModel for BertEmbedder {
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed(texts)
    }
}

/// One forward pass, with a panic in the model turned into an error: the worker thread (and
/// with it every later caller) must outlive one bad batch.
fn run_batch<M: BatchModel + ?Sized>(model: &M, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
    let vectors =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.embed_batch(texts)))
            .map_err(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "the model panicked".to_owned());
                Error::Internal(format!("embedding failed: {what}"))
            })?
            .map_err(|e| Error::Internal(format!("embedding failed: {e}")))?;
    if vectors.len() != texts.len() {
        return Err(Error::Internal(format!(
            "embedding failed: {} vectors for {} texts",
            vectors.len(),
            texts.len()
        )));
    }
    Ok(vectors)
}

fn worker<M: BatchModel + ?Sized>(model: Arc<M>, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
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
        match run_batch(&*model, &texts) {
            Ok(mut vectors) => {
                for job in jobs.into_iter().rev() {
                    let rest = vectors.split_off(vectors.len() - job.texts.len());
                    let _ = job.reply.send(Ok(rest));
                }
            }
            Err(e) if jobs.len() == 1 => {
                if let Some(job) = jobs.pop() {
                    let _ = job.reply.send(Err(e));
                }
            }
            // A merged batch failed: one caller's texts may be the cause, so each caller is
            // run alone and gets its own result, not a stranger's failure.
            Err(_) => {
                for job in jobs {
                    let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
                    let _ = job.reply.send(run_batch(&*model, &texts));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails any batch that holds "bad", panics on any batch that holds "boom"; a vector
    /// is the text's length.
    struct Picky {
        calls: AtomicUsize,
    }

    impl BatchModel for Picky {
        fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if texts.contains(&"boom") {
                panic!("shape mismatch");
            }
            if texts.contains(&"bad") {
                return Err(Error::Internal("cannot tokenize".into()));
            }
            Ok(texts.iter().map(|t| vec![t.len() as f32]).collect())
        }
    }

    fn job(texts: &[&str]) -> (Job, oneshot::Receiver<Result<Vec<Vec<f32>>>>) {
        let (reply, rx) = oneshot::channel();
        let texts = texts.iter().map(|t| (*t).to_owned()).collect();
        (Job { texts, reply }, rx)
    }

    /// Queues every job before the worker starts, so that it merges them into one batch.
    fn run(jobs: Vec<Job>) -> Arc<Picky> {
        let model = Arc::new(Picky {
            calls: AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::channel(16);
        for j in jobs {
            tx.try_send(j).expect("queue has room");
        }
        drop(tx);
        worker(model.clone(), rx, 64);
        model
    }

    #[test]
    fn a_failing_text_fails_only_its_caller() {
        let (a, ra) = job(&["hello", "hi"]);
        let (b, rb) = job(&["bad"]);
        let (c, rc) = job(&["boom", "x"]);
        let (d, rd) = job(&["four"]);
        let model = run(vec![a, b, c, d]);
        assert_eq!(
            ra.blocking_recv().unwrap().unwrap(),
            vec![vec![5.0], vec![2.0]]
        );
        let err = rb.blocking_recv().unwrap().unwrap_err().to_string();
        assert!(err.contains("cannot tokenize"), "{err}");
        let err = rc.blocking_recv().unwrap().unwrap_err().to_string();
        assert!(err.contains("shape mismatch"), "{err}");
        assert_eq!(rd.blocking_recv().unwrap().unwrap(), vec![vec![4.0]]);
        // One merged pass, then one pass per caller.
        assert_eq!(model.calls.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn callers_of_a_good_batch_share_one_pass() {
        let (a, ra) = job(&["one"]);
        let (b, rb) = job(&["three", "xy"]);
        let model = run(vec![a, b]);
        assert_eq!(ra.blocking_recv().unwrap().unwrap(), vec![vec![3.0]]);
        assert_eq!(
            rb.blocking_recv().unwrap().unwrap(),
            vec![vec![5.0], vec![2.0]]
        );
        assert_eq!(model.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_worker_outlives_a_panicking_batch() {
        let (a, ra) = job(&["boom"]);
        let (b, rb) = job(&["fine"]);
        let model = Arc::new(Picky {
            calls: AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::channel(16);
        let handle = {
            let model = model.clone();
            thread::spawn(move || worker(model, rx, 1))
        };
        tx.blocking_send(a).expect("worker is running");
        assert!(ra.blocking_recv().unwrap().is_err());
        tx.blocking_send(b).expect("worker is still running");
        assert_eq!(rb.blocking_recv().unwrap().unwrap(), vec![vec![4.0]]);
        drop(tx);
        handle.join().unwrap();
    }
}
