//! Search latency of both stores: top-10 over N memories held by one user, or spread over many
//! users, with synthetic 384-dimensional unit vectors (latency does not depend on what the
//! vectors mean). Also reports bulk-insert speed and, for users Postgres searches in process,
//! the same queries through Postgres's own statement (HNSW above the exact-search threshold)
//! and both recalls against exact search.
//!
//! ```sh
//! cargo bench -p recall-core --bench store -- [--sizes 10000,100000] [--users 1,1000]
//!     [--queries 200] [--backends embedded,postgres] [--bulk] [--first 1]
//! ```
//! `--first N` times a user's first search N times (each on a store opened afresh; the median
//! is reported).
//! `--bulk` fills each store as a bulk load (`MemoryStore::begin_bulk_load`: Postgres builds
//! its HNSW index once after the rows); the insert rate then includes the index build.
//! Postgres comes from `DATABASE_URL` or `scripts/pg.sh` (see `recall_core::testing`).
use std::time::Instant;

use recall_core::MemoryStore;
use recall_core::store::{EmbeddedStore, PgStore, StoreConfig};
use recall_core::testing::PgDb;
use recall_core::testing::bench::{Rng, arg_or as arg, list};
use recall_core::types::{Embedding, MemoryKind, NewMemory, VectorQuery};

const DIMS: usize = 384;
const MODEL: &str = "bench-model";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Users with at least this many memories keep their vectors in the benchmark, for an exact
/// reference (the embedded store searches them through int8 codes first).
const KEEP_VECTORS_MIN: usize = 8_192;

/// Each user's (id, vector) pairs, for users with [`KEEP_VECTORS_MIN`] memories or more.
type Kept = Vec<Vec<(i64, Vec<f32>)>>;

async fn fill(store: &dyn MemoryStore, total: usize, users: usize, rng: &mut Rng) -> (f64, Kept) {
    let per_user = total / users;
    let keep = per_user >= KEEP_VECTORS_MIN;
    let mut kept: Kept = vec![Vec::new(); if keep { users } else { 0 }];
    let bulk = std::env::args().any(|a| a == "--bulk");
    let started = Instant::now();
    if bulk {
        store.begin_bulk_load().await.unwrap();
    }
    for u in 0..users {
        let mut left = per_user;
        while left > 0 {
            let n = left.min(1000);
            let rows: Vec<NewMemory> = (0..n)
                .map(|i| {
                    NewMemory::new(
                        MemoryKind::Fact,
                        format!("memory {i} of user {u}"),
                        Embedding {
                            model: MODEL.into(),
                            vector: rng.unit_vector(DIMS),
                        },
                    )
                })
                .collect();
            let vectors: Vec<Vec<f32>> = if keep {
                rows.iter().map(|r| r.embedding.vector.clone()).collect()
            } else {
                vec![]
            };
            let stored = store.add_memories(&format!("user{u}"), rows).await.unwrap();
            if let Some(k) = kept.get_mut(u) {
                k.extend(stored.iter().map(|m| m.id).zip(vectors));
            }
            left -= n;
        }
    }
    if bulk {
        let loaded = started.elapsed().as_secs_f64();
        let built = store.end_bulk_load().await.unwrap();
        eprintln!(
            "{}: {total} rows in {loaded:.1} s ({:.0} rows/s), then {built:?} built in {:.1} s",
            store.backend(),
            total as f64 / loaded,
            started.elapsed().as_secs_f64() - loaded
        );
    }
    (started.elapsed().as_secs_f64(), kept)
}

/// The exact top 10 by cosine of `query` among a user's kept vectors.
fn exact_top10(kept: &[(i64, Vec<f32>)], query: &[f32]) -> Vec<i64> {
    let mut scored: Vec<(f32, i64)> = kept
        .iter()
        .map(|(id, v)| (v.iter().zip(query).map(|(a, b)| a * b).sum::<f32>(), *id))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.iter().take(10).map(|s| s.1).collect()
}

async fn measure(
    store: &dyn MemoryStore,
    users: usize,
    queries: usize,
    rng: &mut Rng,
) -> (Vec<f64>, Vec<Vec<i64>>, Vec<(usize, Vec<f32>)>) {
    let mut times = Vec::with_capacity(queries);
    let mut results = Vec::with_capacity(queries);
    let mut asked = Vec::with_capacity(queries);
    // Warm-up: one query per user (loads caches, as a running server would have them).
    for u in 0..users {
        let q = VectorQuery::new(
            Embedding {
                model: MODEL.into(),
                vector: rng.unit_vector(DIMS),
            },
            10,
        );
        store.search(&format!("user{u}"), &q).await.unwrap();
    }
    let mut query_rng = Rng(0x5eed);
    for i in 0..queries {
        let u = (i * 7919) % users;
        let user = format!("user{u}");
        let q = VectorQuery::new(
            Embedding {
                model: MODEL.into(),
                vector: query_rng.unit_vector(DIMS),
            },
            10,
        );
        let t = Instant::now();
        let page = store.search(&user, &q).await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(page.hits.len(), 10);
        results.push(page.hits.iter().map(|h| h.memory.id).collect());
        asked.push((u, q.embedding.vector));
    }
    times.sort_by(f64::total_cmp);
    (times, results, asked)
}

fn main() {
    let sizes: Vec<usize> = list("--sizes", "10000,100000")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let user_counts: Vec<usize> = list("--users", "1,1000")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let queries: usize = arg("--queries", "200").parse().unwrap();
    let first_runs: usize = arg("--first", "1").parse::<usize>().unwrap().max(1);
    let backends = list("--backends", "embedded,postgres");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| store | memories | users | insert (rows/s) | search p50 (ms) | p95 (ms) | mean (ms) | notes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    rt.block_on(async {
        for backend in &backends {
            for &size in &sizes {
                for &users in &user_counts {
                    let mut rng = Rng(42 + size as u64 + users as u64);
                    let notes: String;
                    let (insert_s, times) = match backend.as_str() {
                        "embedded" => {
                            let dir = tempfile::tempdir().unwrap();
                            let store = EmbeddedStore::open(&StoreConfig::embedded(dir.path()))
                                .await
                                .unwrap();
                            let (insert_s, kept) = fill(&store, size, users, &mut rng).await;
                            let (times, got, asked) =
                                measure(&store, users, queries, &mut rng).await;
                            notes = if kept.is_empty() {
                                "exact, in-process".into()
                            } else {
                                let hit: usize = got
                                    .iter()
                                    .zip(&asked)
                                    .map(|(g, (u, q))| {
                                        let want = exact_top10(&kept[*u], q);
                                        g.iter().filter(|id| want.contains(id)).count()
                                    })
                                    .sum();
                                format!(
                                    "in-process, int8 first pass + F32 re-scoring; recall@10 vs exact {:.3}",
                                    hit as f64 / (10 * queries) as f64
                                )
                            };
                            (insert_s, times)
                        }
                        "postgres" => {
                            let db = PgDb::create().await;
                            let store = PgStore::open(
                                &StoreConfig::postgres(db.url.clone()).with_index_dims(DIMS),
                            )
                            .await
                            .unwrap();
                            let (insert_s, _) = fill(&store, size, users, &mut rng).await;
                            sea_orm::ConnectionTrait::execute_unprepared(
                                store.connection(),
                                "ANALYZE",
                            )
                            .await
                            .unwrap();
                            // The first search of a user: for one Postgres holds in process, it
                            // reads the user's rows into the server. Measured `--first N` times
                            // (median), each but the last on a store opened afresh.
                            let q = VectorQuery::new(
                                Embedding {
                                    model: MODEL.into(),
                                    vector: rng.unit_vector(DIMS),
                                },
                                10,
                            );
                            let mut firsts = Vec::new();
                            for _ in 1..first_runs {
                                let fresh = PgStore::open(&StoreConfig::postgres(db.url.clone()))
                                    .await
                                    .unwrap();
                                let t = Instant::now();
                                fresh.search("user0", &q).await.unwrap();
                                firsts.push(t.elapsed().as_secs_f64() * 1000.0);
                                fresh.connection().clone().close().await.ok();
                            }
                            let t = Instant::now();
                            store.search("user0", &q).await.unwrap();
                            firsts.push(t.elapsed().as_secs_f64() * 1000.0);
                            firsts.sort_by(f64::total_cmp);
                            let first_ms = firsts[firsts.len() / 2];
                            eprintln!("first searches (ms, sorted): {firsts:.0?}");
                            let (times, got, _) = measure(&store, users, queries, &mut rng).await;
                            let per_user = size / users;
                            let defaults = StoreConfig::postgres("");
                            let recall = |want: &[Vec<i64>]| {
                                let hit: usize = got
                                    .iter()
                                    .zip(want)
                                    .map(|(g, w)| g.iter().filter(|id| w.contains(id)).count())
                                    .sum();
                                hit as f64 / (10 * queries) as f64
                            };
                            if per_user as u64 > defaults.in_process_search_threshold {
                                // The same queries answered by Postgres's statement (HNSW above
                                // the exact-search threshold), and exactly.
                                let mut statement = StoreConfig::postgres(db.url.clone());
                                statement.in_process_search_threshold = u64::MAX;
                                let statement = PgStore::open(&statement).await.unwrap();
                                let (st_times, st_got, _) =
                                    measure(&statement, users, queries, &mut rng).await;
                                let hnsw = per_user as u64 > defaults.exact_search_threshold;
                                let mut exact_cfg = StoreConfig::postgres(db.url.clone());
                                exact_cfg.in_process_search_threshold = u64::MAX;
                                exact_cfg.exact_search_threshold = u64::MAX;
                                let want = if hnsw {
                                    let exact = PgStore::open(&exact_cfg).await.unwrap();
                                    measure(&exact, users, queries, &mut rng).await.1
                                } else {
                                    st_got.clone()
                                };
                                let st_hit: usize = st_got
                                    .iter()
                                    .zip(&want)
                                    .map(|(g, w)| g.iter().filter(|id| w.contains(id)).count())
                                    .sum();
                                notes = format!(
                                    "in process (first search, reading the user: {first_ms:.0} ms); \
                                     recall@10 vs exact {:.3}; Postgres's statement \
                                     ({}) p50 {:.1} ms, p95 {:.1} ms, recall@10 {:.3}",
                                    recall(&want),
                                    if hnsw { "HNSW" } else { "exact scan" },
                                    percentile(&st_times, 0.5),
                                    percentile(&st_times, 0.95),
                                    st_hit as f64 / (10 * queries) as f64
                                );
                            } else {
                                notes = "exact scan".into();
                            }
                            store.connection().clone().close().await.ok();
                            db.drop_db().await;
                            (insert_s, times)
                        }
                        other => panic!("unknown backend {other}"),
                    };
                    println!(
                        "| {backend} | {size} | {users} | {:.0} | {:.2} | {:.2} | {:.2} | {notes} |",
                        size as f64 / insert_s,
                        percentile(&times, 0.5),
                        percentile(&times, 0.95),
                        times.iter().sum::<f64>() / times.len() as f64,
                    );
                }
            }
        }
    });
}
