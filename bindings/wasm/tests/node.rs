//! The package under Node (wasm-bindgen-test): the reference cosine, users kept apart, the
//! shared test vectors ranked as the native core ranks them, and the index's bytes. The model
//! files are read from `DEEP_RECALL_MODELS_DIR` (scripts/test.sh sets it) through Node's `fs`.
#![cfg(target_arch = "wasm32")]

use recall_wasm::{Embedder, MemoryIndex};
use serde_json::Value;
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

#[wasm_bindgen(module = "fs")]
extern "C" {
    #[wasm_bindgen(js_name = readFileSync)]
    fn read_bytes(path: &str) -> Vec<u8>;
    #[wasm_bindgen(js_name = readFileSync)]
    fn read_text(path: &str, encoding: &str) -> String;
}

fn env(name: &str) -> Option<String> {
    js_sys::eval(&format!("process.env.{name}"))
        .ok()
        .and_then(|v| v.as_string())
}

fn repo() -> String {
    // The test runs in target/…; the repository is found from the source file's place.
    let here = env!("CARGO_MANIFEST_DIR");
    format!("{here}/../..")
}

fn embedder() -> Embedder {
    let models = env("DEEP_RECALL_MODELS_DIR").unwrap_or_else(|| format!("{}/models", repo()));
    let dir = format!("{models}/all-MiniLM-L6-v2");
    Embedder::new(
        &read_text(&format!("{dir}/config.json"), "utf8"),
        &read_text(&format!("{dir}/tokenizer.json"), "utf8"),
        read_bytes(&format!("{dir}/model.safetensors")),
    )
    .unwrap_or_else(|e| panic!("{e:?}"))
}

fn get(v: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(v, &key.into()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
        / (a.iter().map(|x| x * x).sum::<f32>().sqrt()
            * b.iter().map(|x| x * x).sum::<f32>().sqrt())
}

#[wasm_bindgen_test]
fn the_reference_cosine_and_users_kept_apart() {
    let e = embedder();
    assert_eq!(e.dims(), 384);
    let a = e.embed("A man is eating food.").unwrap();
    let b = e.embed("A man is eating a piece of bread.").unwrap();
    let c = cosine(&a, &b);
    assert!((c - 0.7553).abs() < 1e-3, "{c}");

    let mut index = MemoryIndex::new();
    let t = 1_709_280_000_000.0;
    index
        .add("alice", 1.0, "A man is eating food.", a.clone(), t, None)
        .unwrap();
    index
        .add(
            "bob",
            2.0,
            "A man is eating a piece of bread.",
            b.clone(),
            t,
            None,
        )
        .unwrap();
    for mode in ["vector", "text", "hybrid"] {
        let hits = index
            .search(
                "alice",
                "eating bread",
                b.clone(),
                5,
                Some(mode.into()),
                None,
            )
            .unwrap();
        assert_eq!(hits.length(), 1, "{mode}: only Alice's memory");
        assert_eq!(get(&hits.get(0), "id").as_f64(), Some(1.0), "{mode}");
    }
    let hits = index
        .search(
            "alice",
            "eating bread",
            b.clone(),
            5,
            Some("vector".into()),
            None,
        )
        .unwrap();
    let score = get(&hits.get(0), "score").as_f64().unwrap() as f32;
    assert!((score - c).abs() < 1e-5, "{score} vs {c}");
    // Bad input is an Error with a stable code.
    let err = index
        .search("alice", "x", b.clone(), 5, Some("fuzzy".into()), None)
        .unwrap_err();
    assert_eq!(
        get(&err, "code").as_string().as_deref(),
        Some("INVALID_INPUT")
    );
    let err = index.add("alice", 3.0, "", a.clone(), t, None).unwrap_err();
    assert_eq!(
        get(&err, "code").as_string().as_deref(),
        Some("INVALID_INPUT")
    );
    // Saved and loaded, it answers the same.
    let back = MemoryIndex::from_bytes(&index.to_bytes()).unwrap();
    assert_eq!(back.count("alice"), 1);
    assert_eq!(back.count("bob"), 1);
    let again = back
        .search(
            "alice",
            "eating bread",
            b.clone(),
            5,
            Some("hybrid".into()),
            None,
        )
        .unwrap();
    assert_eq!(get(&again.get(0), "id").as_f64(), Some(1.0));
    assert!(MemoryIndex::from_bytes(b"not an index").is_err());
}

#[wasm_bindgen_test]
fn the_shared_vectors_rank_as_the_native_core() {
    let file: Value = serde_json::from_str(&read_text(
        &format!("{}/tests/vectors/retrieval.json", repo()),
        "utf8",
    ))
    .unwrap();
    let e = embedder();
    let mut index = MemoryIndex::new();
    let messages = file["messages"].as_array().unwrap();
    for (i, m) in messages.iter().enumerate() {
        let text = m["content"].as_str().unwrap();
        let ts = js_sys::Date::parse(m["ts"].as_str().unwrap());
        index
            .add("vectors", i as f64, text, e.embed(text).unwrap(), ts, None)
            .unwrap();
    }
    for case in file["queries"].as_array().unwrap() {
        let query = case["query"].as_str().unwrap();
        let mode = case["mode"].as_str().unwrap();
        let hits = index
            .search(
                "vectors",
                query,
                e.embed(query).unwrap(),
                case["top_k"].as_u64().unwrap() as usize,
                Some(mode.into()),
                None,
            )
            .unwrap();
        let expected = case["expected"].as_array().unwrap();
        assert_eq!(hits.length() as usize, expected.len(), "{query} ({mode})");
        for (i, want) in expected.iter().enumerate() {
            let hit = hits.get(i as u32);
            assert_eq!(
                get(&hit, "text").as_string().as_deref(),
                want["content"].as_str(),
                "{query} ({mode})"
            );
            let (got, want) = (
                get(&hit, "score").as_f64().unwrap(),
                want["score"].as_f64().unwrap(),
            );
            assert!(
                (got - want).abs() < 1e-4,
                "{query} ({mode}): {got} vs {want}"
            );
        }
    }
}
