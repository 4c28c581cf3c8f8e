//! Recall of Postgres's HNSW path against its exact scan on real sentence embeddings (the
//! store benchmark's uniform random vectors have no neighbourhoods, the worst case for a graph
//! index). Texts are chat turns of a LoCoMo file recombined (the first half of one turn's
//! words, the second half of another's) so that there are as many as asked, embedded by
//! all-MiniLM-L6-v2 (int8, for speed); the queries are the file's questions, embedded the
//! same way. Every search is left to Postgres's statements (no user held in process).
//!
//! ```sh
//! cargo bench -p recall-core --features testing --bench hnsw_recall -- [--size 100000]
//!     [--data ../shared/data/locomo-dev/locomo-dev.json] [--top-k 10,50] [--queries 200]
//!     [--ef 40,100,200,400] [--cache /tmp/vectors.bin]
//! ```
//! The data is read where it lies (its licence allows use in benchmarks, not copies).
use std::time::Instant;

use recall_core::embed::{EmbedConfig, EmbeddingService};
use recall_core::store::{PgStore, StoreConfig};
use recall_core::testing::bench::{arg_or as arg, cached_vectors, list, recombined_turns};
use recall_core::testing::{PgDb, minilm_dir};
use recall_core::types::{Embedding, MemoryKind, NewMemory, VectorQuery};
use recall_core::{Embedder, MemoryStore};
use sea_orm::prelude::PgVector;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

const MODEL: &str = "all-MiniLM-L6-v2";

fn main() {
    let size: usize = arg("--size", "100000").parse().unwrap();
    let data = arg("--data", "../../shared/data/locomo-dev/locomo-dev.json");
    let queries: usize = arg("--queries", "200").parse().unwrap();
    let top_ks: Vec<usize> = list("--top-k", "10,50")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let (texts, questions) = recombined_turns(&data, size, queries);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config = EmbedConfig::new(minilm_dir());
        config.device = recall_core::device::DeviceConfig::Cpu;
        config.precision = "int8".parse().unwrap();
        let embedder = EmbeddingService::start(&config).unwrap();
        // `--cache FILE` keeps the vectors between runs (embedding 100k texts takes minutes).
        let cache = arg("--cache", "");
        let cache = (!cache.is_empty()).then_some(cache.as_str());
        let vectors = cached_vectors(&embedder, &texts, 384, cache).await;
        let query_vectors = embedder.embed(questions.clone()).await.unwrap();

        let db = PgDb::create().await;
        let mut statements = StoreConfig::postgres(db.url.clone()).with_index_dims(384);
        statements.in_process_search_threshold = u64::MAX;
        let approx = PgStore::open(&statements).await.unwrap();
        let t = Instant::now();
        approx.begin_bulk_load().await.unwrap();
        for (texts, vectors) in texts.chunks(1000).zip(vectors.chunks(1000)) {
            let rows = texts
                .iter()
                .zip(vectors)
                .map(|(t, v)| {
                    NewMemory::new(
                        MemoryKind::Fact,
                        t.clone(),
                        Embedding {
                            model: MODEL.into(),
                            vector: v.clone(),
                        },
                    )
                })
                .collect();
            approx.add_memories("user0", rows).await.unwrap();
        }
        approx.end_bulk_load().await.unwrap();
        println!("loaded and indexed in {:.0} s", t.elapsed().as_secs_f64());
        let mut exact = statements.clone();
        exact.exact_search_threshold = u64::MAX;
        let exact = PgStore::open(&exact).await.unwrap();

        println!(
            "| memories | top k | queries | recall@k vs exact | HNSW p50 (ms) | exact p50 (ms) |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        for &k in &top_ks {
            let (mut hit, mut times, mut exact_times) = (0usize, vec![], vec![]);
            for v in &query_vectors {
                let q = VectorQuery::new(
                    Embedding {
                        model: MODEL.into(),
                        vector: v.clone(),
                    },
                    k,
                );
                let t = Instant::now();
                let got = approx.search("user0", &q).await.unwrap();
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                let t = Instant::now();
                let want = exact.search("user0", &q).await.unwrap();
                exact_times.push(t.elapsed().as_secs_f64() * 1000.0);
                hit += got
                    .hits
                    .iter()
                    .filter(|h| want.hits.iter().any(|w| w.memory.id == h.memory.id))
                    .count();
            }
            times.sort_by(f64::total_cmp);
            exact_times.sort_by(f64::total_cmp);
            println!(
                "| {size} | {k} | {} | {:.3} | {:.1} | {:.1} |",
                query_vectors.len(),
                hit as f64 / (k * query_vectors.len()) as f64,
                times[times.len() / 2],
                exact_times[exact_times.len() / 2]
            );
        }
        // pgvector's `hnsw.ef_search` (the store uses max(40, k)): recall@10 as it grows.
        let efs: Vec<usize> = list("--ef", "40,100,200,400")
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut wants = Vec::new();
        for v in &query_vectors {
            let q = VectorQuery::new(
                Embedding {
                    model: MODEL.into(),
                    vector: v.clone(),
                },
                10,
            );
            let want = exact.search("user0", &q).await.unwrap();
            wants.push(want.hits.iter().map(|h| h.memory.id).collect::<Vec<i64>>());
        }
        println!();
        println!("| memories | ef_search | recall@10 vs exact | p50 (ms) |");
        println!("|---:|---:|---:|---:|");
        let conn = approx.connection();
        for ef in efs {
            let (mut hit, mut times) = (0usize, vec![]);
            for (v, want) in query_vectors.iter().zip(&wants) {
                let t = Instant::now();
                let txn = conn.begin().await.unwrap();
                txn.execute_unprepared(&format!("SET LOCAL hnsw.ef_search = {ef}"))
                    .await
                    .unwrap();
                let rows = txn
                    .query_all_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "SELECT memory_id FROM memory_embeddings WHERE dims = 384 \
                         ORDER BY embedding::vector(384) <=> $1::vector(384) LIMIT 10",
                        [PgVector::from(v.clone()).into()],
                    ))
                    .await
                    .unwrap();
                txn.commit().await.unwrap();
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                hit += rows
                    .iter()
                    .filter(|r| want.contains(&r.try_get_by_index::<i64>(0).unwrap()))
                    .count();
            }
            times.sort_by(f64::total_cmp);
            println!(
                "| {size} | {ef} | {:.3} | {:.1} |",
                hit as f64 / (10 * wants.len()) as f64,
                times[times.len() / 2]
            );
        }
        for s in [approx, exact] {
            s.connection().clone().close().await.ok();
        }
        db.drop_db().await;
    });
}
