//! The cost of encryption at rest, both stores, in one run: for one user with N memories,
//! stored in the clear and sealed with a data key, the insert rate, warm vector-search and
//! full-text-search latency, the first full-text search after a write (Postgres with a key
//! rebuilds the user's in-process index then; without, it asks the GIN index), and a key
//! rotation of every row.
//!
//! ```sh
//! cargo bench -p recall-core --features testing --bench encryption -- [--sizes 10000,100000]
//!     [--queries 100] [--backends embedded,postgres]
//! ```
//! Postgres comes from `DATABASE_URL` or `scripts/pg.sh` (see `recall_core::testing`).
use std::sync::Arc;
use std::time::Instant;

use recall_core::MemoryStore;
use recall_core::crypto::{DataKey, Keyring};
use recall_core::store::{self, StoreConfig};
use recall_core::testing::PgDb;
use recall_core::testing::bench::{Rng, arg_or as arg, list};
use recall_core::types::{Embedding, MemoryKind, NewMemory, TextQuery, VectorQuery};

const DIMS: usize = 384;
const MODEL: &str = "bench-model";
const WORDS: [&str; 24] = [
    "lisbon", "dolphin", "estuary", "manager", "passport", "drawer", "peanut", "allergy",
    "birthday", "sister", "concert", "guitar", "marathon", "recipe", "garden", "tomato", "holiday",
    "flight", "museum", "painting", "coffee", "bakery", "library", "novel",
];

/// A 12-word sentence over [`WORDS`].
fn sentence(rng: &mut Rng, i: usize) -> String {
    let mut s = format!("note {i}:");
    for _ in 0..12 {
        s.push(' ');
        s.push_str(WORDS[(rng.next_u64() % WORDS.len() as u64) as usize]);
    }
    s
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn memory(rng: &mut Rng, i: usize) -> NewMemory {
    NewMemory::new(
        MemoryKind::Fact,
        sentence(rng, i),
        Embedding {
            model: MODEL.into(),
            vector: rng.unit_vector(DIMS),
        },
    )
}

struct Row {
    insert_rate: f64,
    vector_ms: f64,
    text_ms: f64,
    text_after_write_ms: f64,
    rotate_s: Option<f64>,
}

async fn run(store: &dyn MemoryStore, size: usize, queries: usize) -> Row {
    let mut rng = Rng(7 + size as u64);
    let started = Instant::now();
    let mut i = 0;
    while i < size {
        let n = (size - i).min(1000);
        let rows = (i..i + n).map(|j| memory(&mut rng, j)).collect();
        store.add_memories("u", rows).await.unwrap();
        i += n;
    }
    let insert_rate = size as f64 / started.elapsed().as_secs_f64();
    let mut vector = Vec::new();
    let mut text = Vec::new();
    let mut after_write = Vec::new();
    let text_query =
        |q: usize| TextQuery::new(format!("{} {}", WORDS[q % 24], WORDS[(q * 7) % 24]), 10);
    store.text_search("u", &text_query(0)).await.unwrap();
    for q in 0..queries {
        let v = VectorQuery::new(
            Embedding {
                model: MODEL.into(),
                vector: rng.unit_vector(DIMS),
            },
            10,
        );
        let t = Instant::now();
        assert_eq!(store.search("u", &v).await.unwrap().hits.len(), 10);
        vector.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        assert!(
            !store
                .text_search("u", &text_query(q))
                .await
                .unwrap()
                .is_empty()
        );
        text.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for q in 0..queries.min(10) {
        store
            .add_memories("u", vec![memory(&mut rng, size + q)])
            .await
            .unwrap();
        let t = Instant::now();
        store.text_search("u", &text_query(q)).await.unwrap();
        after_write.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Row {
        insert_rate,
        vector_ms: p50(vector),
        text_ms: p50(text),
        text_after_write_ms: p50(after_write),
        rotate_s: None,
    }
}

fn main() {
    let sizes: Vec<usize> = list("--sizes", "10000")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let queries: usize = arg("--queries", "100").parse().unwrap();
    let backends = list("--backends", "embedded,postgres");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| store | memories | keys | insert (rows/s) | vector p50 (ms) | text p50 (ms) | text after a write p50 (ms) | rotate all (s) |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    rt.block_on(async {
        for backend in &backends {
            for &size in &sizes {
                for sealed in [false, true] {
                    let dir = tempfile::tempdir().unwrap();
                    let pg = if backend == "postgres" {
                        Some(PgDb::create().await)
                    } else {
                        None
                    };
                    let mut config = match &pg {
                        Some(db) => StoreConfig::postgres(db.url.clone()).with_index_dims(DIMS),
                        None => StoreConfig::embedded(dir.path()),
                    };
                    let key = DataKey::from_bytes([9; 32]);
                    if sealed {
                        config.keys = Arc::new(Keyring::new(Some(key.clone()), vec![]));
                    }
                    let store = store::open(&config).await.unwrap();
                    let mut row = run(store.as_ref(), size, queries).await;
                    if sealed {
                        // Every row to a second key.
                        drop(store);
                        config.keys =
                            Arc::new(Keyring::new(Some(DataKey::from_bytes([10; 32])), vec![key]));
                        let store = store::open(&config).await.unwrap();
                        let t = Instant::now();
                        store.rotate_keys(&mut |_, _| {}).await.unwrap();
                        row.rotate_s = Some(t.elapsed().as_secs_f64());
                    } else {
                        drop(store);
                    }
                    println!(
                        "| {backend} | {size} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
                        if sealed { "sealed" } else { "clear" },
                        row.insert_rate,
                        row.vector_ms,
                        row.text_ms,
                        row.text_after_write_ms,
                        row.rotate_s.map_or("".into(), |s| format!("{s:.2}")),
                    );
                    if let Some(db) = pg {
                        db.drop_db().await;
                    }
                }
            }
        }
    });
}
