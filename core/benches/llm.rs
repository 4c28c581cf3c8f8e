//! Local generation speed with the packaged SmolLM2-135M-Instruct on the CPU: prefill and
//! decode tokens/s and time to first token, one stream and 4 or 8 concurrent streams through
//! the `ChatService` (aggregate throughput), and Hugging Face transformers on the same GGUF
//! file, prompt and answer length in the same run when a Python with it is given.
//!
//! ```sh
//! scripts/bench-venv.sh     # once: the Python reference (transformers + gguf + accelerate)
//! cargo bench -p recall-core --features testing --bench llm -- \
//!     [--python ~/.cache/deep-recall/bench-venv/bin/python] [--new-tokens 64]
//! ```
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use recall_core::context::ChatTurn;
use recall_core::llm::{ChatEvent, ChatService, GenerationParams, LocalModel, ModelConfig};
use recall_core::testing::models_dir;
use recall_core::types::Role;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

const QUESTION: &str = "I am planning a weekend trip to Lisbon with my sister Ana. We like \
    old neighbourhoods, tiled buildings, seafood and viewpoints, but not crowds. Ana is \
    allergic to peanuts and I do not drink coffee. We arrive on Friday evening and leave on \
    Sunday afternoon. Can you suggest a plan for the two days, with a place for lunch and \
    dinner each day, and tell me what to pack for the weather in March?";

fn main() {
    let new_tokens: usize = arg("--new-tokens").map_or(64, |s| s.parse().unwrap());
    let path = recall_core::llm::local::default_model_path(&models_dir());
    let config = ModelConfig {
        path: path.clone(),
        dequantize: true,
        ..ModelConfig::new("")
    };
    let turns = vec![ChatTurn {
        role: Role::User,
        content: QUESTION.into(),
    }];
    let params = GenerationParams {
        max_tokens: new_tokens,
        min_tokens: new_tokens,
        ..GenerationParams::default()
    };

    // One stream, directly on the model: prefill = time to the first token.
    let mut model = LocalModel::load(&config, &Device::Cpu).unwrap();
    let ids = model.encode(&model.template().render(&turns)).unwrap();
    model.generate(&ids, &params, &mut |_| true).unwrap(); // warm-up
    let mut best: Option<(f64, f64, f64)> = None;
    for _ in 0..3 {
        let started = Instant::now();
        let mut first = None;
        let out = model
            .generate(&ids, &params, &mut |_| {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
                true
            })
            .unwrap();
        let total = started.elapsed().as_secs_f64();
        let ttft = first.unwrap_or(total);
        let decode = (out.completion_tokens.saturating_sub(1)) as f64 / (total - ttft);
        let prefill = ids.len() as f64 / ttft;
        if best.is_none_or(|b| decode > b.2) {
            best = Some((ttft * 1000.0, prefill, decode));
        }
    }
    let (ttft_ms, prefill, decode) = best.unwrap();
    println!(
        "SmolLM2-135M-Instruct (Q4_1 dequantized to F32), CPU, prompt {} tokens, {new_tokens} new tokens",
        ids.len()
    );
    println!();
    println!(
        "| engine | streams | prefill (tokens/s) | TTFT (ms) | decode (tokens/s per stream) | aggregate (tokens/s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| deep-recall (candle) | 1 | {prefill:.0} | {ttft_ms:.0} | {decode:.1} | {decode:.1} |"
    );
    drop(model);

    // Concurrent streams through the service (served one after another: no batching yet).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let service = Arc::new(ChatService::start(&config, &Device::Cpu, 16, 8).unwrap());
    for n in [4usize, 8] {
        let (agg, ttft) = rt.block_on(async {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..n {
                let s = service.clone();
                let turns = turns.clone();
                let params = params.clone();
                tasks.push(tokio::spawn(async move {
                    let t0 = Instant::now();
                    let mut rx = s.stream(&turns, &params).await.unwrap();
                    let mut first = None;
                    let mut tokens = 0;
                    while let Some(e) = rx.recv().await {
                        match e.unwrap() {
                            ChatEvent::Delta { .. } => {
                                first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                            }
                            ChatEvent::Done { completion } => tokens = completion.completion_tokens,
                        }
                    }
                    (tokens, first.unwrap_or(0.0))
                }));
            }
            let mut total_tokens = 0;
            let mut ttfts = Vec::new();
            for t in tasks {
                let (tokens, ttft) = t.await.unwrap();
                total_tokens += tokens;
                ttfts.push(ttft);
            }
            let secs = started.elapsed().as_secs_f64();
            (
                total_tokens as f64 / secs,
                ttfts.iter().sum::<f64>() / ttfts.len() as f64 * 1000.0,
            )
        });
        println!(
            "| deep-recall (candle) | {n} | - | {ttft:.0} (mean) | {:.1} | {agg:.1} |",
            agg / n as f64
        );
    }

    if let Some(python) = arg("--python") {
        let script = recall_core::testing::repo_root().join("bench/hf_generate.py");
        let id_list: Vec<String> = ids.iter().map(u32::to_string).collect();
        let out = std::process::Command::new(python)
            .arg(script)
            .arg("--gguf")
            .arg(&path)
            .arg("--ids")
            .arg(id_list.join(","))
            .arg("--new-tokens")
            .arg(new_tokens.to_string())
            .output()
            .expect("run the Python reference");
        let line = String::from_utf8_lossy(&out.stdout);
        match serde_json::from_str::<serde_json::Value>(line.lines().last().unwrap_or("")) {
            Ok(v) => {
                let hf_prefill = v["prefill_tokens_per_s"].as_f64().unwrap_or(0.0);
                let hf_decode = v["decode_tokens_per_s"].as_f64().unwrap_or(0.0);
                println!(
                    "| transformers (PyTorch, F32) | 1 | {hf_prefill:.0} | {:.0} | {hf_decode:.1} | {hf_decode:.1} |",
                    v["ttft_ms"].as_f64().unwrap_or(0.0)
                );
                println!();
                println!(
                    "Ratio deep-recall / transformers, one stream: prefill {:.2}, decode {:.2}",
                    prefill / hf_prefill,
                    decode / hf_decode
                );
            }
            Err(_) => eprintln!(
                "Python reference failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}
