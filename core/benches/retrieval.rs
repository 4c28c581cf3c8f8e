//! Retrieval latency through `Engine::retrieve` on N memories of one user: plain vector, plain
//! text (BM25) and hybrid with re-ranking (fusion, recency, importance, emotion, MMR), on both
//! stores, query cache off.
//!
//! Texts are synthetic sentences over a Zipf-distributed vocabulary whose most frequent ranks
//! are English function words, as in real text (so that BM25 sees realistic posting-list
//! lengths); stored vectors come from a hashing embedder, since latency does not depend on
//! what vectors mean. Queries are embedded by the real model (all-MiniLM-L6-v2 on the CPU,
//! `--query-embedder f32` or `int8`), so the figures include what every search pays for it;
//! `--query-embedder hash` leaves it out.
//!
//! ```sh
//! cargo bench -p recall-core --features testing --bench retrieval -- [--size 100000]
//!     [--queries 200] [--backends embedded,postgres,postgres-statement]
//!     [--query-embedder f32|int8|hash]
//!     [--bulk] [--runs vector,text,hybrid,reranked,cross,keys] [--second-keys 0.25]
//! ```
//!
//! `keys` measures hybrid + re-ranking again after a key was added for every memory, then
//! after a second key was added for a share of them (`--second-keys`; a LoCoMo answer has a
//! second context key, the exchange alone: a quarter of the dev set's turns).
//!
//! `postgres-statement` is Postgres with every search left to its SQL statements (users above
//! `StoreConfig::in_process_search_threshold` are otherwise searched in process).
//!
//! `--bulk` fills the store as a bulk load (`MemoryStore::begin_bulk_load`: Postgres builds
//! its HNSW index once after the rows); the insert rate then includes the index build.
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use recall_core::cache::QueryCacheConfig;
use recall_core::embed::{EmbedConfig, Embedder, EmbeddingService};
use recall_core::memory_keys::KeyOptions;
use recall_core::rerank::CrossEncoder;
use recall_core::retrieval::{RankingConfig, SearchMode};
use recall_core::store::{EmbeddedStore, PgStore, StoreConfig};
use recall_core::testing::{PgDb, minilm_dir};
use recall_core::types::{Embedding, MemoryKind, NewMemory, NewMessage, Role};
use recall_core::{Engine, MemoryStore, RetrieveOptions};

const DIMS: usize = 384;
const MODEL: &str = "hash-embedder";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() % 1_000_000) as f64 / 1_000_000.0
    }
}

/// A deterministic unit vector per text.
fn hash_vector(text: &str) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut rng = Rng(h | 1);
    let v: Vec<f32> = (0..DIMS).map(|_| rng.unit() as f32 - 0.5).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

struct HashEmbedder;

/// Embeds queries with a real model, under the hashing embedder's model id (the stored
/// vectors' model), so that a search pays for a real query embedding.
struct QueryEmbedder(EmbeddingService);

#[async_trait]
impl Embedder for QueryEmbedder {
    fn model_id(&self) -> &str {
        MODEL
    }
    fn dims(&self) -> usize {
        DIMS
    }
    async fn embed(&self, texts: Vec<String>) -> recall_core::Result<Vec<Vec<f32>>> {
        self.0.embed(texts).await
    }
}

#[async_trait]
impl Embedder for HashEmbedder {
    fn model_id(&self) -> &str {
        MODEL
    }
    fn dims(&self) -> usize {
        DIMS
    }
    async fn embed(&self, texts: Vec<String>) -> recall_core::Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| hash_vector(t)).collect())
    }
}

/// English function words: the most frequent ranks of the vocabulary, as in real text (both
/// stores drop them as stop words).
const FUNCTION_WORDS: &[&str] = &[
    "the", "i", "to", "and", "a", "you", "it", "of", "is", "that", "in", "my", "was", "for", "me",
    "on", "but", "so", "with", "we", "have", "just", "at", "be", "this", "are", "not", "do", "he",
    "she", "they", "what", "her", "his", "can", "all", "about", "if", "or", "there", "when", "how",
    "out", "up", "your", "will", "our", "them", "then", "some", "from", "an", "no", "were", "had",
    "did", "been", "more", "very", "too", "him", "because", "by", "as", "would", "now", "who",
    "which", "their", "into", "over", "again", "why", "here", "where",
];

/// A vocabulary drawn with a Zipf(1) distribution: English function words in the most
/// frequent ranks, then pronounceable pseudo-words.
struct Vocabulary {
    words: Vec<String>,
    cumulative: Vec<f64>,
}

impl Vocabulary {
    fn new(n: usize, rng: &mut Rng) -> Self {
        const ON: &[&str] = &["b", "k", "d", "m", "s", "t", "r", "l", "p", "v", "n", "g"];
        const NU: &[&str] = &["a", "e", "i", "o", "u", "ai", "ou"];
        let words = (0..n)
            .map(|i| {
                if let Some(w) = FUNCTION_WORDS.get(i) {
                    return w.to_string();
                }
                let syllables = 1 + (rng.next() % 3) as usize;
                (0..syllables)
                    .map(|_| {
                        format!(
                            "{}{}",
                            ON[(rng.next() % ON.len() as u64) as usize],
                            NU[(rng.next() % NU.len() as u64) as usize]
                        )
                    })
                    .collect()
            })
            .collect();
        let mut acc = 0.0;
        let cumulative = (1..=n)
            .map(|r| {
                acc += 1.0 / r as f64;
                acc
            })
            .collect();
        Self { words, cumulative }
    }

    fn word(&self, rng: &mut Rng) -> &str {
        let x = rng.unit() * self.cumulative.last().unwrap();
        let i = self.cumulative.partition_point(|c| *c < x);
        &self.words[i.min(self.words.len() - 1)]
    }

    fn sentence(&self, rng: &mut Rng) -> String {
        let n = 6 + (rng.next() % 20) as usize;
        (0..n).map(|_| self.word(rng)).collect::<Vec<_>>().join(" ")
    }
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn fill(
    store: &dyn MemoryStore,
    size: usize,
    vocab: &Vocabulary,
    bulk: bool,
) -> (f64, Vec<i64>) {
    let mut rng = Rng(7);
    let started = Instant::now();
    if bulk {
        store.begin_bulk_load().await.unwrap();
    }
    let mut ids = Vec::with_capacity(size);
    let mut left = size;
    while left > 0 {
        let n = left.min(1000);
        let rows = (0..n)
            .map(|_| {
                let text = vocab.sentence(&mut rng);
                let vector = hash_vector(&text);
                NewMemory {
                    importance: Some(rng.unit() as f32),
                    emotion: Some(
                        ["joy", "sadness", "fear", "neutral"][(rng.next() % 4) as usize].into(),
                    ),
                    ..NewMemory::new(
                        MemoryKind::Message,
                        text,
                        Embedding {
                            model: MODEL.into(),
                            vector,
                        },
                    )
                }
            })
            .collect();
        ids.extend(
            store
                .add_memories("user", rows)
                .await
                .unwrap()
                .iter()
                .map(|m| m.id),
        );
        left -= n;
    }
    if bulk {
        let loaded = started.elapsed().as_secs_f64();
        let built = store.end_bulk_load().await.unwrap();
        eprintln!(
            "{}: {size} rows in {loaded:.1} s ({:.0} rows/s), then {built:?} built in {:.1} s",
            store.backend(),
            size as f64 / loaded,
            started.elapsed().as_secs_f64() - loaded
        );
    }
    (size as f64 / started.elapsed().as_secs_f64(), ids)
}

/// Turns keys on for the user and gives every memory of `ids` one key (a sentence of its
/// own, from `seed`), as the key job would; keys per second.
async fn add_keys(store: &dyn MemoryStore, ids: &[i64], vocab: &Vocabulary, seed: u64) -> f64 {
    let mut rng = Rng(seed);
    let started = Instant::now();
    store.set_memory_keys("user", true).await.unwrap();
    for chunk in ids.chunks(1000) {
        let rows = chunk
            .iter()
            .map(|&id| {
                let text = vocab.sentence(&mut rng);
                let vector = hash_vector(&text);
                NewMemory {
                    key_for: Some(id),
                    ..NewMemory::new(
                        MemoryKind::Key,
                        text,
                        Embedding {
                            model: MODEL.into(),
                            vector,
                        },
                    )
                }
            })
            .collect();
        store.add_memories("user", rows).await.unwrap();
    }
    ids.len() as f64 / started.elapsed().as_secs_f64()
}

/// The context-key job on the filled user (keys on, a key per memory): its first run reads
/// every memory and key (as every run did before the job had a context watermark), a run
/// with nothing new reads nothing, and a run after ten new turns of a session reads those.
async fn key_job(engine: &Engine, backend: &str) {
    let options = KeyOptions::default();
    let run = async |what: &str| {
        let started = Instant::now();
        let report = engine
            .write_memory_keys("user", &options, &mut |_, _, _| {})
            .await
            .unwrap();
        eprintln!(
            "{backend}: key job, {what}: {:.1} ms ({} context keys written)",
            started.elapsed().as_secs_f64() * 1000.0,
            report.context_keys
        );
    };
    run("first run (reads everything)").await;
    run("nothing new").await;
    let turns = (0..10)
        .map(|i| NewMessage::new("s", Role::User, format!("a new turn, number {i}")))
        .collect();
    engine.add_messages("user", turns).await.unwrap();
    run("after ten new turns").await;
}

/// Hybrid + re-ranking with the default ranking: p50, p95 and mean (ms) as table cells.
async fn hybrid_cells(engine: &Engine, vocab: &Vocabulary, queries: usize) -> String {
    let t = measure(
        engine,
        vocab,
        queries,
        SearchMode::Hybrid,
        RankingConfig::default(),
    )
    .await;
    format!(
        "{:.2} | {:.2} | {:.2}",
        percentile(&t, 0.5),
        percentile(&t, 0.95),
        t.iter().sum::<f64>() / t.len() as f64
    )
}

async fn measure(
    engine: &Engine,
    vocab: &Vocabulary,
    queries: usize,
    mode: SearchMode,
    ranking: RankingConfig,
) -> Vec<f64> {
    let mut rng = Rng(99);
    let options = RetrieveOptions {
        top_k: 10,
        mode,
        ranking,
        ..RetrieveOptions::default()
    };
    // Warm-up (loads caches, as a running server would have them).
    engine.retrieve("user", "warm up", &options).await.unwrap();
    let mut times = Vec::with_capacity(queries);
    for _ in 0..queries {
        let n = 3 + (rng.next() % 5) as usize;
        let q: Vec<&str> = (0..n).map(|_| vocab.word(&mut rng)).collect();
        let q = q.join(" ");
        let t = Instant::now();
        let hits = engine.retrieve("user", &q, &options).await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(!hits.is_empty() || mode == SearchMode::Text);
    }
    times.sort_by(f64::total_cmp);
    times
}

/// A cross-encoder directory made of all-MiniLM-L6-v2 plus random pooler and head weights.
fn minilm_cross_encoder(dir: &std::path::Path) -> CrossEncoder {
    let src = minilm_dir();
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut rng = Rng(11);
    let mut random =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.unit() as f32 * 0.1 - 0.05).collect() };
    let t = |v: Vec<f32>, shape: &[usize]| {
        candle_core::Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap()
    };
    tensors.insert(
        "pooler.dense.weight".into(),
        t(random(DIMS * DIMS), &[DIMS, DIMS]),
    );
    tensors.insert("pooler.dense.bias".into(), t(random(DIMS), &[DIMS]));
    tensors.insert("classifier.weight".into(), t(random(DIMS), &[1, DIMS]));
    tensors.insert("classifier.bias".into(), t(random(1), &[1]));
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["id2label"] = serde_json::json!({"0": "LABEL_0"});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    CrossEncoder::load(dir, &candle_core::Device::Cpu).unwrap()
}

fn main() {
    let size: usize = arg("--size", "100000").parse().unwrap();
    let queries: usize = arg("--queries", "200").parse().unwrap();
    let query_embedder = arg("--query-embedder", "f32");
    let bulk = std::env::args().any(|a| a == "--bulk");
    let second_keys: f64 = arg("--second-keys", "0.25").parse().unwrap();
    // Which measurements: vector, text, hybrid, reranked, cross (the cross-encoder rows),
    // keys (hybrid + re-ranking again after a key was added for every memory).
    let only: Vec<String> = arg("--runs", "vector,text,hybrid,reranked,cross")
        .split(',')
        .map(str::to_owned)
        .collect();
    let backends: Vec<String> = arg("--backends", "embedded,postgres")
        .split(',')
        .map(str::to_owned)
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let vocab = Vocabulary::new(20_000, &mut Rng(3));
    let embedder: Arc<dyn Embedder> = match query_embedder.as_str() {
        "hash" => Arc::new(HashEmbedder),
        precision => {
            let mut config = EmbedConfig::new(minilm_dir());
            config.device = recall_core::device::DeviceConfig::Cpu;
            config.precision = precision.parse().unwrap();
            Arc::new(QueryEmbedder(EmbeddingService::start(&config).unwrap()))
        }
    };
    println!(
        "Retrieval latency, {size} memories of one user, top-10, query cache off, {queries} \
         queries, query embedding: {query_embedder}"
    );
    println!();
    println!("| store | insert (rows/s) | mode | p50 (ms) | p95 (ms) | mean (ms) |");
    println!("|---|---:|---|---:|---:|---:|");
    rt.block_on(async {
        for backend in &backends {
            let dir = tempfile::tempdir().unwrap();
            let mut pg = None;
            let store: Arc<dyn MemoryStore> = match backend.as_str() {
                "embedded" => Arc::new(
                    EmbeddedStore::open(&StoreConfig::embedded(dir.path()))
                        .await
                        .unwrap(),
                ),
                "postgres" | "postgres-statement" => {
                    let db = PgDb::create().await;
                    let mut config = StoreConfig::postgres(db.url.clone()).with_index_dims(DIMS);
                    if backend == "postgres-statement" {
                        // Every search left to Postgres's statements (no user held in process).
                        config.in_process_search_threshold = u64::MAX;
                    }
                    let s = PgStore::open(&config).await.unwrap();
                    pg = Some(db);
                    Arc::new(s)
                }
                other => panic!("unknown backend {other}"),
            };
            let (rate, ids) = fill(store.as_ref(), size, &vocab, bulk).await;
            let engine = Engine::new(store.clone(), embedder.clone())
                .with_query_cache(QueryCacheConfig {
                    capacity: 0,
                    ..QueryCacheConfig::default()
                });
            let runs = [
                ("vector", "vector", SearchMode::Vector, RankingConfig::plain()),
                ("text", "text", SearchMode::Text, RankingConfig::plain()),
                ("hybrid", "hybrid", SearchMode::Hybrid, RankingConfig::plain()),
                (
                    "reranked",
                    "hybrid + re-ranking",
                    SearchMode::Hybrid,
                    RankingConfig::default(),
                ),
            ];
            for (key, name, mode, ranking) in runs {
                if !only.iter().any(|o| o == key) {
                    continue;
                }
                let t = measure(&engine, &vocab, queries, mode, ranking).await;
                println!(
                    "| {backend} | {rate:.0} | {name} | {:.2} | {:.2} | {:.2} |",
                    percentile(&t, 0.5),
                    percentile(&t, 0.95),
                    t.iter().sum::<f64>() / t.len() as f64
                );
            }
            // The cross-encoder's extra cost, with a MiniLM-L6-shaped cross-encoder: the
            // all-MiniLM-L6-v2 encoder plus a pooler and a one-output head with random
            // weights (no packaged cross-encoder exists; the cost does not depend on the
            // weights).
            if backend == "embedded"
                && only.iter().any(|o| o == "cross")
                && minilm_dir().join("model.safetensors").exists()
            {
                let ce_dir = tempfile::tempdir().unwrap();
                let ce = minilm_cross_encoder(ce_dir.path());
                let with_ce = engine.clone().with_reranker(Arc::new(ce));
                for top_n in [10usize, 20] {
                    let ranking = RankingConfig {
                        cross_encoder_top_n: top_n,
                        ..RankingConfig::default()
                    };
                    let t = measure(
                        &with_ce,
                        &vocab,
                        queries.min(50),
                        SearchMode::Hybrid,
                        ranking,
                    )
                    .await;
                    println!(
                        "| {backend} | {rate:.0} | hybrid + re-ranking + cross-encoder (top {top_n}, MiniLM-L6 shape) | {:.2} | {:.2} | {:.2} |",
                        percentile(&t, 0.5),
                        percentile(&t, 0.95),
                        t.iter().sum::<f64>() / t.len() as f64
                    );
                }
            }
            // The same user with a key for every memory (twice the rows, twice the
            // candidates read; each key hit replaced by its memory).
            if only.iter().any(|o| o == "keys") {
                let key_rate = add_keys(store.as_ref(), &ids, &vocab, 13).await;
                println!(
                    "| {backend} | {key_rate:.0} (keys) | hybrid + re-ranking, a key per memory | {} |",
                    hybrid_cells(&engine, &vocab, queries).await
                );
                let share = ((ids.len() as f64 * second_keys) as usize).min(ids.len());
                if let Some(step) = ids.len().checked_div(share) {
                    // Spread over the user's memories (every k-th), as answers are.
                    let second: Vec<i64> = ids.iter().step_by(step).take(share).copied().collect();
                    add_keys(store.as_ref(), &second, &vocab, 17).await;
                    println!(
                        "| {backend} | | hybrid + re-ranking, and a second key for {:.0}% | {} |",
                        second_keys * 100.0,
                        hybrid_cells(&engine, &vocab, queries).await
                    );
                }
                key_job(&engine, backend).await;
            }
            drop(engine);
            drop(store);
            if let Some(db) = pg {
                // `--keep-db`: leave the filled database for EXPLAIN ANALYZE.
                if std::env::args().any(|a| a == "--keep-db") {
                    println!("kept {}", db.url);
                } else {
                    db.drop_db().await;
                }
            }
        }
        // The part the hashing embedder leaves out: embedding the query with the real model.
        if minilm_dir().join("model.safetensors").exists() {
            let mut config = EmbedConfig::new(minilm_dir());
            config.device = recall_core::device::DeviceConfig::Cpu;
            let e = EmbeddingService::start(&config).unwrap();
            let mut rng = Rng(5);
            e.embed_one("warm up").await.unwrap();
            let mut t: Vec<f64> = Vec::new();
            for _ in 0..queries.min(100) {
                let q = format!(
                    "what did she say about {} and {}?",
                    vocab.word(&mut rng),
                    vocab.word(&mut rng)
                );
                let s = Instant::now();
                e.embed_one(&q).await.unwrap();
                t.push(s.elapsed().as_secs_f64() * 1000.0);
            }
            t.sort_by(f64::total_cmp);
            println!();
            println!(
                "Query embedding (all-MiniLM-L6-v2, CPU, ~10-word questions): p50 {:.2} ms, p95 {:.2} ms",
                percentile(&t, 0.5),
                percentile(&t, 0.95)
            );
        }
    });
}
