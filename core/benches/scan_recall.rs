//! Recall and latency of the embedded store's in-process vector scan (int8 codes first, the
//! best candidates re-scored in F32) against a brute-force F32 ranking, on real sentence
//! embeddings: the store benchmark's uniform random vectors have no neighbourhoods, the worst
//! case for any coarse first pass (and no test of one that relies on them). Texts are chat turns of a LoCoMo file recombined (the first
//! half of one turn's words, the second half of another's), embedded by all-MiniLM-L6-v2
//! (int8, for speed); the queries are the file's questions, embedded the same way. The vector
//! cache is the one `hnsw_recall` writes (the same texts for the same `--size`).
//!
//! ```sh
//! cargo bench -p recall-core --features testing --bench scan_recall -- [--size 100000]
//!     [--data ../shared/data/locomo-dev/locomo-dev.json] [--top-k 10,50,75] [--queries 200]
//!     [--cache /tmp/vectors.bin] [--copies 2]
//! ```
//! `--copies N` stores every vector N times (the copies nudged apart a little), for sizes
//! beyond what is embedded; the brute-force reference sees the same rows.
//! The data is read where it lies (its licence allows use in benchmarks, not copies).
use std::time::Instant;

use recall_core::embed::{EmbedConfig, EmbeddingService};
use recall_core::store::{EmbeddedStore, StoreConfig};
use recall_core::testing::bench::{Rng, arg_or as arg, cached_vectors, list, recombined_turns};
use recall_core::testing::minilm_dir;
use recall_core::types::{Embedding, MemoryKind, NewMemory, VectorQuery};
use recall_core::{Embedder, MemoryStore};

const MODEL: &str = "all-MiniLM-L6-v2";
const DIMS: usize = 384;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

fn main() {
    let size: usize = arg("--size", "100000").parse().unwrap();
    let copies: usize = arg("--copies", "1").parse().unwrap();
    let data = arg("--data", "../../shared/data/locomo-dev/locomo-dev.json");
    let queries: usize = arg("--queries", "200").parse().unwrap();
    let top_ks: Vec<usize> = list("--top-k", "10,50,75")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    // The same texts as `hnsw_recall`, so that a vector cache serves both.
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
        let cache = arg("--cache", "");
        let cache = (!cache.is_empty()).then_some(cache.as_str());
        let embedded = cached_vectors(&embedder, &texts, DIMS, cache).await;
        let query_vectors = embedder.embed(questions.clone()).await.unwrap();
        // Copies beyond the first are nudged (a little noise, renormalised) so that no two rows
        // tie exactly.
        let mut noise = Rng(11);
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(size * copies);
        for c in 0..copies {
            for v in &embedded {
                if c == 0 {
                    vectors.push(v.clone());
                } else {
                    let n = noise.unit_vector(DIMS);
                    let mut w: Vec<f32> = v.iter().zip(&n).map(|(x, e)| x + 0.05 * e).collect();
                    let norm = w.iter().map(|x| x * x).sum::<f32>().sqrt();
                    w.iter_mut().for_each(|x| *x /= norm);
                    vectors.push(w);
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&StoreConfig::embedded(dir.path()))
            .await
            .unwrap();
        let mut ids = Vec::with_capacity(vectors.len());
        for (i, chunk) in vectors.chunks(1000).enumerate() {
            let rows = chunk
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    NewMemory::new(
                        MemoryKind::Fact,
                        texts[(i * 1000 + j) % size].clone(),
                        Embedding {
                            model: MODEL.into(),
                            vector: v.clone(),
                        },
                    )
                })
                .collect();
            ids.extend(
                store
                    .add_memories("user0", rows)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|m| m.id),
            );
        }
        let n = vectors.len();
        println!(
            "In-process scan, {n} memories of one user ({size} embedded texts × {copies}), {} \
             queries",
            query_vectors.len()
        );
        println!();
        println!("| memories | top k | recall@k vs exact | p50 (ms) | p95 (ms) |");
        println!("|---:|---:|---:|---:|---:|");
        for &k in &top_ks {
            let (mut hit, mut times) = (0usize, vec![]);
            for (qi, v) in query_vectors.iter().enumerate() {
                let q = VectorQuery::new(
                    Embedding {
                        model: MODEL.into(),
                        vector: v.clone(),
                    },
                    k,
                );
                let t = Instant::now();
                let got = store.search("user0", &q).await.unwrap();
                // The first query reads the user into memory: not timed.
                if qi > 0 {
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                let mut exact: Vec<(f32, i64)> = vectors
                    .iter()
                    .zip(&ids)
                    .map(|(w, id)| (-cosine(v, w), *id))
                    .collect();
                exact.select_nth_unstable_by(k, |a, b| a.0.total_cmp(&b.0));
                let want: Vec<i64> = exact[..k].iter().map(|e| e.1).collect();
                hit += got
                    .hits
                    .iter()
                    .filter(|h| want.contains(&h.memory.id))
                    .count();
            }
            times.sort_by(f64::total_cmp);
            println!(
                "| {n} | {k} | {:.4} | {:.2} | {:.2} |",
                hit as f64 / (k * query_vectors.len()) as f64,
                percentile(&times, 0.5),
                percentile(&times, 0.95)
            );
        }
    });
}
