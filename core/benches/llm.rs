//! Local generation speed with the packaged SmolLM2-135M-Instruct on the CPU: prefill and
//! decode tokens/s and time to first token of one stream; continuous batching through the
//! `ChatService` (aggregate decode tokens/s with 1, 4, 8 and 16 streams, and the time to first
//! token of new requests while the others decode); and, in the same run, llama.cpp and/or
//! Hugging Face transformers on the same GGUF file, prompt and answer length when a Python
//! with them is given.
//!
//! ```sh
//! scripts/bench-venv.sh     # once: the Python reference (transformers + gguf + accelerate)
//! scripts/llama-cpp-venv.sh    # once: llama.cpp (llama-cpp-python, built from source)
//! cargo bench -p recall-core --features testing --bench llm -- \
//!     [--python ~/.cache/deep-recall/bench-venv/bin/python] \
//!     [--llama-cpp ~/.cache/deep-recall/llama-venv/bin/python] [--new-tokens 64] [--dequantize]
//!     [--gguf models/gemma-3-270m/gemma-3-270m-q4_k_m.gguf] [--one-stream] [--conversation 8]
//! ```
//!
//! `--gguf` measures another GGUF file instead of the packaged SmolLM2; `--one-stream` leaves
//! out the service parts; `--streams N` runs the batching table for 1 and N streams only;
//! `--conversation N` sets the turns of the conversation timed with and without prefix reuse
//! (0: none).
//!
//! The packaged model's Q4_1 weights stay quantized (the project's AVX2 kernels) unless
//! `--dequantize` turns them into F32 at load.
//!
//! With `--shape llama-1b` (or `tiny`) it measures a model of that shape with random weights
//! instead (written once into `--model-dir`, BF16 safetensors), on `--device cpu|cuda|metal`,
//! with a `--prompt-tokens` long prompt, against transformers' `generate` on the same directory
//! and device (BF16 on a GPU, F32 on the CPU) — the GPU measurement of the inference issue:
//!
//! ```sh
//! cargo bench -p recall-core --features testing,cuda --bench llm -- --shape llama-1b \
//!     --device cuda --model-dir /tmp/llama-1b --python python3 [--check] [--quantize q4k]
//! ```
//!
//! `--quantize q4_0|q4_1|q8_0|q4k|q6k` measures a GGUF file of the same weights quantized to
//! that type (written once beside the safetensors) instead. `--check` also loads the model on
//! the CPU and compares the prompt's next-token logits and 16 greedy tokens with the device's
//! (the BF16 or quantized arithmetic of the device against the CPU's F32 or quantized one).
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use recall_core::context::ChatTurn;
use recall_core::llm::{
    ChatEvent, ChatService, GenerationParams, LocalModel, ModelConfig, WorkerLimits,
};
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
    if let Some(shape) = arg("--shape") {
        return shaped(&shape);
    }
    let new_tokens: usize = arg("--new-tokens").map_or(64, |s| s.parse().unwrap());
    let path = arg("--gguf").map_or_else(
        || recall_core::llm::local::default_model_path(&models_dir()),
        std::path::PathBuf::from,
    );
    let name = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let dequantize = std::env::args().any(|a| a == "--dequantize");
    let config = ModelConfig {
        path: path.clone(),
        dequantize,
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
    let (ttft_ms, prefill, decode) = one_stream(&mut model, &ids, &params);
    println!(
        "{name} ({}), CPU, prompt {} tokens, {new_tokens} new tokens",
        if dequantize {
            "dequantized to F32"
        } else {
            "kept quantized"
        },
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

    if let Some(python) = arg("--python") {
        let path = path.to_string_lossy();
        reference(
            &python,
            &["--gguf", &path],
            &ids,
            new_tokens,
            (prefill, decode),
        );
    }
    if let Some(python) = arg("--llama-cpp") {
        let path = path.to_string_lossy();
        compare(
            &python,
            "bench/llama_cpp_generate.py",
            &["--gguf", &path],
            &ids,
            new_tokens,
            (prefill, decode),
        );
    }

    if std::env::args().any(|a| a == "--one-stream") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A conversation sent whole at every turn (as OpenAI-style clients do), with and without
    // prefix reuse.
    let turns_n: usize = arg("--conversation").map_or(8, |s| s.parse().unwrap());
    if turns_n > 0 {
        println!();
        println!(
            "A conversation of {turns_n} turns sent whole at each turn (answers of up to 48 \
             tokens, greedy): time to first token per turn"
        );
        println!();
        println!(
            "| prefix reuse | TTFT turn 1 (ms) | TTFT turns 2–{turns_n}, mean (ms) | last prompt (tokens) | tokens reused |"
        );
        println!("|---|---:|---:|---:|---:|");
        for bytes in [0, WorkerLimits::default().prefix_cache_bytes] {
            let limits = WorkerLimits {
                prefix_cache_bytes: bytes,
                ..WorkerLimits::default()
            };
            let service = Arc::new(
                ChatService::start_with_limits(&config, &Device::Cpu, 4, 4, limits).unwrap(),
            );
            let (ttft, last) = conversation(&rt, &service, turns_n);
            let later = &ttft[1..];
            println!(
                "| {} | {:.0} | {:.0} | {last} | {} |",
                if bytes > 0 { "on" } else { "off" },
                ttft[0],
                later.iter().sum::<f64>() / later.len().max(1) as f64,
                service.prefix_tokens_reused()
            );
        }
    }
    // Concurrent streams through the service (continuous batching): steady-state decode
    // throughput with n streams running, and the time to first token of a new request while
    // n - 1 others are decoding. Every stream sends the same prompt, so prefix reuse is off
    // here (it would serve the probes from the finished streams' caches).
    let limits = WorkerLimits {
        prefix_cache_bytes: 0,
        ..WorkerLimits::default()
    };
    let service =
        Arc::new(ChatService::start_with_limits(&config, &Device::Cpu, 64, 16, limits).unwrap());
    println!();
    println!(
        "Continuous batching (ChatService, max 16 sequences): n streams of {BATCH_TOKENS} \
         tokens started together, aggregate decode tokens/s while all n run (the tokens \
         arriving between the last first token and the first end); TTFT of 12 new requests \
         (one at a time) while n - 1 streams decode"
    );
    println!();
    println!(
        "| streams | aggregate decode (tokens/s) | × one stream | TTFT p50 (ms) | TTFT p95 (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let long = GenerationParams {
        max_tokens: BATCH_TOKENS,
        min_tokens: BATCH_TOKENS,
        ..params.clone()
    };
    let mut single = None;
    // `--streams N` measures one and N streams only (to profile one batch size).
    let counts: Vec<usize> = match arg("--streams") {
        Some(n) => vec![1, n.parse().expect("--streams takes a number")],
        None => vec![1, 4, 8, 16],
    };
    for n in counts {
        let agg = steady(&rt, &service, n, &turns, &long);
        let (p50, p95) = ttft_under_load(&rt, &service, n - 1, &turns, &params);
        let base = *single.get_or_insert(agg);
        println!(
            "| {n} | {agg:.1} | {:.2} | {p50:.0} | {p95:.0} |",
            agg / base
        );
    }
    println!();
}

/// The user's side of the measured conversation.
const CONVERSATION: [&str; 8] = [
    "Hi! I'm Ana. I moved to Porto last spring and I'm still learning Portuguese.",
    "What are some good ways to practise speaking with locals?",
    "I also started running along the river in the mornings. Any tips for a beginner?",
    "My sister visits next month. What should we see in two days?",
    "She is vegetarian. Which local dishes could she try?",
    "We might take a day trip too. Is the Douro valley worth it?",
    "How do I get there without a car?",
    "Thanks! Can you sum up what we talked about?",
];

/// A conversation of `n` turns, each sent whole (every earlier turn and answer, then the new
/// message): the time to first token of each turn (ms) and the last prompt's tokens.
fn conversation(
    rt: &tokio::runtime::Runtime,
    service: &Arc<ChatService>,
    n: usize,
) -> (Vec<f64>, usize) {
    rt.block_on(async {
        let params = GenerationParams {
            max_tokens: 48,
            ..GenerationParams::default()
        };
        let (mut turns, mut ttft, mut last) = (Vec::new(), Vec::new(), 0);
        for i in 0..n {
            turns.push(ChatTurn {
                role: Role::User,
                content: CONVERSATION[i % CONVERSATION.len()].into(),
            });
            let t0 = Instant::now();
            let mut rx = service.stream(&turns, &params).await.unwrap();
            let mut first = None;
            let mut answer = None;
            while let Some(e) = rx.recv().await {
                match e.unwrap() {
                    ChatEvent::Delta { .. } => {
                        first.get_or_insert_with(|| t0.elapsed().as_secs_f64() * 1000.0);
                    }
                    ChatEvent::Done { completion } => answer = Some(completion),
                }
            }
            let answer = answer.expect("a finished answer");
            ttft.push(first.unwrap_or_else(|| t0.elapsed().as_secs_f64() * 1000.0));
            last = answer.prompt_tokens;
            turns.push(ChatTurn {
                role: Role::Assistant,
                content: answer.text,
            });
        }
        (ttft, last)
    })
}

/// One streamed request: (time of its first piece, time of its end, tokens), from `t0`.
async fn timed(
    service: Arc<ChatService>,
    turns: Vec<ChatTurn>,
    params: GenerationParams,
    t0: Instant,
) -> (Vec<f64>, usize) {
    let mut rx = service.stream(&turns, &params).await.unwrap();
    let (mut deltas, mut tokens) = (Vec::new(), 0);
    while let Some(e) = rx.recv().await {
        match e.unwrap() {
            ChatEvent::Delta { .. } => deltas.push(t0.elapsed().as_secs_f64()),
            ChatEvent::Done { completion } => tokens = completion.completion_tokens,
        }
    }
    (deltas, tokens)
}

/// Tokens each stream of the batching table generates (longer than one stream's answer, so
/// that all streams decode together for a while after the last prompt is read).
const BATCH_TOKENS: usize = 192;

/// Aggregate decode tokens/s while all of `n` streams started together are running: the
/// tokens arriving in the window from the last first token to the first end (the prompts are
/// read in chunks between decode steps, so before the window some streams are still
/// reading), each delta counted as the stream's tokens per delta.
fn steady(
    rt: &tokio::runtime::Runtime,
    service: &Arc<ChatService>,
    n: usize,
    turns: &[ChatTurn],
    params: &GenerationParams,
) -> f64 {
    rt.block_on(async {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| tokio::spawn(timed(service.clone(), turns.to_vec(), params.clone(), t0)))
            .collect();
        let mut runs = Vec::new();
        for t in tasks {
            runs.push(t.await.unwrap());
        }
        let start = runs.iter().map(|r| r.0[0]).fold(0.0, f64::max);
        let end = runs
            .iter()
            .map(|r| *r.0.last().unwrap())
            .fold(f64::MAX, f64::min);
        assert!(end > start, "no moment when all {n} streams were decoding");
        let tokens: f64 = runs
            .iter()
            .map(|(deltas, tokens)| {
                let inside = deltas.iter().filter(|&&t| t > start && t <= end).count();
                inside as f64 * *tokens as f64 / deltas.len() as f64
            })
            .sum();
        tokens / (end - start)
    })
}

/// Time to first token (p50, p95 in ms) of 12 requests made one after another while
/// `background` long streams decode.
fn ttft_under_load(
    rt: &tokio::runtime::Runtime,
    service: &Arc<ChatService>,
    background: usize,
    turns: &[ChatTurn],
    params: &GenerationParams,
) -> (f64, f64) {
    rt.block_on(async {
        let long = GenerationParams {
            max_tokens: 100_000,
            min_tokens: 100_000,
            ..params.clone()
        };
        let mut streams = Vec::new();
        for _ in 0..background {
            let mut rx = service.stream(turns, &long).await.unwrap();
            rx.recv().await; // decoding
            streams.push(tokio::spawn(
                async move { while rx.recv().await.is_some() {} },
            ));
        }
        let probe = GenerationParams {
            max_tokens: 2,
            min_tokens: 2,
            ..params.clone()
        };
        let mut ttft = Vec::new();
        for _ in 0..12 {
            let t0 = Instant::now();
            let (deltas, _) = timed(service.clone(), turns.to_vec(), probe.clone(), t0).await;
            ttft.push(deltas[0] * 1000.0);
        }
        for s in streams {
            s.abort();
        }
        // Let the worker notice the dropped streams before the next measurement.
        while service.queue_depth() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        ttft.sort_by(f64::total_cmp);
        (
            ttft[ttft.len() / 2],
            ttft[(ttft.len() * 95).div_ceil(100) - 1],
        )
    })
}

/// Streams through the service at once: aggregate tokens/s and mean time to first token (ms).
fn concurrent(
    rt: &tokio::runtime::Runtime,
    service: &Arc<ChatService>,
    n: usize,
    turns: &[ChatTurn],
    params: &GenerationParams,
) -> (f64, f64) {
    rt.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (s, turns, params) = (service.clone(), turns.to_vec(), params.clone());
                // Each stream's own clock: its time to first token from its own request.
                tokio::spawn(async move { timed(s, turns, params, Instant::now()).await })
            })
            .collect();
        let (mut total, mut ttft) = (0, 0.0);
        for t in tasks {
            let (deltas, tokens) = t.await.unwrap();
            total += tokens;
            ttft += deltas[0];
        }
        (
            total as f64 / started.elapsed().as_secs_f64(),
            ttft / n as f64 * 1000.0,
        )
    })
}

/// A model of a named shape with random weights, on a chosen device.
fn shaped(name: &str) {
    use recall_core::testing::tiny::{Shape, write_shaped_hf};
    let shape = match name {
        "tiny" => Shape::TINY,
        "llama-1b" => Shape::LLAMA_1B,
        other => panic!("--shape {other}: tiny or llama-1b"),
    };
    let new_tokens: usize = arg("--new-tokens").map_or(64, |s| s.parse().unwrap());
    let prompt_tokens: usize = arg("--prompt-tokens").map_or(512, |s| s.parse().unwrap());
    let device_name = arg("--device").unwrap_or_else(|| "cpu".into());
    let device = recall_core::device::select(device_name.parse().unwrap()).unwrap();
    let root = arg("--model-dir")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("deep-recall-bench-{name}")));
    let root = root.join(name);
    let dir = root.join("llama");
    if !dir.join("model.safetensors").exists() {
        let started = Instant::now();
        write_shaped_hf(&root, "llama", "llama", &shape, candle_core::DType::BF16);
        eprintln!(
            "wrote {} in {:.0} s",
            dir.display(),
            started.elapsed().as_secs_f64()
        );
    }
    let quantize = arg("--quantize").map(|q| {
        use candle_core::quantized::GgmlDType as G;
        let kind = match q.as_str() {
            "q4_0" => G::Q4_0,
            "q4_1" => G::Q4_1,
            "q8_0" => G::Q8_0,
            "q4k" => G::Q4K,
            "q6k" => G::Q6K,
            other => panic!("--quantize {other}: q4_0, q4_1, q8_0, q4k or q6k"),
        };
        let path = dir.join(format!("llama-{kind:?}.gguf").to_lowercase());
        if !path.exists() {
            let started = Instant::now();
            let written = recall_core::testing::tiny::write_shaped_gguf(
                &root, "llama", "llama", &shape, kind,
            );
            assert_eq!(written, path);
            eprintln!(
                "wrote {} in {:.0} s",
                path.display(),
                started.elapsed().as_secs_f64()
            );
        }
        (kind, path)
    });
    let config = ModelConfig::new(quantize.as_ref().map_or(&dir, |(_, p)| p));
    // The word-level tokenizer of generated models: "w{i}" is token i (ids from 5 up).
    let words: Vec<String> = (0..prompt_tokens.saturating_sub(8))
        .map(|i| format!("w{}", 5 + (i * 7919) % (shape.vocab - 5)))
        .collect();
    let turns = vec![ChatTurn {
        role: Role::User,
        content: words.join(" "),
    }];
    let params = GenerationParams {
        max_tokens: new_tokens,
        min_tokens: new_tokens,
        ..GenerationParams::default()
    };
    let mut model = LocalModel::load(&config, &device).unwrap();
    let ids = model.encode(&model.template().render(&turns)).unwrap();
    let (ttft_ms, prefill, decode) = one_stream(&mut model, &ids, &params);
    let steps: Vec<(usize, f64)> = [1usize, 4, 8]
        .into_iter()
        .map(|n| (n, step_ms(&model, &ids, n, 32)))
        .collect();
    drop(model);
    let weights = match &quantize {
        Some((kind, _)) => format!("GGUF {kind:?} kept quantized"),
        None => format!("{:?}", config.precision.dtype(&device)),
    };
    println!(
        "{name} shape (random weights), {}, {weights}, prompt {} tokens, {new_tokens} new tokens",
        recall_core::device::describe(&device),
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let service = Arc::new(ChatService::start(&config, &device, 16, 8).unwrap());
    for n in [4usize, 8] {
        // A first round untimed: a GPU meets each batch size's shapes for the first time.
        concurrent(&rt, &service, n, &turns, &params);
        let (agg, ttft) = concurrent(&rt, &service, n, &turns, &params);
        println!(
            "| deep-recall (candle) | {n} | - | {ttft:.0} (mean) | {:.1} | {agg:.1} |",
            agg / n as f64
        );
    }
    drop(service);
    println!();
    println!(
        "Decode steps straight on the decoder (no scheduler, logits copied to the host), ms per \
         step: {}",
        steps
            .iter()
            .map(|(n, ms)| format!("{n} sequences {ms:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    if let Some(python) = arg("--python").filter(|_| quantize.is_none()) {
        let torch_device = if device_name.starts_with("cuda") {
            "cuda"
        } else {
            "cpu"
        };
        let dir = dir.to_string_lossy();
        reference(
            &python,
            &["--model-dir", &dir, "--device", torch_device],
            &ids,
            new_tokens,
            (prefill, decode),
        );
    }
    if std::env::args().any(|a| a == "--check") && !device.is_cpu() {
        agreement(&config, &device, &ids);
    }
}

/// Milliseconds per decode step of `n` sequences (each after `ids`) straight on the decoder,
/// the logits copied to the host as the scheduler does: what a batched step costs without the
/// scheduler's work around it (admission, sampling, sending text).
fn step_ms(model: &LocalModel, ids: &[u32], n: usize, steps: usize) -> f64 {
    let d = model.decoder();
    let mut first = d.new_cache();
    d.prefill(ids, &mut first).unwrap();
    let mut caches: Vec<_> = (0..n).map(|_| first.clone()).collect();
    let tokens = vec![7u32; n];
    let mut step = || {
        let mut refs: Vec<_> = caches.iter_mut().collect();
        d.decode(&tokens, &mut refs)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
    };
    step(); // warm-up: the shapes of this batch size
    let started = Instant::now();
    for _ in 0..steps {
        step();
    }
    started.elapsed().as_secs_f64() * 1000.0 / steps as f64
}

/// The prompt's next-token logits and 16 greedy tokens of the model on `device` against the same
/// model on the CPU (at most 64 prompt tokens).
fn agreement(config: &ModelConfig, device: &Device, ids: &[u32]) {
    use candle_core::IndexOp;
    let prompt = &ids[..ids.len().min(64)];
    let run = |device: &Device| -> (Vec<f32>, Vec<u32>) {
        let model = LocalModel::load(config, device).unwrap();
        let d = model.decoder();
        let mut cache = d.new_cache();
        let mut logits = d.prefill(prompt, &mut cache).unwrap();
        let first: Vec<f32> = logits
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut tokens = Vec::new();
        for _ in 0..16 {
            let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
            tokens.push(next);
            logits = d.decode(&[next], &mut [&mut cache]).unwrap().i(0).unwrap();
        }
        (first, tokens)
    };
    let (cpu, cpu_tokens) = run(&Device::Cpu);
    let (dev, dev_tokens) = run(device);
    let diff = cpu
        .iter()
        .zip(&dev)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let range = cpu.iter().map(|a| a.abs()).fold(0f32, f32::max);
    let same = cpu_tokens
        .iter()
        .zip(&dev_tokens)
        .take_while(|(a, b)| a == b)
        .count();
    let top = |v: &[f32]| -> Vec<usize> {
        let mut i: Vec<usize> = (0..v.len()).collect();
        i.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
        i.truncate(10);
        i
    };
    // A batched decode step of three sequences of different lengths on the device, against
    // each of them alone there.
    let batched = {
        let model = LocalModel::load(config, device).unwrap();
        let d = model.decoder();
        let prompts = [
            prompt,
            &prompt[..prompt.len() / 2],
            &prompt[..prompt.len() / 3],
        ];
        let row = |t: Tensor| -> Vec<f32> {
            t.to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let mut caches: Vec<_> = prompts.iter().map(|_| d.new_cache()).collect();
        let mut alone = Vec::new();
        for (p, c) in prompts.iter().zip(caches.iter_mut()) {
            d.prefill(p, c).unwrap();
            let mut own = c.clone();
            alone.push(row(d.decode(&[7], &mut [&mut own]).unwrap().i(0).unwrap()));
        }
        let mut refs: Vec<_> = caches.iter_mut().collect();
        let together = d.decode(&[7, 7, 7], &mut refs).unwrap();
        (0..3)
            .map(|i| {
                row(together.i(i).unwrap())
                    .iter()
                    .zip(&alone[i])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
            })
            .fold(0f32, f32::max)
    };
    let (ta, tb) = (top(&cpu), top(&dev));
    let overlap = ta.iter().filter(|i| tb.contains(i)).count();
    println!();
    println!(
        "{} against the CPU, {}-token prompt: next-token logits differ by at most {diff:.4} \
         (largest |logit| {range:.3}), top-10 overlap {overlap}/10, greedy tokens equal for \
         the first {same} of 16; a batched decode step of 3 sequences against each alone \
         there: logits differ by at most {batched:.4}",
        recall_core::device::describe(device),
        prompt.len()
    );
}

/// Runs `bench/hf_generate.py` (transformers) on the same model, prompt ids and answer length,
/// and prints its row and the ratios to `ours` (prefill, decode tokens/s).
fn reference(python: &str, model: &[&str], ids: &[u32], new_tokens: usize, ours: (f64, f64)) {
    compare(python, "bench/hf_generate.py", model, ids, new_tokens, ours)
}

/// Runs a reference script (`bench/*.py`) on the same model, prompt ids and answer length,
/// and prints its row and the ratios to `ours` (prefill, decode tokens/s).
fn compare(
    python: &str,
    script: &str,
    model: &[&str],
    ids: &[u32],
    new_tokens: usize,
    ours: (f64, f64),
) {
    let script = recall_core::testing::repo_root().join(script);
    let id_list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let out = std::process::Command::new(python)
        .arg(script)
        .args(model)
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
            let engine = v["engine"].as_str().unwrap_or("transformers");
            let label = if engine == "transformers" {
                format!(
                    "transformers (PyTorch, {})",
                    v["dtype"].as_str().unwrap_or("?")
                )
            } else {
                format!("{engine} (2 threads)")
            };
            println!(
                "| {label} | 1 | {hf_prefill:.0} | {:.0} | {hf_decode:.1} | {hf_decode:.1} |",
                v["ttft_ms"].as_f64().unwrap_or(0.0)
            );
            println!();
            println!(
                "Ratio deep-recall / {engine}, one stream: prefill {:.2}, decode {:.2}",
                ours.0 / hf_prefill,
                ours.1 / hf_decode
            );
        }
        Err(_) => eprintln!(
            "Python reference failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// One stream directly on the model, best of three after a warm-up: time to first token (ms),
/// prefill and decode tokens/s (prefill = the prompt over the time to the first token).
fn one_stream(model: &mut LocalModel, ids: &[u32], params: &GenerationParams) -> (f64, f64, f64) {
    model.generate(ids, params, &mut |_| true).unwrap(); // warm-up
    let mut best: Option<(f64, f64, f64)> = None;
    for _ in 0..3 {
        let started = Instant::now();
        let mut first = None;
        let out = model
            .generate(ids, params, &mut |_| {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
                true
            })
            .unwrap();
        let total = started.elapsed().as_secs_f64();
        let ttft = first.unwrap_or(total);
        let decode = (out.completion_tokens.saturating_sub(1)) as f64 / (total - ttft);
        if best.is_none_or(|b| decode > b.2) {
            best = Some((ttft * 1000.0, ids.len() as f64 / ttft, decode));
        }
    }
    best.unwrap()
}
