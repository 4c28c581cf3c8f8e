//! Vector search (metrics, filters, thresholds, pages), full-text search, and stored vectors.
use super::*;

crate::fixtures::both_backends! {
    statements;
    search_ranks_by_cosine;
    search_filters;
    search_threshold_and_pages;
    embedding_models_are_separate;
    text_search_ranks_by_bm25;
    text_search_filters_isolation_and_updates;
    vectors_of_memories;
    neighbours_in_conversation_order;
    a_narrow_filter_finds_its_rows_among_many_vectors;
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
    // Bounds finer than the stored microseconds mean what they say, in SQL as in memory:
    // half a microsecond after a1 leaves it out, half a microsecond after a2 lets it in.
    let half = Duration::nanoseconds(500);
    let fine = Filter {
        since: Some(at(2, 10) + half),
        until: Some(at(4, 10) + half),
        ..Filter::default()
    };
    assert_eq!(run(fine.clone()).await, ["a2", "u2"]);
    let mut listed: Vec<String> = s
        .list_memories("u", &fine, &page(10))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|m| m.content)
        .collect();
    listed.sort();
    assert_eq!(listed, ["a2", "u2"]);
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

async fn neighbours_in_conversation_order(t: &TestStore) {
    let s = t.store();
    let first = add_texts(t, "alice", "s1", &["a1", "a2", "a3"]).await;
    // Another session's messages land between the turns of s1.
    let other = add_texts(t, "alice", "s2", &["b1", "b2"]).await;
    let rest = add_texts(t, "alice", "s1", &["a4", "a5"]).await;
    let bob = add_texts(t, "bob", "s1", &["c1", "c2", "c3"]).await;
    let fact = s
        .add_memories(
            "alice",
            vec![NewMemory::new(
                MemoryKind::Fact,
                "loose",
                emb(&[1.0, 0.0, 0.0]),
            )],
        )
        .await
        .unwrap()[0]
        .id;
    let names = |pairs: Vec<(i64, recall_core::types::Memory)>| -> Vec<(i64, String)> {
        let mut v: Vec<(i64, String)> = pairs.into_iter().map(|(c, m)| (c, m.content)).collect();
        v.sort();
        v
    };
    let a3 = first[2];
    let got = names(s.neighbours("alice", &[a3], 1).await.unwrap());
    assert_eq!(got, vec![(a3, "a2".into()), (a3, "a4".into())]);
    let got = names(s.neighbours("alice", &[a3], 2).await.unwrap());
    let words: Vec<&str> = got.iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(words, vec!["a1", "a2", "a4", "a5"]);
    // The ends of a session have neighbours on one side; several centres at once.
    let got = names(
        s.neighbours("alice", &[first[0], rest[1], other[0]], 1)
            .await
            .unwrap(),
    );
    assert_eq!(got, {
        let mut want = vec![
            (first[0], "a2".to_owned()),
            (rest[1], "a4".to_owned()),
            (other[0], "b2".to_owned()),
        ];
        want.sort();
        want
    });
    // Another user's ids, a memory outside any session and unknown ids have none.
    assert!(
        s.neighbours("alice", &[bob[1], fact, 999_999], 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.neighbours("bob", &[a3], 2).await.unwrap().is_empty());
    assert_eq!(
        names(s.neighbours("bob", &[bob[1]], 1).await.unwrap()),
        vec![(bob[1], "c1".into()), (bob[1], "c3".into())]
    );
    assert!(s.neighbours("alice", &[a3], 0).await.unwrap().is_empty());
    assert!(s.neighbours("nobody", &[a3], 1).await.unwrap().is_empty());
    let err = s.neighbours("alice", &[a3], 6).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

/// A narrow filter (one month) among many model-sized vectors, all nearer the query than the
/// one row that passes: the exact search must still find it. (On Postgres a plan that walks
/// the HNSW index stops at `ef_search` neighbours and filters them away to nothing; this
/// plan showed on fresh tables in `retrieval::time_entities_and_neighbours_lift_the_right_turn`.)
async fn a_narrow_filter_finds_its_rows_among_many_vectors(t: &TestStore) {
    let s = t.store();
    let unit = |i: usize, noise: f32| {
        let mut v = vec![noise; 384];
        v[i] = 1.0;
        v
    };
    let may = Utc.with_ymd_and_hms(2023, 5, 8, 13, 0, 0).unwrap();
    let mut writes = vec![write(
        msg("may", Role::User, "may", may, &[]),
        &unit(1, 0.0),
    )];
    for i in 0..100u32 {
        let june = Utc.with_ymd_and_hms(2023, 6, 20, 13, i % 60, 0).unwrap();
        writes.push(write(
            msg(&format!("june-{i}"), Role::User, "june", june, &[]),
            &unit(0, 0.001 * i as f32),
        ));
    }
    s.append_messages("carol", writes).await.unwrap();
    let mut q = query(&unit(0, 0.0), 3);
    q.filter.since = Some(Utc.with_ymd_and_hms(2023, 5, 1, 0, 0, 0).unwrap());
    q.filter.until = Some(Utc.with_ymd_and_hms(2023, 6, 1, 0, 0, 0).unwrap());
    let hits = s.search("carol", &q).await.unwrap().hits;
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].memory.content, "may");
}
