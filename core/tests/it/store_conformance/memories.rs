//! Memories: isolation, updates, deletion, listing, and writes refused whole.
use super::*;

crate::fixtures::both_backends! {
    users_are_isolated;
    memory_updates;
    memory_deletion;
    list_memories_filters_and_pages;
    failed_write_leaves_nothing;
    bad_input_is_refused;
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
                expected_through: None,
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
    // A listing by tags: every one of them.
    let tagged = |user: &'static str, tags: &[&str]| {
        let filter = Filter {
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            ..Filter::default()
        };
        async move {
            s.list_memories(user, &filter, &page(10))
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|m| m.content)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(tagged("alice", &["t"]).await, ["alice secret"]);
    assert_eq!(tagged("alice", &["t", "t"]).await, ["alice secret"]);
    assert!(tagged("alice", &["t", "other"]).await.is_empty());
    assert_eq!(tagged("bob", &["t"]).await, ["bob note"]);
    // The same for listings of memories and of a session's messages.
    let alice_mems = s
        .list_memories("alice", &Filter::default(), &page(1))
        .await
        .unwrap();
    let after = PageRequest {
        first: 10,
        after: alice_mems.next_cursor.clone(),
    };
    assert!(after.after.is_some());
    for m in s
        .list_memories("bob", &Filter::default(), &after)
        .await
        .unwrap()
        .items
    {
        assert_eq!(m.content, "bob note");
    }
    let alice_msgs = s
        .list_messages("alice", "shared-name", &page(1))
        .await
        .unwrap();
    let after = PageRequest {
        first: 10,
        after: alice_msgs.next_cursor.clone(),
    };
    assert!(after.after.is_some());
    for m in s
        .list_messages("bob", "shared-name", &after)
        .await
        .unwrap()
        .items
    {
        assert_eq!(m.content, "bob note");
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
                expires_at: None,
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
