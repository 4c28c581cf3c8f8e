//! Prompt assembly through the engine with SmolLM2's real tokenizer.
use std::sync::Arc;

use recall_core::context::{ContextBudget, TokenCounter};
use recall_core::embed::{EmbedConfig, EmbeddingService};
use recall_core::llm::tokenizer;
use recall_core::types::{MemoryKind, NewMessage, Role};
use recall_core::{ContextOptions, Engine, StoreConfig};

use crate::fixtures::{minilm_dir, models_dir};

pub(crate) async fn engine(dir: &std::path::Path) -> Engine {
    let store = recall_core::store::open(&StoreConfig::embedded(dir))
        .await
        .unwrap();
    let mut config = EmbedConfig::new(minilm_dir());
    config.device = recall_core::device::DeviceConfig::Cpu;
    Engine::new(store, Arc::new(EmbeddingService::start(&config).unwrap()))
}

pub(crate) fn smollm() -> tokenizers::Tokenizer {
    tokenizer::load(&models_dir().join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .unwrap()
}

pub(crate) fn chat(n: usize) -> Vec<NewMessage> {
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
    // Each message and its template overhead, and the answer's opening.
    let counted: usize = out
        .messages
        .iter()
        .map(|m| tok.count(&m.content) + options.budget.per_message_overhead)
        .sum::<usize>()
        + options.budget.per_message_overhead;
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
        ..Default::default()
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

/// A persona card longer than its share: stored as the session's persona memories, and the
/// prompt carries its opening and the chunks that matter for the message, within the share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_persona_card_comes_as_its_relevant_chunks() {
    use recall_core::types::{Filter, PageRequest, SessionPatch};
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let tok = smollm();
    let mut card = String::from(
        "You are Captain Mira Okafor, the calm commander of the research ship Heron.\n",
    );
    for i in 0..40 {
        card += &format!("Log entry {i}: the crew charted reef number {i} and counted its fish.\n");
    }
    card += "Mira's favourite drink is cardamom tea, brewed strong, never with sugar.\n";
    for i in 40..60 {
        card += &format!("Log entry {i}: the crew charted reef number {i} and counted its fish.\n");
    }
    let set = |card: Option<String>| SessionPatch {
        title: None,
        persona: Some(card),
    };
    e.create_session("alice", "voyage", set(Some(card.clone())))
        .await
        .unwrap();
    let personas = |user: &'static str| {
        let e = e.clone();
        async move {
            e.memories(
                user,
                &Filter {
                    kinds: vec![MemoryKind::Persona],
                    ..Filter::default()
                },
                &PageRequest {
                    first: 500,
                    after: None,
                },
            )
            .await
            .unwrap()
            .items
        }
    };
    let stored = personas("alice").await;
    assert_eq!(stored.len(), recall_core::persona::chunks(&card).len());
    assert!(stored.len() > 5, "{}", stored.len());
    assert!(
        stored
            .iter()
            .all(|m| m.session.as_deref() == Some("voyage"))
    );

    e.add_messages(
        "alice",
        vec![NewMessage::new(
            "voyage",
            Role::User,
            "I brought biscuits for the crew.",
        )],
    )
    .await
    .unwrap();
    let options = ContextOptions {
        budget: ContextBudget {
            context_window: 1024,
            response_reserve: 128,
            ..ContextBudget::default()
        },
        ..ContextOptions::default()
    };
    let (ctx, memories) = e
        .context_with_memories(
            "alice",
            "voyage",
            "What do you like to drink?",
            &tok,
            &options,
        )
        .await
        .unwrap();
    let system = &ctx.messages[0].content;
    assert!(
        system.starts_with("You are Captain Mira Okafor"),
        "{system}"
    );
    assert!(system.contains("cardamom tea"), "{system}");
    let r = &ctx.report.persona;
    assert_eq!(r.budget, (896.0 * 0.25) as usize);
    assert!(r.tokens <= r.budget && r.tokens > 0, "{r:?}");
    assert!(r.included.len() >= 2 && !r.dropped.is_empty(), "{r:?}");
    let ids: Vec<i64> = stored.iter().map(|m| m.id).collect();
    assert!(
        r.included
            .iter()
            .chain(&r.dropped)
            .all(|id| ids.contains(id))
    );
    assert!(ctx.report.used <= ctx.report.budget);
    // The persona's chunks are not memories about the user.
    assert!(
        memories
            .iter()
            .all(|m| m.memory.kind != MemoryKind::Persona)
    );

    // A card given with the request is excerpted the same way, from chunks embedded now.
    let given = ContextOptions {
        persona: Some(card.clone()),
        ..options.clone()
    };
    let ctx = e
        .build_context("bob", "s", "What do you like to drink?", &tok, &given)
        .await
        .unwrap();
    assert!(ctx.messages[0].content.contains("cardamom tea"));
    assert!(ctx.report.persona.included.iter().all(|&id| id < 0));
    assert!(personas("bob").await.is_empty(), "Bob stored no card");

    // A new card replaces the chunks (a short one goes in whole); clearing it removes them.
    e.create_session(
        "alice",
        "voyage",
        set(Some("You are Ada, a gardener.".into())),
    )
    .await
    .unwrap();
    let stored = personas("alice").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].content, "You are Ada, a gardener.");
    let ctx = e
        .build_context(
            "alice",
            "voyage",
            "What do you like to drink?",
            &tok,
            &options,
        )
        .await
        .unwrap();
    assert!(
        ctx.messages[0]
            .content
            .starts_with("You are Ada, a gardener.")
    );
    assert!(ctx.report.persona.included.is_empty() && ctx.report.persona.dropped.is_empty());
    e.create_session("alice", "voyage", set(None))
        .await
        .unwrap();
    assert!(personas("alice").await.is_empty());
}
