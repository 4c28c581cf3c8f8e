//! Embedding throughput of the candle embedder against Python sentence-transformers on the same
//! weights and texts, in the same run, and ingest throughput (embedding included) into both
//! stores.
//!
//! ```sh
//! scripts/bench-venv.sh            # once: a venv with CPU PyTorch + sentence-transformers
//! cargo bench -p recall-core --bench embed -- [--texts 512] [--python PATH] [--ingest 1000]
//!     [--query-only [--repeat 1]]
//! ```
//! `--query-only` measures only our query embedding (each question `--repeat` times), for
//! `perf record` and quick comparisons.
//!
//! On a GPU (`--features cuda`), the embedder as it runs there (the graph forward pass, F16)
//! against sentence-transformers on the same GPU in F16, and the cosine of its vectors to our
//! F32 CPU ones:
//!
//! ```sh
//! cargo bench -p recall-core --features testing,cuda --bench embed -- --device cuda \
//!     [--model-dir DIR] [--python python3] [--texts 4096]
//! ```
//! Without `--python` (or `DEEP_RECALL_BENCH_PYTHON`) the Python side is skipped.
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use recall_core::embed::{
    BertEmbedder, EmbedConfig, Embedder, EmbeddingService, Kernels, Precision, cosine,
};
use recall_core::store::{EmbeddedStore, PgStore, StoreConfig};
use recall_core::testing::{PgDb, minilm_dir, repo_root};
use recall_core::types::{NewMessage, Role};
use recall_core::{Engine, MemoryStore};

const SUBJECTS: &[&str] = &[
    "I",
    "My sister",
    "Our team",
    "The landlord",
    "My manager Rui",
    "We",
    "My cat Miso",
    "The new neighbour",
    "My climbing partner",
    "Emma",
];
const VERBS: &[&str] = &[
    "finally finished",
    "was worried about",
    "keeps talking about",
    "forgot",
    "booked",
    "cooked",
    "complained about",
    "is excited about",
    "wrote a report on",
    "found",
];
const OBJECTS: &[&str] = &[
    "the grant renewal due at the end of April",
    "a vegetarian restaurant near Alfama",
    "the boat engine that broke down again",
    "the trip to the Azores in August to see whales",
    "my first 6b route in Sintra",
    "a mushroom açorda",
    "the dolphin survey in the Tagus estuary",
    "Portuguese lessons on Tuesday evenings",
    "the conference in Porto",
    "a peanut-free bakery",
    "the flat's broken heater",
    "sleeping badly because of stress",
];
const TAILS: &[&str] = &[
    "",
    " and I'm not sure what to do next.",
    ", which honestly made my whole week better.",
    " — can you remind me about it next Friday?",
    " even though it rained the entire weekend and everybody was tired and grumpy.",
    ". What do you think I should do about it, given everything I told you last month?",
];

/// Chat-turn-like sentences of varied length, deterministic.
fn texts(n: usize) -> Vec<String> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut pick = |len: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % len as u64) as usize
    };
    (0..n)
        .map(|_| {
            let clauses = 1 + pick(3);
            let mut s = String::new();
            for c in 0..clauses {
                if c > 0 {
                    s.push_str(" Also, ");
                }
                s.push_str(SUBJECTS[pick(SUBJECTS.len())]);
                s.push(' ');
                s.push_str(VERBS[pick(VERBS.len())]);
                s.push(' ');
                s.push_str(OBJECTS[pick(OBJECTS.len())]);
                s.push_str(TAILS[pick(TAILS.len())]);
            }
            s
        })
        .collect()
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn arg_flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn rust_rate(model: &BertEmbedder, texts: &[String], batch: usize) -> f64 {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    model.embed(&refs[..batch.min(refs.len())]).unwrap(); // warm-up
    let started = Instant::now();
    for chunk in refs.chunks(batch) {
        model.embed(chunk).unwrap();
    }
    texts.len() as f64 / started.elapsed().as_secs_f64()
}

/// The JSON lines `bench/st_embed.py` prints with these arguments (none when it fails).
fn st_embed(python: &str, args: &[&std::ffi::OsStr]) -> Vec<serde_json::Value> {
    let out = Command::new(python)
        .arg(repo_root().join("bench/st_embed.py"))
        .args(args)
        .output()
        .expect("run the Python benchmark");
    if !out.status.success() {
        // The table shows "(not run)" for the reference; the reason is here.
        eprintln!(
            "Python benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return vec![];
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

fn python_rates(python: &str, texts_file: &std::path::Path, n: usize) -> Vec<(usize, f64)> {
    let n = n.to_string();
    let dir = minilm_dir();
    let args: Vec<&std::ffi::OsStr> = vec![
        "--model-dir".as_ref(),
        dir.as_os_str(),
        "--texts".as_ref(),
        texts_file.as_os_str(),
        "--batch-sizes".as_ref(),
        "1,32".as_ref(),
        "--threads".as_ref(),
        "2".as_ref(),
        "--limit".as_ref(),
        n.as_ref(),
    ];
    st_embed(python, &args)
        .into_iter()
        .filter_map(|v| {
            Some((
                v["batch_size"].as_u64()? as usize,
                v["sentences_per_s"].as_f64()?,
            ))
        })
        .collect()
}

async fn ingest_rate(engine: &Engine, messages: &[NewMessage]) -> f64 {
    let started = Instant::now();
    for (i, chunk) in messages.chunks(100).enumerate() {
        engine
            .add_messages(&format!("user{}", i % 10), chunk.to_vec())
            .await
            .unwrap();
    }
    messages.len() as f64 / started.elapsed().as_secs_f64()
}

/// Messages a second through the embedder alone, in the same calls of 100 as
/// [`ingest_rate`]: what ingest is compared with.
async fn embed_rate(embedder: &dyn Embedder, messages: &[NewMessage]) -> f64 {
    let started = Instant::now();
    for chunk in messages.chunks(100) {
        embedder
            .embed(chunk.iter().map(|m| m.content.clone()).collect())
            .await
            .unwrap();
    }
    messages.len() as f64 / started.elapsed().as_secs_f64()
}

/// 200 questions of about ten words: what a search embeds.
fn questions() -> Vec<String> {
    (0..200)
        .map(|i| {
            format!(
                "what did {} say about {} {i}?",
                SUBJECTS[i % SUBJECTS.len()],
                OBJECTS[i % OBJECTS.len()]
                    .split_whitespace()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect()
}

/// p50 and p95 of one-at-a-time embedding of `questions`, in ms.
fn query_latency(model: &BertEmbedder, questions: &[String], repeat: usize) -> (f64, f64) {
    model.embed(&[questions[0].as_str()]).unwrap();
    let mut times: Vec<f64> = (0..repeat)
        .flat_map(|_| questions)
        .map(|q| {
            let started = Instant::now();
            model.embed(&[q.as_str()]).unwrap();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    (p(0.5), p(0.95))
}

/// `--device cuda[:N]`: throughput at batch 1, 32 and 128 and query latency of the embedder on
/// that device, against sentence-transformers on the same device and weights in F16 (when a
/// Python is given), and the cosine of its vectors to our F32 CPU ones.
fn on_device(name: &str, texts: &[String], texts_file: &std::path::Path, python: Option<&str>) {
    let device = recall_core::device::select(name.parse().unwrap()).unwrap();
    let dir = arg("--model-dir").map_or_else(minilm_dir, PathBuf::from);
    let load = |device: &candle_core::Device| {
        BertEmbedder::load_with(&dir, device, 128, None, Kernels::Auto, Precision::F32).unwrap()
    };
    let (ours, cpu) = (load(&device), load(&candle_core::Device::Cpu));
    let questions = questions();
    let qfile = texts_file.with_file_name("questions.txt");
    std::fs::write(&qfile, questions.join("\n")).unwrap();
    let batches = [1usize, 32, 128];
    let py = python.map(|p| {
        let torch_device = if name.starts_with("cuda") {
            "cuda"
        } else {
            name
        };
        let args: Vec<&std::ffi::OsStr> = vec![
            "--model-dir".as_ref(),
            dir.as_os_str(),
            "--texts".as_ref(),
            texts_file.as_os_str(),
            "--batch-sizes".as_ref(),
            "1,32,128".as_ref(),
            "--repeat".as_ref(),
            "3".as_ref(),
            "--device".as_ref(),
            torch_device.as_ref(),
            "--dtype".as_ref(),
            "float16".as_ref(),
            "--queries".as_ref(),
            qfile.as_os_str(),
        ];
        st_embed(p, &args)
    });
    let theirs = |key: &str, batch: Option<usize>| -> Option<f64> {
        py.as_ref()?
            .iter()
            .filter(|v| batch.is_none_or(|b| v["batch_size"].as_u64() == Some(b as u64)))
            .find_map(|v| v[key].as_f64())
    };
    println!(
        "Embedding on {name} ({}), our graph forward pass in F16, {}, {} texts",
        recall_core::device::describe(&device),
        dir.display(),
        texts.len()
    );
    println!();
    println!("| batch | ours (sentences/s) | sentence-transformers F16 | ours/ST |");
    println!("|---:|---:|---:|---:|");
    for batch in batches {
        let best = (0..3)
            .map(|_| rust_rate(&ours, texts, batch))
            .fold(0f64, f64::max);
        match theirs("sentences_per_s", Some(batch)) {
            Some(t) => println!("| {batch} | {best:.0} | {t:.0} | {:.2} |", best / t),
            None => println!("| {batch} | {best:.0} | (not run) | |"),
        }
    }
    let (p50, p95) = query_latency(&ours, &questions, 3);
    println!();
    println!("| query embedding, one ~10-word question | p50 (ms) | p95 (ms) |");
    println!("|---|---:|---:|");
    println!("| ours | {p50:.2} | {p95:.2} |");
    if let (Some(a), Some(b)) = (theirs("query_p50_ms", None), theirs("query_p95_ms", None)) {
        println!("| sentence-transformers F16 | {a:.2} | {b:.2} |");
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (a, b) = (ours.embed(&refs).unwrap(), cpu.embed(&refs).unwrap());
    let cos: Vec<f32> = a.iter().zip(&b).map(|(x, y)| cosine(x, y)).collect();
    let lowest = cos.iter().copied().fold(1f32, f32::min);
    let mean = cos.iter().sum::<f32>() / cos.len() as f32;
    let finite = a.iter().flatten().all(|x| x.is_finite());
    println!();
    println!(
        "{name} F16 against our CPU F32 on these texts: cosine mean {mean:.6}, lowest {lowest:.6}, all finite: {finite}"
    );
}

fn main() {
    let n: usize = arg("--texts").map_or(512, |s| s.parse().unwrap());
    let ingest_n: usize = arg("--ingest").map_or(1000, |s| s.parse().unwrap());
    let python = arg("--python").or_else(|| std::env::var("DEEP_RECALL_BENCH_PYTHON").ok());
    let texts = texts(n);
    let dir = tempfile::tempdir().unwrap();
    let texts_file: PathBuf = dir.path().join("texts.txt");
    std::fs::write(&texts_file, texts.join("\n")).unwrap();
    let mean_words = texts
        .iter()
        .map(|t| t.split_whitespace().count())
        .sum::<usize>() as f64
        / n as f64;
    if let Some(device) = arg("--device").filter(|d| d != "cpu") {
        return on_device(&device, &texts, &texts_file, python.as_deref());
    }

    let load = |kernels, precision| {
        BertEmbedder::load_with(
            &minilm_dir(),
            &candle_core::Device::Cpu,
            32,
            None,
            kernels,
            precision,
        )
        .unwrap()
    };
    let model = load(Kernels::Auto, Precision::F32);
    let int8 = load(Kernels::Auto, Precision::Int8);
    let candle = load(Kernels::Candle, Precision::F32);
    // `--profile-ours [f32|int8]`: only our forward pass at that precision (for `perf record`).
    let profile: Option<Precision> = arg_flag("--profile-ours")
        .then(|| arg("--profile-ours").and_then(|p| p.parse().ok()))
        .map(Option::unwrap_or_default);
    println!(
        "Embedding throughput, all-MiniLM-L6-v2, {n} texts (mean {mean_words:.1} words), CPU, \
         int8 kernel {}",
        recall_kernels::int8::kernel()
    );
    println!();
    println!(
        "| batch | ours F32 (sentences/s) | ours int8 | candle-transformers | sentence-transformers | F32/ST | int8/ST | F32/candle |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let py = python.as_deref().map(|p| python_rates(p, &texts_file, n));
    // `--ingest-only f32|int8`: only the ingest part, at that precision (for `perf record`).
    let ingest_only: Option<Precision> = arg("--ingest-only").map(|p| p.parse().unwrap());
    let query_only = arg_flag("--query-only");
    let repeat: usize = arg("--repeat").map_or(1, |s| s.parse().unwrap());
    for batch in [1usize, 32] {
        if ingest_only.is_some() || query_only {
            break;
        }
        if let Some(p) = profile {
            let m = if p == Precision::Int8 { &int8 } else { &model };
            println!(
                "| {batch} | {:.1} ({p}) | | | | | | |",
                rust_rate(m, &texts, batch)
            );
            continue;
        }
        let ours = rust_rate(&model, &texts, batch);
        let ours8 = rust_rate(&int8, &texts, batch);
        let old = rust_rate(&candle, &texts, batch);
        let theirs = py
            .as_ref()
            .and_then(|r| r.iter().find(|(b, _)| *b == batch).map(|(_, s)| *s));
        match theirs {
            Some(t) => println!(
                "| {batch} | {ours:.1} | {ours8:.1} | {old:.1} | {t:.1} | {:.2} | {:.2} | {:.2} |",
                ours / t,
                ours8 / t,
                ours / old
            ),
            None => println!(
                "| {batch} | {ours:.1} | {ours8:.1} | {old:.1} | (not run) | | | {:.2} |",
                ours / old
            ),
        }
    }
    if profile.is_none() && ingest_only.is_none() && !query_only {
        // How far int8 moves the vectors, on the benchmark's own texts.
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (a, b) = (model.embed(&refs).unwrap(), int8.embed(&refs).unwrap());
        let cos: Vec<f32> = a.iter().zip(&b).map(|(x, y)| cosine(x, y)).collect();
        let min = cos.iter().copied().fold(1f32, f32::min);
        let mean = cos.iter().sum::<f32>() / cos.len() as f32;
        println!();
        println!("int8 against F32 on these texts: cosine mean {mean:.5}, lowest {min:.5}");
    }
    // Query embedding: a 10-word question at a time, as every search does.
    let questions = questions();
    println!();
    println!(
        "Query embedding latency, one question of ~10 words at a time, {} questions:",
        questions.len()
    );
    println!();
    println!("| forward | p50 (ms) | p95 (ms) |");
    println!("|---|---:|---:|");
    for (name, m) in [
        ("ours F32", &model),
        ("ours int8", &int8),
        ("candle-transformers", &candle),
    ] {
        if profile.is_some() || ingest_only.is_some() || (query_only && name.starts_with("candle"))
        {
            continue;
        }
        let (p50, p95) = query_latency(m, &questions, repeat);
        println!("| {name} | {p50:.2} | {p95:.2} |");
    }
    drop(candle);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let messages: Vec<NewMessage> = texts
        .iter()
        .cycle()
        .take(ingest_n)
        .enumerate()
        .map(|(i, t)| {
            NewMessage::new(
                format!("s{}", i / 50),
                if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                },
                t.clone(),
            )
        })
        .collect();
    println!();
    println!("Ingest throughput, {ingest_n} messages in calls of 100, embedding included");
    println!();
    println!(
        "(against the embedder alone on the same messages in the same calls, measured before \
         and after each ingest: the ratio is to their mean)"
    );
    println!();
    println!(
        "| store | precision | messages/s | embedder alone (messages/s) | ingest / embedder |"
    );
    println!("|---|---|---:|---:|---:|");
    for precision in [Precision::F32, Precision::Int8] {
        if profile.is_some() || query_only || ingest_only.is_some_and(|p| p != precision) {
            continue;
        }
        rt.block_on(async {
            let mut config = EmbedConfig::new(minilm_dir());
            config.precision = precision;
            let embedder: Arc<dyn Embedder> = Arc::new(EmbeddingService::start(&config).unwrap());
            let data = tempfile::tempdir().unwrap();
            let embedded: Arc<dyn MemoryStore> = Arc::new(
                EmbeddedStore::open(&StoreConfig::embedded(data.path()))
                    .await
                    .unwrap(),
            );
            let before = embed_rate(embedder.as_ref(), &messages).await;
            let rate = ingest_rate(&Engine::new(embedded, embedder.clone()), &messages).await;
            let between = embed_rate(embedder.as_ref(), &messages).await;
            let alone = (before + between) / 2.0;
            println!(
                "| embedded | {precision} | {rate:.1} | {alone:.1} | {:.2} |",
                rate / alone
            );
            let db = PgDb::create().await;
            let pg = PgStore::open(&StoreConfig::postgres(db.url.clone()))
                .await
                .unwrap();
            let conn = pg.connection().clone();
            let rate = ingest_rate(&Engine::new(Arc::new(pg), embedder.clone()), &messages).await;
            let after = embed_rate(embedder.as_ref(), &messages).await;
            let alone = (between + after) / 2.0;
            println!(
                "| postgres | {precision} | {rate:.1} | {alone:.1} | {:.2} |",
                rate / alone
            );
            conn.close().await.ok();
            db.drop_db().await;
        });
    }
}
