//! The candle embedder on the real all-MiniLM-L6-v2 weights, and the engine on both stores.
use std::sync::Arc;

use recall_core::embed::{EmbedConfig, Embedder, EmbeddingService, cosine};
use recall_core::types::{MemoryKind, Metric};
use recall_core::{Engine, ErrorKind, NewMemoryText, SearchOptions};

use crate::fixtures::{TestStore, minilm_dir, repo_root};

fn service() -> EmbeddingService {
    let mut config = EmbedConfig::new(minilm_dir());
    config.device = recall_core::device::DeviceConfig::Cpu;
    EmbeddingService::start(&config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_matches_reference_similarity() {
    let e = service();
    assert_eq!(e.dims(), 384);
    assert_eq!(e.model_id(), "all-MiniLM-L6-v2");
    let v = e
        .embed(vec![
            "A man is eating food.".into(),
            "A man is eating a piece of bread.".into(),
            "The new movie is awesome.".into(),
            "A monkey is playing drums.".into(),
        ])
        .await
        .unwrap();
    let sim = cosine(&v[0], &v[1]);
    assert!((sim - 0.7553).abs() < 0.002, "cos = {sim}");
    for (i, j) in [(0, 2), (1, 2), (2, 3)] {
        let s = cosine(&v[i], &v[j]);
        assert!(s.abs() < 0.15, "unrelated pair ({i},{j}) scored {s}");
    }
    for x in &v {
        let norm: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "L2-normalised, got {norm}");
    }
}

/// A text's vector does not depend on what it is batched with: the worker merges waiting
/// requests, often of different users, and on the CPU each text's vector is the same bits
/// alone or in company (so another user's texts cannot shift a user's scores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_and_concurrency_do_not_change_vectors() {
    let e = Arc::new(service());
    let texts: Vec<String> = (0..40)
        .map(|i| format!("sentence {i}: {}", "word ".repeat(i * 3)))
        .collect();
    let batched = e.embed(texts.clone()).await.unwrap();
    let mut tasks = Vec::new();
    for t in texts.clone() {
        let e = e.clone();
        tasks.push(tokio::spawn(async move { e.embed_one(&t).await.unwrap() }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let alone = task.await.unwrap();
        let diff = alone
            .iter()
            .zip(&batched[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff == 0.0, "text {i}: batched and alone differ by {diff}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_text_is_truncated_not_rejected() {
    let e = service();
    let long = "The estuary was calm and the dolphins came close to the boat. ".repeat(200);
    let v = e.embed_one(&long).await.unwrap();
    assert_eq!(v.len(), 384);
    let short = e
        .embed_one("The estuary was calm and the dolphins came close to the boat.")
        .await
        .unwrap();
    // Reference from sentence-transformers 6.2.0 on the same weights (bench/st_embed.py), which
    // truncates at the model's 256-token limit the same way: 0.641675.
    let sim = cosine(&v, &short);
    assert!((sim - 0.641_675).abs() < 0.005, "long vs short: {sim}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_model_is_a_model_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = EmbeddingService::start(&EmbedConfig::new(dir.path().join("nope")))
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Model);
    assert!(err.to_string().contains("models fetch"), "{err}");
    std::fs::write(dir.path().join("config.json"), "{").unwrap();
    let err = EmbeddingService::start(&EmbedConfig::new(dir.path()))
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Model);
}

/// The sample conversation shipped in the repository, found again by meaning.
async fn engine_finds_relevant_memories(t: &TestStore, engine: Engine) {
    let file = std::fs::File::open(repo_root().join("examples/sample-conversation.jsonl")).unwrap();
    let messages =
        recall_core::ingest::parse_jsonl(std::io::BufReader::new(file), engine.limits()).unwrap();
    let n = messages.len();
    let stored = engine.add_messages("alice", messages).await.unwrap();
    assert_eq!(stored.len(), n);
    for (question, expected) in [
        ("What is she allergic to?", "peanuts"),
        ("What is the name of her pet?", "cat named Miso"),
        ("Which city did she move to?", "moved to Lisbon"),
        ("When is her sister coming?", "Emma is visiting"),
    ] {
        let page = engine
            .search(
                "alice",
                question,
                &SearchOptions {
                    top_k: 3,
                    ..SearchOptions::default()
                },
            )
            .await
            .unwrap();
        assert!(
            page.hits
                .iter()
                .any(|h| h.memory.content.contains(expected)),
            "{question:?} on {}: {:?}",
            engine.backend(),
            page.hits
                .iter()
                .map(|h| &h.memory.content)
                .collect::<Vec<_>>()
        );
    }
    let fact = engine
        .add_memory(
            "alice",
            NewMemoryText {
                kind: MemoryKind::Fact,
                content: "Alice's favourite colour is teal.".into(),
                session: None,
                tags: vec![],
                importance: Some(0.9),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let page = engine
        .search(
            "alice",
            "favourite colour",
            &SearchOptions {
                top_k: 1,
                ..SearchOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.hits[0].memory.id, fact.id);
    // Nobody else sees it.
    let other = engine
        .search("bob", "favourite colour", &SearchOptions::default())
        .await
        .unwrap();
    assert!(other.hits.is_empty());
    let _ = t;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_on_both_stores() {
    let embedder: Arc<dyn Embedder> = Arc::new(service());
    for t in [
        TestStore::pg(Metric::Cosine).await,
        TestStore::embedded(Metric::Cosine).await,
    ] {
        let store = t.reopen().await;
        engine_finds_relevant_memories(&t, Engine::new(store, embedder.clone())).await;
        t.close().await;
    }
}

/// sentence-transformers' vectors for a few texts (scripts/reference-embeddings.sh).
fn reference() -> (Vec<String>, Vec<Vec<f32>>) {
    let path = repo_root().join("core/tests/data/reference_embeddings.json");
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let texts = data["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let vectors = data["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    (texts, vectors)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Both forward passes (our packed CPU encoder and candle's BERT) give sentence-transformers'
/// vectors, one text at a time and in a batch of mixed lengths (packed without padding).
#[test]
fn both_forward_passes_match_sentence_transformers() {
    use recall_core::embed::{BertEmbedder, Kernels, Precision};
    let (texts, want) = reference();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for kernels in [Kernels::Auto, Kernels::Candle] {
        let model = BertEmbedder::load_with(
            &minilm_dir(),
            &candle_core::Device::Cpu,
            32,
            None,
            kernels,
            Precision::F32,
        )
        .unwrap();
        let batched = model.embed(&refs).unwrap();
        let mut worst = 0f32;
        for (i, text) in refs.iter().enumerate() {
            let alone = model.embed(&[text]).unwrap().pop().unwrap();
            let d = max_diff(&alone, &want[i]);
            assert!(d < 2e-6, "{kernels:?}, text {i} alone: differs by {d}");
            let b = max_diff(&batched[i], &want[i]);
            assert!(b < 2e-6, "{kernels:?}, text {i} in a batch: differs by {b}");
            worst = worst.max(d).max(b);
        }
        eprintln!("{kernels:?}: largest difference to sentence-transformers {worst:.1e}");
    }
}

/// The forward pass GPUs run (F16 matrix products; mask, norms and softmax in F32), checked on
/// the CPU: every reference vector, alone and in a padded batch, within cosine 0.9999 of
/// sentence-transformers' F32 one, and none NaN (candle-transformers' BERT, run in F16, gives
/// NaN at every real token: its mask is `0 × f16(f32::MIN) = 0 × −∞`).
#[test]
fn graph_forward_in_f16_matches_sentence_transformers() {
    use recall_core::embed::{BertEmbedder, Kernels, Precision};
    let (texts, want) = reference();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let lengths: std::collections::BTreeSet<usize> = refs.iter().map(|t| t.len()).collect();
    assert!(lengths.len() > 1, "the batch must need padding");
    let model = BertEmbedder::load_with(
        &minilm_dir(),
        &candle_core::Device::Cpu,
        32,
        None,
        Kernels::Graph,
        Precision::F32,
    )
    .unwrap();
    let batched = model.embed(&refs).unwrap();
    let mut lowest = 1f32;
    for (i, text) in refs.iter().enumerate() {
        let alone = model.embed(&[text]).unwrap().pop().unwrap();
        for (how, v) in [("alone", &alone), ("in a batch", &batched[i])] {
            assert!(
                v.iter().all(|x| x.is_finite()),
                "text {i} {how}: not finite"
            );
            let c = cosine(v, &want[i]);
            assert!(c >= 0.9999, "text {i} {how}: cosine {c}");
            lowest = lowest.min(c);
        }
    }
    eprintln!("graph forward pass (F16): lowest cosine to sentence-transformers {lowest:.6}");
}

/// The int8 forward pass: every reference vector within cosine 0.99 of sentence-transformers'
/// (the bar), a vector that does not depend on the batch it was embedded in (rows are
/// quantized one by one and the integer sums are exact), and the F32 model's ranking of a few
/// plain retrieval pairs kept.
#[test]
fn int8_vectors_stay_close_to_sentence_transformers() {
    use recall_core::embed::{BertEmbedder, Kernels, Precision, cosine};
    let (texts, want) = reference();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let load = |precision| {
        BertEmbedder::load_with(
            &minilm_dir(),
            &candle_core::Device::Cpu,
            32,
            None,
            Kernels::Auto,
            precision,
        )
        .unwrap()
    };
    // CPUs whose best int8 kernel is AVX2 get seven-bit weights (recall_kernels::int8): the
    // three-token "ok" then comes to 0.989, every other reference text above 0.996.
    let bar = if recall_kernels::int8::weight_max() == recall_kernels::int8::WEIGHT_MAX {
        0.99
    } else {
        0.985
    };
    let int8 = load(Precision::Int8);
    let batched = int8.embed(&refs).unwrap();
    let mut worst = 1f32;
    for (i, text) in refs.iter().enumerate() {
        let alone = int8.embed(&[text]).unwrap().pop().unwrap();
        assert_eq!(alone, batched[i], "text {i}: the batch changed the vector");
        let c = cosine(&alone, &want[i]);
        assert!(c >= bar, "text {i}: cosine {c} to sentence-transformers");
        assert!(
            c < 1.0 - 1e-7,
            "text {i}: identical vectors mean nothing was quantized"
        );
        worst = worst.min(c);
    }
    eprintln!(
        "int8 ({}): lowest cosine to sentence-transformers {worst:.5}",
        recall_kernels::int8::kernel()
    );

    // Which memory answers which question: the same under both precisions.
    let memories = [
        "I adopted a grey cat called Miso last spring.",
        "My brother works as a nurse in Manchester.",
        "We spent two weeks hiking in the Dolomites in August.",
        "I'm learning to play the cello, lessons are on Thursdays.",
    ];
    let questions = [
        "What is the name of my pet?",
        "Where does my sibling work?",
        "Which mountains did we walk in during the summer?",
        "What instrument am I studying?",
    ];
    let f32 = load(Precision::F32);
    for model in [&f32, &int8] {
        let m = model.embed(&memories).unwrap();
        for (qi, q) in model.embed(&questions).unwrap().iter().enumerate() {
            let best = (0..m.len())
                .max_by(|&a, &b| cosine(q, &m[a]).total_cmp(&cosine(q, &m[b])))
                .unwrap();
            assert_eq!(best, qi, "{:?}", questions[qi]);
        }
    }
}

/// A memory stored whole (not a message, which is split) longer than the model's window is
/// found by what comes after the window too: its vector is the mean of its pieces', not the
/// vector of its first 256 tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_memory_is_found_by_its_end() {
    use recall_core::retrieval::{RankingConfig, RetrieveOptions, SearchMode};

    let embedder = Arc::new(service());
    let filler = "The estuary was calm and the dolphins came close to the boat. ".repeat(24);
    let note = format!("{filler}The spare key is under the blue flowerpot by the back door.");
    let query = "Where is the spare key?";
    let q = embedder.embed_one(query).await.unwrap();
    let cut = embedder.embed_one(&note).await.unwrap();
    let whole = embedder.embed_one_whole(&note).await.unwrap();
    assert!(
        cosine(&q, &whole) > cosine(&q, &cut) + 0.1,
        "whole {} against cut {}",
        cosine(&q, &whole),
        cosine(&q, &cut)
    );
    let norm: f32 = whole.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    // A text within the window is embedded as before, to the bit.
    let short = "The spare key is under the blue flowerpot.";
    assert_eq!(
        embedder.embed_one_whole(short).await.unwrap(),
        embedder.embed_one(short).await.unwrap()
    );

    let t = TestStore::embedded(Metric::Cosine).await;
    let engine = Engine::new(t.reopen().await, embedder.clone());
    let fact = |content: &str| NewMemoryText {
        kind: MemoryKind::Fact,
        content: content.into(),
        ..Default::default()
    };
    let long = engine.add_memory("ann", fact(&note)).await.unwrap();
    // Unrelated memories, which the first window alone (about the estuary) does not beat.
    // (The mean of the pieces is diluted: a close competitor, "Ann keeps her bicycle in the
    // shed.", still wins in vector mode; hybrid search finds the words too.)
    for other in [
        "The boat trip was on a Sunday.",
        "Ann's sister lives in Lyon.",
        "Ann had pasta for dinner.",
    ] {
        engine.add_memory("ann", fact(other)).await.unwrap();
    }
    let options = RetrieveOptions {
        top_k: 1,
        mode: SearchMode::Vector,
        ranking: RankingConfig::plain(),
        ..RetrieveOptions::default()
    };
    let hits = engine.retrieve("ann", query, &options).await.unwrap();
    assert_eq!(hits[0].memory.id, long.id);
    t.close().await;
}
