//! Per-user isolation of ranking: nothing another user stores changes a user's results —
//! not their order, not a bit of their scores — in any search mode, with memory keys and the
//! names, times and neighbours the ranking reads. On both stores, and on Postgres searched by
//! its own statements too.
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use recall_core::cache::QueryCacheConfig;
use recall_core::embed::{EmbedConfig, EmbeddingService};
use recall_core::memory_keys::KeyOptions;
use recall_core::retrieval::{RankingConfig, SearchMode};
use recall_core::types::{NewMessage, Role};
use recall_core::{Engine, RetrieveOptions};

use crate::fixtures::{TestStore, minilm_dir};

/// Alice's conversation: names, places, times, a question and its answer.
const ALICE: &[(Role, &str)] = &[
    (
        Role::User,
        "My sister Ana moved to Montreal in May 2023 for a teaching job.",
    ),
    (
        Role::Assistant,
        "That is a big move! How is she finding the winters?",
    ),
    (
        Role::User,
        "She hates the cold but loves the bagels on Saint-Viateur.",
    ),
    (
        Role::User,
        "I adopted a greyhound last week, we called him Pixel.",
    ),
    (Role::Assistant, "Pixel is a great name. How old is he?"),
    (Role::User, "Three. He sleeps on the sofa all day."),
    (Role::User, "I'm terrified of the knee surgery on Friday."),
    (
        Role::User,
        "We watched a documentary about deep sea creatures in Lisbon.",
    ),
];

/// Bob's, written over Alice's words: the same names, places and topics, in the same
/// session id, many times.
fn bobs() -> Vec<NewMessage> {
    let mut out = Vec::new();
    for round in 0..6 {
        for (role, text) in ALICE {
            out.push(NewMessage::new("s1", *role, *text));
            out.push(NewMessage::new(
                "s1",
                Role::User,
                format!("Round {round}: Ana, Montreal, Pixel the greyhound, surgery on Friday."),
            ));
        }
        out.push(NewMessage::new(
            "s1",
            Role::User,
            "Where did my sister move? What is the dog called? When is the surgery?",
        ));
    }
    out
}

const QUESTIONS: &[&str] = &[
    "Where did my sister move?",
    "What is the dog called?",
    "When is the knee surgery?",
    "What happened in May 2023?",
    "Ana Montreal",
    "How old is Pixel?",
];

fn embedder() -> Arc<EmbeddingService> {
    let mut config = EmbedConfig::new(minilm_dir());
    config.device = recall_core::device::DeviceConfig::Cpu;
    Arc::new(EmbeddingService::start(&config).unwrap())
}

/// Every question in every mode: the ids and the scores' bits, best first.
async fn rankings(e: &Engine, user: &str) -> Vec<Vec<(i64, u32)>> {
    let now = Utc.with_ymd_and_hms(2024, 6, 1, 12, 0, 0).unwrap();
    let mut out = Vec::new();
    for mode in [SearchMode::Hybrid, SearchMode::Vector, SearchMode::Text] {
        for q in QUESTIONS {
            let options = RetrieveOptions {
                now: Some(now),
                ranking: RankingConfig::for_mode(mode),
                ..RetrieveOptions::for_mode(mode, 10)
            };
            let hits = e.retrieve(user, q, &options).await.unwrap();
            out.push(
                hits.iter()
                    .map(|h| (h.memory.id, h.score.to_bits()))
                    .collect(),
            );
        }
    }
    out
}

async fn keys(e: &Engine, user: &str) {
    e.set_memory_keys(user, true).await.unwrap();
    e.write_all_memory_keys(user, &KeyOptions::default(), &mut |_, _, _| {})
        .await
        .unwrap();
}

async fn another_users_data_changes_nothing(t: &TestStore) {
    // No query cache: every search is computed again.
    let e = Engine::new(t.reopen().await, embedder()).with_query_cache(QueryCacheConfig {
        capacity: 0,
        ..QueryCacheConfig::default()
    });
    let at = Utc.with_ymd_and_hms(2024, 5, 20, 9, 0, 0).unwrap();
    let alice: Vec<NewMessage> = ALICE
        .iter()
        .enumerate()
        .map(|(i, (role, text))| {
            let mut m = NewMessage::new("s1", *role, *text);
            m.created_at = Some(at + chrono::Duration::minutes(i as i64));
            m
        })
        .collect();
    e.add_messages("alice", alice).await.unwrap();
    keys(&e, "alice").await;
    assert!(e.memory_keys_status("alice").await.unwrap().keys > 0);
    let before = rankings(&e, "alice").await;
    assert!(before.iter().all(|r| !r.is_empty()), "{before:?}");

    e.add_messages("bob", bobs()).await.unwrap();
    keys(&e, "bob").await;
    let after = rankings(&e, "alice").await;
    assert_eq!(after, before, "Bob's data moved Alice's ranking");
    // (And Bob's searches find his own memories only.)
    let alice_ids: Vec<i64> = before.iter().flatten().map(|h| h.0).collect();
    let bob = rankings(&e, "bob").await;
    assert!(bob.iter().flatten().all(|h| !alice_ids.contains(&h.0)));
}

crate::fixtures::both_backends! {
    statements;
    another_users_data_changes_nothing;
}
