//! Rolling summaries through the engine: folded when due, in steps that fit the summarizer's
//! input, failures counted without wedging the session, and each span summarised once even
//! when two replicas try at the same time.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use recall_core::context::{Summarizer, SummaryPolicy};
use recall_core::embed::{EmbedConfig, EmbeddingService};
use recall_core::error::Error;
use recall_core::types::{Filter, MemoryKind, Message, NewMessage, Role};
use recall_core::{ContextOptions, Engine, StoreConfig};

use crate::context::{chat, engine, smollm};
use crate::fixtures::{PgDb, minilm_dir};

/// A deterministic stand-in for the chat model: the third word of every message. It counts a
/// token per word, refuses input over `max_input` (as a model fails past its window), keeps
/// its own output short when bounded, and records the size of every input.
struct FirstWords {
    calls: AtomicUsize,
    max_input: usize,
    inputs: Mutex<Vec<usize>>,
    fail: AtomicBool,
    panic_once: AtomicBool,
    delay_ms: u64,
}

impl FirstWords {
    fn new(max_input: usize) -> Self {
        Self {
            calls: AtomicUsize::new(0),
            max_input,
            inputs: Mutex::default(),
            fail: AtomicBool::new(false),
            panic_once: AtomicBool::new(false),
            delay_ms: 50,
        }
    }
}

#[async_trait]
impl Summarizer for FirstWords {
    async fn summarize(
        &self,
        _user: &str,
        previous: Option<&str>,
        messages: &[Message],
    ) -> recall_core::Result<String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(self.delay_ms)).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::unavailable("the summary model is down"));
        }
        if self.panic_once.swap(false, Ordering::SeqCst) {
            panic!("the summary model crashed");
        }
        let input = previous.map_or(0, |p| self.count_tokens(p))
            + messages
                .iter()
                .map(|m| self.count_tokens(&m.content))
                .sum::<usize>();
        self.inputs.lock().unwrap().push(input);
        if input > self.max_input {
            return Err(Error::invalid(format!(
                "{input} tokens do not fit the window"
            )));
        }
        let words: Vec<&str> = messages
            .iter()
            .filter_map(|m| m.content.split_whitespace().nth(2))
            .collect();
        let previous = match previous {
            // A bounded model writes short summaries: the previous one's last words.
            Some(p) if self.max_input < usize::MAX => {
                let w: Vec<&str> = p.split_whitespace().collect();
                w[w.len().saturating_sub(4)..].join(" ")
            }
            Some(p) => p.to_owned(),
            None => "start".to_owned(),
        };
        Ok(format!("{previous} | {}", words.join(" ")))
    }

    fn model_id(&self) -> &str {
        "first-words"
    }

    fn max_input_tokens(&self) -> usize {
        self.max_input
    }

    fn count_tokens(&self, text: &str) -> usize {
        text.split_whitespace().count()
    }
}

const POLICY: SummaryPolicy = SummaryPolicy {
    trigger_messages: 10,
    keep_recent: 4,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_summaries_fold_old_history_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let s = Arc::new(FirstWords::new(usize::MAX));
    e.add_messages("alice", chat(8)).await.unwrap();
    assert!(
        e.summarize_if_due("alice", "s", s.as_ref(), POLICY)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.calls.load(Ordering::SeqCst), 0, "not due: nothing asked");

    e.add_messages("alice", chat(12)[8..].to_vec())
        .await
        .unwrap();
    // Two at once, off the reply path: one summary only.
    let a = e.spawn_summarize_if_due("alice", "s", s.clone(), POLICY);
    let b = e.spawn_summarize_if_due("alice", "s", s.clone(), POLICY);
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    let summary = a.or(b).expect("one summary written");
    assert_eq!(s.calls.load(Ordering::SeqCst), 1);
    let summaries = e.summaries("alice", "s").await.unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summary.model.as_deref(), Some("first-words"));
    assert!(summary.content.starts_with("start | "));
    let messages = e
        .messages("alice", "s", &Default::default())
        .await
        .unwrap()
        .items;
    assert_eq!(summary.first_message_id, Some(messages[0].id));
    assert_eq!(summary.last_message_id, Some(messages[7].id));
    assert_eq!(
        e.session("alice", "s")
            .await
            .unwrap()
            .unwrap()
            .summarized_through,
        Some(messages[7].id),
        "the watermark follows the summary"
    );
    // The summary is searchable as a memory of kind summary.
    let kinds = e
        .memories(
            "alice",
            &Filter {
                kinds: vec![MemoryKind::Summary],
                ..Filter::default()
            },
            &Default::default(),
        )
        .await
        .unwrap()
        .items;
    assert_eq!(kinds.len(), 1);

    // Only the 4 kept messages are left unsummarised: not due again.
    assert!(
        e.summarize_if_due("alice", "s", s.as_ref(), POLICY)
            .await
            .unwrap()
            .is_none()
    );

    // The prompt now carries the summary and only the unsummarised messages.
    let out = e
        .build_context("alice", "s", "hi", &smollm(), &ContextOptions::default())
        .await
        .unwrap();
    assert_eq!(out.report.summaries.included, vec![summary.id]);
    assert!(out.messages[0].content.contains(&summary.content));
    let ids: Vec<i64> = messages[8..].iter().map(|m| m.id).collect();
    assert_eq!(out.report.history.included, ids);

    // The next fold builds on the previous summary.
    e.add_messages("alice", chat(18)[12..].to_vec())
        .await
        .unwrap();
    let next = e
        .summarize_if_due("alice", "s", s.as_ref(), POLICY)
        .await
        .unwrap()
        .unwrap();
    assert!(
        next.content.starts_with(&summary.content),
        "{}",
        next.content
    );
    assert_eq!(next.first_message_id, Some(messages[8].id));
    let stats = e.summary_stats();
    assert_eq!((stats.written, stats.failed), (2, 0));
}

/// A summary's memory is the summary: the text the user gives it is what the prompt shows and
/// the next fold builds on, and once deleted it is shown no more (nor are the messages it
/// folded brought back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_the_user_edits_or_deletes_is_what_the_prompt_shows() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let s = FirstWords::new(usize::MAX);
    e.add_messages("alice", chat(12)).await.unwrap();
    let summary = e
        .summarize_if_due("alice", "s", &s, POLICY)
        .await
        .unwrap()
        .expect("a summary");
    let memory = e
        .memories(
            "alice",
            &Filter {
                kinds: vec![MemoryKind::Summary],
                ..Filter::default()
            },
            &Default::default(),
        )
        .await
        .unwrap()
        .items[0]
        .id;
    let prompt = |e: Engine| async move {
        e.build_context("alice", "s", "hi", &smollm(), &ContextOptions::default())
            .await
            .unwrap()
    };

    e.update_memory(
        "alice",
        memory,
        recall_core::MemoryUpdate {
            content: Some("We planned a trip to Lisbon.".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let summaries = e.summaries("alice", "s").await.unwrap();
    assert_eq!(summaries[0].content, "We planned a trip to Lisbon.");
    let out = prompt(e.clone()).await;
    assert!(
        out.messages[0].content.contains("Lisbon"),
        "{:?}",
        out.messages[0]
    );
    assert!(!out.messages[0].content.contains(&summary.content));

    e.delete_memories("alice", &[memory]).await.unwrap();
    assert!(e.summaries("alice", "s").await.unwrap().is_empty());
    let out = prompt(e.clone()).await;
    assert!(out.report.summaries.included.is_empty());
    assert!(out.messages.iter().all(|m| !m.content.contains("Lisbon")));
    let messages = e
        .messages("alice", "s", &Default::default())
        .await
        .unwrap()
        .items;
    let kept: Vec<i64> = messages[8..].iter().map(|m| m.id).collect();
    assert_eq!(
        out.report.history.included, kept,
        "folded messages stay folded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backlog_is_folded_in_steps_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    // Each chat message is 12 words: two fit a 40-token input with their line overhead.
    let s = FirstWords::new(40);
    let mut messages = chat(30);
    // One message longer than the whole window.
    messages[5] = NewMessage::new("s", Role::User, "lorem ipsum dolor ".repeat(70));
    e.add_messages("alice", messages).await.unwrap();
    let last = e
        .summarize_if_due("alice", "s", &s, POLICY)
        .await
        .unwrap()
        .expect("due");
    let inputs = s.inputs.lock().unwrap().clone();
    assert!(inputs.len() > 5, "folded in steps: {inputs:?}");
    assert!(
        inputs.iter().all(|&n| n <= 40),
        "every step fits: {inputs:?}"
    );

    let stored = e
        .messages(
            "alice",
            "s",
            &recall_core::types::PageRequest {
                first: 100,
                after: None,
            },
        )
        .await
        .unwrap()
        .items;
    let summaries = e.summaries("alice", "s").await.unwrap();
    assert_eq!(summaries.len(), inputs.len());
    // The spans follow one another, from the first message to the last folded one, and the
    // newest four stay unsummarised.
    assert_eq!(summaries[0].first_message_id, Some(stored[0].id));
    for w in summaries.windows(2) {
        let end = stored
            .iter()
            .position(|m| Some(m.id) == w[0].last_message_id)
            .unwrap();
        assert_eq!(w[1].first_message_id, Some(stored[end + 1].id));
    }
    assert_eq!(last.last_message_id, Some(stored[25].id));
    assert_eq!(
        e.session("alice", "s")
            .await
            .unwrap()
            .unwrap()
            .summarized_through,
        Some(stored[25].id)
    );
    let out = e
        .build_context("alice", "s", "hi", &smollm(), &ContextOptions::default())
        .await
        .unwrap();
    let ids: Vec<i64> = stored[26..].iter().map(|m| m.id).collect();
    assert_eq!(out.report.history.included, ids);
    assert_eq!(e.summary_stats().written, summaries.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_summarizer_is_counted_and_does_not_wedge_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let s = FirstWords::new(usize::MAX);
    s.fail.store(true, Ordering::SeqCst);
    e.add_messages("alice", chat(12)).await.unwrap();
    let err = e
        .summarize_if_due("alice", "s", &s, POLICY)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), recall_core::ErrorKind::Unavailable);
    assert_eq!(e.summary_stats().failed, 1);
    assert!(e.summaries("alice", "s").await.unwrap().is_empty());
    let session = e.session("alice", "s").await.unwrap().unwrap();
    assert_eq!(session.summarized_through, None, "nothing moved");
    // The history is intact, and the next try (the model is back) folds it.
    s.fail.store(false, Ordering::SeqCst);
    let summary = e
        .summarize_if_due("alice", "s", &s, POLICY)
        .await
        .unwrap()
        .expect("due again");
    assert!(summary.content.starts_with("start | "));
    let stats = e.summary_stats();
    assert_eq!((stats.written, stats.failed), (1, 1));
}

/// A summarisation that panics, or whose caller stops waiting, leaves the session free to be
/// summarised by the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fold_that_never_finished_does_not_block_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let s = Arc::new(FirstWords::new(usize::MAX));
    e.add_messages("alice", chat(12)).await.unwrap();
    s.panic_once.store(true, Ordering::SeqCst);
    let crashed = e
        .spawn_summarize_if_due("alice", "s", s.clone(), POLICY)
        .await;
    assert!(crashed.unwrap_err().is_panic());
    // A caller that gives up mid-fold.
    let slow = FirstWords {
        delay_ms: 5_000,
        ..FirstWords::new(usize::MAX)
    };
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        e.summarize_if_due("alice", "s", &slow, POLICY),
    )
    .await;
    assert!(gave_up.is_err());
    let written = e
        .summarize_if_due("alice", "s", s.as_ref(), POLICY)
        .await
        .unwrap();
    assert!(written.is_some(), "the session is summarised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_summarise_a_span_once() {
    let pg = PgDb::create().await;
    let open = || async {
        let store = recall_core::store::open(&StoreConfig::postgres(pg.url.clone()))
            .await
            .unwrap();
        let mut config = EmbedConfig::new(minilm_dir());
        config.device = recall_core::device::DeviceConfig::Cpu;
        Engine::new(store, Arc::new(EmbeddingService::start(&config).unwrap()))
    };
    let (a, b) = (open().await, open().await);
    a.add_messages("alice", chat(12)).await.unwrap();
    // A slow model: both replicas read the same unsummarised span and both summarise it.
    let s = Arc::new(FirstWords {
        delay_ms: 400,
        ..FirstWords::new(usize::MAX)
    });
    let ta = a.spawn_summarize_if_due("alice", "s", s.clone(), POLICY);
    let tb = b.spawn_summarize_if_due("alice", "s", s.clone(), POLICY);
    let (ra, rb) = (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap());
    assert_eq!(
        ra.is_some() as u8 + rb.is_some() as u8,
        1,
        "one replica stores the summary"
    );
    let summaries = a.summaries("alice", "s").await.unwrap();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let (sa, sb) = (a.summary_stats(), b.summary_stats());
    assert_eq!(sa.written + sb.written, 1);
    assert_eq!(
        sa.superseded + sb.superseded,
        s.calls.load(Ordering::SeqCst) as u64 - 1,
        "a replica whose model also ran wrote nothing"
    );
    assert_eq!(
        a.count_memories("alice").await.unwrap(),
        13,
        "twelve messages and one summary"
    );
    pg.drop_db().await;
}
