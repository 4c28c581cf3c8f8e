//! Ingest through the engine on both stores with the real embedding model: a call larger than
//! one batch of the pipeline keeps its order, chunks and progress, and an embedding failure
//! part-way leaves nothing.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use recall_core::retrieval::{RankingConfig, SearchMode};
use recall_core::types::{NewMessage, Role};
use recall_core::{Embedder, Engine, ErrorKind, RetrieveOptions};

use crate::fixtures::{TestStore, cpu_embedder, minilm_dir};

crate::fixtures::both_backends! {
    a_long_call_keeps_order_chunks_and_progress;
    an_embedding_failure_part_way_leaves_nothing;
}

/// The real embedder, counting its requests and failing the one numbered `fail_at` (from 1).
struct Counting {
    inner: Arc<dyn Embedder>,
    requests: AtomicUsize,
    fail_at: Option<usize>,
}

#[async_trait::async_trait]
impl Embedder for Counting {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }
    fn dims(&self) -> usize {
        self.inner.dims()
    }
    fn max_tokens(&self) -> Option<usize> {
        self.inner.max_tokens()
    }
    fn token_spans(&self, text: &str) -> Option<Vec<(usize, usize)>> {
        self.inner.token_spans(text)
    }
    async fn embed(&self, texts: Vec<String>) -> recall_core::Result<Vec<Vec<f32>>> {
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_at == Some(n) {
            return Err(recall_core::Error::unavailable("the embedder went away"));
        }
        self.inner.embed(texts).await
    }
}

async fn engine(t: &TestStore, fail_at: Option<usize>) -> (Engine, Arc<Counting>) {
    let counting = Arc::new(Counting {
        inner: cpu_embedder(&minilm_dir()),
        requests: AtomicUsize::new(0),
        fail_at,
    });
    (Engine::new(t.reopen().await, counting.clone()), counting)
}

/// 75 short messages over three sessions, message 40 long enough to be split.
fn conversation() -> Vec<NewMessage> {
    let filler =
        "We talked about the weather and the traffic and what to cook tonight. ".repeat(28);
    (1..=75)
        .map(|i| {
            let text = if i == 40 {
                format!("{filler}Oh, and the spare key is hidden under the blue flowerpot.")
            } else {
                format!("Note number {i}: the meeting about topic {i} went fine.")
            };
            NewMessage::new(format!("s{}", i / 30), Role::User, text)
        })
        .collect()
}

async fn a_long_call_keeps_order_chunks_and_progress(t: &TestStore) {
    let (e, counting) = engine(t, None).await;
    let seen = Mutex::new(Vec::new());
    let written = e
        .add_messages_with_progress("alice", conversation(), &|done| {
            seen.lock().unwrap().push(done)
        })
        .await
        .unwrap();
    // Every message once, in order, its memories its own.
    assert_eq!(written.len(), 75);
    for (i, w) in written.iter().enumerate() {
        let n = i + 1;
        if n == 40 {
            assert!(w.message.content.ends_with("flowerpot."));
            assert!(w.memory_ids.len() >= 2, "{} chunks", w.memory_ids.len());
        } else {
            assert_eq!(
                w.message.content,
                format!("Note number {n}: the meeting about topic {n} went fine.")
            );
            assert_eq!(w.memory_ids.len(), 1);
        }
        for id in &w.memory_ids {
            let m = e.memory("alice", *id).await.unwrap().unwrap();
            assert_eq!(m.message_id, Some(w.message.id));
        }
    }
    assert!(
        written
            .windows(2)
            .all(|w| w[0].message.id < w[1].message.id)
    );
    // Progress after each batch, ending at the whole call; one request per batch.
    let seen = seen.into_inner().unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&75), "{seen:?}");
    assert_eq!(counting.requests.load(Ordering::SeqCst), seen.len());
    assert!(seen.len() >= 3, "{seen:?}");
    // The vectors went with their texts.
    let options = RetrieveOptions {
        top_k: 1,
        mode: SearchMode::Vector,
        ranking: RankingConfig::plain(),
        ..RetrieveOptions::default()
    };
    let hits = e
        .retrieve("alice", "where is the spare key hidden?", &options)
        .await
        .unwrap();
    assert_eq!(hits[0].memory.message_id, Some(written[39].message.id));
    let hits = e
        .retrieve("alice", "the meeting about topic 63", &options)
        .await
        .unwrap();
    assert_eq!(hits[0].memory.message_id, Some(written[62].message.id));
}

async fn an_embedding_failure_part_way_leaves_nothing(t: &TestStore) {
    let (e, counting) = engine(t, Some(3)).await;
    let err = e.add_messages("alice", conversation()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(counting.requests.load(Ordering::SeqCst) >= 3);
    assert!(t.store().get_user("alice").await.unwrap().is_none());
    for table in ["messages", "memories", "memory_embeddings"] {
        assert_eq!(t.count_rows(table).await, 0, "{table}");
    }
}
