//! Retrieval through the engine on both stores, with the real embedding model: modes,
//! emotion and importance at ingest, chunking of long messages, the query cache, isolation.
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use recall_core::embed::{EmbedConfig, EmbeddingService};
use recall_core::retrieval::{EMOTION_CONFIDENCE_KEY, RankingConfig, SearchMode};
use recall_core::types::{Filter, NewMessage, Role};
use recall_core::{Engine, RetrieveOptions};

use crate::fixtures::{TestStore, minilm_dir};

fn embedder() -> Arc<EmbeddingService> {
    let mut config = EmbedConfig::new(minilm_dir());
    config.device = recall_core::device::DeviceConfig::Cpu;
    Arc::new(EmbeddingService::start(&config).unwrap())
}

const CHAT: &[&str] = &[
    "I adopted a greyhound last week, we called him Pixel.",
    "I'm terrified of the knee surgery on Friday.",
    "ok thanks",
    "My sister Ana moved to Montreal for a teaching job.",
    "The new ramen place on Baker Street was disgusting, the broth smelled off.",
    "We watched a documentary about deep sea creatures.",
];

async fn engine_with_chat(t: &TestStore) -> Engine {
    let store = t.reopen().await;
    let engine = Engine::new(store, embedder());
    let messages = CHAT
        .iter()
        .map(|c| NewMessage::new("s1", Role::User, *c))
        .collect();
    engine.add_messages("alice", messages).await.unwrap();
    engine
        .add_messages(
            "bob",
            vec![NewMessage::new(
                "s1",
                Role::User,
                "My greyhound Pixel is also terrified of surgery.",
            )],
        )
        .await
        .unwrap();
    engine
}

fn options(mode: SearchMode, ranking: RankingConfig) -> RetrieveOptions {
    RetrieveOptions {
        top_k: 3,
        mode,
        ranking,
        ..RetrieveOptions::default()
    }
}

crate::fixtures::both_backends! {
    modes_find_the_right_memory;
    ingest_scores_emotion_and_importance;
    long_messages_are_chunked_and_found;
    query_cache_hits_and_invalidates;
    retrieval_is_isolated;
    time_entities_and_neighbours_lift_the_right_turn;
    the_named_speaker_and_statements_come_first;
    dates_in_a_memory_count_for_questions_about_then;
    near_identical_memories_merge_on_add;
    memories_stay_true_through_the_engine;
    compounds_match_as_the_user_writes_them;
}

async fn modes_find_the_right_memory(t: &TestStore) {
    let e = engine_with_chat(t).await;
    for mode in [SearchMode::Vector, SearchMode::Text, SearchMode::Hybrid] {
        let hits = e
            .retrieve(
                "alice",
                "What is the name of my dog Pixel?",
                &options(mode, RankingConfig::default()),
            )
            .await
            .unwrap();
        assert!(hits[0].memory.content.contains("Pixel"), "{mode}: {hits:?}");
    }
    // Plain vector mode reports the raw cosine similarity as the score.
    let hits = e
        .retrieve(
            "alice",
            "Where does Ana live now?",
            &options(SearchMode::Vector, RankingConfig::plain()),
        )
        .await
        .unwrap();
    assert!(hits[0].memory.content.contains("Montreal"), "{hits:?}");
    assert_eq!(Some(hits[0].score), hits[0].signals.similarity);
    assert!(hits[0].signals.bm25.is_none());
    // Text mode has BM25 and no similarity; a query without shared words finds nothing.
    let hits = e
        .retrieve(
            "alice",
            "Montreal",
            &options(SearchMode::Text, RankingConfig::plain()),
        )
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert!(hits[0].signals.bm25.unwrap() > 0.0);
    assert!(
        e.retrieve(
            "alice",
            "zebra",
            &options(SearchMode::Text, RankingConfig::plain())
        )
        .await
        .unwrap()
        .is_empty()
    );
    // Hybrid: a candidate found by words only still gets its similarity (weighted fusion).
    let hits = e
        .retrieve(
            "alice",
            "Baker Street",
            &options(SearchMode::Hybrid, RankingConfig::default()),
        )
        .await
        .unwrap();
    assert!(hits[0].memory.content.contains("Baker Street"));
    assert!(hits[0].signals.similarity.is_some() && hits[0].signals.bm25.is_some());
    // Filters apply to both retrievers.
    let mut o = options(SearchMode::Hybrid, RankingConfig::default());
    o.filter = Filter {
        session: Some("elsewhere".into()),
        ..Filter::default()
    };
    assert!(e.retrieve("alice", "Pixel", &o).await.unwrap().is_empty());
    // Bad ranking configuration is refused.
    let bad = RankingConfig {
        mmr_lambda: Some(3.0),
        ..RankingConfig::default()
    };
    let err = e
        .retrieve("alice", "Pixel", &options(SearchMode::Hybrid, bad))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), recall_core::ErrorKind::InvalidInput);
}

async fn ingest_scores_emotion_and_importance(t: &TestStore) {
    let e = engine_with_chat(t).await;
    let all = e
        .memories("alice", &Filter::default(), &Default::default())
        .await
        .unwrap()
        .items;
    let by_text = |needle: &str| all.iter().find(|m| m.content.contains(needle)).unwrap();
    let surgery = by_text("surgery");
    assert_eq!(surgery.emotion.as_deref(), Some("fear"));
    assert!(surgery.metadata[EMOTION_CONFIDENCE_KEY].as_f64().unwrap() > 0.5);
    assert_eq!(by_text("ramen").emotion.as_deref(), Some("disgust"));
    assert_eq!(by_text("documentary").emotion.as_deref(), Some("neutral"));
    assert!(by_text("Ana moved").importance > by_text("ok thanks").importance);
    assert!(by_text("greyhound").importance > by_text("ok thanks").importance);
    // The emotional match signal lifts the fearful memory for a fearful query.
    let ranking = RankingConfig {
        emotion_weight: 0.5,
        ..RankingConfig::plain()
    };
    let hits = e
        .retrieve(
            "alice",
            "what am I scared of?",
            &options(SearchMode::Hybrid, ranking),
        )
        .await
        .unwrap();
    assert!(hits[0].memory.content.contains("surgery"), "{hits:?}");
    assert!(hits[0].signals.emotion > 0.0);
}

async fn long_messages_are_chunked_and_found(t: &TestStore) {
    let e = engine_with_chat(t).await;
    // ~400 tokens of filler, then the fact: beyond the model's 256-token window.
    let filler =
        "We talked about the weather and the traffic and what to cook tonight. ".repeat(28);
    let long = format!("{filler}Oh, and the spare key is hidden under the blue flowerpot.");
    let written = e
        .add_messages(
            "alice",
            vec![NewMessage {
                metadata: serde_json::json!({ "source": "email" }),
                ..NewMessage::new("s2", Role::User, long.clone())
            }],
        )
        .await
        .unwrap();
    let ids = &written[0].memory_ids;
    assert!(ids.len() >= 2, "{} chunks", ids.len());
    let mut chunks = Vec::new();
    for id in ids {
        let m = e.memory("alice", *id).await.unwrap().unwrap();
        assert_eq!(m.message_id, Some(written[0].message.id));
        assert_eq!(m.metadata["chunks"], ids.len());
        // Every piece carries what the message was sent with.
        assert_eq!(m.metadata["source"], "email");
        chunks.push(m.content);
    }
    assert!(long.starts_with(chunks[0].as_str()));
    assert!(long.ends_with(chunks.last().unwrap().as_str()));
    let hits = e
        .retrieve(
            "alice",
            "where is the spare key hidden?",
            &options(SearchMode::Vector, RankingConfig::plain()),
        )
        .await
        .unwrap();
    assert!(hits[0].memory.content.contains("flowerpot"), "{hits:?}");
    assert_eq!(hits[0].memory.message_id, Some(written[0].message.id));
}

async fn query_cache_hits_and_invalidates(t: &TestStore) {
    let e = engine_with_chat(t).await;
    let mut o = options(SearchMode::Hybrid, RankingConfig::default());
    o.now = Some(chrono::Utc::now());
    let first = e.retrieve("alice", "Pixel", &o).await.unwrap();
    let before = e.cache_stats();
    let again = e.retrieve("alice", "Pixel", &o).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(e.cache_stats().hits, before.hits + 1);
    // Another user's write keeps alice's entry; alice's own write drops it.
    e.add_messages(
        "bob",
        vec![NewMessage::new("s1", Role::User, "Pixel again")],
    )
    .await
    .unwrap();
    e.retrieve("alice", "Pixel", &o).await.unwrap();
    assert_eq!(e.cache_stats().hits, before.hits + 2);
    e.add_messages(
        "alice",
        vec![NewMessage::new("s1", Role::User, "Pixel learned to sit!")],
    )
    .await
    .unwrap();
    let after = e.retrieve("alice", "Pixel", &o).await.unwrap();
    assert_eq!(e.cache_stats().hits, before.hits + 2);
    assert!(
        after
            .iter()
            .any(|h| h.memory.content.contains("learned to sit"))
    );
}

async fn retrieval_is_isolated(t: &TestStore) {
    let e = engine_with_chat(t).await;
    for mode in [SearchMode::Vector, SearchMode::Text, SearchMode::Hybrid] {
        let hits = e
            .retrieve(
                "bob",
                "Pixel greyhound surgery Montreal ramen",
                &options(mode, RankingConfig::default()),
            )
            .await
            .unwrap();
        assert_eq!(hits.len(), 1, "{mode}: {hits:?}");
        assert!(
            hits[0]
                .memory
                .content
                .starts_with("My greyhound Pixel is also")
        );
        assert!(
            e.retrieve("carol", "Pixel", &options(mode, RankingConfig::default()))
                .await
                .unwrap()
                .is_empty()
        );
    }
}

fn said(session: &str, role: Role, text: &str, at: chrono::DateTime<Utc>) -> NewMessage {
    NewMessage {
        created_at: Some(at),
        ..NewMessage::new(session, role, text)
    }
}

async fn time_entities_and_neighbours_lift_the_right_turn(t: &TestStore) {
    let e = engine_with_chat(t).await;
    let may = Utc.with_ymd_and_hms(2023, 5, 8, 13, 0, 0).unwrap();
    let june = Utc.with_ymd_and_hms(2023, 6, 20, 13, 0, 0).unwrap();
    let minute = chrono::Duration::minutes(1);
    // One hike in May, and many more in June that read just like it.
    let mut messages = vec![said(
        "may",
        Role::User,
        "Today we go hiking in the hills.",
        may,
    )];
    for i in 0..40 {
        messages.push(said(
            &format!("june-{i}"),
            Role::User,
            &format!("Where did we go hiking? The hills again, trip {i}."),
            june + minute * i,
        ));
    }
    // A question, and its answer that shares no word with what will be asked.
    let wedding = Utc.with_ymd_and_hms(2023, 7, 2, 9, 0, 0).unwrap();
    messages.extend([
        said(
            "w",
            Role::Assistant,
            "What a lovely family photo! How long have you been married?",
            wedding,
        ),
        said(
            "w",
            Role::User,
            "Five years already, time flies!",
            wedding + minute,
        ),
        said(
            "w",
            Role::Assistant,
            "Did you see the match on Sunday?",
            wedding + minute * 2,
        ),
    ]);
    e.add_messages("carol", messages).await.unwrap();
    let now = Utc.with_ymd_and_hms(2023, 8, 1, 0, 0, 0).unwrap();
    let ask = |ranking: RankingConfig, top_k: usize| RetrieveOptions {
        top_k,
        now: Some(now),
        ranking: RankingConfig {
            candidates: top_k,
            ..ranking
        },
        ..RetrieveOptions::default()
    };
    let off = RankingConfig {
        time_weight: 0.0,
        entity_weight: 0.0,
        neighbours: 0,
        neighbour_weight: 0.0,
        ..RankingConfig::default()
    };
    let on = RankingConfig {
        time_weight: 0.2,
        entity_weight: 0.05,
        neighbours: 1,
        neighbour_weight: 0.3,
        ..RankingConfig::default()
    };
    // Time (by similarity alone, to leave words out of it): the May hike is not among the
    // three best candidates without the window; with it, the window's own search finds it
    // and the time signal puts it first.
    let q = "Where did we go hiking in May 2023?";
    let by_vector = |ranking: RankingConfig| RetrieveOptions {
        mode: SearchMode::Vector,
        ..ask(ranking, 3)
    };
    let hits = e
        .retrieve("carol", q, &by_vector(off.clone()))
        .await
        .unwrap();
    assert!(
        hits.iter()
            .all(|h| h.memory.session.as_deref() != Some("may")),
        "{hits:?}"
    );
    let hits = e
        .retrieve("carol", q, &by_vector(on.clone()))
        .await
        .unwrap();
    assert_eq!(hits[0].memory.session.as_deref(), Some("may"), "{hits:?}");
    assert_eq!(hits[0].signals.time, 1.0);
    assert!(hits[1..].iter().all(|h| h.signals.time == 0.0));
    // Neighbourhood: the answer turn is lifted by the question before it.
    let q = "How many years have they been married?";
    let answer = "Five years already, time flies!";
    let hits = e.retrieve("carol", q, &ask(on.clone(), 2)).await.unwrap();
    let found = hits.iter().find(|h| h.memory.content == answer);
    let found = found.unwrap_or_else(|| panic!("{hits:?}"));
    assert!(found.signals.neighbour > 0.0, "{found:?}");
    let without = e.retrieve("carol", q, &ask(off.clone(), 40)).await.unwrap();
    let plain = without.iter().find(|h| h.memory.content == answer);
    assert!(plain.is_none_or(|h| h.signals.neighbour == 0.0));
    // A neighbour outside the filter stays out.
    let mut assistant_only = ask(on.clone(), 45);
    assistant_only.filter.roles = vec![Role::Assistant];
    let hits = e.retrieve("carol", q, &assistant_only).await.unwrap();
    assert!(
        hits.iter().all(|h| h.memory.role == Some(Role::Assistant)),
        "{hits:?}"
    );
    // Entities: the share of the query's names a memory mentions.
    let hits = e
        .retrieve("alice", "What did Ana do in Montreal?", &ask(on, 2))
        .await
        .unwrap();
    assert!(hits[0].memory.content.contains("Montreal"));
    assert_eq!(hits[0].signals.entity, 1.0);
}

/// The speaker and question signals: a question about a person prefers what that person
/// said over turns that only address them, and statements over questions.
async fn the_named_speaker_and_statements_come_first(t: &TestStore) {
    let e = engine_with_chat(t).await;
    let at = Utc.with_ymd_and_hms(2023, 5, 8, 13, 0, 0).unwrap();
    let minute = chrono::Duration::minutes(1);
    let turns = [
        (
            Role::User,
            "Caroline: Melanie, the pottery bowl you made is lovely!",
        ),
        (
            Role::Assistant,
            "Melanie: Thanks! I finished a blue vase in class last week.",
        ),
        (
            Role::User,
            "Caroline: What pottery will you make next, Melanie?",
        ),
        (Role::Assistant, "Melanie: A teapot, I think."),
    ];
    let messages = turns
        .iter()
        .enumerate()
        .map(|(i, (role, text))| said("pots", *role, text, at + minute * i as i32))
        .collect();
    e.add_messages("dana", messages).await.unwrap();
    let ask = |ranking: RankingConfig| RetrieveOptions {
        top_k: 4,
        now: Some(at),
        ranking: RankingConfig {
            mmr_lambda: None,
            neighbours: 0,
            neighbour_weight: 0.0,
            ..ranking
        },
        ..RetrieveOptions::default()
    };
    let off = RankingConfig {
        speaker_weight: 0.0,
        question_penalty: 0.0,
        content_weight: 0.0,
        ..RankingConfig::default()
    };
    let q = "What pottery did Melanie make?";
    let hits = e.retrieve("dana", q, &ask(off.clone())).await.unwrap();
    assert_eq!(hits.len(), 4, "{hits:?}");
    // By relevance alone a turn that addresses her (more of the question's words) wins.
    assert!(hits[0].memory.content.starts_with("Caroline"), "{hits:?}");
    for h in &hits {
        let asks = h.memory.content.ends_with('?');
        assert_eq!(h.signals.question, if asks { 1.0 } else { 0.0 }, "{h:?}");
    }
    // A speaker weight above any relevance puts both of her turns first.
    let hits = e
        .retrieve(
            "dana",
            q,
            &ask(RankingConfig {
                speaker_weight: 1.0,
                ..off.clone()
            }),
        )
        .await
        .unwrap();
    for h in &hits {
        let by_her = h.memory.content.starts_with("Melanie: ");
        assert_eq!(h.signals.speaker, if by_her { 1.0 } else { 0.0 }, "{h:?}");
    }
    assert!(
        hits[..2]
            .iter()
            .all(|h| h.memory.content.starts_with("Melanie: ")),
        "{hits:?}"
    );
    // The question penalty puts the question last, and costs it exactly its weight.
    let plain = e.retrieve("dana", q, &ask(off.clone())).await.unwrap();
    let hits = e
        .retrieve(
            "dana",
            q,
            &ask(RankingConfig {
                question_penalty: 1.0,
                ..off.clone()
            }),
        )
        .await
        .unwrap();
    assert!(hits[3].memory.content.ends_with('?'), "{hits:?}");
    let before = plain.iter().find(|h| h.memory.content.ends_with('?'));
    let before = before.unwrap_or_else(|| panic!("{plain:?}"));
    assert!(
        (before.score - 1.0 - hits[3].score).abs() < 1e-5,
        "{plain:?} {hits:?}"
    );
    // Only Dana's own turns are candidates.
    assert!(
        hits.iter()
            .all(|h| h.memory.session.as_deref() == Some("pots"))
    );
}

async fn dates_in_a_memory_count_for_questions_about_then(t: &TestStore) {
    use recall_core::MemoryUpdate;
    use recall_core::retrieval::{EVENT_WINDOWS_KEY, event_windows};
    use recall_core::when::TimeWindow;
    let e = engine_with_chat(t).await;
    let day = |m: u32, d: u32| Utc.with_ymd_and_hms(2023, m, d, 0, 0, 0).unwrap();
    let month = |m: u32| TimeWindow {
        since: day(m, 1),
        until: day(m + 1, 1),
    };
    // Said in July about June; said in July about July; said in June.
    let told = "My colleagues and I went to a convention together last month.";
    let later = "My colleagues and I went to a convention together, it was great.";
    e.add_messages(
        "dora",
        vec![
            said("s2", Role::User, told, day(7, 3)),
            said("s3", Role::User, later, day(7, 20)),
            said("s1", Role::User, "The garden is full of roses.", day(6, 10)),
        ],
    )
    .await
    .unwrap();
    let hits = e
        .retrieve(
            "dora",
            "What did I attend with my colleagues in June 2023?",
            &RetrieveOptions {
                top_k: 3,
                now: Some(day(8, 1)),
                ..RetrieveOptions::default()
            },
        )
        .await
        .unwrap();
    let hit = |text: &str| {
        hits.iter()
            .find(|h| h.memory.content.ends_with(text))
            .unwrap_or_else(|| panic!("{text}: {hits:?}"))
    };
    // "last month", said on 3 July, is June: the memory was written outside the window and
    // still belongs to it, ahead of the same words without a date.
    let june = hit(told);
    assert_eq!(event_windows(&june.memory), vec![month(6)]);
    assert_eq!(june.signals.time, 1.0);
    assert_eq!(hit(later).signals.time, 0.0);
    assert!(hit(later).memory.metadata.get(EVENT_WINDOWS_KEY).is_none());
    assert_eq!(hit("roses.").signals.time, 1.0);
    assert_eq!(hits[0].memory.id, june.memory.id, "{hits:?}");
    // The windows follow the text (read against the day it was first written), and survive
    // new metadata.
    let id = june.memory.id;
    let m = e
        .update_memory(
            "dora",
            id,
            MemoryUpdate {
                content: Some("We are going to a convention next month.".into()),
                ..MemoryUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(event_windows(&m), vec![month(8)]);
    let m = e
        .update_memory(
            "dora",
            id,
            MemoryUpdate {
                metadata: Some(serde_json::json!({"source": "chat"})),
                ..MemoryUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(m.metadata["source"], "chat");
    assert_eq!(event_windows(&m), vec![month(8)]);
    let m = e
        .update_memory(
            "dora",
            id,
            MemoryUpdate {
                content: Some("We went to a convention.".into()),
                ..MemoryUpdate::default()
            },
        )
        .await
        .unwrap();
    assert!(m.metadata.get(EVENT_WINDOWS_KEY).is_none(), "{m:?}");
}

async fn near_identical_memories_merge_on_add(t: &TestStore) {
    use recall_core::NewMemoryText;
    use recall_core::engine::DEDUPE_SIMILARITY;
    use recall_core::types::MemoryKind;
    let e = engine_with_chat(t)
        .await
        .with_dedupe(Some(DEDUPE_SIMILARITY));
    let new =
        |kind: MemoryKind, text: &str, tags: &[&str], importance: Option<f32>| NewMemoryText {
            kind,
            content: text.into(),
            session: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            importance,
            ..Default::default()
        };
    let first = e
        .add_memory(
            "carol",
            new(
                MemoryKind::Fact,
                "I am allergic to peanuts",
                &["health"],
                Some(0.4),
            ),
        )
        .await
        .unwrap();
    let again = e
        .add_memory(
            "carol",
            new(
                MemoryKind::Fact,
                "I am allergic to peanuts.",
                &["food", "health"],
                Some(0.9),
            ),
        )
        .await
        .unwrap();
    assert_eq!(again.id, first.id, "merged into the first");
    assert_eq!(again.content, "I am allergic to peanuts");
    assert_eq!(again.tags, ["health", "food"]);
    assert_eq!(again.importance, 0.9);
    assert_eq!(again.metadata["merged"], 1);
    // A different fact, the same text as another kind, and another user's copy stay apart.
    let other = e
        .add_memory(
            "carol",
            new(MemoryKind::Fact, "My sister lives in Porto", &[], None),
        )
        .await
        .unwrap();
    let persona = e
        .add_memory(
            "carol",
            new(MemoryKind::Persona, "I am allergic to peanuts", &[], None),
        )
        .await
        .unwrap();
    let dave = e
        .add_memory(
            "dave",
            new(MemoryKind::Fact, "I am allergic to peanuts", &[], None),
        )
        .await
        .unwrap();
    let ids = [first.id, other.id, persona.id, dave.id];
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        4,
        "{ids:?}"
    );
    assert_eq!(e.count_memories("carol").await.unwrap(), 3);
    // A merge lasts as long as the longer-lived copy; no session merges into no session only.
    let fact = |text: &str| new(MemoryKind::Fact, text, &[], None);
    let soon = NewMemoryText {
        ttl_seconds: Some(60),
        ..fact("I am allergic to peanuts")
    };
    let soon = e.add_memory("erin", soon).await.unwrap();
    let kept = e
        .add_memory("erin", fact("I am allergic to peanuts."))
        .await;
    assert_eq!(kept.unwrap().id, soon.id);
    assert_eq!(
        e.memory("erin", soon.id).await.unwrap().unwrap().expires_at,
        None
    );
    let trip = NewMemoryText {
        session: Some("trip".into()),
        ..fact("My passport expires in May")
    };
    let trip = e.add_memory("erin", trip).await.unwrap();
    let loose = e
        .add_memory("erin", fact("My passport expires in May."))
        .await;
    assert_ne!(loose.unwrap().id, trip.id);
    // Merging can be switched off.
    let e = e.with_dedupe(None);
    let separate = e
        .add_memory(
            "carol",
            new(MemoryKind::Fact, "I am allergic to peanuts", &[], None),
        )
        .await
        .unwrap();
    assert_ne!(separate.id, first.id);
    assert_eq!(e.count_memories("carol").await.unwrap(), 4);
}

async fn memories_stay_true_through_the_engine(t: &TestStore) {
    use recall_core::NewMemoryText;
    use recall_core::types::{MetadataCondition, MetadataOp};
    let e = engine_with_chat(t)
        .await
        .with_dedupe(Some(recall_core::engine::DEDUPE_SIMILARITY))
        .with_tag_ttl([("scratch".to_owned(), 3600u64)].into())
        .unwrap();
    let fact = |text: &str| NewMemoryText {
        content: text.into(),
        ..Default::default()
    };
    let paris = e
        .add_memory(
            "alice",
            NewMemoryText {
                metadata: serde_json::json!({"topic": "home", "confidence": 0.9}),
                ..fact("Alice lives in Paris.")
            },
        )
        .await
        .unwrap();
    // The caller's metadata sits beside the engine's signals.
    assert_eq!(paris.metadata["topic"], "home");
    assert!(paris.metadata[EMOTION_CONFIDENCE_KEY].is_number());
    // A replacement is stored as given, never merged into the one it replaces (even when
    // the text is nearly the same).
    let berlin = e
        .add_memory(
            "alice",
            NewMemoryText {
                supersedes: Some(paris.id),
                ..fact("Alice lives in Paris!")
            },
        )
        .await
        .unwrap();
    assert_ne!(berlin.id, paris.id);
    let berlin = e
        .update_memory(
            "alice",
            berlin.id,
            recall_core::MemoryUpdate {
                content: Some("Alice moved to Berlin.".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for mode in [SearchMode::Vector, SearchMode::Text, SearchMode::Hybrid] {
        let hits = e
            .retrieve(
                "alice",
                "Where does Alice live? Paris or Berlin?",
                &options(mode, RankingConfig::default()),
            )
            .await
            .unwrap();
        assert!(
            hits.iter().all(|h| h.memory.id != paris.id),
            "{mode}: {hits:?}"
        );
        assert!(
            hits.iter().any(|h| h.memory.id == berlin.id),
            "{mode}: {hits:?}"
        );
    }
    let history = e.memory_history("alice", berlin.id).await.unwrap();
    assert_eq!(
        history.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![paris.id, berlin.id]
    );
    assert_eq!(e.memory_history("alice", paris.id).await.unwrap(), history);
    let err = e.memory_history("bob", paris.id).await.unwrap_err();
    assert_eq!(err.kind(), recall_core::ErrorKind::NotFound);

    // Metadata conditions through hybrid retrieval.
    let on_topic = RetrieveOptions {
        filter: Filter {
            metadata: vec![MetadataCondition::new(
                "topic",
                MetadataOp::Eq,
                "home".into(),
            )],
            include_superseded: true,
            ..Filter::default()
        },
        ..options(SearchMode::Hybrid, RankingConfig::default())
    };
    let hits = e
        .retrieve("alice", "Where does Alice live?", &on_topic)
        .await
        .unwrap();
    assert_eq!(
        hits.iter().map(|h| h.memory.id).collect::<Vec<_>>(),
        vec![paris.id]
    );

    // A message's metadata is its memory's too: conditions find it by what it was sent with,
    // beside the engine's signals.
    let sent = e
        .add_messages(
            "alice",
            vec![
                NewMessage {
                    metadata: serde_json::json!({"channel": "sms", "thread": 7}),
                    ..NewMessage::new("s3", Role::User, "Alice lives in a flat above a bakery.")
                },
                NewMessage {
                    metadata: serde_json::json!({"channel": "email", "thread": 3}),
                    ..NewMessage::new("s3", Role::User, "Alice lives near the old harbour.")
                },
            ],
        )
        .await
        .unwrap();
    let by_sms = e
        .memory("alice", sent[0].memory_ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_sms.metadata["channel"], "sms");
    assert!(by_sms.metadata[EMOTION_CONFIDENCE_KEY].is_number());
    for (condition, want) in [
        (
            MetadataCondition::new("channel", MetadataOp::Eq, "sms".into()),
            sent[0].memory_ids.clone(),
        ),
        (
            MetadataCondition::new("thread", MetadataOp::Lt, 5.into()),
            sent[1].memory_ids.clone(),
        ),
    ] {
        for mode in [SearchMode::Vector, SearchMode::Text, SearchMode::Hybrid] {
            let only = RetrieveOptions {
                filter: Filter {
                    metadata: vec![condition.clone()],
                    ..Filter::default()
                },
                ..options(mode, RankingConfig::default())
            };
            let hits = e
                .retrieve("alice", "Where does Alice live?", &only)
                .await
                .unwrap();
            assert_eq!(
                hits.iter().map(|h| h.memory.id).collect::<Vec<_>>(),
                want,
                "{mode} {condition:?}"
            );
        }
    }

    // Expiry: a TTL, a tag's TTL, and refusals.
    let before = Utc::now();
    let brief = e
        .add_memory(
            "alice",
            NewMemoryText {
                ttl_seconds: Some(60),
                ..fact("The parking spot today is B12.")
            },
        )
        .await
        .unwrap();
    let expires = brief.expires_at.expect("an expiry");
    assert!(
        expires >= before + chrono::Duration::seconds(59)
            && expires <= Utc::now() + chrono::Duration::seconds(61)
    );
    let tagged = e
        .add_memory(
            "alice",
            NewMemoryText {
                tags: vec!["scratch".into()],
                ..fact("Scratch note: call the plumber.")
            },
        )
        .await
        .unwrap();
    let expires = tagged.expires_at.expect("the tag's TTL");
    assert!(expires >= before + chrono::Duration::seconds(3599));
    let messages = e
        .add_messages(
            "alice",
            vec![NewMessage {
                tags: vec!["scratch".into()],
                ..NewMessage::new("s2", Role::User, "Remember the gate code 4411 for today.")
            }],
        )
        .await
        .unwrap();
    let m = e
        .memory("alice", messages[0].memory_ids[0])
        .await
        .unwrap()
        .unwrap();
    assert!(
        m.expires_at.is_some(),
        "message memories take their tags' TTL"
    );
    for bad in [
        NewMemoryText {
            ttl_seconds: Some(0),
            ..fact("x")
        },
        NewMemoryText {
            expires_at: Some(Utc::now() - chrono::Duration::seconds(1)),
            ..fact("x")
        },
        NewMemoryText {
            expires_at: Some(Utc::now() + chrono::Duration::hours(1)),
            ttl_seconds: Some(60),
            ..fact("x")
        },
    ] {
        let err = e.add_memory("alice", bad).await.unwrap_err();
        assert_eq!(err.kind(), recall_core::ErrorKind::InvalidInput, "{err}");
    }
    let zero = [("x".to_owned(), 0u64)].into();
    assert!(e.clone().with_tag_ttl(zero).is_err());
}

/// A query's compound matches the way the user's own memories write it ("ice cream" finds
/// "icecream", "roadtrip" finds "road trip"), read from that user's text alone.
async fn compounds_match_as_the_user_writes_them(t: &TestStore) {
    let e = Engine::new(t.reopen().await, embedder());
    let turns = |texts: &[&str]| {
        texts
            .iter()
            .map(|c| NewMessage::new("s1", Role::User, *c))
            .collect::<Vec<_>>()
    };
    e.add_messages(
        "dana",
        turns(&[
            "I love it when you make coconut milk icecream, so good!",
            "The road trip to the coast was long but fun.",
            "We stopped for snacks on the road, the trip took nine hours.",
            "My sister moved to Lisbon last spring.",
        ]),
    )
    .await
    .unwrap();
    e.add_messages("erin", turns(&["A cream cheese bagel and ice on my knee."]))
        .await
        .unwrap();
    let text = |user: &'static str, query: &'static str| {
        let e = &e;
        async move {
            e.retrieve(
                user,
                query,
                &options(SearchMode::Text, RankingConfig::default()),
            )
            .await
            .unwrap()
            .into_iter()
            .map(|h| (h.memory.content, h.score))
            .collect::<Vec<_>>()
        }
    };
    let hits = text("dana", "What ice cream does Nate make?").await;
    assert!(hits[0].0.contains("icecream"), "{hits:?}");
    let hits = text("dana", "When was the roadtrip?").await;
    assert!(hits.len() >= 2, "{hits:?}");
    assert!(hits[..2].iter().all(|h| h.0.contains("road")), "{hits:?}");
    // Another user's words make no compound of a user's query, nor change its scores.
    let before = (
        text("erin", "ice cream").await,
        text("erin", "icecream").await,
    );
    assert_eq!(before.0.len(), 1, "{before:?}");
    e.add_messages("dana", turns(&["More icecream, icecream all day."]))
        .await
        .unwrap();
    // (Asked in other words than before, so that no cached answer is returned.)
    let after = (
        text("erin", "Ice cream!").await,
        text("erin", "Icecream!").await,
    );
    assert_eq!(after, before);
}
