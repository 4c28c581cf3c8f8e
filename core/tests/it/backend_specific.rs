//! Behaviour particular to one backend: Postgres's two search paths, the embedded store's
//! cache coherence and durability.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use chrono::{TimeZone, Utc};
use recall_core::MemoryStore;
use recall_core::store::{EmbeddedStore, PgStore, StoreConfig};
use recall_core::types::{
    Filter, MemoryKind, MessageWrite, NewMemory, NewMessage, Role, VectorQuery,
};

use crate::fixtures::{PgDb, TestStore, emb};

/// A deterministic pseudo-random vector.
pub(crate) fn pseudo_vector(seed: u64, dims: usize) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..dims)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x % 2000) as f32 / 1000.0) - 1.0
        })
        .collect()
}

/// Postgres with every search left to its statements (no user held in process).
pub(crate) fn statements(url: &str) -> StoreConfig {
    let mut config = StoreConfig::postgres(url);
    config.in_process_search_threshold = u64::MAX;
    config
}

pub(crate) fn fact(i: u64, session: Option<&str>) -> NewMemory {
    NewMemory {
        session: session.map(str::to_owned),
        ..NewMemory::new(
            MemoryKind::Fact,
            format!("f{i}"),
            emb(&pseudo_vector(i, 32)),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hnsw_path_agrees_with_exact_path() {
    let db = PgDb::create().await;
    let exact = PgStore::open(&statements(&db.url)).await.unwrap();
    let mut config = statements(&db.url);
    config.exact_search_threshold = 0;
    let approx = PgStore::open(&config).await.unwrap();

    // One big user among many small ones.
    let big: Vec<NewMemory> = (0..3000)
        .map(|i| fact(i, Some(if i % 10 == 0 { "rare" } else { "common" })))
        .collect();
    exact.add_memories("big", big).await.unwrap();
    for u in 0..50 {
        let rows = (0..20).map(|i| fact(100_000 + u * 100 + i, None)).collect();
        exact
            .add_memories(&format!("small{u}"), rows)
            .await
            .unwrap();
    }

    // Random vectors of 256 dimensions: no neighbourhoods, a graph index's worst case.
    let wide: Vec<NewMemory> = (0..3000)
        .map(|i| {
            NewMemory::new(
                MemoryKind::Fact,
                format!("w{i}"),
                emb(&pseudo_vector(i, 256)),
            )
        })
        .collect();
    exact.add_memories("wide", wide).await.unwrap();
    // Statistics as a settled table has them: the planner then takes the HNSW index (with
    // none, or stale ones, it may scan and sort, and every search here would be exact).
    sea_orm::ConnectionTrait::execute_unprepared(exact.connection(), "ANALYZE")
        .await
        .unwrap();

    let recall = recall_at_10(&exact, &approx, "big", 32).await;
    assert!(
        recall >= 0.98,
        "HNSW recall@10 against exact search is {recall} (ef_search 400)"
    );
    // The setting reaches pgvector: on the random vectors the shortest candidate list
    // (raised to the page size, 10) finds far fewer of the true neighbours than the default.
    let mut narrow = config.clone();
    narrow.hnsw_ef_search = 1;
    let narrow = PgStore::open(&narrow).await.unwrap();
    let (low, high) = (
        recall_at_10(&exact, &narrow, "wide", 256).await,
        recall_at_10(&exact, &approx, "wide", 256).await,
    );
    assert!(
        low + 0.1 < high,
        "recall@10 with ef_search 1 is {low}, with 400 {high}: the setting is not applied"
    );
    narrow.connection().clone().close().await.ok();
    // A selective filter on the HNSW path still fills the page with matching rows.
    let mut q = VectorQuery::new(emb(&pseudo_vector(1, 32)), 20);
    q.filter = Filter {
        session: Some("rare".into()),
        ..Filter::default()
    };
    let hits = approx.search("big", &q).await.unwrap().hits;
    assert_eq!(hits.len(), 20, "iterative scan fills the page");
    assert!(
        hits.iter()
            .all(|h| h.memory.session.as_deref() == Some("rare"))
    );

    // Small users get exact answers and only their own rows on both paths.
    let q = VectorQuery::new(emb(&pseudo_vector(7, 32)), 30);
    let a = exact.search("small3", &q).await.unwrap().hits;
    let b = approx.search("small3", &q).await.unwrap().hits;
    assert_eq!(a.len(), 20);
    assert!(b.len() >= 18, "HNSW path on a small user found {}", b.len());
    assert!(
        b.iter()
            .all(|h| a.iter().any(|x| x.memory.id == h.memory.id))
    );

    // "Always exact" is a valid configuration (it once overflowed into a negative LIMIT).
    let mut always = statements(&db.url);
    always.exact_search_threshold = u64::MAX;
    let always = PgStore::open(&always).await.unwrap();
    let c = always
        .search("big", &VectorQuery::new(emb(&pseudo_vector(2, 32)), 10))
        .await
        .unwrap();
    assert_eq!(c.hits.len(), 10);
    always.connection().clone().close().await.ok();

    exact.connection().clone().close().await.ok();
    approx.connection().clone().close().await.ok();
    db.drop_db().await;
}

/// Recall@10 of `approx` against `exact` on a user's vectors of `dims`, 20 queries.
async fn recall_at_10(exact: &PgStore, approx: &PgStore, user: &str, dims: usize) -> f64 {
    let ids = |p: recall_core::types::SearchPage| -> Vec<i64> {
        p.hits.iter().map(|h| h.memory.id).collect()
    };
    let mut overlap = 0;
    for qi in 0..20u64 {
        let q = VectorQuery::new(emb(&pseudo_vector(900_000 + qi, dims)), 10);
        let a = ids(exact.search(user, &q).await.unwrap());
        let b = ids(approx.search(user, &q).await.unwrap());
        assert_eq!(a.len(), 10);
        assert_eq!(b.len(), 10);
        overlap += b.iter().filter(|id| a.contains(id)).count();
    }
    overlap as f64 / 200.0
}

/// The HNSW indexes on `memory_embeddings`, with whether each is valid.
async fn hnsw_indexes(store: &PgStore) -> Vec<(String, bool)> {
    use sea_orm::ConnectionTrait;
    store
        .connection()
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT c.relname::text, i.indisvalid FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam \
             WHERE i.indrelid = 'memory_embeddings'::regclass AND a.amname = 'hnsw' \
             ORDER BY 1",
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.try_get_by_index(0).unwrap(),
                r.try_get_by_index(1).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bulk_load_builds_the_index_after_the_rows() {
    let db = PgDb::create().await;
    let mut config = statements(&db.url);
    config.exact_search_threshold = 0;
    let store = PgStore::open(&config).await.unwrap();
    let cosine_384 = "ix_memory_embeddings_hnsw_cosine_384".to_owned();
    assert_eq!(hnsw_indexes(&store).await, vec![(cosine_384.clone(), true)]);

    store.begin_bulk_load().await.unwrap();
    let again = store.begin_bulk_load().await.unwrap_err();
    assert_eq!(
        again.kind(),
        recall_core::ErrorKind::InvalidInput,
        "{again}"
    );
    assert!(
        hnsw_indexes(&store).await.is_empty(),
        "dropped for the load"
    );
    let big: Vec<NewMemory> = (0..2000).map(|i| fact(i, None)).collect();
    store.add_memories("big", big).await.unwrap();
    for u in 0..5 {
        let rows = (0..20).map(|i| fact(100_000 + u * 100 + i, None)).collect();
        store
            .add_memories(&format!("small{u}"), rows)
            .await
            .unwrap();
    }
    assert!(
        hnsw_indexes(&store).await.is_empty(),
        "writes during the load do not build it"
    );
    // Searches stay right meanwhile: with no index, the approximate path is an exact scan.
    let mut exact_config = statements(&db.url);
    exact_config.exact_search_threshold = u64::MAX;
    exact_config.index_dims = None;
    let exact = PgStore::open(&exact_config).await.unwrap();
    let ids = |p: recall_core::types::SearchPage| -> Vec<i64> {
        p.hits.iter().map(|h| h.memory.id).collect()
    };
    let queries: Vec<VectorQuery> = (0..10u64)
        .map(|qi| VectorQuery::new(emb(&pseudo_vector(900_000 + qi, 32)), 10))
        .collect();
    let mut truth = Vec::new();
    for q in &queries {
        let want = ids(exact.search("big", q).await.unwrap());
        assert_eq!(ids(store.search("big", q).await.unwrap()), want);
        truth.push(want);
    }
    assert!(hnsw_indexes(&store).await.is_empty());

    let built = store.end_bulk_load().await.unwrap();
    let cosine_32 = "ix_memory_embeddings_hnsw_cosine_32".to_owned();
    assert_eq!(built, vec![cosine_384.clone(), cosine_32.clone()]);
    assert_eq!(
        hnsw_indexes(&store).await,
        vec![(cosine_32, true), (cosine_384, true)]
    );
    assert!(
        store.end_bulk_load().await.unwrap().is_empty(),
        "none under way"
    );
    // The index answers as the exact scan does.
    let mut overlap = 0;
    for (q, want) in queries.iter().zip(&truth) {
        let got = ids(store.search("big", q).await.unwrap());
        assert_eq!(got.len(), 10);
        overlap += got.iter().filter(|id| want.contains(id)).count();
    }
    assert!(
        overlap >= 90,
        "HNSW recall@10 after the build: {overlap}/100"
    );
    // Small users still see only their own rows.
    let q = VectorQuery::new(emb(&pseudo_vector(7, 32)), 30);
    let hits = store.search("small2", &q).await.unwrap().hits;
    assert!(hits.len() >= 18);
    let theirs: Vec<i64> = exact
        .list_memories("small2", &Filter::default(), &Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(theirs.len(), 20);
    assert!(hits.iter().all(|h| theirs.contains(&h.memory.id)));

    exact.connection().clone().close().await.ok();
    store.connection().clone().close().await.ok();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_open_creates_index_for_configured_metric_and_dims() {
    let db = PgDb::create().await;
    let store = PgStore::open(
        &StoreConfig::postgres(db.url.clone())
            .with_metric(recall_core::types::Metric::L2)
            .with_index_dims(768),
    )
    .await
    .unwrap();
    use sea_orm::ConnectionTrait;
    let n: i64 = store
        .connection()
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_memory_embeddings_hnsw_l2_768' \
             AND indexdef LIKE '%vector_l2_ops%'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap();
    assert_eq!(n, 1);
    store.connection().clone().close().await.ok();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(&StoreConfig::embedded(dir.path()))
            .await
            .unwrap();
        s.add_memories("u", vec![fact(1, Some("s")), fact(2, None)])
            .await
            .unwrap();
        s.connection().clone().close().await.unwrap();
    }
    let s = EmbeddedStore::open(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let hits = s
        .search("u", &VectorQuery::new(emb(&pseudo_vector(1, 32)), 5))
        .await
        .unwrap()
        .hits;
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].memory.content, "f1");
    assert!((hits[0].score - 1.0).abs() < 1e-5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_handles_see_each_others_writes() {
    // Two handles on one directory behave like two processes sharing the data.
    let dir = tempfile::tempdir().unwrap();
    let a = EmbeddedStore::open(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let b = EmbeddedStore::open(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    let q = VectorQuery::new(emb(&pseudo_vector(5, 32)), 10);
    a.add_memories("u", vec![fact(1, None)]).await.unwrap();
    assert_eq!(b.search("u", &q).await.unwrap().hits.len(), 1);
    assert_eq!(a.search("u", &q).await.unwrap().hits.len(), 1);
    a.add_memories("u", vec![fact(5, None)]).await.unwrap();
    let hits = b.search("u", &q).await.unwrap().hits;
    assert_eq!(hits.len(), 2, "b's cache saw a's write");
    assert_eq!(hits[0].memory.content, "f5");
    b.delete_memories("u", &[hits[0].memory.id]).await.unwrap();
    let hits = a.search("u", &q).await.unwrap().hits;
    assert_eq!(hits.len(), 1, "a's cache saw b's delete");
    assert_eq!(hits[0].memory.content, "f1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_cache_eviction_keeps_answers_right() {
    let t = TestStore::embedded_with(|mut c| {
        c.max_cached_vectors = 5;
        c
    })
    .await;
    let s = t.store();
    for u in 0..4u64 {
        s.add_memories(
            &format!("u{u}"),
            (0..3).map(|i| fact(u * 10 + i, None)).collect(),
        )
        .await
        .unwrap();
    }
    for round in 0..2 {
        for u in 0..4u64 {
            let q = VectorQuery::new(emb(&pseudo_vector(u * 10 + 1, 32)), 10);
            let hits = s.search(&format!("u{u}"), &q).await.unwrap().hits;
            assert_eq!(hits.len(), 3, "round {round} user {u}");
            assert_eq!(hits[0].memory.content, format!("f{}", u * 10 + 1));
        }
    }
    t.close().await;
}

/// Run as a child process by `embedded_survives_kill`: writes batches to the store in
/// `DR_CRASH_DIR`, printing `acked N` after each commit, then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for embedded_survives_kill"]
async fn crash_writer() {
    let Some(dir) = std::env::var_os("DR_CRASH_DIR") else {
        return;
    };
    let s = EmbeddedStore::open(&StoreConfig::embedded(dir))
        .await
        .unwrap();
    for batch in 0..1000u64 {
        let writes = (0..20)
            .map(|i| {
                let n = batch * 20 + i;
                MessageWrite {
                    memories: vec![NewMemory::new(
                        MemoryKind::Message,
                        format!("m{n}"),
                        emb(&pseudo_vector(n, 8)),
                    )],
                    message: NewMessage {
                        created_at: Some(Utc.timestamp_opt(1_700_000_000 + n as i64, 0).unwrap()),
                        ..NewMessage::new("s", Role::User, format!("m{n}"))
                    },
                    answers: None,
                }
            })
            .collect();
        s.append_messages("u", writes).await.unwrap();
        println!("acked {}", (batch + 1) * 20);
    }
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
}

#[test]
fn embedded_survives_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "backend_specific::crash_writer",
            "--nocapture",
        ])
        .env("DR_CRASH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = 0u64;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acked < 200 {
        let line = lines.next().expect("child output").unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse().unwrap();
        }
    }
    // SIGKILL: no destructors, no clean shutdown, possibly mid-transaction.
    child.kill().unwrap();
    child.wait().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = EmbeddedStore::open(&StoreConfig::embedded(dir.path()))
            .await
            .unwrap();
        let stored = s.count_memories("u").await.unwrap();
        assert!(stored >= acked, "{stored} stored < {acked} acknowledged");
        assert_eq!(stored % 20, 0, "a batch is all or nothing");
        let page = s
            .list_messages(
                "u",
                "s",
                &recall_core::types::PageRequest {
                    first: 1000,
                    after: None,
                },
            )
            .await
            .unwrap();
        for n in 0..acked {
            assert_eq!(page.items[n as usize].content, format!("m{n}"));
        }
        let hits = s
            .search("u", &VectorQuery::new(emb(&pseudo_vector(17, 8)), 1))
            .await
            .unwrap()
            .hits;
        assert_eq!(hits[0].memory.content, "m17");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_large_user_search_is_exact() {
    // Enough vectors for the parallel scan and for the int8 first pass (re-scored in F32):
    // every answer must equal a brute-force ranking, under each metric, with a filter, a
    // score threshold and a second page.
    use recall_core::types::Metric;
    let n = 20_000u64;
    let dims = 48;
    for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
        let t = TestStore::embedded(metric).await;
        let rows: Vec<NewMemory> = (0..n)
            .map(|i| NewMemory {
                session: Some(if i % 3 == 0 { "third" } else { "rest" }.to_owned()),
                ..NewMemory::new(
                    MemoryKind::Fact,
                    format!("f{i}"),
                    emb(&pseudo_vector(i, dims)),
                )
            })
            .collect();
        let stored = t.store().add_memories("big", rows).await.unwrap();
        for qi in 0..12u64 {
            let q = pseudo_vector(424_242 + qi, dims);
            let score = |v: &[f32]| -> f32 {
                let dot: f32 = v.iter().zip(&q).map(|(a, b)| a * b).sum();
                let norm = |x: &[f32]| x.iter().map(|a| a * a).sum::<f32>().sqrt();
                match metric {
                    Metric::Cosine => dot / (norm(v) * norm(&q)),
                    Metric::Dot => dot,
                    Metric::L2 => {
                        let d: f32 = v.iter().zip(&q).map(|(a, b)| (a - b) * (a - b)).sum();
                        1.0 / (1.0 + d.sqrt())
                    }
                }
            };
            let session = (qi % 2 == 1).then_some("third");
            let mut want: Vec<(f32, i64)> = stored
                .iter()
                .zip(0..n)
                .filter(|(_, i)| session.is_none() || i % 3 == 0)
                .map(|(m, i)| (score(&pseudo_vector(i, dims)), m.id))
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut query = VectorQuery::new(emb(&q), 25);
            query.filter = Filter {
                session: session.map(str::to_owned),
                ..Filter::default()
            };
            let page = t.store().search("big", &query).await.unwrap();
            let got: Vec<i64> = page.hits.iter().map(|h| h.memory.id).collect();
            let ids =
                |r: std::ops::Range<usize>| -> Vec<i64> { want[r].iter().map(|w| w.1).collect() };
            assert_eq!(
                got,
                ids(0..25),
                "{metric:?}, query {qi}, session {session:?}"
            );
            // The next page (the cursor takes the exact path) continues the ranking.
            query.cursor = page.next_cursor.clone();
            let next = t.store().search("big", &query).await.unwrap();
            let got: Vec<i64> = next.hits.iter().map(|h| h.memory.id).collect();
            assert_eq!(got, ids(25..50), "{metric:?}, query {qi}: second page");
            // A threshold between the 10th and the 11th score keeps exactly the first 10.
            query.cursor = None;
            query.min_score = Some((want[9].0 + want[10].0) / 2.0);
            if want[9].0 > want[10].0 {
                let kept = t.store().search("big", &query).await.unwrap();
                let got: Vec<i64> = kept.hits.iter().map(|h| h.memory.id).collect();
                assert_eq!(got, ids(0..10), "{metric:?}, query {qi}: min_score");
            }
        }
        t.close().await;
    }
}
