//! Postgres users held in process (above the exact-search threshold): their text and
//! vectors follow every replica's writes, fit the configured limit, and answer while writes
//! land.
use recall_core::MemoryStore;
use recall_core::store::{PgStore, StoreConfig};
use recall_core::types::{Filter, MemoryKind, NewMemory, VectorQuery};

use crate::backend_specific::{fact, pseudo_vector, statements};
use crate::fixtures::{PgDb, emb};

/// Postgres searches the full text of users above the exact-search threshold in process; the
/// index follows updates, deletions and additions, including another replica's, and finds what
/// the SQL statement finds for smaller users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_large_user_text_search_follows_every_replica() {
    use recall_core::types::{MemoryPatch, TextQuery};
    let db = PgDb::create().await;
    let mut config = StoreConfig::postgres(db.url.clone());
    config.exact_search_threshold = 3;
    let a = PgStore::open(&config).await.unwrap();
    let b = PgStore::open(&config).await.unwrap();
    let sql = PgStore::open(&statements(&db.url)).await.unwrap();
    let texts = [
        "a gym in Zanzibar with a pool",
        "Zanzibar spice tours on Sunday",
        "my locker code is 4411",
        "the ferry to Zanzibar leaves at nine",
        "groceries: rice, lentils, limes",
    ];
    let rows = texts
        .iter()
        .enumerate()
        .map(|(i, t)| NewMemory::new(MemoryKind::Fact, *t, emb(&pseudo_vector(i as u64, 8))))
        .collect();
    let all: Vec<i64> = a
        .add_memories("ana", rows)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    async fn found(s: &PgStore) -> Vec<i64> {
        let mut ids: Vec<i64> = s
            .text_search("ana", &TextQuery::new("Zanzibar", 10))
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.memory.id)
            .collect();
        ids.sort();
        ids
    }
    let zanzibar = vec![all[0], all[1], all[3]];
    assert_eq!(found(&a).await, zanzibar);
    assert_eq!(found(&b).await, zanzibar);
    // The same rows through the SQL statement (a threshold the user is under).
    assert_eq!(found(&sql).await, zanzibar);
    b.update_memory(
        "ana",
        all[0],
        MemoryPatch {
            content: Some("nothing to see".into()),
            embedding: Some(emb(&pseudo_vector(50, 8))),
            ..MemoryPatch::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(found(&a).await, vec![all[1], all[3]]);
    b.delete_memories("ana", &[all[1]]).await.unwrap();
    assert_eq!(found(&a).await, vec![all[3]]);
    let added = b
        .add_memories(
            "ana",
            vec![NewMemory::new(
                MemoryKind::Fact,
                "a second gym in Zanzibar",
                emb(&pseudo_vector(99, 8)),
            )],
        )
        .await
        .unwrap();
    assert_eq!(found(&a).await, vec![all[3], added[0].id]);
    // Other users' rows never enter a user's index.
    a.add_memories(
        "bo",
        vec![NewMemory::new(
            MemoryKind::Fact,
            "Zanzibar again",
            emb(&pseudo_vector(7, 8)),
        )],
    )
    .await
    .unwrap();
    assert_eq!(found(&a).await, vec![all[3], added[0].id]);
    for s in [a, b, sql] {
        s.connection().clone().close().await.ok();
    }
    db.drop_db().await;
}

/// Postgres holds the vectors of users above the in-process threshold and searches them in
/// process: the answers equal Postgres's exact statement (filters, score threshold, second
/// page, every metric), follow another replica's updates, deletions, additions and
/// re-embedding, and never include another user's rows; `optimize` releases what is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_large_user_vector_search_is_held_and_follows_every_replica() {
    use recall_core::types::{Embedding, MemoryPatch, Metric};
    let dims = 16;
    for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
        let db = PgDb::create().await;
        let mut held = StoreConfig::postgres(db.url.clone()).with_metric(metric);
        held.in_process_search_threshold = 50;
        let a = PgStore::open(&held).await.unwrap();
        let b = PgStore::open(&held).await.unwrap();
        let mut exact = StoreConfig::postgres(db.url.clone()).with_metric(metric);
        exact.in_process_search_threshold = u64::MAX;
        exact.exact_search_threshold = u64::MAX;
        let sql = PgStore::open(&exact).await.unwrap();

        let rows: Vec<NewMemory> = (0..400)
            .map(|i| fact(i, Some(if i % 3 == 0 { "third" } else { "rest" })))
            .map(|m| NewMemory {
                embedding: emb(&pseudo_vector(m.content[1..].parse().unwrap(), dims)),
                ..m
            })
            .collect();
        let big: Vec<i64> = a
            .add_memories("big", rows)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        // A small user (under the threshold: Postgres answers) whose vectors sit close to the
        // queries.
        let small: Vec<i64> = a
            .add_memories(
                "small",
                (0..20)
                    .map(|i| {
                        NewMemory::new(
                            MemoryKind::Fact,
                            format!("s{i}"),
                            emb(&pseudo_vector(7_000 + i % 4, dims)),
                        )
                    })
                    .collect(),
            )
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();

        // Every query both ways; `held` names the store under test.
        async fn same(
            held: &PgStore,
            sql: &PgStore,
            user: &str,
            model: &str,
            seed: u64,
            dims: usize,
            what: &str,
        ) -> Vec<i64> {
            let mut q = VectorQuery::new(
                Embedding {
                    model: model.into(),
                    vector: pseudo_vector(seed, dims),
                },
                15,
            );
            for session in [None, Some("third")] {
                q.filter = Filter {
                    session: session.map(str::to_owned),
                    ..Filter::default()
                };
                q.cursor = None;
                q.min_score = None;
                let want = sql.search(user, &q).await.unwrap();
                let got = held.search(user, &q).await.unwrap();
                let ids = |p: &recall_core::types::SearchPage| -> Vec<i64> {
                    p.hits.iter().map(|h| h.memory.id).collect()
                };
                assert_eq!(ids(&got), ids(&want), "{what}, session {session:?}");
                for (g, w) in got.hits.iter().zip(&want.hits) {
                    assert!(
                        (g.score - w.score).abs() < 1e-4,
                        "{what}: scores {} and {}",
                        g.score,
                        w.score
                    );
                }
                if want.hits.len() == 15 {
                    // Each from its own cursor (a cursor holds a distance, which the two
                    // paths compute in a different order of additions).
                    q.cursor = got.next_cursor.clone();
                    let got2 = held.search(user, &q).await.unwrap();
                    q.cursor = want.next_cursor.clone();
                    let want2 = sql.search(user, &q).await.unwrap();
                    assert_eq!(ids(&got2), ids(&want2), "{what}: second page");
                    q.cursor = None;
                    q.min_score = Some((want.hits[4].score + want.hits[5].score) / 2.0);
                    assert_eq!(
                        ids(&held.search(user, &q).await.unwrap()),
                        ids(&sql.search(user, &q).await.unwrap()),
                        "{what}: min_score"
                    );
                }
            }
            let q = VectorQuery::new(
                Embedding {
                    model: model.into(),
                    vector: pseudo_vector(seed, dims),
                },
                15,
            );
            sql.search(user, &q)
                .await
                .unwrap()
                .hits
                .iter()
                .map(|h| h.memory.id)
                .collect()
        }
        let m = crate::fixtures::TEST_MODEL;
        for seed in 0..6 {
            let top = same(&a, &sql, "big", m, 7_000 + seed % 4, dims, "loaded").await;
            assert!(top.iter().all(|id| big.contains(id)), "another user's row");
        }
        let small_top = same(&a, &sql, "small", m, 7_000, dims, "small user").await;
        assert!(small_top.iter().all(|id| small.contains(id)));

        // Another replica moves the best match away, deletes the next two, adds one.
        let top = same(&a, &sql, "big", m, 123, dims, "before").await;
        b.update_memory(
            "big",
            top[0],
            MemoryPatch {
                content: Some("moved".into()),
                embedding: Some(emb(&pseudo_vector(9_999, dims))),
                ..MemoryPatch::default()
            },
        )
        .await
        .unwrap();
        b.delete_memories("big", &top[1..3]).await.unwrap();
        let added = b
            .add_memories(
                "big",
                vec![NewMemory::new(
                    MemoryKind::Fact,
                    "new",
                    emb(&pseudo_vector(123, dims)),
                )],
            )
            .await
            .unwrap();
        let after = same(
            &a,
            &sql,
            "big",
            m,
            123,
            dims,
            "after the other replica's writes",
        )
        .await;
        assert_eq!(after[0], added[0].id);
        // Stored vectors (re-ranking reads them) come from what is held, as Postgres has them.
        let mut asked = after.clone();
        asked.extend(&top[..3]);
        assert_eq!(
            a.vectors("big", m, &asked).await.unwrap(),
            sql.vectors("big", m, &asked).await.unwrap()
        );
        assert_eq!(a.vectors("big", m, &asked).await.unwrap().len(), 16);
        assert!(!after.contains(&top[0]) && !after.contains(&top[1]) && !after.contains(&top[2]));

        // This replica's own writes (applied to what it holds): an addition that supersedes
        // the best match, and a deletion.
        let replacement = a
            .add_memories(
                "big",
                vec![NewMemory {
                    supersedes: Some(after[0]),
                    ..NewMemory::new(
                        MemoryKind::Fact,
                        "replacement",
                        emb(&pseudo_vector(123, dims)),
                    )
                }],
            )
            .await
            .unwrap();
        a.delete_memories("big", &after[1..2]).await.unwrap();
        let own = same(&a, &sql, "big", m, 123, dims, "after its own writes").await;
        assert!(own.contains(&replacement[0].id));
        assert!(!own.contains(&after[0]) && !own.contains(&after[1]));

        // The other replica re-embeds the user into a new model and switches to it.
        let missing = b
            .missing_embeddings("big", "other-model", 1_000)
            .await
            .unwrap()
            .0;
        let vectors = missing
            .iter()
            .map(|(id, _)| {
                (
                    *id,
                    Embedding {
                        model: "other-model".into(),
                        vector: pseudo_vector(*id as u64 * 31, dims),
                    },
                )
            })
            .collect();
        b.add_embeddings("big", vectors).await.unwrap();
        assert!(
            b.switch_embedding_model("big", "other-model")
                .await
                .unwrap()
        );
        same(&a, &sql, "big", "other-model", 77, dims, "re-embedded").await;

        // What was held is released by `optimize`: the big user's vectors.
        let report = a.optimize().await.unwrap();
        assert_eq!(report.cached_vectors_released, 399, "{metric:?}");
        for s in [a, b, sql] {
            s.connection().clone().close().await.ok();
        }
        db.drop_db().await;
    }
}

/// Postgres holds no more than `max_cached_vectors` (memories plus vectors): searching one
/// held user after another drops the least recently searched, a user too large to hold is
/// searched by Postgres, and every answer stays Postgres's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_held_users_fit_the_limit() {
    let db = PgDb::create().await;
    let mut held = StoreConfig::postgres(db.url.clone());
    held.in_process_search_threshold = 5;
    held.max_cached_vectors = 40;
    let store = PgStore::open(&held).await.unwrap();
    let mut exact = StoreConfig::postgres(db.url.clone());
    exact.in_process_search_threshold = u64::MAX;
    let sql = PgStore::open(&exact).await.unwrap();
    // Two users of 15 memories (30 held each: one fits at a time) and one of 25 (50: never).
    for (user, n, base) in [("ann", 15, 0), ("ben", 15, 100), ("cat", 25, 200)] {
        let rows = (0..n).map(|i| fact(base + i, None)).collect();
        store.add_memories(user, rows).await.unwrap();
    }
    for round in 0..3u64 {
        for user in ["ann", "ben", "cat"] {
            let q = VectorQuery::new(emb(&pseudo_vector(5_000 + round, 32)), 5);
            let ids = |p: recall_core::types::SearchPage| -> Vec<i64> {
                p.hits.iter().map(|h| h.memory.id).collect()
            };
            assert_eq!(
                ids(store.search(user, &q).await.unwrap()),
                ids(sql.search(user, &q).await.unwrap()),
                "{user}, round {round}"
            );
        }
    }
    // The user too large to hold is not held for a text search either (it would push the
    // others out, and hold more than the limit).
    let text = recall_core::types::TextQuery::new("f205", 5);
    let found = store.text_search("cat", &text).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].memory.content, "f205");
    // Only the last held user is still held: its 15 vectors are what optimize releases.
    assert_eq!(store.optimize().await.unwrap().cached_vectors_released, 15);
    for s in [store, sql] {
        s.connection().clone().close().await.ok();
    }
    db.drop_db().await;
}

/// A held user whose vectors are being read while writes land still gets answers: vectors
/// read before a write are let go, and Postgres answers meanwhile (it answered nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_held_search_answers_while_writes_land() {
    use recall_core::types::TextQuery;
    let db = PgDb::create().await;
    let mut held = StoreConfig::postgres(db.url.clone());
    held.in_process_search_threshold = 5;
    let store = PgStore::open(&held).await.unwrap();
    let rows = (0..20).map(|i| fact(i, None)).collect();
    store.add_memories("ann", rows).await.unwrap();
    for round in 0..20u64 {
        // Held by a text search first: the vector search reads the vectors as a write lands.
        store
            .text_search("ann", &TextQuery::new("fact", 5))
            .await
            .unwrap();
        let q = VectorQuery::new(emb(&pseudo_vector(9_000 + round, 32)), 5);
        let (written, found) = futures::join!(
            store.add_memories("ann", vec![fact(100 + round, None)]),
            store.search("ann", &q)
        );
        written.unwrap();
        assert_eq!(found.unwrap().hits.len(), 5, "round {round}");
    }
    store.connection().clone().close().await.ok();
    db.drop_db().await;
}

/// Memories this server added to a held user, then deleted with their session, leave the
/// held index: searches answer as Postgres does (they came back short).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_held_user_forgets_what_this_server_added_then_deleted() {
    let db = PgDb::create().await;
    let mut held = StoreConfig::postgres(db.url.clone());
    held.in_process_search_threshold = 5;
    let store = PgStore::open(&held).await.unwrap();
    let mut exact = StoreConfig::postgres(db.url.clone());
    exact.in_process_search_threshold = u64::MAX;
    let sql = PgStore::open(&exact).await.unwrap();
    let rows = (0..12).map(|i| fact(i, None)).collect();
    store.add_memories("ann", rows).await.unwrap();
    // Asked for what the session's memories are nearest: they would take the top places.
    let q = VectorQuery::new(emb(&pseudo_vector(100, 32)), 5);
    let ids = |p: recall_core::types::SearchPage| -> Vec<i64> {
        p.hits.iter().map(|h| h.memory.id).collect()
    };
    assert_eq!(store.search("ann", &q).await.unwrap().hits.len(), 5);
    let trip = (100..104).map(|i| fact(i, Some("trip"))).collect();
    store.add_memories("ann", trip).await.unwrap();
    assert_eq!(store.search("ann", &q).await.unwrap().hits.len(), 5);
    store.delete_session("ann", "trip").await.unwrap();
    let found = ids(store.search("ann", &q).await.unwrap());
    assert_eq!(found.len(), 5);
    assert_eq!(found, ids(sql.search("ann", &q).await.unwrap()));
    for s in [store, sql] {
        s.connection().clone().close().await.ok();
    }
    db.drop_db().await;
}

/// A user first read for a vector search while another replica writes holds every memory's
/// vector: text and vectors are read side by side, and a memory whose write landed between the
/// two reads was held as text without its vector, missing from every vector search after.
/// The write is started a little later each round, to sweep the window between the reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_first_load_while_a_replica_writes_holds_every_vector() {
    let db = PgDb::create().await;
    let mut config = StoreConfig::postgres(db.url.clone());
    config.in_process_search_threshold = 5;
    let writer = PgStore::open(&config).await.unwrap();
    let rows = (0..400).map(|i| fact(i, None)).collect();
    writer.add_memories("ann", rows).await.unwrap();
    for round in 0..30u64 {
        // Another replica, holding nobody yet.
        let reader = PgStore::open(&config).await.unwrap();
        let id = 1_000 + round;
        let q = VectorQuery::new(emb(&pseudo_vector(9_000 + round, 32)), 5);
        let write = async {
            tokio::time::sleep(std::time::Duration::from_micros(round * 300)).await;
            writer.add_memories("ann", vec![fact(id, None)]).await
        };
        let (written, found) = futures::join!(write, reader.search("ann", &q));
        written.unwrap();
        found.unwrap();
        // The new memory is its own nearest neighbour.
        let own = VectorQuery::new(emb(&pseudo_vector(id, 32)), 1);
        let hits = reader.search("ann", &own).await.unwrap().hits;
        assert_eq!(
            hits.first().map(|h| h.memory.content.as_str()),
            Some(format!("f{id}").as_str()),
            "round {round}"
        );
        reader.connection().clone().close().await.ok();
    }
    writer.connection().clone().close().await.ok();
    db.drop_db().await;
}
