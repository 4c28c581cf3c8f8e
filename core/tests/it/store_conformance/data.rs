//! Data rights: export, deletion and settings, each audited.
use super::*;

crate::fixtures::both_backends! {
    export_everything;
    forget_user;
    deletion_is_final;
    settings_and_audit;
    optimize_keeps_everything;
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
            expected_through: None,
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
            expected_through: None,
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

    let mut memories: Vec<i64> = s
        .list_memories("u", &Filter::default(), &page(10))
        .await
        .unwrap()
        .items
        .iter()
        .map(|m| m.id)
        .collect();
    memories.sort_unstable();
    assert_eq!(memories.len(), 3);
    let (report, gone) = s.delete_user("u", &Actor::user("u")).await.unwrap();
    assert!(report.existed);
    // The memories that went, to announce: every one of the user's, none of the other's.
    assert_eq!(gone.iter().map(|m| m.id).collect::<Vec<_>>(), memories);
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
    let (report, gone) = s.delete_user("ghost", &Actor::cli()).await.unwrap();
    assert!(!report.existed && gone.is_empty());
}

/// Work begun before a user's data was deleted cannot bring it back when it ends: a chat
/// reply to a message that is gone, an adapter trained on the deleted data, a queued job.
async fn deletion_is_final(t: &TestStore) {
    use recall_core::deep_memory::{Adapter, StoredAdapter, TrainingReport};
    let s = t.store();
    let asked = s
        .append_messages(
            "u",
            vec![write(
                msg("s1", Role::User, "tell me a story", at(1, 1), &[]),
                &[1.0, 0.0],
            )],
        )
        .await
        .unwrap()[0]
        .message
        .id;
    add_texts(t, "other", "s1", &["keep me"]).await;
    let reply = |answers: i64| MessageWrite {
        answers: Some(answers),
        ..write(
            msg("s1", Role::Assistant, "once upon a time", at(1, 2), &[]),
            &[0.0, 1.0],
        )
    };
    let adapter = |trained_at: DateTime<Utc>| StoredAdapter {
        embedding_model: TEST_MODEL.into(),
        version: 0,
        adapter: Adapter::identity(2, 1, 7),
        report: TrainingReport::default(),
        enabled: false,
        memories: 1,
        pairs: 0,
        trained_at,
        updated_at: Utc::now(),
    };
    // While the user's data is there, both are stored.
    let began = Utc::now();
    let first = s.append_messages("u", vec![reply(asked)]).await.unwrap();
    assert_eq!(first[0].message.role, Role::Assistant);
    assert_eq!(s.put_adapter("u", adapter(began)).await.unwrap().version, 1);
    // A reply must answer one of the user's own messages.
    let theirs = s
        .list_messages("other", "s1", &page(1))
        .await
        .unwrap()
        .items[0]
        .id;
    let err = s
        .append_messages("u", vec![reply(theirs)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // An adapter whose training began before the user (of that name) was made is refused.
    let before = s.get_user("u").await.unwrap().unwrap().created_at - Duration::seconds(1);
    let err = s.put_adapter("u", adapter(before)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    let jobs = s.jobs();
    let keys = NewJob {
        kind: JobKind::MemoryKeys,
        run_at: Utc::now() + Duration::hours(1),
        params: serde_json::to_value(recall_core::memory_keys::KeyOptions::default()).unwrap(),
    };
    let queued = jobs
        .create_job("u", keys.clone(), &Actor::user("u"))
        .await
        .unwrap();
    let running = jobs
        .create_job(
            "u",
            delete_job(Utc::now() - Duration::seconds(1)),
            &Actor::user("u"),
        )
        .await
        .unwrap();
    let lease = std::time::Duration::from_secs(60);
    let claimed = jobs
        .claim_job("w", lease, &[JobKind::DeleteUser])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, running.id);
    let others = jobs
        .create_job("other", keys, &Actor::user("other"))
        .await
        .unwrap();

    let (report, _) = s.delete_user("u", &Actor::user("u")).await.unwrap();
    assert_eq!(report.messages, 2);
    // The reply and the adapter, finished after the deletion, are refused; nothing of the
    // user comes back.
    let err = s
        .append_messages("u", vec![reply(asked)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = s.put_adapter("u", adapter(began)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(s.get_user("u").await.unwrap().is_none());
    for (table, left) in [
        ("users", 1),
        ("sessions", 1),
        ("messages", 1),
        ("memories", 1),
        ("deep_memory_adapters", 0),
    ] {
        assert_eq!(t.count_rows(table).await, left, "{table}");
    }
    // The queued job went with the data; the running deletion keeps its row to record its
    // end; the other user's job stays.
    assert!(jobs.get_job("u", queued.id).await.unwrap().is_none());
    assert!(jobs.get_job("u", running.id).await.unwrap().is_some());
    assert!(jobs.get_job("other", others.id).await.unwrap().is_some());
    // A reply with no message to answer is an ordinary message.
    let plain = MessageWrite {
        answers: None,
        ..reply(asked)
    };
    s.append_messages("u", vec![plain]).await.unwrap();
    assert!(s.get_user("u").await.unwrap().is_some());
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

async fn optimize_keeps_everything(t: &TestStore) {
    use sea_orm::ConnectionTrait;
    let s = t.store();
    s.append_messages(
        "u",
        vec![
            write(
                msg("s1", Role::User, "dolphins swim at dawn", at(1, 1), &[]),
                &[1.0, 0.0],
            ),
            write(
                msg("s1", Role::User, "the ferry was late", at(1, 2), &[]),
                &[0.0, 1.0],
            ),
        ],
    )
    .await
    .unwrap();
    let ids = |p: &recall_core::types::SearchPage| -> Vec<i64> {
        p.hits.iter().map(|h| h.memory.id).collect()
    };
    let before = ids(&s.search("u", &query(&[0.9, 0.1], 2)).await.unwrap());
    if let TestStore::Pg(..) = t {
        // What an interrupted REINDEX CONCURRENTLY leaves: an invalid index named *_ccnew
        // (made here by a concurrent unique index that fails on duplicates).
        let e = t
            .connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX CONCURRENTLY ix_memories_tsv_ccnew ON memories (user_id)",
            )
            .await;
        assert!(e.is_err());
    }
    let report = s.optimize().await.unwrap();
    assert_eq!(report.backend, s.backend());
    if let TestStore::Pg(..) = t {
        assert_eq!(
            report.dropped_invalid,
            ["ix_memories_tsv_ccnew"],
            "{report:?}"
        );
        assert!(
            !report.reindexed.iter().any(|n| n.contains("ccnew")),
            "{report:?}"
        );
        assert_eq!(
            t.count_rows("pg_indexes WHERE indexname LIKE '%ccnew'")
                .await,
            0
        );
    }
    assert!(
        report.bytes_before > 0 && report.bytes_after > 0,
        "{report:?}"
    );
    match t {
        TestStore::Pg(..) => {
            assert!(
                report.reindexed.iter().any(|n| n == "ix_memories_tsv"),
                "{report:?}"
            );
            assert!(
                report.reindexed.iter().any(|n| n.contains("hnsw")),
                "{report:?}"
            );
        }
        TestStore::Embedded(..) => {
            assert!(report.reindexed.is_empty());
            assert_eq!(
                report.cached_vectors_released, 2,
                "the search loaded u's vectors"
            );
        }
    }
    assert_eq!(
        ids(&s.search("u", &query(&[0.9, 0.1], 2)).await.unwrap()),
        before
    );
    let hits = s
        .text_search("u", &TextQuery::new("dolphin", 10))
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
}
