//! Memories that stay true: supersede chains with history as of a time, expiry and the purge,
//! and metadata conditions on every read.
use recall_core::types::{MetadataCondition, MetadataOp, SearchHit};

use super::*;

crate::fixtures::both_backends! {
    superseded_memories_leave_search_and_stay_as_history;
    deleting_a_replacement_relinks_the_chain;
    supersede_is_checked_and_scoped_to_the_user;
    expired_memories_are_left_out_then_purged;
    a_purge_leaves_no_link_to_what_it_removed;
    metadata_conditions_narrow_every_read;
    metadata_conditions_page_through_many_rows;
}

fn fact(text: &str, v: &[f32], t: DateTime<Utc>) -> NewMemory {
    NewMemory {
        created_at: Some(t),
        ..NewMemory::new(MemoryKind::Fact, text, emb(v))
    }
}

fn ids(hits: &[SearchHit]) -> Vec<i64> {
    hits.iter().map(|h| h.memory.id).collect()
}

fn filter_as_of(t: DateTime<Utc>) -> Filter {
    Filter {
        as_of: Some(t),
        ..Filter::default()
    }
}

async fn superseded_memories_leave_search_and_stay_as_history(t: &TestStore) {
    let s = t.store();
    let v = [1.0f32, 0.2, 0.0];
    let paris = s
        .add_memories("alice", vec![fact("Alice lives in Paris", &v, at(1, 9))])
        .await
        .unwrap()[0]
        .clone();
    let berlin = s
        .add_memories(
            "alice",
            vec![NewMemory {
                supersedes: Some(paris.id),
                ..fact("Alice moved to Berlin", &[1.0, 0.1, 0.0], at(3, 9))
            }],
        )
        .await
        .unwrap()[0]
        .clone();
    assert_eq!(berlin.supersedes, Some(paris.id));
    let old = s.get_memory("alice", paris.id).await.unwrap().unwrap();
    assert_eq!(old.superseded_by, Some(berlin.id));
    assert_eq!(old.superseded_at, Some(at(3, 9)));

    // Now: only the current fact, in every read.
    let hits = s.search("alice", &query(&v, 10)).await.unwrap().hits;
    assert_eq!(ids(&hits), vec![berlin.id]);
    let text = s
        .text_search(
            "alice",
            &TextQuery::new("where does Alice live, Paris?", 10),
        )
        .await
        .unwrap();
    assert!(text.iter().all(|h| h.memory.id != paris.id), "{text:?}");
    let listed = s
        .list_memories("alice", &Filter::default(), &page(10))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].id, berlin.id);

    // As of a time: what was true then.
    let then = |t| VectorQuery {
        filter: filter_as_of(t),
        ..query(&v, 10)
    };
    assert_eq!(
        ids(&s.search("alice", &then(at(2, 9))).await.unwrap().hits),
        vec![paris.id]
    );
    assert_eq!(
        ids(&s.search("alice", &then(at(4, 9))).await.unwrap().hits),
        vec![berlin.id]
    );
    assert!(
        s.search("alice", &then(at(1, 8)))
            .await
            .unwrap()
            .hits
            .is_empty()
    );
    let text_then = s
        .text_search(
            "alice",
            &TextQuery {
                filter: filter_as_of(at(2, 9)),
                ..TextQuery::new("Alice Paris", 10)
            },
        )
        .await
        .unwrap();
    assert_eq!(text_then.len(), 1);
    assert_eq!(text_then[0].memory.id, paris.id);
    let listed_then = s
        .list_memories("alice", &filter_as_of(at(2, 9)), &page(10))
        .await
        .unwrap();
    assert_eq!(listed_then.items.len(), 1);
    assert_eq!(listed_then.items[0].id, paris.id);

    // The whole history on request.
    let all = Filter {
        include_superseded: true,
        ..Filter::default()
    };
    let listed = s.list_memories("alice", &all, &page(10)).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    let hits = s
        .search(
            "alice",
            &VectorQuery {
                filter: all,
                ..query(&v, 10)
            },
        )
        .await
        .unwrap()
        .hits;
    assert_eq!(ids(&hits), vec![paris.id, berlin.id]);
}

async fn deleting_a_replacement_relinks_the_chain(t: &TestStore) {
    let s = t.store();
    let v = [0.0f32, 1.0, 0.0];
    let a = s
        .add_memories("alice", vec![fact("tea", &v, at(1, 9))])
        .await
        .unwrap()[0]
        .id;
    let chain = |old: i64, text: &'static str, day: u32| NewMemory {
        supersedes: Some(old),
        ..fact(text, &v, at(day, 9))
    };
    let b = s
        .add_memories("alice", vec![chain(a, "coffee", 2)])
        .await
        .unwrap()[0]
        .id;
    let c = s
        .add_memories("alice", vec![chain(b, "matcha", 3)])
        .await
        .unwrap()[0]
        .id;
    // Deleting the middle: the first is now replaced by the last.
    assert_eq!(s.delete_memories("alice", &[b]).await.unwrap(), 1);
    let first = s.get_memory("alice", a).await.unwrap().unwrap();
    assert_eq!(first.superseded_by, Some(c));
    let last = s.get_memory("alice", c).await.unwrap().unwrap();
    assert_eq!(last.supersedes, Some(a));
    assert_eq!(
        ids(&s.search("alice", &query(&v, 10)).await.unwrap().hits),
        vec![c]
    );
    // Deleting the last: the first is current again, and searches find it (the cached
    // index of the embedded store learns it too).
    assert_eq!(s.delete_memories("alice", &[c]).await.unwrap(), 1);
    let first = s.get_memory("alice", a).await.unwrap().unwrap();
    assert_eq!((first.superseded_by, first.superseded_at), (None, None));
    assert_eq!(
        ids(&s.search("alice", &query(&v, 10)).await.unwrap().hits),
        vec![a]
    );
}

async fn supersede_is_checked_and_scoped_to_the_user(t: &TestStore) {
    let s = t.store();
    let v = [1.0f32, 0.0, 0.0];
    let bobs = s
        .add_memories("bob", vec![fact("bob's fact", &v, at(1, 9))])
        .await
        .unwrap()[0]
        .id;
    let alices = s
        .add_memories("alice", vec![fact("alice's fact", &v, at(1, 9))])
        .await
        .unwrap()[0]
        .id;
    // Another user's memory cannot be superseded (and is not told apart from a missing one).
    let err = s
        .add_memories(
            "alice",
            vec![NewMemory {
                supersedes: Some(bobs),
                ..fact("alice's new fact", &v, at(2, 9))
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let bob = s.get_memory("bob", bobs).await.unwrap().unwrap();
    assert_eq!(bob.superseded_by, None);
    assert_eq!(
        s.list_memories("alice", &Filter::default(), &page(10))
            .await
            .unwrap()
            .items
            .len(),
        1,
        "nothing was written"
    );
    // Two replacements of one memory in one call, or of a replaced one, are refused.
    let twice = s
        .add_memories(
            "alice",
            vec![
                NewMemory {
                    supersedes: Some(alices),
                    ..fact("one", &v, at(2, 9))
                },
                NewMemory {
                    supersedes: Some(alices),
                    ..fact("two", &v, at(2, 9))
                },
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(twice.kind(), ErrorKind::InvalidInput, "{twice}");
    s.add_memories(
        "alice",
        vec![NewMemory {
            supersedes: Some(alices),
            ..fact("newer", &v, at(2, 9))
        }],
    )
    .await
    .unwrap();
    let again = s
        .add_memories(
            "alice",
            vec![NewMemory {
                supersedes: Some(alices),
                ..fact("newest", &v, at(3, 9))
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(again.kind(), ErrorKind::InvalidInput, "{again}");
    assert!(again.to_string().contains("already superseded"), "{again}");
}

async fn expired_memories_are_left_out_then_purged(t: &TestStore) {
    let s = t.store();
    let v = [0.3f32, 0.3, 0.9];
    let now = Utc::now().trunc_subsecs(6);
    let gone = now - Duration::seconds(5);
    let later = now + Duration::hours(1);
    let stored = s
        .add_memories(
            "alice",
            vec![
                NewMemory {
                    expires_at: Some(gone),
                    ..fact("the door code is 1234", &v, now - Duration::hours(2))
                },
                NewMemory {
                    expires_at: Some(later),
                    ..fact("the wifi code is 9876", &v, now - Duration::hours(2))
                },
                fact("the alarm code is 5555", &v, now - Duration::hours(2)),
            ],
        )
        .await
        .unwrap();
    let (expired, expiring, lasting) = (stored[0].id, stored[1].id, stored[2].id);
    assert_eq!(stored[0].expires_at, Some(gone));
    s.add_memories(
        "bob",
        vec![NewMemory {
            expires_at: Some(gone),
            ..fact("bob's code", &v, now - Duration::hours(2))
        }],
    )
    .await
    .unwrap();

    let mut found = ids(&s.search("alice", &query(&v, 10)).await.unwrap().hits);
    found.sort();
    assert_eq!(found, vec![expiring, lasting]);
    let text = s
        .text_search("alice", &TextQuery::new("code", 10))
        .await
        .unwrap();
    assert_eq!(text.len(), 2);
    assert!(text.iter().all(|h| h.memory.id != expired));
    assert_eq!(
        s.list_memories("alice", &Filter::default(), &page(10))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    // Before it expired, it was there.
    let before = s
        .list_memories(
            "alice",
            &filter_as_of(gone - Duration::seconds(1)),
            &page(10),
        )
        .await
        .unwrap();
    assert_eq!(before.items.len(), 3);

    // A later expiry, or none, can be set again.
    let changed = s
        .update_memory(
            "alice",
            expiring,
            MemoryPatch {
                expires_at: Some(None),
                ..MemoryPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(changed.expires_at, None);

    // The purge deletes what expired, user by user, and nothing else.
    let mut purged = s.purge_expired(Utc::now(), 100).await.unwrap();
    purged.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(purged.len(), 2, "{purged:?}");
    assert_eq!(purged[0].0, "alice");
    assert_eq!(
        purged[0].1.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![expired]
    );
    assert_eq!(purged[1].0, "bob");
    assert!(s.get_memory("alice", expired).await.unwrap().is_none());
    assert!(s.get_memory("alice", expiring).await.unwrap().is_some());
    assert!(s.purge_expired(Utc::now(), 100).await.unwrap().is_empty());
    assert_eq!(s.count_memories("alice").await.unwrap(), 2);
}

/// The purge leaves no link to a memory it removed (a backup holding one could not be
/// restored): the replacement of an expired memory replaces nothing any more, and a memory
/// whose replacement expired stays replaced (expiry is not a retraction).
async fn a_purge_leaves_no_link_to_what_it_removed(t: &TestStore) {
    let s = t.store();
    let v = [1.0f32, 0.0];
    let now = Utc::now();
    let soon = now + Duration::seconds(30);
    let add = |m: NewMemory| async move { s.add_memories("u", vec![m]).await.unwrap()[0].id };
    let old = add(NewMemory {
        expires_at: Some(soon),
        ..fact("the door code is 1111", &v, now - Duration::hours(2))
    })
    .await;
    let new = add(NewMemory {
        supersedes: Some(old),
        ..fact("the door code is 2222", &v, now - Duration::hours(1))
    })
    .await;
    let kept = add(fact("the gate code is 3333", &v, now - Duration::hours(2))).await;
    let brief = add(NewMemory {
        expires_at: Some(soon),
        supersedes: Some(kept),
        ..fact(
            "the gate code is 4444 this week",
            &v,
            now - Duration::hours(1),
        )
    })
    .await;
    assert_eq!(
        s.get_memory("u", kept)
            .await
            .unwrap()
            .unwrap()
            .superseded_by,
        Some(brief)
    );

    let purged = s
        .purge_expired(soon + Duration::seconds(1), 100)
        .await
        .unwrap();
    let mut gone: Vec<i64> = purged
        .iter()
        .flat_map(|(_, ms)| ms.iter().map(|m| m.id))
        .collect();
    gone.sort_unstable();
    assert_eq!(gone, [old, brief]);
    let replacement = s.get_memory("u", new).await.unwrap().unwrap();
    assert_eq!(replacement.supersedes, None);
    let replaced = s.get_memory("u", kept).await.unwrap().unwrap();
    assert_eq!(replaced.superseded_by, None);
    assert!(replaced.superseded_at.is_some(), "it stays replaced");
    assert_eq!(
        ids(&s.search("u", &query(&v, 10)).await.unwrap().hits),
        [new]
    );
}

fn cond(key: &str, op: MetadataOp, value: serde_json::Value) -> Filter {
    Filter {
        metadata: vec![MetadataCondition::new(key, op, value)],
        ..Filter::default()
    }
}

async fn metadata_conditions_narrow_every_read(t: &TestStore) {
    let s = t.store();
    let with = |text: &str, v: &[f32], metadata: serde_json::Value| NewMemory {
        metadata,
        ..fact(text, v, at(1, 9))
    };
    let stored = s
        .add_memories(
            "alice",
            vec![
                with(
                    "apollo launch checklist",
                    &[1.0, 0.0, 0.0],
                    json!({"project": "apollo", "priority": 3, "due": "2026-12-24T00:00:00Z",
                           "labels": ["launch", "urgent"], "source": {"app": "notes"}}),
                ),
                with(
                    "apollo budget review",
                    &[0.9, 0.1, 0.0],
                    json!({"project": "apollo", "priority": 1, "due": "2027-01-10T00:00:00Z",
                           "labels": ["money"]}),
                ),
                with(
                    "gemini launch plan",
                    &[0.8, 0.2, 0.0],
                    json!({"project": "gemini", "priority": 2.0, "source": {"app": "mail"}}),
                ),
                with("unlabelled launch note", &[0.7, 0.3, 0.0], json!(null)),
            ],
        )
        .await
        .unwrap();
    let id: Vec<i64> = stored.iter().map(|m| m.id).collect();
    // Bob has a memory with the same metadata: never seen by Alice's filters.
    s.add_memories(
        "bob",
        vec![with(
            "bob apollo launch",
            &[1.0, 0.0, 0.0],
            json!({"project": "apollo", "priority": 3}),
        )],
    )
    .await
    .unwrap();

    let cases: Vec<(Filter, Vec<i64>)> = vec![
        (
            cond("project", MetadataOp::Eq, json!("apollo")),
            vec![id[0], id[1]],
        ),
        (
            cond("project", MetadataOp::Ne, json!("apollo")),
            vec![id[2], id[3]],
        ),
        (
            cond("project", MetadataOp::In, json!(["gemini", "mercury"])),
            vec![id[2]],
        ),
        (
            cond("priority", MetadataOp::Gte, json!(2)),
            vec![id[0], id[2]],
        ),
        (cond("priority", MetadataOp::Eq, json!(2)), vec![id[2]]),
        (cond("priority", MetadataOp::Lt, json!(2)), vec![id[1]]),
        (
            cond("due", MetadataOp::Lt, json!("2027-01-01T00:00:00+00:00")),
            vec![id[0]],
        ),
        (
            cond("labels", MetadataOp::Contains, json!("urgent")),
            vec![id[0]],
        ),
        (
            cond("source.app", MetadataOp::Eq, json!("mail")),
            vec![id[2]],
        ),
        (
            cond("source", MetadataOp::Exists, json!(false)),
            vec![id[1], id[3]],
        ),
        (
            Filter {
                metadata: vec![
                    MetadataCondition::new("project", MetadataOp::Eq, json!("apollo")),
                    MetadataCondition::new("priority", MetadataOp::Gt, json!(1)),
                ],
                ..Filter::default()
            },
            vec![id[0]],
        ),
    ];
    for (filter, want) in cases {
        let mut want = want;
        want.sort();
        let mut hits = ids(&s
            .search(
                "alice",
                &VectorQuery {
                    filter: filter.clone(),
                    ..query(&[1.0, 0.0, 0.0], 10)
                },
            )
            .await
            .unwrap()
            .hits);
        hits.sort();
        assert_eq!(hits, want, "search with {:?}", filter.metadata);
        let mut text: Vec<i64> = s
            .text_search(
                "alice",
                &TextQuery {
                    filter: filter.clone(),
                    ..TextQuery::new("launch apollo budget gemini note", 10)
                },
            )
            .await
            .unwrap()
            .iter()
            .map(|h| h.memory.id)
            .collect();
        text.sort();
        assert_eq!(text, want, "text search with {:?}", filter.metadata);
        let mut listed: Vec<i64> = s
            .list_memories("alice", &filter, &page(10))
            .await
            .unwrap()
            .items
            .iter()
            .map(|m| m.id)
            .collect();
        listed.sort();
        assert_eq!(listed, want, "listing with {:?}", filter.metadata);
    }

    // Malformed conditions are refused with a clear error.
    for bad in [
        cond("priority", MetadataOp::Gt, json!("soon")),
        cond("project", MetadataOp::In, json!("apollo")),
        cond("", MetadataOp::Eq, json!(1)),
        cond("a..b", MetadataOp::Eq, json!(1)),
        cond("x", MetadataOp::Exists, json!("yes")),
    ] {
        let err = s.list_memories("alice", &bad, &page(10)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
}

async fn metadata_conditions_page_through_many_rows(t: &TestStore) {
    let s = t.store();
    // 300 memories, every third of project "x"; vectors spread around a circle.
    let memories: Vec<NewMemory> = (0..300u32)
        .map(|i| {
            let a = i as f32 * 0.01;
            NewMemory {
                metadata: json!({ "project": if i % 3 == 0 { "x" } else { "y" }, "n": i }),
                ..fact(
                    &format!("memory number {i}"),
                    &[a.cos(), a.sin(), 0.0],
                    at(1, 0) + Duration::minutes(i as i64),
                )
            }
        })
        .collect();
    s.add_memories("alice", memories).await.unwrap();
    let x = cond("project", MetadataOp::Eq, json!("x"));

    // Listing: pages of 7 until the end, each item once, all of project x, newest first.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let p = s
            .list_memories("alice", &x, &PageRequest { first: 7, after })
            .await
            .unwrap();
        assert!(p.items.len() <= 7);
        seen.extend(p.items.iter().map(|m| m.metadata["n"].as_u64().unwrap()));
        match p.next_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    let want: Vec<u64> = (0..300).rev().filter(|i| i % 3 == 0).collect();
    assert_eq!(seen, want);

    // Search: the nearest of project x, in order, page after page.
    let q = [1.0f32, 0.0, 0.0];
    let mut got = Vec::new();
    let mut cursor = None;
    loop {
        let p = s
            .search(
                "alice",
                &VectorQuery {
                    filter: x.clone(),
                    cursor,
                    ..query(&q, 40)
                },
            )
            .await
            .unwrap();
        got.extend(
            p.hits
                .iter()
                .map(|h| h.memory.metadata["n"].as_u64().unwrap()),
        );
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    // Nearest to angle 0 are the smallest angles: n ascending.
    let want: Vec<u64> = (0..300).filter(|i| i % 3 == 0).collect();
    assert_eq!(got, want);
}
