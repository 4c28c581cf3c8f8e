//! Prompt assembly through the engine with SmolLM2's real tokenizer, and rolling summaries.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use recall_core::context::{ContextBudget, Summarizer, SummaryPolicy, TokenCounter};
use recall_core::embed::{EmbedConfig, EmbeddingService};
use recall_core::llm::tokenizer;
use recall_core::types::{Filter, MemoryKind, Message, NewMessage, Role};
use recall_core::{ContextOptions, Engine, StoreConfig};

use crate::fixtures::{minilm_dir, models_dir};

async fn engine(dir: &std::path::Path) -> Engine {
    let store = recall_core::store::open(&StoreConfig::embedded(dir))
        .await
        .unwrap();
    let mut config = EmbedConfig::new(minilm_dir());
    config.device = recall_core::device::DeviceConfig::Cpu;
    Engine::new(store, Arc::new(EmbeddingService::start(&config).unwrap()))
}

fn smollm() -> tokenizers::Tokenizer {
    tokenizer::load(&models_dir().join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .unwrap()
}

fn chat(n: usize) -> Vec<NewMessage> {
    let mut out = vec![NewMessage::new(
        "s",
        Role::User,
        "By the way, I'm allergic to peanuts, so no satay for me.",
    )];
    for i in 1..n {
        let role = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        out.push(NewMessage::new(
            "s",
            role,
            format!("Message number {i} about the garden, the weather and the weekend plans."),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_fits_the_budget_counted_with_the_real_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    e.add_messages("alice", chat(30)).await.unwrap();
    let tok = smollm();
    let options = ContextOptions {
        system: Some("You are a helpful assistant with a long memory.".into()),
        persona: Some("Your name is Ada.".into()),
        budget: ContextBudget {
            context_window: 400,
            response_reserve: 100,
            ..ContextBudget::default()
        },
        ..ContextOptions::default()
    };
    let out = e
        .build_context("alice", "s", "What should I avoid eating?", &tok, &options)
        .await
        .unwrap();
    let r = &out.report;
    assert_eq!(r.budget, 300);
    let counted: usize = out
        .messages
        .iter()
        .map(|m| tok.count(&m.content) + options.budget.per_message_overhead)
        .sum();
    assert_eq!(r.used, counted);
    assert!(r.used <= r.budget, "{r:?}");
    // System prompt and persona whole, first; the new message last.
    assert_eq!(out.messages[0].role, Role::System);
    assert!(
        out.messages[0]
            .content
            .starts_with("You are a helpful assistant with a long memory.\n\nYour name is Ada.")
    );
    assert_eq!(
        out.messages.last().unwrap().content,
        "What should I avoid eating?"
    );
    // Recent history: the newest messages, whole and in order; older ones dropped.
    assert!(!r.history.dropped.is_empty() && !r.history.included.is_empty());
    assert!(r.history.included.windows(2).all(|w| w[0] < w[1]));
    assert!(r.history.dropped.iter().all(|d| d < &r.history.included[0]));
    assert!(
        out.messages[out.messages.len() - 2]
            .content
            .contains("number 29")
    );
    // The old allergy is out of the history window but comes back as a memory.
    assert!(
        out.messages[0].content.contains("allergic to peanuts"),
        "{}",
        out.messages[0].content
    );
    // A budget too small for the fixed parts is a clear error.
    let tiny = ContextOptions {
        budget: ContextBudget {
            context_window: 20,
            response_reserve: 10,
            ..ContextBudget::default()
        },
        ..options.clone()
    };
    let err = e
        .build_context("alice", "s", "What should I avoid eating?", &tok, &tiny)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), recall_core::ErrorKind::InvalidInput);
}

/// A deterministic stand-in for the chat model: the first word of every message.
struct FirstWords {
    calls: AtomicUsize,
}

#[async_trait]
impl Summarizer for FirstWords {
    async fn summarize(
        &self,
        previous: Option<&str>,
        messages: &[Message],
    ) -> recall_core::Result<String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let words: Vec<&str> = messages
            .iter()
            .filter_map(|m| m.content.split_whitespace().nth(2))
            .collect();
        Ok(format!(
            "{} | {}",
            previous.unwrap_or("start"),
            words.join(" ")
        ))
    }
    fn model_id(&self) -> &str {
        "first-words"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_summaries_fold_old_history_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let s = Arc::new(FirstWords {
        calls: AtomicUsize::new(0),
    });
    let policy = SummaryPolicy {
        trigger_messages: 10,
        keep_recent: 4,
    };
    e.add_messages("alice", chat(8)).await.unwrap();
    assert!(
        e.summarize_if_due("alice", "s", s.as_ref(), policy)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.calls.load(Ordering::SeqCst), 0, "not due: nothing asked");

    e.add_messages("alice", chat(12)[8..].to_vec())
        .await
        .unwrap();
    // Two at once, off the reply path: one summary only.
    let a = e.spawn_summarize_if_due("alice", "s", s.clone(), policy);
    let b = e.spawn_summarize_if_due("alice", "s", s.clone(), policy);
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
        e.summarize_if_due("alice", "s", s.as_ref(), policy)
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
        .summarize_if_due("alice", "s", s.as_ref(), policy)
        .await
        .unwrap()
        .unwrap();
    assert!(
        next.content.starts_with(&summary.content),
        "{}",
        next.content
    );
    assert_eq!(next.first_message_id, Some(messages[8].id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_held_conversation_replaces_the_stored_history() {
    use recall_core::context::ChatTurn;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    engine.add_messages("alice", chat(6)).await.unwrap();
    let turn = |role, content: &str| ChatTurn {
        role,
        content: content.into(),
    };
    let options = ContextOptions {
        conversation: Some(vec![
            turn(Role::System, "Be brief."),
            turn(Role::User, "I have a cat named Miso."),
            turn(Role::Assistant, "Cute!"),
        ]),
        ..ContextOptions::default()
    };
    let (ctx, memories) = engine
        .context_with_memories(
            "alice",
            "s",
            "Am I allergic to anything?",
            &smollm(),
            &options,
        )
        .await
        .unwrap();
    let roles: Vec<Role> = ctx.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::System, Role::User, Role::Assistant, Role::User]
    );
    assert!(ctx.messages[0].content.starts_with("Be brief."));
    assert_eq!(ctx.messages[1].content, "I have a cat named Miso.");
    assert_eq!(ctx.messages[3].content, "Am I allergic to anything?");
    // The stored history is not replayed as turns, but long-term memory still comes back.
    assert!(
        ctx.messages
            .iter()
            .all(|m| !m.content.starts_with("Message number"))
    );
    assert!(
        ctx.messages[0].content.contains("peanuts"),
        "{}",
        ctx.messages[0].content
    );
    assert!(
        memories
            .iter()
            .any(|r| r.memory.content.contains("peanuts"))
    );
    assert!(ctx.report.summaries.included.is_empty());

    // A memory that repeats a turn of the caller's conversation is not shown twice.
    engine
        .add_messages(
            "alice",
            vec![NewMessage::new("s", Role::User, "I have a cat named Miso.")],
        )
        .await
        .unwrap();
    let (ctx, _) = engine
        .context_with_memories("alice", "s", "What is my cat called?", &smollm(), &options)
        .await
        .unwrap();
    assert_eq!(
        ctx.messages[0].content.matches("Miso").count(),
        0,
        "{}",
        ctx.messages[0].content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_events_reach_their_owner_only() {
    use recall_core::events::{Event, MemoryAction, Received};
    use recall_core::{MemoryUpdate, NewMemoryText};
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let mut alice = engine.events().subscribe("alice");
    let mut bob = engine.events().subscribe("bob");
    let fact = |text: &str| NewMemoryText {
        kind: MemoryKind::Fact,
        content: text.into(),
        session: None,
        tags: vec![],
        importance: None,
    };
    engine
        .add_memory("bob", fact("Bob's private fact"))
        .await
        .unwrap();
    let m = engine
        .add_memory("alice", fact("Alice likes figs"))
        .await
        .unwrap();
    engine
        .update_memory(
            "alice",
            m.id,
            MemoryUpdate {
                content: Some("Alice loves figs".into()),
                ..MemoryUpdate::default()
            },
        )
        .await
        .unwrap();
    // Bob's id through Alice's name changes nothing and announces nothing.
    assert_eq!(
        engine
            .delete_memories("alice", &[m.id + 1000])
            .await
            .unwrap(),
        0
    );
    engine.delete_memories("alice", &[m.id]).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        match alice.next().await.unwrap() {
            Received::Event(e) => match *e {
                Event::Memory(e) => got.push((e.action, e.memory_id, e.memory.map(|m| m.content))),
                other => panic!("not a memory event: {other:?}"),
            },
            Received::Lagged(n) => panic!("lagged {n}"),
        }
    }
    assert_eq!(
        got,
        [
            (
                MemoryAction::Added,
                m.id,
                Some("Alice likes figs".to_owned())
            ),
            (
                MemoryAction::Updated,
                m.id,
                Some("Alice loves figs".to_owned())
            ),
            (MemoryAction::Deleted, m.id, None),
        ]
    );
    match bob.next().await.unwrap() {
        Received::Event(e) => {
            let Event::Memory(e) = *e else {
                panic!("not a memory event: {e:?}")
            };
            assert_eq!(e.user, "bob");
            assert_eq!(e.memory.unwrap().content, "Bob's private fact");
        }
        Received::Lagged(n) => panic!("lagged {n}"),
    }
    let more = tokio::time::timeout(std::time::Duration::from_millis(200), bob.next()).await;
    assert!(more.is_err(), "Bob saw another user's event: {more:?}");
}
