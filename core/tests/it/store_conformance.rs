//! The store conformance suite: every test runs against Postgres + pgvector and against the
//! embedded store, with the same assertions.
use chrono::SubsecRound;
use chrono::{DateTime, Duration, TimeZone, Utc};
use recall_core::ErrorKind;
use recall_core::jobs::{JobKind, JobOutcome, JobStatus, NewJob};
use recall_core::store::{Actor, ExportOptions};
use recall_core::types::{
    Filter, MemoryKind, MemoryPatch, MessageWrite, Metric, NewMemory, NewMessage, NewSummary,
    PageRequest, Role, SessionPatch, TextQuery, VectorQuery,
};
use serde_json::json;

use crate::fixtures::{TEST_MODEL, TestStore, emb};

crate::fixtures::both_backends! {
    users_and_sessions;
    messages_round_trip;
    search_ranks_by_cosine;
    search_filters;
    search_threshold_and_pages;
    users_are_isolated;
    memory_updates;
    memory_deletion;
    export_everything;
    forget_user;
    failed_write_leaves_nothing;
    settings_and_audit;
    summaries;
    bad_input_is_refused;
    embedding_models_are_separate;
    list_memories_filters_and_pages;
    text_search_ranks_by_bm25;
    text_search_filters_isolation_and_updates;
    vectors_of_memories;
    jobs_lifecycle;
    job_leases;
}

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, day, hour, 0, 0).unwrap()
}

fn msg(session: &str, role: Role, content: &str, t: DateTime<Utc>, tags: &[&str]) -> NewMessage {
    NewMessage {
        session: session.into(),
        role,
        content: content.into(),
        created_at: Some(t),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        metadata: json!({ "source": "test" }),
    }
}

/// A message stored with one memory holding `vector`.
fn write(m: NewMessage, vector: &[f32]) -> MessageWrite {
    MessageWrite {
        memories: vec![NewMemory::new(
            MemoryKind::Message,
            m.content.clone(),
            emb(vector),
        )],
        message: m,
    }
}

fn page(first: usize) -> PageRequest {
    PageRequest { first, after: None }
}

fn query(v: &[f32], k: usize) -> VectorQuery {
    VectorQuery::new(emb(v), k)
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    recall_core::embed::cosine(a, b)
}

async fn users_and_sessions(t: &TestStore) {
    let s = t.store();
    assert!(s.get_user("alice").await.unwrap().is_none());
    let u1 = s.upsert_user("alice").await.unwrap();
    let u2 = s.upsert_user("alice").await.unwrap();
    assert_eq!(u1, u2, "upsert is idempotent");

    let sess = s
        .upsert_session(
            "alice",
            "trip",
            SessionPatch {
                title: Some(Some("Trip planning".into())),
                persona: Some(Some("You are a travel agent.".into())),
            },
        )
        .await
        .unwrap();
    assert_eq!(sess.id, "trip");
    assert_eq!(sess.title.as_deref(), Some("Trip planning"));
    let again = s
        .upsert_session("alice", "trip", SessionPatch::default())
        .await
        .unwrap();
    assert_eq!(again.persona.as_deref(), Some("You are a travel agent."));
    let cleared = s
        .upsert_session(
            "alice",
            "trip",
            SessionPatch {
                title: Some(None),
                persona: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(cleared.title, None);
    assert_eq!(cleared.persona.as_deref(), Some("You are a travel agent."));

    for i in 0..5 {
        s.upsert_session("alice", &format!("s{i}"), SessionPatch::default())
            .await
            .unwrap();
    }
    // Pages of 2 over 6 sessions, newest first, no repeats.
    let mut seen = Vec::new();
    let mut req = page(2);
    loop {
        let p = s.list_sessions("alice", &req).await.unwrap();
        assert!(p.items.len() <= 2);
        seen.extend(p.items.iter().map(|x| x.id.clone()));
        match p.next_cursor {
            Some(c) => req.after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 6);
    assert_eq!(seen.first().map(String::as_str), Some("s4"), "newest first");

    // Deleting a session takes its messages and memories with it.
    s.append_messages(
        "alice",
        vec![write(
            msg("s1", Role::User, "hello", at(1, 9), &[]),
            &[1.0, 0.0],
        )],
    )
    .await
    .unwrap();
    assert_eq!(s.count_memories("alice").await.unwrap(), 1);
    assert!(s.delete_session("alice", "s1").await.unwrap());
    assert!(!s.delete_session("alice", "s1").await.unwrap());
    assert_eq!(s.count_memories("alice").await.unwrap(), 0);
    assert!(s.get_session("alice", "s1").await.unwrap().is_none());
    assert!(
        s.search("alice", &query(&[1.0, 0.0], 5))
            .await
            .unwrap()
            .hits
            .is_empty()
    );
}

async fn messages_round_trip(t: &TestStore) {
    let s = t.store();
    let t0 = Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap() + Duration::microseconds(123_456);
    let writes = vec![
        write(
            msg("s1", Role::User, "I live in Lisbon", t0, &["home"]),
            &[1.0, 0.0, 0.0],
        ),
        write(
            msg(
                "s1",
                Role::Assistant,
                "Lisbon is lovely",
                t0 + Duration::seconds(5),
                &[],
            ),
            &[0.9, 0.1, 0.0],
        ),
        write(
            msg(
                "s2",
                Role::User,
                "My cat is Miso",
                t0 + Duration::days(1),
                &["pet"],
            ),
            &[0.0, 1.0, 0.0],
        ),
    ];
    let out = s.append_messages("alice", writes).await.unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].message.content, "I live in Lisbon");
    assert_eq!(
        out[0].message.created_at, t0,
        "timestamps keep microseconds"
    );
    assert_eq!(out[2].message.session, "s2");
    assert!(out.iter().all(|a| a.memory_ids.len() == 1));

    let listed = s.list_messages("alice", "s1", &page(10)).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    assert_eq!(listed.items[0].content, "I live in Lisbon");
    assert_eq!(listed.items[0].role, Role::User);
    assert_eq!(listed.items[0].tags, vec!["home"]);
    assert_eq!(listed.items[0].metadata, json!({ "source": "test" }));
    assert_eq!(listed.items[1].role, Role::Assistant);
    assert_eq!(listed.next_cursor, None);

    let first = s.list_messages("alice", "s1", &page(1)).await.unwrap();
    assert_eq!(first.items[0].content, "I live in Lisbon");
    let second = s
        .list_messages(
            "alice",
            "s1",
            &PageRequest {
                first: 1,
                after: first.next_cursor.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(second.items[0].content, "Lisbon is lovely");

    let m = s
        .get_memory("alice", out[0].memory_ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.kind, MemoryKind::Message);
    assert_eq!(m.session.as_deref(), Some("s1"));
    assert_eq!(m.message_id, Some(out[0].message.id));
    assert_eq!(m.role, Some(Role::User));
    assert_eq!(m.tags, vec!["home"], "memories inherit the message's tags");
    assert_eq!(m.created_at, t0, "memories inherit the message's time");
    assert_eq!(m.importance, 0.5);
    assert_eq!(s.count_memories("alice").await.unwrap(), 3);
}

async fn search_ranks_by_cosine(t: &TestStore) {
    let s = t.store();
    let vectors: [(&str, [f32; 3]); 5] = [
        ("a", [1.0, 0.0, 0.0]),
        ("b", [0.8, 0.6, 0.0]),
        ("c", [0.0, 1.0, 0.0]),
        ("d", [-1.0, 0.0, 0.0]),
        ("e", [0.5, 0.5, 0.7]),
    ];
    let writes = vectors
        .iter()
        .enumerate()
        .map(|(i, (c, v))| write(msg("s", Role::User, c, at(1, i as u32), &[]), v))
        .collect();
    s.append_messages("u", writes).await.unwrap();
    let q = [0.9f32, 0.3, 0.1];
    let page = s.search("u", &query(&q, 3)).await.unwrap();
    let got: Vec<&str> = page
        .hits
        .iter()
        .map(|h| h.memory.content.as_str())
        .collect();
    let mut expected: Vec<(&str, f32)> = vectors.iter().map(|(c, v)| (*c, cos(&q, v))).collect();
    expected.sort_by(|a, b| b.1.total_cmp(&a.1));
    assert_eq!(
        got,
        expected.iter().take(3).map(|e| e.0).collect::<Vec<_>>()
    );
    for (hit, (_, score)) in page.hits.iter().zip(&expected) {
        assert!(
            (hit.score - score).abs() < 1e-4,
            "raw cosine: {} vs {score}",
            hit.score
        );
        assert!((hit.distance - (1.0 - score)).abs() < 1e-4);
    }
    assert!(page.next_cursor.is_some());
    // Asking for more than there is returns everything, best to worst.
    let all = s.search("u", &query(&q, 10)).await.unwrap();
    assert_eq!(all.hits.len(), 5);
    assert_eq!(all.hits.last().unwrap().memory.content, "d");
    assert!(all.next_cursor.is_none());
    assert!(all.hits.windows(2).all(|w| w[0].score >= w[1].score));
}

async fn search_filters(t: &TestStore) {
    let s = t.store();
    let v = [1.0f32, 0.0];
    let writes = vec![
        write(msg("s1", Role::User, "u1", at(1, 10), &["x", "y"]), &v),
        write(msg("s1", Role::Assistant, "a1", at(2, 10), &["x"]), &v),
        write(msg("s2", Role::User, "u2", at(3, 10), &["y"]), &v),
        write(msg("s2", Role::Assistant, "a2", at(4, 10), &[]), &v),
    ];
    s.append_messages("u", writes).await.unwrap();
    s.add_memories(
        "u",
        vec![NewMemory {
            tags: vec!["x".into()],
            created_at: Some(at(5, 10)),
            ..NewMemory::new(MemoryKind::Fact, "fact1", emb(&v))
        }],
    )
    .await
    .unwrap();

    let run = |filter: Filter| async move {
        let mut q = query(&v, 10);
        q.filter = filter;
        let mut got: Vec<String> = s
            .search("u", &q)
            .await
            .unwrap()
            .hits
            .into_iter()
            .map(|h| h.memory.content)
            .collect();
        got.sort();
        got
    };
    assert_eq!(
        run(Filter {
            session: Some("s1".into()),
            ..Filter::default()
        })
        .await,
        ["a1", "u1"]
    );
    assert_eq!(
        run(Filter {
            session: Some("nope".into()),
            ..Filter::default()
        })
        .await,
        Vec::<String>::new()
    );
    assert_eq!(
        run(Filter {
            roles: vec![Role::Assistant],
            ..Filter::default()
        })
        .await,
        ["a1", "a2"]
    );
    assert_eq!(
        run(Filter {
            kinds: vec![MemoryKind::Fact],
            ..Filter::default()
        })
        .await,
        ["fact1"]
    );
    assert_eq!(
        run(Filter {
            tags: vec!["x".into()],
            ..Filter::default()
        })
        .await,
        ["a1", "fact1", "u1"]
    );
    assert_eq!(
        run(Filter {
            tags: vec!["x".into(), "y".into()],
            ..Filter::default()
        })
        .await,
        ["u1"],
        "tags filter means all of them"
    );
    assert_eq!(
        run(Filter {
            since: Some(at(2, 10)),
            until: Some(at(4, 10)),
            ..Filter::default()
        })
        .await,
        ["a1", "u2"],
        "since inclusive, until exclusive"
    );
    assert_eq!(
        run(Filter {
            session: Some("s2".into()),
            roles: vec![Role::User],
            tags: vec!["y".into()],
            ..Filter::default()
        })
        .await,
        ["u2"]
    );
}

async fn search_threshold_and_pages(t: &TestStore) {
    let s = t.store();
    // 23 vectors at known angles from the query, some at exactly equal distance.
    let mut writes = Vec::new();
    for i in 0..23 {
        let angle = (i / 2) as f32 * 0.12;
        writes.push(write(
            msg(
                "s",
                Role::User,
                &format!("m{i}"),
                at(1, 0) + Duration::minutes(i),
                &[],
            ),
            &[angle.cos(), angle.sin()],
        ));
    }
    s.append_messages("u", writes).await.unwrap();
    let q = [1.0f32, 0.0];

    let full = s.search("u", &query(&q, 100)).await.unwrap();
    assert_eq!(full.hits.len(), 23);

    let mut paged = Vec::new();
    let mut req = query(&q, 5);
    let mut pages = 0;
    loop {
        let p = s.search("u", &req).await.unwrap();
        pages += 1;
        paged.extend(p.hits.iter().map(|h| h.memory.id));
        match p.next_cursor {
            Some(c) => req.cursor = Some(c),
            None => break,
        }
    }
    let full_ids: Vec<i64> = full.hits.iter().map(|h| h.memory.id).collect();
    assert_eq!(paged, full_ids, "pages concatenate to the full ranking");
    assert_eq!(pages, 5);

    let mut thresholded = query(&q, 100);
    thresholded.min_score = Some(0.9);
    let hits = s.search("u", &thresholded).await.unwrap().hits;
    let expected = full.hits.iter().filter(|h| h.score >= 0.9).count();
    assert!(expected > 0 && expected < 23);
    assert_eq!(hits.len(), expected);
    assert!(hits.iter().all(|h| h.score >= 0.9 - 1e-6));
}

async fn users_are_isolated(t: &TestStore) {
    let s = t.store();
    let v = [1.0f32, 0.0];
    let a = s
        .append_messages(
            "alice",
            vec![
                write(
                    msg("shared-name", Role::User, "alice secret", at(1, 1), &["t"]),
                    &v,
                ),
                write(
                    msg("shared-name", Role::User, "alice other", at(1, 3), &[]),
                    &[0.5, 0.5],
                ),
            ],
        )
        .await
        .unwrap();
    s.append_messages(
        "bob",
        vec![write(
            msg("shared-name", Role::User, "bob note", at(1, 2), &["t"]),
            &[0.0, 1.0],
        )],
    )
    .await
    .unwrap();
    let alice_memory = a[0].memory_ids[0];
    let alice_message = a[0].message.id;

    // Bob's searches, listings and reads never see Alice's rows.
    let hits = s.search("bob", &query(&v, 10)).await.unwrap().hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].memory.content, "bob note");
    let listed = s
        .list_messages("bob", "shared-name", &page(10))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].content, "bob note");
    let mems = s
        .list_memories("bob", &Filter::default(), &page(10))
        .await
        .unwrap();
    assert_eq!(mems.items.len(), 1);
    assert_eq!(mems.items[0].content, "bob note");
    assert!(s.get_memory("bob", alice_memory).await.unwrap().is_none());

    // Bob cannot change or delete Alice's memory by id.
    let err = s
        .update_memory(
            "bob",
            alice_memory,
            MemoryPatch {
                tags: Some(vec!["pwned".into()]),
                ..MemoryPatch::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(s.delete_memories("bob", &[alice_memory]).await.unwrap(), 0);
    let alice_still = s.get_memory("alice", alice_memory).await.unwrap().unwrap();
    assert_eq!(alice_still.tags, vec!["t"]);

    // Nor summarise Alice's messages into his session.
    let err = s
        .add_summary(
            "bob",
            NewSummary {
                session: "shared-name".into(),
                content: "stolen".into(),
                first_message_id: Some(alice_message),
                last_message_id: Some(alice_message),
                model: None,
                embedding: emb(&v),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    // A cursor is only a position: Alice's cursor, used by Bob, shows only Bob's rows.
    let alice_page = s.search("alice", &query(&v, 1)).await.unwrap();
    assert_eq!(alice_page.hits[0].memory.content, "alice secret");
    let mut q = query(&v, 10);
    q.cursor = alice_page.next_cursor.clone();
    assert!(q.cursor.is_some());
    for h in s.search("bob", &q).await.unwrap().hits {
        assert_eq!(h.memory.content, "bob note");
    }

    // Export and deletion are per user.
    let export = s
        .export_user("bob", &ExportOptions::default(), &Actor::cli())
        .await
        .unwrap();
    let text = serde_json::to_string(&export).unwrap();
    assert!(!text.contains("alice secret"));
    s.delete_user("bob", &Actor::cli()).await.unwrap();
    assert_eq!(s.count_memories("alice").await.unwrap(), 2);
    assert_eq!(
        s.search("alice", &query(&v, 10)).await.unwrap().hits.len(),
        2
    );
}

async fn memory_updates(t: &TestStore) {
    let s = t.store();
    let added = s
        .add_memories(
            "u",
            vec![
                NewMemory::new(MemoryKind::Fact, "likes tea", emb(&[1.0, 0.0])),
                NewMemory::new(MemoryKind::Fact, "likes jazz", emb(&[0.0, 1.0])),
            ],
        )
        .await
        .unwrap();
    assert_eq!(added.len(), 2);
    assert_eq!(added[0].content, "likes tea");
    assert_eq!(added[0].session, None);
    let id = added[0].id;

    let updated = s
        .update_memory(
            "u",
            id,
            MemoryPatch {
                content: Some("likes coffee".into()),
                embedding: Some(emb(&[0.0, -1.0])),
                tags: Some(vec!["drink".into()]),
                importance: Some(0.9),
                emotion: Some(Some("joy".into())),
                metadata: Some(json!({"k": 1})),
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.content, "likes coffee");
    assert_eq!(updated.tags, vec!["drink"]);
    assert_eq!(updated.importance, 0.9);
    assert_eq!(updated.emotion.as_deref(), Some("joy"));
    assert!(updated.updated_at >= added[0].updated_at);

    // The new embedding replaced the old one.
    let top = s.search("u", &query(&[0.0, -1.0], 1)).await.unwrap().hits;
    assert_eq!(top[0].memory.content, "likes coffee");
    assert!((top[0].score - 1.0).abs() < 1e-5);
    let old = s.search("u", &query(&[1.0, 0.0], 2)).await.unwrap().hits;
    assert!(old.iter().all(|h| h.score < 0.5), "the old vector is gone");

    let err = s
        .update_memory(
            "u",
            id,
            MemoryPatch {
                content: Some("no embedding".into()),
                ..MemoryPatch::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = s
        .update_memory(
            "u",
            id,
            MemoryPatch {
                importance: Some(2.0),
                ..MemoryPatch::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = s
        .update_memory("u", 999_999, MemoryPatch::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    // Filters see the new tags.
    let mut q = query(&[1.0, 0.0], 5);
    q.filter.tags = vec!["drink".into()];
    assert_eq!(s.search("u", &q).await.unwrap().hits.len(), 1);
}

async fn memory_deletion(t: &TestStore) {
    let s = t.store();
    let added = s
        .add_memories(
            "u",
            (0..4)
                .map(|i| NewMemory::new(MemoryKind::Fact, format!("f{i}"), emb(&[1.0, i as f32])))
                .collect(),
        )
        .await
        .unwrap();
    // Warm any cache first, then delete.
    assert_eq!(
        s.search("u", &query(&[1.0, 0.0], 10))
            .await
            .unwrap()
            .hits
            .len(),
        4
    );
    let n = s
        .delete_memories("u", &[added[1].id, added[3].id, 123_456_789])
        .await
        .unwrap();
    assert_eq!(n, 2);
    let left: Vec<String> = s
        .search("u", &query(&[1.0, 0.0], 10))
        .await
        .unwrap()
        .hits
        .into_iter()
        .map(|h| h.memory.content)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&"f0".to_string()) && left.contains(&"f2".to_string()));
    assert_eq!(
        t.count_rows("memory_embeddings").await,
        2,
        "vectors go with their memory"
    );
}

async fn export_everything(t: &TestStore) {
    let s = t.store();
    let out = s
        .append_messages(
            "u",
            vec![
                write(
                    msg("s1", Role::User, "hello there", at(1, 1), &["greet"]),
                    &[1.0, 0.0],
                ),
                write(
                    msg("s1", Role::Assistant, "hi!", at(1, 2), &[]),
                    &[0.0, 1.0],
                ),
            ],
        )
        .await
        .unwrap();
    s.add_memories(
        "u",
        vec![NewMemory::new(
            MemoryKind::Fact,
            "is friendly",
            emb(&[0.5, 0.5]),
        )],
    )
    .await
    .unwrap();
    s.add_summary(
        "u",
        NewSummary {
            session: "s1".into(),
            content: "They greeted each other.".into(),
            first_message_id: Some(out[0].message.id),
            last_message_id: Some(out[1].message.id),
            model: Some("test-llm".into()),
            embedding: emb(&[0.7, 0.7]),
        },
    )
    .await
    .unwrap();
    s.put_settings("u", json!({"theme": "dark"}), &Actor::user("u"))
        .await
        .unwrap();

    let export = s
        .export_user("u", &ExportOptions::default(), &Actor::user("u"))
        .await
        .unwrap();
    assert_eq!(export.format, "deep-recall.export.v1");
    assert_eq!(export.user.id, "u");
    assert_eq!(export.sessions.len(), 1);
    assert_eq!(export.messages.len(), 2);
    assert_eq!(export.messages[0].content, "hello there");
    assert_eq!(export.memories.len(), 4, "2 messages + 1 fact + 1 summary");
    assert!(export.memories.iter().all(|m| m.embeddings.len() == 1
        && m.embeddings[0].model == TEST_MODEL
        && m.embeddings[0].dims == 2
        && m.embeddings[0].vector.is_none()));
    assert_eq!(export.summaries.len(), 1);
    assert_eq!(export.settings, json!({"theme": "dark"}));
    let actions: Vec<&str> = export.audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["update_settings", "export"]);

    // It is JSON, and it round-trips.
    let text = serde_json::to_string(&export).unwrap();
    let back: recall_core::types::UserExport = serde_json::from_str(&text).unwrap();
    assert_eq!(back, export);

    let with_vectors = s
        .export_user(
            "u",
            &ExportOptions {
                include_vectors: true,
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    let fact = with_vectors
        .memories
        .iter()
        .find(|m| m.memory.content == "is friendly")
        .unwrap();
    assert_eq!(
        fact.embeddings[0].vector.as_deref(),
        Some(&[0.5f32, 0.5][..])
    );

    let err = s
        .export_user("nobody", &ExportOptions::default(), &Actor::cli())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

async fn forget_user(t: &TestStore) {
    let s = t.store();
    let out = s
        .append_messages(
            "u",
            vec![
                write(msg("s1", Role::User, "one", at(1, 1), &[]), &[1.0, 0.0]),
                write(msg("s2", Role::User, "two", at(1, 2), &[]), &[0.0, 1.0]),
            ],
        )
        .await
        .unwrap();
    s.add_summary(
        "u",
        NewSummary {
            session: "s1".into(),
            content: "a summary".into(),
            first_message_id: Some(out[0].message.id),
            last_message_id: None,
            model: None,
            embedding: emb(&[1.0, 1.0]),
        },
    )
    .await
    .unwrap();
    s.put_settings("u", json!({"a": 1}), &Actor::cli())
        .await
        .unwrap();
    s.append_messages(
        "other",
        vec![write(
            msg("s1", Role::User, "keep me", at(1, 3), &[]),
            &[1.0, 0.0],
        )],
    )
    .await
    .unwrap();
    // Warm caches, so that deletion must clear them.
    assert_eq!(
        s.search("u", &query(&[1.0, 0.0], 10))
            .await
            .unwrap()
            .hits
            .len(),
        3
    );

    let report = s.delete_user("u", &Actor::user("u")).await.unwrap();
    assert!(report.existed);
    assert_eq!(
        (
            report.sessions,
            report.messages,
            report.memories,
            report.embeddings,
            report.summaries
        ),
        (2, 2, 3, 3, 1)
    );
    assert!(s.get_user("u").await.unwrap().is_none());
    assert_eq!(s.count_memories("u").await.unwrap(), 0);
    assert!(
        s.search("u", &query(&[1.0, 0.0], 10))
            .await
            .unwrap()
            .hits
            .is_empty()
    );
    assert_eq!(s.get_settings("u").await.unwrap(), json!({}));
    // Nothing of the user is left in any table; the other user is untouched.
    for (table, left) in [
        ("users", 1),
        ("sessions", 1),
        ("messages", 1),
        ("memories", 1),
        ("memory_embeddings", 1),
        ("summaries", 0),
        ("user_settings", 0),
    ] {
        assert_eq!(t.count_rows(table).await, left, "{table}");
    }
    // A user of the same name starts empty.
    s.upsert_user("u").await.unwrap();
    assert!(
        s.search("u", &query(&[1.0, 0.0], 10))
            .await
            .unwrap()
            .hits
            .is_empty()
    );
    // The audit log keeps the record of the deletion.
    let audit = s.audit_log("u", &page(10)).await.unwrap();
    let last = audit.items.last().unwrap();
    assert_eq!(last.action, "delete_user");
    assert_eq!(last.actor, "user:u");
    assert_eq!(last.detail["messages"], 2);
    // Forgetting an unknown user is not an error.
    assert!(!s.delete_user("ghost", &Actor::cli()).await.unwrap().existed);
}

async fn failed_write_leaves_nothing(t: &TestStore) {
    let s = t.store();
    t.sabotage().await;
    let err = s
        .append_messages(
            "u",
            vec![
                write(msg("s1", Role::User, "fine", at(1, 1), &[]), &[1.0, 0.0]),
                write(
                    msg("s2", Role::User, "also fine", at(1, 2), &[]),
                    &[1.0, 0.0],
                ),
                write(msg("s2", Role::User, "boom", at(1, 3), &[]), &[1.0, 0.0]),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    assert!(
        s.get_user("u").await.unwrap().is_none(),
        "user creation rolled back"
    );
    for table in [
        "users",
        "sessions",
        "messages",
        "memories",
        "memory_embeddings",
    ] {
        assert_eq!(t.count_rows(table).await, 0, "{table}");
    }
    // Validation failures are caught before the transaction.
    let err = s
        .append_messages(
            "u",
            vec![
                write(msg("s1", Role::User, "fine", at(1, 1), &[]), &[1.0, 0.0]),
                write(msg("s1", Role::User, "   ", at(1, 1), &[]), &[1.0, 0.0]),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("message 2"), "{err}");
    assert_eq!(t.count_rows("messages").await, 0);
    // The store still works afterwards.
    s.append_messages(
        "u",
        vec![write(
            msg("s1", Role::User, "ok", at(1, 1), &[]),
            &[1.0, 0.0],
        )],
    )
    .await
    .unwrap();
    assert_eq!(
        s.search("u", &query(&[1.0, 0.0], 5))
            .await
            .unwrap()
            .hits
            .len(),
        1
    );
}

async fn settings_and_audit(t: &TestStore) {
    let s = t.store();
    assert_eq!(s.get_settings("u").await.unwrap(), json!({}));
    let put = s
        .put_settings(
            "u",
            json!({"recency_half_life_days": 30}),
            &Actor::user("u"),
        )
        .await
        .unwrap();
    assert_eq!(put["recency_half_life_days"], 30);
    s.put_settings("u", json!({"lang": "pt"}), &Actor::user("u"))
        .await
        .unwrap();
    assert_eq!(s.get_settings("u").await.unwrap(), json!({"lang": "pt"}));
    let err = s
        .put_settings("u", json!([1, 2]), &Actor::cli())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let audit = s.audit_log("u", &page(1)).await.unwrap();
    assert_eq!(audit.items.len(), 1);
    assert_eq!(audit.items[0].action, "update_settings");
    assert_eq!(
        audit.items[0].detail,
        json!({"keys": ["recency_half_life_days"]})
    );
    let rest = s
        .audit_log(
            "u",
            &PageRequest {
                first: 10,
                after: audit.next_cursor,
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.items[0].detail, json!({"keys": ["lang"]}));
    assert!(
        s.audit_log("someone-else", &page(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

async fn summaries(t: &TestStore) {
    let s = t.store();
    let out = s
        .append_messages(
            "u",
            vec![
                write(
                    msg("s1", Role::User, "we talked about Lisbon", at(1, 1), &[]),
                    &[1.0, 0.0],
                ),
                write(
                    msg("s1", Role::Assistant, "and about trams", at(1, 2), &[]),
                    &[0.0, 1.0],
                ),
            ],
        )
        .await
        .unwrap();
    let summary = s
        .add_summary(
            "u",
            NewSummary {
                session: "s1".into(),
                content: "Talked about Lisbon and its trams.".into(),
                first_message_id: Some(out[0].message.id),
                last_message_id: Some(out[1].message.id),
                model: Some("smollm2".into()),
                embedding: emb(&[0.6, 0.8]),
            },
        )
        .await
        .unwrap();
    let listed = s.list_summaries("u", "s1").await.unwrap();
    assert_eq!(listed, vec![summary.clone()]);
    let mut q = query(&[0.6, 0.8], 5);
    q.filter.kinds = vec![MemoryKind::Summary];
    let hits = s.search("u", &q).await.unwrap().hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].memory.summary_id, Some(summary.id));
    assert_eq!(hits[0].memory.session.as_deref(), Some("s1"));
    let err = s
        .add_summary(
            "u",
            NewSummary {
                session: "missing".into(),
                content: "x".into(),
                first_message_id: None,
                last_message_id: None,
                model: None,
                embedding: emb(&[1.0, 0.0]),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

async fn bad_input_is_refused(t: &TestStore) {
    let s = t.store();
    let ok = || write(msg("s", Role::User, "x", at(1, 1), &[]), &[1.0]);
    let cases: Vec<(&str, recall_core::Error)> = vec![
        (
            "empty user",
            s.append_messages("", vec![ok()]).await.unwrap_err(),
        ),
        (
            "long user",
            s.append_messages(&"u".repeat(200), vec![ok()])
                .await
                .unwrap_err(),
        ),
        (
            "empty session",
            s.append_messages(
                "u",
                vec![write(msg("", Role::User, "x", at(1, 1), &[]), &[1.0])],
            )
            .await
            .unwrap_err(),
        ),
        (
            "huge content",
            s.append_messages(
                "u",
                vec![write(
                    msg("s", Role::User, &"x".repeat(70_000), at(1, 1), &[]),
                    &[1.0],
                )],
            )
            .await
            .unwrap_err(),
        ),
        (
            "nan vector",
            s.append_messages(
                "u",
                vec![write(msg("s", Role::User, "x", at(1, 1), &[]), &[f32::NAN])],
            )
            .await
            .unwrap_err(),
        ),
        (
            "zero top_k",
            s.search("u", &query(&[1.0], 0)).await.unwrap_err(),
        ),
        (
            "huge top_k",
            s.search("u", &query(&[1.0], 5000)).await.unwrap_err(),
        ),
        (
            "bad cursor",
            s.search(
                "u",
                &VectorQuery {
                    cursor: Some("%%%".into()),
                    ..query(&[1.0], 5)
                },
            )
            .await
            .unwrap_err(),
        ),
        (
            "inverted range",
            s.search(
                "u",
                &VectorQuery {
                    filter: Filter {
                        since: Some(at(5, 1)),
                        until: Some(at(1, 1)),
                        ..Filter::default()
                    },
                    ..query(&[1.0], 5)
                },
            )
            .await
            .unwrap_err(),
        ),
        (
            "array metadata",
            s.append_messages(
                "u",
                vec![write(
                    NewMessage {
                        metadata: json!([1]),
                        ..msg("s", Role::User, "x", at(1, 1), &[])
                    },
                    &[1.0],
                )],
            )
            .await
            .unwrap_err(),
        ),
        (
            "bad list cursor",
            s.list_sessions(
                "u",
                &PageRequest {
                    first: 5,
                    after: Some("garbage".into()),
                },
            )
            .await
            .unwrap_err(),
        ),
    ];
    for (what, err) in cases {
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{what}: {err}");
    }
    assert_eq!(t.count_rows("messages").await, 0, "nothing written");
    assert_eq!(t.count_rows("users").await, 0, "nothing written");
}

async fn embedding_models_are_separate(t: &TestStore) {
    let s = t.store();
    let mut other = NewMemory::new(
        MemoryKind::Fact,
        "embedded by another model",
        recall_core::types::Embedding {
            model: "other-model".into(),
            vector: vec![1.0, 0.0, 0.0, 0.0],
        },
    );
    other.importance = Some(0.8);
    s.add_memories(
        "u",
        vec![
            other,
            NewMemory::new(MemoryKind::Fact, "test model", emb(&[1.0, 0.0])),
        ],
    )
    .await
    .unwrap();
    let hits = s.search("u", &query(&[1.0, 0.0], 10)).await.unwrap().hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].memory.content, "test model");
    let other_q = VectorQuery::new(
        recall_core::types::Embedding {
            model: "other-model".into(),
            vector: vec![1.0, 0.0, 0.0, 0.0],
        },
        10,
    );
    let hits = s.search("u", &other_q).await.unwrap().hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].memory.content, "embedded by another model");
    assert_eq!(hits[0].memory.importance, 0.8);
    assert!(
        s.search(
            "u",
            &VectorQuery::new(
                recall_core::types::Embedding {
                    model: "unknown".into(),
                    vector: vec![1.0]
                },
                10,
            )
        )
        .await
        .unwrap()
        .hits
        .is_empty()
    );
}

async fn list_memories_filters_and_pages(t: &TestStore) {
    let s = t.store();
    let writes = (0..7)
        .map(|i| {
            write(
                msg(
                    if i % 2 == 0 { "even" } else { "odd" },
                    Role::User,
                    &format!("m{i}"),
                    at(1, i),
                    &[],
                ),
                &[1.0, 0.0],
            )
        })
        .collect();
    s.append_messages("u", writes).await.unwrap();
    let first = s
        .list_memories(
            "u",
            &Filter {
                session: Some("even".into()),
                ..Filter::default()
            },
            &page(3),
        )
        .await
        .unwrap();
    let names: Vec<&str> = first.items.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(names, ["m6", "m4", "m2"], "newest first");
    let next = s
        .list_memories(
            "u",
            &Filter {
                session: Some("even".into()),
                ..Filter::default()
            },
            &PageRequest {
                first: 3,
                after: first.next_cursor,
            },
        )
        .await
        .unwrap();
    let names: Vec<&str> = next.items.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(names, ["m0"]);
    assert!(next.next_cursor.is_none());
    let windowed = s
        .list_memories(
            "u",
            &Filter {
                since: Some(at(1, 2)),
                until: Some(at(1, 5)),
                ..Filter::default()
            },
            &page(10),
        )
        .await
        .unwrap();
    assert_eq!(windowed.items.len(), 3);
}

/// The two stores give the same ranking for the same data under each metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_across_backends() {
    // Vectors of different norms: the metrics disagree on their order.
    let data: [(&str, [f32; 2]); 4] = [
        ("long-aligned", [3.0, 0.3]),
        ("short-aligned", [0.5, 0.0]),
        ("unit-diagonal", [std::f32::consts::FRAC_1_SQRT_2; 2]),
        ("near", [0.9, 0.1]),
    ];
    let q = [1.0f32, 0.0];
    let expected = |metric: Metric| -> Vec<&str> {
        let mut scored: Vec<(&str, f32)> = data
            .iter()
            .map(|(c, v)| {
                let d = match metric {
                    Metric::Cosine => 1.0 - cos(&q, v),
                    Metric::L2 => ((v[0] - q[0]).powi(2) + (v[1] - q[1]).powi(2)).sqrt(),
                    Metric::Dot => -(v[0] * q[0] + v[1] * q[1]),
                };
                (*c, d)
            })
            .collect();
        scored.sort_by(|a, b| a.1.total_cmp(&b.1));
        scored.into_iter().map(|(c, _)| c).collect()
    };
    for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
        for t in [
            TestStore::pg(metric).await,
            TestStore::embedded(metric).await,
        ] {
            let s = t.store();
            assert_eq!(s.metric(), metric);
            s.add_memories(
                "u",
                data.iter()
                    .map(|(c, v)| NewMemory::new(MemoryKind::Fact, *c, emb(v)))
                    .collect(),
            )
            .await
            .unwrap();
            let hits = s.search("u", &query(&q, 4)).await.unwrap().hits;
            let got: Vec<&str> = hits.iter().map(|h| h.memory.content.as_str()).collect();
            assert_eq!(got, expected(metric), "{metric:?} on {}", s.backend());
            if metric == Metric::Dot {
                assert!(
                    (hits[0].score - 3.0).abs() < 1e-4,
                    "dot score is the inner product"
                );
            }
            if metric == Metric::L2 {
                let d = hits[0].distance;
                assert!((hits[0].score - 1.0 / (1.0 + d)).abs() < 1e-5);
            }
            t.close().await;
        }
    }
}

/// Memories (one per text) for `user`, in `session`, a day apart from 1 May, with a dummy vector.
async fn add_texts(t: &TestStore, user: &str, session: &str, texts: &[&str]) -> Vec<i64> {
    let writes = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            write(
                msg(session, Role::User, text, at(i as u32 + 1, 9), &[]),
                &[1.0, 0.0, 0.0],
            )
        })
        .collect();
    t.store()
        .append_messages(user, writes)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.memory_ids[0])
        .collect()
}

async fn text_search_ranks_by_bm25(t: &TestStore) {
    let s = t.store();
    let ids = add_texts(
        t,
        "alice",
        "s1",
        &[
            "I went to the market today",
            "Went for a run today, nothing much happened",
            "Today I adopted a greyhound called Pixel",
            "Nothing happened today",
            "The dolphins were swimming near the boat",
        ],
    )
    .await;
    let hits = s
        .text_search(
            "alice",
            &TextQuery::new("what happened with Pixel today?", 10),
        )
        .await
        .unwrap();
    let order: Vec<i64> = hits.iter().map(|h| h.memory.id).collect();
    // The rare word first, then the shorter of the two "happened", then the longer, then the
    // one sharing only the word every document has; the dolphins share nothing.
    assert_eq!(order, vec![ids[2], ids[3], ids[1], ids[0]], "{hits:?}");
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(hits.iter().all(|h| h.score > 0.0));
    // Stemming: "swim" finds "swimming", "dolphin" finds "dolphins"; case does not matter.
    let hits = s
        .text_search("alice", &TextQuery::new("DOLPHIN swim", 10))
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].memory.id, ids[4]);
    // Only stop words, or nothing at all in common: no hits, no error.
    for q in ["it is what it is", "zebra", "!!!"] {
        assert!(
            s.text_search("alice", &TextQuery::new(q, 10))
                .await
                .unwrap()
                .is_empty(),
            "{q}"
        );
    }
    // top_k truncates.
    let hits = s
        .text_search("alice", &TextQuery::new("today", 2))
        .await
        .unwrap();
    assert_eq!(hits.len(), 2);
    // Bad input is refused.
    let err = s
        .text_search("alice", &TextQuery::new("today", 0))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

async fn text_search_filters_isolation_and_updates(t: &TestStore) {
    let s = t.store();
    let a1 = add_texts(
        t,
        "alice",
        "trip",
        &["Booked flights to Lisbon", "Lisbon hotel is near the river"],
    )
    .await;
    let a2 = add_texts(t, "alice", "home", &["Thinking about Lisbon again"]).await;
    add_texts(
        t,
        "bob",
        "trip",
        &["Lisbon Lisbon Lisbon, my favourite city"],
    )
    .await;
    let ids =
        |hits: &[recall_core::types::TextHit]| hits.iter().map(|h| h.memory.id).collect::<Vec<_>>();

    let all = s
        .text_search("alice", &TextQuery::new("lisbon", 10))
        .await
        .unwrap();
    assert_eq!(all.len(), 3, "alice sees her three, never bob's");
    let mut only_trip = TextQuery::new("lisbon", 10);
    only_trip.filter = Filter {
        session: Some("trip".into()),
        ..Filter::default()
    };
    let hits = s.text_search("alice", &only_trip).await.unwrap();
    let mut got = ids(&hits);
    got.sort();
    assert_eq!(got, a1);
    let mut since = TextQuery::new("lisbon", 10);
    since.filter = Filter {
        since: Some(at(2, 0)),
        ..Filter::default()
    };
    assert_eq!(
        ids(&s.text_search("alice", &since).await.unwrap()),
        vec![a1[1]]
    );
    let mut unknown = TextQuery::new("lisbon", 10);
    unknown.filter = Filter {
        session: Some("nope".into()),
        ..Filter::default()
    };
    assert!(s.text_search("alice", &unknown).await.unwrap().is_empty());
    assert!(
        s.text_search("carol", &TextQuery::new("lisbon", 10))
            .await
            .unwrap()
            .is_empty()
    );

    // Updated text is searched by its new words; deleted memories are gone.
    s.update_memory(
        "alice",
        a2[0],
        MemoryPatch {
            content: Some("Thinking about Porto again".into()),
            embedding: Some(emb(&[0.0, 1.0, 0.0])),
            ..MemoryPatch::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        ids(&s
            .text_search("alice", &TextQuery::new("porto", 10))
            .await
            .unwrap()),
        a2
    );
    assert_eq!(
        s.text_search("alice", &TextQuery::new("lisbon", 10))
            .await
            .unwrap()
            .len(),
        2
    );
    s.delete_memories("alice", &[a1[0]]).await.unwrap();
    assert_eq!(
        ids(&s
            .text_search("alice", &TextQuery::new("lisbon flights", 10))
            .await
            .unwrap()),
        vec![a1[1]]
    );
    // Bob's statistics and rows are untouched by all of this.
    assert_eq!(
        s.text_search("bob", &TextQuery::new("lisbon", 10))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn vectors_of_memories(t: &TestStore) {
    let s = t.store();
    let a = s
        .add_memories(
            "alice",
            vec![
                NewMemory::new(MemoryKind::Fact, "one", emb(&[1.0, 0.0, 0.0])),
                NewMemory::new(MemoryKind::Fact, "two", emb(&[0.0, 0.5, 0.5])),
            ],
        )
        .await
        .unwrap();
    let b = s
        .add_memories(
            "bob",
            vec![NewMemory::new(
                MemoryKind::Fact,
                "three",
                emb(&[0.0, 0.0, 1.0]),
            )],
        )
        .await
        .unwrap();
    let got = s
        .vectors("alice", TEST_MODEL, &[a[0].id, a[1].id, b[0].id, 999_999])
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "bob's memory and unknown ids are absent");
    assert_eq!(got[&a[0].id], vec![1.0, 0.0, 0.0]);
    assert_eq!(got[&a[1].id], vec![0.0, 0.5, 0.5]);
    assert!(
        s.vectors("alice", "other-model", &[a[0].id])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.vectors("alice", TEST_MODEL, &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.vectors("nobody", TEST_MODEL, &[a[0].id])
            .await
            .unwrap()
            .is_empty()
    );
}

fn delete_job(run_at: DateTime<Utc>) -> NewJob {
    NewJob {
        kind: JobKind::DeleteUser,
        run_at,
        params: json!({ "actor": "user:alice" }),
    }
}

async fn jobs_lifecycle(t: &TestStore) {
    let s = t.store();
    let alice = Actor::user("alice");
    let later = Utc::now() + Duration::hours(1);
    let job = s
        .create_job("alice", delete_job(later), &alice)
        .await
        .unwrap();
    assert_eq!(job.user, "alice");
    assert_eq!(job.kind, JobKind::DeleteUser);
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!((job.progress, job.attempts), (0.0, 0));
    assert_eq!(job.run_at, later.trunc_subsecs(6));
    assert!(job.started_at.is_none() && job.finished_at.is_none());
    assert_eq!(s.get_job("alice", job.id).await.unwrap(), Some(job.clone()));

    // Another user can neither see nor cancel it.
    assert_eq!(s.get_job("bob", job.id).await.unwrap(), None);
    assert!(
        s.list_jobs("bob", &page(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let err = s
        .cancel_job("bob", job.id, &Actor::user("bob"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(
        s.get_job("alice", job.id).await.unwrap().unwrap().status,
        JobStatus::Queued
    );

    // One pending job of a kind per user; other users are not affected.
    let err = s
        .create_job("alice", delete_job(later), &alice)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let bobs = s
        .create_job("bob", delete_job(later), &Actor::user("bob"))
        .await
        .unwrap();
    let err = s
        .create_job(
            "alice",
            NewJob {
                params: json!([1, 2]),
                ..delete_job(later)
            },
            &alice,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    // Not due: nothing to claim.
    assert!(
        s.claim_job("w1", std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .is_none()
    );

    let cancelled = s.cancel_job("alice", job.id, &alice).await.unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(cancelled.finished_at.is_some());
    let err = s.cancel_job("alice", job.id, &alice).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    // Due now: claimed once, by one worker.
    let due = s
        .create_job(
            "alice",
            delete_job(Utc::now() - Duration::seconds(1)),
            &alice,
        )
        .await
        .unwrap();
    let claimed = s
        .claim_job("w1", std::time::Duration::from_secs(60))
        .await
        .unwrap()
        .expect("a due job");
    assert_eq!(claimed.id, due.id);
    assert_eq!(claimed.status, JobStatus::Running);
    assert_eq!(claimed.attempts, 1);
    assert!(claimed.started_at.is_some());
    assert!(
        s.claim_job("w2", std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .is_none(),
        "a held job is not claimed twice (and Bob's is not due)"
    );
    let err = s.cancel_job("alice", due.id, &alice).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "a running job cannot be cancelled"
    );
    assert_eq!(
        s.finish_job(due.id, "w2", JobOutcome::Succeeded(json!({})))
            .await
            .unwrap(),
        None,
        "only the holder finishes a job"
    );
    let done = s
        .finish_job(
            due.id,
            "w1",
            JobOutcome::Succeeded(json!({ "memories": 3 })),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.progress, 1.0);
    assert_eq!(done.result, Some(json!({ "memories": 3 })));
    assert!(done.finished_at.is_some());

    let listed = s.list_jobs("alice", &page(1)).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].id, due.id, "newest first");
    let rest = s
        .list_jobs(
            "alice",
            &PageRequest {
                first: 10,
                after: listed.next_cursor.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(|j| j.id).collect::<Vec<_>>(),
        [job.id]
    );
    assert_eq!(
        s.list_jobs("bob", &page(10)).await.unwrap().items[0].id,
        bobs.id
    );

    let actions: Vec<String> = s
        .audit_log("alice", &page(50))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(actions, ["schedule_job", "cancel_job", "schedule_job"]);
}

async fn job_leases(t: &TestStore) {
    let s = t.store();
    let alice = Actor::user("alice");
    let job = s
        .create_job(
            "alice",
            delete_job(Utc::now() - Duration::seconds(1)),
            &alice,
        )
        .await
        .unwrap();
    let first = s
        .claim_job("w1", std::time::Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // The first runner's lease ran out (it died, say): another takes the job over.
    let second = s
        .claim_job("w2", std::time::Duration::from_secs(60))
        .await
        .unwrap()
        .expect("an expired lease is claimed again");
    assert_eq!(second.id, job.id);
    assert_eq!(second.attempts, 2);
    assert_eq!(second.started_at, first.started_at);
    assert_eq!(
        s.finish_job(job.id, "w1", JobOutcome::Succeeded(json!({})))
            .await
            .unwrap(),
        None,
        "the runner that lost its lease cannot finish the job"
    );
    let failed = s
        .finish_job(job.id, "w2", JobOutcome::Failed("é".repeat(3000)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    let error = failed.error.unwrap();
    assert!(
        error.len() <= 2000 && error.starts_with("éé"),
        "{}",
        error.len()
    );
    assert!(
        s.claim_job("w3", std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .is_none()
    );
}
