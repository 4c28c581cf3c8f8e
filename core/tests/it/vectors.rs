//! The shared test vectors (`tests/vectors/retrieval.json`): a small conversation, queries,
//! and the results the core gives for them in each mode (each front door's default ranking
//! for that mode). The Python, Node and wasm tests check the same file, so no binding can
//! drift from the core. `write_shared_vectors` (ignored) regenerates it.
use std::sync::Arc;

use recall_core::embed::{EmbedConfig, EmbeddingService};
use recall_core::retrieval::SearchMode;
use recall_core::{Engine, RetrieveOptions, StoreConfig};
use serde_json::{Value, json};

use crate::fixtures::{minilm_dir, repo_root};

const USER: &str = "vectors";

fn path() -> std::path::PathBuf {
    repo_root().join("tests/vectors/retrieval.json")
}

/// The conversation and the questions (kept here; the file carries them to the other tests).
fn inputs() -> (Vec<Value>, Vec<(&'static str, usize)>) {
    let lines = [
        (
            "2024-03-02T09:14:00Z",
            "user",
            "I just moved to Lisbon for a job at a bakery.",
        ),
        (
            "2024-03-02T09:15:00Z",
            "assistant",
            "Welcome to Lisbon! How is the new job going?",
        ),
        (
            "2024-03-03T18:40:00Z",
            "user",
            "My sister Ana is a marine biologist in Porto.",
        ),
        (
            "2024-03-05T07:02:00Z",
            "user",
            "I'm allergic to peanuts, so no satay for me.",
        ),
        (
            "2024-03-06T21:30:00Z",
            "user",
            "On Sundays I play the cello with a small quartet.",
        ),
        (
            "2024-03-08T12:00:00Z",
            "user",
            "My cat Biscuit wakes me at five every morning.",
        ),
        (
            "2024-03-09T19:03:00Z",
            "assistant",
            "Cats are early risers; Biscuit keeps you on time.",
        ),
        (
            "2024-03-10T10:10:00Z",
            "user",
            "I'm saving up for a trip to Japan next spring.",
        ),
    ];
    let messages = lines
        .iter()
        .map(|(ts, role, content)| json!({ "role": role, "content": content, "ts": ts }))
        .collect();
    let queries = vec![
        ("Where does she work in Lisbon?", 3),
        ("Which food gives her an allergy, peanuts?", 2),
        ("Which instrument does she play on Sundays?", 2),
        ("Tell me about her cat Biscuit", 3),
    ];
    (messages, queries)
}

async fn engine(dir: &std::path::Path) -> Engine {
    let store = recall_core::store::open(&StoreConfig::embedded(dir))
        .await
        .unwrap();
    let mut config = EmbedConfig::new(minilm_dir());
    config.device = recall_core::device::DeviceConfig::Cpu;
    Engine::new(store, Arc::new(EmbeddingService::start(&config).unwrap()))
}

/// What the core answers for the inputs.
async fn compute() -> Value {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let (messages, queries) = inputs();
    let parsed = recall_core::ingest::parse_messages(
        &Value::Array(messages.clone()).to_string(),
        "s",
        e.limits(),
    )
    .unwrap();
    e.add_messages(USER, parsed).await.unwrap();
    let mut cases = Vec::new();
    for (query, top_k) in queries {
        for mode in [SearchMode::Vector, SearchMode::Text, SearchMode::Hybrid] {
            let hits = e
                .retrieve(USER, query, &RetrieveOptions::for_mode(mode, top_k))
                .await
                .unwrap();
            let expected: Vec<Value> = hits
                .iter()
                .map(|h| json!({ "content": h.memory.content, "score": h.score }))
                .collect();
            cases.push(
                json!({ "query": query, "mode": mode, "top_k": top_k, "expected": expected }),
            );
        }
    }
    json!({
        "about": "Shared test vectors: the results of the core (all-MiniLM-L6-v2, each mode's default ranking) that every binding must reproduce, scores within 1e-4. Regenerate with `cargo test -p recall-core --test it -- --ignored write_shared_vectors`.",
        "model": "all-MiniLM-L6-v2",
        "session": "s",
        "messages": messages,
        "queries": cases,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes tests/vectors/retrieval.json"]
async fn write_shared_vectors() {
    let v = compute().await;
    std::fs::create_dir_all(path().parent().unwrap()).unwrap();
    std::fs::write(path(), serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_reproduces_the_shared_vectors() {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    let (messages, _) = inputs();
    assert_eq!(
        file["messages"],
        Value::Array(messages),
        "inputs changed: regenerate"
    );
    let now = compute().await;
    let (want, got) = (
        file["queries"].as_array().unwrap(),
        now["queries"].as_array().unwrap(),
    );
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(got) {
        assert_eq!(w["query"], g["query"]);
        let (we, ge) = (
            w["expected"].as_array().unwrap(),
            g["expected"].as_array().unwrap(),
        );
        let contents = |v: &[Value]| v.iter().map(|x| x["content"].clone()).collect::<Vec<_>>();
        assert_eq!(contents(we), contents(ge), "{} ({})", w["query"], w["mode"]);
        for (a, b) in we.iter().zip(ge) {
            let (a, b) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
            assert!(
                (a - b).abs() < 1e-4,
                "{} ({}): {a} vs {b}",
                w["query"],
                w["mode"]
            );
        }
    }
}

/// The in-memory index (the browser package's) ranks as the engine does, here natively; the
/// wasm test checks the same in a JavaScript engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_reproduces_the_shared_vectors() {
    use recall_core::Embedder;
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    let mut config = EmbedConfig::new(minilm_dir());
    config.device = recall_core::device::DeviceConfig::Cpu;
    let embedder = EmbeddingService::start(&config).unwrap();
    let mut index = recall_core::index::MemoryIndex::new();
    for (i, m) in file["messages"].as_array().unwrap().iter().enumerate() {
        let text = m["content"].as_str().unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(m["ts"].as_str().unwrap()).unwrap();
        let vector = embedder.embed_one(text).await.unwrap();
        index
            .add(USER, i as i64, text, vector, at.to_utc())
            .unwrap();
    }
    for case in file["queries"].as_array().unwrap() {
        let query = case["query"].as_str().unwrap();
        let mode: SearchMode = case["mode"].as_str().unwrap().parse().unwrap();
        let top_k = case["top_k"].as_u64().unwrap() as usize;
        let vector = embedder.embed_one(query).await.unwrap();
        let hits = index
            .search(
                USER,
                query,
                &vector,
                &RetrieveOptions::for_mode(mode, top_k),
                chrono::Utc::now(),
            )
            .unwrap();
        let expected = case["expected"].as_array().unwrap();
        let got: Vec<&str> = hits.iter().map(|h| h.memory.content.as_str()).collect();
        let want: Vec<&str> = expected
            .iter()
            .map(|e| e["content"].as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{query} ({mode})");
        for (h, e) in hits.iter().zip(expected) {
            let want = e["score"].as_f64().unwrap();
            assert!(
                (h.score as f64 - want).abs() < 1e-4,
                "{query} ({mode}): {} vs {want}",
                h.score
            );
        }
    }
}
