//! Users, sessions, messages and summaries.
use super::*;

crate::fixtures::both_backends! {
    users_and_sessions;
    messages_round_trip;
    summaries;
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
    let memory = s
        .list_memories("alice", &Filter::default(), &page(10))
        .await
        .unwrap()
        .items[0]
        .clone();
    // Another user's session of that name is not theirs to delete.
    assert!(s.delete_session("bob", "s1").await.unwrap().is_none());
    let gone = s.delete_session("alice", "s1").await.unwrap().unwrap();
    assert_eq!(
        gone,
        vec![recall_core::types::DeletedMemory {
            id: memory.id,
            kind: MemoryKind::Message,
            key_for: None,
        }],
        "the deletion names the memories that went with the session"
    );
    assert!(s.delete_session("alice", "s1").await.unwrap().is_none());
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

    // The tail of a session after a message id: oldest or newest first in id order, counted.
    let all = s
        .list_messages("alice", "s1", &page(100))
        .await
        .unwrap()
        .items;
    assert_eq!(all.len(), 2);
    let ids: Vec<i64> = all.iter().map(|m| m.id).collect();
    let mut by_id = ids.clone();
    by_id.sort();
    let after = s
        .messages_after("alice", "s1", by_id[0], 100, false)
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|m| m.id).collect::<Vec<_>>(),
        by_id[1..].to_vec()
    );
    let newest = s.messages_after("alice", "s1", 0, 1, true).await.unwrap();
    assert_eq!(
        newest.iter().map(|m| m.id).collect::<Vec<_>>(),
        by_id[1..].to_vec(),
        "the newest one"
    );
    assert_eq!(
        s.count_messages_after("alice", "s1", by_id[0])
            .await
            .unwrap(),
        (by_id.len() - 1) as u64
    );
    assert!(
        s.messages_after("bob", "s1", 0, 10, false)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.count_messages_after("bob", "s1", 0).await.unwrap(), 0);
    assert_eq!(
        s.messages_after("alice", "s1", 0, 0, false)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
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
                expected_through: None,
            },
        )
        .await
        .unwrap()
        .expect("the first summary moves the watermark");
    let listed = s.list_summaries("u", "s1").await.unwrap();
    assert_eq!(listed, vec![summary.clone()]);
    let session = s.get_session("u", "s1").await.unwrap().unwrap();
    assert_eq!(session.summarized_through, Some(out[1].message.id));
    assert!(
        s.messages_after("u", "s1", out[1].message.id, 10, false)
            .await
            .unwrap()
            .is_empty()
    );
    // A second writer that read the session before the summary loses the race: nothing is
    // written, and the watermark stays.
    let late = NewSummary {
        session: "s1".into(),
        content: "The same span again.".into(),
        first_message_id: Some(out[0].message.id),
        last_message_id: Some(out[1].message.id),
        model: None,
        embedding: emb(&[0.6, 0.8]),
        expected_through: None,
    };
    assert_eq!(s.add_summary("u", late.clone()).await.unwrap(), None);
    assert_eq!(s.list_summaries("u", "s1").await.unwrap().len(), 1);
    // A summary must reach past the watermark it follows.
    let behind = NewSummary {
        expected_through: Some(out[1].message.id),
        ..late
    };
    let err = s.add_summary("u", behind).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        s.count_memories("u").await.unwrap(),
        3,
        "two messages and one summary"
    );
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
                expected_through: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}
