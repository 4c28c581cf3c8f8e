//! What the packages cost on top of the core, in one run on one store:
//! - per-call overhead: the same hybrid searches (query embedding included) at N memories of
//!   one user through the core directly, the Python package and the Node package (p50, p95);
//! - wasm embedding throughput against native on the same texts (batch 1, one thread);
//! - the size of each package's native artifact (as built; release builds are what ships).
//!
//! ```sh
//! pip install ./bindings/python                   # into the python given below
//! (cd bindings/node && npm install) && (cd bindings/wasm && npm run build)
//! cargo bench -p recall-core --features testing --bench bindings -- [--size 10000]
//!     [--queries 200] [--python PATH] [--node node] [--texts 100]
//! ```
//! The memories get vectors of the real model's id and dimension (random, unit length): search
//! cost does not depend on what they mean, and writing them takes seconds instead of minutes.
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use recall_core::embed::{BertEmbedder, EmbedConfig, Embedder, EmbeddingService};
use recall_core::retrieval::SearchMode;
use recall_core::store::{EmbeddedStore, StoreConfig};
use recall_core::testing::{minilm_dir, models_dir, repo_root};
use recall_core::types::{Embedding, MemoryKind, MessageWrite, NewMemory, NewMessage, Role};
use recall_core::{Engine, MemoryStore, RetrieveOptions};
use serde_json::{Value, json};

const USER: &str = "bench";
const WORDS: &[&str] = &[
    "garden",
    "weather",
    "sister",
    "Lisbon",
    "cello",
    "bakery",
    "peanuts",
    "trip",
    "Japan",
    "cat",
    "Miso",
    "work",
    "deadline",
    "grant",
    "boat",
    "engine",
    "dolphins",
    "conference",
    "Porto",
    "lessons",
    "heater",
    "stress",
    "weekend",
    "climbing",
    "route",
    "Sintra",
];

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn sentence(&mut self, words: usize) -> String {
        (0..words)
            .map(|_| WORDS[(self.next() % WORDS.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(" ")
    }
    fn unit(&mut self, dims: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dims)
            .map(|_| (self.next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Fills the embedded store in `dir` with `size` memories of one user.
async fn fill(dir: &Path, size: usize, model: &str, dims: usize) {
    let store = EmbeddedStore::open(&StoreConfig::embedded(dir))
        .await
        .unwrap();
    let mut rng = Rng(7);
    let mut left = size;
    while left > 0 {
        let n = left.min(1000);
        let writes = (0..n)
            .map(|_| {
                let text = rng.sentence(12);
                MessageWrite {
                    memories: vec![NewMemory::new(
                        MemoryKind::Message,
                        text.clone(),
                        Embedding {
                            model: model.to_owned(),
                            vector: rng.unit(dims),
                        },
                    )],
                    message: NewMessage::new("s", Role::User, text),
                    answers: None,
                }
            })
            .collect();
        store.append_messages(USER, writes).await.unwrap();
        left -= n;
    }
}

fn run_json(cmd: &mut Command) -> Option<Value> {
    let out = cmd.output().ok()?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn size_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let size: usize = arg("--size").map_or(10_000, |v| v.parse().unwrap());
    let queries: usize = arg("--queries").map_or(200, |v| v.parse().unwrap());
    let n_texts: usize = arg("--texts").map_or(100, |v| v.parse().unwrap());
    let python = arg("--python").or_else(|| std::env::var("DEEP_RECALL_TEST_PYTHON").ok());
    let node = arg("--node").unwrap_or_else(|| "node".into());
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbedConfig::new(minilm_dir());
    config.device = recall_core::device::DeviceConfig::Cpu;
    let embedder = Arc::new(EmbeddingService::start(&config).unwrap());
    let (model, dims) = (embedder.model_id().to_owned(), embedder.dims());
    let started = Instant::now();
    fill(dir.path(), size, &model, dims).await;
    eprintln!(
        "{size} memories written in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let mut rng = Rng(99);
    let qs: Vec<String> = (0..queries).map(|_| rng.sentence(6)).collect();
    let queries_file = dir.path().join("queries.json");
    std::fs::write(&queries_file, json!(qs).to_string()).unwrap();

    // The core directly, as the packages call it: before and after them (the machine drifts).
    let core_run = || async {
        let store = recall_core::store::open(&StoreConfig::embedded(dir.path()))
            .await
            .unwrap();
        let engine = Engine::new(store, embedder.clone());
        let options = RetrieveOptions::for_mode(SearchMode::Hybrid, 10);
        engine.retrieve(USER, "warm up", &options).await.unwrap();
        let mut times = Vec::with_capacity(queries);
        for q in &qs {
            let t = Instant::now();
            engine.retrieve(USER, q, &options).await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        (percentile(&times, 0.5), percentile(&times, 0.95))
    };
    let before = core_run().await;

    let data = dir.path().display().to_string();
    let models = models_dir().display().to_string();
    let q = queries_file.display().to_string();
    let py = python.as_ref().and_then(|p| {
        run_json(
            Command::new(p)
                .arg(repo_root().join("bench/bindings.py"))
                .args([
                    "--data-dir",
                    &data,
                    "--models-dir",
                    &models,
                    "--queries",
                    &q,
                ]),
        )
    });
    let js = run_json(
        Command::new(&node)
            .arg(repo_root().join("bench/bindings.mjs"))
            .args([
                "--data-dir",
                &data,
                "--models-dir",
                &models,
                "--queries",
                &q,
            ]),
    );
    let after = core_run().await;
    let core = ((before.0 + after.0) / 2.0, (before.1 + after.1) / 2.0);
    println!(
        "\nHybrid search, top 10, {size} memories of one user, {queries} distinct queries (query embedding included), embedded store:\n"
    );
    println!("| through | p50 (ms) | p95 (ms) | overhead p50 (ms) | ratio p50 |");
    println!("|---|---|---|---|---|");
    println!(
        "| core (Rust; the mean of a run before and after, p50 {:.2} and {:.2}) | {:.2} | {:.2} | – | 1.00 |",
        before.0, after.0, core.0, core.1
    );
    for (name, r) in [("Python package", &py), ("Node package", &js)] {
        match r {
            Some(v) => {
                let (p50, p95) = (v["p50"].as_f64().unwrap(), v["p95"].as_f64().unwrap());
                println!(
                    "| {name} | {p50:.2} | {p95:.2} | {:+.2} | {:.2} |",
                    p50 - core.0,
                    p50 / core.0
                );
            }
            None => println!("| {name} | (not run) | | | |"),
        }
    }

    // Embedding throughput: native against wasm, same texts, batch 1.
    let native = BertEmbedder::load(&minilm_dir(), &candle_core::Device::Cpu, 1, None).unwrap();
    let mut rng = Rng(3);
    let texts: Vec<String> = (0..n_texts).map(|_| rng.sentence(14)).collect();
    let texts_file = dir.path().join("texts.json");
    std::fs::write(&texts_file, json!(texts).to_string()).unwrap();
    native.embed(&[texts[0].as_str()]).unwrap();
    let t = Instant::now();
    for text in &texts {
        native.embed(&[text.as_str()]).unwrap();
    }
    let native_rate = texts.len() as f64 / t.elapsed().as_secs_f64();
    let wasm = run_json(
        Command::new(&node)
            .arg(repo_root().join("bench/wasm_embed.mjs"))
            .args(["--models-dir", &models, "--texts"])
            .arg(&texts_file),
    );
    println!("\nEmbedding, all-MiniLM-L6-v2, batch 1, {n_texts} texts of 14 words:\n");
    println!("| where | texts/s | ratio |");
    println!("|---|---|---|");
    println!("| native (candle, CPU) | {native_rate:.1} | 1.00 |");
    match wasm.and_then(|v| v["texts_per_s"].as_f64()) {
        Some(r) => println!(
            "| wasm (Node, one thread) | {r:.1} | {:.2} |",
            r / native_rate
        ),
        None => println!("| wasm | (not run: npm run build in bindings/wasm) | |"),
    }

    // Artifact sizes, as they are now in the target directory and the packages.
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    println!("\nArtifacts (bytes; release builds are what ships):\n");
    println!("| artifact | dev | release |");
    println!("|---|---|---|");
    for (name, file) in [
        ("Python extension (lib_native.so)", "lib_native.so"),
        ("Node addon (librecall_node.so)", "librecall_node.so"),
    ] {
        let show = |p: &str| {
            size_of(&target.join(p).join(file)).map_or("–".to_owned(), |s| s.to_string())
        };
        println!("| {name} | {} | {} |", show("debug"), show("release"));
    }
    let wasm_file = repo_root().join("bindings/wasm/pkg/web/recall_wasm_bg.wasm");
    println!(
        "| wasm module (recall_wasm_bg.wasm) | – | {} |",
        size_of(&wasm_file).map_or("–".to_owned(), |s| s.to_string())
    );
}
